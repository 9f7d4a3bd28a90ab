//! `bulkhead device blk|net|rng|console`: one device backend as a process (a compartment).
//!
//! The binary mounts [`DeviceCommand`] as a subcommand, and `bulkhead-compartment` runs it with
//! [`run_with_sandbox`] (the stand-alone `bulkhead-device` with [`run`]). The process opens
//! what the device serves, enters its sandbox (the hook below), then serves vhost-user either on
//! an inherited connected socket (`--fd N`: how the core starts a compartment, one end of a
//! socket pair) or on a listening socket path (`--socket PATH`: by hand, or for QEMU; one
//! frontend at a time, the next accepted after a disconnect). SIGTERM and SIGINT stop it cleanly.
//!
//! Exit codes: 0 the frontend disconnected or the process was stopped; 1 the device could not be
//! opened or served (the message says why); 3 the frontend broke the protocol (`--fd` only: a
//! listening backend drops that frontend and accepts the next).
//!
//! A panic on any thread — the message loop or a queue worker — ends the process: the panic
//! hook prints it and aborts (SIGABRT), so that a compartment never runs on with a queue
//! silently stopped, and the supervisor sees it die and starts another. (In monolithic mode the
//! same code runs on threads of the core, whose own panic hook ends the whole VM, naming the
//! device, on a panic in any of the device's threads, message loop or queue worker: backends on
//! threads are not restarted.)

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::blk::BlkConfig;
use crate::console::{ConsoleConfig, ConsoleHost, HostEnds};
use crate::limit::{DeviceLimits, Keys, LimitsView};
use crate::net::config::{Mac, TapSource};
use crate::net::NetConfig;
use crate::rng::RngConfig;
use crate::startup::{Startup, StartupError};
use crate::{Device, DeviceConfig, SandboxSpec, ServeEnd};
use bulkhead_disk::HandedFiles;

/// Exit code when the frontend broke the protocol.
pub const EXIT_PROTOCOL_ERROR: i32 = 3;

/// The device backends, as processes.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// virtio-blk over a raw, qcow2 or VMDK image.
    Blk {
        /// Where the frontend is.
        #[command(flatten)]
        conn: ConnectionArgs,
        /// The image: `PATH[,readonly][,format=raw|qcow2|vmdk][,queues=N][,serial=ID]`, and rate
        /// limits `[,bw=SIZE@MS[+BURST]][,ops=N@MS[+BURST]]` (SIZE with K, M, G: binary).
        #[arg(long, value_name = "PATH[,OPTIONS]")]
        disk: BlkConfig,
    },
    /// virtio-net over a tap device.
    Net {
        /// Where the frontend is.
        #[command(flatten)]
        conn: ConnectionArgs,
        /// Tap interface to attach to (or create, with CAP_NET_ADMIN).
        #[arg(
            long,
            value_name = "NAME",
            required_unless_present = "tap_fd",
            conflicts_with = "tap_fd"
        )]
        tap: Option<String>,
        /// An inherited, open tap file descriptor.
        #[arg(long, value_name = "N")]
        tap_fd: Option<RawFd>,
        /// The guest's MAC address (random 52:54:00:xx:xx:xx by default).
        #[arg(long)]
        mac: Option<Mac>,
        /// Rate limits: `rx-bw=SIZE@MS[+BURST],rx-ops=N@MS[+BURST],tx-bw=…,tx-ops=…` (rx: what
        /// the guest receives).
        #[arg(long, value_name = "LIMITS", value_parser = net_limits)]
        limits: Option<DeviceLimits>,
    },
    /// virtio-rng from the host's getrandom(2).
    Rng {
        /// Where the frontend is.
        #[command(flatten)]
        conn: ConnectionArgs,
        /// Rate limits: `bw=SIZE@MS[+BURST],ops=N@MS[+BURST]` (bytes of entropy, requests).
        #[arg(long, value_name = "LIMITS")]
        limits: Option<RngConfig>,
    },
    /// virtio-console (one port) on a unix socket, a pty, or standard input and output.
    Console {
        /// Where the frontend is.
        #[command(flatten)]
        conn: ConnectionArgs,
        /// The host side: socket=PATH (one client at a time), pty (its name is printed) or
        /// stdio; a core gives its compartment listen-fd=N, pty-fd=N or stdio-fds=IN:OUT.
        #[arg(long, value_name = "socket=PATH|pty|stdio")]
        console: ConsoleHost,
    },
}

/// Where the frontend is: a socket path to listen on, or an inherited connected socket.
#[derive(Clone, Debug, Args)]
pub struct ConnectionArgs {
    /// Listen on this unix socket path; serve one frontend at a time.
    #[arg(long, value_name = "PATH", required_unless_present = "fd", conflicts_with = "fd")]
    pub socket: Option<PathBuf>,
    /// Serve the connected unix socket inherited as this file descriptor, then exit.
    #[arg(long, value_name = "N")]
    pub fd: Option<RawFd>,
    /// The core's start-up socket, inherited as this descriptor: files handed over from a
    /// predecessor come in on it, and the word that the device serves, or why it cannot, goes
    /// out (see `bulkhead_devices::startup`).
    #[arg(long, value_name = "N", requires = "fd")]
    pub startup_fd: Option<RawFd>,
    /// The core's limits page for this device, inherited as this descriptor (a sealed memfd,
    /// mapped read-only): the rate limits now in force, which the core may change at any time
    /// (see `bulkhead_devices::limit::page`). Without it, the limits given at start hold.
    #[arg(long, value_name = "N")]
    pub limits_fd: Option<RawFd>,
}

fn net_limits(s: &str) -> Result<DeviceLimits, String> {
    DeviceLimits::parse(Keys::NET, s).map_err(|e| e.to_string())
}

impl DeviceCommand {
    /// Where the frontend is (and whether a core waits on a start-up socket).
    pub fn connection(&self) -> &ConnectionArgs {
        match self {
            DeviceCommand::Blk { conn, .. }
            | DeviceCommand::Net { conn, .. }
            | DeviceCommand::Rng { conn, .. }
            | DeviceCommand::Console { conn, .. } => conn,
        }
    }

    /// The device configuration and the connection arguments.
    pub fn split(self) -> (DeviceConfig, ConnectionArgs) {
        match self {
            DeviceCommand::Blk { conn, disk } => (DeviceConfig::Blk(disk), conn),
            DeviceCommand::Net { conn, tap, tap_fd, mac, limits } => {
                let tap = match (tap, tap_fd) {
                    (Some(name), _) => TapSource::Name(name),
                    (None, fd) => TapSource::Fd(fd.unwrap_or(-1)),
                };
                let limits = limits.unwrap_or_default();
                (DeviceConfig::Net(NetConfig { tap, mac, limits }), conn)
            }
            DeviceCommand::Rng { conn, limits } => {
                (DeviceConfig::Rng(limits.unwrap_or_default()), conn)
            }
            DeviceCommand::Console { conn, console } => {
                (DeviceConfig::Console(ConsoleConfig { host: console }), conn)
            }
        }
    }
}

/// Runs one device backend until it is stopped or (with `--fd`) its frontend goes away, with no
/// sandbox (see [`run_with_sandbox`]).
pub fn run(cmd: DeviceCommand) -> anyhow::Result<i32> {
    run_with_sandbox(cmd, no_sandbox)
}

/// [`run`], entering the sandbox with `enter` (`bulkhead-compartment` passes its own). `enter`
/// gets the device's needs and the connection's fd (the listening socket, or the inherited
/// connected one); it runs once, after the device's files are open and the socket is bound,
/// before any message is read.
pub fn run_with_sandbox(
    cmd: DeviceCommand,
    enter: impl FnOnce(&SandboxSpec, RawFd) -> anyhow::Result<()>,
) -> anyhow::Result<i32> {
    abort_on_panic();
    init_logging();
    crate::fault::init();
    name_process();
    let (cfg, conn) = cmd.split();
    let cfg = open_console_by_hand(cfg)?;
    let startup = match conn.startup_fd {
        Some(fd) => Some(Startup::from_inherited(fd).context("cannot use the start-up socket")?),
        None => None,
    };
    let started = start(&cfg, &conn, startup.as_ref(), enter);
    if let (Err(e), Some(startup)) = (&started, &startup) {
        // The core shows this as the reason the device did not start.
        let _ = startup.failed(&format!("{e:#}"));
    }
    let (device, listener, conn_fd, stop) = started?;
    if let Some(startup) = startup {
        // A device whose files change while it serves tells the core (the console's client).
        device.tell_core(startup);
    }
    match listener {
        Some(listener) => serve_listener(device, &listener, &stop, conn.socket.as_deref()),
        None => serve_fd(device, conn_fd, stop),
    }
}

/// What [`start`] readies: the device, the listening socket (or none), the connection's fd, and
/// the stop eventfd.
type Started = (Arc<dyn Device>, Option<UnixListener>, RawFd, Arc<EventFd>);

/// Opens the device (with the files a predecessor handed over on `startup`), binds or checks the
/// socket, enters the sandbox and says so on `startup`.
fn start(
    cfg: &DeviceConfig,
    conn: &ConnectionArgs,
    startup: Option<&Startup>,
    enter: impl FnOnce(&SandboxSpec, RawFd) -> anyhow::Result<()>,
) -> anyhow::Result<Started> {
    let kind = cfg.kind();
    let mut handed = HandedFiles::default();
    if let Some(startup) = startup {
        let files = startup.receive_files(STARTUP_WAIT).context("no files from the core")?;
        for f in files {
            handed.insert(f.path, f.writable, f.file);
        }
        // Its files go to the core, which keeps them for the next compartment: their locks must
        // outlive this process.
        handed.hand_on();
        // The compartment runs as an unprivileged user: the core opens its other files.
        let broker = startup.try_clone().context("cannot use the start-up socket")?;
        handed.open_others_with(Box::new(move |path, writable| {
            broker.request_open(path, writable, STARTUP_WAIT).map_err(|e| match e {
                StartupError::Refused(why) => {
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, why)
                }
                e => std::io::Error::other(e),
            })
        }));
    }
    let limits = match conn.limits_fd {
        // SAFETY: the descriptor was inherited for this process to own.
        Some(fd) => Some(
            LimitsView::map(unsafe { std::fs::File::from_raw_fd(fd) })
                .context("cannot map the limits page (--limits-fd)")?,
        ),
        None => None,
    };
    let device = crate::open_limited(cfg, handed, limits)
        .with_context(|| format!("cannot open the {kind} device"))?;

    let listener = match &conn.socket {
        Some(path) => Some(bind(path)?),
        None => None,
    };
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK).context("cannot create an eventfd")?);
    install_stop_signals(&stop)?;
    let conn_fd = match (&listener, conn.fd) {
        (Some(l), _) => l.as_raw_fd(),
        (None, Some(fd)) => {
            check_socket(fd)?;
            fd
        }
        (None, None) => bail!("give --socket PATH or --fd N"),
    };

    // ==== SANDBOX HOOK ==========================================================================
    // Everything the device needs is open now (image files, tap, the socket). `enter` applies the
    // compartment's sandbox: keep `device.sandbox().keep_fds` plus `conn_fd` (and the stop
    // eventfd), install the seccomp allow-list. Nothing after this line opens a file.
    enter(&device.sandbox(), conn_fd).context("cannot enter the sandbox")?;
    // ============================================================================================

    if let Some(startup) = startup {
        let files = device.handover();
        startup
            .ready(files.iter().map(|f| (f.path.as_path(), f.writable, f.fd)))
            .context("cannot tell the core it serves")?;
    }
    Ok((device, listener, conn_fd, stop))
}

/// A console run by hand opens its host side here, before the sandbox, and says where it is
/// (a pty's name is new each time); the descriptors a core gives are adopted by the device.
fn open_console_by_hand(cfg: DeviceConfig) -> anyhow::Result<DeviceConfig> {
    let DeviceConfig::Console(ConsoleConfig { host }) = &cfg else { return Ok(cfg) };
    if matches!(host, ConsoleHost::Open(_) | ConsoleHost::Inherited(_)) {
        return Ok(cfg);
    }
    let ends = HostEnds::open(host).context("cannot open the console's host side")?;
    eprintln!("bulkhead device console: the console is on {}", ends.describe());
    Ok(DeviceConfig::Console(ConsoleConfig { host: ConsoleHost::Open(Arc::new(ends)) }))
}

/// How long a compartment waits for the core's first start-up message.
const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Names the process `bulkhead` (`comm`, as `ps` shows it): a core starts its compartments
/// from `/proc/self/exe`, which would otherwise name them `exe`.
fn name_process() {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"bulkhead".as_ptr(), 0, 0, 0) };
}

/// The exit status of a compartment that panicked while it was the first process of its PID
/// namespace (128 + SIGABRT, as a shell reports an abort).
pub const PANIC_EXIT_STATUS: i32 = 134;

/// Makes any panic end the process: print it, then abort. A worker thread's panic would
/// otherwise only stop its queue (the worker catches it) and leave a compartment that looks
/// alive and serves nothing.
///
/// A sandboxed compartment is PID 1 of its own PID namespace, and the kernel does not deliver
/// to it the signals it sends itself: `abort(3)`'s SIGABRT would be ignored and glibc would
/// end it with a SIGSEGV, which reads like a crash of another kind. There it exits with
/// [`PANIC_EXIT_STATUS`] instead, which the core reports as a panic.
fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        eprintln!("bulkhead device: thread {name} {info}");
        eprintln!("bulkhead device: aborting: a device process does not outlive a panic");
        if std::process::id() == 1 {
            // SAFETY: _exit ends the process at once, running no handler and touching no
            // state another thread might hold: what abort would do, with a status.
            unsafe { libc::_exit(PANIC_EXIT_STATUS) };
        }
        std::process::abort();
    }));
}

/// The hook of [`run`]: no sandbox.
fn no_sandbox(spec: &SandboxSpec, conn_fd: RawFd) -> anyhow::Result<()> {
    log::debug!(
        "no sandbox: would keep fds {:?} and {conn_fd}, {} allowed system calls",
        spec.keep_fds,
        spec.seccomp.len()
    );
    Ok(())
}

fn serve_fd(device: Arc<dyn Device>, fd: RawFd, stop: Arc<EventFd>) -> anyhow::Result<i32> {
    // SAFETY: the fd was inherited for us to own, and check_socket saw a stream socket.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    match crate::serve(device, stream, stop)? {
        ServeEnd::Disconnected | ServeEnd::Stopped => Ok(0),
        ServeEnd::ProtocolError(why) => {
            eprintln!("bulkhead device: the frontend broke the protocol: {why}");
            Ok(EXIT_PROTOCOL_ERROR)
        }
    }
}

fn serve_listener(
    device: Arc<dyn Device>,
    listener: &UnixListener,
    stop: &Arc<EventFd>,
    path: Option<&Path>,
) -> anyhow::Result<i32> {
    let result = accept_loop(device, listener, stop);
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn accept_loop(
    device: Arc<dyn Device>,
    listener: &UnixListener,
    stop: &Arc<EventFd>,
) -> anyhow::Result<i32> {
    /// The accept loop's tokens.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Token {
        /// A frontend connects.
        Listener = 1,
        /// SIGTERM or SIGINT.
        Stop = 2,
    }
    let epoll = Epoll::new().context("epoll_create failed")?;
    let add = |fd, token: Token| {
        epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token as u64))
    };
    add(listener.as_raw_fd(), Token::Listener).context("epoll_ctl failed")?;
    add(stop.as_raw_fd(), Token::Stop).context("epoll_ctl failed")?;
    let mut events = [EpollEvent::default(); 2];
    loop {
        match epoll.wait(-1, &mut events) {
            Ok(n) if events[..n].iter().any(|e| e.data() == Token::Stop as u64) => return Ok(0),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("epoll_wait failed"),
        }
        let (stream, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e).context("accept failed"),
        };
        stream.set_nonblocking(false).context("cannot make the connection blocking")?;
        match crate::serve(device.clone(), stream, stop.clone())? {
            ServeEnd::Stopped => return Ok(0),
            ServeEnd::Disconnected => log::info!("frontend disconnected; waiting for the next"),
            ServeEnd::ProtocolError(why) => log::warn!("dropped a frontend: {why}"),
        }
    }
}

/// Binds the listening socket, replacing a stale socket file (never any other kind of file).
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket; choose another --socket path", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    listener.set_nonblocking(true).context("cannot make the socket non-blocking")?;
    Ok(listener)
}

fn check_socket(fd: RawFd) -> anyhow::Result<()> {
    if crate::startup::socket_type(fd) != Some(libc::SOCK_STREAM) {
        bail!("--fd {fd} is not a connected stream socket");
    }
    Ok(())
}

static STOP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop_signal(_: libc::c_int) {
    let fd = STOP_FD.load(Ordering::SeqCst);
    let one: u64 = 1;
    // SAFETY: write(2) is async-signal-safe; `one` is 8 valid bytes.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

fn install_stop_signals(stop: &Arc<EventFd>) -> anyhow::Result<()> {
    // The eventfd lives as long as the process: leak one clone for the handler.
    let fd = stop.try_clone().context("cannot duplicate an eventfd")?;
    STOP_FD.store(fd.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(fd);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; the handler only calls write(2).
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_stop_signal as *const () as usize;
            act.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc < 0 {
            bail!("cannot install a signal handler: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A minimal stderr logger; `BULKHEAD_LOG=error|warn|info|debug` (default `warn`).
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("bulkhead device [{}] {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

fn init_logging() {
    let level = match std::env::var("BULKHEAD_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("info") => log::LevelFilter::Info,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: DeviceCommand,
    }

    fn parse(args: &[&str]) -> Result<DeviceCommand, clap::Error> {
        Cli::try_parse_from([&["bulkhead-device"], args].concat()).map(|c| c.cmd)
    }

    #[test]
    fn parses_commands() {
        let cmd = parse(&["blk", "--socket", "/s", "--disk", "d.qcow2,readonly,format=qcow2"]);
        let (cfg, conn) = cmd.unwrap().split();
        let DeviceConfig::Blk(b) = cfg else { panic!() };
        assert!(b.read_only);
        assert_eq!(conn.socket.as_deref(), Some(Path::new("/s")));
        let (cfg, conn) =
            parse(&["net", "--fd", "3", "--tap-fd", "4", "--mac", "52:54:00:00:00:01"])
                .unwrap()
                .split();
        assert_eq!(conn.fd, Some(3));
        let DeviceConfig::Net(n) = cfg else { panic!() };
        assert_eq!(n.tap, TapSource::Fd(4));
        assert!(parse(&["rng"]).is_err(), "needs --socket or --fd");
        assert!(parse(&["rng", "--socket", "/s", "--fd", "3"]).is_err());
        assert!(parse(&["net", "--socket", "/s"]).is_err(), "needs a tap");
        assert!(parse(&["blk", "--socket", "/s", "--disk", "d,format=vhd"]).is_err());
        let (cfg, _) =
            parse(&["console", "--fd", "3", "--console", "listen-fd=4"]).unwrap().split();
        let DeviceConfig::Console(c) = cfg else { panic!() };
        assert_eq!(c.host.to_string(), "listen-fd=4");
        assert!(parse(&["console", "--fd", "3"]).is_err(), "needs --console");
        assert!(parse(&["console", "--fd", "3", "--console", "tcp=1"]).is_err());
    }
}
