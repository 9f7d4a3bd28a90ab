//! One VM's cgroups: the layout that separates its vCPUs, its core and its
//! compartments, the same on v1 and v2.
//!
//! ```text
//! bulkhead-NAME-PID/        the whole VM: memory limit (guest RAM included),
//!                           host CPUs (cpuset), CPU weight
//!   core/                   the core process: event loop, API, every thread
//!                           but the vCPUs (monolithic devices too)
//!     vcpus/                the vCPU threads: CPU quota
//!   <device>-PID-N/         one per compartment: its CPU quota and memory
//! ```
//!
//! `vcpus` sits *inside* `core` because cgroup v2 moves single threads only
//! within a threaded subtree: `core` becomes its threaded domain and
//! `vcpus` a threaded child (v2's `memory` is not a threaded controller, so
//! the memory limit sits on the VM, a domain, above). v1 moves any thread
//! anywhere and its hierarchies are nested the same way; `core` has no CPU
//! limit of its own, so the nesting does not limit `vcpus` further.
//!
//! Guest RAM is a shared memfd: each page is charged to the memory cgroup
//! of the task that first touches it — a vCPU (the core's cgroup) or a
//! compartment writing into a request's buffer (its own). Both are below
//! the VM's, so the VM's limit covers guest memory wherever it was charged.

use std::path::PathBuf;

use super::{Cgroup, CgroupError, CgroupLimits, Controller, CpuQuota, Hierarchies, Version};
use crate::report::LayerState;

/// The limits of one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmLimits {
    /// CPU bandwidth of the vCPU threads together.
    pub vcpu_quota: Option<CpuQuota>,
    /// Memory of every process of the VM together (core, compartments, guest RAM).
    pub memory_max: Option<u64>,
    /// Host CPUs every thread of the VM runs on (cpuset list, `0-1,3`).
    pub host_cpus: Option<String>,
    /// The VM's CPU weight against its siblings (v1 shares; 1024 is the default).
    pub cpu_shares: Option<u64>,
}

impl VmLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == VmLimits::default()
    }

    fn vm(&self) -> CgroupLimits {
        CgroupLimits {
            memory_max: self.memory_max,
            cpus: self.host_cpus.clone(),
            cpu_shares: self.cpu_shares,
            ..CgroupLimits::default()
        }
    }

    fn vcpus(&self) -> CgroupLimits {
        CgroupLimits { cpu_quota: self.vcpu_quota, ..CgroupLimits::default() }
    }
}

/// The cgroups of one VM; dropping it moves the core back out and removes
/// them (compartments remove their own when they are reaped).
#[derive(Debug)]
pub struct VmCgroups {
    // Dropped in this order: children first.
    vcpus: Option<Cgroup>,
    core: Option<Cgroup>,
    vm: Cgroup,
    pid: i32,
    /// Opened with `core`: how the core leaves it at the end without opening a file.
    leave: Option<super::MoveOut>,
    /// The core is in `core` already (it took the VM over): [`VmCgroups::enter_core`] has
    /// nothing to do (a move into a v1 cgroup waits for an RCU grace period).
    entered: bool,
}

impl VmCgroups {
    /// Creates the VM's cgroups named `bulkhead-<name>-<pid>` below this
    /// process's own, with `limits`; `device_controllers` are those the
    /// compartments' limits will need (so that they are below the VM's).
    pub fn create(
        name: &str,
        limits: &VmLimits,
        device_controllers: &[Controller],
    ) -> Result<VmCgroups, CgroupError> {
        let mut hierarchies = Hierarchies::detect()?;
        // A core that took its VM over from the one before it (a core update, the same
        // process) is in the VM's `core` cgroup already: the VM's cgroups are there, kept.
        let own = format!("bulkhead-{name}-{}/core", std::process::id());
        let kept = hierarchies.above(std::path::Path::new(&own));
        let mut cgroups = VmCgroups::create_in(&hierarchies, name, limits, device_controllers)?;
        cgroups.entered = kept;
        Ok(cgroups)
    }

    /// As [`VmCgroups::create`], in `hierarchies`.
    pub fn create_in(
        hierarchies: &Hierarchies,
        name: &str,
        limits: &VmLimits,
        device_controllers: &[Controller],
    ) -> Result<VmCgroups, CgroupError> {
        let pid = std::process::id() as i32;
        remove_stale(hierarchies);
        let mut used: Vec<Controller> = limits.vm().controllers();
        used.extend(limits.vcpus().controllers());
        used.extend(device_controllers);
        used.sort();
        used.dedup();
        let vm = Cgroup::create_with(
            hierarchies,
            None,
            &format!("bulkhead-{name}-{pid}"),
            &limits.vm(),
            &used,
        )?;
        let mut cgroups =
            VmCgroups { vcpus: None, core: None, vm, pid, leave: None, entered: false };
        // The core goes wherever the VM has a directory: a VM-wide limit
        // (memory, cpuset) must hold it too.
        let core_controllers = cgroups.vm.controllers();
        if core_controllers.is_empty() {
            return Ok(cgroups);
        }
        let core = Cgroup::create_with(
            hierarchies,
            Some(&cgroups.vm),
            "core",
            &CgroupLimits::default(),
            &core_controllers,
        )?;
        // A VM-wide limit must hold the core: a hierarchy where `core`
        // could not be made would leave the core outside it.
        if let Some(missing) = core_controllers.iter().find(|c| !core.controllers().contains(c)) {
            return Err(CgroupError::Required(format!(
                "the core's cgroup could not be made in the {} hierarchy",
                missing.name()
            )));
        }
        // Where this fails (it does not on a real cgroupfs), the end tries `move_out`.
        cgroups.leave = core.open_move_out().ok();
        cgroups.core = Some(core);
        if limits.vcpu_quota.is_some() {
            let core = cgroups.core.as_ref().expect("set above");
            let vcpus = core.child("vcpus", &limits.vcpus())?;
            vcpus.make_threaded()?;
            cgroups.vcpus = Some(vcpus);
        }
        Ok(cgroups)
    }

    /// Moves the calling process (all its threads) into `core`.
    pub fn enter_core(&self) -> Result<(), CgroupError> {
        if self.entered {
            return Ok(());
        }
        match &self.core {
            Some(core) => core.add_process(self.pid),
            None => Ok(()),
        }
    }

    /// Moves one vCPU thread into `vcpus` (a no-op without a vCPU limit).
    pub fn place_vcpu(&self, tid: i32) -> Result<(), CgroupError> {
        match &self.vcpus {
            Some(vcpus) => vcpus.add_thread(tid),
            None => Ok(()),
        }
    }

    /// The VM's cgroup, the parent of its compartments'.
    pub fn vm(&self) -> &Cgroup {
        &self.vm
    }

    /// The vCPUs' cgroup, when there is a vCPU limit.
    pub fn vcpus(&self) -> Option<&Cgroup> {
        self.vcpus.as_ref()
    }

    /// The core's cgroup.
    pub fn core(&self) -> Option<&Cgroup> {
        self.core.as_ref()
    }

    /// Each cgroup with a limit that could not be applied, with the
    /// reasons: `vm: …` for the VM's own limits, `vcpus: …`.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, cgroup) in [("vm", Some(&self.vm)), ("vcpus", self.vcpus.as_ref())] {
            if let Some(LayerState::NotApplied { reason }) = cgroup.map(Cgroup::state) {
                out.push(format!("{what}: {reason}"));
            }
        }
        out
    }

    /// One line saying where each cgroup is: `v1 /sys/fs/cgroup/cpu/bulkhead-…`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut seen: Vec<PathBuf> = Vec::new();
        for cgroup in
            [Some(&self.vm), self.core.as_ref(), self.vcpus.as_ref()].into_iter().flatten()
        {
            for dir in &cgroup.dirs {
                if !seen.contains(&dir.path) {
                    seen.push(dir.path.clone());
                    let names: Vec<&str> = dir.controllers.iter().map(|c| c.name()).collect();
                    parts.push(format!(
                        "{} {} ({})",
                        dir.version,
                        dir.path.display(),
                        names.join(",")
                    ));
                }
            }
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("; ")
        }
    }

    /// Whether any of the VM's directories is on cgroup v2.
    pub fn uses_v2(&self) -> bool {
        self.vm.dirs.iter().any(|d| d.version == Version::V2)
    }
}

/// Removes the (empty) cgroups that VMs whose core died without cleaning up
/// (killed, say) left below this process's cgroups: `bulkhead-*-PID` with
/// no process PID. A directory that still holds a task stays.
fn remove_stale(hierarchies: &Hierarchies) {
    for hierarchy in hierarchies.list() {
        let Ok(entries) = std::fs::read_dir(&hierarchy.base) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with("bulkhead-")) else { continue };
            let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            // SAFETY: signal 0 only checks that the process exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                remove_tree(&entry.path());
            }
        }
    }
}

/// `rmdir` of a cgroup directory and its child cgroups, deepest first.
fn remove_tree(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for VmCgroups {
    fn drop(&mut self) {
        match (&self.leave, &self.core) {
            (Some(leave), _) => drop(leave.apply(self.pid)),
            (None, Some(core)) => drop(core.move_out(self.pid)),
            (None, None) => {}
        }
        // Threads that were in `vcpus` have ended; `core` is empty once the
        // process left; compartments removed theirs when reaped.
        if let Some(vcpus) = self.vcpus.take() {
            let _ = vcpus.remove();
        }
        if let Some(core) = self.core.take() {
            let _ = core.remove();
        }
    }
}
