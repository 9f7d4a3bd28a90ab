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
//! BULKHEAD_FAULT=<action>:after=<N>[:device=blk|net|rng|console][:queue=<Q>]
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
//! | `flood` | taken | a thread starts spamming everything the backend can reach of the core and the guest — every call eventfd (the guest's interrupts) and unsolicited messages on its vhost-user socket — for the rest of the process's life ([`flood`]); the request and the device go on |
//!
//! | `open=PATH` | taken | the worker opens `PATH` for reading and reports what happened; a sandboxed backend is refused (`EACCES`) and goes on |
//! | `connect` | taken | the worker opens a TCP socket and connects to 127.0.0.1:22; a sandboxed backend is killed by seccomp at `socket` (`SIGSYS`) |
//! | `syscall=NAME` | taken | the worker makes system call `NAME` (one of [`SYSCALLS`]) with zero arguments; one outside the backend's list kills it (`SIGSYS`) |
//!
//! The last three try what a compromised backend would (a file it was not given, the network,
//! a call outside its list): tests check the sandbox stops each. A `PATH` cannot contain `:`.
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
    /// Open the file named by the fault's argument, for reading.
    Open,
    /// Open a TCP socket and connect to 127.0.0.1:22.
    Connect,
    /// Make the system call named by the fault's argument.
    Syscall,
    /// Start flooding the core and the guest (see [`flood`]); the request goes on.
    Flood,
}

impl Action {
    const ALL: [(Action, &'static str); 10] = [
        (Action::Panic, "panic"),
        (Action::Exit, "exit"),
        (Action::Hang, "hang"),
        (Action::Corrupt, "corrupt"),
        (Action::ExitBeforeUsed, "exit-before-used"),
        (Action::ExitAfterUsed, "exit-after-used"),
        (Action::Open, "open"),
        (Action::Connect, "connect"),
        (Action::Syscall, "syscall"),
        (Action::Flood, "flood"),
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
    /// The action's argument: `open`'s path, `syscall`'s name.
    pub arg: Option<&'static str>,
}

impl Fault {
    fn matches(&self, id: QueueId) -> bool {
        self.device.is_none_or(|k| k == id.kind) && self.queue.is_none_or(|q| q == id.index)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.action.name())?;
        if let Some(arg) = self.arg {
            write!(f, "={arg}")?;
        }
        write!(f, ":after={}", self.after)?;
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
        let (action, arg) = match action.split_once('=') {
            Some((action, arg)) => (action, Some(arg)),
            None => (action, None),
        };
        let action = Action::ALL.iter().find(|(_, n)| *n == action).map(|(a, _)| *a);
        let names: Vec<&str> = Action::ALL.iter().map(|(_, n)| *n).collect();
        let action = action.ok_or_else(|| format!("the action must be one of {names:?}"))?;
        let arg = check_arg(action, arg)?;
        let (mut after, mut device, mut queue) = (None, None, None);
        for field in fields {
            let (key, value) = field.split_once('=').unwrap_or((field, ""));
            let number =
                || value.parse::<u64>().map_err(|_| format!("{key}={value:?}: not a number"));
            match key {
                "after" => after = Some(number()?),
                "queue" => queue = Some(number()? as usize),
                "device" => {
                    device =
                        Some(DeviceKind::from_name(value).ok_or_else(|| {
                            format!("device={value:?}: use blk, net, rng or console")
                        })?)
                }
                _ => return Err(format!("unknown field {field:?}; use after=, device=, queue=")),
            }
        }
        let after = after.ok_or("after=N is missing (the number of requests to let through)")?;
        Ok(Fault { action, after, device, queue, arg })
    }
}

/// The system calls `syscall=NAME` can make: ones no backend needs.
pub const SYSCALLS: &[(&str, libc::c_long)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("mount", libc::SYS_mount),
    ("socket", libc::SYS_socket),
    ("execve", libc::SYS_execve),
    ("setns", libc::SYS_setns),
    ("unshare", libc::SYS_unshare),
    ("getppid", libc::SYS_getppid),
    ("uname", libc::SYS_uname),
    ("bpf", libc::SYS_bpf),
    ("kexec_load", libc::SYS_kexec_load),
];

/// Checks the argument an action takes; leaks it (read once per process) to keep `Fault` `Copy`.
fn check_arg(action: Action, arg: Option<&str>) -> Result<Option<&'static str>, String> {
    match (action, arg) {
        (Action::Open, Some(path)) if path.starts_with('/') => {}
        (Action::Open, _) => return Err("open=PATH: give an absolute path".into()),
        (Action::Syscall, Some(name)) if SYSCALLS.iter().any(|(n, _)| *n == name) => {}
        (Action::Syscall, _) => {
            let names: Vec<&str> = SYSCALLS.iter().map(|(n, _)| *n).collect();
            return Err(format!("syscall=NAME: NAME must be one of {names:?}"));
        }
        (_, None) => {}
        (_, Some(_)) => return Err(format!("{} takes no =argument", action.name())),
    }
    Ok(arg.map(|a| &*Box::leak(a.to_string().into_boxed_str())))
}

/// `open`, `connect` and `syscall`: what a compromised backend would try. Reports the outcome
/// if the process survives it.
fn trespass(fault: &Fault, what: &str) {
    let outcome = match (fault.action, fault.arg) {
        (Action::Open, Some(path)) => match std::fs::File::open(path) {
            Ok(_) => format!("opened {path}"),
            Err(e) => format!("open {path} refused: {e}"),
        },
        (Action::Connect, _) => match std::net::TcpStream::connect(("127.0.0.1", 22)) {
            Ok(_) => "connected to 127.0.0.1:22".to_string(),
            Err(e) => format!("connect to 127.0.0.1:22 refused: {e}"),
        },
        (Action::Syscall, Some(name)) => {
            let nr = SYSCALLS.iter().find(|(n, _)| *n == name).map_or(-1, |&(_, nr)| nr);
            eprintln!("bulkhead: injected fault ({fault}): {what}: calling {name}");
            // SAFETY: a system call with all-zero arguments: the listed ones then take null
            // pointers (EFAULT), invalid flags (EINVAL) or nothing; none writes to memory.
            let rc = unsafe { libc::syscall(nr, 0, 0, 0, 0, 0, 0) };
            let e = std::io::Error::last_os_error();
            format!(
                "{name} returned {rc}{}",
                if rc < 0 { format!(" ({e})") } else { String::new() }
            )
        }
        _ => return,
    };
    eprintln!("bulkhead: injected fault ({fault}): {what}: {outcome}");
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
        Action::Flood => flood::start(&fault, &what),
        Action::ExitBeforeUsed | Action::ExitAfterUsed => {}
        Action::Open | Action::Connect | Action::Syscall => trespass(&fault, &what),
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

/// The `flood` action: a compartment that floods the core with what it can reach.
///
/// The backend notes what it may flood as it gets it (only while a `flood` fault is armed):
/// its vhost-user connection ([`flood::socket`], when `serve` starts) and each call eventfd
/// ([`flood::call`], on `SET_VRING_CALL`). When the fault fires, a thread `bh-flood` loops
/// forever, as fast as it can: it writes every call eventfd (each write is an interrupt request
/// to KVM for the guest) and sends the core an unsolicited message (alternately a header with an
/// unknown request code and a well-formed reply to `GET_FEATURES` that nobody asked for), with
/// `MSG_DONTWAIT`: once the core's receive buffer is full, sends fail and the loop goes on with
/// the eventfds. It never stops by itself; it dies with the process.
pub mod flood {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use super::{armed, Action, Fault, ENV};

    /// What the flood reaches: its own duplicates, so that a descriptor closed by the backend
    /// meanwhile is never confused with another file.
    static TARGETS: Mutex<Vec<(Kind, OwnedFd)>> = Mutex::new(Vec::new());

    /// Signals and messages sent so far (for tests and the report).
    pub static SENT: AtomicU64 = AtomicU64::new(0);

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Socket,
        Call,
    }

    fn armed_flood() -> bool {
        armed().is_some_and(|f| f.action == Action::Flood)
    }

    fn keep(kind: Kind, fd: RawFd) {
        if !armed_flood() {
            return;
        }
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller holds open; the new descriptor is
        // ours alone (the sandbox's allow-list has this fcntl).
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup >= 0 {
            // SAFETY: `dup` is a fresh descriptor nobody else owns.
            let owned = unsafe { OwnedFd::from_raw_fd(dup) };
            TARGETS.lock().unwrap_or_else(|p| p.into_inner()).push((kind, owned));
        }
    }

    /// The backend's vhost-user connection.
    pub(crate) fn socket(fd: RawFd) {
        keep(Kind::Socket, fd);
    }

    /// A call eventfd the frontend gave.
    pub(crate) fn call(fd: RawFd) {
        keep(Kind::Call, fd);
    }

    /// Fires the flood (once per process).
    pub(super) fn start(fault: &Fault, what: &str) {
        let targets: Vec<(Kind, RawFd)> = TARGETS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, fd)| (*k, fd.as_raw_fd()))
            .collect();
        let calls = targets.iter().filter(|t| t.0 == Kind::Call).count();
        let sockets = targets.len() - calls;
        eprintln!(
            "bulkhead: injected fault ({fault}): {what}: flooding {calls} call eventfds and {sockets} sockets ({ENV})"
        );
        let spawned = std::thread::Builder::new().name("bh-flood".into()).spawn(move || {
            // The descriptors stay open: TARGETS keeps them for the process's life.
            let mut n = 0u64;
            loop {
                for (kind, fd) in &targets {
                    match kind {
                        Kind::Call => signal(*fd),
                        Kind::Socket => message(*fd, n),
                    }
                }
                n += 1;
                SENT.store(n, Ordering::Relaxed);
            }
        });
        if let Err(e) = spawned {
            eprintln!("bulkhead: {ENV}: cannot start the flood: {e}");
        }
    }

    fn signal(fd: RawFd) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to a descriptor TARGETS keeps open.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }

    /// An unsolicited message: a header with an unknown request code, or a reply to
    /// `GET_FEATURES` (code 1, flags version 1 | reply, 8 bytes of payload).
    fn message(fd: RawFd, n: u64) {
        let mut msg = [0u8; 20];
        let (code, len) =
            if n.is_multiple_of(2) { (0x7fff_0000u32 + (n % 64) as u32, 0) } else { (1, 8) };
        msg[0..4].copy_from_slice(&code.to_le_bytes());
        msg[4..8].copy_from_slice(&0x5u32.to_le_bytes());
        msg[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        msg[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut iov = libc::iovec { iov_base: msg.as_mut_ptr().cast(), iov_len: 12 + len };
        // SAFETY: a zeroed msghdr is valid; it points at one iovec over `msg`, both live for
        // the call.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        // SAFETY: sendmsg reads the header and the buffer it names; the descriptor is open.
        unsafe { libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_knob() {
        let f: Fault = "panic:after=3".parse().unwrap();
        assert_eq!(
            f,
            Fault { action: Action::Panic, after: 3, device: None, queue: None, arg: None }
        );
        let f: Fault = "exit-after-used:queue=1:after=0:device=blk".parse().unwrap();
        assert_eq!(f.action, Action::ExitAfterUsed);
        assert_eq!((f.after, f.device, f.queue), (0, Some(DeviceKind::Blk), Some(1)));
        assert_eq!(f.to_string(), "exit-after-used:after=0:device=blk:queue=1");
        for (a, name) in Action::ALL {
            let arg = match a {
                Action::Open => "=/etc/hostname",
                Action::Syscall => "=ptrace",
                _ => "",
            };
            assert_eq!(format!("{name}{arg}:after=1").parse::<Fault>().unwrap().action, a);
        }
        let f: Fault = "open=/etc/shadow:after=2:device=rng".parse().unwrap();
        assert_eq!((f.action, f.arg), (Action::Open, Some("/etc/shadow")));
        assert_eq!(f.to_string(), "open=/etc/shadow:after=2:device=rng");
        let f: Fault = "syscall=mount:after=0".parse().unwrap();
        assert_eq!((f.action, f.arg), (Action::Syscall, Some("mount")));
    }

    #[test]
    fn trespass_arguments_are_checked() {
        for (bad, says) in [
            ("open:after=1", "absolute path"),
            ("open=relative:after=1", "absolute path"),
            ("syscall:after=1", "must be one of"),
            ("syscall=reboot:after=1", "must be one of"),
            ("connect=x:after=1", "takes no =argument"),
            ("panic=now:after=1", "takes no =argument"),
        ] {
            let err = bad.parse::<Fault>().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
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
            ("panic:after=1:device=gpu", "use blk, net, rng or console"),
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
