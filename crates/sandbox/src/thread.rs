//! Confining one thread of the core: the same seccomp allow-lists as a
//! compartment's, but installed by each thread on itself (no TSYNC), since
//! the core's threads do different work — a vCPU thread runs `KVM_RUN`, the
//! event loop supervises compartments, the API thread answers a socket.
//!
//! [`confine_this_thread`] does, on the calling thread and in this order:
//! compile the filter (a misspelt name fails before anything changes); give
//! up capabilities (all of them, bounding set included and securebits
//! locked, or only those the thread must hand on); record the thread's class
//! for the violation message; set no_new_privs and install the filter.
//!
//! A call outside the list, with [`DenyAction::Trap`], raises `SIGSYS` in the
//! thread; the handler [`install_violation_reporter`] installs writes one
//! line to stderr naming the thread, its class and the system call
//! (`bulkhead: seccomp: thread vcpu0 (vcpu) called execve (system call 59), …`)
//! and ends the process with status [`VIOLATION_EXIT`] (128 + SIGSYS, what a
//! shell shows for a process killed by `SIGSYS`). Only `prctl(PR_GET_NAME)`,
//! `write` and `exit_group` run in the handler: every list must allow them
//! ([`thread_name_rule`]).

use std::cell::Cell;
use std::sync::Once;

use crate::caps::{self, CapsError};
use crate::seccomp::{self, DenyAction, SeccompError, SyscallRule};

/// The exit status of a process whose thread broke its filter.
pub const VIOLATION_EXIT: i32 = 128 + libc::SIGSYS;

/// Errors confining a thread.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The filter does not compile or the kernel refused it.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Capabilities could not be given up.
    #[error(transparent)]
    Caps(#[from] CapsError),
    /// The SIGSYS handler could not be installed.
    #[error("could not install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// What confining a thread did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadConfinement {
    /// The thread's class, as given.
    pub class: &'static str,
    /// Distinct system calls the filter lets through.
    pub allowed_syscalls: usize,
    /// What a call outside the list does.
    pub deny: DenyAction,
    /// The capability layer's detail (`none`, `keep 0x…`).
    pub caps: String,
}

thread_local! {
    /// The class of the calling thread, for the violation message (constant
    /// initialisation and no destructor: safe to read in a signal handler).
    static CLASS: Cell<&'static str> = const { Cell::new("") };
}

/// Confines the calling thread as `class`: capabilities reduced to
/// `keep_caps` (0: none, securebits locked), then `rules` with `deny` for
/// everything else. Threads it starts afterwards inherit both.
pub fn confine_this_thread(
    class: &'static str,
    rules: &[SyscallRule],
    deny: DenyAction,
    keep_caps: u64,
) -> Result<ThreadConfinement, ConfineError> {
    let filter = seccomp::compile(rules, deny)?;
    let caps = if keep_caps == 0 { caps::drop_all()? } else { caps::keep_only(keep_caps)? };
    CLASS.with(|c| c.set(class));
    if deny == DenyAction::Trap {
        install_violation_reporter()?;
    }
    filter.install_this_thread()?;
    Ok(ThreadConfinement { class, allowed_syscalls: filter.allowed_syscalls(), deny, caps })
}

/// Installs (once per process) the `SIGSYS` handler that reports a filter
/// violation and ends the process.
pub fn install_violation_reporter() -> Result<(), ConfineError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the fields are set before use.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigsys;
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action` is a valid sigaction whose handler only calls
        // async-signal-safe functions; the old action is not asked for.
        if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
            result = Err(ConfineError::Handler(std::io::Error::last_os_error()));
        }
    });
    result
}

/// The offset of `si_syscall` in an x86-64 `siginfo_t` (after signo, errno,
/// code, padding and `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers;
    // for SIGSYS from seccomp its union holds `_sigsys`, whose `_syscall`
    // int lies at SI_SYSCALL_OFFSET.
    let nr = unsafe { info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>().read_unaligned() };
    // A thread started by a confined one inherits its filter but not its class.
    let class = CLASS.with(|c| c.get());
    let class = if class.is_empty() { "filter inherited from its creator" } else { class };
    let mut comm = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes and a NUL into the 17-byte buffer; every
    // class allows it ([`thread_name_rule`]).
    unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr(), 0, 0, 0) };
    let comm_len = comm.iter().position(|&b| b == 0).unwrap_or(16);
    let name = seccomp::syscall_name(nr.into()).unwrap_or("an unknown call");
    let mut number = [0u8; 12];
    let parts: [&[u8]; 9] = [
        b"bulkhead: seccomp: thread ",
        &comm[..comm_len],
        b" (",
        class.as_bytes(),
        b") called ",
        name.as_bytes(),
        b" (system call ",
        decimal(nr, &mut number),
        b"), which its allow-list does not allow: the core stops\n",
    ];
    for part in parts {
        // SAFETY: write(2) is async-signal-safe; the buffer is live for its length.
        unsafe { libc::write(libc::STDERR_FILENO, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: _exit is async-signal-safe; it ends every thread of the process.
    unsafe { libc::_exit(VIOLATION_EXIT) };
}

/// The rule the violation message needs in every list: reading the thread's name.
pub fn thread_name_rule() -> SyscallRule {
    SyscallRule::allow("prctl").arg_eq(0, libc::PR_GET_NAME as u64)
}

/// `n` in decimal, written into `buf` without allocating.
fn decimal(n: i32, buf: &mut [u8; 12]) -> &[u8] {
    let mut v = i64::from(n).unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        let mut buf = [0u8; 12];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(59, &mut buf), b"59");
        assert_eq!(decimal(-1, &mut buf), b"-1");
        assert_eq!(decimal(i32::MIN, &mut buf), b"-2147483648");
    }

    #[test]
    fn a_thread_is_confined_alone() {
        // A thread of this test process confines itself with a list that
        // lacks `getppid`: with Errno, the call fails there and not here.
        let mut rules = seccomp::runtime();
        rules.push(SyscallRule::allow("capget"));
        rules.push(SyscallRule::allow("capset"));
        rules.push(SyscallRule::allow("prctl"));
        rules.push(SyscallRule::allow("seccomp"));
        let handle = std::thread::spawn(move || {
            let confined =
                confine_this_thread("test", &rules, DenyAction::Errno(libc::EPERM), 0).unwrap();
            // SAFETY: getppid has no arguments.
            let rc = unsafe { libc::syscall(libc::SYS_getppid) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            (confined.allowed_syscalls, rc, errno)
        });
        let (allowed, rc, errno) = handle.join().unwrap();
        assert!(allowed > 30);
        assert_eq!((rc, errno), (-1, Some(libc::EPERM)));
        // SAFETY: as above.
        assert!(unsafe { libc::syscall(libc::SYS_getppid) } > 0, "this thread is not filtered");
    }
}
