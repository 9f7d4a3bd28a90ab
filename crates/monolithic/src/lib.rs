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

use bulkhead_core::virtio::{Backend, DeviceKind, Launched, Reconfiguration};
use bulkhead_devices::limit::LimitsView;
use bulkhead_devices::{Device, DeviceConfig};
use vmm_sys_util::eventfd::EventFd;

/// Confines a device's thread before it serves; an error stops the device.
pub type Confine = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Runs a job on the core's thread that may open images and start device threads (the VMM's
/// launcher), and returns when it has run. A swap's new device is opened, and its thread
/// started, there: the device's supervisor thread, which asks for the swap, may do neither
/// under its own filter, and a thread inherits the filter of the thread that starts it.
pub type Launcher = Arc<dyn Fn(&mut (dyn FnMut() + Send)) + Send + Sync>;

/// The prefix of the names of the threads device code runs on.
const THREAD_PREFIX: &str = "bh-";

pub struct ThreadBackend {
    kind: DeviceKind,
    name: String,
    config: DeviceConfig,
    confine: Confine,
    launcher: Launcher,
    /// The device's limits page, as the core writes it (the same page a compartment maps).
    limits: Option<LimitsView>,
    running: Option<(JoinHandle<()>, Arc<EventFd>)>,
    /// A device opened with a new configuration while the running one served (see
    /// [`Backend::prepare`]), for the next launch to serve.
    prepared: Option<(DeviceConfig, Arc<dyn Device>)>,
}

impl ThreadBackend {
    /// The device `config`, named `name`, of the core's kind `kind`.
    pub fn new(
        kind: DeviceKind,
        name: String,
        config: DeviceConfig,
        confine: Confine,
        launcher: Launcher,
    ) -> Self {
        ThreadBackend {
            kind,
            name,
            config,
            confine,
            launcher,
            limits: None,
            running: None,
            prepared: None,
        }
    }

    /// `f`'s value, computed on the launcher (see [`Launcher`]).
    fn on_launcher<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let mut f = Some(f);
        let mut out = None;
        (self.launcher)(&mut || {
            if let Some(f) = f.take() {
                out = Some(f());
            }
        });
        out.expect("the launcher ran the job")
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
        // A swap's launch runs on the device's supervisor thread: its thread is started on the
        // launcher. The first runs on the core's main thread before it is confined.
        let (device, swapped) = match self.prepared.take() {
            Some((config, device)) => {
                self.config = config;
                (device, true)
            }
            None => (
                bulkhead_devices::open_limited(
                    &self.config,
                    Default::default(),
                    self.limits.clone(),
                )
                .map_err(|e| std::io::Error::other(format!("{:#}", anyhow::Error::new(e))))?,
                false,
            ),
        };
        let (core_end, device_end) = UnixStream::pair()?;
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let name = self.name.clone();
        let thread_stop = stop.clone();
        let confine = self.confine.clone();
        let thread = std::thread::Builder::new().name(format!("{THREAD_PREFIX}{name}"));
        let start = move || {
            thread.spawn(move || {
                if let Err(e) = confine() {
                    eprintln!("bulkhead: {name}: the device does not start: {e}");
                    return;
                }
                match bulkhead_devices::serve(device, device_end, thread_stop) {
                    Ok(end) => log::debug!("{name}: {end:?}"),
                    Err(e) => eprintln!("bulkhead: {name}: the device stopped: {e}"),
                }
            })
        };
        let handle = if swapped { self.on_launcher(start) } else { start() }?;
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

    /// A disk's new image: the device is opened on it (image checked and locked) while the
    /// running thread serves; the next launch stops that thread and serves the new device.
    fn prepare(&mut self, change: Reconfiguration) -> Result<(), String> {
        let name = &self.name;
        let config = bulkhead_devices::blk::config::swapped(name, &self.config, change)?;
        if let DeviceConfig::Blk(current) = &self.config {
            if same_file(&current.path, &config.path) {
                return Err(format!(
                    "{name} already serves {}; in monolithic mode a disk cannot be swapped \
                     for the file it serves",
                    config.path.display()
                ));
            }
        }
        self.prepared = None;
        let config = DeviceConfig::Blk(config);
        let limits = self.limits.clone();
        let open = || bulkhead_devices::open_limited(&config, Default::default(), limits);
        let device = self.on_launcher(open).map_err(|e| {
            format!("cannot serve {name} from the new image: {:#}", anyhow::Error::new(e))
        })?;
        self.prepared = Some((config, device));
        Ok(())
    }

    fn mode(&self) -> &'static str {
        "thread"
    }
}

/// Whether `a` and `b` name the same file.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
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
