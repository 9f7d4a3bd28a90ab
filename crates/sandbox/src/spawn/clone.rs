//! The clone itself: one attempt per namespace set, largest set first.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::child::{self, Plan};
use super::{Attempt, SpawnError, SPAWN_ENV};
use crate::policy::Enforcement;
use crate::report::Namespace;
use crate::rlimits;

/// What a successful clone gives: PID, pidfd, namespaces created, and the
/// error that made a larger set fail (if one did).
pub(super) type Cloned = (i32, Option<OwnedFd>, Vec<Namespace>, Option<io::Error>);

/// Clones with every namespace in `wanted`, or (best effort) with the largest
/// subset the kernel accepts.
pub(super) fn clone_best(
    attempt: &mut Attempt<'_>,
    wanted: &[Namespace],
    enforcement: Enforcement,
) -> Result<Cloned, SpawnError> {
    let refused = match clone_once(attempt, wanted) {
        Ok((pid, pidfd)) => return Ok((pid, pidfd, wanted.to_vec(), None)),
        Err(e) if !refuses_namespaces(&e) => return Err(SpawnError::Clone(e)),
        Err(e) => e,
    };
    if enforcement == Enforcement::Required {
        let names: Vec<&str> = wanted.iter().map(|ns| ns.name()).collect();
        return Err(SpawnError::Namespaces { namespaces: names.join(","), source: refused });
    }
    for size in (0..wanted.len()).rev() {
        for subset in subsets(wanted, size) {
            match clone_once(attempt, &subset) {
                Ok((pid, pidfd)) => return Ok((pid, pidfd, subset, Some(refused))),
                Err(e) if refuses_namespaces(&e) => continue,
                Err(e) => return Err(SpawnError::Clone(e)),
            }
        }
    }
    Err(SpawnError::Clone(refused))
}

/// Errors by which the kernel refuses a namespace (rather than the process).
fn refuses_namespaces(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL | libc::ENOSPC | libc::EUSERS))
}

/// Every subset of `set` with `size` members, in `set`'s order.
fn subsets(set: &[Namespace], size: usize) -> Vec<Vec<Namespace>> {
    (0u32..1 << set.len())
        .filter(|mask| mask.count_ones() as usize == size)
        .map(|mask| {
            set.iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, &ns)| ns)
                .collect()
        })
        .collect()
}

/// The value of `BULKHEAD_SANDBOX` for a child in `namespaces`.
pub(super) fn spawn_env(namespaces: &[Namespace], mount_ns: u64) -> String {
    let names: Vec<&str> = namespaces.iter().map(|ns| ns.name()).collect();
    format!("ns={};mntns={mount_ns}", names.join(","))
}

/// One clone with exactly `namespaces`; the child never returns from here.
fn clone_once(
    attempt: &mut Attempt<'_>,
    namespaces: &[Namespace],
) -> io::Result<(i32, Option<OwnedFd>)> {
    let mut env: Vec<CString> = Vec::new();
    for (key, value) in attempt.env {
        let mut entry = key.as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        env.push(CString::new(entry).map_err(|_| io::ErrorKind::InvalidInput)?);
    }
    let info = format!("{SPAWN_ENV}={}", spawn_env(namespaces, attempt.mount_ns));
    env.push(CString::new(info).map_err(|_| io::ErrorKind::InvalidInput)?);
    let mut plan = plan(attempt, &env);
    if namespaces.contains(&Namespace::User) {
        plan.ids = attempt.user.map(|map| (map.inside_uid, map.inside_gid));
    }
    let flags = namespaces.iter().fold(0u64, |acc, ns| acc | ns.clone_flag());
    loop {
        let mut pidfd: libc::c_int = -1;
        let pid = if attempt.legacy {
            clone_legacy(&plan, flags, &mut pidfd)
        } else {
            clone3(&plan, flags, &mut pidfd)
        };
        match pid {
            Ok(pid) => {
                // SAFETY: the kernel stored a new pidfd that nothing else owns.
                let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
                return Ok((pid, pidfd));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) && !attempt.legacy => {
                attempt.legacy = true;
            }
            Err(e) => return Err(e),
        }
    }
}

fn plan(attempt: &Attempt<'_>, env: &[CString]) -> Plan {
    let null_terminated = |strings: &[CString]| {
        let mut pointers: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(std::ptr::null());
        pointers
    };
    let fds = attempt.fds;
    let [go_read, go_write, status_read, status_write] = attempt.pipes.map(|fd| fd.as_raw_fd());
    let highest = fds
        .moves
        .iter()
        .flat_map(|&(source, target)| [source, target])
        .chain([go_read, go_write, status_read, status_write])
        .max()
        .unwrap_or(2);
    let fd_limit = rlimits::current(libc::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    Plan {
        program: attempt.program.clone(),
        argv: null_terminated(&attempt.argv),
        envp: null_terminated(env),
        moves: fds.moves.clone(),
        base: highest + 1,
        max_target: fds.max_target,
        gaps: fds.gaps.clone(),
        go_read,
        go_write,
        status_read,
        status_write,
        fd_limit: fd_limit.min(1 << 20) as libc::c_int,
        ids: None,
    }
}

/// Blocks every signal in the calling thread for the duration of `f`.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data, initialised by sigfillset; the old mask
    // is restored before returning.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let result = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        result
    }
}

fn clone3(plan: &Plan, flags: u64, pidfd: &mut libc::c_int) -> io::Result<i32> {
    // SAFETY: all-zero clone_args is valid: no stack (the child continues on
    // a copy of this one, as after fork), no tls, no set_tid.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags | libc::CLONE_PIDFD as u64;
    args.pidfd = pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    with_signals_blocked(|| {
        // SAFETY: args is valid for the call; in the child (rc 0) `child::run`
        // takes over and never returns, making only async-signal-safe calls.
        unsafe {
            let rc = libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut libc::clone_args,
                std::mem::size_of::<libc::clone_args>(),
            );
            if rc == 0 {
                child::run(plan);
            }
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(rc as i32)
            }
        }
    })
}

fn clone_legacy(plan: &Plan, flags: u64, pidfd: &mut libc::c_int) -> io::Result<i32> {
    let flags = flags | libc::CLONE_PIDFD as u64 | libc::SIGCHLD as u64;
    with_signals_blocked(|| {
        // SAFETY: x86-64 clone(flags, stack, parent_tid, child_tid, tls): no new
        // stack, and with CLONE_PIDFD the pidfd is stored through parent_tid.
        // The child runs `child::run`, which never returns.
        unsafe {
            let rc = libc::syscall(
                libc::SYS_clone,
                flags,
                0usize,
                pidfd as *mut libc::c_int,
                0usize,
                0usize,
            );
            if rc == 0 {
                child::run(plan);
            }
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(rc as i32)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_largest_first_in_order() {
        let set = [Namespace::Mount, Namespace::Pid, Namespace::Net];
        assert_eq!(subsets(&set, 3), vec![set.to_vec()]);
        assert_eq!(
            subsets(&set, 2),
            vec![
                vec![Namespace::Mount, Namespace::Pid],
                vec![Namespace::Mount, Namespace::Net],
                vec![Namespace::Pid, Namespace::Net],
            ]
        );
        assert_eq!(subsets(&set, 0), vec![Vec::<Namespace>::new()]);
    }

    #[test]
    fn env_names_namespaces_and_mount_namespace() {
        assert_eq!(spawn_env(&[Namespace::Mount, Namespace::Net], 42), "ns=mnt,net;mntns=42");
        assert_eq!(spawn_env(&[], 7), "ns=;mntns=7");
    }
}
