//! `bulkhead firecracker`: Firecracker's REST API, so that tools written for Firecracker
//! (firecracker-containerd, Kata Containers' driver, the SDKs) can drive Bulkhead.
//!
//! The API is hostile input, so it stays out of the core: this is a process of its own in
//! front of the core (a "personality", the microkernel way). It serves HTTP/1.1 on a unix
//! socket ([`http`]), collects the microVM's configuration ([`config`], [`api`]) and, on
//! `InstanceStart`, starts `bulkhead run` with the translated arguments as its child. From
//! then on this process stands for the VM, as orchestrators expect of Firecracker's: it
//! forwards SIGTERM and SIGINT to the core, exits with the core's status, and the core dies
//! if it dies (`PR_SET_PDEATHSIG`). The core answers `bulkhead ctl ID …` as for any VM.
//!
//! The protocol, step by step: a client connects to `--api-sock`; each connection has a
//! thread; each request is read whole, then answered under the microVM's lock, so requests
//! run one at a time whatever the connections; the connection stays open for the next
//! request unless the client asked to close it.

pub mod api;
pub mod config;
pub mod confine;
pub mod core_up;
pub mod http;
pub mod log;
pub mod metrics;
pub mod model;

use std::io::{BufRead, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The version of Firecracker's API this speaks (its OpenAPI document; see
/// docs/FIRECRACKER.md), answered by `GET /version`.
pub const API_VERSION: &str = "1.17.0";

/// `bulkhead firecracker`: Firecracker's command line, where its options make sense.
#[derive(clap::Args)]
pub struct FirecrackerArgs {
    /// The unix socket the API listens on (it must not exist).
    #[arg(long, default_value = "/run/firecracker.socket")]
    pub api_sock: PathBuf,
    /// Firecracker's JSON configuration file: the microVM boots at once.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file).
    #[arg(long)]
    pub no_api: bool,
    /// The microVM's id: the VM's name for `bulkhead ctl` (default: anonymous-instance-PID,
    /// so that fronts started without one do not share a name).
    #[arg(long)]
    pub id: Option<String>,
    /// The log level of this front: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long)]
    pub level: Option<String>,
    /// Where this front's log lines go (default: stderr).
    #[arg(long)]
    pub log_path: Option<String>,
    /// Log the guest's boot time when it writes 123 to I/O port 0x3f0 (on stderr, by the
    /// core: `bulkhead run --boot-timer`).
    #[arg(long)]
    pub boot_timer: bool,
    /// MMDS data: refused, MMDS is not implemented.
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// Firecracker's switch for its own seccomp filters, which the SDKs pass: accepted; the
    /// front's and the core's filters are Bulkhead's and stay (see docs/FIRECRACKER.md).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Print the version of Firecracker's API this speaks, as `firecracker --version` prints
    /// its own (first line `Firecracker vX.Y.Z`), and Bulkhead's.
    #[arg(long)]
    pub version: bool,
}

/// The core's pid once started (0 before): where SIGTERM and SIGINT go.
static CORE_PID: AtomicI32 = AtomicI32::new(0);
/// The API socket, removed by a signal that ends this process before the VM starts.
static SOCKET: OnceLock<std::ffi::CString> = OnceLock::new();
/// Requests read and not yet answered: the front waits for their answers before it exits.
static UNANSWERED: AtomicUsize = AtomicUsize::new(0);
/// How long an exiting front waits for requests still being answered.
const ANSWER_GRACE: Duration = Duration::from_secs(1);
/// The most API connections served at once (each has a thread).
const MAX_CONNECTIONS: usize = 64;
/// How often metrics are written once the microVM runs: Firecracker's 60 s.
const METRICS_PERIOD: Duration = Duration::from_secs(60);

/// What the main thread waits for: it alone starts the core, since `PR_SET_PDEATHSIG`
/// fires when the *thread* that forked the child ends, and the API's threads come and go.
enum Event {
    /// `InstanceStart`: start the core with these arguments and answer on the sender.
    Start(Vec<String>, Sender<Result<(), String>>),
    /// The configuration file could not be applied.
    Failed(anyhow::Error),
}

/// Runs the front; the result is the process exit code (the core's).
pub fn run(mut args: FirecrackerArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    if args.version {
        println!("Firecracker v{API_VERSION} (the API of bulkhead {})", env!("CARGO_PKG_VERSION"));
        return Ok(0);
    }
    let id = args.id.take().unwrap_or_else(|| format!("anonymous-instance-{}", std::process::id()));
    if args.metadata.is_some() {
        bail!("--metadata: MMDS is not implemented in Bulkhead (see docs/FIRECRACKER.md)");
    }
    if args.no_api && args.config_file.is_none() {
        bail!("--no-api needs --config-file: without the API the configuration comes from it");
    }
    bulkhead_api::paths::check_name(&id).map_err(|e| anyhow::anyhow!("--id {id}: {e}"))?;
    let level =
        args.level.as_deref().map(log::Level::parse).transpose().map_err(anyhow::Error::msg)?;
    log::configure(level, args.log_path.as_deref(), None).map_err(anyhow::Error::msg)?;
    let (events, event_rx) = mpsc::channel();
    let vm = Arc::new(Mutex::new(api::Microvm::new(id.clone(), launcher(events.clone()))));
    lock(&vm).config.boot_timer = args.boot_timer;
    start_periodic_metrics(&vm)?;
    install_signal_forwarding()?;
    if let Some(file) = args.config_file.clone() {
        let vm = vm.clone();
        std::thread::Builder::new().name("fc-config".into()).spawn(move || {
            if let Err(e) = boot_from_file(&vm, &file) {
                let _ = events.send(Event::Failed(e));
            }
        })?;
    }
    let socket = if args.no_api { None } else { Some(serve(&args.api_sock, vm.clone())?) };
    if socket.is_some() {
        // Firecracker's api_server.process_startup_time_us: from this function's start (the
        // command line parsed) to the API listening, and the CPU time the process used.
        let wall_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Not under the microVM's lock: a config file's InstanceStart holds it, waiting for
        // this thread to start the core.
        metrics::set_startup(metrics::Startup { wall_us, cpu_us: metrics::process_cpu_us() });
    }
    let status = loop {
        match event_rx.recv() {
            Ok(Event::Start(run_args, reply)) => {
                let (core, result) = start_core(&id, &run_args);
                let ok = result.is_ok();
                let _ = reply.send(result);
                match core {
                    Some((mut core, stderr)) if ok => {
                        // What starting took (the command line's parser, the API's filter, the
                        // configuration) goes back to the system while the VM runs.
                        // SAFETY: malloc_trim only releases free heap memory.
                        unsafe { libc::malloc_trim(0) };
                        let status = core.wait().context("wait for the VMM")?;
                        // The core's last words reach this process's stderr before it exits.
                        if let Some(stderr) = stderr {
                            stderr.drain();
                        }
                        break status;
                    }
                    // It ended at start: the client is told why and may fix and start again.
                    Some((mut core, _)) => drop(core.wait()),
                    None => {}
                }
            }
            Ok(Event::Failed(e)) => {
                if let Some(path) = socket {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
            Err(_) => bail!("the API stopped before the microVM started"),
        }
    };
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
        // A guest that powers off at once ends its core before InstanceStart's answer has
        // been written: it is written before this process ends.
        let deadline = Instant::now() + ANSWER_GRACE;
        while UNANSWERED.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // A last line, as Firecracker writes one at exit: what was counted since the previous one
    // (a SendCtrlAltDel that ended the VM, say) is not lost.
    lock(&vm).periodic_flush();
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

fn lock(vm: &Mutex<api::Microvm>) -> std::sync::MutexGuard<'_, api::Microvm> {
    vm.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes a line of metrics every [`METRICS_PERIOD`] from the microVM's start (as Firecracker
/// does), if `/metrics` is configured by then. `BULKHEAD_FC_METRICS_PERIOD_MS` shortens the
/// period for tests.
fn start_periodic_metrics(vm: &Arc<Mutex<api::Microvm>>) -> anyhow::Result<()> {
    let period = std::env::var("BULKHEAD_FC_METRICS_PERIOD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(METRICS_PERIOD);
    let (tx, started) = mpsc::channel();
    lock(vm).on_start = Some(tx);
    let vm = vm.clone();
    std::thread::Builder::new().name("fc-metrics".into()).spawn(move || {
        if started.recv().is_err() {
            return;
        }
        loop {
            std::thread::sleep(period);
            lock(&vm).periodic_flush();
        }
    })?;
    Ok(())
}

/// Applies a configuration file's sections in the order the API would take them, then
/// starts the microVM.
fn boot_from_file(vm: &Mutex<api::Microvm>, file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let c: model::ConfigFile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a Firecracker configuration file", file.display()))?;
    let fail = |what: &str, e: String| anyhow::anyhow!("{}: {what}: {e}", file.display());
    for (name, present) in [
        ("balloon", c.balloon.is_some()),
        ("mmds-config", c.mmds_config.is_some()),
        ("cpu-config", c.cpu_config.is_some()),
        ("pmem", c.pmem.is_some()),
        ("memory-hotplug", c.memory_hotplug.is_some()),
    ] {
        if present {
            return Err(fail(name, config::not_implemented(&format!("The section {name:?}"))));
        }
    }
    let mut vm = vm.lock().unwrap_or_else(|e| e.into_inner());
    let mut put = |path: &str, body: serde_json::Value| {
        let r = vm.handle("PUT", path, body.to_string().as_bytes());
        match r.fault_message() {
            Some(m) => Err(fail(path, m.to_string())),
            None => Ok(()),
        }
    };
    if let Some(l) = c.logger {
        put("/logger", serde_json::json!(l))?;
    }
    if let Some(b) = c.bulkhead {
        put("/bulkhead", serde_json::json!(b))?;
    }
    if let Some(m) = c.metrics {
        put("/metrics", serde_json::json!(m))?;
    }
    if let Some(m) = c.machine_config {
        put("/machine-config", serde_json::json!(m))?;
    }
    if let Some(b) = c.boot_source {
        put("/boot-source", serde_json::json!(b))?;
    }
    for d in c.drives {
        put(&format!("/drives/{}", d.drive_id), serde_json::json!(d))?;
    }
    for n in c.network_interfaces {
        put(&format!("/network-interfaces/{}", n.iface_id), serde_json::json!(n))?;
    }
    if let Some(v) = c.vsock {
        put("/vsock", serde_json::json!(v))?;
    }
    if let Some(e) = c.entropy {
        put("/entropy", serde_json::json!(e))?;
    }
    put("/actions", serde_json::json!({ "action_type": "InstanceStart" }))
}

/// Listens on `path` and serves each connection on a thread of its own.
fn serve(path: &Path, vm: Arc<Mutex<api::Microvm>>) -> anyhow::Result<PathBuf> {
    let listener = UnixListener::bind(path).with_context(|| {
        format!(
            "cannot listen on the API socket {} (if it is left over, remove it)",
            path.display()
        )
    })?;
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        let _ = SOCKET.set(c);
    }
    let (confined_tx, confined) = mpsc::channel();
    std::thread::Builder::new().name("fc-api".into()).spawn(move || {
        let result = confine::api_thread();
        let ok = result.is_ok();
        let _ = confined_tx.send(result);
        if !ok {
            return;
        }
        let open = Arc::new(AtomicUsize::new(0));
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                let busy = http::Response::bad_request(format!(
                    "Too many connections: at most {MAX_CONNECTIONS} at once; close one."
                ));
                let _ = std::io::Write::write_all(&mut stream, &http::encode(&busy, true));
                continue;
            }
            open.fetch_add(1, Ordering::SeqCst);
            let (vm, mine) = (vm.clone(), open.clone());
            let spawned = std::thread::Builder::new().name("fc-conn".into()).spawn(move || {
                serve_connection(stream, &vm);
                mine.fetch_sub(1, Ordering::SeqCst);
            });
            if spawned.is_err() {
                open.fetch_sub(1, Ordering::SeqCst);
            }
        }
    })?;
    match confined.recv() {
        Ok(Ok(c)) => log::log(
            log::Level::Debug,
            &format!("API threads confined: {} system calls, caps {}", c.allowed_syscalls, c.caps),
        ),
        Ok(Err(e)) => {
            let _ = std::fs::remove_file(path);
            bail!(e);
        }
        Err(_) => bail!("the API's thread ended at start"),
    }
    Ok(path.to_path_buf())
}

fn serve_connection(stream: UnixStream, vm: &Mutex<api::Microvm>) {
    let mut conn = http::Connection::new(stream);
    loop {
        let request = match conn.read_request() {
            Ok(r) => r,
            Err(http::ReadError::Refused(response)) => {
                let _ = conn.write_response(&response, true);
                return;
            }
            Err(_) => return,
        };
        UNANSWERED.fetch_add(1, Ordering::SeqCst);
        let response = {
            let mut vm = vm.lock().unwrap_or_else(|e| e.into_inner());
            vm.handle(&request.method, &request.path, &request.body)
        };
        let written = conn.write_response(&response, request.close);
        UNANSWERED.fetch_sub(1, Ordering::SeqCst);
        if written.is_err() || request.close {
            return;
        }
    }
}

/// `InstanceStart`'s launch: asks the main thread to start the core and waits for its answer.
fn launcher(events: Sender<Event>) -> api::Launch {
    Box::new(move |args| {
        let (reply, answer) = mpsc::channel();
        events
            .send(Event::Start(args.to_vec(), reply))
            .map_err(|_| "The VMM cannot be started: this process is ending.".to_string())?;
        answer.recv().map_err(|_| "The VMM could not be started.".to_string())?
    })
}

/// Starts `bulkhead run` (this same binary) on the calling thread, which must outlive the
/// core. `InstanceStart` is answered once the core's control socket is there (the VM is
/// built and its devices started; see [`core_up`]), or refused if the core ended first; the
/// core comes back in both cases when it was started, for its status.
fn start_core(name: &str, args: &[String]) -> (Option<StartedCore>, Result<(), String>) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return (None, Err(format!("Cannot find the bulkhead binary: {e}."))),
    };
    let control = match bulkhead_api::paths::socket_path(name) {
        Ok(path) => path,
        Err(e) => return (None, Err(e.to_string())),
    };
    let parent = std::process::id() as i32;
    let mut cmd = Command::new(exe);
    cmd.args(args).stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit), touching no lock or heap.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The front died before prctl took effect: die with it.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut core = match cmd.spawn() {
        Ok(core) => core,
        Err(e) => return (None, Err(format!("Cannot start the VMM: {e}."))),
    };
    CORE_PID.store(core.id() as i32, Ordering::SeqCst);
    let errors = core.stderr.take().map(relay_stderr);
    match core_up::wait(&control, &mut core) {
        core_up::Outcome::Ended(status) => {
            let why = errors.and_then(|e| e.last_line()).unwrap_or_else(|| status.to_string());
            let why = why.strip_prefix("bulkhead: ").unwrap_or(&why).to_string();
            let message = format!("The VMM could not start the microVM: {why}");
            (Some((core, None)), Err(message))
        }
        core_up::Outcome::Up | core_up::Outcome::Slow => (Some((core, errors)), Ok(())),
    }
}

/// The core's process and its relayed stderr (none when the relay could not start).
type StartedCore = (Child, Option<CoreStderr>);

/// The core's stderr as this process relays it (see [`relay_stderr`]).
struct CoreStderr {
    last: Arc<Mutex<Option<String>>>,
    ended: mpsc::Receiver<()>,
}

impl CoreStderr {
    /// The last line the core wrote, once its stderr has ended (or after 500 ms: a compartment
    /// the core started may hold the pipe open a little longer).
    fn last_line(self) -> Option<String> {
        let _ = self.ended.recv_timeout(Duration::from_millis(500));
        self.last.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Waits (at most a second) for the core's stderr to end, all of it relayed.
    fn drain(self) {
        let _ = self.ended.recv_timeout(Duration::from_secs(1));
    }
}

/// Copies the core's stderr to this process's line by line (the core's messages stay where
/// they were, for the orchestrator's log), keeping the last line for the answer to an
/// `InstanceStart` that failed: the core's error says what to fix (an image in use by another
/// process, a file that is not there).
fn relay_stderr(pipe: ChildStderr) -> CoreStderr {
    let last = Arc::new(Mutex::new(None));
    let (done, ended) = mpsc::channel();
    let kept = last.clone();
    let relay = move || {
        let mut out = std::io::stderr();
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = writeln!(out, "{line}");
            if !line.trim().is_empty() {
                *kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(line);
            }
        }
        let _ = done.send(());
    };
    if let Err(e) = std::thread::Builder::new().name("fc-core-stderr".into()).spawn(relay) {
        log::log(log::Level::Error, &format!("cannot relay the core's messages: {e}"));
    }
    CoreStderr { last, ended }
}

extern "C" fn forward(sig: libc::c_int) {
    let pid = CORE_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe; pid is the core this process started.
        unsafe { libc::kill(pid, sig) };
    } else {
        if let Some(socket) = SOCKET.get() {
            // SAFETY: unlink(2) is async-signal-safe; the path is a NUL-terminated string set
            // once before this handler could see it, and never freed.
            unsafe { libc::unlink(socket.as_ptr()) };
        }
        // SAFETY: _exit(2) is async-signal-safe; no VM runs yet, so there is nothing to stop.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// SIGTERM and SIGINT go to the core once it runs (it stops the VM cleanly and this process
/// exits with its status); before that they end this process.
fn install_signal_forwarding() -> anyhow::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `forward` is an async-signal-safe handler with the signature
        // signal(2) expects; nothing else in this process handles these signals.
        let old = unsafe {
            libc::signal(sig, forward as extern "C" fn(libc::c_int) as libc::sighandler_t)
        };
        if old == libc::SIG_ERR {
            bail!("cannot handle signal {sig}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}
