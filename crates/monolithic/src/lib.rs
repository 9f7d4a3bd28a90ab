//! Monolithic mode: a device's backend on a thread of the core, connected
//! through a socket pair exactly as a compartment would be. The same
//! `bulkhead_devices` code serves; there is no process boundary and no
//! sandbox, only the device's seccomp list on its threads (the `confine`
//! hook the VMM gives).
//!
//! This code runs only in monolithic mode; in microkernel mode it is linked
//! into the core but never called.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use bulkhead_core::virtio::{Backend, DeviceKind, Launched};
use bulkhead_devices::limit::LimitsView;
use bulkhead_devices::DeviceConfig;
use vmm_sys_util::eventfd::EventFd;

/// Confines a device's thread before it serves; an error stops the device.
pub type Confine = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The prefix of the names of the threads device code runs on.
const THREAD_PREFIX: &str = "bh-";

pub struct ThreadBackend {
    kind: DeviceKind,
    name: String,
    config: DeviceConfig,
    confine: Confine,
    /// The device's limits page, as the core writes it (the same page a compartment maps).
    limits: Option<LimitsView>,
    running: Option<(JoinHandle<()>, Arc<EventFd>)>,
}

impl ThreadBackend {
    /// The device `config`, named `name`, of the core's kind `kind`.
    pub fn new(kind: DeviceKind, name: String, config: DeviceConfig, confine: Confine) -> Self {
        ThreadBackend { kind, name, config, confine, limits: None, running: None }
    }

    /// The backend with its rate limits read from `view` (the core's limits page).
    pub fn with_limits(mut self, view: LimitsView) -> Self {
        self.limits = Some(view);
        self
    }

    fn stop(&mut self) {
        if let Some((handle, stop)) = self.running.take() {
            let _ = stop.write(1);
            let _ = handle.join();
        }
    }

    /// Whether a thread of this name runs device code (for the panic hook).
    pub fn is_device_thread(name: &str) -> bool {
        name.starts_with(THREAD_PREFIX)
    }
}

impl Backend for ThreadBackend {
    fn kind(&self) -> DeviceKind {
        self.kind
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn launch(&mut self) -> std::io::Result<Launched> {
        self.stop();
        let handed = Default::default();
        let device = bulkhead_devices::open_limited(&self.config, handed, self.limits.clone())
            .map_err(|e| std::io::Error::other(format!("{:#}", anyhow::Error::new(e))))?;
        let (core_end, device_end) = UnixStream::pair()?;
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let name = self.name.clone();
        let thread_stop = stop.clone();
        let confine = self.confine.clone();
        let thread = std::thread::Builder::new().name(format!("{THREAD_PREFIX}{name}"));
        let handle = thread.spawn(move || {
            if let Err(e) = confine() {
                eprintln!("bulkhead: {name}: the device does not start: {e}");
                return;
            }
            match bulkhead_devices::serve(device, device_end, thread_stop) {
                Ok(end) => log::debug!("{name}: {end:?}"),
                Err(e) => eprintln!("bulkhead: {name}: the device stopped: {e}"),
            }
        })?;
        self.running = Some((handle, stop));
        Ok(Launched {
            conn: core_end,
            pid: None,
            description: "thread in the core (monolithic mode, no sandbox)".into(),
        })
    }

    fn restartable(&self) -> bool {
        false
    }

    fn mode(&self) -> &'static str {
        "thread"
    }
}

impl Drop for ThreadBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A panic in device code ends the VM, naming the device: backends on
/// threads are not restarted (in microkernel mode a panic ends only its
/// compartment, which the supervisor restarts).
pub fn end_vm_on_device_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        if ThreadBackend::is_device_thread(name) {
            eprintln!(
                "bulkhead: device thread {name} panicked: {info}\nbulkhead: the VM stops: in monolithic mode a device fault ends the VM"
            );
            std::process::exit(1);
        }
        default(info);
    }));
}
