//! What each device needs from a sandbox: the files it keeps, whether it needs the host's
//! network namespace, and its seccomp allow-list, as data for the sandbox crate to install.
//!
//! The lists were gathered by running each device under `strace -f` through its tests (the
//! vhost-user test harness and QEMU guests) after the point where the sandbox is entered — after
//! the device opened its files and the process bound its socket — and are the union of what was
//! seen, grouped by purpose. `run_common` is what every backend's runtime needs (message thread,
//! queue workers, memory mapping); each device adds its own I/O.

use std::os::fd::RawFd;

use crate::DeviceKind;

/// A system call to allow, optionally only with one argument equal to a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// The seccomp allow-list (everything else should fail or kill).
    pub seccomp: Vec<SyscallRule>,
}

/// The spec for a device of `kind` holding `files`.
pub fn spec_for(kind: DeviceKind, files: Vec<RawFd>) -> SandboxSpec {
    let own: &[SyscallRule] = match kind {
        DeviceKind::Blk => BLK,
        DeviceKind::Net => NET,
        DeviceKind::Rng => RNG,
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

/// Every backend: the vhost-user message loop, queue workers, guest memory and the inflight
/// region, logging to stderr, and exiting.
pub const COMMON: &[SyscallRule] = &[
    // messages and eventfds
    any("recvmsg"),
    any("sendmsg"),
    any("read"),
    any("write"),
    any("close"),
    any("epoll_create1"),
    any("epoll_ctl"),
    any("epoll_wait"),
    any("epoll_pwait"),
    any("eventfd2"),
    any("fcntl"),
    any("setsockopt"),
    any("getsockopt"),
    any("accept4"),
    // guest memory (SET_MEM_TABLE) and the inflight region (GET/SET_INFLIGHT_FD)
    any("mmap"),
    any("munmap"),
    any("mprotect"),
    any("madvise"),
    any("mremap"),
    any("brk"),
    any("fstat"),
    any("newfstatat"),
    any("statx"),
    when("memfd_create", 1, libc::MFD_CLOEXEC as u64),
    any("ftruncate"),
    // queue worker threads
    any("clone3"),
    any("clone"),
    any("futex"),
    any("set_robust_list"),
    any("rseq"),
    any("rt_sigprocmask"),
    any("rt_sigaction"),
    any("rt_sigreturn"),
    any("sigaltstack"),
    any("sched_getaffinity"),
    any("sched_yield"),
    any("getrandom"),
    when("prctl", 0, libc::PR_SET_NAME as u64),
    any("gettid"),
    any("exit"),
    any("exit_group"),
    any("restart_syscall"),
];

/// blk: image I/O through the disk crate.
pub const BLK: &[SyscallRule] = &[
    any("pread64"),
    any("pwrite64"),
    any("preadv"),
    any("pwritev"),
    any("fsync"),
    any("fdatasync"),
    any("fallocate"),
    any("lseek"),
];

/// net: packets through the tap fd.
pub const NET: &[SyscallRule] = &[any("readv"), any("writev")];

/// rng: `getrandom` (already common).
pub const RNG: &[SyscallRule] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_unique_and_per_device() {
        for kind in [DeviceKind::Blk, DeviceKind::Net, DeviceKind::Rng] {
            let names = seccomp_names(kind);
            let set: std::collections::HashSet<_> = names.iter().collect();
            assert_eq!(set.len(), names.len(), "{kind}: a name appears twice");
            assert!(names.contains(&"recvmsg") && names.contains(&"epoll_wait"));
        }
        assert!(seccomp_names(DeviceKind::Blk).contains(&"fsync"));
        assert!(!seccomp_names(DeviceKind::Rng).contains(&"fsync"));
        assert!(!seccomp_names(DeviceKind::Net).contains(&"socket"), "net needs no sockets");
        assert!(!spec_for(DeviceKind::Net, vec![5]).needs_host_network);
    }
}
