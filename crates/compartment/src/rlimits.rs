//! The resource-limit layer: `setrlimit(2)` for the compartment, soft and hard
//! limit alike, so that it cannot raise them again (what each limit means:
//! `bulkhead_sandbox::rlimits`).

use std::fmt::Write as _;

use bulkhead_sandbox::rlimits::{current, Rlimits};

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

/// Applies every limit `limits` sets to the calling process; returns the report
/// detail (`nofile 256, core 0, data 1G`).
///
/// A limit above the current hard limit is lowered to it, and the detail
/// says so, because raising a hard limit needs `CAP_SYS_RESOURCE`.
pub fn apply(limits: &Rlimits) -> Result<String, RlimitError> {
    let mut detail = String::new();
    for (name, resource, value) in limits.entries() {
        let Some(value) = value else { continue };
        let hard = current(resource).map(|(_, hard)| hard).unwrap_or(libc::RLIM_INFINITY);
        let applied = value.min(hard);
        let limit = libc::rlimit { rlim_cur: applied, rlim_max: applied };
        // SAFETY: `limit` is a valid rlimit that lives across the call.
        let rc = unsafe { libc::setrlimit(resource, &limit) };
        if rc != 0 {
            return Err(RlimitError::Set { name, value, source: std::io::Error::last_os_error() });
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
}
