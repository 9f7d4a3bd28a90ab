//! Reading a compartment's sandbox from outside: `/proc/PID/status` (seccomp
//! mode, no_new_privs, capability sets, PIDs in nested namespaces) and
//! `/proc/PID/ns/*` compared with the caller's own namespaces. The core's
//! status command and the tests use it to check what the compartment claims.

use std::fmt;
use std::path::PathBuf;

use crate::report::Namespace;

/// Errors reading a process's status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The file could not be read (the process may have exited).
    #[error("could not read {path} (has the process exited?)")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// A field is missing or malformed.
    #[error("{path} has no readable `{field}` line: this kernel is too old or the file is not a status file")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
    },
}

/// The seccomp mode of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompMode {
    /// No seccomp (0).
    Disabled,
    /// Strict mode (1).
    Strict,
    /// A BPF filter (2).
    Filter,
}

/// What `/proc/PID/status` and `/proc/PID/ns` say about a process's sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStatus {
    /// The host PID.
    pub pid: i32,
    /// Its PIDs from the host's namespace inward (`NSpid`); the last is its own view.
    pub ns_pids: Vec<i32>,
    /// Number of threads.
    pub threads: u32,
    /// Seccomp mode.
    pub seccomp: SeccompMode,
    /// Seccomp filters installed (0 if the kernel does not say).
    pub seccomp_filters: u32,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// Effective capabilities.
    pub cap_effective: u64,
    /// Permitted capabilities.
    pub cap_permitted: u64,
    /// Inheritable capabilities.
    pub cap_inheritable: u64,
    /// Bounding set.
    pub cap_bounding: u64,
    /// Ambient capabilities.
    pub cap_ambient: u64,
    /// Real, effective, saved and filesystem user IDs, as the host sees them.
    pub uids: [u32; 4],
    /// The namespaces it does not share with the calling process.
    pub own_namespaces: Vec<Namespace>,
}

impl ProcStatus {
    /// Reads `/proc/PID/status` and `/proc/PID/ns/*` of `pid`.
    pub fn read(pid: i32) -> Result<ProcStatus, StatusError> {
        let path = PathBuf::from(format!("/proc/{pid}/status"));
        let text = std::fs::read_to_string(&path)
            .map_err(|source| StatusError::Read { path: path.clone(), source })?;
        let mut status =
            ProcStatus::parse(&text).map_err(|field| StatusError::Field { path, field })?;
        status.own_namespaces = own_namespaces(pid)?;
        Ok(status)
    }

    /// Parses the text of a status file; the error names the missing field.
    pub fn parse(text: &str) -> Result<ProcStatus, &'static str> {
        let field = |name: &'static str| -> Result<&str, &'static str> {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .ok_or(name)
        };
        let number = |name: &'static str| -> Result<u32, &'static str> {
            field(name)?.parse().map_err(|_| name)
        };
        let caps = |name: &'static str| -> Result<u64, &'static str> {
            u64::from_str_radix(field(name)?, 16).map_err(|_| name)
        };
        let seccomp = match number("Seccomp")? {
            0 => SeccompMode::Disabled,
            1 => SeccompMode::Strict,
            _ => SeccompMode::Filter,
        };
        let mut uids = [0; 4];
        for (slot, value) in uids.iter_mut().zip(field("Uid")?.split_whitespace()) {
            *slot = value.parse().map_err(|_| "Uid")?;
        }
        let pid = number("Pid")? as i32;
        let ns_pids = match field("NSpid") {
            Ok(list) => list.split_whitespace().filter_map(|p| p.parse().ok()).collect(),
            Err(_) => vec![pid],
        };
        Ok(ProcStatus {
            pid,
            ns_pids,
            threads: number("Threads")?,
            seccomp,
            seccomp_filters: number("Seccomp_filters").unwrap_or(0),
            no_new_privs: number("NoNewPrivs")? == 1,
            cap_effective: caps("CapEff")?,
            cap_permitted: caps("CapPrm")?,
            cap_inheritable: caps("CapInh")?,
            cap_bounding: caps("CapBnd")?,
            cap_ambient: caps("CapAmb").unwrap_or(0),
            uids,
            own_namespaces: Vec::new(),
        })
    }

    /// Whether the process holds no capability in any set.
    pub fn has_no_capabilities(&self) -> bool {
        self.cap_effective == 0
            && self.cap_permitted == 0
            && self.cap_inheritable == 0
            && self.cap_bounding == 0
            && self.cap_ambient == 0
    }

    /// Whether the process looks like an entered compartment: a seccomp
    /// filter, no_new_privs, and no capability.
    pub fn is_sandboxed(&self) -> bool {
        self.seccomp == SeccompMode::Filter && self.no_new_privs && self.has_no_capabilities()
    }
}

impl fmt::Display for ProcStatus {
    /// `pid 4242 (1 inside) seccomp(filter x2) nnp caps(none) ns(mnt,pid,net) uid 0 threads 3`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(inner) = self.ns_pids.last().filter(|_| self.ns_pids.len() > 1) {
            write!(f, " ({inner} inside)")?;
        }
        match self.seccomp {
            SeccompMode::Disabled => f.write_str(" seccomp(none)")?,
            SeccompMode::Strict => f.write_str(" seccomp(strict)")?,
            SeccompMode::Filter => write!(f, " seccomp(filter x{})", self.seccomp_filters)?,
        }
        f.write_str(if self.no_new_privs { " nnp" } else { " -nnp" })?;
        if self.has_no_capabilities() {
            f.write_str(" caps(none)")?;
        } else {
            write!(f, " caps(eff {:x}, bnd {:x})", self.cap_effective, self.cap_bounding)?;
        }
        let names: Vec<&str> = self.own_namespaces.iter().map(|ns| ns.name()).collect();
        write!(f, " ns({}) uid {} threads {}", names.join(","), self.uids[1], self.threads)
    }
}

/// One thread of a process, as `/proc/PID/task/TID/status` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadStatus {
    /// Its thread ID.
    pub tid: i32,
    /// Its name (`Name:`, the kernel's `comm`).
    pub name: String,
    /// Seccomp mode, no_new_privs and capabilities of this thread (they are per thread).
    pub status: ProcStatus,
}

/// Every thread of `pid`, with its own seccomp mode and capabilities. A
/// thread that ends while it is read is left out.
pub fn threads(pid: i32) -> Result<Vec<ThreadStatus>, StatusError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = std::fs::read_dir(&dir)
        .map_err(|source| StatusError::Read { path: dir.clone(), source })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let path = entry.path().join("status");
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let status =
            ProcStatus::parse(&text).map_err(|field| StatusError::Field { path, field })?;
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        out.push(ThreadStatus { tid, name, status });
    }
    out.sort_by_key(|t| t.tid);
    Ok(out)
}

/// The namespaces of `pid` that differ from the calling process's.
fn own_namespaces(pid: i32) -> Result<Vec<Namespace>, StatusError> {
    let mut own = Vec::new();
    for ns in Namespace::ALL {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{}", ns.name()));
        let ours = PathBuf::from(format!("/proc/self/ns/{}", ns.name()));
        let read = |path: &PathBuf| {
            std::fs::read_link(path)
                .map_err(|source| StatusError::Read { path: path.clone(), source })
        };
        if read(&theirs)? != read(&ours)? {
            own.push(ns);
        }
    }
    Ok(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SANDBOXED: &str = "Name:\tbulkhead\nState:\tS (sleeping)\nPid:\t4242\nNSpid:\t4242\t1\n\
        Uid:\t0\t0\t0\t0\nThreads:\t3\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t2\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
        CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\n";

    #[test]
    fn parses_a_sandboxed_status() {
        let status = ProcStatus::parse(SANDBOXED).unwrap();
        assert_eq!(status.ns_pids, vec![4242, 1]);
        assert!(status.is_sandboxed());
        assert_eq!(status.seccomp_filters, 2);
        assert_eq!(
            status.to_string(),
            "pid 4242 (1 inside) seccomp(filter x2) nnp caps(none) ns() uid 0 threads 3"
        );
    }

    #[test]
    fn reads_this_process() {
        let status = ProcStatus::read(std::process::id() as i32).unwrap();
        assert_eq!(status.pid, std::process::id() as i32);
        assert!(status.own_namespaces.is_empty());
        assert!(status.threads >= 1);
    }

    #[test]
    fn reads_this_process_threads() {
        let pid = std::process::id() as i32;
        let list = threads(pid).unwrap();
        assert!(list.iter().any(|t| t.tid == pid));
        assert!(list.iter().all(|t| !t.name.is_empty()));
    }

    #[test]
    fn names_the_missing_field() {
        assert_eq!(ProcStatus::parse("Pid:\t1\n").unwrap_err(), "Seccomp");
    }
}
