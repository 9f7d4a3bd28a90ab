//! What `bulkhead ctl VM status` says of confinement: per process and
//! thread class, the system calls its list allows and what the kernel says
//! of each thread (`/proc/PID/task/TID/status`).

use bulkhead_api::ConfinementStatus;
use bulkhead_devices::DeviceKind;
use bulkhead_sandbox::status::{self, SeccompMode, ThreadStatus};

use super::{allowed_count, confined, ThreadClass};

/// Rows for the core's own threads, one per class present.
pub fn core() -> Vec<ConfinementStatus> {
    let pid = std::process::id() as i32;
    let Ok(threads) = status::threads(pid) else { return Vec::new() };
    let registered = confined();
    let mut rows: Vec<(ThreadClass, Vec<&ThreadStatus>)> = Vec::new();
    // What the threads' filters, as installed, allow.
    let mut installed: Vec<(ThreadClass, usize)> = Vec::new();
    for t in &threads {
        // A thread that confined itself is of the class it said; one started
        // by it (a monolithic device's queue workers) is classified by name.
        let own = registered.iter().find(|c| c.tid == t.tid);
        let class = own.map(|c| c.class).or_else(|| ThreadClass::of_thread(&t.name, t.tid == pid));
        let Some(class) = class else { continue };
        if let Some(n) = own.and_then(|c| c.allowed) {
            installed.push((class, n));
        }
        match rows.iter_mut().find(|(c, _)| *c == class) {
            Some((_, list)) => list.push(t),
            None => rows.push((class, vec![t])),
        }
    }
    rows.sort_by_key(|(c, _)| ThreadClass::ALL.iter().position(|a| a == c));
    let filtering = super::setting() != super::CoreSeccomp::Off;
    rows.into_iter()
        .map(|(class, list)| {
            let recorded = installed.iter().find(|(c, _)| *c == class).map(|(_, n)| *n);
            // A launcher that may execute a new core runs under a deny-list (see
            // `super::updater`): no count of allowed calls.
            let deny_list = class == ThreadClass::Launcher && super::updater::started();
            let allowed =
                recorded.or_else(|| (filtering && !deny_list).then(|| allowed_count(class)));
            let allowed = allowed.map(|n| n as u32);
            row("core", pid, class.label(), &list, allowed)
        })
        .collect()
}

/// The row for a compartment serving a device of `kind`.
pub fn compartment(id: &str, pid: u32, kind: DeviceKind) -> Option<ConfinementStatus> {
    let threads = status::threads(pid as i32).ok()?;
    let list: Vec<&ThreadStatus> = threads.iter().collect();
    let allowed = allowed_count(ThreadClass::Device(kind)) as u32;
    Some(row(id, pid as i32, "compartment", &list, Some(allowed)))
}

fn row(
    process: &str,
    pid: i32,
    class: &str,
    threads: &[&ThreadStatus],
    allowed: Option<u32>,
) -> ConfinementStatus {
    let count = |f: &dyn Fn(&ThreadStatus) -> bool| threads.iter().filter(|t| f(t)).count() as u32;
    ConfinementStatus {
        process: process.to_string(),
        pid: pid as u32,
        class: class.to_string(),
        threads: threads.len() as u32,
        filtered: count(&|t| t.status.seccomp == SeccompMode::Filter),
        syscalls_allowed: allowed,
        no_capabilities: count(&|t| t.status.has_no_capabilities()),
        no_new_privs: count(&|t| t.status.no_new_privs),
    }
}
