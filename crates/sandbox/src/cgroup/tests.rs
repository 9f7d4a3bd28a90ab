//! The cgroup file-writing logic, against fake hierarchies in a temporary
//! directory (the real hierarchies are exercised by `tests/cgroups.rs`).

use std::fs;
use std::path::Path;

use super::*;
use crate::cgroup::{VmCgroups, VmLimits};

fn fake(dir: &Path, files: &[&str]) {
    fs::create_dir_all(dir).unwrap();
    for file in files {
        fs::write(dir.join(file), "").unwrap();
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

const V2_FILES: &[&str] = &[
    "cgroup.procs",
    "cgroup.subtree_control",
    "cpu.max",
    "cpu.weight",
    "memory.max",
    "memory.swap.max",
    "pids.max",
    "cpuset.cpus",
    "cpuset.mems",
];

#[test]
fn v2_enables_controllers_and_writes_limits() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("core.scope");
    fake(&base, &["cgroup.subtree_control", "cgroup.controllers"]);
    // What the kernel would show inside the new directory.
    fake(&base.join("vm"), V2_FILES);
    fake(&base.join("vm/blk0"), V2_FILES);
    let hierarchies = Hierarchies::from_list(vec![Hierarchy {
        version: Version::V2,
        mount: root.path().to_path_buf(),
        base: base.clone(),
        controllers: vec![
            Controller::Cpu,
            Controller::Memory,
            Controller::Pids,
            Controller::Cpuset,
        ],
    }]);
    let vm = Cgroup::create_in(&hierarchies, None, "vm", &CgroupLimits::default()).unwrap();
    let limits = CgroupLimits {
        cpu_quota: Some(CpuQuota::percent(25)),
        cpu_shares: Some(2048),
        memory_max: Some(256 << 20),
        pids_max: Some(32),
        cpus: Some("1".into()),
        mems: Some("0".into()),
        hugetlb_2m_max: None,
    };
    let blk = vm.child("blk0", &limits).unwrap();
    let dir = base.join("vm/blk0");
    assert_eq!(blk.path(Controller::Memory), Some(dir.as_path()));
    assert_eq!(read(&dir.join("cpu.max")), "25000 100000");
    assert_eq!(read(&dir.join("cpu.weight")), "79");
    assert_eq!(read(&dir.join("memory.max")), "268435456");
    assert_eq!(read(&dir.join("memory.swap.max")), "0");
    assert_eq!(read(&dir.join("pids.max")), "32");
    assert_eq!(read(&dir.join("cpuset.cpus")), "1");
    assert_eq!(read(&dir.join("cpuset.mems")), "0");
    // Each controller was enabled for the children of both ancestors (the
    // fake file keeps only the last write).
    assert_eq!(read(&base.join("cgroup.subtree_control")), "+pids");
    assert_eq!(read(&base.join("vm/cgroup.subtree_control")), "+pids");
    assert_eq!(blk.state(), LayerState::Applied { detail: "v2: cpu,memory,pids,cpuset".into() });
    blk.add_process(4242).unwrap();
    assert_eq!(read(&dir.join("cgroup.procs")), "4242");
}

#[test]
fn v1_copies_the_parents_cpuset_and_writes_limits() {
    let root = tempfile::tempdir().unwrap();
    let cpuset = root.path().join("cpuset");
    let memory = root.path().join("memory/outer");
    fake(&cpuset, &[]);
    fs::write(cpuset.join("cpuset.cpus"), "0-1\n").unwrap();
    fs::write(cpuset.join("cpuset.mems"), "0\n").unwrap();
    fake(&memory, &[]);
    let hierarchies = Hierarchies::from_list(vec![
        Hierarchy {
            version: Version::V1,
            mount: cpuset.clone(),
            base: cpuset.clone(),
            controllers: vec![Controller::Cpuset],
        },
        Hierarchy {
            version: Version::V1,
            mount: root.path().join("memory"),
            base: memory.clone(),
            controllers: vec![Controller::Memory],
        },
    ]);
    // The kernel creates these files with the directory; here they exist
    // beforehand. memsw is missing, as on a host without swap accounting.
    fake(&cpuset.join("c1"), &["cpuset.cpus", "cpuset.mems", "cgroup.procs", "tasks"]);
    fake(&memory.join("c1"), &["memory.limit_in_bytes", "cgroup.procs", "tasks"]);
    let limits = CgroupLimits { memory_max: Some(1 << 20), mems: None, ..Default::default() };
    let limits = CgroupLimits { cpus: Some("1".into()), ..limits };
    let c1 = Cgroup::create_in(&hierarchies, None, "c1", &limits).unwrap();
    assert_eq!(read(&memory.join("c1/memory.limit_in_bytes")), "1048576");
    assert_eq!(read(&cpuset.join("c1/cpuset.cpus")), "1");
    assert_eq!(c1.state(), LayerState::Applied { detail: "v1: cpuset,memory".into() });
    c1.add_thread(77).unwrap();
    assert_eq!(read(&cpuset.join("c1/tasks")), "77");
    assert_eq!(read(&memory.join("c1/tasks")), "77");
}

#[test]
fn v1_new_cpuset_starts_from_the_parents() {
    let root = tempfile::tempdir().unwrap();
    let parent = root.path().join("cpuset");
    let child = parent.join("vm");
    fake(&child, &["cpuset.cpus", "cpuset.mems"]);
    fs::write(parent.join("cpuset.cpus"), "0-1\n").unwrap();
    fs::write(parent.join("cpuset.mems"), "0\n").unwrap();
    inherit_cpuset(&parent, &child).unwrap();
    assert_eq!(read(&child.join("cpuset.cpus")), "0-1");
    assert_eq!(read(&child.join("cpuset.mems")), "0");
}

#[test]
fn missing_controllers_are_reported() {
    let hierarchies = Hierarchies::from_list(Vec::new());
    let limits = CgroupLimits { pids_max: Some(8), ..Default::default() };
    let cgroup = Cgroup::create_in(&hierarchies, None, "x", &limits).unwrap();
    let LayerState::NotApplied { reason } = cgroup.state() else { panic!("applied") };
    assert!(reason.contains("pids controller is mounted neither"), "{reason}");
    assert!(Cgroup::create_in(&hierarchies, None, "../x", &limits).is_err());
}

#[test]
fn v2_busy_parent_is_explained() {
    assert!(enable_v2(Path::new("/nonexistent"), Controller::Cpu).unwrap_err().contains("cpu"));
}

#[test]
fn v2_vm_layout_is_a_threaded_subtree() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("delegated");
    fake(&base, &["cgroup.subtree_control", "cgroup.controllers"]);
    // What the kernel would show in the directories the layout makes.
    let vm = base.join(format!("bulkhead-t-{}", std::process::id()));
    for dir in [vm.clone(), vm.join("core"), vm.join("core/vcpus")] {
        fake(&dir, V2_FILES);
        fake(&dir, &["cgroup.type", "cgroup.threads"]);
    }
    let hierarchies = Hierarchies::from_list(vec![Hierarchy {
        version: Version::V2,
        mount: root.path().to_path_buf(),
        base: base.clone(),
        controllers: vec![Controller::Cpu, Controller::Memory, Controller::Cpuset],
    }]);
    let limits = VmLimits {
        vcpu_quota: Some(CpuQuota::percent(50)),
        memory_max: Some(512 << 20),
        host_cpus: Some("1".into()),
        cpu_shares: None,
    };
    let cgroups = VmCgroups::create_in(&hierarchies, "t", &limits, &[Controller::Memory]).unwrap();
    assert!(cgroups.failures().is_empty(), "{:?}", cgroups.failures());
    assert_eq!(read(&vm.join("memory.max")), (512u64 << 20).to_string());
    assert_eq!(read(&vm.join("cpuset.cpus")), "1");
    // The quota is on the vCPUs only, in a threaded child of the core.
    assert_eq!(read(&vm.join("core/vcpus/cpu.max")), "50000 100000");
    assert_eq!(read(&vm.join("core/cpu.max")), "");
    assert_eq!(read(&vm.join("core/vcpus/cgroup.type")), "threaded");
    cgroups.place_vcpu(77).unwrap();
    assert_eq!(read(&vm.join("core/vcpus/cgroup.threads")), "77");
    assert!(cgroups.uses_v2());
    assert!(cgroups.describe().contains("core/vcpus"));
}

#[test]
fn v1_vm_layout_moves_single_threads() {
    let root = tempfile::tempdir().unwrap();
    let cpu = root.path().join("cpu");
    let name = format!("bulkhead-t-{}", std::process::id());
    for dir in [cpu.clone(), cpu.join(&name), cpu.join(&name).join("core")] {
        fake(&dir, &["cgroup.procs", "tasks"]);
    }
    fake(
        &cpu.join(&name).join("core/vcpus"),
        &["cgroup.procs", "tasks", "cpu.cfs_period_us", "cpu.cfs_quota_us"],
    );
    let hierarchies = Hierarchies::from_list(vec![Hierarchy {
        version: Version::V1,
        mount: cpu.clone(),
        base: cpu.clone(),
        controllers: vec![Controller::Cpu],
    }]);
    let limits = VmLimits { vcpu_quota: Some(CpuQuota::percent(150)), ..VmLimits::default() };
    let cgroups = VmCgroups::create_in(&hierarchies, "t", &limits, &[]).unwrap();
    let vcpus = cpu.join(&name).join("core/vcpus");
    assert_eq!(read(&vcpus.join("cpu.cfs_quota_us")), "150000");
    assert_eq!(read(&vcpus.join("cpu.cfs_period_us")), "100000");
    cgroups.place_vcpu(99).unwrap();
    assert_eq!(read(&vcpus.join("tasks")), "99");
    // A memory limit on a host without the memory controller is reported.
    let limits = VmLimits { memory_max: Some(1 << 30), ..VmLimits::default() };
    let other = VmCgroups::create_in(&hierarchies, "u", &limits, &[]).unwrap();
    assert!(other.failures()[0].contains("memory controller"), "{:?}", other.failures());
}

#[test]
fn cgroups_of_dead_cores_are_removed() {
    let root = tempfile::tempdir().unwrap();
    let cpu = root.path().join("cpu");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = cpu.join(format!("bulkhead-old-{dead}"));
    let alive = cpu.join(format!("bulkhead-other-{}", std::process::id()));
    fs::create_dir_all(stale.join("core/vcpus")).unwrap();
    fs::create_dir_all(&alive).unwrap();
    fs::create_dir_all(cpu.join("unrelated-1")).unwrap();
    let hierarchies = Hierarchies::from_list(vec![Hierarchy {
        version: Version::V1,
        mount: cpu.clone(),
        base: cpu.clone(),
        controllers: vec![Controller::Cpu],
    }]);
    let _vm = VmCgroups::create_in(&hierarchies, "t", &VmLimits::default(), &[]).unwrap();
    assert!(!stale.exists());
    assert!(alive.exists());
    assert!(cpu.join("unrelated-1").exists());
}
