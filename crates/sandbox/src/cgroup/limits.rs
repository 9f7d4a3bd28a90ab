//! Cgroup limits and the interface files they become on each version.
//!
//! | limit        | v1                                                 | v2                       |
//! |--------------|----------------------------------------------------|--------------------------|
//! | CPU quota    | `cpu.cfs_period_us`, `cpu.cfs_quota_us`            | `cpu.max`                |
//! | CPU shares   | `cpu.shares` (2–262144, default 1024)              | `cpu.weight` (1–10000)   |
//! | memory       | `memory.limit_in_bytes` (+ `memory.memsw.…`)       | `memory.max` (+ `memory.swap.max` 0) |
//! | pids         | `pids.max`                                         | `pids.max`               |
//! | CPU pinning  | `cpuset.cpus`, `cpuset.mems`                       | `cpuset.cpus`, `cpuset.mems` |
//! | 2 MiB pages  | `hugetlb.2MB.limit_in_bytes`                       | `hugetlb.2MB.max`        |
//!
//! The memory limit includes swap (v1 `memsw` equal to the limit, v2
//! `swap.max` 0) where the host accounts swap, so that a compartment cannot
//! escape it by swapping.

use super::{Controller, Version};

/// A CPU bandwidth limit: `quota_us` of CPU time per `period_us` of wall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuQuota {
    /// CPU time allowed per period, in microseconds (may exceed the period on several CPUs).
    pub quota_us: u64,
    /// The period, in microseconds (1 000 to 1 000 000).
    pub period_us: u64,
}

impl CpuQuota {
    /// `percent` of one CPU (150 is one and a half CPUs), over a 100 ms period.
    pub fn percent(percent: u64) -> CpuQuota {
        CpuQuota { quota_us: percent * 1000, period_us: 100_000 }
    }
}

/// Limits for one cgroup; `None` leaves a limit unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// CPU bandwidth.
    pub cpu_quota: Option<CpuQuota>,
    /// CPU shares in v1 units (1024 is the default weight); v2 converts to `cpu.weight`.
    pub cpu_shares: Option<u64>,
    /// Memory limit in bytes (swap included where the host accounts it).
    pub memory_max: Option<u64>,
    /// The most tasks (processes and threads).
    pub pids_max: Option<u64>,
    /// CPUs to pin to, in the kernel's list format (`0-3,6`).
    pub cpus: Option<String>,
    /// Memory nodes to allocate from (`0`); when CPUs are pinned and this is unset, the parent's.
    pub mems: Option<String>,
    /// Bytes of 2 MiB huge pages (guest memory on huge pages).
    pub hugetlb_2m_max: Option<u64>,
}

impl CgroupLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == CgroupLimits::default()
    }

    /// The controllers these limits need.
    pub fn controllers(&self) -> Vec<Controller> {
        let mut list = Vec::new();
        if self.cpu_quota.is_some() || self.cpu_shares.is_some() {
            list.push(Controller::Cpu);
        }
        if self.cpus.is_some() || self.mems.is_some() {
            list.push(Controller::Cpuset);
        }
        if self.memory_max.is_some() {
            list.push(Controller::Memory);
        }
        if self.pids_max.is_some() {
            list.push(Controller::Pids);
        }
        if self.hugetlb_2m_max.is_some() {
            list.push(Controller::Hugetlb);
        }
        list
    }
}

/// One value to write to one interface file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitWrite {
    /// The controller the file belongs to.
    pub controller: Controller,
    /// The limit's name, for reports.
    pub limit: &'static str,
    /// The interface file.
    pub file: &'static str,
    /// What to write.
    pub value: String,
    /// Skip quietly when the file does not exist (swap accounting is optional).
    pub optional: bool,
}

fn write(
    controller: Controller,
    limit: &'static str,
    file: &'static str,
    value: String,
) -> LimitWrite {
    LimitWrite { controller, limit, file, value, optional: false }
}

fn optional(
    controller: Controller,
    limit: &'static str,
    file: &'static str,
    value: String,
) -> LimitWrite {
    LimitWrite { controller, limit, file, value, optional: true }
}

/// v1 shares (2–262144) to v2 weight (1–10000), as the kernel and systemd map them.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The writes that apply `limits` on a hierarchy of `version`, in order.
pub fn writes(version: Version, limits: &CgroupLimits) -> Vec<LimitWrite> {
    use Controller::*;
    let mut out = Vec::new();
    match version {
        Version::V1 => {
            if let Some(q) = limits.cpu_quota {
                out.push(write(Cpu, "cpu quota", "cpu.cfs_period_us", q.period_us.to_string()));
                out.push(write(Cpu, "cpu quota", "cpu.cfs_quota_us", q.quota_us.to_string()));
            }
            if let Some(shares) = limits.cpu_shares {
                out.push(write(Cpu, "cpu shares", "cpu.shares", shares.to_string()));
            }
            if let Some(bytes) = limits.memory_max {
                let v = bytes.to_string();
                out.push(write(Memory, "memory", "memory.limit_in_bytes", v.clone()));
                out.push(optional(Memory, "memory", "memory.memsw.limit_in_bytes", v));
            }
        }
        Version::V2 => {
            if let Some(q) = limits.cpu_quota {
                let v = format!("{} {}", q.quota_us, q.period_us);
                out.push(write(Cpu, "cpu quota", "cpu.max", v));
            }
            if let Some(shares) = limits.cpu_shares {
                let v = shares_to_weight(shares).to_string();
                out.push(write(Cpu, "cpu shares", "cpu.weight", v));
            }
            if let Some(bytes) = limits.memory_max {
                out.push(write(Memory, "memory", "memory.max", bytes.to_string()));
                out.push(optional(Memory, "memory", "memory.swap.max", "0".into()));
            }
        }
    }
    if let Some(max) = limits.pids_max {
        out.push(write(Pids, "pids", "pids.max", max.to_string()));
    }
    if let Some(bytes) = limits.hugetlb_2m_max {
        let file = match version {
            Version::V1 => "hugetlb.2MB.limit_in_bytes",
            Version::V2 => "hugetlb.2MB.max",
        };
        out.push(write(Hugetlb, "hugetlb", file, bytes.to_string()));
    }
    // Memory nodes first: a cpuset needs both before it takes a task.
    if let Some(mems) = &limits.mems {
        out.push(write(Cpuset, "cpuset", "cpuset.mems", mems.clone()));
    }
    if let Some(cpus) = &limits.cpus {
        out.push(write(Cpuset, "cpuset", "cpuset.cpus", cpus.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(version: Version, limits: &CgroupLimits) -> Vec<(&'static str, String)> {
        writes(version, limits).into_iter().map(|w| (w.file, w.value)).collect()
    }

    #[test]
    fn v1_and_v2_files() {
        let limits = CgroupLimits {
            cpu_quota: Some(CpuQuota::percent(50)),
            cpu_shares: Some(512),
            memory_max: Some(64 << 20),
            pids_max: Some(16),
            cpus: Some("0".into()),
            mems: None,
            hugetlb_2m_max: Some(1 << 30),
        };
        assert_eq!(
            files(Version::V1, &limits),
            vec![
                ("cpu.cfs_period_us", "100000".into()),
                ("cpu.cfs_quota_us", "50000".into()),
                ("cpu.shares", "512".into()),
                ("memory.limit_in_bytes", "67108864".into()),
                ("memory.memsw.limit_in_bytes", "67108864".into()),
                ("pids.max", "16".into()),
                ("hugetlb.2MB.limit_in_bytes", "1073741824".into()),
                ("cpuset.cpus", "0".into()),
            ]
        );
        assert_eq!(
            files(Version::V2, &limits),
            vec![
                ("cpu.max", "50000 100000".into()),
                ("cpu.weight", "20".into()),
                ("memory.max", "67108864".into()),
                ("memory.swap.max", "0".into()),
                ("pids.max", "16".into()),
                ("hugetlb.2MB.max", "1073741824".into()),
                ("cpuset.cpus", "0".into()),
            ]
        );
        let needed = limits.controllers();
        assert_eq!(
            needed,
            vec![
                Controller::Cpu,
                Controller::Cpuset,
                Controller::Memory,
                Controller::Pids,
                Controller::Hugetlb
            ]
        );
    }

    #[test]
    fn weights_match_the_kernel_mapping() {
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert!(CgroupLimits::default().is_empty());
    }
}
