//! Microkernel mode: the device backend in a compartment — `bulkhead device
//! KIND --fd 3 …` re-executed from this binary in new namespaces, entering
//! its own sandbox before it reads a message.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use bulkhead_core::virtio::{Backend, DeviceKind, Launched, Reconfiguration};
use bulkhead_devices::console::{ConsoleHost, HostEnds};
use bulkhead_devices::net::config::{Mac, TapSource};
use bulkhead_devices::net::tap::Tap;
use bulkhead_devices::startup::{Report, Startup, StartupError, StartupFile};
use bulkhead_devices::DeviceConfig;
use bulkhead_sandbox::{spawn, Command, Compartment, Policy};

use super::broker::Broker;
use super::{core_kind, policy_for, Request};
use crate::partition::Partition;
#[cfg(doc)]
use bulkhead_devices::blk::DiskSwap;

/// The connection's file descriptor number inside the compartment.
const CONN_FD: i32 = 3;
/// The tap's file descriptor number inside a net compartment.
const TAP_FD: i32 = 4;
/// The start-up socket's file descriptor number inside the compartment.
const STARTUP_FD: i32 = 5;
/// The console's host side inside a console compartment: its listener, pty or input at 4 (a
/// device is never both net and console), standard output at 6.
const CONSOLE_FD: i32 = 4;
const CONSOLE_OUTPUT_FD: i32 = 6;
/// The device's limits page inside the compartment (read-only: the memfd is sealed).
const LIMITS_FD: i32 = 7;
/// How long a compartment may take from its `execve` to the word that it serves: opening its
/// image and entering its sandbox take milliseconds; a file system that hangs must not hang
/// the core.
const STARTUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a compartment whose sockets closed may take to exit before it is killed.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub struct CompartmentBackend {
    request: Request,
    policy: Policy,
    /// The net device's tap, opened by the core (it has the privilege).
    tap: Option<Tap>,
    /// The console's host side, opened by the core: the same socket or pty for every
    /// compartment of the device.
    console: Option<Arc<HostEnds>>,
    /// The core's end of the running compartment's start-up socket: after `ready`, the
    /// compartment says on it which files it uses when they change (a console's client).
    startup: Option<Startup>,
    child: Option<Compartment>,
    /// A second descriptor of the running compartment's vhost-user socket, whose other end
    /// only the compartment holds: once that reads as closed, every thread of it has let go
    /// of its files and can do nothing more.
    conn: Option<UnixStream>,
    /// Compartments that ended and are being reaped on the supervisor's tick: the last steps
    /// of a process's exit (freeing its namespaces) wait for an RCU grace period, which a
    /// restart does not wait for.
    dying: Vec<Compartment>,
    /// The binary to run; this one unless upgraded.
    program: Option<std::path::PathBuf>,
    /// The VM's cgroups and the compartment's limits.
    partition: Arc<Partition>,
    /// The files the device's last compartment used (a disk's image files), kept open here so
    /// that their locks hold from one compartment to the next, and handed to each successor.
    kept: Vec<StartupFile>,
    /// What its compartments may have opened for them.
    broker: Broker,
    /// A successor started with a new configuration, serving but not yet handed the device
    /// (see [`Backend::prepare`]); the next launch puts it in place of the running one.
    prepared: Option<Prepared>,
    /// Whether to keep a standby ([`Self::standby`]): `--standby`, for devices whose
    /// compartments are all alike (blk, net, rng; not a console, whose files change with its
    /// clients).
    keep_standby: bool,
    /// A compartment started ahead for the same configuration — sandboxed, in its cgroup,
    /// handed the device's files, waiting on its vhost-user socket — that the next launch puts
    /// in place at once: a recovery is then only the vhost-user hand-over. Started on the
    /// supervisor's tick after each launch, never on the recovery's path.
    standby: Option<Serving>,
    /// The cgroups of compartments that ended, removed on the supervisor's tick: removing one
    /// waits while its exiting tasks leave, which a restart does not wait for.
    leaving: Vec<bulkhead_sandbox::Cgroup>,
    /// A compartment a previous core started and handed over (a core update): the first
    /// launch takes it over instead of starting one.
    adopt: Option<KeptState>,
    /// Whether the running compartment was taken over from a previous core: it reads that
    /// core's limits page, which no one writes any more ([`Backend::adopted`]).
    adopted: bool,
}

/// A compartment kept running for the next core (a core update): what holds its descriptors
/// open until the new binary is executed, and what the next core needs to take it over.
pub struct Kept {
    pub state: KeptState,
    /// The compartment's handle, its start-up and vhost-user sockets, the files it uses and
    /// the tap: kept open (never dropped: the process executes the next core).
    _held: (Compartment, Startup, UnixStream, Vec<StartupFile>, Option<Tap>),
}

/// A kept compartment as the next core reads it: numbers of descriptors it inherits.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct KeptState {
    /// The device (`blk0`).
    pub device: String,
    pub pid: i32,
    /// Its cgroup's name below the VM's (created again, as it is, by the next core).
    pub cgroup: Option<String>,
    pub conn: i32,
    pub startup: i32,
    /// The files it uses: descriptor, the name it opened, whether for writing.
    pub files: Vec<(i32, std::path::PathBuf, bool)>,
    pub tap: Option<i32>,
    /// The arguments its device was started with (a net device's MAC among them).
    pub args: Vec<String>,
    pub program: Option<std::path::PathBuf>,
}

impl KeptState {
    /// Ends the kept compartment, one the next core does not take over: killed and reaped.
    pub fn end(&self) {
        // SAFETY: signalling, then reaping, a child of this process; one already reaped makes
        // both calls fail harmlessly.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }

    /// Every descriptor the next core inherits.
    pub fn fds(&self) -> Vec<i32> {
        let files = self.files.iter().map(|(fd, _, _)| *fd);
        [self.conn, self.startup].into_iter().chain(files).chain(self.tap).collect()
    }
}

/// A compartment that serves: its process, its start-up socket, the core's end of its
/// vhost-user socket, and the files it uses.
struct Serving {
    child: Compartment,
    startup: Startup,
    conn: UnixStream,
    files: Vec<StartupFile>,
}

/// A successor prepared with a new configuration.
struct Prepared {
    request: Request,
    broker: Broker,
    serving: Serving,
}

impl CompartmentBackend {
    /// `adopt`: the compartment a previous core kept running for this device, taken over at
    /// the first launch.
    pub fn new(
        mut request: Request,
        partition: Arc<Partition>,
        standby: bool,
        adopt: Option<KeptState>,
    ) -> anyhow::Result<Self> {
        let keep_standby = standby
            && matches!(
                request.config,
                DeviceConfig::Blk(_) | DeviceConfig::Net(_) | DeviceConfig::Rng(_)
            );
        let mut policy = policy_for(&request.name, None)?;
        policy.set_cgroup_limits(partition.device_limits().clone());
        let mut tap = None;
        if let DeviceConfig::Net(net) = &request.config {
            let TapSource::Name(name) = &net.tap else {
                anyhow::bail!("{}: give the tap by name (tap=NAME)", request.name);
            };
            match adopt.as_ref().and_then(|a| a.tap) {
                // The kept compartment holds the tap: it cannot be opened again by name.
                Some(fd) => tap = Some(Tap::from_fd(fd)?),
                None => tap = Some(Tap::open(name)?),
            }
            // The MAC is chosen once, so a restarted compartment keeps it.
            let mac = net.mac.unwrap_or_else(Mac::random);
            request.args =
                vec!["--tap-fd".into(), TAP_FD.to_string(), "--mac".into(), mac.to_string()];
            if let Some(kept) = &adopt {
                request.args.clone_from(&kept.args);
            }
        }
        let mut console = None;
        if let DeviceConfig::Console(c) = &request.config {
            let ConsoleHost::Open(ends) = &c.host else {
                anyhow::bail!("{}: the core opens the console's host side first", request.name);
            };
            let (_, inherited) = ends.hand_to(CONSOLE_FD, CONSOLE_OUTPUT_FD);
            request.args = vec!["--console".into(), ConsoleHost::Inherited(inherited).to_string()];
            console = Some(ends.clone());
        }
        let broker = Broker::for_config(&request.config);
        Ok(CompartmentBackend {
            request,
            policy,
            tap,
            console,
            startup: None,
            child: None,
            conn: None,
            dying: Vec::new(),
            partition,
            kept: Vec::new(),
            broker,
            prepared: None,
            keep_standby,
            standby: None,
            leaving: Vec::new(),
            program: adopt.as_ref().and_then(|a| a.program.clone()),
            adopted: false,
            adopt,
        })
    }

    /// Takes over the compartment a previous core kept running: its process, its sockets and
    /// the files it uses. Fails if any of it is gone.
    fn take_over(&self, kept: &KeptState) -> std::io::Result<Serving> {
        use std::os::fd::FromRawFd;
        let cgroup = match (&kept.cgroup, self.partition.vm_cgroup()) {
            (Some(name), Some(vm)) => {
                Some(vm.child(name, self.policy.cgroup_limits()).map_err(std::io::Error::other)?)
            }
            _ => None,
        };
        let child = Compartment::adopt(kept.pid, cgroup)?;
        let startup = Startup::from_inherited(kept.startup)?;
        // SAFETY: the previous core handed this descriptor over for this compartment; nothing
        // else in this process owns it.
        let conn = unsafe { UnixStream::from_raw_fd(kept.conn) };
        let files = kept
            .files
            .iter()
            .map(|(fd, path, writable)| StartupFile {
                path: path.clone(),
                writable: *writable,
                // SAFETY: as above, one of the files the kept compartment uses.
                file: unsafe { std::fs::File::from_raw_fd(*fd) },
            })
            .collect();
        Ok(Serving { child, startup, conn, files })
    }

    /// Starts the standby if one is wanted and none is there, and lets go of one that ended.
    fn refresh_standby(&mut self) {
        if let Some(standby) = &mut self.standby {
            if !matches!(standby.child.try_wait(), Ok(None)) {
                eprintln!(
                    "bulkhead: {}: the standby compartment (pid {}) ended; starting another",
                    self.request.name,
                    standby.child.pid()
                );
                self.standby = None;
            }
        }
        // None while a successor with a new configuration waits to take over.
        let wanted = self.keep_standby && self.child.is_some() && self.prepared.is_none();
        if !wanted || self.standby.is_some() {
            return;
        }
        match self.start_compartment(&self.request, &self.broker, &self.kept) {
            Ok(serving) => self.standby = Some(serving),
            Err(e) => {
                // Recoveries go on without one, starting each successor then.
                eprintln!(
                    "bulkhead: {}: cannot start a standby compartment, recovering without: {e}",
                    self.request.name
                );
                self.keep_standby = false;
            }
        }
    }

    fn stop(&mut self) {
        self.conn = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.leaving.extend(child.take_cgroup());
            let _ = child.wait();
        }
        // What it said last about the files it uses, up to its end, is what its successor gets.
        if let Some(startup) = self.startup.take() {
            self.take_uses(&startup);
        }
    }

    /// Keeps the files of the compartment's last `uses` word, if it said one since.
    fn take_uses(&mut self, startup: &Startup) {
        if let Some(files) = startup.latest_uses() {
            self.kept = files;
        }
    }

    /// Starts a compartment for `request`, hands it `handed` (the files its predecessor used),
    /// and waits for its word that it serves, opening what it asks for through `broker`. One
    /// that fails is reaped, and the reason is its own words, or how it ended.
    fn start_compartment(
        &self,
        request: &Request,
        broker: &Broker,
        handed: &[StartupFile],
    ) -> std::io::Result<Serving> {
        let (core_end, device_end) = UnixStream::pair()?;
        let (startup, device_startup) = Startup::pair()?;
        let kind = request.config.kind().name();
        let cmd = match &self.program {
            Some(program) => Command::new(program),
            None => Command::current_exe()?,
        };
        let mut cmd = cmd
            .args(["device", kind, "--fd", &CONN_FD.to_string()])
            .args(["--startup-fd", &STARTUP_FD.to_string()])
            .args(&request.args)
            .fd(device_end.as_fd(), CONN_FD)
            .fd(device_startup.as_fd(), STARTUP_FD);
        // A compartment starts with an empty environment; these pass through:
        // log filtering, and the test-only fault injector (compiled into
        // debug builds only).
        for var in ["RUST_LOG", "BULKHEAD_FAULT"] {
            if let Some(value) = std::env::var_os(var) {
                cmd = cmd.env(var, value);
            }
        }
        if let Some(page) = &request.limits {
            cmd = cmd
                .args(["--limits-fd", &LIMITS_FD.to_string()])
                .fd(page.file().as_fd(), LIMITS_FD);
        }
        if let Some(tap) = &self.tap {
            // SAFETY: the tap's fd stays open as long as `self.tap`, which
            // outlives this call (the spawned child gets its own copy).
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(tap.fd()) };
            cmd = cmd.fd(fd, TAP_FD);
        }
        let console = self.console.clone();
        if let Some(ends) = &console {
            for (fd, target) in ends.hand_to(CONSOLE_FD, CONSOLE_OUTPUT_FD).0 {
                cmd = cmd.fd(fd, target);
            }
        }
        if let Some(vm) = self.partition.vm_cgroup() {
            cmd = cmd.cgroup_parent(vm);
        }
        // Only the launcher thread may start processes (see `crate::confine::launcher`).
        let policy = &self.policy;
        let mut child = crate::confine::launcher::call(|| spawn(&cmd, policy))
            .map_err(std::io::Error::other)?;
        // The compartment waits for the go byte: its limits are in force
        // before its program runs. One that missed a limit asked for ends here.
        let state = child.cgroup().map(bulkhead_sandbox::Cgroup::state);
        if let Err(e) = self.partition.check_compartment(&request.name, state) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(e));
        }
        drop(device_startup);
        match started(&startup, &mut child, broker, handed) {
            Ok(files) => Ok(Serving { child, startup, conn: core_end, files }),
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::io::Error::other(why))
            }
        }
    }

    /// Puts `serving` in place as the running compartment.
    fn run(&mut self, serving: Serving) -> Launched {
        let Serving { child, startup, conn, files } = serving;
        self.kept = files;
        self.startup = Some(startup);
        let description = format!("compartment pid {}: {}", child.pid(), child.report());
        let pid = Some(child.pid() as u32);
        self.child = Some(child);
        self.conn = conn.try_clone().ok();
        Launched { conn, pid, description }
    }

    /// The files to hand a compartment that serves the disk `config`: those of the running
    /// compartment when it names the same file (the image as it is now, with the locks the
    /// device holds: a swap to the same file reads its size again), none for another file.
    fn handed_for(&self, config: &DeviceConfig) -> &[StartupFile] {
        let (DeviceConfig::Blk(new), DeviceConfig::Blk(old)) = (config, &self.request.config)
        else {
            return &[];
        };
        let held = self.kept.iter().find(|f| f.path == old.path);
        match (held, std::fs::metadata(&new.path)) {
            (Some(held), Ok(new)) if same_file(&held.file, &new) => &self.kept,
            _ => &[],
        }
    }
}

/// Whether the open `file` is the file `other` describes.
fn same_file(file: &std::fs::File, other: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata().is_ok_and(|m| (m.dev(), m.ino()) == (other.dev(), other.ino()))
}

/// Hands the new compartment `handed`, and waits for its word that it serves (returning the
/// files it uses) or why it cannot (its own words, or how it ended).
fn started(
    startup: &Startup,
    child: &mut Compartment,
    broker: &Broker,
    handed: &[StartupFile],
) -> Result<Vec<StartupFile>, String> {
    // A compartment that died at once cannot take them: its report says how it ended.
    let _ = startup.send_files(handed);
    let deadline = std::time::Instant::now() + STARTUP_DEADLINE;
    let ended = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match startup.report(left) {
            Ok(Report::Open { path, writable }) => {
                // The launcher keeps the rights to open what the user named.
                let opened = crate::confine::launcher::call(|| broker.open(&path, writable));
                let _ = match opened {
                    Ok(file) => startup.opened(&path, writable, &file),
                    Err(why) => startup.refused(&why),
                };
            }
            Ok(Report::Ready(files)) => return Ok(files),
            Ok(Report::Failed(why)) => break Ok(why),
            Err(e) => break Err(e),
        }
    };
    Err(match ended {
        Ok(why) => why,
        Err(StartupError::Closed) => match child.wait_for(EXIT_WAIT) {
            Ok(Some(status)) => {
                format!("the compartment ended before it served: {}", describe(status))
            }
            _ => "the compartment closed its start-up socket without a word".into(),
        },
        Err(e) => format!("the compartment failed to start: {e}"),
    })
}

impl Backend for CompartmentBackend {
    fn kind(&self) -> DeviceKind {
        core_kind(self.request.config.kind())
    }

    fn name(&self) -> String {
        self.request.name.clone()
    }

    fn launch(&mut self) -> std::io::Result<Launched> {
        self.adopted = false;
        if let Some(kept) = self.adopt.take() {
            match self.take_over(&kept) {
                Ok(serving) => {
                    self.adopted = true;
                    let mut launched = self.run(serving);
                    launched.description =
                        format!("compartment pid {} (kept across a core update)", kept.pid);
                    return Ok(launched);
                }
                Err(e) => eprintln!(
                    "bulkhead: {}: cannot take over its compartment (pid {}) from the previous \
                     core: {e}; starting another",
                    self.request.name, kept.pid
                ),
            }
        }
        if let Some(Prepared { request, broker, serving }) = self.prepared.take() {
            // The successor was started with the new configuration while this one served.
            self.stop();
            self.request = request;
            self.broker = broker;
            return Ok(self.run(serving));
        }
        self.stop();
        if let Some(mut standby) = self.standby.take() {
            if matches!(standby.child.try_wait(), Ok(None)) {
                return Ok(self.run(standby));
            }
        }
        let serving = self.start_compartment(&self.request, &self.broker, &self.kept)?;
        Ok(self.run(serving))
    }

    /// A disk's new image ([`DiskSwap`]): a compartment is started on it beside the running
    /// one, and serves once it has opened, checked and locked the image; any failure is
    /// refused here, the running compartment untouched.
    fn prepare(&mut self, change: Reconfiguration) -> Result<(), String> {
        let name = self.request.name.clone();
        let config = bulkhead_devices::blk::config::swapped(&name, &self.request.config, change)?;
        let request = Request {
            name: name.clone(),
            args: vec!["--disk".into(), config.to_string()],
            config: DeviceConfig::Blk(config),
            limits: self.request.limits.clone(),
        };
        let broker = Broker::for_config(&request.config);
        self.prepared = None;
        // A standby serves the old image: the next one is started for the new.
        self.standby = None;
        let handed = self.handed_for(&request.config);
        let serving = self
            .start_compartment(&request, &broker, handed)
            .map_err(|e| format!("cannot serve {name} from the new image: {e}"))?;
        self.prepared = Some(Prepared { request, broker, serving });
        Ok(())
    }

    /// The running compartment goes on under the next core with its sockets and files; a
    /// console's (whose host side the core reopens) and one being replaced do not.
    fn keep_for_successor(&mut self) -> Option<bulkhead_core::virtio::Kept> {
        use std::os::fd::AsRawFd;
        if matches!(self.request.config, DeviceConfig::Console(_)) || self.prepared.is_some() {
            return None;
        }
        // All three or none: a handle taken and dropped alone would kill the compartment.
        if self.child.is_none() || self.startup.is_none() || self.conn.is_none() {
            return None;
        }
        let (Some(child), Some(startup), Some(conn)) =
            (self.child.take(), self.startup.take(), self.conn.take())
        else {
            return None;
        };
        // What it said last about the files it uses is what the next core keeps, as `stop`
        // keeps it for a successor.
        self.take_uses(&startup);
        let files = std::mem::take(&mut self.kept);
        let tap = self.tap.take();
        let state = KeptState {
            device: self.request.name.clone(),
            pid: child.pid(),
            cgroup: child.cgroup().and_then(bulkhead_sandbox::Cgroup::name),
            conn: conn.as_raw_fd(),
            startup: startup.as_fd().as_raw_fd(),
            files: files.iter().map(|f| (f.file.as_raw_fd(), f.path.clone(), f.writable)).collect(),
            tap: tap.as_ref().map(Tap::fd),
            args: self.request.args.clone(),
            program: self.program.clone(),
        };
        Some(Box::new(Kept { state, _held: (child, startup, conn, files, tap) }))
    }

    fn adopted(&self) -> bool {
        self.adopted
    }

    fn status(&self) -> Option<String> {
        let child = self.child.as_ref()?;
        child.status().ok().map(|s| s.to_string())
    }

    fn exit_reason(&mut self) -> Option<String> {
        let mut child = self.child.take()?;
        self.leaving.extend(child.take_cgroup());
        // Every thread of it has closed its files and it is exiting: how is known already; it
        // is reaped on a later tick.
        if self.conn.take().as_ref().is_some_and(peer_closed) {
            if let Some(status) = child.exiting_status() {
                self.dying.push(child);
                return Some(describe(status));
            }
        }
        // Its socket closed: it is ending. Give it a moment, then make sure.
        if let Ok(Some(status)) = child.wait_for(EXIT_WAIT) {
            return Some(describe(status));
        }
        let _ = child.kill();
        child.wait().ok().map(|s| format!("closed its connection, then {}", describe(s)))
    }

    fn pidfd(&self) -> Option<std::os::fd::RawFd> {
        let pidfd = self.child.as_ref()?.pidfd()?;
        Some(std::os::fd::AsRawFd::as_raw_fd(&pidfd))
    }

    fn kill(&mut self) {
        if let Some(child) = &self.child {
            let _ = child.kill();
        }
    }

    /// Reads which files the compartment says it uses now (never waits; at most a few dozen
    /// words a tick, however many a hostile compartment sends).
    fn tick(&mut self) {
        if let Some(startup) = self.startup.take() {
            self.take_uses(&startup);
            self.startup = Some(startup);
        }
        self.dying.retain_mut(|child| matches!(child.try_wait(), Ok(None)));
        self.leaving.retain_mut(|cgroup| !cgroup.try_remove());
        self.refresh_standby();
    }

    fn set_program(&mut self, program: &std::path::Path) -> Result<(), String> {
        self.program = Some(program.to_path_buf());
        // An upgrade runs the new program: a standby of the old one is let go.
        self.standby = None;
        Ok(())
    }

    fn standby_pid(&self) -> Option<u32> {
        self.standby.as_ref().map(|s| s.child.pid() as u32)
    }

    fn standby_connection(&self) -> Option<UnixStream> {
        self.standby.as_ref()?.conn.try_clone().ok()
    }

    fn discard_standby(&mut self, why: &str) {
        if let Some(standby) = self.standby.take() {
            eprintln!(
                "bulkhead: {}: the standby compartment (pid {}) could not be readied, recovering without one: {why}",
                self.request.name,
                standby.child.pid()
            );
            self.keep_standby = false;
        }
    }

    fn mode(&self) -> &'static str {
        "compartment"
    }
}

/// How a process ended, in words.
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(bulkhead_devices::cli::PANIC_EXIT_STATUS), _) => {
            format!("panicked (exited with status {})", bulkhead_devices::cli::PANIC_EXIT_STATUS)
        }
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(libc::SIGSYS)) => format!(
            "killed by signal {} (SIGSYS: a system call its seccomp filter does not allow)",
            libc::SIGSYS
        ),
        (None, Some(signal)) => format!(
            "killed by signal {signal}{}",
            if status.core_dumped() { " (core dumped)" } else { "" }
        ),
        _ => status.to_string(),
    }
}

/// Whether the other end of `conn` has been closed (never waits).
fn peer_closed(conn: &UnixStream) -> bool {
    let mut pfd = libc::pollfd { fd: conn.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: poll reads and writes one pollfd that lives for the call; it does not wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0
}

impl Drop for CompartmentBackend {
    fn drop(&mut self) {
        self.stop();
        for mut child in self.dying.drain(..) {
            let _ = child.wait();
        }
        for cgroup in self.leaving.drain(..) {
            let _ = cgroup.remove();
        }
    }
}
