//! What each sandbox layer became on this host: applied, off by policy, or
//! wanted but not applied, with the reason. A layer the host cannot give is
//! reported here, never silently dropped.
//!
//! `Display` renders one line a user can read, for example
//! `ns(mnt,pid,ipc,uts,net,cgroup,-user) nnp root(empty) landlock(abi 7, 2 paths, tcp, scope)
//! caps(none) rlimits(nofile 256, core 0) seccomp(kill, 61 syscalls) cgroup(v1: cpu,memory,pids)`.
//! A layer that was wanted but could not be applied shows as
//! `landlock(NOT APPLIED: the kernel has no Landlock)`.

use std::fmt;

/// A namespace a compartment can be started in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespace {
    /// Mount namespace (`CLONE_NEWNS`).
    Mount,
    /// PID namespace (`CLONE_NEWPID`): the compartment is PID 1 of its own.
    Pid,
    /// System V IPC and POSIX message queues (`CLONE_NEWIPC`).
    Ipc,
    /// Host and domain name (`CLONE_NEWUTS`).
    Uts,
    /// Network stack (`CLONE_NEWNET`): no interface but a down loopback.
    Net,
    /// Cgroup root view (`CLONE_NEWCGROUP`).
    Cgroup,
    /// User and group IDs (`CLONE_NEWUSER`).
    User,
}

impl Namespace {
    /// Every namespace, in the order reports list them.
    pub const ALL: [Namespace; 7] = [
        Namespace::Mount,
        Namespace::Pid,
        Namespace::Ipc,
        Namespace::Uts,
        Namespace::Net,
        Namespace::Cgroup,
        Namespace::User,
    ];

    /// The `clone(2)` flag that creates it.
    pub fn clone_flag(self) -> u64 {
        let flag = match self {
            Namespace::Mount => libc::CLONE_NEWNS,
            Namespace::Pid => libc::CLONE_NEWPID,
            Namespace::Ipc => libc::CLONE_NEWIPC,
            Namespace::Uts => libc::CLONE_NEWUTS,
            Namespace::Net => libc::CLONE_NEWNET,
            Namespace::Cgroup => libc::CLONE_NEWCGROUP,
            Namespace::User => libc::CLONE_NEWUSER,
        };
        flag as u64
    }

    /// Short name, as `/proc/PID/ns/` names it.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Mount => "mnt",
            Namespace::Pid => "pid",
            Namespace::Ipc => "ipc",
            Namespace::Uts => "uts",
            Namespace::Net => "net",
            Namespace::Cgroup => "cgroup",
            Namespace::User => "user",
        }
    }

    /// The namespace with this short name.
    pub fn from_name(name: &str) -> Option<Namespace> {
        Namespace::ALL.into_iter().find(|ns| ns.name() == name)
    }
}

/// One layer of the sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerName {
    /// One namespace.
    Namespace(Namespace),
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// The private, empty, read-only root (pivot_root) in the mount namespace.
    Root,
    /// Landlock filesystem (and TCP, and scope) rules.
    Landlock,
    /// Capabilities: all five sets emptied, securebits locked.
    Capabilities,
    /// A change of user and group IDs.
    Identity,
    /// Resource limits.
    Rlimits,
    /// The seccomp-BPF allow-list.
    Seccomp,
    /// The compartment's cgroup and its limits.
    Cgroup,
}

impl fmt::Display for LayerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            LayerName::Namespace(ns) => return write!(f, "ns.{}", ns.name()),
            LayerName::NoNewPrivs => "nnp",
            LayerName::Root => "root",
            LayerName::Landlock => "landlock",
            LayerName::Capabilities => "caps",
            LayerName::Identity => "ids",
            LayerName::Rlimits => "rlimits",
            LayerName::Seccomp => "seccomp",
            LayerName::Cgroup => "cgroup",
        };
        f.write_str(name)
    }
}

/// What became of one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerState {
    /// In force; `detail` says how (for example `abi 7, 2 paths`), or is empty.
    Applied {
        /// How the layer is in force.
        detail: String,
    },
    /// Not applied because the policy does not ask for it.
    Off {
        /// Why the policy leaves it off.
        reason: String,
    },
    /// Wanted by the policy but not applied: the host could not give it.
    NotApplied {
        /// Why it could not be applied, in a sentence a user can act on.
        reason: String,
    },
}

/// One layer and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Which layer.
    pub name: LayerName,
    /// What became of it.
    pub state: LayerState,
}

/// The state of every layer of one compartment's sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    layers: Vec<Layer>,
}

impl Report {
    /// An empty report.
    pub fn new() -> Report {
        Report::default()
    }

    /// Records that `name` is in force, described by `detail` (may be empty).
    pub fn applied(&mut self, name: LayerName, detail: impl Into<String>) {
        self.set(name, LayerState::Applied { detail: detail.into() });
    }

    /// Records that the policy leaves `name` off.
    pub fn off(&mut self, name: LayerName, reason: impl Into<String>) {
        self.set(name, LayerState::Off { reason: reason.into() });
    }

    /// Records that `name` was wanted but the host could not give it.
    pub fn not_applied(&mut self, name: LayerName, reason: impl Into<String>) {
        self.set(name, LayerState::NotApplied { reason: reason.into() });
    }

    /// Sets the state of a layer, replacing an earlier state of the same layer.
    pub fn set(&mut self, name: LayerName, state: LayerState) {
        match self.layers.iter_mut().find(|layer| layer.name == name) {
            Some(layer) => layer.state = state,
            None => self.layers.push(Layer { name, state }),
        }
    }

    /// Adds every layer of `other`, replacing layers this report already has.
    pub fn merge(&mut self, other: &Report) {
        for layer in &other.layers {
            self.set(layer.name, layer.state.clone());
        }
    }

    /// Every layer recorded, in the order they were first recorded.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The layers that were wanted but not applied.
    pub fn missing(&self) -> impl Iterator<Item = &Layer> {
        self.layers.iter().filter(|layer| matches!(layer.state, LayerState::NotApplied { .. }))
    }

    /// Whether every wanted layer is applied.
    pub fn is_complete(&self) -> bool {
        self.missing().next().is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(ns) = namespaces_part(&self.layers) {
            parts.push(ns);
        }
        for layer in &self.layers {
            if matches!(layer.name, LayerName::Namespace(_)) {
                continue;
            }
            parts.push(match &layer.state {
                LayerState::Applied { detail } if detail.is_empty() => layer.name.to_string(),
                LayerState::Applied { detail } => format!("{}({detail})", layer.name),
                LayerState::Off { .. } => format!("-{}", layer.name),
                LayerState::NotApplied { reason } => {
                    format!("{}(NOT APPLIED: {reason})", layer.name)
                }
            });
        }
        f.write_str(&parts.join(" "))
    }
}

/// `ns(mnt,pid,-net; ipc,uts NOT APPLIED: reason)`, or `None` when no namespace is recorded.
fn namespaces_part(layers: &[Layer]) -> Option<String> {
    let mut names = Vec::new();
    let mut failures: Vec<(&str, Vec<&str>)> = Vec::new();
    for layer in layers {
        let LayerName::Namespace(ns) = layer.name else { continue };
        match &layer.state {
            LayerState::Applied { .. } => names.push(ns.name().to_string()),
            LayerState::Off { .. } => names.push(format!("-{}", ns.name())),
            LayerState::NotApplied { reason } => {
                match failures.iter_mut().find(|(r, _)| r == reason) {
                    Some((_, list)) => list.push(ns.name()),
                    None => failures.push((reason, vec![ns.name()])),
                }
            }
        }
    }
    if names.is_empty() && failures.is_empty() {
        return None;
    }
    let mut text = names.join(",");
    for (reason, list) in failures {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&format!("{} NOT APPLIED: {reason}", list.join(",")));
    }
    Some(format!("ns({text})"))
}

/// An error and its causes, `: `-separated, for a report's reason.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_one_readable_line() {
        let mut report = Report::new();
        for ns in [Namespace::Mount, Namespace::Pid, Namespace::Net] {
            report.applied(LayerName::Namespace(ns), "");
        }
        report.off(LayerName::Namespace(Namespace::User), "not asked");
        report.applied(LayerName::Landlock, "abi 7, 2 paths");
        report.applied(LayerName::Capabilities, "none");
        report.not_applied(LayerName::Seccomp, "the kernel has no seccomp");
        assert_eq!(
            report.to_string(),
            "ns(mnt,pid,net,-user) landlock(abi 7, 2 paths) caps(none) \
             seccomp(NOT APPLIED: the kernel has no seccomp)"
        );
        assert!(!report.is_complete());
        assert_eq!(report.missing().count(), 1);
    }

    #[test]
    fn namespace_failures_are_shown() {
        let mut report = Report::new();
        report.applied(LayerName::Namespace(Namespace::Mount), "");
        report.not_applied(LayerName::Namespace(Namespace::Uts), "EPERM");
        report.not_applied(LayerName::Namespace(Namespace::Net), "EPERM");
        report.applied(LayerName::NoNewPrivs, "");
        assert_eq!(report.to_string(), "ns(mnt; uts,net NOT APPLIED: EPERM) nnp");
    }

    #[test]
    fn merge_replaces_and_appends() {
        let mut a = Report::new();
        a.not_applied(LayerName::Cgroup, "later");
        let mut b = Report::new();
        b.applied(LayerName::Cgroup, "v1: pids");
        b.applied(LayerName::Rlimits, "core 0");
        a.merge(&b);
        assert_eq!(a.to_string(), "cgroup(v1: pids) rlimits(core 0)");
        assert!(a.is_complete());
    }

    #[test]
    fn reasons_carry_the_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("could not mount")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(with_causes(&e).starts_with("could not mount: Operation not permitted"));
    }

    #[test]
    fn namespace_names_round_trip() {
        for ns in Namespace::ALL {
            assert_eq!(Namespace::from_name(ns.name()), Some(ns));
        }
    }
}
