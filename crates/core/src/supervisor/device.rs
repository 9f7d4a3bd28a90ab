//! One device's supervisor: a thread of its own that watches the device's backend and brings a
//! failed one back, so that no other loop of the core ever waits on this device's backend.
//!
//! The thread waits in epoll on the backend's vhost-user socket (its peer's end: the process
//! exited, was killed or aborted), the backend process's pidfd (it exited), and a wake-up
//! eventfd (a request from the API, or the VM's end), with the watchdog's tick as the timeout.
//! The watchdog reads the device's queue indices from guest memory through the transport's
//! [`QueueWatch`], never through the transport's lock, which a vCPU may hold through a round trip
//! to a backend that does not answer. A failed backend is killed first, then detached from the
//! transport (a vCPU waiting on the dead backend's socket returns at once), reaped, and the
//! [`super::policy`] decides: start another now, later, or never.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::policy::{self, Decision, History, RestartPolicy};
use super::{Change, DeviceReport, DeviceState, SupervisorError, TICK};
use crate::exit::{ExitLatch, VmExit};
use crate::virtio::frontend::Connection;
use crate::virtio::mmio::{MmioTransport, QueueWatch};
use crate::virtio::{Backend, DeviceKind, Reconfiguration};

/// How long a restart may take, from launch to the last vhost-user reply: each message's
/// timeout is what is left of it, so that a slow backend's delays do not add up.
const HANDOVER: Duration = Duration::from_secs(10);
/// How long a restart waits for the new backend's first completion, to time the recovery.
const FIRST_COMPLETION: Duration = Duration::from_millis(200);
/// How long a standby may take to be connected and handed the device's set-up: an idle
/// process answers in a millisecond; the tick it holds up must stay short.
const STANDBY_SETUP: Duration = Duration::from_millis(500);

/// What the device's thread and the rest of the core share.
pub(super) struct Shared {
    pub name: String,
    /// The latest figures, updated by the device's thread; read without waiting for it.
    pub report: Mutex<DeviceReport>,
    commands: Mutex<VecDeque<Command>>,
    wake: EventFd,
    stop: AtomicBool,
    /// A duplicate of the current backend's socket, to shut it down when the VM ends: any
    /// thread blocked on that backend (a vCPU, the device's own) returns at once.
    socket: Mutex<Option<OwnedFd>>,
    /// The device's transport, read for a snapshot (the VM paused).
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// A request to the device's thread.
pub(super) enum Command {
    /// Replace the backend (with `program`'s, for an upgrade) and answer.
    Replace { program: Option<PathBuf>, reply: mpsc::SyncSender<Result<Change, SupervisorError>> },
    /// Replace the backend by one started with a new configuration, prepared first, and answer.
    Reconfigure {
        change: Reconfiguration,
        reply: mpsc::SyncSender<Result<Change, SupervisorError>>,
    },
    /// Stop the queues for a pause (`freeze`), or start them again, and answer.
    Freeze { freeze: bool, reply: mpsc::SyncSender<Result<(), String>> },
    /// Let the backend go on under the next core (the VM paused, about to be handed over):
    /// answer with what it needs, and watch the backend no more.
    Keep { reply: mpsc::SyncSender<Option<crate::virtio::Kept>> },
}

impl Shared {
    pub fn new(
        name: String,
        report: DeviceReport,
        transport: Arc<Mutex<MmioTransport>>,
    ) -> std::io::Result<Shared> {
        Ok(Shared {
            transport,
            name,
            report: Mutex::new(report),
            commands: Mutex::new(VecDeque::new()),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            stop: AtomicBool::new(false),
            socket: Mutex::new(None),
        })
    }

    /// Whether the VM is ending.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Stops the device's thread from acting on failures, and shuts the backend's socket down so
    /// that nothing stays blocked on it (the VM is ending).
    pub fn interrupt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(socket) = self.socket.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            // SAFETY: shutdown on a socket descriptor this struct owns.
            unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let _ = self.wake.write(1);
    }

    /// Keeps a duplicate of `fd`, the current backend's socket (see [`Shared::interrupt`]).
    fn set_socket(&self, fd: Option<RawFd>) {
        let dup = fd.and_then(|fd| {
            // SAFETY: duplicates a descriptor the transport holds open for this call.
            let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            // SAFETY: a new descriptor, owned by nobody else.
            (new >= 0).then(|| unsafe { OwnedFd::from_raw_fd(new) })
        });
        let mut socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        *socket = dup;
        if self.stopping() {
            if let Some(socket) = socket.as_ref() {
                // SAFETY: shutdown on a socket descriptor this struct owns.
                unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
    }

    /// Queues `command` for the device's thread and wakes it.
    pub fn send(&self, command: Command) {
        self.commands.lock().unwrap_or_else(|p| p.into_inner()).push_back(command);
        let _ = self.wake.write(1);
    }

    fn report(&self) -> std::sync::MutexGuard<'_, DeviceReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The event-loop tokens of a device's thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// The backend's socket: its peer's end.
    Socket,
    /// The backend process's pidfd: it exited.
    Process,
    /// The wake-up eventfd: commands, or the end.
    Wake,
}

impl Token {
    const ALL: [Token; 3] = [Token::Socket, Token::Process, Token::Wake];

    fn raw(self) -> u64 {
        self as u64
    }

    fn from_raw(raw: u64) -> Option<Token> {
        Token::ALL.into_iter().find(|t| t.raw() == raw)
    }
}

/// One device's supervisor, run by [`DeviceSupervisor::run`] on the device's thread.
pub(super) struct DeviceSupervisor {
    pub shared: Arc<Shared>,
    pub kind: DeviceKind,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub watch: Arc<QueueWatch>,
    pub backend: Box<dyn Backend>,
    pub policy: RestartPolicy,
    pub exit: ExitLatch,
    pub history: History,
    pub state: DeviceState,
    pub retry_at: Option<Instant>,
    pub failed_at: Option<Instant>,
    /// Attempts to start a backend that failed since the device last ran.
    pub failed_tries: u32,
    /// The last such attempt's error, said once however often it repeats (an outside backend
    /// refuses connections until its daemon is back).
    pub last_try_error: Option<String>,
    pub last_used: Vec<u16>,
    pub last_progress: Instant,
    /// The descriptors watched now: the socket and the pidfd.
    pub watched: Vec<RawFd>,
    pub epoll: Epoll,
    /// The backend's standby (its pid) connected and handed the device's set-up ahead
    /// ([`DeviceSupervisor::prepare_standby`]), so that a restart only starts its queues.
    pub standby: Option<(u32, Connection)>,
}

fn lock(t: &Mutex<MmioTransport>) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl DeviceSupervisor {
    /// The thread's loop, until the VM ends; `started` is called first, on the thread (it
    /// confines it).
    pub fn run(mut self, started: impl FnOnce() -> Result<(), String>) {
        if let Err(e) = started() {
            self.exit.request(VmExit::Error(format!(
                "cannot confine {}'s supervisor: {e}",
                self.shared.name
            )));
            return;
        }
        let wake = EpollEvent::new(EventSet::IN, Token::Wake.raw());
        if let Err(e) = self.epoll.ctl(ControlOperation::Add, self.shared.wake.as_raw_fd(), wake) {
            self.exit.request(VmExit::Error(format!("{}'s supervisor: {e}", self.shared.name)));
            return;
        }
        self.watch_backend();
        let mut events = [EpollEvent::default(); 4];
        let mut next_tick = Instant::now() + TICK;
        while !self.shared.stopping() {
            let wake_at = self.retry_at.map_or(next_tick, |t| t.min(next_tick));
            let timeout = wake_at.saturating_duration_since(Instant::now());
            let n = match self
                .epoll
                .wait(timeout.as_millis().min(i32::MAX as u128) as i32, &mut events)
            {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    self.exit
                        .request(VmExit::Error(format!("{}'s supervisor: {e}", self.shared.name)));
                    return;
                }
            };
            // A backend's end shows on its socket and its pidfd, often in one batch: the
            // first one handles it, and the rest of the batch is about the old backend.
            let mut ended = false;
            for event in &events[..n] {
                match Token::from_raw(event.data()) {
                    Some(Token::Wake) => {
                        let _ = self.shared.wake.read();
                        self.commands();
                    }
                    Some(Token::Socket | Token::Process)
                        if !ended && self.state == DeviceState::Running =>
                    {
                        ended = true;
                        self.failed(None)
                    }
                    _ => {}
                }
            }
            if Instant::now() >= next_tick {
                self.tick(Instant::now());
                next_tick = Instant::now() + TICK;
            }
        }
    }

    /// Serves the queued requests.
    fn commands(&mut self) {
        loop {
            let Some(command) =
                self.shared.commands.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
            else {
                return;
            };
            match command {
                Command::Replace { program, reply } => {
                    let _ = reply.send(self.replace(program));
                }
                Command::Reconfigure { change, reply } => {
                    let _ = reply.send(self.reconfigure(change));
                }
                Command::Freeze { freeze, reply } => {
                    let mut transport = lock(&self.transport);
                    let done = if freeze { transport.freeze() } else { transport.thaw() };
                    drop(transport);
                    let _ = reply.send(done.map_err(|e| format!("{}: {e}", self.shared.name)));
                }
                Command::Keep { reply } => {
                    let kept = self.backend.keep_for_successor();
                    if kept.is_some() {
                        // Its end is the next core's business; its socket must not be shut
                        // down when this VM's run ends.
                        self.unwatch();
                        self.shared.set_socket(None);
                    }
                    let _ = reply.send(kept);
                }
            }
        }
    }

    /// Watches the backend's socket for its peer's end (not for readability: replies to the
    /// vCPUs' requests arrive on it too) and its process for its exit.
    fn watch_backend(&mut self) {
        for fd in self.watched.drain(..) {
            let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        let socket = lock(&self.transport).backend_fd();
        self.shared.set_socket(socket);
        let events = EventSet::HANG_UP | EventSet::READ_HANG_UP;
        if let Some(fd) = socket {
            if self
                .epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(events, Token::Socket.raw()))
                .is_ok()
            {
                self.watched.push(fd);
            }
        }
        if let Some(fd) = self.backend.pidfd() {
            let event = EpollEvent::new(EventSet::IN, Token::Process.raw());
            if self.epoll.ctl(ControlOperation::Add, fd, event).is_ok() {
                self.watched.push(fd);
            }
        }
    }

    fn unwatch(&mut self) {
        for fd in self.watched.drain(..) {
            let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    /// The backend is gone or hung: kill and reap it, then restart it, schedule a restart,
    /// give up, or end the VM.
    fn failed(&mut self, hung: Option<String>) {
        if self.shared.stopping() {
            return;
        }
        let now = Instant::now();
        self.unwatch();
        if hung.is_some() {
            // Killed before the transport is touched: a vCPU blocked in a round trip with a
            // hung backend holds the transport's lock until the backend's socket closes.
            self.backend.kill();
        }
        lock(&self.transport).detach_backend();
        let reason = hung
            .or_else(|| self.backend.exit_reason())
            .unwrap_or_else(|| "its connection closed".into());
        log::warn!("{}: backend failed: {reason}", self.shared.name);
        self.failed_at = Some(now);
        self.shared.report().last_exit = Some(reason.clone());
        if !self.backend.restartable() {
            self.set_state(DeviceState::Failed);
            self.exit.request(VmExit::Error(format!(
                "device {} failed ({reason}); its backend runs inside the core (monolithic mode), where a device fault ends the VM",
                self.shared.name
            )));
            return;
        }
        self.schedule(now);
    }

    /// Restarts the device now, later, or never, per the policy.
    fn schedule(&mut self, now: Instant) {
        if self.shared.stopping() {
            return;
        }
        self.history.forget_before(self.policy.window, now);
        match policy::decide(&self.policy, &self.history, now) {
            Decision::Now => {
                self.retry_at = None;
                self.set_state(DeviceState::Restarting);
                self.restart_now();
            }
            Decision::At(at) => {
                self.retry_at = Some(at);
                self.set_state(DeviceState::Restarting);
            }
            Decision::GiveUp(why) => {
                self.retry_at = None;
                self.set_state(DeviceState::Failed);
                let mut last = self.shared.report().last_exit.clone().unwrap_or_else(|| "?".into());
                if let Some(error) = &self.last_try_error {
                    last = format!("{last}; the last restart failed: {error}");
                }
                eprintln!(
                    "bulkhead: {}: failed ({last}); {}: the device is left stopped, the VM runs on",
                    self.shared.name,
                    why.describe()
                );
            }
        }
    }

    /// Starts a new backend and hands it the running device.
    fn restart_now(&mut self) {
        let now = Instant::now();
        self.history.record(now);
        match self.start() {
            Ok(change) => {
                self.retry_at = None;
                let since = self.failed_at.take().unwrap_or(now);
                let recovery = change.took + now.duration_since(since);
                let tries = std::mem::take(&mut self.failed_tries);
                self.last_try_error = None;
                let mut report = self.shared.report();
                report.state = DeviceState::Running;
                report.restarts += 1;
                report.last_recovery = Some(recovery);
                let failed_first = match tries {
                    0 => String::new(),
                    1 => "; 1 attempt failed first".into(),
                    n => format!("; {n} attempts failed first"),
                };
                eprintln!(
                    "bulkhead: {} restarted ({}{failed_first}), pid {}, serving again after {:.1} ms",
                    self.shared.name,
                    report.last_exit.as_deref().unwrap_or("?"),
                    change.new_pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    recovery.as_secs_f64() * 1000.0
                );
                drop(report);
                self.state = DeviceState::Running;
            }
            Err(e) => {
                let error = with_causes(&e);
                // A backend that cannot be reached yet (an outside daemon starting again) is
                // said once per outage; every other failure each time.
                let repeated = self.last_try_error.as_ref() == Some(&error);
                if !(repeated && matches!(e, SupervisorError::Launch(_))) {
                    eprintln!("bulkhead: {}: restart failed: {error}", self.shared.name);
                }
                self.failed_tries += 1;
                self.last_try_error = Some(error);
                // A backend that died during its hand-over is a failure of its own: its end
                // becomes the reason; a start that failed keeps the reason it was needed.
                if let SupervisorError::Ended { how, .. } = &e {
                    self.shared.report().last_exit = Some(how.clone());
                }
                self.schedule(now);
            }
        }
    }

    /// Launches, connects, starts the queues (all within [`HANDOVER`]); measures until the
    /// first completion when requests were outstanding.
    fn start(&mut self) -> Result<Change, SupervisorError> {
        let t0 = Instant::now();
        let old_pid = self.shared.report().pid;
        let standby = self.standby.take();
        let launched = self.backend.launch().map_err(SupervisorError::Launch)?;
        let deadline = t0 + HANDOVER;
        let shape = self.backend.shape();
        // The standby it launched was connected and handed the set-up ahead: only its queues
        // start now.
        let connected = match standby {
            Some((pid, conn)) if Some(pid) == launched.pid => Ok(conn),
            _ => Connection::connect_within(launched.conn, &shape, deadline),
        };
        let handed_over =
            connected.and_then(|conn| lock(&self.transport).replace_backend(conn, deadline));
        if let Err(error) = handed_over {
            // Its connection broke during the hand-over: most often because it died (a kill
            // that came then), which is the reason to keep, not the broken socket.
            lock(&self.transport).detach_backend();
            return Err(match self.backend.exit_reason() {
                Some(how) => SupervisorError::Ended { how, error },
                None => SupervisorError::Handover(error),
            });
        }
        let before = self.watch.progress(self.kind);
        let started = Instant::now();
        self.wait_first_completion(&before);
        // The recovery ends here: what follows only reports it.
        let took = t0.elapsed();
        let description = match self.backend.status() {
            Some(status) => format!("{}; now: {status}", launched.description),
            None => launched.description,
        };
        self.last_progress = started;
        self.last_used = before.iter().map(|p| p.1).collect();
        let on_restart = lock(&self.transport).restart_guarantee();
        {
            let mut report = self.shared.report();
            report.on_restart = on_restart.into();
            report.pid = launched.pid;
            report.sandbox = description;
            report.started = started;
            report.standby = self.backend.standby_pid();
            report.kept = self.backend.adopted();
        }
        self.watch_backend();
        let config = lock(&self.transport).config_space();
        Ok(Change { old_pid, new_pid: launched.pid, took, config })
    }

    /// Polls the used indices until one moves past `before`, for at most
    /// [`FIRST_COMPLETION`].
    fn wait_first_completion(&self, before: &[(u16, u16)]) {
        if !before.iter().any(|(avail, used)| avail != used) {
            return;
        }
        let start = Instant::now();
        while start.elapsed() < FIRST_COMPLETION {
            let now = self.watch.progress(self.kind);
            if now.iter().zip(before).any(|(n, b)| n.1 != b.1) {
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// The watchdog, and a restart that is due.
    fn tick(&mut self, now: Instant) {
        match self.state {
            DeviceState::Restarting if self.retry_at.is_some_and(|t| now >= t) => {
                self.restart_now()
            }
            DeviceState::Running => {
                self.backend.tick();
                self.prepare_standby();
                let standby = self.backend.standby_pid();
                self.shared.report().standby = standby;
                if let Some(hung) = self.check_progress(now) {
                    self.failed(Some(hung));
                }
            }
            _ => {}
        }
    }

    /// Connects the backend's standby, if it has a new one, and hands it what it has not been
    /// sent of the device's set-up (the driver's features and queues change with a reset). One
    /// that does not take it within [`STANDBY_SETUP`] is let go.
    fn prepare_standby(&mut self) {
        let Some(pid) = self.backend.standby_pid() else {
            self.standby = None;
            return;
        };
        let deadline = Instant::now() + STANDBY_SETUP;
        let conn = match self.standby.take() {
            Some((known, mut conn)) if known == pid => {
                conn.set_deadline(deadline);
                Ok(conn)
            }
            _ => match self.backend.standby_connection() {
                Some(socket) => Connection::connect_within(socket, &self.backend.shape(), deadline),
                None => return,
            },
        };
        let setup = lock(&self.transport).standby_setup();
        match conn.and_then(|mut conn| conn.prepare(&setup).map(|()| conn)) {
            Ok(conn) => self.standby = Some((pid, conn)),
            Err(e) => self.backend.discard_standby(&with_causes(&e)),
        }
    }

    /// Counts completions and says whether the device is hung.
    fn check_progress(&mut self, now: Instant) -> Option<String> {
        let progress = self.watch.progress(self.kind);
        let used: Vec<u16> = progress.iter().map(|p| p.1).collect();
        if used.len() == self.last_used.len() {
            let done: u64 =
                used.iter().zip(&self.last_used).map(|(n, o)| u64::from(n.wrapping_sub(*o))).sum();
            if done > 0 {
                self.shared.report().requests += done;
                self.last_progress = now;
            }
        } else {
            self.last_progress = now;
        }
        self.last_used = used;
        let outstanding = progress.iter().any(|(avail, used)| avail != used);
        if !outstanding {
            self.last_progress = now;
            return None;
        }
        let deadline = self.policy.hang_deadline?;
        let stalled = now.duration_since(self.last_progress);
        (stalled > deadline)
            .then(|| format!("hung: no progress for {:.1} s", stalled.as_secs_f64()))
    }

    /// Replaces the backend on request (restart or upgrade).
    fn replace(&mut self, program: Option<PathBuf>) -> Result<Change, SupervisorError> {
        if !self.backend.restartable() {
            return Err(SupervisorError::NotRestartable(self.shared.name.clone()));
        }
        if let Some(program) = &program {
            self.backend.set_program(program).map_err(SupervisorError::Program)?;
        }
        self.swap(if program.is_some() { "upgraded" } else { "restarted on request" })
    }

    /// Replaces the backend by one started with `change`, which the backend prepares (and
    /// checks) first: a change it refuses leaves the running backend untouched.
    fn reconfigure(&mut self, change: Reconfiguration) -> Result<Change, SupervisorError> {
        self.backend.prepare(change).map_err(SupervisorError::Refused)?;
        self.swap("reconfigured on request")
    }

    /// Stops the running backend and starts the next one; `why` becomes the last exit.
    fn swap(&mut self, why: &str) -> Result<Change, SupervisorError> {
        self.unwatch();
        lock(&self.transport).detach_backend();
        self.failed_at = Some(Instant::now());
        self.shared.report().last_exit = Some(why.into());
        let change = self.start();
        match &change {
            Ok(c) => {
                self.state = DeviceState::Running;
                self.retry_at = None;
                let mut report = self.shared.report();
                report.state = DeviceState::Running;
                report.restarts += 1;
                report.last_recovery = Some(c.took);
            }
            Err(_) => {
                self.set_state(DeviceState::Restarting);
                self.retry_at = Some(Instant::now() + self.policy.backoff);
            }
        }
        change
    }

    fn set_state(&mut self, state: DeviceState) {
        self.shared.report().state = state.clone();
        self.state = state;
    }
}

/// An error and its causes, on one line.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text = format!("{text}: {line}");
        }
        source = cause.source();
    }
    text
}
