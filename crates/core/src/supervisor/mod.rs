//! The supervisor: watches every device backend and brings a failed one
//! back while the guest runs.
//!
//! A backend has failed when its vhost-user socket closes (the compartment
//! exited, was killed, panicked and aborted) or when it stops making
//! progress: a queue the device must consume has requests the guest made
//! available (`avail` ≠ `used` in guest memory) and its used index has not
//! moved for the watchdog's deadline. The supervisor then starts a new
//! backend (a compartment re-spawned in a fresh sandbox), connects to it
//! and hands it the running device: features, memory table, the inflight
//! region the core kept, and each queue's addresses, eventfds and its base
//! (the used index in guest memory). The new backend resubmits what the
//! region records as in flight and carries on with what the guest queued
//! meanwhile (the guest's kicks wait in the ioeventfd). The guest sees a
//! pause.
//!
//! Restarts follow a [`RestartPolicy`]: immediate while there have been few
//! recently, then with exponential back-off; past the limit the device is
//! marked failed, reported, and left alone — the core, the guest and the
//! other devices run on. Backends that may not be restarted (threads of the
//! core, in monolithic mode) end the VM instead, naming the device.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::exit::{ExitLatch, VmExit};
use crate::virtio::attach::Attached;
use crate::virtio::frontend::Connection;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::{Backend, DeviceKind};

/// Epoll tokens of device sockets start here (the VM loop's own are below).
pub const DEVICE_TOKEN_BASE: u64 = 1000;
/// How often the watchdog looks at the queues and retries are due.
pub const TICK: Duration = Duration::from_millis(100);

/// When and how often failed devices are restarted.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    pub enabled: bool,
    /// Restarts allowed within `window`; one more marks the device failed.
    pub max_restarts: u32,
    pub window: Duration,
    /// Restarts within a second that happen at once; later ones back off.
    pub burst: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// No progress for this long with requests outstanding: hung.
    pub hang_deadline: Option<Duration>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            enabled: true,
            max_restarts: 100,
            window: Duration::from_secs(60),
            burst: 5,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            hang_deadline: Some(Duration::from_secs(5)),
        }
    }
}

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
    pub uptime: Duration,
    pub requests: u64,
    pub sandbox: String,
    /// The last restart: from the failure to the first request completed
    /// by the successor (or to its start, if nothing was outstanding).
    pub last_recovery: Option<Duration>,
}

/// Why a backend could not be started and handed the device.
#[derive(Debug)]
struct StartFailure {
    /// What went wrong, in words.
    message: String,
    /// How the new backend process ended, when it did (killed during the hand-over).
    ended: Option<String>,
}

impl StartFailure {
    fn new(message: String) -> StartFailure {
        StartFailure { message, ended: None }
    }
}

/// The result of a restart.
#[derive(Clone, Debug)]
pub struct Change {
    pub old_pid: Option<u32>,
    pub new_pid: Option<u32>,
    pub took: Duration,
}

struct Slot {
    name: String,
    kind: DeviceKind,
    transport: Arc<Mutex<MmioTransport>>,
    backend: Box<dyn Backend>,
    pid: Option<u32>,
    description: String,
    state: DeviceState,
    restarts: u32,
    recent: VecDeque<Instant>,
    last_exit: Option<String>,
    started: Instant,
    requests: u64,
    last_used: Vec<u16>,
    last_progress: Instant,
    retry_at: Option<Instant>,
    failed_at: Option<Instant>,
    watched_fd: Option<RawFd>,
    last_recovery: Option<Duration>,
}

/// Watches and restarts the VM's device backends.
pub struct Supervisor {
    slots: Vec<Slot>,
    policy: RestartPolicy,
    exit: ExitLatch,
    epoll: Arc<Epoll>,
}

fn lock(t: &Mutex<MmioTransport>) -> std::sync::MutexGuard<'_, MmioTransport> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl Supervisor {
    pub fn new(
        devices: Vec<Attached>,
        policy: RestartPolicy,
        exit: ExitLatch,
        epoll: Arc<Epoll>,
    ) -> Self {
        let now = Instant::now();
        let slots = devices
            .into_iter()
            .map(|d| Slot {
                kind: d.backend.kind(),
                name: d.name,
                transport: d.transport,
                backend: d.backend,
                pid: d.pid,
                description: d.description,
                state: DeviceState::Running,
                restarts: 0,
                recent: VecDeque::new(),
                last_exit: None,
                started: now,
                requests: 0,
                last_used: Vec::new(),
                last_progress: now,
                retry_at: None,
                failed_at: None,
                watched_fd: None,
                last_recovery: None,
            })
            .collect();
        let mut s = Supervisor { slots, policy, exit, epoll };
        for i in 0..s.slots.len() {
            s.watch(i);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Watches device `i`'s socket for its peer's end (not for readability:
    /// replies to the vCPUs' requests arrive on it too).
    fn watch(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if let Some(old) = slot.watched_fd.take() {
            let _ = self.epoll.ctl(ControlOperation::Delete, old, EpollEvent::default());
        }
        if let Some(fd) = lock(&slot.transport).backend_fd() {
            let events = EventSet::HANG_UP | EventSet::READ_HANG_UP;
            let event = EpollEvent::new(events, DEVICE_TOKEN_BASE + i as u64);
            if self.epoll.ctl(ControlOperation::Add, fd, event).is_ok() {
                slot.watched_fd = Some(fd);
            }
        }
    }

    /// The event loop saw token `token`; true if it was a device's.
    pub fn handle_event(&mut self, token: u64) -> bool {
        let Some(i) = token.checked_sub(DEVICE_TOKEN_BASE).map(|i| i as usize) else {
            return false;
        };
        if i < self.slots.len() && self.slots[i].state == DeviceState::Running {
            let reason = None;
            self.failed(i, reason);
        }
        true
    }

    /// Device `i`'s backend is gone or hung: reap it, then restart it,
    /// schedule a restart, give up, or end the VM.
    fn failed(&mut self, i: usize, hung: Option<String>) {
        let now = Instant::now();
        let slot = &mut self.slots[i];
        if let Some(fd) = slot.watched_fd.take() {
            let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        lock(&slot.transport).detach_backend();
        let reason = hung
            .or_else(|| slot.backend.exit_reason())
            .unwrap_or_else(|| "its connection closed".into());
        log::warn!("{}: backend failed: {reason}", slot.name);
        slot.last_exit = Some(reason.clone());
        slot.failed_at = Some(now);
        if !slot.backend.restartable() {
            slot.state = DeviceState::Failed;
            self.exit.request(VmExit::Error(format!(
                "device {} failed ({reason}); its backend runs inside the core (monolithic mode), where a device fault ends the VM",
                slot.name
            )));
            return;
        }
        self.schedule(i, now);
    }

    /// Restarts device `i` now, later, or never, per the policy.
    fn schedule(&mut self, i: usize, now: Instant) {
        let policy = self.policy.clone();
        let slot = &mut self.slots[i];
        while slot.recent.front().is_some_and(|t| now.duration_since(*t) > policy.window) {
            slot.recent.pop_front();
        }
        if !policy.enabled || slot.recent.len() as u32 >= policy.max_restarts {
            slot.state = DeviceState::Failed;
            let why = if policy.enabled { "too many restarts" } else { "restarts are off" };
            eprintln!(
                "bulkhead: {}: failed ({}); {why}: the device is left stopped, the VM runs on",
                slot.name,
                slot.last_exit.as_deref().unwrap_or("?")
            );
            return;
        }
        let last_second =
            slot.recent.iter().filter(|t| now.duration_since(**t) < Duration::from_secs(1)).count()
                as u32;
        slot.state = DeviceState::Restarting;
        if last_second < policy.burst {
            slot.retry_at = None;
            self.restart_now(i);
        } else {
            let doublings = (last_second - policy.burst).min(16);
            let delay = (policy.backoff * 2u32.pow(doublings)).min(policy.backoff_max);
            slot.retry_at = Some(now + delay);
        }
    }

    /// Starts a new backend for device `i` and hands it the running device.
    fn restart_now(&mut self, i: usize) {
        let now = Instant::now();
        match self.start(i) {
            Ok(change) => {
                let slot = &mut self.slots[i];
                slot.state = DeviceState::Running;
                slot.restarts += 1;
                slot.recent.push_back(now);
                slot.retry_at = None;
                let since = slot.failed_at.take().unwrap_or(now);
                slot.last_recovery = Some(change.took + now.duration_since(since));
                eprintln!(
                    "bulkhead: {} restarted ({}), pid {}, serving again after {:.1} ms",
                    slot.name,
                    slot.last_exit.as_deref().unwrap_or("?"),
                    change.new_pid.map_or_else(|| "-".into(), |p| p.to_string()),
                    slot.last_recovery.unwrap_or_default().as_secs_f64() * 1000.0
                );
            }
            Err(e) => {
                let slot = &mut self.slots[i];
                slot.recent.push_back(now);
                eprintln!("bulkhead: {}: restart failed: {}", slot.name, e.message);
                slot.last_exit =
                    Some(e.ended.unwrap_or_else(|| format!("restart failed: {}", e.message)));
                self.schedule(i, now);
            }
        }
    }

    /// Launches, connects, starts the queues; measures until the first
    /// completion when requests were outstanding.
    fn start(&mut self, i: usize) -> Result<Change, StartFailure> {
        let t0 = Instant::now();
        let slot = &mut self.slots[i];
        let old_pid = slot.pid;
        let launched = slot.backend.launch().map_err(|e| StartFailure::new(e.to_string()))?;
        let handed_over = Connection::connect(launched.conn, slot.kind)
            .map_err(|e| e.to_string())
            .and_then(|conn| {
                let mut t = lock(&slot.transport);
                t.replace_backend(conn).map_err(|e| e.to_string())?;
                Ok(t.progress())
            });
        let before = match handed_over {
            Ok(before) => before,
            Err(e) => {
                // Its connection broke during the hand-over: most often because it died (a
                // kill that came then), which is the reason to keep, not the broken socket.
                lock(&slot.transport).detach_backend();
                let ended = slot.backend.exit_reason();
                let message = match &ended {
                    Some(how) => format!("the new backend {how} during the hand-over ({e})"),
                    None => e,
                };
                return Err(StartFailure { message, ended });
            }
        };
        slot.pid = launched.pid;
        slot.description = match slot.backend.status() {
            Some(status) => format!("{}; now: {status}", launched.description),
            None => launched.description,
        };
        slot.started = Instant::now();
        slot.last_progress = slot.started;
        slot.last_used = before.iter().map(|p| p.1).collect();
        wait_first_completion(&slot.transport, &before, Duration::from_millis(200));
        self.watch(i);
        Ok(Change { old_pid, new_pid: launched.pid, took: t0.elapsed() })
    }

    /// The watchdog and due retries; call every [`TICK`].
    pub fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            match slot.state {
                DeviceState::Restarting if slot.retry_at.is_some_and(|t| now >= t) => {
                    self.restart_now(i)
                }
                DeviceState::Running => {
                    if let Some(hung) = self.check_progress(i, now) {
                        self.failed(i, Some(hung));
                        // A hung process is still alive: the restart killed it.
                    }
                }
                _ => {}
            }
        }
    }

    /// Counts completions and says whether device `i` is hung.
    fn check_progress(&mut self, i: usize, now: Instant) -> Option<String> {
        let deadline = self.policy.hang_deadline;
        let slot = &mut self.slots[i];
        let progress = lock(&slot.transport).progress();
        let used: Vec<u16> = progress.iter().map(|p| p.1).collect();
        if used.len() == slot.last_used.len() {
            let done: u64 =
                used.iter().zip(&slot.last_used).map(|(n, o)| u64::from(n.wrapping_sub(*o))).sum();
            if done > 0 {
                slot.requests += done;
                slot.last_progress = now;
            }
        } else {
            slot.last_progress = now;
        }
        slot.last_used = used;
        let outstanding = progress.iter().any(|(avail, used)| avail != used);
        if !outstanding {
            slot.last_progress = now;
            return None;
        }
        let deadline = deadline?;
        let stalled = now.duration_since(slot.last_progress);
        (stalled > deadline)
            .then(|| format!("hung: no progress for {:.1} s", stalled.as_secs_f64()))
    }

    fn index(&self, name: &str) -> Result<usize, String> {
        self.slots.iter().position(|s| s.name == name).ok_or_else(|| {
            format!("there is no device {name}; `bulkhead ctl VM status` lists them")
        })
    }

    /// Replaces device `name`'s backend on request (restart or upgrade).
    pub fn replace(&mut self, name: &str, program: Option<&Path>) -> Result<Change, String> {
        let i = self.index(name)?;
        let slot = &mut self.slots[i];
        if !slot.backend.restartable() {
            return Err(format!(
                "{name} runs inside the core (monolithic mode): it cannot be restarted on its own"
            ));
        }
        if let Some(program) = program {
            slot.backend.set_program(program)?;
        }
        if let Some(fd) = slot.watched_fd.take() {
            let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        lock(&slot.transport).detach_backend();
        slot.failed_at = Some(Instant::now());
        slot.last_exit =
            Some(if program.is_some() { "upgraded".into() } else { "restarted on request".into() });
        let change = self.start(i).map_err(|e| e.message);
        let slot = &mut self.slots[i];
        match &change {
            Ok(c) => {
                slot.state = DeviceState::Running;
                slot.restarts += 1;
                slot.last_recovery = Some(c.took);
            }
            Err(_) => {
                slot.state = DeviceState::Restarting;
                slot.retry_at = Some(Instant::now() + self.policy.backoff);
            }
        }
        change
    }

    /// Every device's figures.
    pub fn report(&self) -> Vec<DeviceReport> {
        self.slots
            .iter()
            .map(|s| DeviceReport {
                name: s.name.clone(),
                kind: s.kind.name(),
                mode: s.backend.mode(),
                pid: s.pid,
                state: s.state.clone(),
                restarts: s.restarts,
                last_exit: s.last_exit.clone(),
                uptime: s.started.elapsed(),
                requests: s.requests,
                sandbox: s.description.clone(),
                last_recovery: s.last_recovery,
            })
            .collect()
    }
}

/// Polls the used indices until one moves past `before`, for at most `limit`.
fn wait_first_completion(transport: &Mutex<MmioTransport>, before: &[(u16, u16)], limit: Duration) {
    if !before.iter().any(|(avail, used)| avail != used) {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < limit {
        let now = lock(transport).progress();
        if now.iter().zip(before).any(|(n, b)| n.1 != b.1) {
            return;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}
