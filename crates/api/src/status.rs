//! What the API reports: plain data, filled in by the core's [`crate::ControlTarget`].
//!
//! The types are serialized as they are into the replies (see [`crate::protocol`]), so a field
//! renamed here is a protocol change. Clients ignore fields they do not know, so adding a field
//! is not.

use serde::{Deserialize, Serialize};

/// A running VM and each of its devices, as `bulkhead ctl <vm> status` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The VM's name (the one its control socket is named after).
    pub name: String,
    /// PID of the VM's core process.
    pub core_pid: u32,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// Seconds since the VM started.
    pub uptime_s: u64,
    /// One entry per device, in the order they were attached.
    pub devices: Vec<DeviceStatus>,
    /// The VM's CPU and memory partitioning (cgroups, pins), and any limit
    /// that could not be applied; absent from VMMs that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<String>,
    /// How each class of threads of the core and of each compartment is confined.
    #[serde(default)]
    pub confinement: Vec<ConfinementStatus>,
    /// The VM is paused (`bulkhead ctl VM pause`): its vCPUs and devices' queues stopped.
    #[serde(default)]
    pub paused: bool,
    /// The core's binary and its updates (`bulkhead ctl VM update-core`); absent from VMMs
    /// that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<Box<CoreStatus>>,
}

/// The core process's binary, and the updates it took the VM through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoreStatus {
    /// The binary the core runs now.
    pub binary: std::path::PathBuf,
    /// Its version.
    pub version: String,
    /// Core updates the VM went through (the process, and its PID, stayed the same).
    pub updates: u32,
    /// Update attempts, those that failed and handed the VM back included.
    pub attempts: u32,
    /// The last attempt, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<CoreUpdateStatus>,
}

/// One core update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoreUpdateStatus {
    /// The binary that handed the VM over.
    pub from: std::path::PathBuf,
    /// The binary asked for.
    pub to: std::path::PathBuf,
    /// Why the new binary did not take the VM over (it was handed back); `None`: it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// How long the guest was paused: from its vCPUs stopped in the old core to their threads
    /// started in the core that runs it now (the new one, or the old one it was handed back
    /// to), in milliseconds; `None` until they run.
    pub pause_ms: Option<f64>,
}

/// The answer to an accepted core update: the VM is being handed to the new binary. The
/// client then watches `status` for the outcome ([`CoreStatus::attempts`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoreUpdateStarted {
    /// The binary now, and the one asked for.
    pub from: std::path::PathBuf,
    pub to: std::path::PathBuf,
    /// Attempts before this one: the new core reports one more.
    pub attempts_before: u32,
    /// From the request to the VM paused, in milliseconds.
    pub paused_ms: f64,
}

/// One class of threads of one process (the core or a compartment), as the kernel reports it
/// in `/proc/PID/task/TID/status`: seccomp mode, no_new_privs and capabilities are per thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfinementStatus {
    /// `core`, or the device a compartment serves (`blk0`).
    pub process: String,
    /// The process's PID.
    pub pid: u32,
    /// The thread class: `vcpu`, `event-loop`, `api`, `launcher`, `device-blk` (monolithic
    /// mode), or `compartment` (every thread of a compartment process).
    pub class: String,
    /// Threads of this class now.
    pub threads: u32,
    /// Of those, how many the kernel says run under a seccomp filter (`Seccomp: 2`).
    pub filtered: u32,
    /// Distinct system calls the class's allow-list lets through; `None` when it has none.
    pub syscalls_allowed: Option<u32>,
    /// Of the threads, how many hold no capability (effective, permitted, bounding, ambient).
    pub no_capabilities: u32,
    /// Of the threads, how many have no_new_privs set.
    pub no_new_privs: u32,
}

/// One device of a VM and the backend that serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The device's name within the VM, e.g. `blk0`: what `device restart` takes.
    pub id: String,
    /// The kind of device: `blk`, `net`, `rng`, …
    pub kind: String,
    /// Where the backend runs.
    pub mode: DeviceMode,
    /// PID of the backend's process (a compartment); `None` for threads, or while none runs.
    pub pid: Option<u32>,
    /// What the supervisor says of the backend.
    pub state: DeviceState,
    /// How many times the backend was restarted or upgraded.
    pub restarts: u32,
    /// Why the last backend process ended, in words: `killed by signal 9`,
    /// `hung: no progress for 5 s`, `upgraded`. `None` while the first one runs.
    pub last_exit: Option<String>,
    /// Seconds since the backend now serving the device started.
    pub uptime_s: u64,
    /// Requests the device has served (over all backends it had).
    pub requests: u64,
    /// The sandbox summary line of a compartment (`seccomp(filter) nnp caps(none) ns(...)`).
    pub sandbox: Option<String>,
    /// What a restart of the backend keeps of the requests in flight, in words (absent from
    /// VMs older than this field).
    #[serde(default)]
    pub on_restart: Option<String>,
    /// The rate limits in force, every bucket of the device (`null`: no limit); absent for a
    /// device that has no rate limiter (a console, a backend Bulkhead did not write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<crate::limits::RateLimits>,
    /// The standby compartment (`bulkhead run --standby`): started ahead, sandboxed and in its
    /// cgroup, it takes over at the next restart. Absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_pid: Option<u32>,
}

/// Where a device backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceMode {
    /// A sandboxed process of its own (microkernel mode).
    Compartment,
    /// A thread of the core (monolithic mode).
    Thread,
    /// A vhost-user backend program Bulkhead did not write, in a compartment Bulkhead
    /// started and restarts (`--device TYPE,exec=PROGRAM`).
    Outside,
    /// A vhost-user backend Bulkhead did not start (`--vhost-user`): Bulkhead cannot restart
    /// it, but reconnects when it is back on its socket.
    External,
}

/// What the supervisor says of a device backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Serving the guest.
    Running,
    /// Being restarted or replaced; the guest's requests wait.
    Restarting,
    /// Ended and not brought back (restart limit reached, or it cannot be restarted).
    Failed,
    /// Stopped on purpose (the VM is shutting down).
    Stopped,
}

/// What a restart or an upgrade did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceChange {
    /// The device.
    pub id: String,
    /// PID of the backend that was replaced (`None` for a thread).
    pub old_pid: Option<u32>,
    /// PID of the backend that now serves the device (`None` for a thread).
    pub new_pid: Option<u32>,
    /// How long the device was without a backend: from stopping the old one to the new one
    /// serving, in milliseconds.
    pub took_ms: f64,
}

/// What a disk's swap to a new image did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskReplaced {
    /// The backend's change: the one on the old image stopped, the one on the new started.
    pub change: DeviceChange,
    /// The image the disk is now served from.
    pub path: std::path::PathBuf,
    /// The disk's capacity now, in bytes, as its guest is told it.
    pub capacity_bytes: u64,
}

/// What pressing keys on the VM's keyboard did (the guest may ignore them: only its driver
/// knows what they mean to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysPressed {
    /// The keys, pressed together and released: `ctrl-alt-del`.
    pub keys: String,
    /// The scan codes were put in the keyboard controller's buffer; false when the guest had
    /// disabled its keyboard, which drops keys as a real one does.
    pub queued: bool,
    /// The controller's command byte had keyboard interrupts on, so IRQ 1 was raised; false:
    /// the codes wait for a guest that reads them without one.
    pub interrupt: bool,
}

/// What a pause or a resume did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Whether the VM is paused now.
    pub paused: bool,
    /// Whether the request changed anything (false: it was already so).
    pub changed: bool,
    /// How long it took, in milliseconds.
    pub took_ms: f64,
}

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotWritten {
    /// The snapshot's folder.
    pub dir: std::path::PathBuf,
    /// Bytes of guest memory written (the pages that are not zero).
    pub memory_written: u64,
    /// Bytes of the machine's state (`machine.json`).
    pub state_bytes: u64,
    /// From the request to the VM paused, in milliseconds.
    pub paused_ms: f64,
    /// From the request to the snapshot written (and the VM resumed), in milliseconds.
    pub took_ms: f64,
    /// Whether the VM was left paused (it was paused before the snapshot).
    pub left_paused: bool,
}
