//! A compartment's policy: everything the core needs to start it and the
//! compartment needs to enter its sandbox, in one value both sides build the
//! same way (a device crate provides a function returning its policy).

use std::path::{Path, PathBuf};

use crate::cgroup::CgroupLimits;
use crate::report::Namespace;
use crate::rlimits::Rlimits;
use crate::seccomp::{self, DenyAction, SyscallRule};

/// Errors found while building a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The name is unusable.
    #[error("the policy name `{0}` is not usable: use 1 to 64 letters, digits, `-`, `_` or `.`")]
    BadName(String),
    /// A path is relative.
    #[error("the policy names the relative path {0}: give absolute paths")]
    RelativePath(PathBuf),
    /// The seccomp rules do not compile.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

/// How a listed path may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read files, list directories.
    ReadOnly,
    /// Read, write and truncate files; in a directory also create and remove.
    ReadWrite,
    /// Read, and run programs (an outside backend's program and its libraries).
    ReadExec,
}

/// A path the compartment may use, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    /// Absolute path of a file or directory.
    pub path: PathBuf,
    /// How it may be used.
    pub access: Access,
}

/// What to do when the host cannot give a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Apply what the host gives; report the rest as not applied.
    BestEffort,
    /// Fail (`spawn` or `enter` returns an error) if any wanted layer cannot be applied.
    Required,
}

/// A one-ID mapping for a user namespace: `inside` in the compartment is
/// `outside` on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    /// User ID inside.
    pub inside_uid: u32,
    /// User ID on the host.
    pub outside_uid: u32,
    /// Group ID inside.
    pub inside_gid: u32,
    /// Group ID on the host.
    pub outside_gid: u32,
    /// A second ID mapped, the same for users and groups: (inside, on the host). An outside
    /// backend's launcher is the host's root inside, to reach the paths it is given below
    /// folders only root may search while it builds its root, then becomes the overflow user
    /// (mapped this way) and drops every capability before its program runs. Only a core
    /// running as root can write such a map.
    pub also: Option<(u32, u32)>,
}

impl IdMap {
    /// Root inside is `uid`/`gid` on the host.
    pub fn root_as(uid: u32, gid: u32) -> IdMap {
        IdMap { inside_uid: 0, outside_uid: uid, inside_gid: 0, outside_gid: gid, also: None }
    }
}

/// The namespaces a compartment is started in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespaces {
    /// Mount namespace (needed for the empty root).
    pub mount: bool,
    /// PID namespace: the compartment is PID 1 and sees no host process.
    pub pid: bool,
    /// IPC namespace.
    pub ipc: bool,
    /// UTS namespace.
    pub uts: bool,
    /// Network namespace: only a down loopback. Off for a net device that must reach the host's.
    pub net: bool,
    /// Cgroup namespace: the compartment sees its cgroup as the root.
    pub cgroup: bool,
    /// User namespace with this mapping; `None` runs in the host's.
    pub user: Option<IdMap>,
}

impl Default for Namespaces {
    /// Every namespace but the user namespace.
    fn default() -> Namespaces {
        Namespaces {
            mount: true,
            pid: true,
            ipc: true,
            uts: true,
            net: true,
            cgroup: true,
            user: None,
        }
    }
}

impl Namespaces {
    /// No new namespace at all.
    pub fn none() -> Namespaces {
        Namespaces {
            mount: false,
            pid: false,
            ipc: false,
            uts: false,
            net: false,
            cgroup: false,
            user: None,
        }
    }

    /// Whether `ns` is wanted.
    pub fn wants(&self, ns: Namespace) -> bool {
        match ns {
            Namespace::Mount => self.mount,
            Namespace::Pid => self.pid,
            Namespace::Ipc => self.ipc,
            Namespace::Uts => self.uts,
            Namespace::Net => self.net,
            Namespace::Cgroup => self.cgroup,
            Namespace::User => self.user.is_some(),
        }
    }

    /// The wanted namespaces, in report order.
    pub fn wanted(&self) -> Vec<Namespace> {
        Namespace::ALL.into_iter().filter(|&ns| self.wants(ns)).collect()
    }
}

/// One compartment's sandbox, built with [`Policy::builder`].
#[derive(Clone, Debug)]
pub struct Policy {
    name: String,
    namespaces: Namespaces,
    paths: Vec<PathRule>,
    syscalls: Vec<SyscallRule>,
    deny: DenyAction,
    rlimits: Rlimits,
    cgroup: CgroupLimits,
    empty_root: bool,
    landlock_tcp: bool,
    landlock_scope: bool,
    enforcement: Enforcement,
}

impl Policy {
    /// Starts a policy named `name` (it names the compartment's cgroup too) with
    /// the defaults: every namespace but the user namespace, an empty
    /// read-only root, no path, Landlock denying TCP and signals or abstract
    /// sockets outside the sandbox, no capability, [`Rlimits::default`], the
    /// [`seccomp::runtime`] allow-list with [`DenyAction::KillProcess`], no
    /// cgroup limit, best effort.
    pub fn builder(name: &str) -> PolicyBuilder {
        PolicyBuilder {
            policy: Policy {
                name: name.to_string(),
                namespaces: Namespaces::default(),
                paths: Vec::new(),
                syscalls: seccomp::runtime(),
                deny: DenyAction::KillProcess,
                rlimits: Rlimits::default(),
                cgroup: CgroupLimits::default(),
                empty_root: true,
                landlock_tcp: true,
                landlock_scope: true,
                enforcement: Enforcement::BestEffort,
            },
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespaces wanted.
    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// The paths the compartment may use.
    pub fn paths(&self) -> &[PathRule] {
        &self.paths
    }

    /// The seccomp allow-list.
    pub fn syscalls(&self) -> &[SyscallRule] {
        &self.syscalls
    }

    /// What seccomp does to a call outside the list.
    pub fn deny_action(&self) -> DenyAction {
        self.deny
    }

    /// Resource limits.
    pub fn rlimits(&self) -> &Rlimits {
        &self.rlimits
    }

    /// Cgroup limits.
    pub fn cgroup_limits(&self) -> &CgroupLimits {
        &self.cgroup
    }

    /// Replaces the cgroup limits (the core sets them per VM, after the
    /// device's policy is built).
    pub fn set_cgroup_limits(&mut self, limits: CgroupLimits) {
        self.cgroup = limits;
    }

    /// Whether the root is replaced by an empty read-only tmpfs holding only the listed paths.
    pub fn empty_root(&self) -> bool {
        self.empty_root
    }

    /// Whether Landlock denies TCP bind and connect.
    pub fn landlock_tcp(&self) -> bool {
        self.landlock_tcp
    }

    /// Whether Landlock scopes signals and abstract unix sockets to the sandbox.
    pub fn landlock_scope(&self) -> bool {
        self.landlock_scope
    }

    /// Best effort or required.
    pub fn enforcement(&self) -> Enforcement {
        self.enforcement
    }
}

/// Builds a [`Policy`]; every method has a sensible default.
#[derive(Clone, Debug)]
pub struct PolicyBuilder {
    policy: Policy,
}

impl PolicyBuilder {
    /// Sets the namespaces.
    pub fn namespaces(mut self, namespaces: Namespaces) -> Self {
        self.policy.namespaces = namespaces;
        self
    }

    /// Stays in the host's network namespace (the net device).
    pub fn share_network(mut self) -> Self {
        self.policy.namespaces.net = false;
        self
    }

    /// Starts the compartment in a user namespace with this mapping.
    pub fn user_namespace(mut self, map: IdMap) -> Self {
        self.policy.namespaces.user = Some(map);
        self
    }

    /// Lets the compartment read `path` (a file or a directory tree).
    pub fn read_only(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        self.policy.paths.push(PathRule { path, access: Access::ReadOnly });
        self
    }

    /// Lets the compartment read `path` and run the programs in it.
    pub fn read_exec(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        self.policy.paths.push(PathRule { path, access: Access::ReadExec });
        self
    }

    /// Lets the compartment read and write `path` (a file or a directory tree).
    pub fn read_write(mut self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        self.policy.paths.push(PathRule { path, access: Access::ReadWrite });
        self
    }

    /// Allows these system calls, by name, with any arguments.
    pub fn allow_syscalls(mut self, names: &[&str]) -> Self {
        self.policy.syscalls.extend(seccomp::rules(names));
        self
    }

    /// Adds these rules to the allow-list.
    pub fn allow_rules(mut self, rules: impl IntoIterator<Item = SyscallRule>) -> Self {
        self.policy.syscalls.extend(rules);
        self
    }

    /// Empties the allow-list, [`seccomp::runtime`] included: the caller lists everything.
    pub fn without_runtime_syscalls(mut self) -> Self {
        self.policy.syscalls.clear();
        self
    }

    /// What seccomp does to a call outside the list.
    pub fn deny_action(mut self, action: DenyAction) -> Self {
        self.policy.deny = action;
        self
    }

    /// Sets the resource limits.
    pub fn rlimits(mut self, rlimits: Rlimits) -> Self {
        self.policy.rlimits = rlimits;
        self
    }

    /// Sets the cgroup limits; any limit makes `spawn` create a cgroup for the compartment.
    pub fn cgroup_limits(mut self, limits: CgroupLimits) -> Self {
        self.policy.cgroup = limits;
        self
    }

    /// Whether to replace the root by an empty read-only tmpfs holding only the listed paths.
    pub fn empty_root(mut self, yes: bool) -> Self {
        self.policy.empty_root = yes;
        self
    }

    /// Whether Landlock denies TCP bind and connect.
    pub fn landlock_tcp(mut self, yes: bool) -> Self {
        self.policy.landlock_tcp = yes;
        self
    }

    /// Whether Landlock scopes signals and abstract unix sockets to the sandbox.
    pub fn landlock_scope(mut self, yes: bool) -> Self {
        self.policy.landlock_scope = yes;
        self
    }

    /// Best effort or required.
    pub fn enforcement(mut self, enforcement: Enforcement) -> Self {
        self.policy.enforcement = enforcement;
        self
    }

    /// Checks the policy: usable name, absolute paths, known system calls.
    pub fn build(self) -> Result<Policy, PolicyError> {
        let policy = self.policy;
        let name_ok = !policy.name.is_empty()
            && policy.name.len() <= 64
            && !policy.name.starts_with('.')
            && policy.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(PolicyError::BadName(policy.name));
        }
        if let Some(rule) = policy.paths.iter().find(|rule| !rule.path.is_absolute()) {
            return Err(PolicyError::RelativePath(rule.path.clone()));
        }
        seccomp::compile(&policy.syscalls, policy.deny)?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_strict() {
        let policy = Policy::builder("blk0").build().unwrap();
        assert_eq!(policy.namespaces().wanted().len(), 6);
        assert!(policy.empty_root());
        assert_eq!(policy.deny_action(), DenyAction::KillProcess);
        assert_eq!(policy.enforcement(), Enforcement::BestEffort);
        assert!(!policy.syscalls().is_empty());
    }

    #[test]
    fn net_device_shares_the_network() {
        let policy = Policy::builder("net0").share_network().build().unwrap();
        assert!(!policy.namespaces().wants(Namespace::Net));
        assert!(policy.namespaces().wants(Namespace::Pid));
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(Policy::builder("a/b").build().unwrap_err(), PolicyError::BadName(_)));
        assert!(matches!(
            Policy::builder("blk").read_only("disk.img").build().unwrap_err(),
            PolicyError::RelativePath(_)
        ));
        assert!(matches!(
            Policy::builder("blk").allow_syscalls(&["preadv3"]).build().unwrap_err(),
            PolicyError::Seccomp(_)
        ));
    }
}
