//! The capability layer: a compartment started by a root core gives up every
//! capability, in every set, for good.
//!
//! Order matters, because each step needs a capability a later step removes:
//! 1. clear the ambient set;
//! 2. drop every capability from the bounding set (needs `CAP_SETPCAP`), so
//!    that no `execve` can bring one back;
//! 3. lock the securebits `NOROOT`, `NO_SETUID_FIXUP` and `KEEP_CAPS` off
//!    (needs `CAP_SETPCAP`), so that being UID 0 grants nothing on `execve`;
//! 4. empty the effective, permitted and inheritable sets (`capset`).
//!
//! A compartment is not made another user here: it runs in a user namespace whose root is an
//! unprivileged user of the host (see the spawner's ID maps).
//!
//! Each step's outcome is checked: a step the process had no capability for
//! is reported in the detail, and the final sets are read back with `capget`.

use std::io;

/// Errors of the capability layer.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// A `prctl` or `capset` call failed.
    #[error("could not {what}")]
    Call {
        /// What was being done.
        what: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// Capabilities remain after dropping.
    #[error(
        "capabilities remain after dropping them (effective {effective:#x}, permitted \
         {permitted:#x}): the compartment must not run like this"
    )]
    Remaining {
        /// The effective set read back.
        effective: u64,
        /// The permitted set read back.
        permitted: u64,
    },
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// The capability sets of the calling thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSets {
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
}

/// Reads the calling thread's capability sets.
pub fn get() -> io::Result<CapSets> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData (version 3) to `data`, which has room for them.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

fn set_empty() -> io::Result<()> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads two CapData (version 3) from `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the prctl options used here take integer arguments only.
    let rc = unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Whether capability `cap` is in the bounding set (`None` past the last capability).
fn in_bounding_set(cap: u32) -> Option<bool> {
    prctl(libc::PR_CAPBSET_READ, cap.into()).ok().map(|rc| rc == 1)
}

/// Clears the ambient set and drops from the bounding set every capability not in `keep` (a
/// bit per capability); a bounding set that cannot be changed is a note, not an error.
fn clear_ambient_and_bounding(keep: u64, notes: &mut Vec<String>) -> Result<(), CapsError> {
    if let Err(e) = prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong) {
        // EINVAL: a kernel before 4.3 has no ambient set to clear.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(CapsError::Call { what: "clear the ambient capabilities", source: e });
        }
    }
    let mut cap = 0;
    while let Some(present) = in_bounding_set(cap) {
        if present && keep & (1 << cap) == 0 {
            match prctl(libc::PR_CAPBSET_DROP, cap.into()) {
                Ok(_) => {}
                // Without CAP_SETPCAP the set stays; no_new_privs keeps execve from using it.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    notes.push("bounding set kept (no CAP_SETPCAP)".to_string());
                    break;
                }
                Err(source) => {
                    return Err(CapsError::Call { what: "drop from the bounding set", source })
                }
            }
        }
        cap += 1;
    }
    Ok(())
}

/// Clears the ambient set and empties the bounding set: for a process about to change its
/// user, which takes its other sets away (the bounding set needs `CAP_SETPCAP`, held until
/// then). Returns notes for the report (a set that could not be changed).
pub fn drop_bounding_set() -> Result<Vec<String>, CapsError> {
    let mut notes = Vec::new();
    clear_ambient_and_bounding(0, &mut notes)?;
    Ok(notes)
}

/// Drops every capability; returns the report detail (`none`, or `none, securebits not
/// locked: …`).
pub fn drop_all() -> Result<String, CapsError> {
    let mut notes = Vec::new();
    clear_ambient_and_bounding(0, &mut notes)?;
    let bits = libc::SECBIT_NOROOT
        | libc::SECBIT_NOROOT_LOCKED
        | libc::SECBIT_NO_SETUID_FIXUP
        | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
        | libc::SECBIT_KEEP_CAPS_LOCKED;
    if let Err(e) = prctl(libc::PR_SET_SECUREBITS, bits as libc::c_ulong) {
        notes.push(format!("securebits not locked ({e})"));
    }
    set_empty().map_err(|source| CapsError::Call { what: "empty the capability sets", source })?;
    let sets = get().map_err(|source| CapsError::Call { what: "read capabilities", source })?;
    if sets.effective != 0 || sets.permitted != 0 || sets.inheritable != 0 {
        return Err(CapsError::Remaining { effective: sets.effective, permitted: sets.permitted });
    }
    let mut detail = String::from("none");
    for note in notes {
        detail.push_str(", ");
        detail.push_str(&note);
    }
    Ok(detail)
}

/// Keeps only the capabilities in `keep` (a bit per capability) in the
/// calling thread's bounding, effective and permitted sets; clears the
/// inheritable and ambient sets. For a thread that must hand some
/// capabilities on (the core's launcher: what a compartment needs to enter
/// its sandbox). Returns the report detail (`keep 0x…`).
pub fn keep_only(keep: u64) -> Result<String, CapsError> {
    let mut notes = Vec::new();
    clear_ambient_and_bounding(keep, &mut notes)?;
    let now = get().map_err(|source| CapsError::Call { what: "read capabilities", source })?;
    let kept = now.permitted & keep;
    set(kept, kept, 0)
        .map_err(|source| CapsError::Call { what: "reduce the capability sets", source })?;
    let mut detail = format!("keep {kept:#x}");
    for note in notes {
        detail.push_str(", ");
        detail.push_str(&note);
    }
    Ok(detail)
}

fn set(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let split = |v: u64| [v as u32, (v >> 32) as u32];
    let (e, p, i) = (split(effective), split(permitted), split(inheritable));
    let data = [
        CapData { effective: e[0], permitted: p[0], inheritable: i[0] },
        CapData { effective: e[1], permitted: p[1], inheritable: i[1] },
    ];
    // SAFETY: capset reads two CapData (version 3) from `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_capabilities() {
        let sets = get().unwrap();
        // Whatever this process holds, effective is a subset of permitted.
        assert_eq!(sets.effective & !sets.permitted, 0);
        assert!(in_bounding_set(0).is_some());
        assert_eq!(in_bounding_set(200), None);
    }
}
