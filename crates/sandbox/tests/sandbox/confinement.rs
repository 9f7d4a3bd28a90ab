//! A spawned compartment enters its sandbox and tries to get out.

use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use bulkhead_sandbox::status::SeccompMode;
use bulkhead_sandbox::{spawn, Command, Namespace, Policy, ProcStatus};

use crate::util::{release, socket_pair, spawn_role, Answers, Probe};

/// Two files the probe is given and one it is not, in a fresh directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("given-ro"), "read me\n").unwrap();
        std::fs::write(dir.path().join("given-rw"), "").unwrap();
        std::fs::write(dir.path().join("secret"), "not for you\n").unwrap();
        Files { dir }
    }

    fn probe(&self, listener: &TcpListener) -> Probe {
        Probe {
            ro: self.dir.path().join("given-ro"),
            rw: self.dir.path().join("given-rw"),
            unlisted: self.dir.path().join("secret"),
            port: listener.local_addr().unwrap().port(),
            core: std::process::id() as i32,
            empty_root: true,
            net_ns: true,
            tcp: true,
            ..Probe::default()
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Runs the probe to the point where it waits, checks its status from
/// outside, then lets it finish; returns its answers.
fn run_probe(probe: &Probe) -> (Answers, ProcStatus) {
    let (mut ours, theirs) = socket_pair();
    let mut compartment = spawn_role("probe", &probe.args(), &probe.policy(), &theirs);
    drop(theirs);
    let answers = Answers::read(&ours);
    let status = compartment.status().expect("status of the waiting probe");
    release(&mut ours);
    let exit = compartment.wait().unwrap();
    assert!(exit.success(), "probe exited with {exit}; answers {:#?}", answers.map);
    println!("    report: {}", answers.get("report"));
    println!("    status: {status}");
    (answers, status)
}

fn assert_sandboxed_status(status: &ProcStatus) {
    assert_eq!(status.seccomp, SeccompMode::Filter);
    assert!(status.no_new_privs);
    assert_eq!(status.cap_effective, 0);
    assert!(status.has_no_capabilities(), "{status:?}");
    assert_eq!(status.ns_pids.last(), Some(&1), "PID 1 of its namespace");
    for ns in [Namespace::Mount, Namespace::Pid, Namespace::Ipc, Namespace::Uts, Namespace::Cgroup]
    {
        assert!(status.own_namespaces.contains(&ns), "{ns:?} in {status:?}");
    }
}

/// The default sandbox: empty root, Landlock, no caps, seccomp returning EPERM.
pub fn probe_with_empty_root() {
    let files = Files::new();
    let listener = listener();
    let (answers, status) = run_probe(&files.probe(&listener));
    assert_sandboxed_status(&status);
    assert!(status.own_namespaces.contains(&Namespace::Net));
    // Its PID namespace hides the host.
    assert_eq!(answers.get("pid"), "1");
    assert_eq!(answers.get("ppid"), "0");
    assert_eq!(answers.get("kill_core"), "ESRCH");
    assert_eq!(answers.get("proc_core"), "ENOENT");
    // Its files work, read-only where listed so.
    assert_eq!(answers.get("opened_before"), "true");
    assert_eq!(answers.get("ro_read"), "ok:read me");
    assert_eq!(answers.get("ro_write"), "EROFS");
    assert_eq!(answers.get("rw_write"), "ok");
    assert_eq!(std::fs::read_to_string(files.path("given-rw")).unwrap(), "written");
    // Nothing else exists for it.
    assert_eq!(answers.get("unlisted_open"), "ENOENT");
    assert_eq!(answers.get("unlisted_stat"), "ENOENT");
    assert_eq!(answers.get("etc_passwd"), "ENOENT");
    assert_eq!(answers.get("mkdir_root"), "EROFS");
    // No network, no way back to capabilities, no call outside the list.
    assert_eq!(answers.get("connect"), "EACCES");
    assert_eq!(answers.get("capset_raise"), "EPERM");
    assert_eq!(answers.get("ambient_raise"), "EPERM");
    assert_eq!(answers.get("unshare_user"), "EPERM");
    assert_eq!(answers.get("uname"), "EPERM");
    assert_eq!(answers.get("late_thread_uname"), "EPERM");
    let report = answers.get("report");
    for layer in [
        "ns(mnt,pid,ipc,uts,net,cgroup,-user)",
        "nnp",
        "root(empty, ro, 2 binds)",
        "landlock(abi ",
        "2 paths, tcp, scope)",
        "caps(none",
        "rlimits(nofile 256, core 0, data 1G)",
        "seccomp(errno 1, ",
    ] {
        assert!(report.contains(layer), "{layer} missing from {report}");
    }
    assert!(!report.contains("NOT APPLIED"), "{report}");
}

/// Without the empty root, Landlock alone keeps the unlisted file out.
pub fn probe_with_landlock_only() {
    let files = Files::new();
    let listener = listener();
    let probe = Probe { empty_root: false, ..files.probe(&listener) };
    let (answers, status) = run_probe(&probe);
    assert_sandboxed_status(&status);
    assert_eq!(answers.get("ro_read"), "ok:read me");
    assert_eq!(answers.get("ro_write"), "EACCES");
    assert_eq!(answers.get("rw_write"), "ok");
    assert_eq!(answers.get("unlisted_open"), "EACCES");
    assert_eq!(answers.get("etc_passwd"), "EACCES");
    // Landlock does not cover stat: the host's files are visible, not readable.
    assert_eq!(answers.get("unlisted_stat"), "ok");
    // The host's /proc is there, but its files are not readable.
    assert_eq!(answers.get("proc_core"), "EACCES");
    assert_eq!(answers.get("kill_core"), "ESRCH");
    let report = answers.get("report");
    assert!(report.contains("-root"), "{report}");
}

/// In kill mode, a call outside the list ends the process with SIGSYS.
pub fn kill_mode_kills_on_a_denied_call() {
    let files = Files::new();
    let listener = listener();
    let probe = Probe { kill: true, ..files.probe(&listener) };
    let (ours, theirs) = socket_pair();
    let mut compartment = spawn_role("probe", &probe.args(), &probe.policy(), &theirs);
    drop(theirs);
    let answers = Answers::read(&ours);
    assert!(answers.get("report").contains("seccomp(kill, "), "{}", answers.get("report"));
    let exit = compartment.wait().unwrap();
    assert_eq!(exit.signal(), Some(libc::SIGSYS), "exit {exit}");
}

/// TSYNC: a thread started before enter() is filtered too. Its capabilities
/// (per thread) stay, and Landlock (ABI 7 here) cannot restrict it: the report
/// says both.
pub fn filter_covers_threads_started_before() {
    let files = Files::new();
    let listener = listener();
    let probe = Probe { thread_before: true, ..files.probe(&listener) };
    let (answers, status) = run_probe(&probe);
    assert_sandboxed_status(&status);
    assert_eq!(answers.get("early_thread_uname"), "EPERM");
    let report = answers.get("report");
    assert!(report.contains("caps(NOT APPLIED: dropped for the calling thread only"), "{report}");
    let abi = bulkhead_compartment::landlock_rules::kernel_abi().unwrap();
    if abi < 8 {
        assert!(report.contains("landlock(NOT APPLIED: only the calling thread"), "{report}");
    } else {
        assert!(!report.contains("NOT APPLIED"), "{report}");
    }
}

/// In required mode, a layer that cannot be applied is an error: here the
/// capabilities of a thread started before enter(), which stay its own.
pub fn required_mode_refuses_a_thread_it_cannot_restrict() {
    let files = Files::new();
    let listener = listener();
    let probe = Probe { thread_before: true, required: true, ..files.probe(&listener) };
    let (ours, theirs) = socket_pair();
    let mut compartment = spawn_role("probe", &probe.args(), &probe.policy(), &theirs);
    drop(theirs);
    let answers = Answers::read(&ours);
    let error = answers.get("enter_error");
    assert!(
        error.contains("layer caps could not be applied and the policy requires it"),
        "{error}"
    );
    assert_eq!(compartment.wait().unwrap().code(), Some(3));
}

/// TCP to the host's loopback is stopped by the network namespace alone and
/// by Landlock alone; with neither it goes through (the control).
pub fn network_layers_each_block_tcp() {
    let files = Files::new();
    let listener = listener();
    let base = files.probe(&listener);
    let cases = [(true, false, "ENETUNREACH"), (false, true, "EACCES"), (false, false, "ok")];
    for (net_ns, tcp, expected) in cases {
        let probe = Probe { net_ns, tcp, ..base.clone() };
        let (answers, status) = run_probe(&probe);
        assert_eq!(status.own_namespaces.contains(&Namespace::Net), net_ns);
        assert_eq!(answers.get("connect"), expected, "net namespace {net_ns}, Landlock TCP {tcp}");
    }
}

/// The default RLIMIT_DATA (1 GiB) lets a compartment map 4 GiB of guest
/// memory shared from a memfd, and stops a 1.5 GiB private mapping.
pub fn data_limit_allows_guest_memory() {
    // SAFETY: memfd_create with a C string name and a flag.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd is ours.
    let memfd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let file = std::fs::File::from(memfd);
    file.set_len(4 << 30).unwrap();
    let (ours, theirs) = socket_pair();
    let command = Command::current_exe()
        .unwrap()
        .args(["--role", "guest-memory"])
        .fd(theirs.as_fd(), 3)
        .fd(file.as_fd(), 4);
    let policy = Policy::builder("guest-memory").build().unwrap();
    let mut compartment = spawn(&command, &policy).unwrap();
    drop(theirs);
    let answers = Answers::read(&ours);
    assert_eq!(answers.get("shared_map"), "ok");
    assert_eq!(answers.get("size"), (4u64 << 30).to_string());
    assert_eq!(answers.get("private_1536m"), "ENOMEM");
    assert!(compartment.wait().unwrap().success());
}

/// With a user namespace, root inside is `nobody` on the host, and the
/// whole sandbox still goes up.
pub fn user_namespace_maps_root_to_nobody() {
    let files = Files::new();
    for name in ["given-ro", "given-rw"] {
        let path = files.path(name);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
    }
    std::fs::set_permissions(files.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let listener = listener();
    let probe = Probe { user_ns: true, ..files.probe(&listener) };
    let (answers, status) = run_probe(&probe);
    assert_sandboxed_status(&status);
    assert!(status.own_namespaces.contains(&Namespace::User));
    assert_eq!(answers.get("uid"), "0", "root inside");
    assert_eq!(status.uids, [65534; 4], "nobody outside");
    assert_eq!(answers.get("ro_read"), "ok:read me");
    assert_eq!(answers.get("rw_write"), "ok");
    assert_eq!(answers.get("unlisted_open"), "ENOENT");
    let report = answers.get("report");
    assert!(report.contains("ns(mnt,pid,ipc,uts,net,cgroup,user)"), "{report}");
    assert!(!report.contains("NOT APPLIED"), "{report}");
    assert!(Path::new(&files.path("secret")).exists());
}
