//! Monolithic mode: the device backend on a thread of the core, connected
//! through a socket pair exactly as a compartment would be.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use bulkhead_core::virtio::{Backend, DeviceKind, Launched};
use vmm_sys_util::eventfd::EventFd;

use super::{core_kind, Request};

pub struct ThreadBackend {
    request: Request,
    running: Option<(JoinHandle<()>, Arc<EventFd>)>,
}

impl ThreadBackend {
    pub fn new(request: Request) -> Self {
        ThreadBackend { request, running: None }
    }

    fn stop(&mut self) {
        if let Some((handle, stop)) = self.running.take() {
            let _ = stop.write(1);
            let _ = handle.join();
        }
    }
}

impl Backend for ThreadBackend {
    fn kind(&self) -> DeviceKind {
        core_kind(self.request.config.kind())
    }

    fn name(&self) -> String {
        self.request.name.clone()
    }

    fn launch(&mut self) -> std::io::Result<Launched> {
        self.stop();
        let device = bulkhead_devices::open(&self.request.config)
            .map_err(|e| std::io::Error::other(bulkhead_api::describe(&e)))?;
        let (core_end, device_end) = UnixStream::pair()?;
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let name = self.request.name.clone();
        let thread_stop = stop.clone();
        let class = crate::confine::device_class(self.request.config.kind());
        let handle = std::thread::Builder::new().name(format!("bh-{name}")).spawn(move || {
            if let Err(e) = crate::confine::confine(class) {
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

impl ThreadBackend {
    /// The thread names device code runs under, for the panic hook.
    pub fn is_device_thread(name: &str) -> bool {
        name.starts_with("bh-")
    }
}

impl Drop for ThreadBackend {
    fn drop(&mut self) {
        self.stop();
    }
}
