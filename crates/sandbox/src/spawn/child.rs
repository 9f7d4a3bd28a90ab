//! The child's side of `spawn`: what runs between `clone3` and `execve`.
//!
//! The caller (the core) is multi-threaded, and the child is a copy of one of
//! its threads: any lock another thread held at the clone (malloc's, stdio's)
//! stays locked forever in the child. So the child only makes system calls on
//! values prepared before the clone — no allocation, no formatting, no panic
//! path. Steps:
//!
//! 1. close the parent's ends of the two pipes;
//! 2. reset every signal to its default action (the mask stays fully blocked,
//!    as the parent set it around the clone, until just before `execve`);
//! 3. `PR_SET_PDEATHSIG(SIGKILL)`, then wait for the parent's go byte: end of
//!    file means the parent died before the death signal was armed, so exit;
//! 4. in a new user namespace, once the parent has written its ID maps,
//!    become the mapped user and group (a new namespace does not change the
//!    process's IDs, so without this it would be `nobody` inside, with no
//!    capability after `execve`); the ID change clears the death signal, so
//!    arm it again and exit if the parent's end of the go pipe, which it
//!    keeps open until the `execve`, has closed meanwhile; then `setsid`, so
//!    the terminal's signals go to the core only;
//! 5. move the status pipe and every kept fd above all target numbers, then
//!    `dup2` each onto its target (this clears close-on-exec);
//! 6. close every other fd (`close_range`, or a loop on old kernels);
//! 7. unblock signals and `execve`.
//!
//! Any failure writes `[stage, errno]` to the status pipe and exits with 127;
//! a successful `execve` closes the pipe, which the parent reads as success.

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_uint};

/// The most file descriptors a compartment can be given.
pub const MAX_KEPT_FDS: usize = 64;

/// Where the child failed; written to the status pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    /// `prctl(PR_SET_PDEATHSIG)`.
    DeathSignal = 1,
    /// Reading the parent's go byte.
    WaitParent = 2,
    /// `setsid`.
    Session = 3,
    /// Moving a kept file descriptor.
    MoveFd = 4,
    /// Closing the other file descriptors.
    CloseFds = 5,
    /// `execve`.
    Exec = 6,
    /// Becoming root (or the mapped IDs) of the new user namespace.
    Identity = 7,
}

impl Stage {
    /// The stage written as `raw`.
    pub fn from_raw(raw: u32) -> Option<Stage> {
        [
            Stage::DeathSignal,
            Stage::WaitParent,
            Stage::Session,
            Stage::MoveFd,
            Stage::CloseFds,
            Stage::Exec,
            Stage::Identity,
        ]
        .into_iter()
        .find(|stage| *stage as u32 == raw)
    }

    /// What the child was doing, for error messages.
    pub fn doing(self) -> &'static str {
        match self {
            Stage::DeathSignal => "arm its parent-death signal",
            Stage::WaitParent => "wait for the core",
            Stage::Session => "start its own session",
            Stage::MoveFd => "move a kept file descriptor into place",
            Stage::CloseFds => "close the file descriptors it must not keep",
            Stage::Exec => "execute the compartment program",
            Stage::Identity => "take the user and group IDs mapped in its user namespace",
        }
    }
}

/// Exit status of a child whose parent went away before it could start.
pub const ABANDONED: c_int = 126;

/// Everything the child needs, prepared before the clone.
pub struct Plan {
    /// The program.
    pub program: CString,
    /// `argv`, null-terminated; points into strings the caller keeps alive.
    pub argv: Vec<*const c_char>,
    /// `envp`, null-terminated; points into strings the caller keeps alive.
    pub envp: Vec<*const c_char>,
    /// `(source, target)` for each kept fd.
    pub moves: Vec<(c_int, c_int)>,
    /// Every fd number below this is free for temporary copies above it.
    pub base: c_int,
    /// The largest target.
    pub max_target: c_int,
    /// Ranges of fd numbers below `max_target` that are no target: closed.
    pub gaps: Vec<(c_uint, c_uint)>,
    /// The read end of the go pipe (the child's).
    pub go_read: c_int,
    /// The write end of the go pipe (the parent's).
    pub go_write: c_int,
    /// The read end of the status pipe (the parent's).
    pub status_read: c_int,
    /// The write end of the status pipe (the child's).
    pub status_write: c_int,
    /// Used when `close_range` is missing: close up to here.
    pub fd_limit: c_int,
    /// In a new user namespace: the user and group IDs to take inside it.
    pub ids: Option<(libc::uid_t, libc::gid_t)>,
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Reports `stage` and the current errno on `fd`, then exits.
fn fail(fd: c_int, stage: Stage) -> ! {
    let mut message = [0u8; 8];
    message[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    message[4..].copy_from_slice(&errno().to_ne_bytes());
    // SAFETY: writes 8 bytes from a stack buffer, then exits without running
    // any of the parent's atexit handlers or destructors.
    unsafe {
        libc::write(fd, message.as_ptr().cast(), message.len());
        libc::_exit(127)
    }
}

/// Runs the child's side and execs; never returns.
///
/// # Safety
///
/// Must be called only in the child of a `clone` without `CLONE_VM`, with
/// `plan` prepared before the clone; it makes only async-signal-safe calls.
pub unsafe fn run(plan: &Plan) -> ! {
    // SAFETY: every call is a plain system call wrapper on integers or on
    // memory prepared before the clone, which the child owns a copy of;
    // nothing allocates or takes a lock.
    unsafe {
        libc::close(plan.go_write);
        libc::close(plan.status_read);
        reset_signals();
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            fail(plan.status_write, Stage::DeathSignal);
        }
        wait_for_parent(plan);
        if let Some((uid, gid)) = plan.ids {
            // Raw system calls, not glibc's wrappers: those make every thread of the process
            // change its IDs too, by signalling each thread glibc knows of (`tgkill`), and this
            // child is a copy of one thread of a multi-threaded parent whose other threads
            // exist only in glibc's copied list.
            // Fails (EPERM) where an unprivileged core had to deny setgroups:
            // then there are no supplementary groups to drop anyway.
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                fail(plan.status_write, Stage::Identity);
            }
            // Changing IDs clears the parent-death signal: arm it again, then make sure
            // the parent did not die in between (it keeps its end of the go pipe open
            // until this child has executed, so a hang-up means it is gone).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                fail(plan.status_write, Stage::DeathSignal);
            }
            if parent_gone(plan.go_read) {
                libc::_exit(ABANDONED);
            }
        }
        libc::close(plan.go_read);
        if libc::setsid() < 0 {
            fail(plan.status_write, Stage::Session);
        }
        let status = libc::fcntl(plan.status_write, libc::F_DUPFD_CLOEXEC, plan.base);
        if status < 0 {
            fail(plan.status_write, Stage::MoveFd);
        }
        move_fds(plan, status);
        close_others(plan, status);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(plan.program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(status, Stage::Exec)
    }
}

/// Every catchable signal back to its default action.
fn reset_signals() {
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask; sigaction
    // only reads it. Errors (for SIGKILL, SIGSTOP, numbers past the last) are
    // expected and ignored.
    unsafe {
        let default: libc::sigaction = std::mem::zeroed();
        for signal in 1..65 {
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
    }
}

fn wait_for_parent(plan: &Plan) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into a stack variable.
        let n = unsafe { libc::read(plan.go_read, (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 => break,
            // SAFETY: exits without running the parent's handlers.
            0 => unsafe { libc::_exit(ABANDONED) },
            _ if errno() == libc::EINTR => continue,
            _ => fail(plan.status_write, Stage::WaitParent),
        }
    }
}

/// Whether the parent's end of the go pipe is closed, which it is only once the parent died.
fn parent_gone(go_read: c_int) -> bool {
    let mut poll = libc::pollfd { fd: go_read, events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: polls one pollfd on the stack, without waiting.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        if n >= 0 {
            return n == 1 && poll.revents & libc::POLLHUP != 0;
        }
        if errno() != libc::EINTR {
            return false;
        }
    }
}

fn move_fds(plan: &Plan, status: c_int) {
    let mut temporary = [-1 as c_int; MAX_KEPT_FDS];
    for (slot, &(source, _)) in temporary.iter_mut().zip(&plan.moves) {
        // SAFETY: duplicates an fd number; the result is checked.
        *slot = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, plan.base) };
        if *slot < 0 {
            fail(status, Stage::MoveFd);
        }
    }
    for (&copy, &(_, target)) in temporary.iter().zip(&plan.moves) {
        // SAFETY: dup2 on fd numbers; the result is checked.
        if unsafe { libc::dup2(copy, target) } < 0 {
            fail(status, Stage::MoveFd);
        }
    }
}

fn close_others(plan: &Plan, status: c_int) {
    let status = status as c_uint;
    let after_targets = (plan.max_target + 1) as c_uint;
    for &(first, last) in &plan.gaps {
        close_range(plan, status, first, last);
    }
    if after_targets < status {
        close_range(plan, status, after_targets, status - 1);
    }
    close_range(plan, status, status + 1, c_uint::MAX);
}

fn close_range(plan: &Plan, status: c_uint, first: c_uint, last: c_uint) {
    // SAFETY: close_range takes plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as c_uint) };
    if rc == 0 {
        return;
    }
    if errno() != libc::ENOSYS {
        fail(status as c_int, Stage::CloseFds);
    }
    // Before Linux 5.9: close one by one up to the descriptor limit.
    let last = last.min(plan.fd_limit.max(0) as c_uint);
    for fd in first..=last {
        // SAFETY: closing a number that may or may not be open.
        unsafe { libc::close(fd as c_int) };
    }
}
