//! Spawning: from a busy multi-threaded parent, with only the given fds,
//! dying with the core, failing cleanly, and what it costs.

use std::os::fd::{AsFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_sandbox::spawn::Stage;
use bulkhead_sandbox::{spawn, Command, Namespaces, SpawnError};

use crate::util::{plain_policy, socket_pair, spawn_role, Answers};

/// Runs `f` on a thread; fails the test if it takes longer than `limit`
/// (a deadlocked spawn cannot be interrupted, so the whole run stops).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(_) => {
            println!("DEADLOCK? {what} did not finish within {limit:?}");
            std::process::exit(102);
        }
    }
}

/// Four threads allocate, lock and print while 20 compartments start.
pub fn spawns_from_a_busy_multithreaded_parent() {
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Mutex::new(Vec::<String>::new()));
    let busy: Vec<_> = (0..4)
        .map(|i| {
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("thread {i} round {n}");
                    let mut list = shared.lock().unwrap();
                    list.push(text);
                    if list.len() > 1000 {
                        list.clear();
                    }
                    drop(list);
                    n += 1;
                }
                n
            })
        })
        .collect();
    within(Duration::from_secs(120), "spawning from a busy parent", || {
        let policy = plain_policy("busy").build().unwrap();
        for _ in 0..20 {
            let command = Command::current_exe().unwrap().args(["--role", "trivial"]);
            let mut compartment = spawn(&command, &policy).unwrap();
            assert!(compartment.wait().unwrap().success());
        }
    });
    stop.store(true, Ordering::Relaxed);
    let rounds: u64 = busy.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(rounds > 0);
}

/// A compartment is killed when the process that spawned it dies.
pub fn compartment_dies_with_its_core() {
    let (ours, theirs) = socket_pair();
    let policy = plain_policy("core").namespaces(Namespaces::none()).build().unwrap();
    let mut core = spawn_role("core-that-dies", &[], &policy, &theirs);
    drop(theirs);
    let answers = Answers::read(&ours);
    let child: i32 = answers.get("child").parse().unwrap();
    core.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{child}/stat"));
        match state {
            Err(_) => break,
            Ok(stat) if stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z') => {
                break
            }
            Ok(_) if Instant::now() > deadline => panic!("compartment {child} outlived its core"),
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The compartment has 0, 1, 2 and the fds it was given; nothing else leaks,
/// even an fd the parent has open without close-on-exec.
pub fn only_given_fds_are_open() {
    let (ours, theirs) = socket_pair();
    let leak = std::fs::File::open("/dev/null").unwrap();
    let leaked = std::os::fd::AsRawFd::as_raw_fd(&leak);
    // SAFETY: clears close-on-exec on an fd we own.
    unsafe { libc::fcntl(leaked, libc::F_SETFD, 0) };
    let extra = std::fs::File::open("/dev/zero").unwrap();
    let command = Command::current_exe()
        .unwrap()
        .args(["--role", "list-fds"])
        .fd(theirs.as_fd(), 3)
        .fd(extra.as_fd(), 7);
    let mut compartment = spawn(&command, &plain_policy("fds").build().unwrap()).unwrap();
    drop(theirs);
    let answers = Answers::read(&ours);
    assert_eq!(answers.get("fds"), "0,1,2,3,7");
    assert!(compartment.wait().unwrap().success());
}

/// A program that cannot be executed is an error naming the step, and the
/// child is reaped.
pub fn exec_failure_is_reported_and_reaped() {
    let command = Command::new("/nonexistent/bulkhead");
    let error = spawn(&command, &plain_policy("missing").build().unwrap()).unwrap_err();
    match &error {
        SpawnError::Child { stage: Stage::Exec, source } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT))
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(error.to_string().contains("could not execute the compartment program"), "{error}");
    // SAFETY: reaps any child left; there must be none.
    let rc = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    assert!(rc <= 0, "an unreaped child {rc}");
}

/// `clone` (for kernels or filters without `clone3`) gives the same result.
pub fn legacy_clone_works() {
    let command = Command::current_exe().unwrap().args(["--role", "trivial"]).legacy_clone(true);
    let mut compartment = spawn(&command, &plain_policy("legacy").build().unwrap()).unwrap();
    assert!(compartment.pidfd().is_some());
    assert!(compartment.report().to_string().contains("ns(mnt,pid,ipc,uts,net,cgroup,-user)"));
    assert!(compartment.wait().unwrap().success());
}

/// A core without privilege gets no namespace: best effort says so, required
/// refuses, and a user namespace brings them back.
pub fn unprivileged_core_reports_missing_namespaces() {
    let (ours, theirs) = socket_pair();
    let policy = plain_policy("core").namespaces(Namespaces::none()).build().unwrap();
    let mut core = spawn_role("unprivileged-core", &[], &policy, &theirs);
    drop(theirs);
    let answers = Answers::read(&ours);
    assert!(core.wait().unwrap().success());
    let best = answers.get("best_effort");
    println!("    best effort: {best}");
    assert!(
        best.contains("mnt,pid,ipc,uts,net,cgroup NOT APPLIED: the kernel refused it"),
        "{best}"
    );
    assert_eq!(answers.get("best_effort_exit"), "exit status: 0");
    let required = answers.get("required");
    assert!(
        required.starts_with("error: the kernel refused to create the namespaces"),
        "{required}"
    );
    let with_user = answers.get("with_user_ns");
    println!("    with a user namespace: {with_user}");
    assert!(with_user.contains("ns(mnt,pid,ipc,uts,net,cgroup,user)"), "{with_user}");
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// Prints the cost of spawning (to exec) and of a full start-enter-exit.
pub fn spawn_cost() {
    let runs = 15;
    let time = |namespaces: Namespaces, role: &str| {
        let mut spawn_ms = Vec::new();
        let mut total_ms = Vec::new();
        let mut enter_us = Vec::new();
        for _ in 0..runs {
            let (ours, theirs) = socket_pair();
            let policy = plain_policy("timing").namespaces(namespaces).build().unwrap();
            let command =
                Command::current_exe().unwrap().args(["--role", role]).fd(theirs.as_fd(), 3);
            let start = Instant::now();
            let mut compartment = spawn(&command, &policy).unwrap();
            spawn_ms.push(start.elapsed().as_secs_f64() * 1000.0);
            drop(theirs);
            let answers = Answers::read(&ours);
            assert!(compartment.wait().unwrap().success());
            total_ms.push(start.elapsed().as_secs_f64() * 1000.0);
            if let Some(us) = answers.map.get("enter_us") {
                enter_us.push(us.parse::<f64>().unwrap());
            }
        }
        (median(spawn_ms), median(total_ms), enter_us)
    };
    let (bare_spawn, bare_total, _) = time(Namespaces::none(), "trivial");
    // Guest RAM is a shared memfd mapping: a fork-style clone does not copy
    // its page tables, so it costs the spawn nothing; a private heap of the
    // same size is copied page table by page table.
    let guest = Guest::map(256 << 20);
    let (guest_spawn, _, _) = time(Namespaces::none(), "trivial");
    drop(guest);
    let heap = vec![1u8; 256 << 20];
    let (heap_spawn, _, _) = time(Namespaces::none(), "trivial");
    drop(heap);
    let (ns_spawn, ns_total, _) = time(Namespaces::default(), "trivial");
    let (_, full_total, enter_us) = time(Namespaces::default(), "enter-and-exit");
    let enter = median(enter_us);
    println!(
        "    spawn to exec, no namespace:       {bare_spawn:.2} ms (to exit {bare_total:.2} ms)"
    );
    println!("    ... with 256 MiB of guest RAM:     {guest_spawn:.2} ms");
    println!("    ... with a 256 MiB private heap:   {heap_spawn:.2} ms");
    println!("    spawn to exec, six namespaces:     {ns_spawn:.2} ms (to exit {ns_total:.2} ms)");
    println!(
        "    spawn, enter the sandbox, exit:    {full_total:.2} ms (enter {:.2} ms)",
        enter / 1000.0
    );
    assert!(full_total < 1000.0);
}

/// Guest RAM as the core has it: a memfd mapped shared, every page touched.
struct Guest {
    address: *mut libc::c_void,
    size: usize,
}

impl Guest {
    fn map(size: usize) -> Guest {
        // SAFETY: memfd_create with a C string and a flag; the fd is owned below.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is ours.
        let file = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        file.set_len(size as u64).unwrap();
        // SAFETY: maps the memfd shared; the result is checked.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(address, libc::MAP_FAILED);
        for offset in (0..size).step_by(4096) {
            // SAFETY: inside the mapping.
            unsafe { *(address as *mut u8).add(offset) = 1 };
        }
        Guest { address, size }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SAFETY: unmaps what map() mapped.
        unsafe { libc::munmap(self.address, self.size) };
    }
}
