//! Starting a compartment: a new process in new namespaces, with only the file
//! descriptors it is given, that dies with the core.
//!
//! The parent (the core, multi-threaded) prepares every C string, fd list and
//! buffer, blocks its signals, and calls `clone3` with the namespace flags and
//! `CLONE_PIDFD` (`clone` when `clone3` is missing). The child runs only
//! async-signal-safe calls (see [`child`]) and waits on a pipe; meanwhile the
//! parent writes the user namespace's ID maps and moves the child into its
//! cgroup, so that nothing of the compartment runs outside its limits. Then
//! the parent sends the go byte and reads a second, close-on-exec pipe: end of
//! file means `execve` succeeded; eight bytes say which step failed and why.
//!
//! If the kernel refuses the namespaces asked for (no privilege, a limit
//! reached) and the policy is best effort, smaller sets are tried, largest
//! first; the namespaces left out are reported as not applied.
//!
//! The compartment learns which namespaces it got, and the mount namespace of
//! its parent, from the `BULKHEAD_SANDBOX` environment variable, which
//! `bulkhead_compartment::enter` reads.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that spawned the compartment
//! exits, not only the process: spawn from a thread that lives as long as the
//! compartment should (the core's launcher thread, which alone may start
//! processes: see `bulkhead_vmm::confine::launcher`).

mod child;
mod handle;

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub use child::{Stage, MAX_KEPT_FDS};
pub use handle::Compartment;

use crate::cgroup::{Cgroup, CgroupError};
use crate::policy::{Enforcement, IdMap, Policy};
use crate::report::{LayerName, LayerState, Namespace};

/// The environment variable that tells the compartment what `spawn` gave it.
pub const SPAWN_ENV: &str = "BULKHEAD_SANDBOX";

/// Errors of spawning.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The command cannot be turned into a process.
    #[error("the compartment command is unusable: {0}")]
    Command(String),
    /// A pipe, `/dev/null` or the parent's namespace could not be opened.
    #[error("could not {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// `clone3`/`clone` failed.
    #[error("could not start the compartment process")]
    Clone(#[source] io::Error),
    /// The kernel refused the namespaces and the policy requires them.
    #[error(
        "the kernel refused to create the namespaces {namespaces} and the policy requires \
         them: run the core as root, or give the policy a user namespace"
    )]
    Namespaces {
        /// The namespaces asked for.
        namespaces: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The child failed before `execve` (or in it).
    #[error("the compartment process could not {}", stage.doing())]
    Child {
        /// The step that failed.
        stage: Stage,
        /// What the kernel said.
        source: io::Error,
    },
    /// Writing the user namespace's ID maps failed.
    #[error("could not write {path} for the compartment's user namespace")]
    IdMap {
        /// The map file.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// The compartment's cgroup could not be created or joined.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// What to run as a compartment, and with which file descriptors.
#[derive(Debug)]
pub struct Command<'a> {
    program: PathBuf,
    /// argv[0], when it is not the program path.
    arg0: Option<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    fds: Vec<(BorrowedFd<'a>, RawFd)>,
    null_stdio: bool,
    cgroup_parent: Option<&'a Cgroup>,
    legacy_clone: bool,
}

impl<'a> Command<'a> {
    /// Runs `program` (argv[0] is the program path), with an empty environment.
    pub fn new(program: impl AsRef<Path>) -> Command<'a> {
        Command {
            program: program.as_ref().to_path_buf(),
            arg0: None,
            args: Vec::new(),
            env: Vec::new(),
            fds: Vec::new(),
            null_stdio: false,
            cgroup_parent: None,
            legacy_clone: false,
        }
    }

    /// Runs the calling program again: the very file this process runs (`/proc/self/exe`,
    /// opened by the child), even where its path now names another file — a binary
    /// reinstalled under a running core must not slip into its restarted compartments (an
    /// upgrade names its binary: [`Command::new`]).
    pub fn current_exe() -> io::Result<Command<'a>> {
        let mut command = Command::new("/proc/self/exe");
        command.arg0 = Some(std::env::current_exe()?.into_os_string());
        Ok(command)
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Command<'a> {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Command<'a> {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable (the environment starts empty).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Command<'a> {
        self.env.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Gives the compartment `fd` as descriptor number `target` (for example
    /// its vhost-user socket as 3). Descriptors 0, 1 and 2 not given are
    /// `/dev/null`, the core's stdout and the core's stderr; every other
    /// descriptor is closed.
    pub fn fd(mut self, fd: BorrowedFd<'a>, target: RawFd) -> Command<'a> {
        self.fds.retain(|&(_, t)| t != target);
        self.fds.push((fd, target));
        self
    }

    /// Makes 0, 1 and 2 `/dev/null` unless given with [`Command::fd`].
    pub fn null_stdio(mut self) -> Command<'a> {
        self.null_stdio = true;
        self
    }

    /// Creates the compartment's cgroup (when its policy has cgroup limits)
    /// below `parent` (the VM's) instead of below the core's own cgroups.
    pub fn cgroup_parent(mut self, parent: &'a Cgroup) -> Command<'a> {
        self.cgroup_parent = Some(parent);
        self
    }

    /// Uses `clone` instead of `clone3` (what happens by itself on kernels
    /// before 5.3 or under a seccomp filter that hides `clone3`).
    #[doc(hidden)]
    pub fn legacy_clone(mut self, yes: bool) -> Command<'a> {
        self.legacy_clone = yes;
        self
    }
}

/// Starts a compartment running `command` under `policy`'s namespaces and cgroup limits.
///
/// Returns once the compartment has executed its program (or failed to).
/// The compartment then applies the rest of its sandbox itself with
/// `bulkhead_compartment::enter`.
pub fn spawn(command: &Command<'_>, policy: &Policy) -> Result<Compartment, SpawnError> {
    let argv = c_strings(
        std::iter::once(command.arg0.as_deref().unwrap_or(command.program.as_os_str()))
            .chain(command.args.iter().map(OsString::as_os_str)),
    )?;
    let program = c_string(command.program.as_os_str())?;
    let fds = Fds::prepare(command)?;
    let (go_read, go_write) = pipe()?;
    let (status_read, status_write) = pipe()?;
    let mount_ns = std::fs::metadata("/proc/self/ns/mnt")
        .map_err(|source| SpawnError::Io { what: "read the core's mount namespace", source })?
        .ino();

    let cgroup = make_cgroup(command, policy)?;
    let wanted = policy.namespaces().wanted();
    let mut attempt = Attempt {
        program,
        argv,
        fds: &fds,
        env: &command.env,
        pipes: [&go_read, &go_write, &status_read, &status_write],
        mount_ns,
        legacy: command.legacy_clone,
        user: policy.namespaces().user,
    };
    let (pid, pidfd, created, refused) = clone_best(&mut attempt, &wanted, policy.enforcement())?;
    drop((go_read, status_write));
    let mut compartment = Compartment::new(pid, pidfd, cgroup);
    // Best effort may have dropped the user namespace: then there is no map to write.
    let user = policy.namespaces().user.filter(|_| created.contains(&Namespace::User));
    start_child(&mut compartment, user, go_write, status_read)?;

    let cgroup_state = compartment.cgroup().map(Cgroup::state);
    let report = compartment.report_mut();
    for ns in Namespace::ALL {
        let layer = LayerName::Namespace(ns);
        if created.contains(&ns) {
            report.applied(layer, "");
        } else if let Some(error) = refused.as_ref().filter(|_| wanted.contains(&ns)) {
            report.not_applied(
                layer,
                format!(
                    "the kernel refused it ({error}); run the core as root or use a user namespace"
                ),
            );
        } else {
            report.off(layer, "the policy shares the host's");
        }
    }
    report.set(
        LayerName::Cgroup,
        cgroup_state
            .unwrap_or(LayerState::Off { reason: "the policy sets no cgroup limit".into() }),
    );
    Ok(compartment)
}

/// The compartment's cgroup, when its policy has cgroup limits.
fn make_cgroup(command: &Command<'_>, policy: &Policy) -> Result<Option<Cgroup>, SpawnError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let limits = policy.cgroup_limits();
    if limits.is_empty() {
        return Ok(None);
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}-{}-{n}", policy.name(), std::process::id());
    let cgroup = match command.cgroup_parent {
        Some(parent) => parent.child(&name, limits)?,
        None => Cgroup::create(&name, limits)?,
    };
    if policy.enforcement() == Enforcement::Required {
        if let LayerState::NotApplied { reason } = cgroup.state() {
            return Err(CgroupError::Required(reason).into());
        }
    }
    Ok(Some(cgroup))
}

/// Writes the ID maps, joins the cgroup, sends the go byte and waits for `execve`.
fn start_child(
    compartment: &mut Compartment,
    user: Option<IdMap>,
    go_write: OwnedFd,
    status_read: OwnedFd,
) -> Result<(), SpawnError> {
    let pid = compartment.pid();
    if let Some(map) = user {
        write_id_maps(pid, map)?;
    }
    if let Some(cgroup) = compartment.cgroup() {
        cgroup.add_process(pid)?;
    }
    let go = [1u8];
    // SAFETY: writes one byte from a local buffer to an fd we own.
    if unsafe { libc::write(go_write.as_raw_fd(), go.as_ptr().cast(), 1) } != 1 {
        let source = io::Error::last_os_error();
        return Err(SpawnError::Io { what: "tell the compartment to start", source });
    }
    // `go_write` stays open until the child has executed: the child reads its hang-up as
    // the core's death (see `child::run`).
    let mut message = [0u8; 8];
    let mut filled = 0;
    while filled < message.len() {
        let rest = &mut message[filled..];
        // SAFETY: reads into the unfilled part of a local buffer.
        let n =
            unsafe { libc::read(status_read.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        match n {
            0 => break,
            n if n > 0 => filled += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => {
                let source = io::Error::last_os_error();
                return Err(SpawnError::Io { what: "read the compartment's start status", source });
            }
        }
    }
    drop(go_write);
    if filled == 0 {
        return Ok(());
    }
    let stage = u32::from_ne_bytes(message[..4].try_into().expect("4 bytes"));
    let errno = i32::from_ne_bytes(message[4..].try_into().expect("4 bytes"));
    let _ = compartment.wait();
    Err(SpawnError::Child {
        stage: Stage::from_raw(stage).unwrap_or(Stage::Exec),
        source: io::Error::from_raw_os_error(errno),
    })
}

fn write_id_maps(pid: i32, map: IdMap) -> Result<(), SpawnError> {
    let write = |file: &str, text: String| {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, text).map_err(|source| SpawnError::IdMap { path, source })
    };
    // Without CAP_SETGID, a gid_map needs setgroups denied first.
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        write("setgroups", "deny".into())?;
    }
    let also = match map.also {
        Some((inside, outside)) if root => format!("{inside} {outside} 1\n"),
        _ => String::new(),
    };
    write("uid_map", format!("{} {} 1\n{also}", map.inside_uid, map.outside_uid))?;
    write("gid_map", format!("{} {} 1\n{also}", map.inside_gid, map.outside_gid))
}

/// The kept fds, their targets and the ranges to close, computed before the clone.
struct Fds {
    moves: Vec<(RawFd, RawFd)>,
    gaps: Vec<(u32, u32)>,
    max_target: RawFd,
    _null: Option<OwnedFd>,
}

impl Fds {
    fn prepare(command: &Command<'_>) -> Result<Fds, SpawnError> {
        let mut moves: Vec<(RawFd, RawFd)> =
            command.fds.iter().map(|(fd, target)| (fd.as_raw_fd(), *target)).collect();
        if moves.iter().any(|&(_, target)| target < 0) {
            return Err(SpawnError::Command("a file descriptor target is negative".into()));
        }
        let missing_stdio: Vec<RawFd> =
            (0..3).filter(|t| !moves.iter().any(|&(_, target)| target == *t)).collect();
        let mut null = None;
        for target in missing_stdio {
            if target == 0 || command.null_stdio {
                let fd = null.get_or_insert(open_null()?).as_raw_fd();
                moves.push((fd, target));
            } else {
                moves.push((target, target));
            }
        }
        if moves.len() > MAX_KEPT_FDS {
            return Err(SpawnError::Command(format!(
                "{} file descriptors asked for; a compartment takes at most {MAX_KEPT_FDS}",
                moves.len()
            )));
        }
        let mut targets: Vec<RawFd> = moves.iter().map(|&(_, t)| t).collect();
        targets.sort_unstable();
        let mut gaps = Vec::new();
        let mut next = 0;
        for &target in &targets {
            if target > next {
                gaps.push((next as u32, (target - 1) as u32));
            }
            next = target + 1;
        }
        let max_target = *targets.last().expect("stdio is always there");
        Ok(Fds { moves, gaps, max_target, _null: null })
    }
}

fn open_null() -> Result<OwnedFd, SpawnError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|source| SpawnError::Io { what: "open /dev/null", source })?;
    Ok(file.into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        let source = io::Error::last_os_error();
        return Err(SpawnError::Io { what: "create a pipe", source });
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn c_string(s: &OsStr) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes())
        .map_err(|_| SpawnError::Command(format!("{} contains a NUL byte", s.to_string_lossy())))
}

fn c_strings<'s>(items: impl Iterator<Item = &'s OsStr>) -> Result<Vec<CString>, SpawnError> {
    items.map(c_string).collect()
}

/// One try at cloning; owns the strings the child's pointers refer to.
struct Attempt<'p> {
    program: CString,
    argv: Vec<CString>,
    fds: &'p Fds,
    env: &'p [(OsString, OsString)],
    pipes: [&'p OwnedFd; 4],
    mount_ns: u64,
    legacy: bool,
    user: Option<IdMap>,
}

mod clone;
use clone::clone_best;
