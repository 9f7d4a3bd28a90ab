//! The management API of a running VM: `bulkhead_api`'s server, answered
//! from the core's supervisor.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bulkhead_api::{
    ControlTarget, CoreStatus, CoreUpdateStarted, CoreUpdateStatus, DeviceChange, DeviceMode,
    DeviceState, DeviceStatus, DiskReplaced, KeysPressed, NewImage, RunState, Server,
    SnapshotWritten, VmStatus,
};
use bulkhead_api::{LimitsChange, RateLimits};
use bulkhead_core::legacy::i8042::Keyboard;
use bulkhead_core::state::Machine;
use bulkhead_core::supervisor::{self, SupervisorHandle};
use bulkhead_devices::blk::config::capacity_bytes;
use bulkhead_devices::blk::DiskSwap;

use crate::limits::LimitedDevice;

/// What the API reports about this VM, and the supervisor that acts.
pub struct Vm {
    pub name: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub started: Instant,
    pub supervisor: SupervisorHandle,
    /// The i8042's keyboard, for Ctrl-Alt-Del.
    pub keyboard: Keyboard,
    /// The partitioning line of the status (cgroups, pins).
    pub limits: Option<String>,
    /// The limits page of each device that has rate limiters.
    pub rate_limits: Vec<LimitedDevice>,
    /// Pausing, resuming, snapshots.
    pub machine: Machine,
}

impl Vm {
    fn change(&self, id: &str, binary: Option<&Path>) -> Result<DeviceChange, String> {
        let change = self
            .supervisor
            .replace(id, binary)
            .map_err(|e| bulkhead_sandbox::report::with_causes(&e))?;
        Ok(DeviceChange {
            id: id.to_string(),
            old_pid: change.old_pid,
            new_pid: change.new_pid,
            took_ms: change.took.as_secs_f64() * 1000.0,
        })
    }
}

impl Vm {
    /// Why device `id` cannot have its image replaced, if the supervisor's figures say so: it
    /// is no disk, or its backend is a program Bulkhead did not write.
    fn refuse_swap(&self, id: &str) -> Option<String> {
        let d = self.supervisor.report().into_iter().find(|d| d.name == id)?;
        if d.kind != "blk" {
            return Some(format!(
                "{id} is a {} device: only a disk's image can be replaced",
                d.kind
            ));
        }
        matches!(d.mode, "outside" | "external").then(|| {
            format!(
                "{id} is served by a program Bulkhead did not write (`--device …,exec=` or \
                 `--vhost-user`): the image is that program's; start it with the new one instead"
            )
        })
    }
}

impl ControlTarget for Vm {
    fn status(&self) -> VmStatus {
        let reports = self.supervisor.report();
        let mut confinement = crate::confine::status::core();
        for d in &reports {
            let Some(kind) = bulkhead_devices::DeviceKind::from_name(d.kind) else { continue };
            if let (Some(pid), "compartment") = (d.pid, d.mode) {
                confinement.extend(crate::confine::status::compartment(&d.name, pid, kind));
            }
        }
        let devices = reports
            .into_iter()
            .map(|d| {
                let limited = self.rate_limits.iter().find(|l| l.name == d.name);
                let rate_limits = limited.map(LimitedDevice::current);
                DeviceStatus { rate_limits, ..device_status(d) }
            })
            .collect();
        VmStatus {
            confinement,
            name: self.name.clone(),
            core_pid: std::process::id(),
            cpus: self.cpus,
            memory_bytes: self.memory_bytes,
            uptime_s: self.started.elapsed().as_secs(),
            devices,
            limits: self.limits.clone(),
            paused: self.machine.is_paused(),
            core: Some(Box::new(self.core_status())),
        }
    }

    fn restart_device(&self, id: &str) -> Result<DeviceChange, String> {
        self.change(id, None)
    }

    fn upgrade_device(&self, id: &str, binary: &Path) -> Result<DeviceChange, String> {
        self.change(id, Some(binary))
    }

    fn replace_disk(&self, id: &str, image: &NewImage) -> Result<DiskReplaced, String> {
        if let Some(why) = self.refuse_swap(id) {
            return Err(why);
        }
        let swap = DiskSwap::new(image.path.clone(), image.format.as_deref(), image.read_only)
            .map_err(|e| e.to_string())?;
        let change = self
            .supervisor
            .reconfigure(id, Box::new(swap))
            .map_err(|e| bulkhead_sandbox::report::with_causes(&e))?;
        Ok(DiskReplaced {
            change: DeviceChange {
                id: id.to_string(),
                old_pid: change.old_pid,
                new_pid: change.new_pid,
                took_ms: change.took.as_secs_f64() * 1000.0,
            },
            path: image.path.clone(),
            capacity_bytes: capacity_bytes(&change.config).unwrap_or(0),
        })
    }

    fn set_device_limits(&self, id: &str, limits: &RateLimits) -> Result<LimitsChange, String> {
        let reports = self.supervisor.report();
        if let Some(device) = self.rate_limits.iter().find(|l| l.name == id) {
            let change = device.change(limits)?;
            // A compartment kept across a core update reads the previous core's page, which
            // nothing writes any more: its successor maps this core's.
            if reports.iter().any(|d| d.name == id && d.kept) {
                self.supervisor.replace(id, None).map_err(|e| {
                    format!("{id}'s new limits take effect at its next restart, which failed: {e}")
                })?;
            }
            return Ok(change);
        }
        let Some(d) = reports.iter().find(|d| d.name == id) else {
            let names: Vec<&str> = reports.iter().map(|d| d.name.as_str()).collect();
            return Err(format!("there is no device {id}; this VM has {}", names.join(", ")));
        };
        Err(match (d.mode, d.pid) {
            ("outside", Some(pid)) => {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"));
                let program = comm
                    .map_or("a program Bulkhead did not write".into(), |c| c.trim().to_string());
                format!(
                    "rate limits are enforced by Bulkhead's own devices; {id} is run by {program}"
                )
            }
            ("outside" | "external", _) => format!(
                "rate limits are enforced by Bulkhead's own devices; {id} is run by a backend \
                 Bulkhead did not write"
            ),
            _ => format!(
                "{id} is a {} device, which has no rate limiter (blk, net and rng do)",
                d.kind
            ),
        })
    }

    /// Queues the scan codes and raises IRQ 1 (a lock a vCPU holds for one port access, and
    /// a write to an eventfd: the API thread's filter allows both); the guest is not waited on.
    fn pause(&self) -> Result<RunState, String> {
        let paused = self.machine.pause()?;
        Ok(RunState {
            paused: true,
            changed: !paused.already,
            took_ms: paused.took.as_secs_f64() * 1000.0,
        })
    }

    fn resume(&self) -> Result<RunState, String> {
        let start = Instant::now();
        let changed = self.machine.resume()?;
        Ok(RunState { paused: false, changed, took_ms: start.elapsed().as_secs_f64() * 1000.0 })
    }

    fn snapshot(&self, dir: &Path) -> Result<SnapshotWritten, String> {
        let done = self.machine.snapshot(dir)?;
        Ok(SnapshotWritten {
            dir: done.dir,
            memory_written: done.memory_written,
            state_bytes: done.state_bytes,
            paused_ms: done.paused.as_secs_f64() * 1000.0,
            took_ms: done.took.as_secs_f64() * 1000.0,
            left_paused: self.machine.is_paused(),
        })
    }

    /// Checks what can be checked while the VM runs (the binary is a core that takes a VM
    /// over; this core can hand over), then hands the VM over: see [`crate::update`].
    fn update_core(&self, binary: &Path) -> Result<CoreUpdateStarted, String> {
        crate::update::available()?;
        crate::update::check_binary(binary).map_err(|e| format!("core update refused: {e}"))?;
        let attempts_before = crate::update::record().attempts;
        crate::update::request(binary.to_path_buf());
        let paused = self.machine.hand_over()?;
        Ok(CoreUpdateStarted {
            from: crate::update::own_path(),
            to: binary.to_path_buf(),
            attempts_before,
            paused_ms: paused.as_secs_f64() * 1000.0,
        })
    }

    fn ctrl_alt_del(&self) -> Result<KeysPressed, String> {
        let pressed = self.keyboard.press_ctrl_alt_del().map_err(|e| e.to_string())?;
        Ok(KeysPressed {
            keys: "ctrl-alt-del".into(),
            queued: pressed.queued,
            interrupt: pressed.interrupt,
        })
    }

    fn serving_thread_started(&self) -> Result<(), String> {
        crate::confine::confine(crate::confine::ThreadClass::Api)
    }
}

impl Vm {
    fn core_status(&self) -> CoreStatus {
        let record = crate::update::record();
        let pause_ms = self.machine.resumed().map(|r| r.pause.as_secs_f64() * 1000.0);
        CoreStatus {
            binary: crate::update::own_path(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            updates: record.updates,
            attempts: record.attempts,
            last_update: record.last.map(|(from, to, failed)| CoreUpdateStatus {
                from,
                to,
                pause_ms,
                failed,
            }),
        }
    }
}

fn device_status(d: supervisor::DeviceReport) -> DeviceStatus {
    let uptime_s = d.uptime().as_secs();
    DeviceStatus {
        id: d.name,
        kind: d.kind.to_string(),
        mode: match d.mode {
            "compartment" => DeviceMode::Compartment,
            "thread" => DeviceMode::Thread,
            "outside" => DeviceMode::Outside,
            _ => DeviceMode::External,
        },
        pid: d.pid,
        state: match d.state {
            supervisor::DeviceState::Running => DeviceState::Running,
            supervisor::DeviceState::Restarting => DeviceState::Restarting,
            supervisor::DeviceState::Failed => DeviceState::Failed,
        },
        restarts: d.restarts,
        last_exit: d.last_exit,
        uptime_s,
        requests: d.requests,
        sandbox: Some(d.sandbox),
        on_restart: Some(d.on_restart),
        rate_limits: None,
        standby_pid: d.standby,
    }
}

/// Starts the API server for VM `name`; it lives as long as the returned value.
pub fn start(vm: Vm) -> Result<Server, bulkhead_api::ServerError> {
    let name = vm.name.clone();
    Server::start(&name, Arc::new(vm))
}
