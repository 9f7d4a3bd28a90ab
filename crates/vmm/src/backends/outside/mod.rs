//! Outside backends as compartments: a vhost-user backend program Bulkhead did not write
//! (`--device TYPE,exec=PROGRAM ARGS…`), started, sandboxed and restarted by the core like
//! its own devices.
//!
//! The core checks every path the program may use once, at start, and starts `bulkhead
//! outside` (the compartment's side: `bulkhead_compartment::outside`) in new namespaces with
//! them. That launcher builds the program's root from them, runs the program under
//! its profile's seccomp filter, connects to its socket — a path in the program's private
//! root, `{socket}` in its arguments — and hands the connection to the core over the
//! start-up socket. When the program ends, the launcher ends with it and says how; the
//! supervisor restarts it as it restarts any compartment.

mod profile;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_core::virtio::{Backend, DeviceKind, DeviceShape, Launched};
use bulkhead_devices::startup::{Report, Startup, StartupError};
use bulkhead_sandbox::{spawn, Command, Compartment, IdMap, Namespaces, Policy};

pub use profile::{built_in_names, Profile};

use super::policy::COMPARTMENT_UID;
use crate::partition::Partition;

/// The folder of the program's socket inside its root: a private tmpfs.
pub const SOCKET_DIR: &str = "/run/vhost-user";
/// What `{socket}` in the program's arguments becomes.
pub const SOCKET_PLACEHOLDER: &str = "{socket}";
/// The start-up socket's descriptor number in the launcher.
const STARTUP_FD: i32 = 3;
/// How long the program may take to listen (the launcher's own limit is shorter).
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long a launcher whose program ended may take to say so and exit.
const EXIT_WAIT: Duration = Duration::from_secs(1);
/// Folders every program may read and run programs from, where they exist.
const SYSTEM_EXEC: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/// Files every program may read: libraries' configuration, time zones, entropy.
const SYSTEM_READ: &[&str] = &["/etc", "/dev/urandom", "/dev/random", "/dev/zero"];
/// Files every program may write.
const SYSTEM_WRITE: &[&str] = &["/dev/null"];

/// What seccomp does to a call outside the program's profile (`seccomp=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seccomp {
    On,
    Log,
    Off,
}

impl Seccomp {
    fn name(self) -> &'static str {
        match self {
            Seccomp::On => "on",
            Seccomp::Log => "log",
            Seccomp::Off => "off",
        }
    }
}

/// An outside backend as the user described it (`--device`).
#[derive(Clone, Debug)]
pub struct OutsideSpec {
    pub name: String,
    pub shape: DeviceShape,
    /// The program, absolute.
    pub program: PathBuf,
    /// Its arguments, `{socket}` still in them.
    pub args: Vec<String>,
    /// Paths it may read (`ro=`) and write (`rw=`), absolute.
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub profile: Profile,
    pub seccomp: Seccomp,
    /// The folder `bulkhead run` ran in, where the program runs if its root holds it.
    pub cwd: Option<PathBuf>,
}

impl OutsideSpec {
    /// The socket's path inside the program's root.
    pub fn socket(&self) -> PathBuf {
        Path::new(SOCKET_DIR).join(format!("{}.sock", self.name))
    }
}

/// A path handed to the launcher: how it may be used (`r`, `x`, `w`), its resolved name.
struct Handed {
    access: char,
    path: PathBuf,
}

pub struct OutsideBackend {
    spec: OutsideSpec,
    policy: Policy,
    handed: Vec<Handed>,
    /// Links to recreate in the root (`/lib` → `usr/lib` where `/usr` is merged).
    links: Vec<(PathBuf, PathBuf)>,
    partition: Arc<Partition>,
    child: Option<Compartment>,
    /// The running launcher's start-up socket: its last word says how the program ended.
    startup: Option<Startup>,
}

impl OutsideBackend {
    /// Resolves every path the program will use (a missing one is an error now, not at each
    /// start) and makes its compartment's policy.
    pub fn new(spec: OutsideSpec, partition: Arc<Partition>) -> anyhow::Result<OutsideBackend> {
        let mut handed = Vec::new();
        let mut links = Vec::new();
        let mut hand = |access: char, path: &Path, required: bool| -> anyhow::Result<()> {
            let meta = match std::fs::symlink_metadata(path) {
                Ok(meta) => meta,
                Err(_) if !required => return Ok(()),
                Err(e) => anyhow::bail!("{}: cannot use {}: {e}", spec.name, path.display()),
            };
            // A system folder that is a link (`/lib` → `usr/lib`) is recreated as one.
            if !required && meta.file_type().is_symlink() {
                if let Ok(target) = std::fs::read_link(path) {
                    links.push((path.to_path_buf(), target));
                }
                return Ok(());
            }
            let canonical = std::fs::canonicalize(path).map_err(|e| {
                anyhow::anyhow!("{}: cannot resolve {}: {e}", spec.name, path.display())
            })?;
            handed.push(Handed { access, path: canonical });
            Ok(())
        };
        for path in SYSTEM_EXEC {
            hand('x', Path::new(path), false)?;
        }
        for path in SYSTEM_READ {
            hand('r', Path::new(path), false)?;
        }
        for path in SYSTEM_WRITE {
            hand('w', Path::new(path), false)?;
        }
        for path in &spec.profile.read {
            hand('r', path, false)?;
        }
        hand('x', &spec.program, true)?;
        // What the user lets it read may hold its own libraries and helpers: readable code can
        // be mapped executable anyway, so running it adds nothing.
        for path in &spec.read {
            hand('x', path, true)?;
        }
        for path in &spec.write {
            hand('w', path, true)?;
            warn_if_unwritable(&spec.name, path);
        }
        let mut policy = Policy::builder(&format!("outside-{}", spec.name))
            .namespaces(Namespaces {
                net: !spec.profile.network,
                // The launcher is root inside, to reach paths below folders only root may
                // search (see `bulkhead_compartment::outside`); its program runs as the
                // overflow user.
                user: Some(IdMap {
                    also: Some((COMPARTMENT_UID, COMPARTMENT_UID)),
                    ..IdMap::root_as(0, 0)
                }),
                ..Namespaces::default()
            })
            .build()?;
        policy.set_cgroup_limits(partition.device_limits().clone());
        Ok(OutsideBackend { spec, policy, handed, links, partition, child: None, startup: None })
    }

    /// Stops the program: its launcher asks it to end (and says, under `seccomp=log`, what
    /// it called), then is killed if it has not ended within [`EXIT_WAIT`].
    fn stop(&mut self) {
        self.startup = None;
        if let Some(mut child) = self.child.take() {
            if !matches!(child.wait_for(Duration::ZERO), Ok(Some(_))) {
                let _ = child.signal(libc::SIGTERM);
                if !matches!(child.wait_for(EXIT_WAIT), Ok(Some(_))) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }

    /// The launcher's command line.
    fn command<'a>(&'a self, startup: &'a Startup) -> std::io::Result<Command<'a>> {
        let socket = self.spec.socket();
        let socket_str = socket.to_string_lossy().into_owned();
        let mut cmd = Command::current_exe()?
            .args(["outside", "--startup-fd", &STARTUP_FD.to_string()])
            .args(["--name", &self.spec.name, "--socket", &socket_str])
            .args(["--seccomp", self.spec.seccomp.name()])
            .arg(format!("--syscalls={}", self.spec.profile.syscalls.join(",")))
            .fd(startup.as_fd(), STARTUP_FD);
        if self.spec.profile.network {
            cmd = cmd.arg("--network");
        }
        if let Some(cwd) = &self.spec.cwd {
            cmd = cmd.arg("--cwd").arg(cwd);
        }
        for h in &self.handed {
            let mut arg = std::ffi::OsString::from(format!("--path={}:", h.access));
            arg.push(&h.path);
            cmd = cmd.arg(arg);
        }
        for (link, target) in &self.links {
            let mut arg = std::ffi::OsString::from("--link=");
            arg.push(link);
            arg.push("=");
            arg.push(target);
            cmd = cmd.arg(arg);
        }
        cmd = cmd.arg("--").arg(&self.spec.program);
        for arg in &self.spec.args {
            cmd = cmd.arg(arg.replace(SOCKET_PLACEHOLDER, &socket_str));
        }
        if let Some(value) = std::env::var_os("RUST_LOG") {
            cmd = cmd.env("RUST_LOG", value);
        }
        if let Some(vm) = self.partition.vm_cgroup() {
            cmd = cmd.cgroup_parent(vm);
        }
        Ok(cmd)
    }

    /// The launcher's word: the connection, or why there is none.
    fn connection(&mut self, startup: &Startup) -> Result<UnixStream, String> {
        let ended = match startup.report(START_DEADLINE) {
            Ok(Report::Ready(mut files)) if files.len() == 1 => {
                let file = files.pop().expect("one file");
                return Ok(UnixStream::from(OwnedFd::from(file.file)));
            }
            Ok(Report::Failed(why)) => why,
            Ok(_) => "the launcher sent what the core did not ask for".into(),
            Err(StartupError::Closed) => self.launcher_end(),
            Err(e) => format!("the launcher did not answer: {e}"),
        };
        self.stop();
        Err(ended)
    }

    /// How a launcher that said nothing ended.
    fn launcher_end(&mut self) -> String {
        let Some(child) = self.child.as_mut() else { return "it ended".into() };
        match child.wait_for(EXIT_WAIT) {
            Ok(Some(status)) => format!("its launcher ended first: {status}"),
            _ => "its launcher closed its start-up socket without a word".into(),
        }
    }
}

/// Says once, at the start, when the program (the overflow user, no capabilities) will not be
/// able to write what `rw=` hands it: a file or folder of another user's that others may not
/// write. The program's own error, later, would not say why.
fn warn_if_unwritable(name: &str, path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.uid() != COMPARTMENT_UID && meta.mode() & 0o002 == 0 {
        eprintln!(
            "{name}: warning: rw={} belongs to uid {} and others may not write it; the program \
             runs as uid {COMPARTMENT_UID} (chown {COMPARTMENT_UID} it, or make it writable)",
            path.display(),
            meta.uid()
        );
    }
}

impl Backend for OutsideBackend {
    fn kind(&self) -> DeviceKind {
        self.spec.shape.kind
    }

    fn shape(&self) -> DeviceShape {
        self.spec.shape.clone()
    }

    fn name(&self) -> String {
        self.spec.name.clone()
    }

    fn launch(&mut self) -> std::io::Result<Launched> {
        self.stop();
        let (startup, launcher_end) = Startup::pair()?;
        let cmd = self.command(&launcher_end)?;
        let policy = &self.policy;
        // Only the launcher thread may start processes (see `crate::confine::launcher`).
        let child = crate::confine::launcher::call(|| spawn(&cmd, policy))
            .map_err(|e| std::io::Error::other(bulkhead_sandbox::report::with_causes(&e)))?;
        drop(cmd);
        drop(launcher_end);
        let state = child.cgroup().map(bulkhead_sandbox::Cgroup::state);
        self.child = Some(child);
        if let Err(e) = self.partition.check_compartment(&self.spec.name, state) {
            self.stop();
            return Err(std::io::Error::other(e));
        }
        let conn = self.connection(&startup).map_err(std::io::Error::other)?;
        self.startup = Some(startup);
        let child = self.child.as_ref().expect("started");
        let description = format!(
            "outside compartment pid {}: {} (seccomp {}): {}",
            child.pid(),
            self.spec.program.display(),
            self.spec.seccomp.name(),
            child.report()
        );
        Ok(Launched { conn, pid: Some(child.pid() as u32), description })
    }

    fn status(&self) -> Option<String> {
        let child = self.child.as_ref()?;
        child.status().ok().map(|s| s.to_string())
    }

    fn exit_reason(&mut self) -> Option<String> {
        let said = match self.startup.take().map(|s| s.report(EXIT_WAIT)) {
            Some(Ok(Report::Failed(why))) => Some(why),
            _ => None,
        };
        let mut child = self.child.take()?;
        let ended = match child.wait_for(EXIT_WAIT) {
            Ok(Some(status)) => Some(status.to_string()),
            _ => {
                let _ = child.kill();
                child.wait().ok().map(|s| format!("closed its connection, then {s}"))
            }
        };
        said.or(ended)
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

    fn set_program(&mut self, _program: &Path) -> Result<(), String> {
        Err(format!(
            "{} runs {}, which Bulkhead did not build: restart it with the new program instead",
            self.spec.name,
            self.spec.program.display()
        ))
    }

    fn mode(&self) -> &'static str {
        "outside"
    }
}

impl Drop for OutsideBackend {
    fn drop(&mut self) {
        self.stop();
    }
}
