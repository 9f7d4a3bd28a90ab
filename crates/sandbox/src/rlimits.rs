//! The resource-limit layer: `setrlimit(2)` for the compartment, soft and hard
//! limit alike, so that it cannot raise them again.
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

use std::fmt::Write as _;

/// Errors of the resource-limit layer.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    /// `setrlimit` failed.
    #[error("could not set {name} to {value}")]
    Set {
        /// The limit's name.
        name: &'static str,
        /// The value asked for.
        value: u64,
        /// What the kernel said.
        source: std::io::Error,
    },
}

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

    fn entries(&self) -> [(&'static str, libc::__rlimit_resource_t, Option<u64>); 7] {
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

    /// Applies every set limit to the calling process; returns the report
    /// detail (`nofile 256, core 0, data 1G`).
    ///
    /// A limit above the current hard limit is lowered to it, and the detail
    /// says so, because raising a hard limit needs `CAP_SYS_RESOURCE`.
    pub fn apply(&self) -> Result<String, RlimitError> {
        let mut detail = String::new();
        for (name, resource, value) in self.entries() {
            let Some(value) = value else { continue };
            let hard = current(resource).map(|(_, hard)| hard).unwrap_or(libc::RLIM_INFINITY);
            let applied = value.min(hard);
            let limit = libc::rlimit { rlim_cur: applied, rlim_max: applied };
            // SAFETY: `limit` is a valid rlimit that lives across the call.
            let rc = unsafe { libc::setrlimit(resource, &limit) };
            if rc != 0 {
                return Err(RlimitError::Set {
                    name,
                    value,
                    source: std::io::Error::last_os_error(),
                });
            }
            if !detail.is_empty() {
                detail.push_str(", ");
            }
            let _ = write!(detail, "{name} {}", human(applied));
            if applied < value {
                let _ = write!(detail, " (hard limit; asked {})", human(value));
            }
        }
        Ok(detail)
    }
}

/// The current (soft, hard) limits of `resource`.
pub fn current(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(resource, &mut limit) };
    (rc == 0).then_some((limit.rlim_cur, limit.rlim_max))
}

/// `1G`, `256M`, `64k`, or the plain number.
fn human(value: u64) -> String {
    if value == libc::RLIM_INFINITY {
        return "unlimited".into();
    }
    for (unit, size) in [("G", 1u64 << 30), ("M", 1 << 20), ("k", 1 << 10)] {
        if value >= size && value.is_multiple_of(size) {
            return format!("{}{unit}", value / size);
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(0), "0");
        assert_eq!(human(256), "256");
        assert_eq!(human(1 << 30), "1G");
        assert_eq!(human(3 << 20), "3M");
        assert_eq!(human(libc::RLIM_INFINITY), "unlimited");
    }

    #[test]
    fn address_space_covers_guest_ram() {
        let limits = Rlimits::default().address_space_for_guest(4 << 30);
        assert_eq!(limits.address_space, Some((4u64 << 30) + (1 << 30) + (512 << 20)));
        assert!(Rlimits::none().is_empty());
        assert!(!Rlimits::default().is_empty());
    }
}
