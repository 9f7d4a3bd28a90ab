//! A fake VM for the tests: answers like a core would, and remembers what it was asked.

#![allow(dead_code)]

use bulkhead_api::{
    ControlTarget, DeviceChange, DeviceMode, DeviceState, DeviceStatus, KeysPressed, VmStatus,
};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A VM with `blk0` (a compartment) and `rng0` (a thread). Device `boom` panics.
#[derive(Default)]
pub struct FakeVm {
    /// Every call, as `restart blk0` or `upgrade blk0 /usr/bin/true`.
    pub calls: Mutex<Vec<String>>,
}

impl FakeVm {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn change(&self, id: &str) -> Result<DeviceChange, String> {
        match id {
            "blk0" => Ok(DeviceChange {
                id: id.into(),
                old_pid: Some(100),
                new_pid: Some(101),
                took_ms: 12.5,
            }),
            "rng0" => {
                Ok(DeviceChange { id: id.into(), old_pid: None, new_pid: None, took_ms: 0.5 })
            }
            "boom" => panic!("the fake VM panics on purpose"),
            _ => Err(format!("no device named {id}; this VM has blk0, rng0")),
        }
    }
}

pub fn sample_status() -> VmStatus {
    VmStatus {
        name: "vm0".into(),
        core_pid: std::process::id(),
        cpus: 2,
        memory_bytes: 512 << 20,
        uptime_s: 61,
        limits: None,
        core: None,
        devices: vec![
            DeviceStatus {
                id: "blk0".into(),
                kind: "blk".into(),
                mode: DeviceMode::Compartment,
                pid: Some(100),
                state: DeviceState::Running,
                restarts: 1,
                last_exit: Some("killed by signal 9".into()),
                uptime_s: 12,
                requests: 1000,
                sandbox: Some("seccomp(filter) nnp caps(none) ns(mnt,pid,net)".into()),
                on_restart: None,
                rate_limits: None,
                standby_pid: None,
            },
            DeviceStatus {
                id: "rng0".into(),
                kind: "rng".into(),
                mode: DeviceMode::Thread,
                pid: None,
                state: DeviceState::Restarting,
                restarts: 0,
                last_exit: None,
                uptime_s: 61,
                requests: 3,
                sandbox: None,
                on_restart: None,
                rate_limits: None,
                standby_pid: None,
            },
        ],
        confinement: Vec::new(),
        paused: false,
    }
}

impl ControlTarget for FakeVm {
    fn status(&self) -> VmStatus {
        self.calls.lock().unwrap().push("status".into());
        sample_status()
    }

    fn restart_device(&self, id: &str) -> Result<DeviceChange, String> {
        self.calls.lock().unwrap().push(format!("restart {id}"));
        self.change(id)
    }

    fn upgrade_device(&self, id: &str, binary: &Path) -> Result<DeviceChange, String> {
        self.calls.lock().unwrap().push(format!("upgrade {id} {}", binary.display()));
        self.change(id)
    }

    fn ctrl_alt_del(&self) -> Result<KeysPressed, String> {
        self.calls.lock().unwrap().push("ctrl-alt-del".into());
        Ok(KeysPressed { keys: "ctrl-alt-del".into(), queued: true, interrupt: true })
    }
}

/// A scratch folder for sockets, readable by everyone (so that other uids can reach a socket
/// in it when a test wants them to), under /tmp so that socket paths stay short.
pub fn socket_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("bh-api").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `dir/name`.
pub fn in_dir(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
