//! The sandbox of each device, from what the device says it needs
//! (`bulkhead_devices::SandboxSpec`): the same policy is used by the core
//! to spawn the compartment (namespaces) and by the compartment to enter it
//! (no_new_privs, capabilities, Landlock, empty root, rlimits, seccomp).

use bulkhead_devices::SandboxSpec;
use bulkhead_sandbox::{DenyAction, Namespaces, Policy, Rlimits, SyscallRule};

/// Namespaces every compartment gets. The network namespace is new for
/// every device, the net device included: it only uses the tap file
/// descriptor the core opened and passed, which keeps working across
/// namespaces.
fn namespaces(spec: Option<&SandboxSpec>) -> Namespaces {
    Namespaces { net: !spec.is_some_and(|s| s.needs_host_network), ..Namespaces::default() }
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
        let rules = spec.seccomp.iter().map(|r| match r.arg_eq {
            Some((index, value)) => SyscallRule::allow(r.name).arg_eq(index, value),
            None => SyscallRule::allow(r.name),
        });
        // Opening files fails with EACCES instead of killing: glibc's malloc
        // reads /proc/sys/vm/overcommit_memory when a thread first needs a
        // new arena, and copes with the failure. No file is reachable anyway
        // (Landlock, empty root); the device opened its own before.
        let refusals = ["open", "openat"].map(|name| SyscallRule::errno(name, libc::EACCES));
        builder = builder.allow_rules(rules.chain(refusals).collect::<Vec<_>>());
    }
    Ok(builder.build()?)
}
