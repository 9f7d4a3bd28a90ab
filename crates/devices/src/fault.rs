//! Test-only fault injection: makes a backend die, hang or corrupt itself in the middle of a
//! request, so that the supervisor and the inflight protocol can be tested against real failures.
//!
//! Compiled only in debug builds (`debug_assertions`) or with the cargo feature
//! `fault-injection`; a release build has none of it (no code, no strings — the hooks the queue
//! code calls are empty functions there).
//!
//! # The knob
//!
//! ```text
//! BULKHEAD_FAULT=<action>:after=<N>[:device=blk|net|rng][:queue=<Q>]
//! ```
//!
//! read once per process, when a backend starts (`bulkhead device …`) or first serves
//! (monolithic mode). Fields are separated by `:`, the action first, the others in any order.
//! The fault fires on the request numbered `N` (counting from 0) among the requests of this
//! process that match `device` and `queue` (all when left out): `after=0` is the very first,
//! `after=3` the fourth. Counting is per process: a restarted backend counts from 0 again (give
//! it no `BULKHEAD_FAULT`, or it fails again after `N` requests). A request is a descriptor
//! chain taken from a virtqueue, a resubmitted one included.
//!
//! | action | where, in the request's life | what happens |
//! | --- | --- | --- |
//! | `panic` | taken (marked in the inflight region), not yet handled | the queue worker panics; a compartment's panic hook aborts the process (SIGABRT) |
//! | `exit` | the same | the process exits with [`EXIT_CODE`] |
//! | `hang` | the same | the worker sleeps forever holding its queue; the process and its message thread go on (the queue's `GET_VRING_BASE` then waits forever too) |
//! | `corrupt` | the same | the backend's own record of the request (its head index in the queue's ledger of taken requests) gets its lowest bit flipped; when the request completes, the ledger check (every returned chain must be the oldest one taken) finds the mismatch and panics *before* anything is published: a compartment aborts (SIGABRT) |
//! | `exit-before-used` | handled (the image written), `last_batch_head` recorded, used entry not yet published | the process exits with [`EXIT_CODE`]; a successor must resubmit the request |
//! | `exit-after-used` | used entry published, its `inflight` flag not yet cleared | the process exits with [`EXIT_CODE`] before signalling the guest; a successor must *not* resubmit it (`used_idx` differs: the last batch is cleared) and must interrupt the guest |
//!
//! `exit-*-used` count returned requests rather than taken ones (the same thing for blk and rng,
//! which return every request in order). A value that does not parse is reported on stderr
//! (`BULKHEAD_FAULT=… ignored: …`) and ignored: the backend runs with no fault. An armed fault is
//! reported too, and each fault as it fires.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::backend::queue::QueueId;
use crate::DeviceKind;

/// The environment variable.
pub const ENV: &str = "BULKHEAD_FAULT";

/// The exit status of `exit`, `exit-before-used` and `exit-after-used`.
pub const EXIT_CODE: i32 = 42;

/// What to do when the fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Panic in the queue worker with the request taken.
    Panic,
    /// Exit the process with the request taken.
    Exit,
    /// Stop the queue worker forever with the request taken.
    Hang,
    /// Corrupt the record of the request taken; the consistency check catches it.
    Corrupt,
    /// Exit after the request was handled, before its used entry is published.
    ExitBeforeUsed,
    /// Exit after its used entry is published, before the inflight flag is cleared.
    ExitAfterUsed,
}

impl Action {
    const ALL: [(Action, &'static str); 6] = [
        (Action::Panic, "panic"),
        (Action::Exit, "exit"),
        (Action::Hang, "hang"),
        (Action::Corrupt, "corrupt"),
        (Action::ExitBeforeUsed, "exit-before-used"),
        (Action::ExitAfterUsed, "exit-after-used"),
    ];

    fn name(self) -> &'static str {
        Action::ALL.iter().find(|(a, _)| *a == self).map_or("?", |(_, n)| n)
    }

    /// Whether the fault is counted on returned requests rather than taken ones.
    fn on_return(self) -> bool {
        matches!(self, Action::ExitBeforeUsed | Action::ExitAfterUsed)
    }
}

/// One parsed `BULKHEAD_FAULT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What happens.
    pub action: Action,
    /// How many matching requests go through first.
    pub after: u64,
    /// Only requests of this device kind.
    pub device: Option<DeviceKind>,
    /// Only requests of this queue.
    pub queue: Option<usize>,
}

impl Fault {
    fn matches(&self, id: QueueId) -> bool {
        self.device.is_none_or(|k| k == id.kind) && self.queue.is_none_or(|q| q == id.index)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:after={}", self.action.name(), self.after)?;
        if let Some(k) = self.device {
            write!(f, ":device={k}")?;
        }
        if let Some(q) = self.queue {
            write!(f, ":queue={q}")?;
        }
        Ok(())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        let mut fields = s.split(':');
        let action = fields.next().unwrap_or_default();
        let action = Action::ALL.iter().find(|(_, n)| *n == action).map(|(a, _)| *a);
        let names: Vec<&str> = Action::ALL.iter().map(|(_, n)| *n).collect();
        let action = action.ok_or_else(|| format!("the action must be one of {names:?}"))?;
        let (mut after, mut device, mut queue) = (None, None, None);
        for field in fields {
            let (key, value) = field.split_once('=').unwrap_or((field, ""));
            let number =
                || value.parse::<u64>().map_err(|_| format!("{key}={value:?}: not a number"));
            match key {
                "after" => after = Some(number()?),
                "queue" => queue = Some(number()? as usize),
                "device" => {
                    device = Some(match value {
                        "blk" => DeviceKind::Blk,
                        "net" => DeviceKind::Net,
                        "rng" => DeviceKind::Rng,
                        _ => return Err(format!("device={value:?}: use blk, net or rng")),
                    })
                }
                _ => return Err(format!("unknown field {field:?}; use after=, device=, queue=")),
            }
        }
        let after = after.ok_or("after=N is missing (the number of requests to let through)")?;
        Ok(Fault { action, after, device, queue })
    }
}

static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
static TAKEN: AtomicU64 = AtomicU64::new(0);
static RETURNED: AtomicU64 = AtomicU64::new(0);

/// Reads `BULKHEAD_FAULT` (the first call only) and reports what it says.
pub fn init() {
    armed();
}

fn armed() -> Option<&'static Fault> {
    FAULT.get_or_init(read_env).as_ref()
}

fn read_env() -> Option<Fault> {
    let value = std::env::var_os(ENV)?;
    let value = value.to_string_lossy();
    if value.is_empty() {
        return None;
    }
    match value.parse::<Fault>() {
        Ok(fault) => {
            eprintln!("bulkhead: {ENV}: fault injection armed: {fault} (a test-only build)");
            Some(fault)
        }
        Err(why) => {
            eprintln!("bulkhead: {ENV}={value:?} ignored: {why}");
            None
        }
    }
}

/// Whether the armed fault (if any) of the kind `on_return` fires for this request of `id`.
fn fires(id: QueueId, on_return: bool) -> Option<Fault> {
    let fault = *armed()?;
    if fault.action.on_return() != on_return || !fault.matches(id) {
        return None;
    }
    let counter = if on_return { &RETURNED } else { &TAKEN };
    (counter.fetch_add(1, Ordering::SeqCst) == fault.after).then_some(fault)
}

/// A chain was taken (and marked inflight) on queue `id`; `recorded` is the backend's own record
/// of its head, which `corrupt` damages.
pub(crate) fn taken(id: QueueId, recorded: &mut u16) {
    let Some(fault) = fires(id, false) else { return };
    let what = format!("{} queue {} with chain {recorded} taken", id.kind, id.index);
    match fault.action {
        Action::Panic => panic!("injected fault ({fault}): panic in {what}"),
        Action::Exit => exit(&fault, &what),
        Action::Hang => {
            eprintln!("bulkhead: injected fault ({fault}): {what}: the worker hangs");
            loop {
                std::thread::park();
            }
        }
        Action::Corrupt => {
            eprintln!("bulkhead: injected fault ({fault}): {what}: recorded as {}", *recorded ^ 1);
            *recorded ^= 1;
        }
        Action::ExitBeforeUsed | Action::ExitAfterUsed => {}
    }
}

/// Where in returning a chain the process may exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Returning {
    /// Handled, `last_batch_head` recorded, nothing published.
    BeforeUsed,
    /// Used entry published, `inflight` still set.
    AfterUsed,
}

/// Chain `head` of queue `id` is being returned, at point `at`.
pub(crate) fn returning(id: QueueId, head: u16, at: Returning) {
    let want = match at {
        Returning::BeforeUsed => Action::ExitBeforeUsed,
        Returning::AfterUsed => Action::ExitAfterUsed,
    };
    if armed().is_none_or(|f| f.action != want) {
        return;
    }
    if let Some(fault) = fires(id, true) {
        exit(&fault, &format!("{} queue {} returning chain {head}", id.kind, id.index));
    }
}

fn exit(fault: &Fault, what: &str) -> ! {
    eprintln!("bulkhead: injected fault ({fault}): {what}: exiting with status {EXIT_CODE}");
    std::process::exit(EXIT_CODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_knob() {
        let f: Fault = "panic:after=3".parse().unwrap();
        assert_eq!(f, Fault { action: Action::Panic, after: 3, device: None, queue: None });
        let f: Fault = "exit-after-used:queue=1:after=0:device=blk".parse().unwrap();
        assert_eq!(f.action, Action::ExitAfterUsed);
        assert_eq!((f.after, f.device, f.queue), (0, Some(DeviceKind::Blk), Some(1)));
        assert_eq!(f.to_string(), "exit-after-used:after=0:device=blk:queue=1");
        for (a, name) in Action::ALL {
            assert_eq!(format!("{name}:after=1").parse::<Fault>().unwrap().action, a);
        }
    }

    #[test]
    fn bad_knobs_say_what_is_wrong() {
        for (bad, says) in [
            ("", "action must be one of"),
            ("explode:after=1", "action must be one of"),
            ("panic", "after=N is missing"),
            ("panic:after=x", "not a number"),
            ("panic:after=-1", "not a number"),
            ("panic:after=1:device=gpu", "use blk, net or rng"),
            ("panic:after=1:when=now", "unknown field"),
            ("panic:after=1:queue", "not a number"),
        ] {
            let err = bad.parse::<Fault>().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn filters_match_device_and_queue() {
        let blk0 = QueueId { kind: DeviceKind::Blk, index: 0 };
        let blk1 = QueueId { kind: DeviceKind::Blk, index: 1 };
        let rng0 = QueueId { kind: DeviceKind::Rng, index: 0 };
        let any: Fault = "panic:after=0".parse().unwrap();
        assert!(any.matches(blk0) && any.matches(rng0));
        let f: Fault = "panic:after=0:device=blk:queue=1".parse().unwrap();
        assert!(f.matches(blk1) && !f.matches(blk0) && !f.matches(rng0));
    }
}
