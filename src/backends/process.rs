//! Microkernel mode: the device backend in a compartment — `bulkhead device
//! KIND --fd 3 …` re-executed from this binary in new namespaces, entering
//! its own sandbox before it reads a message.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use bulkhead_core::virtio::{Backend, DeviceKind, Launched};
use bulkhead_devices::net::config::{Mac, TapSource};
use bulkhead_devices::net::tap::Tap;
use bulkhead_devices::DeviceConfig;
use bulkhead_sandbox::{spawn, Command, Compartment, Policy};

use super::{core_kind, policy_for, Request};

/// The connection's file descriptor number inside the compartment.
const CONN_FD: i32 = 3;
/// The tap's file descriptor number inside a net compartment.
const TAP_FD: i32 = 4;

pub struct CompartmentBackend {
    request: Request,
    policy: Policy,
    /// The net device's tap, opened by the core (it has the privilege).
    tap: Option<Tap>,
    child: Option<Compartment>,
}

impl CompartmentBackend {
    pub fn new(mut request: Request) -> anyhow::Result<Self> {
        let policy = policy_for(&request.name, None)?;
        let mut tap = None;
        if let DeviceConfig::Net(net) = &request.config {
            let TapSource::Name(name) = &net.tap else {
                anyhow::bail!("{}: give the tap by name (tap=NAME)", request.name);
            };
            tap = Some(Tap::open(name)?);
            // The MAC is chosen once, so a restarted compartment keeps it.
            let mac = net.mac.unwrap_or_else(Mac::random);
            request.args =
                vec!["--tap-fd".into(), TAP_FD.to_string(), "--mac".into(), mac.to_string()];
        }
        Ok(CompartmentBackend { request, policy, tap, child: None })
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Backend for CompartmentBackend {
    fn kind(&self) -> DeviceKind {
        core_kind(self.request.config.kind())
    }

    fn name(&self) -> String {
        self.request.name.clone()
    }

    fn launch(&mut self) -> std::io::Result<Launched> {
        self.stop();
        let (core_end, device_end) = UnixStream::pair()?;
        let kind = self.request.config.kind().name();
        let mut cmd = Command::current_exe()?
            .args(["device", kind, "--fd", &CONN_FD.to_string()])
            .args(&self.request.args)
            .fd(device_end.as_fd(), CONN_FD);
        if let Some(tap) = &self.tap {
            // SAFETY: the tap's fd stays open as long as `self.tap`, which
            // outlives this call (the spawned child gets its own copy).
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(tap.fd()) };
            cmd = cmd.fd(fd, TAP_FD);
        }
        let child = spawn(&cmd, &self.policy).map_err(std::io::Error::other)?;
        let description = format!("compartment pid {}: {}", child.pid(), child.report());
        let pid = child.pid() as u32;
        self.child = Some(child);
        Ok(Launched { conn: core_end, pid: Some(pid), description })
    }

    fn status(&self) -> Option<String> {
        let child = self.child.as_ref()?;
        child.status().ok().map(|s| s.to_string())
    }
}

impl Drop for CompartmentBackend {
    fn drop(&mut self) {
        self.stop();
    }
}
