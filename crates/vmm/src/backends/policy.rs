//! The sandbox of each device, from what the device says it needs
//! (`bulkhead_devices::SandboxSpec`): the same policy is used by the core
//! to spawn the compartment (namespaces) and by the compartment to enter it
//! (no_new_privs, capabilities, Landlock, empty root, rlimits, seccomp).

use bulkhead_devices::SandboxSpec;
use bulkhead_sandbox::seccomp;
use bulkhead_sandbox::{DenyAction, IdMap, Namespaces, Policy, Rlimits, SyscallRule};

/// The host user and group a compartment runs as: the overflow IDs (`nobody`, `nogroup`),
/// which own nothing. Root inside the compartment's user namespace is this user outside it.
pub const COMPARTMENT_UID: u32 = 65534;
pub const COMPARTMENT_GID: u32 = 65534;

/// Namespaces every compartment gets: a user namespace whose root is the
/// unprivileged [`COMPARTMENT_UID`] on the host (the other namespaces belong
/// to it, so creating them needs no privilege of the core's), and new mount,
/// PID, IPC, UTS, network and cgroup namespaces. The network namespace is new
/// for every device, the net device included: it only uses the tap file
/// descriptor the core opened and passed, which keeps working across
/// namespaces.
fn namespaces(spec: Option<&SandboxSpec>) -> Namespaces {
    Namespaces {
        net: !spec.is_some_and(|s| s.needs_host_network),
        user: Some(IdMap::root_as(COMPARTMENT_UID, COMPARTMENT_GID)),
        ..Namespaces::default()
    }
}

/// The policy for a device; `spec` is `None` on the core's side before the
/// device is opened (only namespaces matter there).
pub fn policy_for(name: &str, spec: Option<&SandboxSpec>) -> anyhow::Result<Policy> {
    let mut builder = Policy::builder(name)
        .namespaces(namespaces(spec))
        .without_runtime_syscalls()
        .deny_action(DenyAction::KillProcess)
        .rlimits(Rlimits::default())
        .empty_root(true);
    if let Some(spec) = spec {
        builder = builder.allow_rules(device_rules(spec));
    }
    Ok(builder.build()?)
}

/// A device's seccomp rules, from what it says it needs: the sandbox's
/// baseline, the device's own calls, and `open`/`openat` failing with EACCES
/// instead of killing — glibc's malloc reads /proc/sys/vm/overcommit_memory
/// when a thread first needs a new arena, and copes with the failure; no file
/// is reachable anyway (Landlock, empty root) and the device opened its own
/// before. The one conversion from a device's needs to rules: its
/// compartment's filter, and in the core a monolithic device's threads and
/// the launcher's list.
pub fn device_rules(spec: &SandboxSpec) -> Vec<SyscallRule> {
    let mut rules = seccomp::baseline();
    rules.extend(spec.seccomp.iter().map(|r| match r.arg_eq {
        Some((index, value)) => SyscallRule::allow(r.name).arg_eq(index, value),
        None => SyscallRule::allow(r.name),
    }));
    rules.extend(["open", "openat"].map(|name| SyscallRule::errno(name, libc::EACCES)));
    rules
}
