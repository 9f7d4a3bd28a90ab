//! A VM's CPU and memory partitioning: its cgroups
//! (`bulkhead_sandbox::cgroup::VmCgroups`), the compartments' cgroup limits
//! and the vCPU threads' CPU affinity.
//!
//! A limit the user asked for that cannot be applied is an error (or, with
//! [`Limits::strict`] off, a warning); a default that cannot be applied is a
//! one-line warning.

use std::sync::Arc;

use anyhow::Context;
use bulkhead_core::vcpu::Placement;
use bulkhead_sandbox::cgroup::{Controller, VmCgroups, VmLimits};
use bulkhead_sandbox::{CgroupLimits, LayerState};

/// CPU and memory partitioning, as asked for (`bulkhead run`'s options).
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// The VM's own: the vCPUs' quota, its memory, host CPUs and CPU weight.
    pub vm: VmLimits,
    /// vCPU → host CPU.
    pub pins: Vec<(u32, usize)>,
    /// Each compartment's limits, and whether they were asked for (rather than defaults).
    pub device: (CgroupLimits, bool),
    /// Whether a limit asked for that cannot be applied is an error (else a warning).
    pub strict: bool,
}

/// The VM's partitioning in force: its cgroups and the vCPU pins.
pub struct Partition {
    cgroups: Option<VmCgroups>,
    limits: Limits,
}

impl Partition {
    /// Creates the cgroups for VM `name` and moves this process (the core)
    /// into them. `compartments`: whether devices run as compartments (the
    /// compartments' limits apply only then).
    pub fn create(
        name: &str,
        mut limits: Limits,
        compartments: bool,
        verbose: bool,
    ) -> anyhow::Result<Arc<Partition>> {
        if !compartments {
            limits.device = (CgroupLimits::default(), false);
        }
        let vm_limits = limits.vm.clone();
        let mut partition = Partition { cgroups: None, limits };
        if vm_limits.is_empty() && partition.limits.device.0.is_empty() {
            return Ok(Arc::new(partition));
        }
        let device_controllers: Vec<Controller> = partition.limits.device.0.controllers();
        let cgroups = match VmCgroups::create(name, &vm_limits, &device_controllers) {
            Ok(c) => c,
            Err(e) if vm_limits.is_empty() => {
                warn(&format!("the compartments' default cgroup limits are off: {e}"));
                return Ok(Arc::new(partition));
            }
            Err(e) => return Err(e).context("cannot create the VM's cgroups"),
        };
        let outcomes = [Some(cgroups.vm()), cgroups.vcpus()].into_iter().flatten();
        for outcome in outcomes.flat_map(|c| c.outcomes()) {
            if let Err(reason) = &outcome.result {
                let option = match outcome.limit {
                    "cpu quota" => "--cpu-quota",
                    "cpu shares" => "--cpu-shares",
                    "memory" => "--memory-limit",
                    "cpuset" => "--host-cpus",
                    other => other,
                };
                partition.refuse(&format!("{option}: {reason}"), true)?;
            }
        }
        if let Err(e) = cgroups.enter_core() {
            partition.refuse(
                &format!("the core could not join its cgroup: {e}"),
                !vm_limits.is_empty(),
            )?;
        }
        if verbose {
            eprintln!("bulkhead: cgroups: {}", cgroups.describe());
        }
        partition.cgroups = Some(cgroups);
        Ok(Arc::new(partition))
    }

    /// Each compartment's cgroup limits.
    pub fn device_limits(&self) -> &CgroupLimits {
        &self.limits.device.0
    }

    /// A limit that cannot be applied: an error if `explicit` and strict, else a warning.
    fn refuse(&self, what: &str, explicit: bool) -> anyhow::Result<()> {
        if explicit && self.limits.strict {
            anyhow::bail!(
                "a limit you asked for cannot be applied: {what} (--limits best-effort runs the VM without it)"
            );
        }
        warn(&format!("a limit is not applied: {what}"));
        Ok(())
    }

    /// One line for `bulkhead ctl NAME status`: the limits in force, the
    /// pins, and what could not be applied.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        let v = &self.limits.vm;
        if let Some(m) = v.memory_max {
            parts.push(format!("VM memory {} MiB", m >> 20));
        }
        if let Some(cpus) = &v.host_cpus {
            parts.push(format!("VM on host CPUs {cpus}"));
        }
        if let Some(shares) = v.cpu_shares {
            parts.push(format!("VM cpu shares {shares}"));
        }
        if let Some(q) = v.vcpu_quota {
            parts.push(format!("vCPUs {}% of a CPU", q.quota_us * 100 / q.period_us));
        }
        if let Some(cgroups) = &self.cgroups {
            for (what, cgroup) in [("vm", Some(cgroups.vm())), ("vcpus", cgroups.vcpus())] {
                match cgroup.map(bulkhead_sandbox::Cgroup::state) {
                    Some(LayerState::Applied { detail }) => {
                        parts.push(format!("{what} cgroup {detail}"))
                    }
                    Some(LayerState::NotApplied { reason }) => {
                        parts.push(format!("{what} NOT APPLIED: {reason}"))
                    }
                    _ => {}
                }
            }
        }
        let (device, _) = &self.limits.device;
        if let Some(q) = device.cpu_quota {
            parts.push(format!("each compartment cpu {}%", q.quota_us * 100 / q.period_us));
        }
        if let Some(m) = device.memory_max {
            parts.push(format!("each compartment memory {} MiB", m >> 20));
        }
        for (vcpu, cpu) in &self.limits.pins {
            parts.push(format!("vCPU {vcpu} on CPU {cpu}"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Whether the VM has cgroups of its own.
    pub fn has_cgroups(&self) -> bool {
        self.cgroups.is_some()
    }

    /// The VM's cgroup, the parent of its compartments'.
    pub fn vm_cgroup(&self) -> Option<&bulkhead_sandbox::Cgroup> {
        self.cgroups.as_ref().map(VmCgroups::vm)
    }

    /// Checks a compartment's cgroup: an error if a limit asked for did not land.
    pub fn check_compartment(&self, device: &str, state: Option<LayerState>) -> Result<(), String> {
        if self.limits.device.0.is_empty() {
            return Ok(());
        }
        let reason = match state {
            Some(LayerState::NotApplied { reason }) => reason,
            None if self.cgroups.is_none() => "the VM has no cgroup".to_string(),
            None => "no cgroup was made".to_string(),
            Some(_) => return Ok(()),
        };
        let what = format!("{device}'s cgroup limits: {reason}");
        self.refuse(&what, self.limits.device.1).map_err(|e| e.to_string())
    }
}

impl Placement for Partition {
    fn place_vcpu(&self, id: u8, tid: i32) -> Result<(), String> {
        if let Some(cgroups) = &self.cgroups {
            if let Err(e) = cgroups.place_vcpu(tid) {
                let why = bulkhead_sandbox::report::with_causes(&e);
                self.refuse(&format!("--cpu-quota for vCPU {id}: {why}"), true)
                    .map_err(|e| e.to_string())?;
            }
        }
        if let Some(&(_, cpu)) = self.limits.pins.iter().find(|&&(v, _)| v == u32::from(id)) {
            pin_thread(tid, cpu).map_err(|e| format!("--pin {id}={cpu}: {e}"))?;
        }
        Ok(())
    }
}

/// `sched_setaffinity` for one thread.
fn pin_thread(tid: i32, cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::other(format!("host CPU {cpu} is out of range")));
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: passes a live, initialised cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) {
            return Err(std::io::Error::other(format!(
                "host CPU {cpu} is not one this VM may use (offline, or outside --host-cpus or the \
                 core's own CPU set)"
            )));
        }
        return Err(e);
    }
    Ok(())
}

fn warn(what: &str) {
    eprintln!("bulkhead: warning: {what}");
}
