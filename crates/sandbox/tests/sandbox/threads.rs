//! The core's threads, each confined alone (`thread::confine_this_thread`).

use std::process::Command;

use bulkhead_sandbox::seccomp::{self, DenyAction};
use bulkhead_sandbox::thread::{confine_this_thread, thread_name_rule, VIOLATION_EXIT};

/// Role `confined-thread`: a thread named `vcpu7` confines itself as class
/// `vcpu` (no capabilities, a list without `getppid`) and calls `getppid`;
/// the main thread, unconfined, waits. Only the violation can end it.
pub fn role() -> i32 {
    let worker = std::thread::Builder::new().name("vcpu7".into()).spawn(|| {
        let mut rules = seccomp::runtime();
        rules.push(thread_name_rule());
        let confined = confine_this_thread("vcpu", &rules, DenyAction::Trap, 0).unwrap();
        eprintln!("confined: {} calls", confined.allowed_syscalls);
        // SAFETY: getppid has no arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
        eprintln!("getppid returned");
    });
    let _ = worker.unwrap().join();
    std::thread::sleep(std::time::Duration::from_secs(10));
    0
}

/// A call outside a thread's list ends the process with 159 and one line
/// naming the thread, its class and the call; the unconfined thread could
/// not have stopped it.
pub fn a_violation_names_the_thread_and_ends_the_process() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--role", "confined-thread"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(VIOLATION_EXIT), "{stderr}");
    assert!(stderr.contains("confined: "), "{stderr}");
    assert!(
        stderr.contains(
            "bulkhead: seccomp: thread vcpu7 (vcpu) called getppid (system call 110), which its \
             allow-list does not allow"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("getppid returned"), "{stderr}");
}
