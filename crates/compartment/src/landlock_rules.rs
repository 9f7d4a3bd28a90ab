//! The Landlock layer: the compartment may open only the paths its policy
//! lists, read-only or read-write, and nothing else; optionally it may not
//! bind or connect TCP sockets (ABI 4) and may not signal processes or reach
//! abstract unix sockets outside its sandbox (ABI 6).
//!
//! The rights handled are those of ABI 7, the version tested here; a kernel
//! with less gets what it has, and the report says "partial". Before ABI 8
//! Landlock restricts only the calling thread (and the threads it starts
//! later), so [`crate::enter()`] must run before the compartment starts threads;
//! if other threads exist and the kernel cannot restrict them too, the layer
//! is reported as not applied.

use std::fs;
use std::os::unix::fs::FileTypeExt;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, RestrictSelfAttr, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use bulkhead_sandbox::policy::{Access as PathAccess, PathRule};
use bulkhead_sandbox::report::LayerState;

/// The Landlock ABI whose rights are asked for.
const TESTED_ABI: ABI = ABI::V7;

/// Errors of the Landlock layer.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// A listed path cannot be opened.
    #[error("the policy lists {path}, which cannot be opened: fix the path or create it")]
    Path {
        /// The path.
        path: String,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The Landlock crate or kernel refused the ruleset.
    #[error("Landlock refused the ruleset")]
    Ruleset(#[from] landlock::RulesetError),
}

/// The kernel's Landlock ABI version, or why there is none.
pub fn kernel_abi() -> Result<i32, String> {
    // SAFETY: with a null attribute, size 0 and the VERSION flag, the call only returns a number.
    let rc = unsafe {
        libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32)
    };
    if rc >= 0 {
        return Ok(rc as i32);
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel is built without Landlock".to_string(),
        Some(libc::EOPNOTSUPP) => {
            "Landlock is off in this kernel: add `landlock` to the lsm= boot parameter".to_string()
        }
        _ => format!("the kernel gave no Landlock version: {e}"),
    })
}

/// What the rule for `rule.path` allows, for a file or for a directory tree.
fn rights(rule: &PathRule, is_dir: bool, is_device: bool) -> BitFlags<AccessFs> {
    let abi = TESTED_ABI;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let write_file = AccessFs::WriteFile | AccessFs::Truncate;
    let access = match rule.access {
        PathAccess::ReadOnly => read,
        PathAccess::ReadExec => read | AccessFs::Execute,
        // Everything but executing: create, remove, rename inside the tree.
        PathAccess::ReadWrite => AccessFs::from_all(abi) & !AccessFs::Execute,
    };
    let access = if is_dir { access } else { access & AccessFs::from_file(abi) };
    // Device ioctls only for a device listed read-write (a block device as disk).
    let access = if is_device && rule.access == PathAccess::ReadWrite {
        access
    } else {
        access & !AccessFs::IoctlDev
    };
    if rule.access == PathAccess::ReadWrite && !is_dir {
        access | write_file
    } else {
        access
    }
}

/// Restricts the process (all threads where the kernel can) to `paths`.
///
/// `threads` is the number of threads the process has now.
pub fn restrict(
    paths: &[PathRule],
    deny_tcp: bool,
    scope: bool,
    threads: usize,
) -> Result<LayerState, LandlockError> {
    let abi = match kernel_abi() {
        Ok(abi) => abi,
        Err(reason) => return Ok(LayerState::NotApplied { reason }),
    };
    let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(TESTED_ABI))?;
    let mut extras = Vec::new();
    if deny_tcp && abi >= 4 {
        ruleset = ruleset.handle_access(AccessNet::from_all(TESTED_ABI))?;
        extras.push("tcp");
    }
    if scope && abi >= 6 {
        ruleset = ruleset.scope(Scope::from_all(TESTED_ABI))?;
        extras.push("scope");
    }
    let mut created = ruleset.create()?;
    for rule in paths {
        let meta = fs::metadata(&rule.path).map_err(|source| LandlockError::Path {
            path: rule.path.display().to_string(),
            source,
        })?;
        let file_type = meta.file_type();
        let is_device = file_type.is_block_device() || file_type.is_char_device();
        let fd = PathFd::new(&rule.path).map_err(|e| LandlockError::Path {
            path: rule.path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        created = created.add_rule(PathBeneath::new(fd, rights(rule, meta.is_dir(), is_device)))?;
    }
    // Asked only when needed: a kernel that cannot give it (before ABI 8)
    // would count the request as a partial enforcement.
    if threads > 1 {
        created = created.all_threads(true)?;
    }
    let status = created.restrict_self()?;
    let mut detail = format!("abi {abi}, {} path{}", paths.len(), plural(paths.len()));
    for extra in extras {
        detail.push_str(", ");
        detail.push_str(extra);
    }
    let state = match status.ruleset {
        RulesetStatus::FullyEnforced => LayerState::Applied { detail },
        RulesetStatus::PartiallyEnforced => LayerState::Applied { detail: detail + ", partial" },
        RulesetStatus::NotEnforced => LayerState::NotApplied {
            reason: "the kernel enforces none of the rules asked for".into(),
        },
    };
    if threads > 1 && !status.all_threads {
        return Ok(LayerState::NotApplied {
            reason: format!(
                "only the calling thread is restricted: Landlock ABI {abi} cannot restrict the \
                 {} other thread{} (ABI 8 can); call enter() before starting threads",
                threads - 1,
                plural(threads - 1)
            ),
        });
    }
    Ok(state)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn rule(access: PathAccess) -> PathRule {
        PathRule { path: PathBuf::from("/x"), access }
    }

    #[test]
    fn file_rights_exclude_directory_rights() {
        let ro_file = rights(&rule(PathAccess::ReadOnly), false, false);
        assert_eq!(ro_file, AccessFs::ReadFile);
        let rw_file = rights(&rule(PathAccess::ReadWrite), false, false);
        assert_eq!(rw_file, AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate);
        let rw_disk = rights(&rule(PathAccess::ReadWrite), false, true);
        assert!(rw_disk.contains(AccessFs::IoctlDev));
        let rw_dir = rights(&rule(PathAccess::ReadWrite), true, false);
        assert!(rw_dir.contains(AccessFs::MakeReg) && !rw_dir.contains(AccessFs::Execute));
    }

    #[test]
    fn kernel_abi_is_a_version_or_a_reason() {
        match kernel_abi() {
            Ok(abi) => assert!(abi >= 1),
            Err(reason) => assert!(reason.contains("Landlock")),
        }
    }
}
