//! What each device needs from a sandbox: the files it keeps, whether it needs the host's
//! network namespace, and its seccomp allow-list, as data for the sandbox crate to install.
//!
//! The lists were gathered by running every backend process of the crate's tests (the
//! vhost-user harness, hostile frontends, the inflight restart, and QEMU guests using the
//! devices) under `strace -ff` (`BULKHEAD_TEST_TRACE=DIR cargo test -p bulkhead-devices`), and
//! keeping what each process called after the sandbox hook — from its first `epoll_create1`
//! on, when its files are open and its socket bound — plus the threads it started. They are the
//! union of what was seen, grouped by purpose, with a few calls added that the same code paths
//! reach on other inputs (`fallocate` for discards, `clone` where `clone3` is refused).
//! The lists leave out the baseline every Bulkhead process has (reading, writing and closing
//! its descriptors, memory, futexes, signals' return, its ids, ending, `fcntl(F_GETFD)`:
//! `bulkhead_sandbox::seccomp::baseline`), which the sandbox adds when it turns a list into a
//! filter. [`COMMON`] is every backend's; each device adds its own.

use std::os::fd::RawFd;

use crate::DeviceKind;

/// A system call to allow, optionally only with one argument equal to a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyscallRule {
    /// The name, as seccompiler and `strace` spell it (x86-64).
    pub name: &'static str,
    /// `Some((index, value))`: allowed only when argument `index` equals `value`.
    pub arg_eq: Option<(u8, u64)>,
}

const fn any(name: &'static str) -> SyscallRule {
    SyscallRule { name, arg_eq: None }
}

const fn when(name: &'static str, index: u8, value: u64) -> SyscallRule {
    SyscallRule { name, arg_eq: Some((index, value)) }
}

/// What a device needs from its sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The device.
    pub kind: DeviceKind,
    /// File descriptors to keep open (the vhost-user connection is the caller's to add).
    pub keep_fds: Vec<RawFd>,
    /// Whether the device needs the host's network namespace. No device does: net only uses
    /// the tap fd it was given, so every compartment can run in an empty network namespace.
    pub needs_host_network: bool,
    /// Whether it opens files after the sandbox is entered. No device does.
    pub opens_files: bool,
    /// The seccomp allow-list on top of the sandbox's baseline (everything else should fail
    /// or kill).
    pub seccomp: Vec<SyscallRule>,
}

/// The spec for a device of `kind` holding `files`.
pub fn spec_for(kind: DeviceKind, files: Vec<RawFd>) -> SandboxSpec {
    let own: &[SyscallRule] = match kind {
        DeviceKind::Blk => BLK,
        DeviceKind::Net => NET,
        DeviceKind::Rng => RNG,
        DeviceKind::Console => CONSOLE,
    };
    SandboxSpec {
        kind,
        keep_fds: files,
        needs_host_network: false,
        opens_files: false,
        seccomp: COMMON.iter().chain(own).copied().collect(),
    }
}

/// The seccomp allow-list of a device kind, as names (for display and for the sandbox crate).
pub fn seccomp_names(kind: DeviceKind) -> Vec<&'static str> {
    spec_for(kind, Vec::new()).seccomp.iter().map(|r| r.name).collect()
}

/// Every backend, after its files are open, beyond the baseline: the vhost-user message loop
/// (and accepting the next frontend on a listening socket), queue workers, guest memory and the
/// inflight region, the stop signal.
pub const COMMON: &[SyscallRule] = &[
    // messages, eventfds, epoll
    any("recvmsg"),
    any("sendmsg"),
    any("recvfrom"), // recv(MSG_PEEK) of the next message's header
    any("epoll_create1"),
    any("epoll_ctl"),
    any("epoll_wait"),
    any("epoll_pwait"),
    any("eventfd2"),
    when("fcntl", 1, libc::F_DUPFD_CLOEXEC as u64),
    when("fcntl", 1, libc::F_GETFL as u64),
    when("fcntl", 1, libc::F_SETFL as u64),
    // a listening backend: the next frontend, and removing the socket file when stopped
    any("accept4"),
    when("ioctl", 1, libc::FIONBIO),
    when("setsockopt", 1, libc::SOL_SOCKET as u64),
    when("getsockopt", 1, libc::SOL_SOCKET as u64),
    any("unlink"),
    // guest memory (SET_MEM_TABLE) and the inflight region (GET/SET_INFLIGHT_FD)
    any("statx"),
    any("fstat"),
    any("newfstatat"),
    when("memfd_create", 1, libc::MFD_CLOEXEC as u64),
    any("ftruncate"),
    // queue worker threads
    any("clone3"),
    any("clone"),
    any("set_robust_list"),
    any("rseq"),
    any("rt_sigaction"),
    any("sched_getaffinity"),
    when("prctl", 0, libc::PR_SET_NAME as u64),
    // rate limits: each queue's timer (`limit::gate`)
    any("timerfd_create"),
    any("timerfd_settime"),
    // abort(3), for the panic hook of `bulkhead device`: raise(SIGABRT) is tgkill(getpid(),
    // gettid(), SIGABRT) (getpid and gettid are in the baseline). Without them a panicking
    // compartment dies of SIGSYS instead, which reads as a filter violation.
    when("tgkill", 2, libc::SIGABRT as u64),
];

/// blk: image I/O through the disk crate (`pread`/`pwrite` of data and metadata, `lseek` for
/// sizes, `fsync` for FLUSH, `fallocate` to punch holes for DISCARD and WRITE_ZEROES).
pub const BLK: &[SyscallRule] = &[
    any("pread64"),
    any("pwrite64"),
    any("lseek"),
    any("fsync"),
    any("fdatasync"),
    any("fallocate"),
    // releasing an image's locks as it is closed (on a monolithic core's device thread; a
    // compartment's files keep theirs for its successor)
    when("fcntl", 1, libc::F_OFD_SETLK as u64),
];

/// net: packets are `read`/`write` on the tap fd (already common); nothing else.
pub const NET: &[SyscallRule] = &[];

/// rng: the entropy itself.
pub const RNG: &[SyscallRule] = &[when("getrandom", 2, 0)];

/// console: bytes are `read`/`write` on the descriptors the core gave (baseline), clients are
/// accepted with `accept4` and told to the core with `sendmsg` (common); standard input and
/// output, shared with other processes and so left blocking, are polled before each read and
/// write.
pub const CONSOLE: &[SyscallRule] = &[any("poll")];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_unique_and_per_device() {
        for kind in DeviceKind::ALL {
            let rules = spec_for(kind, Vec::new()).seccomp;
            let set: std::collections::HashSet<_> = rules.iter().collect();
            assert_eq!(set.len(), rules.len(), "{kind}: a rule appears twice");
            let names = seccomp_names(kind);
            assert!(names.contains(&"recvmsg") && names.contains(&"epoll_wait"));
            assert!(!names.contains(&"read"), "{kind}: the baseline is the sandbox's");
            for never in ["execve", "open", "openat", "socket", "connect", "bind", "ptrace"] {
                assert!(!names.contains(&never), "{kind} must not need {never}");
            }
        }
        assert!(seccomp_names(DeviceKind::Blk).contains(&"fsync"));
        assert!(!seccomp_names(DeviceKind::Rng).contains(&"fsync"));
        assert!(seccomp_names(DeviceKind::Rng).contains(&"getrandom"));
        assert!(!seccomp_names(DeviceKind::Blk).contains(&"getrandom"));
        assert!(!seccomp_names(DeviceKind::Net).contains(&"socket"), "net needs no sockets");
        assert!(!spec_for(DeviceKind::Net, vec![5]).needs_host_network);
    }
}
