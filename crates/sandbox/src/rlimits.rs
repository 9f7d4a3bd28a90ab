//! The resource limits of a compartment's policy. The compartment sets them
//! when it enters its sandbox (`bulkhead_compartment`): `setrlimit(2)`,
//! soft and hard limit alike, so that it cannot raise them again.
//!
//! Which limits mean what for a compartment:
//! - `RLIMIT_DATA` counts private writable mappings (heap, thread stacks) but
//!   not shared mappings, so it bounds the compartment's own memory while it
//!   maps all of guest RAM from the core's memfd (`MAP_SHARED`).
//! - `RLIMIT_AS` counts every mapping, guest RAM included, and glibc reserves
//!   64 MiB of address space per malloc arena: set it only to guest RAM plus a
//!   margin ([`Rlimits::address_space_for_guest`]).
//! - `RLIMIT_NPROC` counts every process *and thread* of the real user ID on
//!   the whole host (per user namespace), so for a compartment running as root
//!   in the host's user namespace it limits nothing useful and can break thread
//!   creation: the pids cgroup is the limit to use. It is off by default.
//! - `RLIMIT_FSIZE` makes a write past the size fail with `SIGXFSZ`, stderr
//!   redirected to a file included: only for compartments that write no files.

const MIB: u64 = 1 << 20;

/// Resource limits for a compartment; `None` leaves a limit as inherited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE`: one more than the highest file descriptor number it may open.
    pub nofile: Option<u64>,
    /// `RLIMIT_NPROC` (see the module docs before setting it).
    pub nproc: Option<u64>,
    /// `RLIMIT_CORE`: 0 (no core dumps of guest memory) by default.
    pub core: Option<u64>,
    /// `RLIMIT_FSIZE`: the largest file it may write.
    pub fsize: Option<u64>,
    /// `RLIMIT_DATA`: heap and private writable mappings.
    pub data: Option<u64>,
    /// `RLIMIT_AS`: the whole address space, guest RAM included.
    pub address_space: Option<u64>,
    /// `RLIMIT_MEMLOCK`: locked memory.
    pub memlock: Option<u64>,
}

impl Default for Rlimits {
    /// `nofile` 256, `core` 0, `data` 1 GiB; the rest inherited.
    ///
    /// 1 GiB of `RLIMIT_DATA` leaves a compartment room for its heap and a
    /// few dozen thread stacks (each reserves 2 MiB) while guest RAM, mapped
    /// shared, does not count against it.
    fn default() -> Rlimits {
        Rlimits {
            nofile: Some(256),
            nproc: None,
            core: Some(0),
            fsize: None,
            data: Some(1024 * MIB),
            address_space: None,
            memlock: None,
        }
    }
}

impl Rlimits {
    /// No limit set at all.
    pub fn none() -> Rlimits {
        Rlimits {
            nofile: None,
            nproc: None,
            core: None,
            fsize: None,
            data: None,
            address_space: None,
            memlock: None,
        }
    }

    /// An `RLIMIT_AS` for a compartment that maps `guest_bytes` of guest RAM:
    /// the RAM, plus `data` (or 1 GiB), plus 512 MiB for code, glibc's
    /// malloc arenas and the vDSO.
    pub fn address_space_for_guest(mut self, guest_bytes: u64) -> Rlimits {
        let own = self.data.unwrap_or(1024 * MIB);
        self.address_space = Some(guest_bytes.saturating_add(own).saturating_add(512 * MIB));
        self
    }

    /// Every limit: its name in reports, its resource, its value.
    pub fn entries(&self) -> [(&'static str, libc::__rlimit_resource_t, Option<u64>); 7] {
        [
            ("nofile", libc::RLIMIT_NOFILE, self.nofile),
            ("nproc", libc::RLIMIT_NPROC, self.nproc),
            ("core", libc::RLIMIT_CORE, self.core),
            ("fsize", libc::RLIMIT_FSIZE, self.fsize),
            ("data", libc::RLIMIT_DATA, self.data),
            ("as", libc::RLIMIT_AS, self.address_space),
            ("memlock", libc::RLIMIT_MEMLOCK, self.memlock),
        ]
    }

    /// Whether any limit is set.
    pub fn is_empty(&self) -> bool {
        self.entries().iter().all(|(_, _, value)| value.is_none())
    }
}

/// The current (soft, hard) limits of `resource`.
pub fn current(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(resource, &mut limit) };
    (rc == 0).then_some((limit.rlim_cur, limit.rlim_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_space_covers_guest_ram() {
        let limits = Rlimits::default().address_space_for_guest(4 << 30);
        assert_eq!(limits.address_space, Some((4u64 << 30) + (1 << 30) + (512 << 20)));
        assert!(Rlimits::none().is_empty());
        assert!(!Rlimits::default().is_empty());
    }
}
