//! `bulkhead outside`: the compartment of a vhost-user backend Bulkhead did not write
//! (`bulkhead run --device TYPE,exec=PROGRAM ARGS…`), run inside Bulkhead's sandbox.
//!
//! The core starts this launcher as it starts its own devices — new namespaces, a user
//! namespace whose root is the unprivileged overflow user — with the start-up socket and the
//! paths the program may use. In that user namespace the host's root appears too, so that
//! while the launcher holds the namespace's capabilities it can reach paths below folders only
//! root may search (`/root/.cargo/bin/…`); it drops them all before the program runs. It:
//!
//! 1. builds the program's root: those paths at their own names, the system's folders of
//!    programs and libraries (read-only, the only ones programs may be run from), a private
//!    writable tmpfs holding the program's socket, a `/proc` of its own PID namespace; and
//!    enters every other layer but seccomp — no_new_privs, no capability, Landlock, rlimits;
//! 2. forks the program's process, which installs the profile's seccomp filter on itself and
//!    runs the program, its output on a pipe to the launcher;
//! 3. connects to the program's socket once it listens and hands the connection to the core
//!    (`ready`, the connection attached); if the program ends or never listens, says why
//!    (`failed`), with the program's last lines of output;
//! 4. installs a filter of its own and stays, the PID namespace's first process: it copies
//!    the program's output to its stderr line by line after the device's name; under
//!    `--seccomp log` it lets each call outside the profile go on and names it once; it ends
//!    when the program does, telling the core how (a last `failed` message).

use std::collections::{BTreeSet, VecDeque};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_devices::startup::Startup;
use bulkhead_sandbox::policy::{Access, PathRule};
use bulkhead_sandbox::seccomp::{self, CompiledFilter, DenyAction, Listener, SyscallRule};
use bulkhead_sandbox::{IdMap, Namespaces, Policy, Rlimits};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::Extras;

/// Set by SIGTERM: the core stops the device; the program gets a moment to end.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// How long the program may take to end after the core asked (SIGTERM) before it is killed.
const STOP_WAIT: Duration = Duration::from_millis(500);

/// The user and group the program runs as, inside its user namespace and on the host: the
/// overflow IDs (`nobody`, `nogroup`), which own nothing.
const PROGRAM_ID: u32 = 65534;

/// How long the program may take to listen on its socket.
const LISTEN_DEADLINE: Duration = Duration::from_secs(8);
/// Lines of the program's output kept for the reason it did not start.
const TAIL_LINES: usize = 12;
/// The longest line copied whole; a longer one is cut into pieces of this size.
const MAX_LINE: usize = 4096;

/// `--seccomp`: what the program's filter does to a call outside its profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Kill the program.
    On,
    /// Let it go on, naming it once (to derive a profile).
    Log,
    /// No filter.
    Off,
}

/// `bulkhead outside`: started by the core only.
#[derive(clap::Args, Debug)]
pub struct OutsideArgs {
    /// The start-up socket the core handed over.
    #[arg(long)]
    pub startup_fd: RawFd,
    /// The device's name (`fs0`), which prefixes the program's output.
    #[arg(long)]
    pub name: String,
    /// Where the program listens, inside its root; its folder is a private tmpfs.
    #[arg(long)]
    pub socket: PathBuf,
    /// A path the program may use: `r`, `x` (read and run) or `w`, and its absolute name:
    /// `x:/usr`.
    #[arg(long = "path", value_parser = parse_path)]
    pub paths: Vec<PathRule>,
    /// A symbolic link to recreate in the root: `/lib=usr/lib`.
    #[arg(long = "link", value_parser = parse_link)]
    pub links: Vec<(PathBuf, PathBuf)>,
    /// The system calls the program may make (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub syscalls: Vec<String>,
    /// What seccomp does to a call outside the list.
    #[arg(long, value_enum, default_value = "on")]
    pub seccomp: SeccompMode,
    /// The program keeps the host's network (else its network namespace is empty).
    #[arg(long)]
    pub network: bool,
    /// The folder to run the program in, when its root holds it.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// The program (an absolute path in its root) and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<std::ffi::OsString>,
}

fn parse_path(s: &str) -> Result<PathRule, String> {
    let (access, path) = match s.split_once(':') {
        Some(("r", path)) => (Access::ReadOnly, path),
        Some(("x", path)) => (Access::ReadExec, path),
        Some(("w", path)) => (Access::ReadWrite, path),
        _ => return Err(format!("{s}: give r, x or w, a colon and a path")),
    };
    if !Path::new(path).is_absolute() {
        return Err(format!("{s}: the path must be absolute"));
    }
    Ok(PathRule { path: path.into(), access })
}

fn parse_link(s: &str) -> Result<(PathBuf, PathBuf), String> {
    let (link, target) = s.split_once('=').ok_or(format!("{s}: give LINK=TARGET"))?;
    Ok((link.into(), target.into()))
}

/// Runs the launcher; its exit status is the program's (128 + the signal that killed it).
pub fn run(args: OutsideArgs) -> i32 {
    let startup = match Startup::from_inherited(args.startup_fd) {
        Ok(startup) => startup,
        Err(e) => {
            eprintln!("bulkhead outside: {e} (only the core starts this command)");
            return 2;
        }
    };
    match Launcher::start(&args) {
        Ok(launcher) => launcher.serve(&startup),
        Err(why) => {
            let _ = startup.failed(&why);
            1
        }
    }
}

/// The system calls the launcher itself makes once the program runs.
const LAUNCHER_SYSCALLS: &[&str] = &[
    "poll",
    "ppoll",
    "wait4",
    "waitid",
    "socket",
    "connect",
    "sendmsg",
    "ioctl",
    "kill",
    "clock_gettime",
    "clock_nanosleep",
    "nanosleep",
    "rt_sigaction",
    "fcntl",
];

struct Launcher {
    name: String,
    program: String,
    socket: PathBuf,
    pid: libc::pid_t,
    output: OwnedFd,
    listener: Option<Listener>,
    /// The profile's calls, for the log mode's report.
    profile: BTreeSet<String>,
    seen: BTreeSet<&'static str>,
    tail: VecDeque<String>,
    partial: Vec<u8>,
}

impl Launcher {
    /// Steps 1 and 2: the sandbox, and the program started in it.
    fn start(args: &OutsideArgs) -> Result<Launcher, String> {
        let path = Path::new(&args.command[0]);
        let program = path.file_name().unwrap_or(path.as_os_str()).to_string_lossy().into_owned();
        let rules = program_rules(args)?;
        let filter = match args.seccomp {
            SeccompMode::On => Some(seccomp::compile(&rules, DenyAction::KillProcess)),
            SeccompMode::Log => Some(seccomp::compile(&rules, DenyAction::Log)),
            SeccompMode::Off => None,
        }
        .transpose()
        .map_err(|e| e.to_string())?;

        let mut extras = Extras {
            proc: true,
            symlinks: args.links.clone(),
            run_as: Some(PROGRAM_ID),
            ..Extras::default()
        };
        let dir = args.socket.parent().filter(|d| d != &Path::new("/")).ok_or_else(|| {
            format!("the socket {} needs a folder of its own", args.socket.display())
        })?;
        extras.scratch.push(dir.to_path_buf());
        extras.folders.extend(args.cwd.iter().filter(|c| c.is_absolute()).cloned());
        let mut policy = Policy::builder(&format!("outside-{}", args.name))
            .namespaces(Namespaces {
                net: !args.network,
                user: Some(IdMap { also: Some((PROGRAM_ID, PROGRAM_ID)), ..IdMap::root_as(0, 0) }),
                ..Namespaces::default()
            })
            .without_runtime_syscalls()
            .rlimits(Rlimits { core: Some(0), ..Rlimits::none() })
            .landlock_tcp(!args.network);
        for rule in &args.paths {
            policy = match rule.access {
                Access::ReadOnly => policy.read_only(&rule.path),
                Access::ReadExec => policy.read_exec(&rule.path),
                Access::ReadWrite => policy.read_write(&rule.path),
            };
        }
        let policy = policy.build().map_err(|e| e.to_string())?;
        let landlock = [
            PathRule { path: dir.to_path_buf(), access: Access::ReadWrite },
            PathRule { path: "/proc".into(), access: Access::ReadOnly },
        ];
        crate::enter::enter_before_exec(&policy, extras, &landlock)
            .map_err(|e| bulkhead_sandbox::report::with_causes(&e))?;
        if let Some(cwd) = &args.cwd {
            // The root holds it (empty, unless something was handed below it).
            let _ = std::env::set_current_dir(cwd);
        }

        let argv = c_strings(args.command.iter().map(|a| a.as_bytes()))?;
        let mut env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()];
        if let Ok(log) = std::env::var("RUST_LOG") {
            env.push(format!("RUST_LOG={log}"));
        }
        let envp = c_strings(env.iter().map(|e| e.as_bytes()))?;
        let (out_read, out_write) = pipe().map_err(|e| format!("could not make a pipe: {e}"))?;
        let (notify_parent, notify_child) = match args.seccomp {
            SeccompMode::Log => {
                let (a, b) = UnixStream::pair().map_err(|e| format!("no socket pair: {e}"))?;
                (Some(a), Some(b))
            }
            _ => (None, None),
        };
        let child = Child { argv, envp, output: out_write.as_raw_fd(), notify: notify_child };
        // SAFETY: the launcher has one thread; the child only makes async-signal-safe calls
        // on memory prepared before the fork (`Child::exec`) and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("could not fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            child.exec(filter.as_ref());
        }
        drop(child);
        drop(out_write);
        let listener = match notify_parent {
            Some(socket) => Some(Listener::new(receive_fd(&socket).map_err(|e| {
                kill(pid);
                format!("the program's process sent no seccomp listener: {e}")
            })?)),
            None => None,
        };
        // The first process of a PID namespace gets only the signals it handles.
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
        // The program runs as the same user: it must not be able to take over its launcher.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        let mut own = seccomp::runtime();
        own.extend(seccomp::rules(LAUNCHER_SYSCALLS));
        let own = seccomp::compile(&own, DenyAction::KillProcess).map_err(|e| e.to_string())?;
        own.install_this_thread().map_err(|e| e.to_string())?;
        Ok(Launcher {
            name: args.name.clone(),
            program,
            socket: args.socket.clone(),
            pid,
            output: out_read,
            listener,
            profile: args.syscalls.iter().cloned().collect(),
            seen: BTreeSet::new(),
            tail: VecDeque::new(),
            partial: Vec::new(),
        })
    }

    /// Steps 3 and 4: hand the connection over, then copy output until the program ends.
    fn serve(mut self, startup: &Startup) -> i32 {
        let deadline = Instant::now() + LISTEN_DEADLINE;
        let mut ready = false;
        loop {
            if !ready {
                match UnixStream::connect(&self.socket) {
                    Ok(conn) => {
                        let sent = startup.ready([(self.socket.as_path(), true, conn.as_raw_fd())]);
                        if sent.is_err() {
                            // The core gave up on this start; it reaps us.
                            kill(self.pid);
                        }
                        ready = true;
                    }
                    Err(_) if Instant::now() >= deadline => {
                        kill(self.pid);
                        let why = format!(
                            "{} did not listen on {} within {} s: does its command line take \
                             its socket path from {{socket}}?{}",
                            self.program,
                            self.socket.display(),
                            LISTEN_DEADLINE.as_secs(),
                            self.last_words()
                        );
                        let _ = startup.failed(&why);
                        return 1;
                    }
                    Err(_) => {}
                }
            }
            self.pump(if ready { 200 } else { 10 });
            if STOP.swap(false, std::sync::atomic::Ordering::Relaxed) {
                self.stop();
            }
            if let Some(status) = self.reap() {
                self.pump(0);
                self.flush();
                let how = describe(status);
                if self.listener.is_some() {
                    self.summary();
                }
                let why = if ready {
                    format!("{} {how}{}", self.program, self.last_words())
                } else {
                    format!(
                        "{} {how} before it listened on {}{}",
                        self.program,
                        self.socket.display(),
                        self.last_words()
                    )
                };
                let _ = startup.failed(&why);
                return match (libc::WIFEXITED(status), libc::WIFSIGNALED(status)) {
                    (true, _) => libc::WEXITSTATUS(status),
                    (_, true) => 128 + libc::WTERMSIG(status),
                    _ => 1,
                };
            }
        }
    }

    /// Asks the program to end (SIGTERM), and kills it if it has not within [`STOP_WAIT`];
    /// the loop then reaps it and says how it ended.
    fn stop(&mut self) {
        // SAFETY: kill with integer arguments.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            self.pump(10);
            // SAFETY: all-zero is a valid siginfo_t.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid with a valid out-pointer; WNOWAIT leaves the child for `reap`.
            let done = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            } == 0
                // SAFETY: waitid filled `info`; si_pid is 0 when nothing ended.
                && unsafe { info.si_pid() } != 0;
            if done {
                return;
            }
        }
        kill(self.pid);
    }

    /// Copies what the program wrote and answers waiting calls, for at most `ms`.
    fn pump(&mut self, ms: i32) {
        let mut fds =
            vec![libc::pollfd { fd: self.output.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        if let Some(listener) = &self.listener {
            fds.push(libc::pollfd {
                fd: listener.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            return;
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            let mut buf = [0u8; 8192];
            // SAFETY: reads into a buffer of that length.
            let got = unsafe { libc::read(fds[0].fd, buf.as_mut_ptr().cast(), buf.len()) };
            if got > 0 {
                self.output(&buf[..got as usize]);
            }
        }
        if fds.len() > 1 && fds[1].revents & libc::POLLIN != 0 {
            let listener = self.listener.as_ref().expect("polled");
            if let Ok(Some(nr)) = listener.take() {
                let name = seccomp::syscall_name(nr).unwrap_or("unknown");
                if self.seen.insert(name) {
                    eprintln!(
                        "{}: seccomp log: {} called {name} (#{nr}), outside its profile",
                        self.name, self.program
                    );
                }
            }
        }
    }

    fn output(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self
            .partial
            .iter()
            .position(|&b| b == b'\n')
            .or_else(|| (self.partial.len() >= MAX_LINE).then_some(MAX_LINE))
        {
            let line: Vec<u8> = self.partial.drain(..=end.min(self.partial.len() - 1)).collect();
            self.line(&line);
        }
    }

    fn flush(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line).trim_end().to_string();
        let _ = writeln!(std::io::stderr(), "{}: {text}", self.name);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text);
    }

    fn last_words(&self) -> String {
        if self.tail.is_empty() {
            return " (it wrote nothing)".into();
        }
        let lines: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        format!("; its last output: {}", lines.join(" | "))
    }

    /// The program's wait status, once it ended; reaps any orphan too (this is the PID
    /// namespace's first process).
    fn reap(&self) -> Option<i32> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return None;
            }
            if pid == self.pid {
                return Some(status);
            }
        }
    }

    fn summary(&self) {
        let mut all: BTreeSet<&str> = self.profile.iter().map(String::as_str).collect();
        all.extend(self.seen.iter().copied());
        all.remove("");
        let list: Vec<String> = all.iter().map(|n| format!("\"{n}\"")).collect();
        eprintln!(
            "{}: seccomp log: {} made {} call{} outside its profile; a profile that allows all it \
             did: \"syscalls\": [{}]",
            self.name,
            self.program,
            self.seen.len(),
            if self.seen.len() == 1 { "" } else { "s" },
            list.join(", ")
        );
    }
}

/// The program's filter: its profile, and what its process needs to become the program.
fn program_rules(args: &OutsideArgs) -> Result<Vec<SyscallRule>, String> {
    let mut rules = Vec::new();
    for name in args.syscalls.iter().filter(|n| !n.is_empty()) {
        if seccomp::syscall_number(name).is_none() {
            return Err(format!("the profile names `{name}`, which is no x86-64 system call"));
        }
        rules.push(SyscallRule::allow(name));
    }
    rules.extend(seccomp::rules(&["execve", "exit_group"]));
    if args.seccomp == SeccompMode::Log {
        // The listener travels on this socket, the one call made between the filter and execve.
        rules.push(SyscallRule::allow("sendmsg").arg_eq(0, CHILD_NOTIFY_FD as u64));
    }
    Ok(rules)
}

/// Where the program's process keeps the socket its seccomp listener travels on.
const CHILD_NOTIFY_FD: RawFd = 3;

/// What the program's process needs after the fork, prepared before it.
struct Child {
    argv: Vec<CString>,
    envp: Vec<CString>,
    output: RawFd,
    notify: Option<UnixStream>,
}

impl Child {
    /// In the forked process: output to the pipe, the filter on, the program run.
    fn exec(&self, filter: Option<&CompiledFilter>) -> ! {
        let argv: Vec<*const libc::c_char> =
            self.argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let envp: Vec<*const libc::c_char> =
            self.envp.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        // SAFETY: dup2/fcntl on descriptors this process holds.
        unsafe {
            libc::dup2(self.output, 1);
            libc::dup2(self.output, 2);
            if let Some(notify) = &self.notify {
                libc::dup2(notify.as_raw_fd(), CHILD_NOTIFY_FD);
                libc::fcntl(CHILD_NOTIFY_FD, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        match (filter, &self.notify) {
            (Some(filter), Some(_)) => match filter.install_with_listener() {
                Ok(listener) => {
                    send_fd(CHILD_NOTIFY_FD, listener.as_raw_fd());
                    // Closed by execve: a close now would wait on the listener's answer.
                    std::mem::forget(listener);
                }
                Err(_) => die(b"bulkhead outside: could not install the seccomp log filter\n"),
            },
            (Some(filter), None) => {
                if filter.install_this_thread().is_err() {
                    die(b"bulkhead outside: could not install the seccomp filter\n");
                }
            }
            (None, _) => {}
        }
        // SAFETY: argv and envp are null-terminated arrays of valid C strings.
        unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) };
        die(b"bulkhead outside: could not run the program (execve failed)\n")
    }
}

fn die(message: &[u8]) -> ! {
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(127)
    }
}

/// Sends `fd` on the socket `socket` (SCM_RIGHTS) with one byte, from stack memory only.
fn send_fd(socket: RawFd, fd: RawFd) {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // Room for one descriptor's control message, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: all-zero is a valid msghdr; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    // SAFETY: the control buffer holds one cmsghdr and its descriptor.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        libc::sendmsg(socket, &msg, 0);
    }
}

/// Receives one descriptor sent with [`send_fd`] (which stays hand-written: it runs between
/// fork and exec, where nothing may allocate).
fn receive_fd(socket: &UnixStream) -> std::io::Result<OwnedFd> {
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut byte = [0u8; 1];
    let (_, file) =
        socket.recv_with_fd(&mut byte).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let fd = OwnedFd::from(file.ok_or_else(|| std::io::Error::other("the process ended first"))?);
    // SAFETY: F_SETFD on a descriptor this function owns.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn c_strings<'a>(items: impl Iterator<Item = &'a [u8]>) -> Result<Vec<CString>, String> {
    items.map(|b| CString::new(b).map_err(|_| "an argument holds a NUL byte".to_string())).collect()
}

fn kill(pid: libc::pid_t) {
    // SAFETY: kill with integer arguments.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// How a process ended, from its wait status.
fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        match signal {
            libc::SIGSYS => format!(
                "was killed by signal {signal} (SIGSYS: a system call its seccomp profile does \
                 not allow; run it with seccomp=log to find which)"
            ),
            _ => format!("was killed by signal {signal}"),
        }
    } else {
        format!("ended (wait status {status:#x})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_links_parse() {
        let rule = parse_path("x:/usr").unwrap();
        assert_eq!((rule.path, rule.access), ("/usr".into(), Access::ReadExec));
        assert_eq!(parse_path("w:/srv/a:b").unwrap().path, PathBuf::from("/srv/a:b"));
        for bad in ["q:/x", "r:relative", "r"] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_link("/lib=usr/lib").unwrap(), ("/lib".into(), "usr/lib".into()));
        assert!(parse_link("/lib").is_err());
    }

    #[test]
    fn wait_statuses_are_described() {
        assert_eq!(describe(3 << 8), "exited with status 3");
        assert!(describe(libc::SIGSYS).contains("seccomp=log"));
        assert_eq!(describe(9), "was killed by signal 9");
    }
}
