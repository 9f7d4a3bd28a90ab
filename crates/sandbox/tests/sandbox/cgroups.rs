//! Cgroups on this host's real hierarchies: each limit must bite.

use std::os::unix::process::ExitStatusExt;

use bulkhead_sandbox::cgroup::{Controller, Hierarchies, Version};
use bulkhead_sandbox::{Cgroup, CgroupLimits, CpuQuota, LayerState, Namespaces};

use crate::util::{plain_policy, release, socket_pair, spawn_role, Answers};

fn limited(name: &str, limits: CgroupLimits) -> bulkhead_sandbox::Policy {
    plain_policy(name).cgroup_limits(limits).build().unwrap()
}

fn hierarchy_of(controller: Controller) -> Option<Version> {
    Hierarchies::detect().unwrap().for_controller(controller).map(|h| h.version)
}

/// pids.max = 8: the compartment (PID 1 of its namespace) forks 7 children, then EAGAIN.
pub fn pids_limit_stops_a_fork_bomb() {
    let policy = limited("forkbomb", CgroupLimits { pids_max: Some(8), ..Default::default() });
    let (mut ours, theirs) = socket_pair();
    let mut compartment = spawn_role("forkbomb", &[], &policy, &theirs);
    drop(theirs);
    let report = compartment.report().to_string();
    let version = hierarchy_of(Controller::Pids).expect("a pids controller");
    assert!(report.contains(&format!("cgroup({version}: pids)")), "{report}");
    let answers = Answers::read(&ours);
    let cgroup = compartment.cgroup().unwrap();
    let dir = cgroup.path(Controller::Pids).unwrap().to_path_buf();
    assert_eq!(cgroup.procs().unwrap().len(), 8);
    let events = cgroup.read(Controller::Pids, "pids.events").unwrap();
    release(&mut ours);
    assert!(compartment.wait().unwrap().success());
    assert_eq!(answers.get("forked"), "7");
    assert_eq!(answers.get("error"), "EAGAIN");
    assert!(events.starts_with("max ") && events.trim() != "max 0", "pids.events: {events}");
    assert!(!dir.exists(), "the cgroup {} is removed after wait", dir.display());
}

/// A 32 MiB memory limit: allocating 256 MiB ends in the OOM killer.
pub fn memory_limit_ooms_an_allocation() {
    let policy =
        limited("alloc", CgroupLimits { memory_max: Some(32 << 20), ..Default::default() });
    let (ours, theirs) = socket_pair();
    let mut compartment = spawn_role("alloc", &["256".into()], &policy, &theirs);
    drop(theirs);
    let answers = Answers::read(&ours);
    let touched: usize = answers.get("touched_mib").parse().unwrap();
    let cgroup = compartment.cgroup().unwrap();
    let version = hierarchy_of(Controller::Memory).unwrap();
    // The peak use reached the limit and stayed under it.
    let peak_file = match version {
        Version::V1 => "memory.max_usage_in_bytes",
        Version::V2 => "memory.peak",
    };
    let peak: u64 = cgroup.read(Controller::Memory, peak_file).unwrap().trim().parse().unwrap();
    let oom = match version {
        Version::V1 => cgroup.read(Controller::Memory, "memory.oom_control").unwrap(),
        Version::V2 => cgroup.read(Controller::Memory, "memory.events").unwrap(),
    };
    let exit = compartment.wait().unwrap();
    assert_eq!(exit.signal(), Some(libc::SIGKILL), "exit {exit}, touched {touched} MiB");
    assert!(touched < 32, "touched {touched} MiB under a 32 MiB limit");
    assert!(oom.contains("oom_kill 1"), "{oom}");
    assert!(peak <= 32 << 20 && peak > 24 << 20, "peak use {peak} under a 32 MiB limit");
}

/// A 20% CPU quota: 600 ms of spinning gets about 120 ms of CPU.
pub fn cpu_quota_caps_a_busy_loop() {
    let policy = limited(
        "busy",
        CgroupLimits { cpu_quota: Some(CpuQuota::percent(20)), ..Default::default() },
    );
    let (ours, theirs) = socket_pair();
    let mut compartment = spawn_role("busy", &["600".into()], &policy, &theirs);
    drop(theirs);
    let cpu_ms: u64 = Answers::read(&ours).get("cpu_ms").parse().unwrap();
    assert!(compartment.wait().unwrap().success());
    println!("    CPU time in 600 ms at a 20% quota: {cpu_ms} ms");
    assert!(cpu_ms <= 250, "{cpu_ms} ms of CPU in 600 ms at 20%");
}

/// cpuset.cpus = the last CPU: the compartment may run there only.
pub fn cpuset_pins_to_one_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let last = (cpus - 1).to_string();
    let policy = limited("pinned", CgroupLimits { cpus: Some(last.clone()), ..Default::default() });
    let (ours, theirs) = socket_pair();
    let mut compartment = spawn_role("affinity", &[], &policy, &theirs);
    drop(theirs);
    assert_eq!(Answers::read(&ours).get("cpus"), last);
    assert!(compartment.wait().unwrap().success());
}

/// A VM cgroup with a compartment below it, and a vCPU thread moved alone.
pub fn nested_vm_and_vcpu_thread_cgroups() {
    let vm_limits = CgroupLimits {
        cpu_shares: Some(512),
        memory_max: Some(256 << 20),
        pids_max: Some(64),
        ..Default::default()
    };
    let vm = Cgroup::create(&format!("test-vm-{}", std::process::id()), &vm_limits).unwrap();
    assert!(matches!(vm.state(), LayerState::Applied { .. }), "{:?}", vm.state());
    let policy = limited("blk", CgroupLimits { pids_max: Some(4), ..Default::default() });
    let (mut ours, theirs) = socket_pair();
    let command = bulkhead_sandbox::Command::current_exe()
        .unwrap()
        .args(["--role", "forkbomb"])
        .fd(std::os::fd::AsFd::as_fd(&theirs), 3)
        .cgroup_parent(&vm);
    let mut compartment = bulkhead_sandbox::spawn(&command, &policy).unwrap();
    drop(theirs);
    let answers = Answers::read(&ours);
    let inner = compartment.cgroup().unwrap().path(Controller::Pids).unwrap().to_path_buf();
    assert!(inner.starts_with(vm.path(Controller::Pids).unwrap()));
    release(&mut ours);
    assert!(compartment.wait().unwrap().success());
    assert_eq!(answers.get("forked"), "3", "the compartment's own limit");

    // A vCPU thread: only that thread moves.
    let vcpu = vm
        .child(
            "vcpu0",
            &CgroupLimits { cpu_quota: Some(CpuQuota::percent(50)), ..Default::default() },
        )
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        // SAFETY: gettid has no arguments.
        tx.send(unsafe { libc::gettid() }).unwrap();
        done_rx.recv().unwrap();
    });
    let tid = rx.recv().unwrap();
    vcpu.add_thread(tid).unwrap();
    let cpu_dir = vcpu.path(Controller::Cpu).unwrap();
    let tasks = std::fs::read_to_string(cpu_dir.join("tasks")).unwrap();
    assert_eq!(tasks.trim(), tid.to_string());
    // Back to where it was, so the cgroups can go.
    let own = Hierarchies::detect().unwrap().for_controller(Controller::Cpu).unwrap().base.clone();
    std::fs::write(own.join("tasks"), tid.to_string()).unwrap();
    done_tx.send(()).unwrap();
    thread.join().unwrap();
    vcpu.remove().unwrap();
    vm.remove().unwrap();
}

/// The v2 code path on the real unified hierarchy. Here v2 has only the
/// hugetlb controller: enable it, create, limit, join, remove.
pub fn v2_hierarchy_create_join_remove() {
    let hierarchies = Hierarchies::detect().unwrap();
    let Some(unified) = hierarchies.unified().cloned() else {
        println!("    (no cgroup v2 mount: nothing to test)");
        return;
    };
    println!("    v2 at {} offers {:?}", unified.base.display(), unified.controllers);
    if hierarchies.for_controller(Controller::Hugetlb).map(|h| h.version) != Some(Version::V2) {
        println!("    (hugetlb is not on v2 here: nothing to test)");
        return;
    }
    // Enabling hugetlb for the children of the v2 root changes the host: undo
    // it afterwards if it was not enabled before.
    let subtree = unified.base.join("cgroup.subtree_control");
    let enabled_before = std::fs::read_to_string(&subtree).unwrap().contains("hugetlb");
    let name = format!("bulkhead-test-{}", std::process::id());
    let limits = CgroupLimits { hugetlb_2m_max: Some(4 << 20), ..Default::default() };
    let cgroup = Cgroup::create_in(&hierarchies, None, &name, &limits).unwrap();
    assert_eq!(cgroup.state(), LayerState::Applied { detail: "v2: hugetlb".into() });
    let dir = unified.base.join(&name);
    assert_eq!(cgroup.path(Controller::Hugetlb), Some(dir.as_path()));
    assert_eq!(std::fs::read_to_string(dir.join("hugetlb.2MB.max")).unwrap().trim(), "4194304");
    let (ours, theirs) = socket_pair();
    let policy = plain_policy("v2").namespaces(Namespaces::none()).build().unwrap();
    let mut child = spawn_role("sleep", &[], &policy, &theirs);
    drop((ours, theirs));
    cgroup.add_process(child.pid()).unwrap();
    assert_eq!(cgroup.procs().unwrap(), vec![child.pid()]);
    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", child.pid())).unwrap();
    assert!(membership.lines().any(|l| l.starts_with("0::") && l.ends_with(&name)), "{membership}");
    child.kill().unwrap();
    child.wait().unwrap();
    cgroup.remove().unwrap();
    assert!(!dir.exists());
    if !enabled_before {
        // Fails harmlessly if another cgroup below the root now uses it.
        let _ = std::fs::write(&subtree, "-hugetlb");
    }
}
