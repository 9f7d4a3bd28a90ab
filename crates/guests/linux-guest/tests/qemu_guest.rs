//! End-to-end: the Linux guest boots under QEMU 7.2 (TCG) and its init's checks pass against
//! QEMU's own virtio devices and against `qemu-storage-daemon` as a vhost-user-blk backend.
//!
//! Prerequisites (these tests fail, saying which is missing, when one is):
//! - `scripts/install-qemu.sh` has installed QEMU 7.2 (or `BULKHEAD_QEMU` names one);
//! - the guest is built (`bulkhead image build`), or apt can fetch the pinned packages;
//! - `qemu-storage-daemon` is on `PATH` (Debian's `qemu-utils`).

use std::error::Error;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bulkhead_linux_guest::qemu::{Device, GuestRun, Qemu, VmSpec};
use bulkhead_linux_guest::storage_daemon::StorageDaemon;
use bulkhead_linux_guest::{build, BuildOptions, LinuxGuest};

const MIB: usize = 1 << 20;

fn explain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

fn guest() -> &'static LinuxGuest {
    static GUEST: OnceLock<LinuxGuest> = OnceLock::new();
    GUEST.get_or_init(|| {
        build(&BuildOptions::default()).unwrap_or_else(|e| {
            panic!(
                "the Linux guest could not be built: {}\n(run `bulkhead image build`)",
                explain(&e)
            )
        })
    })
}

fn run(spec: &VmSpec) -> GuestRun {
    let qemu = Qemu::find().unwrap_or_else(|e| panic!("{}", explain(&e)));
    let run = qemu.run(spec).unwrap_or_else(|e| panic!("{}", explain(&e)));
    eprintln!(
        "guest {:?}: ready after {:?}, powered off after {:?}",
        spec.cmdline, run.ready_after, run.elapsed
    );
    run
}

fn spec(tests: &str) -> VmSpec {
    let mut spec = VmSpec::new(guest(), tests);
    spec.timeout = Duration::from_secs(180);
    spec
}

/// The pattern the init's `blk` check writes: 8-byte lines `0000000\n`, `0000001\n`, ….
fn blk_pattern(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 8);
    let mut i = 0;
    while out.len() < bytes {
        out.extend_from_slice(format!("{i:07}\n").as_bytes());
        i += 1;
    }
    out.truncate(bytes);
    out
}

fn md5_of(path: &Path, bytes: usize) -> String {
    let data = fs::read(path).unwrap();
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), &data[..bytes]).unwrap();
    let out = Command::new("md5sum").arg(tmp.path()).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

fn sparse_image(dir: &Path, name: &str, size: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::File::create(&path).unwrap().set_len(size).unwrap();
    path
}

#[test]
fn boots_and_reports_cpus_mem_rng() {
    let mut spec = spec("cpus,mem,rng").device(Device::VirtioRng);
    spec.cpus = 2;
    let run = run(&spec);
    run.assert_ok(&["cpus", "mem", "rng"]);
    let ready = run.lines.iter().find(|l| l.event == "ready").unwrap();
    assert!(ready.get("kernel").unwrap().starts_with("6.1."), "{ready}");
    assert_eq!(run.check("cpus").unwrap().get("count"), Some("2"));
    let mem_kb: u64 = run.check("mem").unwrap().get("memtotal_kb").unwrap().parse().unwrap();
    assert!((400_000..=524_288).contains(&mem_kb), "MemTotal {mem_kb} kB of 512 MiB");
    assert_eq!(run.check("rng").unwrap().get("bytes"), Some("4096"));
}

#[test]
fn blk_check_passes_on_qemu_storage_daemon_vhost_user_blk() {
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), "disk.raw", 64 * MIB as u64);
    let daemon = StorageDaemon::vhost_user_blk(&image, &dir.path().join("blk.sock"), true)
        .unwrap_or_else(|e| panic!("{}", explain(&e)));
    let run = run(&spec("blk").device(Device::vhost_user_blk(daemon.socket())));
    drop(daemon);
    run.assert_ok(&["blk"]);
    let blk = run.check("blk").unwrap();
    assert_eq!(blk.get("size"), Some("67108864"));
    assert_eq!(blk.get("ro"), Some("0"));
    // What the guest wrote went through the backend into the file.
    let written = fs::read(&image).unwrap();
    assert!(written[..4 * MIB] == blk_pattern(4 * MIB)[..], "the image does not hold the pattern");
    assert_eq!(blk.get("md5"), Some(md5_of(&image, 4 * MIB).as_str()));
}

#[test]
fn read_only_vhost_user_blk_rejects_writes_and_serves_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ro.raw");
    let mut content = blk_pattern(8 * MIB);
    content.reverse();
    fs::write(&image, &content).unwrap();
    let daemon = StorageDaemon::vhost_user_blk(&image, &dir.path().join("ro.sock"), false)
        .unwrap_or_else(|e| panic!("{}", explain(&e)));
    let run = run(&spec("blk").device(Device::vhost_user_blk(daemon.socket())));
    drop(daemon);
    run.assert_ok(&["blk"]);
    let blk = run.check("blk").unwrap();
    assert_eq!(blk.get("ro"), Some("1"));
    assert_eq!(blk.get("write"), Some("rejected"));
    assert_eq!(blk.get("md5"), Some(md5_of(&image, 4 * MIB).as_str()));
    assert_eq!(fs::read(&image).unwrap(), content, "a read-only disk changed");
}

#[test]
fn virtio_blk_two_disks_stress_and_user_net() {
    let dir = tempfile::tempdir().unwrap();
    let a = sparse_image(dir.path(), "a.raw", 8 * MIB as u64);
    let b = sparse_image(dir.path(), "b.raw", 4 * MIB as u64);
    let spec = spec("blk,stress-blk,net")
        .arg("bulkhead.blk=vda,vdb bulkhead.rounds=2")
        .device(Device::VirtioBlk { path: a.clone(), read_only: false })
        .device(Device::VirtioBlk { path: b.clone(), read_only: false })
        .device(Device::NetUser);
    let run = run(&spec);
    run.assert_ok(&["blk", "stress-blk", "net"]);
    assert_eq!(run.checks("blk").len(), 2);
    assert_eq!(run.checks("stress-blk").len(), 2);
    assert_eq!(run.check("net").unwrap().get("received"), Some("3"));
    let progress = run.lines.iter().filter(|l| l.event == "progress").count();
    assert_eq!(progress, 2 * 2 * 2, "write and verify, 2 rounds, 2 disks");
    // The last stress round left its header at the start of every 1 MiB block.
    let last = fs::read(&b).unwrap();
    assert!(last[3 * MIB..].starts_with(b"bulkhead stress round 2 block 3\n"));
}

#[test]
fn a_failing_check_fails_the_run() {
    // No rng device: the rng check must fail, and so must the run as a whole.
    let run = run(&spec("rng,nonsense"));
    let rng = run.check("rng").unwrap();
    assert_eq!(rng.get("status"), Some("fail"));
    assert_eq!(rng.get("reason"), Some("no-virtio-rng"));
    assert_eq!(run.check("nonsense").unwrap().get("reason"), Some("unknown-check"));
    assert_eq!(run.done().unwrap().get("status"), Some("fail"));
    let why = run.verify(&["rng"]).unwrap_err();
    assert!(why.contains("check rng did not pass"), "{why}");
}
