//! Entering the sandbox, inside the compartment: after it has opened its
//! files and before it touches guest data or starts threads.
//!
//! Layers, in the order they must go (each needs something a later one takes away):
//! 1. compile the seccomp filter (a misspelt name fails here, before any change);
//! 2. `PR_SET_NO_NEW_PRIVS`;
//! 3. the empty root (needs `CAP_SYS_ADMIN`, and `/proc` to find the listed paths);
//! 4. resource limits (raising a hard limit needs `CAP_SYS_RESOURCE`);
//! 5. identity and capabilities (all dropped);
//! 6. Landlock (after the pivot: its rules name the paths of the new root);
//! 7. seccomp, on every thread.

use std::path::PathBuf;

use bulkhead_sandbox::caps::{self, CapsError};
use bulkhead_sandbox::policy::{Enforcement, PathRule, Policy};
use bulkhead_sandbox::report::{with_causes, LayerName, LayerState, Namespace, Report};
use bulkhead_sandbox::seccomp::{self, SeccompError};
use bulkhead_sandbox::spawn::SPAWN_ENV;

use crate::landlock_rules::{self, LandlockError};
use crate::rlimits::{self, RlimitError};
use crate::root;

/// Errors of entering the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    /// The seccomp filter cannot be built or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A listed path does not exist.
    #[error("the policy lists {path}, which cannot be resolved: fix the path or create it")]
    Path {
        /// The path.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("could not set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
    /// A resource limit failed.
    #[error(transparent)]
    Rlimit(#[from] RlimitError),
    /// Capabilities could not be dropped.
    #[error(transparent)]
    Caps(#[from] CapsError),
    /// Landlock refused the ruleset.
    #[error(transparent)]
    Landlock(#[from] LandlockError),
    /// A layer could not be applied and the policy requires every layer.
    #[error("the sandbox layer {layer} could not be applied and the policy requires it: {reason}")]
    Required {
        /// The layer.
        layer: LayerName,
        /// Why it could not be applied.
        reason: String,
    },
}

/// What `spawn` told the compartment through [`SPAWN_ENV`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct SpawnInfo {
    namespaces: Vec<Namespace>,
    parent_mount_ns: u64,
}

impl SpawnInfo {
    fn parse(value: &str) -> Option<SpawnInfo> {
        let mut namespaces = None;
        let mut parent_mount_ns = None;
        for part in value.split(';') {
            match part.split_once('=')? {
                ("ns", list) => {
                    let names = list.split(',').filter(|n| !n.is_empty());
                    namespaces = Some(names.map(Namespace::from_name).collect::<Option<Vec<_>>>()?);
                }
                ("mntns", inode) => parent_mount_ns = inode.parse().ok(),
                _ => {}
            }
        }
        Some(SpawnInfo { namespaces: namespaces?, parent_mount_ns: parent_mount_ns? })
    }

    fn from_env() -> Option<SpawnInfo> {
        SpawnInfo::parse(&std::env::var(SPAWN_ENV).ok()?)
    }
}

/// Applies every layer of `policy` but the namespaces (which `spawn` made)
/// and the cgroup (which the core manages) to the calling process, and
/// returns the report of all layers, namespaces included.
///
/// Call it once, after opening the files the compartment serves and before
/// starting threads (Landlock before ABI 8 restricts only the calling
/// thread; a thread started later inherits every layer).
pub fn enter(policy: &Policy) -> Result<Report, EnterError> {
    enter_with(policy, root::Extras::default(), &[], true)
}

/// [`enter`] for the launcher of an outside backend's program
/// (`crate::outside`): the root holds `extras` too, and no seccomp filter is
/// installed — the launcher installs the policy's on the program's process,
/// between `fork` and `execve`, and one of its own on itself. Landlock lets
/// it use `landlock` too: paths that exist once the root is built (those of
/// `extras`).
pub fn enter_before_exec(
    policy: &Policy,
    extras: root::Extras,
    landlock: &[PathRule],
) -> Result<Report, EnterError> {
    enter_with(policy, extras, landlock, false)
}

fn enter_with(
    policy: &Policy,
    extras: root::Extras,
    extra_rules: &[PathRule],
    install_seccomp: bool,
) -> Result<Report, EnterError> {
    let filter = seccomp::compile(policy.syscalls(), policy.deny_action())?;
    let paths = canonical_paths(policy.paths())?;
    let threads = std::fs::read_dir("/proc/self/task").map(Iterator::count).unwrap_or(1);
    let spawned = SpawnInfo::from_env();
    let mut layers = Layers { report: Report::new(), enforcement: policy.enforcement() };
    record_namespaces(policy, spawned.as_ref(), &mut layers.report);
    layers.check_namespaces()?;

    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(EnterError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    layers.set(LayerName::NoNewPrivs, LayerState::Applied { detail: String::new() })?;

    let root = if !policy.empty_root() {
        LayerState::Off { reason: "the policy keeps the host's root; Landlock guards it".into() }
    } else if !in_own_mount_namespace(spawned.as_ref()) {
        LayerState::NotApplied {
            reason: "not in a mount namespace of its own: start it with spawn and a mount \
                     namespace; Landlock guards the host's root"
                .into(),
        }
    } else {
        match root::make_root(&paths, &extras) {
            Ok(detail) => LayerState::Applied { detail },
            // What was done before the failure only hides more of the host.
            Err(e) => {
                let reason = format!("{}; Landlock guards the host's root", with_causes(&e));
                LayerState::NotApplied { reason }
            }
        }
    };
    // A program's root holds what it runs from: without it there is nothing to run.
    if let (false, LayerState::NotApplied { reason }) = (install_seccomp, &root) {
        return Err(EnterError::Required { layer: LayerName::Root, reason: reason.clone() });
    }
    layers.set(LayerName::Root, root)?;

    let limits = policy.rlimits();
    let rlimits = if limits.is_empty() {
        LayerState::Off { reason: "the policy sets no limit".into() }
    } else {
        LayerState::Applied { detail: rlimits::apply(limits)? }
    };
    layers.set(LayerName::Rlimits, rlimits)?;

    if let Some(id) = extras.run_as {
        become_user(id)?;
    }
    let dropped = caps::drop_all()?;
    // Capability sets belong to each thread: the others keep theirs.
    let caps = if threads > 1 {
        LayerState::NotApplied {
            reason: format!(
                "dropped for the calling thread only: the {} other thread{} keep{} theirs \
                 (capabilities are per thread); call enter() before starting threads",
                threads - 1,
                if threads == 2 { "" } else { "s" },
                if threads == 2 { "s" } else { "" },
            ),
        }
    } else {
        LayerState::Applied { detail: dropped }
    };
    layers.set(LayerName::Capabilities, caps)?;

    let mut paths = paths;
    paths.extend_from_slice(extra_rules);
    let landlock =
        landlock_rules::restrict(&paths, policy.landlock_tcp(), policy.landlock_scope(), threads)?;
    layers.set(LayerName::Landlock, landlock)?;

    if !install_seccomp {
        let reason = "installed by the program's launcher on each process it starts".into();
        layers.set(LayerName::Seccomp, LayerState::Off { reason })?;
        return Ok(layers.report);
    }
    filter.install_all_threads()?;
    let detail = format!(
        "{}, {} syscalls, all threads",
        filter.deny_action().label(),
        filter.allowed_syscalls()
    );
    layers.set(LayerName::Seccomp, LayerState::Applied { detail })?;
    Ok(layers.report)
}

/// Becomes user and group `id` (of the user namespace), with no supplementary group.
fn become_user(id: u32) -> Result<(), EnterError> {
    let call = |rc: libc::c_int, what: &'static str| {
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            return Err(EnterError::Caps(CapsError::Call { what, source }));
        }
        Ok(())
    };
    // Changing the user takes the other sets, not the bounding set, which needs CAP_SETPCAP.
    caps::drop_bounding_set()?;
    // SAFETY: setgroups with an empty list, then setresgid and setresuid with plain ids.
    unsafe {
        call(libc::setgroups(0, std::ptr::null()), "drop the supplementary groups")?;
        call(libc::setresgid(id, id, id), "become the program's group")?;
        call(libc::setresuid(id, id, id), "become the program's user")?;
        // A change of user clears the parent-death signal the spawn armed: armed again, the
        // process still dies with its core (a core gone in between is seen by the caller, whose
        // next word to it fails).
        call(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0),
            "arm the parent-death signal again",
        )
    }
}

struct Layers {
    report: Report,
    enforcement: Enforcement,
}

impl Layers {
    /// Records a layer; in required mode, a layer not applied is an error.
    fn set(&mut self, layer: LayerName, state: LayerState) -> Result<(), EnterError> {
        if let (Enforcement::Required, LayerState::NotApplied { reason }) =
            (self.enforcement, &state)
        {
            return Err(EnterError::Required { layer, reason: reason.clone() });
        }
        self.report.set(layer, state);
        Ok(())
    }

    fn check_namespaces(&self) -> Result<(), EnterError> {
        match (self.enforcement, self.report.missing().next()) {
            (Enforcement::Required, Some(layer)) => {
                let LayerState::NotApplied { reason } = &layer.state else { unreachable!() };
                Err(EnterError::Required { layer: layer.name, reason: reason.clone() })
            }
            _ => Ok(()),
        }
    }
}

fn canonical_paths(paths: &[PathRule]) -> Result<Vec<PathRule>, EnterError> {
    paths
        .iter()
        .map(|rule| {
            let path = std::fs::canonicalize(&rule.path)
                .map_err(|source| EnterError::Path { path: rule.path.clone(), source })?;
            Ok(PathRule { path, access: rule.access })
        })
        .collect()
}

fn record_namespaces(policy: &Policy, spawned: Option<&SpawnInfo>, report: &mut Report) {
    for ns in Namespace::ALL {
        let layer = LayerName::Namespace(ns);
        if !policy.namespaces().wants(ns) {
            report.off(layer, "the policy shares the host's");
            continue;
        }
        match spawned {
            Some(info) if info.namespaces.contains(&ns) => report.applied(layer, ""),
            Some(_) => {
                report.not_applied(layer, "spawn could not create it (the core's report says why)")
            }
            None => report.not_applied(layer, "not started by spawn: no namespace was created"),
        }
    }
}

/// Whether the process is in a mount namespace other than its spawner's.
fn in_own_mount_namespace(spawned: Option<&SpawnInfo>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(info) = spawned else { return false };
    if !info.namespaces.contains(&Namespace::Mount) {
        return false;
    }
    match std::fs::metadata("/proc/self/ns/mnt") {
        Ok(meta) => meta.ino() != info.parent_mount_ns,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_spawn_writes() {
        let info = SpawnInfo::parse("ns=mnt,pid,net;mntns=4026531841").unwrap();
        assert_eq!(info.namespaces, vec![Namespace::Mount, Namespace::Pid, Namespace::Net]);
        assert_eq!(info.parent_mount_ns, 4026531841);
        assert_eq!(SpawnInfo::parse("ns=;mntns=1").unwrap().namespaces, vec![]);
        assert!(SpawnInfo::parse("ns=mnt,bogus;mntns=1").is_none());
        assert!(SpawnInfo::parse("ns=mnt").is_none());
    }

    #[test]
    fn not_spawned_means_no_namespace_and_no_pivot() {
        let policy = Policy::builder("t").build().unwrap();
        let mut report = Report::new();
        record_namespaces(&policy, None, &mut report);
        assert_eq!(report.missing().count(), 6);
        assert!(!in_own_mount_namespace(None));
        // This test process shares its mount namespace with its "parent".
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::metadata("/proc/self/ns/mnt").unwrap().ino();
        let info = SpawnInfo { namespaces: vec![Namespace::Mount], parent_mount_ns: ours };
        assert!(!in_own_mount_namespace(Some(&info)));
    }
}
