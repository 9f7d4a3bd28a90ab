//! The core's handle on a running compartment.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use crate::cgroup::Cgroup;
use crate::report::Report;
use crate::status::{ProcStatus, StatusError};

/// A started compartment: its host PID, a pidfd to wait on with epoll, the
/// report of what `spawn` applied, and its cgroup.
///
/// The compartment is PID 1 of its PID namespace when it has one: it then
/// ignores every signal it has no handler for, except `SIGKILL` (and
/// `SIGSTOP`) — stop it with [`Compartment::kill`]. Dropping the handle kills
/// and reaps a compartment still running, then removes its cgroup.
#[derive(Debug)]
pub struct Compartment {
    pid: i32,
    pidfd: Option<OwnedFd>,
    report: Report,
    cgroup: Option<Cgroup>,
    exit: Option<ExitStatus>,
}

impl Compartment {
    pub(super) fn new(pid: i32, pidfd: Option<OwnedFd>, cgroup: Option<Cgroup>) -> Compartment {
        Compartment { pid, pidfd, report: Report::new(), cgroup, exit: None }
    }

    /// Takes a running compartment over: process `pid`, a child of this process that a core
    /// before this one started (a core update), in `cgroup`. Fails if it is no longer there.
    pub fn adopt(pid: i32, cgroup: Option<Cgroup>) -> io::Result<Compartment> {
        // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let mut compartment = Compartment::new(pid, Some(pidfd), cgroup);
        match compartment.try_wait() {
            Ok(None) => Ok(compartment),
            Ok(Some(status)) => Err(io::Error::other(format!("it has ended ({status})"))),
            Err(e) => {
                // Not a child of this process: never to be signalled from here.
                compartment.exit = Some(ExitStatus::from_raw(0));
                Err(e)
            }
        }
    }

    /// The host PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd (readable when the compartment exits), if the kernel gave one.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// What `spawn` applied: namespaces and cgroup.
    pub fn report(&self) -> &Report {
        &self.report
    }

    pub(super) fn report_mut(&mut self) -> &mut Report {
        &mut self.report
    }

    /// The compartment's cgroup, if its policy has cgroup limits.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// Takes the compartment's cgroup: reaping it then leaves the cgroup to the caller, who
    /// removes it when it suits ([`Cgroup::try_remove`]) — removing waits while the exiting
    /// tasks leave, which a restart need not wait for.
    pub fn take_cgroup(&mut self) -> Option<Cgroup> {
        self.cgroup.take()
    }

    /// Reads the compartment's sandbox from outside (`/proc/PID/status`, `/proc/PID/ns`).
    pub fn status(&self) -> Result<ProcStatus, StatusError> {
        ProcStatus::read(self.pid)
    }

    /// Sends `signal` (through the pidfd when there is one, so never to a recycled PID).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if self.exit.is_some() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        let rc = match &self.pidfd {
            // SAFETY: a pidfd we own, a signal number, no siginfo, no flags.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            },
            // SAFETY: plain integers; the PID is ours until we reap it.
            None => (unsafe { libc::kill(self.pid, signal) }) as libc::c_long,
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Kills the compartment (`SIGKILL`).
    pub fn kill(&self) -> io::Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// Waits for the compartment to exit, reaps it and removes its cgroup.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        match self.reap(0)? {
            Some(status) => Ok(status),
            None => Err(io::Error::other("waitpid returned without a status")),
        }
    }

    /// How the compartment is ending, once its main thread has begun to exit and before it has
    /// finished: read from `/proc/PID/stat` (`PF_EXITING` in its flags, and the status `waitpid`
    /// will give). The last steps of an exit, such as freeing a mount namespace, wait for an
    /// RCU grace period; a caller that knows the process can do nothing more (its threads have
    /// all closed their files: a socket only it held reads as closed) and wants to know how it
    /// ended need not wait for them. `None` while it runs, once it has been reaped, or where
    /// the kernel hides the status (it shows 0 then, which is also an exit with status 0: the
    /// caller waits for those).
    pub fn exiting_status(&self) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        exiting_status(&stat)
    }

    /// Reaps the compartment if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    /// Waits at most `within` for the compartment to exit, and reaps it if it did (its pidfd
    /// becomes readable when it exits; without one, its status is polled every millisecond).
    pub fn wait_for(&mut self, within: std::time::Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match &self.pidfd {
                Some(fd) => {
                    let mut pfd =
                        libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                    let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
                    // SAFETY: poll reads and writes one pollfd that lives for the call.
                    unsafe { libc::poll(&mut pfd, 1, ms) };
                }
                None => std::thread::sleep(left.min(std::time::Duration::from_millis(1))),
            }
        }
    }

    fn reap(&mut self, flags: i32) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.exit {
            return Ok(Some(status));
        }
        let mut raw = 0;
        let rc = loop {
            // SAFETY: waits for our own child, writing its status to `raw`.
            let rc = unsafe { libc::waitpid(self.pid, &mut raw, flags) };
            if rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break rc;
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if rc == 0 {
            return Ok(None);
        }
        let status = ExitStatus::from_raw(raw);
        self.exit = Some(status);
        if let Some(cgroup) = self.cgroup.take() {
            // Removal retries while the exiting tasks leave; an empty
            // directory left behind holds no process and no limit in force.
            let _ = cgroup.remove();
        }
        Ok(Some(status))
    }
}

/// The exit status in a `/proc/PID/stat` line of a process whose threads all exit (see
/// [`Compartment::exiting_status`]).
fn exiting_status(stat: &str) -> Option<ExitStatus> {
    /// `PF_EXITING`: the thread has entered `do_exit`.
    const EXITING: u64 = 0x4;
    // The fields after the command's closing parenthesis, from the third (the state) on.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let flags: u64 = fields.get(9 - 3)?.parse().ok()?;
    let code: i32 = fields.get(52 - 3)?.parse().ok()?;
    (flags & EXITING != 0 && code != 0).then(|| ExitStatus::from_raw(code))
}

impl Drop for Compartment {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.kill();
            let _ = self.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/proc/PID/stat` line with `flags` and `exit_code` (fields 9 and 52), and a command
    /// name with spaces and parentheses, as a process may name itself.
    fn stat(flags: u64, exit_code: i32) -> String {
        let mut fields: Vec<String> = (3..=52).map(|_| "0".to_string()).collect();
        fields[0] = "S".into();
        fields[9 - 3] = flags.to_string();
        fields[52 - 3] = exit_code.to_string();
        format!("4242 (bulk (he) ad) {}", fields.join(" "))
    }

    #[test]
    fn an_exiting_process_says_how_it_ends_and_a_running_one_does_not() {
        let killed = exiting_status(&stat(0x4 | 0x40, libc::SIGKILL)).unwrap();
        assert_eq!(killed.signal(), Some(libc::SIGKILL));
        let exited = exiting_status(&stat(0x4, 3 << 8)).unwrap();
        assert_eq!(exited.code(), Some(3));
        // Running (no PF_EXITING), or a status of 0 (hidden, or a clean exit): wait for it.
        assert!(exiting_status(&stat(0x40, libc::SIGKILL)).is_none());
        assert!(exiting_status(&stat(0x4, 0)).is_none());
        assert!(exiting_status("4242 (short) S 1 2").is_none());
    }
}
