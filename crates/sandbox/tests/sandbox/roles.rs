//! The parts this binary plays when started with `--role NAME`: compartments
//! that enter their sandbox and try to get out, and helpers for the cgroup
//! and spawner tests. Each reports on fd 3 as `key=value` lines ending with
//! `end`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bulkhead_compartment::enter;
use bulkhead_sandbox::{spawn, Command, Policy};

use crate::util::{channel, libc_outcome, outcome, say, wait_release, Probe};

pub fn run(args: &[String]) -> i32 {
    let (role, rest) = args.split_first().expect("a role name");
    match role.as_str() {
        "probe" => probe(&Probe::parse(rest)),
        "trivial" => 0,
        "enter-and-exit" => enter_and_exit(),
        "list-fds" => list_fds(),
        "sleep" => {
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        "core-that-dies" => core_that_dies(),
        "unprivileged-core" => unprivileged_core(),
        "guest-memory" => guest_memory(),
        "forkbomb" => forkbomb(),
        "alloc" => alloc(rest[0].parse().unwrap()),
        "busy" => busy(rest[0].parse().unwrap()),
        "affinity" => affinity(),
        other => {
            eprintln!("unknown role {other}");
            2
        }
    }
}

/// Enters the probe's sandbox, then tries every way out it knows.
fn probe(config: &Probe) -> i32 {
    let mut out = channel();
    // A compartment opens its files before entering.
    let before = std::fs::File::open(&config.ro);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let early = config.thread_before.then(|| {
        std::thread::spawn(move || {
            if rx.recv().is_err() {
                return String::new(); // enter failed
            }
            // SAFETY: uname writes into a zeroed utsname.
            let rc = unsafe { libc::uname(&mut std::mem::zeroed()) };
            libc_outcome(rc.into())
        })
    });
    let started = Instant::now();
    let report = match enter(&config.policy()) {
        Ok(report) => report,
        Err(e) => {
            say(&mut out, "enter_error", e);
            let _ = writeln!(out, "end");
            return 3;
        }
    };
    say(&mut out, "enter_us", started.elapsed().as_micros());
    say(&mut out, "report", &report);
    if let Some(thread) = early {
        tx.send(()).unwrap();
        say(&mut out, "early_thread_uname", thread.join().unwrap());
    }
    if config.kill {
        let _ = writeln!(out, "end");
        // SAFETY: uname writes into a zeroed utsname; the filter kills us here.
        unsafe { libc::uname(&mut std::mem::zeroed()) };
        return 0;
    }
    escape_attempts(config, &mut out, before.is_ok());
    let _ = writeln!(out, "end");
    wait_release(&mut out);
    0
}

fn escape_attempts(config: &Probe, out: &mut UnixStream, opened_before: bool) {
    // SAFETY: getpid, getppid and getuid take no arguments.
    let (pid, ppid, uid) = unsafe { (libc::getpid(), libc::getppid(), libc::getuid()) };
    say(out, "pid", pid);
    say(out, "ppid", ppid);
    say(out, "uid", uid);
    say(out, "opened_before", opened_before);
    let content = std::fs::read_to_string(&config.ro);
    say(
        out,
        "ro_read",
        content.map_or_else(|e| outcome::<()>(Err(e)), |c| format!("ok:{}", c.trim())),
    );
    say(out, "ro_write", outcome(std::fs::OpenOptions::new().write(true).open(&config.ro)));
    let rw = std::fs::OpenOptions::new()
        .write(true)
        .open(&config.rw)
        .and_then(|mut f| f.write_all(b"written"));
    say(out, "rw_write", outcome(rw));
    say(out, "unlisted_open", outcome(std::fs::File::open(&config.unlisted)));
    say(out, "unlisted_stat", outcome(std::fs::metadata(&config.unlisted)));
    say(out, "etc_passwd", outcome(std::fs::File::open("/etc/passwd")));
    say(out, "proc_core", outcome(std::fs::File::open(format!("/proc/{}/status", config.core))));
    say(out, "mkdir_root", outcome(std::fs::create_dir("/escape")));
    // SAFETY: signal 0 only checks that the process exists.
    say(out, "kill_core", libc_outcome(unsafe { libc::kill(config.core, 0) }.into()));
    say(out, "connect", connect_host(config.port));
    say(out, "capset_raise", raise_capability());
    // SAFETY: prctl with integer arguments.
    let ambient =
        unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, 21, 0, 0) };
    say(out, "ambient_raise", libc_outcome(ambient.into()));
    // SAFETY: unshare takes flags only.
    say(out, "unshare_user", libc_outcome(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into()));
    // SAFETY: uname writes into a zeroed utsname.
    say(out, "uname", libc_outcome(unsafe { libc::uname(&mut std::mem::zeroed()) }.into()));
    let thread = std::thread::Builder::new().name("late".into()).spawn(|| {
        // SAFETY: as above.
        libc_outcome(unsafe { libc::uname(&mut std::mem::zeroed()) }.into())
    });
    say(
        out,
        "late_thread_uname",
        thread.map_or_else(|e| format!("spawn failed: {e}"), |t| t.join().unwrap()),
    );
}

/// A TCP connect to the host's loopback, with the two system calls only
/// (std's connect_timeout would also need ioctl and poll).
fn connect_host(port: u16) -> String {
    // SAFETY: creates a socket we close below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return format!("socket: {}", libc_outcome(-1));
    }
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: connects with an address that outlives the call; closes our fd.
    unsafe {
        let rc = libc::connect(
            fd,
            (&address as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let result = libc_outcome(rc.into());
        libc::close(fd);
        result
    }
}

/// Tries to put CAP_SYS_ADMIN back into the effective and permitted sets.
fn raise_capability() -> String {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header { version: 0x2008_0522, pid: 0 };
    let admin = 1 << 21;
    let data = [
        Data { effective: admin, permitted: admin, inheritable: 0 },
        Data { effective: 0, permitted: 0, inheritable: 0 },
    ];
    // SAFETY: capset reads a header and two data entries that outlive the call.
    libc_outcome(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) })
}

/// Enters a default sandbox and exits: for timing.
fn enter_and_exit() -> i32 {
    let policy = Policy::builder("timing").allow_syscalls(&["sendto"]).build().unwrap();
    let started = Instant::now();
    let report = enter(&policy).expect("enter");
    let mut out = channel();
    say(&mut out, "enter_us", started.elapsed().as_micros());
    say(&mut out, "report", report);
    let _ = writeln!(out, "end");
    0
}

/// Lists the open file descriptors (before any sandbox: /proc is there).
fn list_fds() -> i32 {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    // read_dir holds one fd of its own while listing; it is closed now.
    fds.retain(|&fd| {
        // SAFETY: F_GETFD only queries the descriptor.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    });
    let mut out = channel();
    let list: Vec<String> = fds.iter().map(i32::to_string).collect();
    say(&mut out, "fds", list.join(","));
    let _ = writeln!(out, "end");
    0
}

/// Spawns a sleeping compartment, says its PID, and dies by SIGKILL.
fn core_that_dies() -> i32 {
    let mut out = channel();
    let policy = crate::util::plain_policy("orphan").build().unwrap();
    let command = Command::current_exe().unwrap().arg("--role").arg("sleep");
    let compartment = spawn(&command, &policy).expect("spawn");
    say(&mut out, "child", compartment.pid());
    let _ = writeln!(out, "end");
    std::mem::forget(compartment);
    // SAFETY: kills this process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    0
}

/// Becomes `nobody` and spawns with every namespace, best effort then required.
fn unprivileged_core() -> i32 {
    let mut out = channel();
    // SAFETY: plain integer arguments.
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(65534) == 0
            && libc::setuid(65534) == 0
    };
    assert!(dropped, "dropping to nobody");
    // A core started as nobody is dumpable (its /proc files are its own);
    // one that dropped from root is not, until it says so.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    let command = Command::current_exe().unwrap().arg("--role").arg("trivial");
    let policy = crate::util::plain_policy("unprivileged").build().unwrap();
    match spawn(&command, &policy) {
        Ok(mut compartment) => {
            say(&mut out, "best_effort", compartment.report());
            say(&mut out, "best_effort_exit", compartment.wait().unwrap());
        }
        Err(e) => say(&mut out, "best_effort", format!("error: {e}")),
    }
    let required = crate::util::plain_policy("unprivileged")
        .enforcement(bulkhead_sandbox::Enforcement::Required)
        .build()
        .unwrap();
    match spawn(&command, &required) {
        Ok(compartment) => say(&mut out, "required", compartment.report()),
        Err(e) => say(&mut out, "required", format!("error: {e}")),
    }
    let user = crate::util::plain_policy("unprivileged")
        .user_namespace(bulkhead_sandbox::IdMap::root_as(65534, 65534))
        .build()
        .unwrap();
    match spawn(&command, &user) {
        Ok(mut compartment) => {
            say(&mut out, "with_user_ns", compartment.report());
            let _ = compartment.wait();
        }
        Err(e) => say(&mut out, "with_user_ns", format!("error: {e}")),
    }
    let _ = writeln!(out, "end");
    0
}

/// Maps the guest memory memfd it was given as fd 4 after entering with the
/// default limits, then tries a private allocation larger than RLIMIT_DATA.
fn guest_memory() -> i32 {
    let mut out = channel();
    let policy = Policy::builder("guest-memory")
        .allow_syscalls(&["fstat", "newfstatat", "sendto"])
        .build()
        .unwrap();
    let report = enter(&policy).expect("enter");
    say(&mut out, "report", report);
    // SAFETY: fstat writes into a zeroed stat.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 4 is the memfd spawn gave us.
    unsafe { libc::fstat(4, &mut stat) };
    let size = stat.st_size as usize;
    // SAFETY: maps fd 4 shared; the mapping is checked and touched page-sparsely.
    let shared = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            4,
            0,
        )
    };
    say(
        &mut out,
        "shared_map",
        if shared == libc::MAP_FAILED {
            crate::util::errno_name(std::io::Error::last_os_error().raw_os_error().unwrap())
        } else {
            "ok".into()
        },
    );
    if shared != libc::MAP_FAILED {
        // SAFETY: within the mapping just made; one byte per 256 MiB.
        unsafe {
            for offset in (0..size).step_by(256 << 20) {
                *(shared as *mut u8).add(offset) = 1;
            }
        }
    }
    // SAFETY: a private anonymous reservation, checked; never touched.
    let private = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1536 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    say(
        &mut out,
        "private_1536m",
        if private == libc::MAP_FAILED {
            crate::util::errno_name(std::io::Error::last_os_error().raw_os_error().unwrap())
        } else {
            "ok".into()
        },
    );
    say(&mut out, "size", size);
    let _ = writeln!(out, "end");
    0
}

/// Forks until the kernel refuses; the children wait to be killed with the namespace.
fn forkbomb() -> i32 {
    let mut out = channel();
    let mut forked = 0;
    let error = loop {
        // SAFETY: this process is single-threaded; the child only pauses.
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: pause has no arguments.
                unsafe { libc::pause() };
            },
            pid if pid > 0 => forked += 1,
            _ => break std::io::Error::last_os_error(),
        }
        if forked >= 64 {
            break std::io::Error::other("no limit hit");
        }
    };
    say(&mut out, "forked", forked);
    say(&mut out, "error", outcome::<()>(Err(error)));
    let _ = writeln!(out, "end");
    wait_release(&mut out);
    0
}

/// Allocates and touches `mib` MiB, one MiB at a time, saying how far it got.
fn alloc(mib: usize) -> i32 {
    let mut out = channel();
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        blocks.push(vec![1u8; 1 << 20]);
        if i % 8 == 0 {
            say(&mut out, "touched_mib", i + 1);
        }
    }
    say(&mut out, "touched_mib", mib);
    let _ = writeln!(out, "end");
    0
}

/// Spins for `ms` of wall time, then says how much CPU time it got.
fn busy(ms: u64) -> i32 {
    let mut out = channel();
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(ms) {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    std::hint::black_box(x);
    // SAFETY: all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into it.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let cpu_ms = usage.ru_utime.tv_sec * 1000
        + usage.ru_utime.tv_usec / 1000
        + usage.ru_stime.tv_sec * 1000
        + usage.ru_stime.tv_usec / 1000;
    say(&mut out, "cpu_ms", cpu_ms);
    let _ = writeln!(out, "end");
    0
}

/// Says which CPUs it may run on.
fn affinity() -> i32 {
    let mut out = channel();
    // SAFETY: all-zero is a valid (empty) cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes into it.
    unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    let cpus: Vec<String> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .map(|cpu| cpu.to_string())
        .collect();
    say(&mut out, "cpus", cpus.join(","));
    let _ = writeln!(out, "end");
    0
}
