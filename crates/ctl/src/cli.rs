//! `bulkhead ctl …`: the command-line face of the API.
//!
//! ```text
//! bulkhead ctl list [--json]
//! bulkhead ctl VM status [--json]
//! bulkhead ctl VM device restart ID [--json]
//! bulkhead ctl VM device upgrade ID --binary PATH [--json]
//! bulkhead ctl VM device replace-disk ID PATH[,readonly][,format=raw|qcow2|vmdk] [--json]
//! bulkhead ctl VM device limits ID [--bw B] [--ops B] [--rx-bw B] [--rx-ops B] [--tx-bw B]
//!     [--tx-ops B] [--json]       (B: SIZE@MS[+BURST] or none)
//! bulkhead ctl VM ctrl-alt-del [--json]
//! ```
//!
//! `VM` is a name, looked up in the run folder ([`bulkhead_api::paths`]), or a socket path (anything
//! with a `/`). The binary mounts [`CtlCommand`] as the `ctl` subcommand and calls [`run`],
//! whose value is the exit code: 0 when the VM did what was asked. An error reply or a VM that
//! cannot be reached is returned as an error, which the binary prints on one line and exits 1;
//! a bad command line is 2.

use crate::client::{self, ListedVm};
use anyhow::{anyhow, bail, Context};
use bulkhead_api::limits::{RateLimits, TokenBucket};
use bulkhead_api::protocol::{Payload, Reply, Request};
use bulkhead_api::status::{
    DeviceChange, DeviceMode, DeviceState, DeviceStatus, DiskReplaced, KeysPressed, RunState,
    SnapshotWritten, VmStatus,
};
use bulkhead_api::CoreStatus;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Talk to running VMs: `bulkhead ctl list`, or `bulkhead ctl VM status|device …`.
#[derive(Debug, Subcommand)]
#[command(
    override_usage = "bulkhead ctl list [--json]\n       \
                      bulkhead ctl <VM> status [--json]\n       \
                      bulkhead ctl <VM> device restart <ID> [--json]\n       \
                      bulkhead ctl <VM> device upgrade <ID> --binary <PATH> [--json]\n       \
                      bulkhead ctl <VM> device replace-disk <ID> <PATH[,OPTIONS]> [--json]\n       \
                      bulkhead ctl <VM> device limits <ID> [--bw|--ops|--rx-bw|--rx-ops|--tx-bw|--tx-ops \
                      SIZE@MS[+BURST]|none]… [--json]\n       \
                      bulkhead ctl <VM> ctrl-alt-del [--json]",
    after_help = "VM is a VM's name, or the path of its control socket (anything with a '/'). \
                  `bulkhead ctl VM --help` tells more."
)]
pub enum CtlCommand {
    /// List the running VMs (those whose control sockets answer).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// `bulkhead ctl VM status|device …`: VM is a name or a socket path.
    #[command(external_subcommand)]
    Vm(Vec<OsString>),
}

/// `bulkhead ctl VM …`, parsed.
#[derive(Debug, Parser)]
#[command(name = "bulkhead ctl", about = "Talk to a running VM.")]
pub struct VmCommand {
    /// The VM: its name, or the path of its control socket (anything with a '/').
    pub vm: String,
    /// What to ask it.
    #[command(subcommand)]
    pub action: VmAction,
}

/// What to ask a VM.
#[derive(Debug, Subcommand)]
pub enum VmAction {
    /// Show the VM and each of its devices: mode, pid, state, restarts, last exit, requests;
    /// and per process and thread class, the system calls allowed and whether the filter is
    /// in force.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restart or upgrade a device's backend, or swap a disk's image, while the guest runs.
    #[command(subcommand)]
    Device(Box<DeviceAction>),
    /// Press and release Ctrl-Alt-Del on the VM's keyboard (Firecracker's SendCtrlAltDel): a
    /// Linux guest reboots, which ends the VM (exit code 3). Answered at once; the guest may
    /// ignore the keys.
    CtrlAltDel {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pause the VM: its vCPUs stop and its devices' queues stop (the compartments keep
    /// running, nothing in flight is lost).
    Pause {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused VM.
    Resume {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the VM's complete state and memory to a folder, for `bulkhead run --restore DIR`.
    /// A running VM is paused for it and resumed after; a paused one stays paused. Disks are
    /// not copied: restore against the same images, as they were (pause, snapshot, stop).
    Snapshot {
        /// The folder (created if missing; a snapshot in it is replaced).
        #[arg(long)]
        to: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hand the running VM to a new core binary in the same process (same PID): the guest is
    /// paused, the new core takes its state and memory over and resumes it. If the new core
    /// cannot, the VM is handed back and runs on with the binary it had. Waits for the outcome.
    UpdateCore {
        /// The new binary (a `bulkhead` build); owned by root or the VM's user, not writable
        /// by others.
        #[arg(long)]
        binary: PathBuf,
        /// Print JSON (the core's status once the update is done).
        #[arg(long)]
        json: bool,
    },
}

/// What to do to a device.
#[derive(Debug, Subcommand)]
pub enum DeviceAction {
    /// Replace the device's backend by a new one running the same binary.
    Restart {
        /// The device, as `status` names it (e.g. blk0).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the device's backend by one running another binary.
    Upgrade {
        /// The device, as `status` names it (e.g. blk0).
        id: String,
        /// The new binary (a `bulkhead` build); owned by root or the VM's user, not writable
        /// by others.
        #[arg(long)]
        binary: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve a disk from another image while the guest runs: a new backend opens and locks
    /// it before the old one stops (a bad image changes nothing), the old image's lock is
    /// released, and the guest is told the new capacity.
    ReplaceDisk {
        /// The disk, as `status` names it (e.g. blk0).
        id: String,
        /// The new image: PATH[,readonly][,format=raw|qcow2|vmdk]. The format is probed when
        /// not given; `readonly` must be what the disk is (it cannot change under a guest).
        disk: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the device's rate limits while the guest runs; a bucket not named stays as it
    /// is. Each is SIZE@MS[+BURST] (SIZE tokens every MS milliseconds, BURST more once; K, M,
    /// G are binary) or none. With no bucket named, shows the limits in force.
    Limits {
        /// The device, as `status` names it (e.g. blk0).
        id: String,
        /// Bytes, a disk's or the rng's: e.g. 10M@1000 (10 MiB/s).
        #[arg(long, value_name = "SIZE@MS[+BURST]|none", value_parser = bucket)]
        bw: Option<Bucket>,
        /// Requests, a disk's or the rng's: e.g. 100@100 (1000 per second).
        #[arg(long, value_name = "N@MS[+BURST]|none", value_parser = bucket)]
        ops: Option<Bucket>,
        /// Bytes a network interface delivers to the guest.
        #[arg(long, value_name = "SIZE@MS[+BURST]|none", value_parser = bucket)]
        rx_bw: Option<Bucket>,
        /// Frames a network interface delivers to the guest.
        #[arg(long, value_name = "N@MS[+BURST]|none", value_parser = bucket)]
        rx_ops: Option<Bucket>,
        /// Bytes the guest sends on a network interface.
        #[arg(long, value_name = "SIZE@MS[+BURST]|none", value_parser = bucket)]
        tx_bw: Option<Bucket>,
        /// Frames the guest sends on a network interface.
        #[arg(long, value_name = "N@MS[+BURST]|none", value_parser = bucket)]
        tx_ops: Option<Bucket>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `PATH[,readonly|ro[=on|off]][,format=F]` (the path may be written `path=PATH`) as a
/// [`Request::DiskReplace`] for disk `id`, the path made absolute.
pub fn disk_replace_request(id: String, spec: &str) -> anyhow::Result<Request> {
    let mut path = None;
    let mut format = None;
    let mut read_only = None;
    for (i, option) in spec.split(',').enumerate() {
        let (key, value) = option.split_once('=').unwrap_or((option, ""));
        match (key, value) {
            ("path", v) if !v.is_empty() => path = Some(PathBuf::from(v)),
            ("readonly" | "ro", "" | "on" | "true") => read_only = Some(true),
            ("readonly" | "ro", "off" | "false") => read_only = Some(false),
            ("format", v) if !v.is_empty() => format = Some(v.to_string()),
            (word, "") if i == 0 && !word.is_empty() => path = Some(PathBuf::from(word)),
            _ => bail!(
                "unknown disk option {option:?}: give PATH[,readonly][,format=raw|qcow2|vmdk]"
            ),
        }
    }
    let Some(path) = path else { bail!("{spec:?} names no image: give PATH[,OPTIONS]") };
    let path = std::path::absolute(&path)
        .with_context(|| format!("cannot make {} absolute", path.display()))?;
    Ok(Request::DiskReplace { id, path, format, read_only })
}

/// A bucket on the command line; `None` is `none`, no limit.
#[derive(Clone, Copy, Debug)]
pub struct Bucket(Option<TokenBucket>);

/// `SIZE@MS[+BURST]` or `none` (no limit).
fn bucket(s: &str) -> Result<Bucket, String> {
    let b: bulkhead_devices::limit::BucketSpec = s.parse()?;
    Ok(Bucket((!b.is_unlimited()).then_some(TokenBucket {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time: b.refill_time_ms,
    })))
}

/// Runs `bulkhead ctl …`; the value is the exit code (see the module docs).
pub fn run(command: CtlCommand) -> anyhow::Result<i32> {
    match command {
        CtlCommand::List { json } => list(json),
        CtlCommand::Vm(args) => {
            let argv = std::iter::once(OsString::from("bulkhead ctl")).chain(args);
            match VmCommand::try_parse_from(argv) {
                Ok(command) => run_vm(command),
                Err(e) => {
                    // Help goes to stdout with 0; a usage error to stderr with 2.
                    let _ = e.print();
                    Ok(e.exit_code())
                }
            }
        }
    }
}

/// Runs a command addressed to one VM.
pub fn run_vm(command: VmCommand) -> anyhow::Result<i32> {
    let vm = command.vm.as_str();
    let action = match command.action {
        VmAction::Status { json } => Err((Request::Status, json)),
        VmAction::CtrlAltDel { json } => Err((Request::CtrlAltDel, json)),
        VmAction::Pause { json } => Err((Request::Pause, json)),
        VmAction::Resume { json } => Err((Request::Resume, json)),
        VmAction::Snapshot { to, json } => {
            let to = std::path::absolute(&to)
                .with_context(|| format!("cannot make {} absolute", to.display()))?;
            Err((Request::Snapshot { to }, json))
        }
        VmAction::UpdateCore { binary, json } => {
            let binary = std::path::absolute(&binary)
                .with_context(|| format!("cannot make {} absolute", binary.display()))?;
            return update_core(vm, binary, json);
        }
        VmAction::Device(action) => Ok(*action),
    };
    let (request, json) = match action {
        Err(simple) => simple,
        Ok(DeviceAction::Restart { id, json }) => (Request::DeviceRestart { id }, json),
        Ok(DeviceAction::Upgrade { id, binary, json }) => {
            let binary = std::path::absolute(&binary)
                .with_context(|| format!("cannot make {} absolute", binary.display()))?;
            (Request::DeviceUpgrade { id, binary }, json)
        }
        Ok(DeviceAction::ReplaceDisk { id, disk, json }) => {
            (disk_replace_request(id, &disk)?, json)
        }
        Ok(DeviceAction::Limits { id, bw, ops, rx_bw, rx_ops, tx_bw, tx_ops, json }) => {
            let b = |b: Option<Bucket>| b.map(|Bucket(b)| b);
            let limits = RateLimits {
                bandwidth: b(bw),
                ops: b(ops),
                rx_bandwidth: b(rx_bw),
                rx_ops: b(rx_ops),
                tx_bandwidth: b(tx_bw),
                tx_ops: b(tx_ops),
            };
            (Request::DeviceLimits { id, limits }, json)
        }
    };
    let reply = client::request(vm, &request).map_err(|e| anyhow!(crate::describe(&e)))?;
    let payload = match reply {
        Reply::Ok { result } => result,
        Reply::Error { message } => bail!("{vm}: {}", clean(&message)),
    };
    if json {
        println!("{}", to_json(&payload)?);
        return Ok(0);
    }
    match (&request, payload) {
        (_, Payload::Status(status)) => print!("{}", status_table(&status)),
        (Request::DeviceUpgrade { binary, .. }, Payload::DeviceChange(change)) => {
            println!("{}", change_line(&change, Some(binary)))
        }
        (_, Payload::DeviceChange(change)) => println!("{}", change_line(&change, None)),
        (_, Payload::DiskReplaced(done)) => println!("{}", disk_line(&done)),
        (_, Payload::LimitsChange(change)) => {
            println!("{} limits: {}", clean(&change.id), limits_text(&change.limits))
        }
        (_, Payload::KeysPressed(pressed)) => println!("{vm}: {}", keys_line(&pressed)),
        (_, Payload::RunState(state)) => println!("{vm}: {}", run_state_line(&state)),
        (_, Payload::SnapshotWritten(done)) => println!("{vm}: {}", snapshot_line(&done)),
        (_, Payload::CoreUpdateStarted(started)) => {
            println!("{vm}: handing over to {}", clean(&started.to.display().to_string()))
        }
    }
    Ok(0)
}

/// How long `update-core` waits for the new core (or the old one, handed back) to answer.
const UPDATE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `bulkhead ctl VM update-core`: asks for the update, then watches `status` until the core
/// that answers says how the attempt ended.
fn update_core(vm: &str, binary: PathBuf, json: bool) -> anyhow::Result<i32> {
    // The socket goes with the old core and comes back with the new one: found first.
    let socket = client::resolve(vm).map_err(|e| anyhow!(crate::describe(&e)))?;
    let request = Request::UpdateCore { binary };
    let reply = client::request_at(&socket, &request, client::reply_timeout(&request))
        .map_err(|e| anyhow!(crate::describe(&e)))?;
    let started = match reply {
        Reply::Ok { result: Payload::CoreUpdateStarted(started) } => started,
        Reply::Ok { .. } => bail!("{vm}: the VM answered the update with something else"),
        Reply::Error { message } => bail!("{vm}: {}", clean(&message)),
    };
    let deadline = std::time::Instant::now() + UPDATE_WAIT;
    let core = loop {
        let status =
            client::request_at(&socket, &Request::Status, client::reply_timeout(&Request::Status));
        if let Ok(Reply::Ok { result: Payload::Status(status) }) = status {
            // Done once the vCPUs run again — in the new core, or in the old one the VM was
            // handed back to (which says why) — and the core says how long the guest was paused.
            let done = |c: &CoreStatus| {
                let last = c.last_update.as_ref();
                c.attempts > started.attempts_before && last.is_some_and(|l| l.pause_ms.is_some())
            };
            if let Some(core) = status.core.filter(|c| done(c)) {
                break core;
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "{vm}: no core answered within {} s of the handover to {}; see the VM's log",
                UPDATE_WAIT.as_secs(),
                started.to.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&core)?);
    }
    let last = core.last_update.as_ref();
    match last.and_then(|l| l.failed.as_deref()) {
        Some(why) => {
            if !json {
                eprintln!(
                    "{vm}: the new core did not take the VM over: {}; the VM runs on with {}",
                    clean(why),
                    clean(&core.binary.display().to_string())
                );
            }
            Ok(1)
        }
        None => {
            if !json {
                let pause = last.and_then(|l| l.pause_ms);
                println!(
                    "{vm}: core updated to {} (update {}); the guest was paused {}",
                    clean(&core.binary.display().to_string()),
                    core.updates,
                    pause.map_or("an unknown time".into(), |ms| format!("{ms:.2} ms"))
                );
            }
            Ok(0)
        }
    }
}

/// `bulkhead ctl list`.
fn list(json: bool) -> anyhow::Result<i32> {
    let dir = bulkhead_api::paths::run_dir();
    let found = client::list_in(&dir).map_err(|e| anyhow!(crate::describe(&e)))?;
    for ListedVm { socket, status } in &found {
        if let Err(why) = status {
            eprintln!("{}: {why}", socket.display());
        }
    }
    let running: Vec<(&Path, &VmStatus)> = found
        .iter()
        .filter_map(|vm| vm.status.as_ref().ok().map(|status| (vm.socket.as_path(), status)))
        .collect();
    if json {
        #[derive(serde::Serialize)]
        struct Listed<'a> {
            socket: &'a Path,
            status: &'a VmStatus,
        }
        let list: Vec<_> =
            running.iter().map(|&(socket, status)| Listed { socket, status }).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if running.is_empty() {
        println!("no VMs are running (looked in {})", dir.display());
    } else {
        print!("{}", list_table(&running));
    }
    Ok(0)
}

fn to_json(payload: &Payload) -> serde_json::Result<String> {
    match payload {
        Payload::Status(status) => serde_json::to_string_pretty(status),
        Payload::DeviceChange(change) => serde_json::to_string_pretty(change),
        Payload::DiskReplaced(done) => serde_json::to_string_pretty(done),
        Payload::LimitsChange(change) => serde_json::to_string_pretty(change),
        Payload::KeysPressed(pressed) => serde_json::to_string_pretty(pressed),
        Payload::RunState(state) => serde_json::to_string_pretty(state),
        Payload::SnapshotWritten(done) => serde_json::to_string_pretty(done),
        Payload::CoreUpdateStarted(started) => serde_json::to_string_pretty(started),
    }
}

/// `ctrl-alt-del pressed (IRQ 1 raised; what happens is the guest's to decide)`.
pub fn run_state_line(state: &RunState) -> String {
    match (state.paused, state.changed) {
        (true, true) => format!("paused in {:.2} ms", state.took_ms),
        (true, false) => "already paused".into(),
        (false, true) => format!("resumed in {:.2} ms", state.took_ms),
        (false, false) => "not paused; nothing to resume".into(),
    }
}

pub fn snapshot_line(done: &SnapshotWritten) -> String {
    format!(
        "snapshot in {} ({:.1} MiB of memory, {:.1} KiB of state): paused in {:.2} ms, written in {:.1} ms{}",
        clean(&done.dir.display().to_string()),
        done.memory_written as f64 / (1 << 20) as f64,
        done.state_bytes as f64 / 1024.0,
        done.paused_ms,
        done.took_ms,
        if done.left_paused { "; the VM stays paused" } else { "; the VM runs on" }
    )
}

pub fn keys_line(pressed: &KeysPressed) -> String {
    let keys = clean(&pressed.keys);
    match (pressed.queued, pressed.interrupt) {
        (true, true) => {
            format!("{keys} pressed (IRQ 1 raised; what happens is the guest's to decide)")
        }
        (true, false) => format!(
            "{keys} pressed; the guest has its keyboard interrupt off, so the keys wait until it \
             reads them"
        ),
        (false, _) => {
            format!("{keys} pressed, but the guest has disabled its keyboard, which drops keys")
        }
    }
}

/// `blk0 now serves /srv/big.qcow2 (4.0 GiB, 8388608 sectors): pid 4301 → 4377, 48.2 ms
/// without a backend`.
pub fn disk_line(done: &DiskReplaced) -> String {
    let change = change_line(&done.change, None);
    let pids = change.split_once(": ").map_or("", |(_, rest)| rest);
    format!(
        "{} now serves {} ({}, {} sectors): {pids}",
        clean(&done.change.id),
        clean(&done.path.display().to_string()),
        bytes(done.capacity_bytes),
        done.capacity_bytes / 512
    )
}

/// `bandwidth 10485760/1000ms, ops none`: each bucket of a device, as the API gave them.
pub fn limits_text(limits: &RateLimits) -> String {
    let mut parts = Vec::new();
    for (key, value) in limits.entries() {
        let Some(bucket) = value else { continue };
        let text = match bucket {
            None => "none".to_string(),
            Some(b) if b.one_time_burst > 0 => {
                format!("{}/{}ms+{}", b.size, b.refill_time, b.one_time_burst)
            }
            Some(b) => format!("{}/{}ms", b.size, b.refill_time),
        };
        parts.push(format!("{key} {text}"));
    }
    parts.join(", ")
}

/// `blk0 restarted: pid 4250 → 4301, 12.5 ms without a backend`.
pub fn change_line(change: &DeviceChange, upgraded_to: Option<&Path>) -> String {
    let what = match upgraded_to {
        Some(binary) => format!("upgraded to {}", binary.display()),
        None => "restarted".to_string(),
    };
    let pid = |pid: Option<u32>| pid.map_or("-".to_string(), |p| p.to_string());
    let pids = match (change.old_pid, change.new_pid) {
        (None, None) => "a thread".to_string(),
        (old, new) => format!("pid {} → {}", pid(old), pid(new)),
    };
    format!("{} {what}: {pids}, {:.1} ms without a backend", clean(&change.id), change.took_ms)
}

/// `core: /usr/bin/bulkhead 0.1.0; 2 updates (the last paused the guest 41.20 ms)`.
fn core_line(core: &CoreStatus) -> String {
    let mut line =
        format!("core: {} {}", clean(&core.binary.display().to_string()), clean(&core.version));
    if core.attempts > 0 {
        let plural = if core.updates == 1 { "" } else { "s" };
        line.push_str(&format!("; {} update{plural}", core.updates));
        match core.last_update.as_ref() {
            Some(last) if last.failed.is_some() => line.push_str(&format!(
                " (the last, to {}, failed: {})",
                clean(&last.to.display().to_string()),
                clean(last.failed.as_deref().unwrap_or_default())
            )),
            Some(last) => {
                if let Some(ms) = last.pause_ms {
                    line.push_str(&format!(" (the last paused the guest {ms:.2} ms)"));
                }
            }
            None => {}
        }
    }
    line.push('\n');
    line
}

/// The status as a heading, a device table, and each compartment's sandbox line.
pub fn status_table(status: &VmStatus) -> String {
    let mut out = format!(
        "VM {}: core pid {}, {} vCPU{}, {} of memory, up {}{}\n",
        status.name,
        status.core_pid,
        status.cpus,
        if status.cpus == 1 { "" } else { "s" },
        bytes(status.memory_bytes),
        duration(status.uptime_s),
        if status.paused { ", PAUSED" } else { "" },
    );
    if let Some(limits) = &status.limits {
        out.push_str(&format!("limits: {}\n", clean(limits)));
    }
    if let Some(core) = &status.core {
        out.push_str(&core_line(core));
    }
    if status.devices.is_empty() {
        out.push_str("no devices\n");
        out.push_str(&confinement_table(status));
        return out;
    }
    let header = ["DEVICE", "KIND", "MODE", "PID", "STATE", "RESTARTS", "UPTIME", "REQUESTS"];
    let mut rows = vec![header.map(String::from).to_vec()];
    rows[0].push("LAST EXIT".into());
    rows.extend(status.devices.iter().map(device_row));
    for line in table(&rows) {
        out.push_str(&line);
        out.push('\n');
    }
    for device in &status.devices {
        if let Some(sandbox) = &device.sandbox {
            out.push_str(&format!("{} sandbox: {}\n", clean(&device.id), clean(sandbox)));
        }
        if let Some(on_restart) = &device.on_restart {
            out.push_str(&format!("{} on restart: {}\n", clean(&device.id), clean(on_restart)));
        }
        if let Some(limits) = &device.rate_limits {
            out.push_str(&format!("{} limits: {}\n", clean(&device.id), limits_text(limits)));
        }
        if let Some(pid) = device.standby_pid {
            out.push_str(&format!("{} standby: compartment pid {pid}, ready\n", clean(&device.id)));
        }
    }
    out.push_str(&confinement_table(status));
    out
}

/// Per process and thread class: the system calls allowed and whether the filter is in force
/// (every thread of the class shows `Seccomp: 2`).
fn confinement_table(status: &VmStatus) -> String {
    if status.confinement.is_empty() {
        return String::new();
    }
    let header = ["PROCESS", "PID", "THREADS", "CLASS", "SYSCALLS", "SECCOMP", "NO CAPS", "NNP"];
    let mut rows = vec![header.map(String::from).to_vec()];
    for c in &status.confinement {
        // In force: every thread of the class runs under its filter.
        let in_force = c.threads > 0 && c.filtered == c.threads && c.syscalls_allowed.is_some();
        let seccomp = match (in_force, c.filtered) {
            (true, _) => "in force".to_string(),
            (false, 0) => "none".to_string(),
            (false, n) => format!("{n} of {}", c.threads),
        };
        rows.push(vec![
            clean(&c.process),
            c.pid.to_string(),
            c.threads.to_string(),
            clean(&c.class),
            c.syscalls_allowed.map_or("-".into(), |n| n.to_string()),
            seccomp,
            format!("{}/{}", c.no_capabilities, c.threads),
            format!("{}/{}", c.no_new_privs, c.threads),
        ]);
    }
    let mut out = String::from("confinement (per thread, from /proc/PID/task/TID/status):\n");
    for line in table(&rows) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The word the table shows for where a backend runs.
fn mode_word(mode: DeviceMode) -> &'static str {
    match mode {
        DeviceMode::Compartment => "compartment",
        DeviceMode::Thread => "thread",
        DeviceMode::Outside => "outside",
        DeviceMode::External => "external",
    }
}

/// The word the table shows for a backend's state.
fn state_word(state: DeviceState) -> &'static str {
    match state {
        DeviceState::Running => "running",
        DeviceState::Restarting => "restarting",
        DeviceState::Failed => "failed",
        DeviceState::Stopped => "stopped",
    }
}

fn device_row(d: &DeviceStatus) -> Vec<String> {
    vec![
        d.id.clone(),
        d.kind.clone(),
        mode_word(d.mode).to_string(),
        d.pid.map_or("-".to_string(), |p| p.to_string()),
        state_word(d.state).to_string(),
        d.restarts.to_string(),
        duration(d.uptime_s),
        d.requests.to_string(),
        d.last_exit.clone().unwrap_or_else(|| "-".into()),
    ]
}

/// The running VMs, one per line.
fn list_table(running: &[(&Path, &VmStatus)]) -> String {
    let header = ["NAME", "PID", "VCPUS", "MEMORY", "DEVICES", "UPTIME", "SOCKET"];
    let mut rows = vec![header.map(String::from).to_vec()];
    rows.extend(running.iter().map(|(socket, s)| {
        vec![
            s.name.clone(),
            s.core_pid.to_string(),
            s.cpus.to_string(),
            bytes(s.memory_bytes),
            s.devices.len().to_string(),
            duration(s.uptime_s),
            socket.display().to_string(),
        ]
    }));
    table(&rows).into_iter().map(|line| line + "\n").collect()
}

/// Rows as left-aligned columns two spaces apart (the last one, free text, unpadded).
fn table(rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<String>> =
        rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()).collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let last = row.len().saturating_sub(1);
            let cells = row.iter().zip(&widths).enumerate().map(|(i, (cell, &w))| {
                if i == last {
                    cell.clone()
                } else {
                    format!("{cell:<w$}")
                }
            });
            cells.collect::<Vec<_>>().join("  ")
        })
        .collect()
}

/// Text from the VM without control characters, which a terminal could take as commands.
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// `512 MiB`, `1.5 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `45s`, `3m12s`, `2h05m`, `3d04h`.
fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(512 << 20), "512 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(192), "3m12s");
        assert_eq!(duration(7500), "2h05m");
        assert_eq!(duration(3 * 86400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn replace_disk_takes_a_path_and_options() {
        let r = disk_replace_request("blk0".into(), "/srv/b.qcow2,format=qcow2").unwrap();
        let want = Request::DiskReplace {
            id: "blk0".into(),
            path: "/srv/b.qcow2".into(),
            format: Some("qcow2".into()),
            read_only: None,
        };
        assert_eq!(r, want);
        let r = disk_replace_request("blk0".into(), "path=b.raw,readonly").unwrap();
        let Request::DiskReplace { path, read_only, format, .. } = r else { panic!() };
        assert!(path.is_absolute() && path.ends_with("b.raw"), "{}", path.display());
        assert_eq!((read_only, format), (Some(true), None));
        for bad in ["", ",readonly", "/a,queues=2", "/a,format=", "/a,b"] {
            assert!(disk_replace_request("blk0".into(), bad).is_err(), "{bad}");
        }
        let done = DiskReplaced {
            change: DeviceChange {
                id: "blk0".into(),
                old_pid: Some(4301),
                new_pid: Some(4377),
                took_ms: 48.24,
            },
            path: "/srv/b.qcow2".into(),
            capacity_bytes: 4 << 30,
        };
        assert_eq!(
            disk_line(&done),
            "blk0 now serves /srv/b.qcow2 (4 GiB, 8388608 sectors): pid 4301 → 4377, 48.2 ms \
             without a backend"
        );
    }

    #[test]
    fn status_is_a_table() {
        let device = |id: &str, mode, pid, last_exit: Option<&str>| DeviceStatus {
            id: id.into(),
            kind: id[..3].into(),
            mode,
            pid,
            state: DeviceState::Running,
            restarts: 1,
            last_exit: last_exit.map(String::from),
            uptime_s: 192,
            requests: 10234,
            sandbox: pid.map(|_| "seccomp(filter) nnp caps(none)".into()),
            on_restart: pid.map(|_| "in-flight requests resubmitted".into()),
            rate_limits: None,
            standby_pid: None,
        };
        let status = VmStatus {
            name: "web1".into(),
            core_pid: 4242,
            cpus: 4,
            memory_bytes: 1 << 30,
            uptime_s: 3720,
            limits: None,
            paused: false,
            core: None,
            devices: vec![
                device("blk0", DeviceMode::Compartment, Some(4250), Some("killed by signal 9")),
                device("rng0", DeviceMode::Thread, None, None),
            ],
            confinement: vec![
                bulkhead_api::status::ConfinementStatus {
                    process: "core".into(),
                    pid: 4242,
                    class: "vcpu".into(),
                    threads: 4,
                    filtered: 4,
                    syscalls_allowed: Some(31),
                    no_capabilities: 4,
                    no_new_privs: 4,
                },
                bulkhead_api::status::ConfinementStatus {
                    process: "blk0".into(),
                    pid: 4250,
                    class: "compartment".into(),
                    threads: 3,
                    filtered: 2,
                    syscalls_allowed: Some(60),
                    no_capabilities: 3,
                    no_new_privs: 3,
                },
            ],
        };
        let expected = "\
VM web1: core pid 4242, 4 vCPUs, 1 GiB of memory, up 1h02m
DEVICE  KIND  MODE         PID   STATE    RESTARTS  UPTIME  REQUESTS  LAST EXIT
blk0    blk   compartment  4250  running  1         3m12s   10234     killed by signal 9
rng0    rng   thread       -     running  1         3m12s   10234     -
blk0 sandbox: seccomp(filter) nnp caps(none)
blk0 on restart: in-flight requests resubmitted
confinement (per thread, from /proc/PID/task/TID/status):
PROCESS  PID   THREADS  CLASS        SYSCALLS  SECCOMP   NO CAPS  NNP
core     4242  4        vcpu         31        in force  4/4      4/4
blk0     4250  3        compartment  60        2 of 3    3/3      3/3
";
        assert_eq!(status_table(&status), expected);
    }

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        let rows = vec![vec!["a\x1b[2Jb".to_string(), "c\nd".to_string()]];
        assert_eq!(table(&rows), vec!["a[2Jb  cd".to_string()]);
    }

    #[test]
    fn change_lines() {
        let change =
            DeviceChange { id: "blk0".into(), old_pid: Some(1), new_pid: Some(2), took_ms: 12.25 };
        assert_eq!(
            change_line(&change, None),
            "blk0 restarted: pid 1 → 2, 12.2 ms without a backend"
        );
        let thread = DeviceChange { old_pid: None, new_pid: None, ..change };
        assert_eq!(
            change_line(&thread, Some(Path::new("/b"))),
            "blk0 upgraded to /b: a thread, 12.2 ms without a backend"
        );
    }

    #[test]
    fn vm_commands_parse() {
        let parse = |args: &[&str]| {
            VmCommand::try_parse_from(std::iter::once("bulkhead ctl").chain(args.iter().copied()))
        };
        let c = parse(&["vm0", "device", "upgrade", "blk0", "--binary", "/b"]).unwrap();
        assert!(
            matches!(c.action, VmAction::Device(a) if matches!(*a, DeviceAction::Upgrade { .. }))
        );
        assert!(parse(&["vm0"]).is_err());
        assert!(parse(&["vm0", "device", "restart"]).is_err());
    }

    #[test]
    fn ctl_help_names_both_forms() {
        use clap::CommandFactory;
        #[derive(Parser)]
        struct Bulkhead {
            #[command(subcommand)]
            command: Top,
        }
        #[derive(Subcommand)]
        enum Top {
            #[command(subcommand)]
            Ctl(CtlCommand),
        }
        let mut command = Bulkhead::command();
        let help = command.find_subcommand_mut("ctl").unwrap().render_long_help().to_string();
        println!("{help}");
        assert!(help.contains("list"), "{help}");
        assert!(help.contains("bulkhead ctl <VM> device upgrade <ID> --binary"), "{help}");
    }
}
