//! The supervisor: watches every device backend and brings a failed one
//! back while the guest runs.
//!
//! A backend has failed when its vhost-user socket closes or its process
//! exits (the compartment exited, was killed, panicked and aborted) or when
//! it stops making progress: a queue the device must consume has requests
//! the guest made available (`avail` ≠ `used` in guest memory) and its used
//! index has not moved for the watchdog's deadline. The supervisor then
//! starts a new backend (a compartment re-spawned in a fresh sandbox),
//! connects to it and hands it the running device: features, memory table,
//! the inflight region the core kept, and each queue's addresses, eventfds
//! and its base (the used index in guest memory). The new backend
//! resubmits what the region records as in flight and carries on with what
//! the guest queued meanwhile (the guest's kicks wait in the ioeventfd).
//! The guest sees a pause.
//!
//! **No loop waits on a backend.** Each device is supervised by a thread of
//! its own ([`device`]), which alone waits on that device's backend: for
//! its replies during a restart (within one deadline for the whole
//! hand-over, not one per message), for its exit, for its first
//! completion. The main thread's event loop (signals, the console, the
//! VM's end) never touches a backend, and the management API reads each
//! device's figures from a snapshot the device's thread keeps
//! ([`SupervisorHandle::report`]) and sends restarts and upgrades to that
//! thread as requests. A backend that stops answering — stopped, or slow
//! on purpose — delays its own device and nothing else.
//!
//! Restarts follow a [`RestartPolicy`], decided by [`policy::decide`] (a
//! pure function): immediate while there have been few recently, then with
//! exponential back-off; past the limit the device is marked failed,
//! reported, and left alone — the core, the guest and the other devices run
//! on. Backends that may not be restarted (threads of the core, in
//! monolithic mode) end the VM instead, naming the device.
//!
//! **A new configuration** ([`SupervisorHandle::reconfigure`]: a disk swapped for another
//! image) takes the restart's path with one step in front: the backend prepares its successor
//! with the new configuration ([`Backend::prepare`](crate::virtio::Backend::prepare)) while the
//! running one still serves, and only if that succeeds is the running one stopped and the
//! successor handed the device. The transport then tells the driver if the device's
//! configuration space changed. What a configuration means is the VMM's: the core passes it
//! on unread. Threads of the core may be reconfigured too: the new device is opened before the
//! old thread stops.

mod device;
pub mod policy;

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::Epoll;

pub use policy::RestartPolicy;

use crate::exit::ExitLatch;
use crate::virtio::attach::Attached;
use crate::virtio::frontend::FrontendError;
use crate::virtio::Reconfiguration;
use device::{Command, DeviceSupervisor, Shared};

/// How often each device's watchdog looks at its queues.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a request to replace a backend waits for the device's thread.
const REPLACE_WAIT: Duration = Duration::from_secs(30);

/// A device's state as the supervisor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceState {
    Running,
    /// Waiting for its next start (after a failed one, or backing off).
    Restarting,
    /// Past its restart limit, or restarts are off: left stopped.
    Failed,
}

impl DeviceState {
    pub fn name(&self) -> &'static str {
        match self {
            DeviceState::Running => "running",
            DeviceState::Restarting => "restarting",
            DeviceState::Failed => "failed",
        }
    }
}

/// One device's figures for `bulkhead ctl status`.
#[derive(Clone, Debug)]
pub struct DeviceReport {
    pub name: String,
    pub kind: &'static str,
    pub mode: &'static str,
    pub pid: Option<u32>,
    pub state: DeviceState,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// When the running backend started.
    pub started: Instant,
    pub requests: u64,
    pub sandbox: String,
    /// What a restart keeps of the requests in flight, in words.
    pub on_restart: String,
    /// The last restart: from the failure to the first request completed
    /// by the successor (or to its start, if nothing was outstanding).
    pub last_recovery: Option<Duration>,
    /// The standby compartment, started ahead to take over at the next restart.
    pub standby: Option<u32>,
    /// The running backend was kept from a previous core (a core update), not started since.
    pub kept: bool,
}

impl DeviceReport {
    /// How long the running backend has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The result of a restart.
#[derive(Clone, Debug)]
pub struct Change {
    pub old_pid: Option<u32>,
    pub new_pid: Option<u32>,
    pub took: Duration,
    /// The device's configuration space as the driver sees it after the change.
    pub config: Vec<u8>,
}

/// Why a backend could not be replaced.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("there is no device {0}; `bulkhead ctl VM status` lists them")]
    NoDevice(String),
    #[error("{0} runs inside the core (monolithic mode): it cannot be restarted on its own")]
    NotRestartable(String),
    #[error("{0}")]
    Program(String),
    /// The new configuration was refused before anything was stopped: the running backend
    /// serves on as it did.
    #[error("{0}; the device keeps its backend as it was")]
    Refused(String),
    #[error("cannot start the new backend")]
    Launch(#[source] std::io::Error),
    #[error("the new backend {how} during the hand-over")]
    Ended {
        /// How its process ended.
        how: String,
        #[source]
        error: FrontendError,
    },
    #[error("the hand-over to the new backend failed")]
    Handover(#[source] FrontendError),
    #[error(
        "the device's supervisor did not answer within {0:?}; the restart may still be under way"
    )]
    Busy(Duration),
    #[error("the VM is ending")]
    Ending,
}

/// Watches and restarts the VM's device backends: one thread per device.
pub struct Supervisor {
    handle: SupervisorHandle,
    threads: Vec<JoinHandle<()>>,
}

/// What the rest of the core (the management API) holds of the supervisor: each device's
/// figures, and a way to ask for a restart or an upgrade. Cloning it is cheap.
#[derive(Clone)]
pub struct SupervisorHandle {
    devices: Arc<Vec<Arc<Shared>>>,
}

/// Called on each device's thread before it watches anything (the binary confines it there).
pub type ThreadStart = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl Supervisor {
    /// Starts a thread per device (`sup-NAME`) that watches it under `policy`.
    pub fn start(
        devices: Vec<Attached>,
        policy: RestartPolicy,
        exit: ExitLatch,
        started: ThreadStart,
    ) -> std::io::Result<Supervisor> {
        let now = Instant::now();
        let mut shared = Vec::new();
        let mut threads = Vec::new();
        for d in devices {
            let report = DeviceReport {
                name: d.name.clone(),
                kind: d.backend.kind().name(),
                mode: d.backend.mode(),
                pid: d.pid,
                state: DeviceState::Running,
                restarts: 0,
                last_exit: None,
                started: now,
                requests: 0,
                sandbox: d.description,
                on_restart: if d.backend.restartable() {
                    d.transport.lock().unwrap_or_else(|p| p.into_inner()).restart_guarantee().into()
                } else {
                    "none: a device fault ends the VM (monolithic mode)".into()
                },
                last_recovery: None,
                standby: None,
                kept: d.backend.adopted(),
            };
            let device_shared = Arc::new(Shared::new(d.name.clone(), report, d.transport.clone())?);
            let watch = d.transport.lock().unwrap_or_else(|p| p.into_inner()).watch();
            let supervisor = DeviceSupervisor {
                shared: device_shared.clone(),
                kind: d.backend.kind(),
                transport: d.transport,
                watch,
                backend: d.backend,
                policy: policy.clone(),
                exit: exit.clone(),
                history: Default::default(),
                state: DeviceState::Running,
                retry_at: None,
                failed_at: None,
                failed_tries: 0,
                last_try_error: None,
                last_used: Vec::new(),
                last_progress: now,
                watched: Vec::new(),
                epoll: Epoll::new()?,
                standby: None,
            };
            let started = started.clone();
            let name: String = format!("sup-{}", d.name).chars().take(15).collect();
            let thread =
                std::thread::Builder::new().name(name).spawn(move || supervisor.run(|| started()));
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let handle = SupervisorHandle { devices: Arc::new(shared) };
                    Supervisor { handle, threads }.stop();
                    return Err(e);
                }
            }
            shared.push(device_shared);
        }
        Ok(Supervisor { handle: SupervisorHandle { devices: Arc::new(shared) }, threads })
    }

    /// For the management API.
    pub fn handle(&self) -> SupervisorHandle {
        self.handle.clone()
    }

    /// The VM is ending: no device is restarted any more, and every backend's socket is shut
    /// down, so that no thread (a vCPU in a round trip, a device's supervisor in a hand-over)
    /// stays blocked on a backend that does not answer.
    pub fn interrupt(&self) {
        for d in self.handle.devices.iter() {
            d.interrupt();
        }
    }

    /// Ends every device's thread; their backends end with them (compartments are killed,
    /// threads stopped).
    pub fn stop(self) {
        self.interrupt();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl SupervisorHandle {
    /// Every device's figures, as their threads last wrote them (never waits on a backend).
    pub fn report(&self) -> Vec<DeviceReport> {
        self.devices
            .iter()
            .map(|d| d.report.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    /// Replaces device `name`'s backend (with `program`'s, for an upgrade), waiting for its
    /// thread to do it.
    pub fn replace(&self, name: &str, program: Option<&Path>) -> Result<Change, SupervisorError> {
        let program = program.map(Path::to_path_buf);
        self.ask(name, |reply| Command::Replace { program, reply })
    }

    /// Replaces device `name`'s backend by one started with `change` (see the module docs),
    /// waiting for its thread to do it.
    pub fn reconfigure(
        &self,
        name: &str,
        change: Reconfiguration,
    ) -> Result<Change, SupervisorError> {
        self.ask(name, |reply| Command::Reconfigure { change, reply })
    }

    /// Stops every device's queues for a pause: each device's thread stops its own (a backend
    /// that does not answer fails the pause at its deadline). The first failure is returned
    /// once all have answered.
    pub fn freeze_all(&self) -> Result<(), String> {
        self.freeze_each(true)
    }

    /// Starts again every device's queues [`Self::freeze_all`] stopped.
    pub fn thaw_all(&self) -> Result<(), String> {
        self.freeze_each(false)
    }

    fn freeze_each(&self, freeze: bool) -> Result<(), String> {
        let answers: Vec<_> = self
            .devices
            .iter()
            .map(|d| {
                let (reply, answer) = mpsc::sync_channel(1);
                d.send(Command::Freeze { freeze, reply });
                answer
            })
            .collect();
        let mut first = Ok(());
        for answer in answers {
            let done = match answer.recv_timeout(REPLACE_WAIT) {
                Ok(done) => done,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    Err(SupervisorError::Busy(REPLACE_WAIT).to_string())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    Err(SupervisorError::Ending.to_string())
                }
            };
            if first.is_ok() {
                first = done;
            }
        }
        first
    }

    /// Lets every backend that can go on under the next core, and returns what each needs to
    /// be handed over, by device name (the VM paused; see
    /// [`crate::virtio::Backend::keep_for_successor`]).
    pub fn keep_all(&self) -> Vec<(String, crate::virtio::Kept)> {
        let answers: Vec<_> = self
            .devices
            .iter()
            .map(|d| {
                let (reply, answer) = mpsc::sync_channel(1);
                d.send(Command::Keep { reply });
                (d.name.clone(), answer)
            })
            .collect();
        answers
            .into_iter()
            .filter_map(|(name, answer)| Some((name, answer.recv_timeout(REPLACE_WAIT).ok()??)))
            .collect()
    }

    /// Every device's transport state, in attachment order (the VM paused).
    pub fn transport_states(&self) -> Result<Vec<crate::virtio::mmio::TransportState>, String> {
        self.devices
            .iter()
            .map(|d| d.transport.lock().unwrap_or_else(|p| p.into_inner()).state())
            .collect()
    }

    /// Sends device `name`'s thread the command `make` builds around the reply channel, and
    /// waits for the answer.
    fn ask(
        &self,
        name: &str,
        make: impl FnOnce(mpsc::SyncSender<Result<Change, SupervisorError>>) -> Command,
    ) -> Result<Change, SupervisorError> {
        let device = self
            .devices
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| SupervisorError::NoDevice(name.to_string()))?;
        let (reply, answer) = mpsc::sync_channel(1);
        device.send(make(reply));
        match answer.recv_timeout(REPLACE_WAIT) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(SupervisorError::Busy(REPLACE_WAIT)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(SupervisorError::Ending),
        }
    }
}
