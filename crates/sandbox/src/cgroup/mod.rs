//! Cgroups for compartments, VMs and vCPU threads, on cgroup v1 and v2.
//!
//! A [`Cgroup`] is one directory per hierarchy that holds a controller its
//! limits need, below the calling process's own cgroup in that hierarchy (so a
//! core that runs inside a limited cgroup keeps its compartments inside the
//! limit too). Each controller is looked up separately: on a host like this
//! one, where cpu, cpuset, memory and pids are v1 hierarchies and the unified
//! v2 mount has only `hugetlb`, every limit goes to v1; on a pure v2 host, to
//! v2; on a mixed host, each to where its controller is.
//!
//! A limit that cannot be applied — controller not mounted, v2's rule that a
//! cgroup with processes cannot enable controllers for its children, no
//! permission — is recorded with the reason and shows in [`Cgroup::state`].
//!
//! Protocol, per version:
//! - v1: `mkdir`; for cpuset, copy `cpuset.cpus`/`cpuset.mems` from the parent
//!   (an empty cpuset takes no task); write the limit files; attach a process
//!   with `cgroup.procs`, a thread with `tasks`; `rmdir` when empty.
//! - v2: write `+controller` to `cgroup.subtree_control` of every ancestor
//!   below the process's own cgroup; `mkdir`; write the limit files; attach
//!   with `cgroup.procs` (`cgroup.threads` for a thread, in a threaded
//!   subtree only); `rmdir` when empty.

mod hierarchy;
mod limits;
mod vm;

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use hierarchy::{Hierarchies, Hierarchy};
pub use limits::{shares_to_weight, writes, CgroupLimits, CpuQuota, LimitWrite};
pub use vm::{VmCgroups, VmLimits};

use crate::report::LayerState;

/// Errors of the cgroup layer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be used.
    #[error("could not use {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// The cgroup still has tasks.
    #[error("cgroup {0} still has processes: kill them (Cgroup::kill_all) and reap them first")]
    Busy(PathBuf),
    /// A limit could not be applied and the policy requires every layer.
    #[error("a cgroup limit could not be applied and the policy requires it: {0}")]
    Required(String),
    /// The name is unusable as a directory name.
    #[error("`{0}` cannot name a cgroup: use letters, digits, `-`, `_` and `.`")]
    BadName(String),
}

/// A cgroup controller Bulkhead uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    /// CPU bandwidth and weight.
    Cpu,
    /// CPU accounting (v1 only; v2's `cpu.stat` is always there).
    Cpuacct,
    /// CPU and memory-node pinning.
    Cpuset,
    /// Memory limit.
    Memory,
    /// Task count limit.
    Pids,
    /// Huge-page limit (guest memory backed by huge pages).
    Hugetlb,
}

impl Controller {
    /// The kernel's name.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Hugetlb => "hugetlb",
        }
    }

    /// The controller the kernel calls `name`.
    pub fn from_name(name: &str) -> Option<Controller> {
        match name {
            "cpu" => Some(Controller::Cpu),
            "cpuacct" => Some(Controller::Cpuacct),
            "cpuset" => Some(Controller::Cpuset),
            "memory" => Some(Controller::Memory),
            "pids" => Some(Controller::Pids),
            "hugetlb" => Some(Controller::Hugetlb),
            _ => None,
        }
    }
}

/// Cgroup v1 or v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// One hierarchy per controller group.
    V1,
    /// The unified hierarchy.
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

#[derive(Clone, Debug)]
struct Dir {
    version: Version,
    base: PathBuf,
    path: PathBuf,
    controllers: Vec<Controller>,
}

/// How one limit fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitOutcome {
    /// The limit (`memory`, `pids`, `cpu quota`…).
    pub limit: &'static str,
    /// Its controller.
    pub controller: Controller,
    /// The version it was applied on, or why it was not.
    pub result: Result<Version, String>,
}

/// One cgroup, across the hierarchies its limits need.
#[derive(Debug)]
pub struct Cgroup {
    hierarchies: Hierarchies,
    rel: PathBuf,
    dirs: Vec<Dir>,
    outcomes: Vec<LimitOutcome>,
    removed: bool,
}

impl Cgroup {
    /// Creates `name` below the calling process's cgroups, with `limits`.
    pub fn create(name: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
        Cgroup::create_in(&Hierarchies::detect()?, None, name, limits)
    }

    /// Creates `name` below `parent` (or below the calling process's cgroups) in `hierarchies`.
    pub fn create_in(
        hierarchies: &Hierarchies,
        parent: Option<&Cgroup>,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Cgroup, CgroupError> {
        Cgroup::create_with(hierarchies, parent, name, limits, &[])
    }

    /// As [`Cgroup::create_in`], and present in the hierarchies of `also`
    /// too, with no limit there (so that a process placed in it moves in
    /// those hierarchies as well). A controller of `also` that is not
    /// mounted is skipped: it holds no limit.
    pub fn create_with(
        hierarchies: &Hierarchies,
        parent: Option<&Cgroup>,
        name: &str,
        limits: &CgroupLimits,
        also: &[Controller],
    ) -> Result<Cgroup, CgroupError> {
        let usable = !name.is_empty()
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !usable {
            return Err(CgroupError::BadName(name.to_string()));
        }
        let rel = parent.map_or_else(PathBuf::new, |p| p.rel.clone()).join(name);
        let mut cgroup = Cgroup {
            hierarchies: hierarchies.clone(),
            rel,
            dirs: Vec::new(),
            outcomes: Vec::new(),
            removed: false,
        };
        for controller in limits.controllers() {
            if let Err(reason) = cgroup.add_controller(controller) {
                for w in writes(Version::V1, limits).iter().filter(|w| w.controller == controller) {
                    cgroup.record(w.limit, controller, Err(reason.clone()));
                }
            }
        }
        for &controller in also {
            if !limits.controllers().contains(&controller)
                && hierarchies.for_controller(controller).is_some()
            {
                // No limit rides on it: a directory that cannot be made
                // only means the process stays where it was in that hierarchy.
                let _ = cgroup.add_controller(controller);
            }
        }
        cgroup.apply(limits);
        Ok(cgroup)
    }

    /// Its name: the last part of its path below the hierarchies' base.
    pub fn name(&self) -> Option<String> {
        self.rel.file_name().and_then(|n| n.to_str()).map(str::to_string)
    }

    /// Creates `name` as a child of this cgroup (a compartment below its VM).
    pub fn child(&self, name: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
        Cgroup::create_in(&self.hierarchies.clone(), Some(self), name, limits)
    }

    /// Makes `controller`'s hierarchy hold this cgroup; the error is the reason it cannot.
    fn add_controller(&mut self, controller: Controller) -> Result<(), String> {
        let hierarchy = self.hierarchies.for_controller(controller).cloned().ok_or_else(|| {
            format!(
                "the {} controller is mounted neither as cgroup v1 nor on v2 here",
                controller.name()
            )
        })?;
        // On v2 every controller is enabled along the path, even in a directory
        // made for another controller.
        let path = make_dirs(&hierarchy, &self.rel, controller)?;
        if let Some(dir) = self.dirs.iter_mut().find(|d| d.base == hierarchy.base) {
            dir.controllers.push(controller);
            return Ok(());
        }
        let (version, base) = (hierarchy.version, hierarchy.base);
        self.dirs.push(Dir { version, base, path, controllers: vec![controller] });
        Ok(())
    }

    fn record(
        &mut self,
        limit: &'static str,
        controller: Controller,
        result: Result<Version, String>,
    ) {
        match self.outcomes.iter_mut().find(|o| o.limit == limit) {
            // The first failure of a limit is the one reported.
            Some(outcome) => {
                if outcome.result.is_ok() {
                    outcome.result = result;
                }
            }
            None => self.outcomes.push(LimitOutcome { limit, controller, result }),
        }
    }

    /// Applies (or changes) limits; outcomes show in [`Cgroup::state`].
    pub fn apply(&mut self, limits: &CgroupLimits) {
        let dirs = self.dirs.clone();
        for dir in &dirs {
            for w in writes(dir.version, limits) {
                if !dir.controllers.contains(&w.controller) {
                    continue;
                }
                let file = dir.path.join(w.file);
                let result = match write_file(&file, &w.value) {
                    Ok(()) => Ok(dir.version),
                    Err(e) if w.optional && e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => Err(format!("writing {} to {} failed: {e}", w.value, file.display())),
                };
                self.record(w.limit, w.controller, result);
            }
        }
    }

    /// Moves process `pid` (all its threads) into this cgroup, in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let file = dir.path.join("cgroup.procs");
            write_file(&file, &pid.to_string())
                .map_err(|source| CgroupError::Io { path: file, source })?;
        }
        Ok(())
    }

    /// Moves one thread into this cgroup (v1 `tasks`; v2 `cgroup.threads`, threaded subtrees only).
    pub fn add_thread(&self, tid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let name = match dir.version {
                Version::V1 => "tasks",
                Version::V2 => "cgroup.threads",
            };
            let file = dir.path.join(name);
            write_file(&file, &tid.to_string())
                .map_err(|source| CgroupError::Io { path: file, source })?;
        }
        Ok(())
    }

    /// Makes this cgroup's v2 directories threaded (`cgroup.type`), so that
    /// single threads of a process in the parent may move in; the parent
    /// becomes a threaded domain. Nothing to do on v1, where any thread may
    /// move anywhere.
    pub fn make_threaded(&self) -> Result<(), CgroupError> {
        for dir in self.dirs.iter().filter(|d| d.version == Version::V2) {
            let file = dir.path.join("cgroup.type");
            write_file(&file, "threaded")
                .map_err(|source| CgroupError::Io { path: file, source })?;
        }
        Ok(())
    }

    /// Moves process `pid` back to the cgroups it was created below (the
    /// calling process's own, at detection), so that this one can be removed.
    pub fn move_out(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let file = dir.base.join("cgroup.procs");
            write_file(&file, &pid.to_string())
                .map_err(|source| CgroupError::Io { path: file, source })?;
        }
        Ok(())
    }

    /// Opens now, for writing, the files [`Cgroup::move_out`] writes, so that a thread that may
    /// no longer open files (the core's event loop, under its seccomp filter) can still leave
    /// this cgroup when the VM ends: see [`MoveOut`].
    pub fn open_move_out(&self) -> Result<MoveOut, CgroupError> {
        let mut files = Vec::new();
        for dir in &self.dirs {
            let path = dir.base.join("cgroup.procs");
            match fs::OpenOptions::new().write(true).open(&path) {
                Ok(file) => files.push((path, file)),
                Err(source) => return Err(CgroupError::Io { path, source }),
            }
        }
        Ok(MoveOut(files))
    }

    /// The controllers this cgroup has a directory for.
    pub fn controllers(&self) -> Vec<Controller> {
        self.dirs.iter().flat_map(|d| d.controllers.iter().copied()).collect()
    }

    /// The hierarchies this cgroup was made in.
    pub fn hierarchies(&self) -> &Hierarchies {
        &self.hierarchies
    }

    /// The processes in this cgroup (from its first hierarchy).
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        let Some(dir) = self.dirs.first() else { return Ok(Vec::new()) };
        let file = dir.path.join("cgroup.procs");
        let text =
            fs::read_to_string(&file).map_err(|source| CgroupError::Io { path: file, source })?;
        Ok(text.lines().filter_map(|line| line.trim().parse().ok()).collect())
    }

    /// Sends `SIGKILL` to every process in this cgroup.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        for pid in self.procs()? {
            // SAFETY: kill takes plain integers; a pid that exited meanwhile gives ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Ok(())
    }

    /// The directory holding `controller`, if this cgroup has it.
    pub fn path(&self, controller: Controller) -> Option<&Path> {
        let dir = self.dirs.iter().find(|d| d.controllers.contains(&controller))?;
        Some(&dir.path)
    }

    /// Reads an interface file of `controller`'s directory (`memory.failcnt`, `pids.events`…).
    pub fn read(&self, controller: Controller, file: &str) -> Result<String, CgroupError> {
        let dir = self.path(controller).ok_or_else(|| CgroupError::Io {
            path: PathBuf::from(file),
            source: io::Error::new(io::ErrorKind::NotFound, "this cgroup lacks the controller"),
        })?;
        let path = dir.join(file);
        fs::read_to_string(&path).map_err(|source| CgroupError::Io { path, source })
    }

    /// How each limit fared.
    pub fn outcomes(&self) -> &[LimitOutcome] {
        &self.outcomes
    }

    /// The report state: applied (`v1: cpu,memory,pids`) or not applied with the reasons.
    pub fn state(&self) -> LayerState {
        if self.outcomes.is_empty() {
            return LayerState::Off { reason: "no cgroup limit asked".into() };
        }
        let mut by_version: Vec<(Version, Vec<&str>)> = Vec::new();
        let mut failures = Vec::new();
        for outcome in &self.outcomes {
            match &outcome.result {
                Ok(version) => {
                    let name = outcome.controller.name();
                    match by_version.iter_mut().find(|(v, _)| v == version) {
                        Some((_, names)) if !names.contains(&name) => names.push(name),
                        Some(_) => {}
                        None => by_version.push((*version, vec![name])),
                    }
                }
                Err(reason) => failures.push(format!("{}: {reason}", outcome.limit)),
            }
        }
        by_version.sort();
        let applied: Vec<String> =
            by_version.iter().map(|(v, names)| format!("{v}: {}", names.join(","))).collect();
        let applied = applied.join("; ");
        if failures.is_empty() {
            LayerState::Applied { detail: applied }
        } else {
            let done =
                if applied.is_empty() { String::new() } else { format!("{applied} applied; ") };
            LayerState::NotApplied { reason: format!("{done}{}", failures.join("; ")) }
        }
    }

    /// Removes what it can of the cgroup's directories now, never waiting: true once all are
    /// gone. A directory whose exiting tasks have not all left yet (`EBUSY`) stays for the
    /// next try.
    pub fn try_remove(&mut self) -> bool {
        self.dirs.retain(|dir| match fs::remove_dir(&dir.path) {
            Ok(()) => false,
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        });
        self.removed = self.dirs.is_empty();
        self.removed
    }

    /// Removes the cgroup's directories; its processes must have exited and been reaped.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.removed = true;
        for dir in &self.dirs {
            remove_dir(&dir.path)?;
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.removed {
            for dir in &self.dirs {
                let _ = fs::remove_dir(&dir.path);
            }
        }
    }
}

/// The `cgroup.procs` files of the cgroups a [`Cgroup`] was created below, open for writing
/// ([`Cgroup::open_move_out`]).
#[derive(Debug)]
pub struct MoveOut(Vec<(PathBuf, fs::File)>);

impl MoveOut {
    /// Moves process `pid` back to the cgroups the [`Cgroup`] was created below, as
    /// [`Cgroup::move_out`] does, with one `write` per hierarchy and no `open`.
    pub fn apply(&self, pid: i32) -> Result<(), CgroupError> {
        for (path, file) in &self.0 {
            (&*file)
                .write_all(pid.to_string().as_bytes())
                .map_err(|source| CgroupError::Io { path: path.clone(), source })?;
        }
        Ok(())
    }
}

/// Creates `base/rel` (and any missing ancestor) for `controller`; the error is the reason.
fn make_dirs(hierarchy: &Hierarchy, rel: &Path, controller: Controller) -> Result<PathBuf, String> {
    let mut dir = hierarchy.base.clone();
    for component in rel.components() {
        if hierarchy.version == Version::V2 {
            enable_v2(&dir, controller)?;
        }
        let parent = dir.clone();
        dir.push(component);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("could not create {}: {e}", dir.display())),
        }
        if hierarchy.version == Version::V1 && controller == Controller::Cpuset {
            inherit_cpuset(&parent, &dir)?;
        }
    }
    Ok(dir)
}

/// Enables `controller` for the children of v2 directory `dir`.
fn enable_v2(dir: &Path, controller: Controller) -> Result<(), String> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&file).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == controller.name()) {
        return Ok(());
    }
    write_file(&file, &format!("+{}", controller.name())).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "cgroup v2 will not enable {} below {}, which has processes of its own: start \
             bulkhead in a cgroup delegated to it with no other process",
            controller.name(),
            dir.display()
        ),
        _ => format!("could not enable {} in {}: {e}", controller.name(), file.display()),
    })
}

/// A new v1 cpuset is empty and takes no task: start from the parent's CPUs and nodes.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), String> {
    for file in ["cpuset.mems", "cpuset.cpus"] {
        let value = fs::read_to_string(parent.join(file))
            .map_err(|e| format!("could not read the parent's {file}: {e}"))?;
        let value = value.trim();
        if !value.is_empty() {
            write_file(&dir.join(file), value)
                .map_err(|e| format!("could not copy the parent's {file}: {e}"))?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).truncate(true).open(path)?;
    file.write_all(value.as_bytes())
}

/// `rmdir`, retrying while the last tasks finish exiting.
fn remove_dir(path: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if Instant::now() > deadline {
                    return Err(CgroupError::Busy(path.to_path_buf()));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(source) => return Err(CgroupError::Io { path: path.to_path_buf(), source }),
        }
    }
}

#[cfg(test)]
mod tests;
