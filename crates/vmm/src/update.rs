//! `bulkhead ctl VM update-core --binary PATH`: the running VM handed to a new core binary, in
//! this process.
//!
//! 1. The API checks the binary (an absolute path, owned by root or the VM's user, not
//!    writable by others, as for a compartment's upgrade) and that it is a Bulkhead core that
//!    takes a VM over in this handover's version ([`check_binary`]).
//! 2. The core pauses the VM and takes its state as for a snapshot
//!    ([`bulkhead_core::state::Machine::hand_over`]), and the VM's run ends.
//! 3. Everything else is torn down as at any end: the vCPU threads, the compartments, the KVM
//!    VM, the cgroups, the sockets. The guest's memory stays in its memfd.
//! 4. The launcher thread ([`crate::confine::updater`]) executes the new binary in this process
//!    (the same PID) as `bulkhead run --takeover FD`, FD a memfd holding a [`Handover`]: the
//!    state, how the VM was started (its recipe), the memory's descriptor and the previous
//!    binary's.
//! 5. The new core starts the VM as a restore does, on the memory handed over: the devices'
//!    backends are started and handed their devices where they stood, each vCPU is set as it
//!    was, and the guest runs on.
//!
//! When the new binary cannot be executed, or the new core fails before its vCPUs run, the
//! VM is handed back the same way to the previous binary (the descriptor the handover keeps),
//! which says why in `status`.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use bulkhead_core::state::MachineState;
use serde::{Deserialize, Serialize};

use crate::backends::{Kept, KeptState};
use crate::confine::updater::{self, Program};

/// The handover's version: a binary takes over only the version it speaks.
pub const VERSION: u32 = 1;

/// Every binary that can take a VM over in [`VERSION`] holds these bytes ([`check_binary`]).
#[used]
static MARKER: [u8; 30] = *b"bulkhead-core-takes-over-v0001";

/// The largest handover read (the state of 64 vCPUs and 24 devices is well below).
const MAX_HANDOVER_BYTES: u64 = 64 << 20;

/// What a core hands its successor, in a memfd whose descriptor follows `--takeover`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    pub version: u32,
    /// The VM's name (its control socket's).
    pub name: String,
    pub verbose: bool,
    /// How the VM was started: the VMM's recipe (`bulkhead run`'s arguments and folder).
    pub recipe: String,
    pub machine: MachineState,
    /// The guest memory's memfd, and its size.
    pub memory_fd: i32,
    pub memory_bytes: u64,
    /// When the vCPUs stopped (`CLOCK_MONOTONIC`, ns).
    pub paused_at_ns: u64,
    /// The binary that hands over (to hand back to), by descriptor and by name.
    pub previous_fd: i32,
    pub previous: PathBuf,
    /// The binary asked for.
    pub binary: PathBuf,
    /// The VM's core updates so far, and attempts (failed ones too), before this one.
    pub updates: u32,
    pub attempts: u32,
    /// Set when the VM is handed back: why the new core did not take it.
    pub failed: Option<String>,
    /// The compartments kept running for the new core.
    pub kept: Vec<KeptState>,
}

/// What the running core says of itself in `status`.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub updates: u32,
    pub attempts: u32,
    /// The last attempt: from which binary, to which, and why it failed.
    pub last: Option<(PathBuf, PathBuf, Option<String>)>,
}

static RECORD: Mutex<Option<Record>> = Mutex::new(None);
/// The binary an accepted `update-core` asked for, until the VM's run ends.
static REQUESTED: Mutex<Option<PathBuf>> = Mutex::new(None);
/// This process's binary, opened at start: handed to the successor to hand back to.
static OWN_BINARY: OnceLock<Option<File>> = OnceLock::new();
/// Its path, as the kernel names it.
static OWN_PATH: OnceLock<PathBuf> = OnceLock::new();

/// Opens this process's own binary (call at start, before the threads confine themselves).
pub fn open_own_binary() {
    OWN_BINARY.get_or_init(|| File::open("/proc/self/exe").ok());
    OWN_PATH.get_or_init(|| std::fs::read_link("/proc/self/exe").unwrap_or_default());
}

/// The binary this core runs.
pub fn own_path() -> PathBuf {
    OWN_PATH.get().cloned().unwrap_or_default()
}

/// What `status` says of the core's updates.
pub fn record() -> Record {
    RECORD.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
}

fn set_record(record: Record) {
    *RECORD.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
}

/// Checks that `binary` is a Bulkhead core that takes a VM over in this handover's version.
pub fn check_binary(binary: &Path) -> Result<(), String> {
    let bytes =
        std::fs::read(binary).map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(format!("{} is not an executable (ELF) file", binary.display()));
    }
    if memchr::memmem::find(&bytes, &MARKER).is_none() {
        return Err(format!(
            "{} is not a Bulkhead core that can take a VM over (handover version {VERSION})",
            binary.display()
        ));
    }
    Ok(())
}

/// Remembers the binary an accepted update asked for (the VM's run is about to end).
pub fn request(binary: PathBuf) {
    *REQUESTED.lock().unwrap_or_else(|p| p.into_inner()) = Some(binary);
}

/// Whether this core can update: its launcher may execute a new core, and it has its own
/// binary to hand back to.
pub fn available() -> Result<(), String> {
    if !updater::started() {
        return Err("this VM runs with --core-update off: its core cannot be updated".into());
    }
    if !OWN_BINARY.get().is_some_and(Option::is_some) {
        return Err("the core could not open its own binary at start, to hand the VM back to \
                    if the new one fails; its core cannot be updated"
            .into());
    }
    Ok(())
}

/// The VM's run ended with a handover: executes the new binary with it, on the launcher (the
/// calling thread's filter allows none of it; see [`crate::confine::updater`]). Returns only if
/// neither the new binary nor this one could be executed (the VM is then lost).
pub fn hand_over(name: &str, verbose: bool) -> anyhow::Error {
    let Some(handoff) = bulkhead_core::state::handover::take() else {
        return anyhow::anyhow!(
            "the VM's run ended for a core update, but nothing was handed over"
        );
    };
    let binary = REQUESTED.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(binary) = binary else {
        return anyhow::anyhow!(
            "the VM's run ended for a core update, but no binary was asked for"
        );
    };
    let name = name.to_string();
    crate::confine::launcher::call(move || execute_handover(handoff, binary, name, verbose))
}

/// [`hand_over`], on the launcher thread.
fn execute_handover(
    handoff: bulkhead_core::state::handover::Handoff,
    binary: PathBuf,
    name: String,
    verbose: bool,
) -> anyhow::Error {
    let record = record();
    let own = OWN_BINARY.get().and_then(Option::as_ref);
    let (Some(own), Some(recipe)) = (own, handoff.recipe.clone()) else {
        return anyhow::anyhow!(
            "the VM cannot be handed over: no binary or recipe to start it with"
        );
    };
    let memory = match inheritable(handoff.memory.as_raw_fd()) {
        Ok(fd) => fd,
        Err(e) => return anyhow::anyhow!("cannot hand the guest's memory over: {e}"),
    };
    let previous = match inheritable(own.as_raw_fd()) {
        Ok(fd) => fd,
        Err(e) => return anyhow::anyhow!("cannot keep this binary to hand back to: {e}"),
    };
    // What keeps the kept compartments' descriptors open, until the new binary runs.
    let held: Vec<Box<Kept>> =
        handoff.kept.into_iter().filter_map(|(_, kept)| kept.downcast::<Kept>().ok()).collect();
    let kept: Vec<KeptState> = held.iter().map(|k| k.state.clone()).collect();
    if verbose {
        let names: Vec<&str> = kept.iter().map(|k| k.device.as_str()).collect();
        let since = bulkhead_core::state::handover::monotonic_ns()
            .saturating_sub(handoff.paused_at_ns) as f64
            / 1e6;
        eprintln!(
            "bulkhead: handing the VM over to {} ({since:.2} ms after its vCPUs stopped); \
             compartments kept running: {}",
            binary.display(),
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        );
    }
    for fd in kept.iter().flat_map(KeptState::fds) {
        set_cloexec(fd, false);
    }
    let mut handover = Handover {
        version: VERSION,
        kept,
        name,
        verbose,
        recipe,
        machine: handoff.machine,
        memory_fd: memory.as_raw_fd(),
        memory_bytes: handoff.memory_bytes,
        paused_at_ns: handoff.paused_at_ns,
        previous_fd: previous.as_raw_fd(),
        previous: own_path(),
        binary: binary.clone(),
        updates: record.updates,
        attempts: record.attempts,
        failed: None,
    };
    let e = execute(Program::Path(binary.clone()), &handover);
    eprintln!(
        "bulkhead: cannot execute the new core {}: {e}; the VM goes on with this one",
        binary.display()
    );
    handover.failed = Some(format!("cannot execute {}: {e}", binary.display()));
    let e = execute(Program::Fd(previous.as_raw_fd()), &handover);
    drop((memory, previous, held));
    anyhow::anyhow!("the VM is lost: cannot execute the new core nor this one again ({e})")
}

/// Writes `handover` to an inheritable memfd and executes `program` with it. Returns only on
/// failure: the kernel's refusal, or why the handover could not be written.
fn execute(program: Program, handover: &Handover) -> std::io::Error {
    let file = match write_handover(handover) {
        Ok(file) => file,
        Err(e) => return e,
    };
    let args = vec![
        "bulkhead".to_string(),
        "run".to_string(),
        "--takeover".to_string(),
        file.as_raw_fd().to_string(),
    ];
    let e = updater::execute(program, args);
    drop(file);
    e
}

fn write_handover(handover: &Handover) -> std::io::Result<OwnedFd> {
    let text = serde_json::to_vec(handover).map_err(std::io::Error::other)?;
    let mut file = plain_memfd()?;
    file.write_all(&text)?;
    file.rewind()?;
    inheritable(file.as_raw_fd())
}

/// A memfd for the handover's text.
fn plain_memfd() -> std::io::Result<File> {
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"bulkhead-handover".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and is owned by no one else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// A duplicate of `fd` that an `execve` keeps open.
fn inheritable(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD returns a new descriptor (without FD_CLOEXEC) or -1; `fd` is open.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD, 3) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: dup was just returned by fcntl and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Sets FD_CLOEXEC on `fd`, or clears it.
fn set_cloexec(fd: i32, on: bool) {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD on a descriptor number takes an integer; a closed one only fails.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flag) };
}

/// A handover read back by the new core (`bulkhead run --takeover FD`), with the descriptors
/// it names still open in case the VM is handed back.
pub struct Received {
    pub handover: Handover,
    /// The handover as read: the new core's copy of the state is parsed from it again (KVM's
    /// XSAVE area cannot be cloned), and `handover` keeps its own for a hand-back.
    text: Vec<u8>,
}

impl Received {
    /// Reads the handover in memfd `fd` (and closes it).
    pub fn read(fd: i32) -> anyhow::Result<Received> {
        if fd < 3 {
            anyhow::bail!("--takeover {fd}: not a descriptor a core hands over");
        }
        // SAFETY: the previous core opened `fd` for this process and nothing else owns it; a
        // number that is not open fails at the first read.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let mut text = Vec::new();
        (&mut file)
            .take(MAX_HANDOVER_BYTES)
            .read_to_end(&mut text)
            .with_context(|| format!("cannot read the handover (descriptor {fd})"))?;
        let handover: Handover =
            serde_json::from_slice(&text).context("the handover is not one this core reads")?;
        if handover.version != VERSION {
            anyhow::bail!(
                "the handover is version {} where this core takes version {VERSION}",
                handover.version
            );
        }
        // Children must not inherit them; a hand-back clears the flag again.
        set_cloexec(handover.memory_fd, true);
        set_cloexec(handover.previous_fd, true);
        for fd in handover.kept.iter().flat_map(KeptState::fds) {
            set_cloexec(fd, true);
        }
        let attempts = handover.attempts + 1;
        let last =
            Some((handover.previous.clone(), handover.binary.clone(), handover.failed.clone()));
        let updates = handover.updates + u32::from(handover.failed.is_none());
        set_record(Record { updates, attempts, last });
        Ok(Received { handover, text })
    }

    /// The compartments kept running for this core.
    pub fn kept(&self) -> Vec<KeptState> {
        self.handover.kept.clone()
    }

    /// The VM's state, for the new core to resume (a copy: the handover keeps its own).
    pub fn machine(&self) -> anyhow::Result<MachineState> {
        let handover: Handover = serde_json::from_slice(&self.text)?;
        Ok(handover.machine)
    }

    /// The guest's memory: a duplicate of the descriptor handed over (kept, in case the VM is
    /// handed back).
    pub fn memory(&self) -> anyhow::Result<File> {
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
        let dup = unsafe { libc::fcntl(self.handover.memory_fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error())
                .context("the guest memory's descriptor handed over is not open");
        }
        // SAFETY: dup was just returned by fcntl and is owned by no one else.
        Ok(unsafe { File::from_raw_fd(dup) })
    }

    /// Hands the VM back to the previous binary, saying why (`failed`). Returns only if that
    /// cannot be done: the VM is then lost.
    pub fn hand_back(mut self, failed: &anyhow::Error) -> anyhow::Error {
        let why = format!("{failed:#}");
        if let Some(before) = &self.handover.failed {
            return anyhow::anyhow!(
                "the VM is lost: the new core failed ({before}), and so did the previous one it \
                 was handed back to ({why})"
            );
        }
        eprintln!(
            "bulkhead: the new core cannot take the VM over ({why}); handing it back to {}",
            self.handover.previous.display()
        );
        self.handover.failed = Some(why);
        // The previous core starts the devices' backends again: the kept compartments end.
        // (One this core took over and has let go of is gone already: nothing happens.)
        for kept in std::mem::take(&mut self.handover.kept) {
            kept.end();
        }
        set_cloexec(self.handover.memory_fd, false);
        set_cloexec(self.handover.previous_fd, false);
        let previous = self.handover.previous_fd;
        let e = execute(Program::Fd(previous), &self.handover);
        anyhow::anyhow!("the VM is lost: cannot hand it back to the previous core ({e})")
    }
}
