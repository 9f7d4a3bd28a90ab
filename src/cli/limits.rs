//! `bulkhead run`'s CPU and memory partitioning options, checked and turned
//! into [`bulkhead_vmm::Limits`] (which `bulkhead_vmm` applies: cgroups,
//! the compartments' limits, vCPU pinning).

use bulkhead_sandbox::cgroup::VmLimits;
use bulkhead_sandbox::{CgroupLimits, CpuQuota};
use bulkhead_vmm::Limits;
use clap::Args;

/// Memory a compartment may use beyond the guest RAM it maps, by default.
pub const DEVICE_MEMORY_HEADROOM: u64 = 256 << 20;

#[derive(Args, Clone, Debug, Default)]
pub struct LimitArgs {
    /// CPU time for the vCPU threads together, as a share of one host CPU:
    /// 50% or 0.5 (above 100% for several vCPUs). A cgroup CPU quota.
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    pub cpu_quota: Option<CpuQuota>,
    /// Pin vCPUs to host CPUs: VCPU=CPU,… (e.g. 0=1,1=0).
    #[arg(long, value_name = "VCPU=CPU,…", value_parser = parse_pins)]
    pub pin: Option<Pins>,
    /// Host CPUs every thread of the VM (core, vCPUs, compartments) may run on: a cpuset list (0-1,3).
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub host_cpus: Option<String>,
    /// CPU weight of the whole VM against other processes and VMs when CPUs
    /// are contended: 2 to 262144, 1024 being everyone's default (cgroup v1
    /// cpu.shares; on v2 mapped to cpu.weight).
    #[arg(long, value_name = "SHARES", value_parser = clap::value_parser!(u64).range(2..=262_144))]
    pub cpu_shares: Option<u64>,
    /// Memory of the whole VM (core, compartments and guest RAM together).
    #[arg(long, value_name = "SIZE", value_parser = super::parse_size)]
    pub memory_limit: Option<u64>,
    /// CPU share of each compartment (default 100%: one host CPU; `none` for no limit).
    #[arg(long, value_name = "SHARE|none", value_parser = parse_optional_share)]
    pub device_cpu_quota: Option<OrNone<CpuQuota>>,
    /// Memory of each compartment (default: guest memory + 256M, since a
    /// compartment is charged for guest pages it touches first; `none` for no limit).
    #[arg(long, value_name = "SIZE|none", value_parser = parse_optional_size)]
    pub device_memory_limit: Option<OrNone<u64>>,
    /// What to do when a limit you asked for cannot be applied: fail (the default) or warn.
    #[arg(long, value_name = "fail|best-effort", default_value = "fail", value_parser = parse_strict)]
    pub limits: Strictness,
}

/// Whether an explicit limit that cannot be applied is an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strictness {
    #[default]
    Fail,
    BestEffort,
}

fn parse_strict(s: &str) -> Result<Strictness, String> {
    match s {
        "fail" => Ok(Strictness::Fail),
        "best-effort" => Ok(Strictness::BestEffort),
        _ => Err(format!("'{s}': use fail or best-effort")),
    }
}

/// A limit, or `none` for no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrNone<T>(pub Option<T>);

/// vCPU → host CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pins(pub Vec<(u32, usize)>);

/// `50%`, `150%`, `0.5` or `1.5`: a share of one CPU, over a 100 ms period.
pub fn parse_share(s: &str) -> Result<CpuQuota, String> {
    let bad = || format!("'{s}' is not a CPU share: use a percentage (50%) or a fraction (0.5)");
    let (number, scale) = match s.strip_suffix('%') {
        Some(n) => (n, 1.0),
        None => (s, 100.0),
    };
    let percent = number.trim().parse::<f64>().map_err(|_| bad())? * scale;
    if !percent.is_finite() || percent <= 0.0 {
        return Err(bad());
    }
    // The kernel takes quotas of at least 1 ms.
    let quota_us = (percent * 1000.0).round() as u64;
    if quota_us < 1000 {
        return Err(format!("'{s}' is below the smallest CPU quota the kernel takes (1%)"));
    }
    Ok(CpuQuota { quota_us, period_us: 100_000 })
}

fn parse_optional_share(s: &str) -> Result<OrNone<CpuQuota>, String> {
    if s == "none" {
        return Ok(OrNone(None));
    }
    parse_share(s).map(|q| OrNone(Some(q)))
}

fn parse_optional_size(s: &str) -> Result<OrNone<u64>, String> {
    if s == "none" {
        return Ok(OrNone(None));
    }
    super::parse_size(s).map(|n| OrNone(Some(n)))
}

/// `0=1,1=0`.
pub fn parse_pins(s: &str) -> Result<Pins, String> {
    let mut pins = Vec::new();
    for part in s.split(',') {
        let bad = || format!("'{part}' is not VCPU=CPU (e.g. --pin 0=1,1=0)");
        let (vcpu, cpu) = part.split_once('=').ok_or_else(bad)?;
        let vcpu: u32 = vcpu.trim().parse().map_err(|_| bad())?;
        let cpu: usize = cpu.trim().parse().map_err(|_| bad())?;
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(format!("host CPU {cpu} is out of range"));
        }
        if pins.iter().any(|&(v, _)| v == vcpu) {
            return Err(format!("vCPU {vcpu} is pinned twice"));
        }
        pins.push((vcpu, cpu));
    }
    Ok(Pins(pins))
}

/// A cpuset list: `0`, `0-1`, `0,2-3`.
pub fn parse_cpu_list(s: &str) -> Result<String, String> {
    let bad = || format!("'{s}' is not a CPU list: use numbers and ranges, e.g. 0-1,3");
    for part in s.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) =
            (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a > b {
            return Err(bad());
        }
    }
    Ok(s.replace(' ', ""))
}

impl LimitArgs {
    /// The limits for a guest of `guest_memory` bytes.
    pub fn limits(&self, guest_memory: u64) -> Limits {
        Limits {
            vm: self.vm_limits(),
            pins: self.pin.clone().unwrap_or_default().0,
            device: self.device_limits(guest_memory),
            strict: self.limits == Strictness::Fail,
        }
    }

    /// The VM-wide limits.
    fn vm_limits(&self) -> VmLimits {
        VmLimits {
            vcpu_quota: self.cpu_quota,
            memory_max: self.memory_limit,
            host_cpus: self.host_cpus.clone(),
            cpu_shares: self.cpu_shares,
        }
    }

    /// Each compartment's limits for a guest of `guest_memory` bytes, and
    /// whether they were asked for (rather than defaults).
    pub fn device_limits(&self, guest_memory: u64) -> (CgroupLimits, bool) {
        let cpu_quota = self.device_cpu_quota.map_or(Some(CpuQuota::percent(100)), |q| q.0);
        let memory_max = self
            .device_memory_limit
            .map_or(Some(guest_memory.saturating_add(DEVICE_MEMORY_HEADROOM)), |m| m.0);
        let explicit = self.device_cpu_quota.is_some_and(|q| q.0.is_some())
            || self.device_memory_limit.is_some_and(|m| m.0.is_some());
        (CgroupLimits { cpu_quota, memory_max, ..CgroupLimits::default() }, explicit)
    }

    /// Checks that can be made before anything is created.
    pub fn check(&self, cpus: u32, guest_memory: u64, compartments: bool) -> anyhow::Result<()> {
        if let Some(Pins(pins)) = &self.pin {
            if let Some(&(vcpu, _)) = pins.iter().find(|&&(v, _)| v >= cpus) {
                anyhow::bail!("--pin names vCPU {vcpu}, but the VM has {cpus} (0 to {})", cpus - 1);
            }
        }
        if let Some(limit) = self.memory_limit {
            if limit < guest_memory.saturating_add(64 << 20) {
                anyhow::bail!(
                    "--memory-limit {} MiB leaves no room beside the guest's memory ({} MiB): \
                     the VM would be killed once the guest touched its RAM; give at least \
                     --memory plus 64M",
                    limit >> 20,
                    guest_memory >> 20
                );
            }
        }
        let (_, explicit) = self.device_limits(guest_memory);
        if explicit && !compartments {
            anyhow::bail!(
                "--device-cpu-quota and --device-memory-limit apply to compartments: use \
                 --mode microkernel, or --cpu-quota/--memory-limit for the whole VM"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_pins_and_lists() {
        assert_eq!(parse_share("50%").unwrap(), CpuQuota { quota_us: 50_000, period_us: 100_000 });
        assert_eq!(parse_share("0.5").unwrap(), CpuQuota::percent(50));
        assert_eq!(parse_share("1.5").unwrap(), CpuQuota::percent(150));
        assert!(parse_share("0").is_err());
        assert!(parse_share("-5%").is_err());
        assert!(parse_share("0.001").is_err());
        assert!(parse_share("half").is_err());
        assert_eq!(parse_pins("0=1,1=0").unwrap(), Pins(vec![(0, 1), (1, 0)]));
        assert!(parse_pins("0=1,0=0").is_err());
        assert!(parse_pins("0:1").is_err());
        assert_eq!(parse_cpu_list("0-1,3").unwrap(), "0-1,3");
        assert!(parse_cpu_list("1-0").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert_eq!(parse_optional_size("none").unwrap(), OrNone(None));
    }

    #[test]
    fn device_defaults_follow_guest_memory() {
        let args = LimitArgs::default();
        let (limits, explicit) = args.device_limits(512 << 20);
        assert!(!explicit);
        assert_eq!(limits.memory_max, Some((512 << 20) + DEVICE_MEMORY_HEADROOM));
        assert_eq!(limits.cpu_quota, Some(CpuQuota::percent(100)));
        let args = LimitArgs { device_cpu_quota: Some(OrNone(None)), ..LimitArgs::default() };
        assert_eq!(args.device_limits(0).0.cpu_quota, None);
        assert!(args.check(1, 256 << 20, false).is_ok());
        let args = LimitArgs { memory_limit: Some(256 << 20), ..LimitArgs::default() };
        assert!(args.check(1, 256 << 20, true).is_err());
        assert!(args.check(1, 200 << 20, true).is_err());
        assert!(args.check(1, 192 << 20, true).is_ok());
        let args = LimitArgs { pin: Some(Pins(vec![(2, 0)])), ..LimitArgs::default() };
        assert!(args.check(2, 256 << 20, true).is_err());
    }
}
