//! The seccomp-BPF layer: an allow-list of system calls, by name, compiled
//! with `seccompiler` for x86-64 and installed on every thread of the
//! process (`SECCOMP_FILTER_FLAG_TSYNC`).
//!
//! A rule names a system call and, optionally, conditions on its arguments
//! (all must hold; several rules for one call are alternatives). A rule may
//! instead make a call fail with a chosen errno — the way to make glibc fall
//! back from `clone3`, whose flags a filter cannot see, to `clone`, whose
//! flags it can. Such rules go into a second, small filter; the kernel runs
//! both and the stricter answer wins.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::syscall_table::TABLE;

/// Errors of the seccomp layer.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule names a system call x86-64 does not have.
    #[error("the seccomp allow-list names `{0}`, which is no x86-64 system call: fix the name")]
    UnknownSyscall(String),
    /// seccompiler refused the rules.
    #[error("the seccomp rules could not be compiled: {0}")]
    Compile(String),
    /// The kernel refused the filter.
    #[error("the kernel refused the seccomp filter: {0}")]
    Install(String),
}

/// The number of the x86-64 system call `name`.
pub fn syscall_number(name: &str) -> Option<i64> {
    TABLE.iter().find(|(n, _)| *n == name).map(|&(_, nr)| nr)
}

/// The name of x86-64 system call `nr`.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    TABLE.iter().find(|&&(_, n)| n == nr).map(|&(name, _)| name)
}

/// What the filter does to a call that is not allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyAction {
    /// Kill the whole process (`SECCOMP_RET_KILL_PROCESS`): production.
    KillProcess,
    /// Fail the call with this errno (`SECCOMP_RET_ERRNO`): debugging.
    Errno(i32),
    /// Allow the call but log it to the kernel's audit log (`SECCOMP_RET_LOG`).
    Log,
    /// Send `SIGSYS` to the calling thread (`SECCOMP_RET_TRAP`).
    Trap,
}

impl DenyAction {
    fn to_seccompiler(self) -> SeccompAction {
        match self {
            DenyAction::KillProcess => SeccompAction::KillProcess,
            DenyAction::Errno(errno) => SeccompAction::Errno(errno as u32),
            DenyAction::Log => SeccompAction::Log,
            DenyAction::Trap => SeccompAction::Trap,
        }
    }

    /// Short name for reports: `kill`, `errno 1`, `log`, `trap`.
    pub fn label(self) -> String {
        match self {
            DenyAction::KillProcess => "kill".into(),
            DenyAction::Errno(errno) => format!("errno {errno}"),
            DenyAction::Log => "log".into(),
            DenyAction::Trap => "trap".into(),
        }
    }
}

/// How an argument is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgOp {
    /// `arg == value`
    Eq,
    /// `arg != value`
    Ne,
    /// `arg < value`
    Lt,
    /// `arg <= value`
    Le,
    /// `arg > value`
    Gt,
    /// `arg >= value`
    Ge,
    /// `arg & mask == value`
    MaskedEq(u64),
}

/// A condition on one argument of a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgCondition {
    /// Argument index, 0 to 5.
    pub index: u8,
    /// The comparison.
    pub op: ArgOp,
    /// The value compared against.
    pub value: u64,
    /// Compare only the low 32 bits (for `int` arguments such as an ioctl request).
    pub low32: bool,
}

impl ArgCondition {
    /// A 64-bit comparison of argument `index`.
    pub fn new(index: u8, op: ArgOp, value: u64) -> ArgCondition {
        ArgCondition { index, op, value, low32: false }
    }

    /// A comparison of the low 32 bits of argument `index`.
    pub fn low32(index: u8, op: ArgOp, value: u64) -> ArgCondition {
        ArgCondition { index, op, value, low32: true }
    }

    fn to_seccompiler(self) -> Result<SeccompCondition, SeccompError> {
        let len = if self.low32 { SeccompCmpArgLen::Dword } else { SeccompCmpArgLen::Qword };
        let op = match self.op {
            ArgOp::Eq => SeccompCmpOp::Eq,
            ArgOp::Ne => SeccompCmpOp::Ne,
            ArgOp::Lt => SeccompCmpOp::Lt,
            ArgOp::Le => SeccompCmpOp::Le,
            ArgOp::Gt => SeccompCmpOp::Gt,
            ArgOp::Ge => SeccompCmpOp::Ge,
            ArgOp::MaskedEq(mask) => SeccompCmpOp::MaskedEq(mask),
        };
        SeccompCondition::new(self.index, len, op, self.value)
            .map_err(|e| SeccompError::Compile(e.to_string()))
    }
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    /// Allow the call.
    Allow,
    /// Fail the call with this errno (for example `ENOSYS` for `clone3`).
    Errno(i32),
}

/// One entry of an allow-list: a system call, by name, and conditions on its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallRule {
    name: String,
    conditions: Vec<ArgCondition>,
    action: RuleAction,
}

impl SyscallRule {
    /// Allows `name` with any arguments.
    pub fn allow(name: &str) -> SyscallRule {
        SyscallRule { name: name.to_string(), conditions: Vec::new(), action: RuleAction::Allow }
    }

    /// Makes `name` fail with `errno` instead of running (and instead of the deny action).
    pub fn errno(name: &str, errno: i32) -> SyscallRule {
        SyscallRule {
            name: name.to_string(),
            conditions: Vec::new(),
            action: RuleAction::Errno(errno),
        }
    }

    /// Adds a condition: the rule matches only when every condition holds.
    pub fn when(mut self, condition: ArgCondition) -> SyscallRule {
        self.conditions.push(condition);
        self
    }

    /// Shorthand for `when(ArgCondition::new(index, ArgOp::Eq, value))`.
    pub fn arg_eq(self, index: u8, value: u64) -> SyscallRule {
        self.when(ArgCondition::new(index, ArgOp::Eq, value))
    }

    /// The system call's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The conditions on its arguments.
    pub fn conditions(&self) -> &[ArgCondition] {
        &self.conditions
    }

    /// What a match does.
    pub fn action(&self) -> RuleAction {
        self.action
    }
}

impl From<&str> for SyscallRule {
    fn from(name: &str) -> SyscallRule {
        SyscallRule::allow(name)
    }
}

/// Compiled filters, ready to install.
#[derive(Clone, Debug)]
pub struct CompiledFilter {
    main: BpfProgram,
    errno: Option<BpfProgram>,
    allowed: usize,
    action: DenyAction,
}

impl CompiledFilter {
    /// How many distinct system calls the allow-list lets through (at least in part).
    pub fn allowed_syscalls(&self) -> usize {
        self.allowed
    }

    /// The action taken on a call outside the list.
    pub fn deny_action(&self) -> DenyAction {
        self.action
    }

    /// Instructions in the main filter.
    pub fn len(&self) -> usize {
        self.main.len()
    }

    /// Whether the main filter is empty (never: it always checks the architecture).
    pub fn is_empty(&self) -> bool {
        self.main.is_empty()
    }

    /// Installs the filters on every thread of the calling process.
    ///
    /// Sets `PR_SET_NO_NEW_PRIVS` first (seccompiler does), as an unprivileged
    /// filter requires.
    pub fn install_all_threads(&self) -> Result<(), SeccompError> {
        if let Some(errno) = &self.errno {
            seccompiler::apply_filter_all_threads(errno)
                .map_err(|e| SeccompError::Install(e.to_string()))?;
        }
        seccompiler::apply_filter_all_threads(&self.main)
            .map_err(|e| SeccompError::Install(e.to_string()))
    }

    /// Installs the filters on the calling thread only: the core's threads
    /// each install the filter of their class. Threads the caller starts
    /// afterwards inherit it.
    ///
    /// Sets `PR_SET_NO_NEW_PRIVS` on the thread first (seccompiler does).
    pub fn install_this_thread(&self) -> Result<(), SeccompError> {
        if let Some(errno) = &self.errno {
            seccompiler::apply_filter(errno).map_err(|e| SeccompError::Install(e.to_string()))?;
        }
        seccompiler::apply_filter(&self.main).map_err(|e| SeccompError::Install(e.to_string()))
    }
}

impl CompiledFilter {
    /// Installs the main filter on the calling thread with every call it would log sent
    /// instead to the returned listener (`SECCOMP_RET_USER_NOTIF`), where another process
    /// sees each one ([`Listener`]) — how an outside backend's profile is derived. Only for a
    /// filter compiled with [`DenyAction::Log`] and without errno rules.
    ///
    /// The calling thread must have set `PR_SET_NO_NEW_PRIVS`. After it returns, every call
    /// outside the list waits until the listener answers: make no such call before the
    /// listener is in another process's hands.
    pub fn install_with_listener(&self) -> Result<std::os::fd::OwnedFd, SeccompError> {
        if self.action != DenyAction::Log || self.errno.is_some() {
            return Err(SeccompError::Install(
                "only a log filter without errno rules can notify a listener".into(),
            ));
        }
        let mut program = self.main.clone();
        for insn in &mut program {
            // `ret #SECCOMP_RET_LOG` becomes `ret #SECCOMP_RET_USER_NOTIF`.
            if insn.code == (libc::BPF_RET | libc::BPF_K) as u16 && insn.k == libc::SECCOMP_RET_LOG
            {
                insn.k = libc::SECCOMP_RET_USER_NOTIF;
            }
        }
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_mut_ptr().cast::<libc::sock_filter>(),
        };
        // SAFETY: fprog points at `program`, alive for the call; the kernel copies it. The
        // layouts of seccompiler's and libc's sock_filter are the kernel's.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &fprog as *const libc::sock_fprog,
            )
        };
        if fd < 0 {
            return Err(SeccompError::Install(std::io::Error::last_os_error().to_string()));
        }
        // SAFETY: the kernel just returned this new descriptor, owned by nobody else.
        Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
    }
}

/// The receiving end of [`CompiledFilter::install_with_listener`]: each call outside the
/// list, which it lets go on as if allowed.
#[derive(Debug)]
pub struct Listener {
    fd: std::os::fd::OwnedFd,
}

impl Listener {
    /// The listener on `fd`.
    pub fn new(fd: std::os::fd::OwnedFd) -> Listener {
        Listener { fd }
    }

    /// The descriptor, readable when a call waits (and hung up when no process is left).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Takes the waiting call, lets it go on, and returns its system call number; `None` when
    /// the caller went away before the answer (it was killed, or the call interrupted).
    pub fn take(&self) -> std::io::Result<Option<i64>> {
        use std::os::fd::AsRawFd;
        // SAFETY: all-zero is a valid seccomp_notif (the kernel requires it zeroed).
        let mut notif: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the ioctl fills `notif`, which is of the size it expects.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut notif) }
            != 0
        {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: all-zero is a valid seccomp_notif_resp.
        let mut resp: libc::seccomp_notif_resp = unsafe { std::mem::zeroed() };
        resp.id = notif.id;
        resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
        // SAFETY: the ioctl reads `resp`, of the size it expects.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) }
            != 0
        {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
        }
        Ok(Some(i64::from(notif.data.nr)))
    }
}

/// Compiles `rules` into filters that apply `deny` to every other call.
pub fn compile(rules: &[SyscallRule], deny: DenyAction) -> Result<CompiledFilter, SeccompError> {
    let mut allow: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional: Vec<i64> = Vec::new();
    let mut errno_unconditional: Vec<(i32, i64)> = Vec::new();
    let mut errno_rules: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let nr = syscall_number(&rule.name)
            .ok_or_else(|| SeccompError::UnknownSyscall(rule.name.clone()))?;
        let conditions =
            rule.conditions.iter().map(|c| c.to_seccompiler()).collect::<Result<Vec<_>, _>>()?;
        let compiled = if conditions.is_empty() {
            None
        } else {
            Some(SeccompRule::new(conditions).map_err(|e| SeccompError::Compile(e.to_string()))?)
        };
        match (rule.action, compiled) {
            // The main filter lets an errno rule's call through, so that the
            // errno filter's answer is the one the caller sees.
            (RuleAction::Errno(errno), compiled) => {
                let map = errno_rules.entry(errno).or_default();
                match compiled {
                    Some(compiled) => map.entry(nr).or_default().push(compiled),
                    None => errno_unconditional.push((errno, nr)),
                }
                unconditional.push(nr);
            }
            (RuleAction::Allow, None) => unconditional.push(nr),
            (RuleAction::Allow, Some(compiled)) => allow.entry(nr).or_default().push(compiled),
        }
    }
    // An unconditional rule makes every conditional rule of the same call moot.
    for nr in unconditional {
        allow.insert(nr, Vec::new());
    }
    for (errno, nr) in errno_unconditional {
        errno_rules.entry(errno).or_default().insert(nr, Vec::new());
    }
    let allowed = allow.len();
    let main = build(allow, deny.to_seccompiler(), SeccompAction::Allow)?;
    let errno = match errno_rules.len() {
        0 => None,
        1 => {
            let (errno, rules) = errno_rules.into_iter().next().expect("one entry");
            Some(build(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32))?)
        }
        _ => {
            return Err(SeccompError::Compile(
                "errno rules with different errno values are not supported: use one errno".into(),
            ))
        }
    };
    Ok(CompiledFilter { main, errno, allowed, action: deny })
}

/// Installs on the calling thread a filter that answers each call in `names` with `errno`
/// and lets every other call through: a deny-list, for a thread whose calls cannot be
/// listed ahead (the core's launcher when it may execute a new core, which starts under the
/// filter). Sets
/// `PR_SET_NO_NEW_PRIVS` on the thread first (seccompiler does). Returns how many calls it
/// denies.
pub fn install_deny_list_this_thread(names: &[&str], errno: i32) -> Result<usize, SeccompError> {
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in names {
        let nr =
            syscall_number(name).ok_or_else(|| SeccompError::UnknownSyscall(name.to_string()))?;
        denied.insert(nr, Vec::new());
    }
    let count = denied.len();
    let program = build(denied, SeccompAction::Allow, SeccompAction::Errno(errno as u32))?;
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(e.to_string()))?;
    Ok(count)
}

fn build(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))
}

/// Names to allow-list rules: `rules(&["read", "write"])`.
pub fn rules(names: &[&str]) -> Vec<SyscallRule> {
    names.iter().map(|name| SyscallRule::allow(name)).collect()
}

/// The baseline: what every thread of every Bulkhead process may call, whatever else it
/// does — reading, writing and closing the descriptors it holds, memory, futexes, returning
/// from a signal handler and masking signals, yielding, its own ids, ending. Every allow-list
/// starts from it ([`baseline`]): each class of the core's threads, a compartment's runtime
/// ([`runtime`]) and each device's compartment.
pub const BASELINE: &[&str] = &[
    "read",
    "write",
    "close",
    "futex",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "brk",
    "rt_sigreturn",
    "rt_sigprocmask",
    "sigaltstack",
    "sched_yield",
    "gettid",
    "getpid",
    "exit",
    "exit_group",
    "restart_syscall",
];

/// [`BASELINE`] as rules, and `fcntl` for `F_GETFD` only (std's OwnedFd checks, in debug
/// builds, that a descriptor it closes is open).
pub fn baseline() -> Vec<SyscallRule> {
    let mut list = rules(BASELINE);
    let getfd = ArgCondition::low32(1, ArgOp::Eq, libc::F_GETFD as u64);
    list.push(SyscallRule::allow("fcntl").when(getfd));
    list
}

/// The system calls a Rust program built on `std` and glibc needs to run
/// threads, allocate memory, write to its file descriptors and exit: the
/// [`baseline`], time, random numbers, vectored I/O, signal handlers, threads.
///
/// `clone3` fails with `ENOSYS` (glibc then uses `clone`, whose flags the
/// filter can check), and `clone` is allowed only for threads and never with a
/// namespace flag; `prctl` only for naming a thread.
pub fn runtime() -> Vec<SyscallRule> {
    let mut list = baseline();
    list.extend(rules(&[
        "readv",
        "writev",
        "rt_sigaction",
        "sched_getaffinity",
        "clock_gettime",
        "clock_nanosleep",
        "nanosleep",
        "getrandom",
        "set_robust_list",
        "rseq",
    ]));
    let namespaces = (libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUSER) as u64;
    let thread = libc::CLONE_THREAD as u64;
    list.push(
        SyscallRule::allow("clone")
            .when(ArgCondition::new(0, ArgOp::MaskedEq(thread), thread))
            .when(ArgCondition::new(0, ArgOp::MaskedEq(namespaces), 0)),
    );
    list.push(SyscallRule::errno("clone3", libc::ENOSYS));
    list.push(SyscallRule::allow("prctl").arg_eq(0, libc::PR_SET_NAME as u64));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_agrees_with_libc() {
        for (name, nr) in [
            ("read", libc::SYS_read),
            ("openat", libc::SYS_openat),
            ("clone3", libc::SYS_clone3),
            ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
            ("mseal", libc::SYS_mseal),
        ] {
            assert_eq!(syscall_number(name), Some(nr), "{name}");
            assert_eq!(syscall_name(nr), Some(name));
        }
        assert_eq!(syscall_number("futex_wait"), Some(455));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn counts_distinct_calls() {
        let mut list = rules(&["read", "write", "read"]);
        list.push(SyscallRule::allow("ioctl").arg_eq(1, 0x5401));
        list.push(SyscallRule::allow("ioctl").arg_eq(1, 0x5402));
        let filter = compile(&list, DenyAction::KillProcess).unwrap();
        assert_eq!(filter.allowed_syscalls(), 3);
        assert!(filter.errno.is_none());
        assert!(!filter.is_empty());
    }

    #[test]
    fn unknown_names_are_refused() {
        let err = compile(&rules(&["read", "opne"]), DenyAction::KillProcess).unwrap_err();
        assert!(matches!(err, SeccompError::UnknownSyscall(ref n) if n == "opne"));
        assert!(err.to_string().contains("fix the name"));
    }

    #[test]
    fn errno_rules_build_a_second_filter() {
        let filter = compile(&runtime(), DenyAction::Errno(libc::EPERM)).unwrap();
        assert!(filter.errno.is_some());
        // clone3 is let through the main filter so that the ENOSYS answer wins.
        assert_eq!(filter.allowed_syscalls(), runtime().len());
    }

    #[test]
    fn deny_labels() {
        assert_eq!(DenyAction::KillProcess.label(), "kill");
        assert_eq!(DenyAction::Errno(1).label(), "errno 1");
    }
}
