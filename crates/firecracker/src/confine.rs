//! The API's threads confine themselves: the thread that accepts connections installs a
//! seccomp allow-list on itself before it accepts the first one, and every connection's
//! thread, started by it, inherits the list. The main thread, which starts the core, is not
//! confined (it must fork and exec), and the core is not affected.
//!
//! The list is what reading requests, checking the files they name, writing the log and
//! metrics and asking the core for its status take; a call outside it fails with `EPERM`
//! (the request then gets an error answer) rather than ending the process, so a call this
//! list forgot costs an answer, not the VM. Capabilities are reduced to reading and writing
//! files as the user may (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, where held).

use bulkhead_sandbox::seccomp::{self, ArgCondition, ArgOp, SyscallRule};
use bulkhead_sandbox::{confine_this_thread, DenyAction, ThreadConfinement};

/// capability(7) numbers (libc does not name them).
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;

/// The calls the API's threads make beyond a std program's runtime.
const API_CALLS: &[&str] = &[
    // the socket: connections, timeouts
    "accept4",
    "setsockopt",
    "getsockopt",
    "shutdown",
    // files the requests name: the kernel, drives, the log, metrics, vhost-device-vsock
    "openat",
    "statx",
    "newfstatat",
    "fstat",
    "getcwd",
    // the core's control socket, for FlushMetrics
    "socket",
    "connect",
    "poll",
    "ppoll",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "geteuid",
    "getuid",
];

/// The allow-list of the API's threads.
pub fn rules() -> Vec<SyscallRule> {
    let mut list = seccomp::runtime();
    list.extend(API_CALLS.iter().map(|name| SyscallRule::allow(name)));
    // fcntl for what std's sockets and files do: flags, close-on-exec, duplicating.
    for cmd in [libc::F_GETFL, libc::F_SETFL, libc::F_DUPFD_CLOEXEC, libc::F_SETFD] {
        let c = ArgCondition::low32(1, ArgOp::Eq, cmd as u64);
        list.push(SyscallRule::allow("fcntl").when(c));
    }
    list
}

/// Confines the calling thread (the API's acceptor) and, through inheritance, the
/// connections' threads it starts.
pub fn api_thread() -> Result<ThreadConfinement, String> {
    let keep = (1u64 << CAP_DAC_OVERRIDE) | (1u64 << CAP_DAC_READ_SEARCH);
    confine_this_thread("firecracker-api", &rules(), DenyAction::Errno(libc::EPERM), keep)
        .map_err(|e| format!("cannot confine the API's threads: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_list_compiles() {
        let filter = bulkhead_sandbox::seccomp::compile(
            &super::rules(),
            bulkhead_sandbox::DenyAction::Errno(libc::EPERM),
        )
        .unwrap();
        assert!(filter.allowed_syscalls() > 30);
    }
}
