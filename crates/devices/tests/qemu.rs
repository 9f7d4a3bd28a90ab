//! Real Linux drivers against the backends: QEMU 7.2 (TCG) boots the Debian test guest with
//! vhost-user devices served by `bulkhead-device` processes started on socket paths, and the
//! guest's init checks them (`crates/linux-guest/src/init.sh`).
//!
//! Prerequisites — these tests fail, saying which is missing:
//! - QEMU 7.2: `scripts/install-qemu.sh` (or `BULKHEAD_QEMU`);
//! - the guest: `bulkhead image build` (or apt access to the pinned packages);
//! - root and iproute2 for the net test (it makes its own network namespace).

mod harness;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bulkhead_disk::tools::CreateSpec;
use bulkhead_linux_guest::qemu::{Device, GuestRun, Qemu, VmSpec};
use bulkhead_linux_guest::{build, BuildOptions, LinuxGuest};
use harness::netns::NetNs;
use harness::Process;

const MIB: u64 = 1 << 20;

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
            panic!("the Linux guest is missing: {}\n(run `bulkhead image build`)", explain(&e))
        })
    })
}

fn boot(spec: &VmSpec) -> GuestRun {
    let qemu = Qemu::find().unwrap_or_else(|e| panic!("{}", explain(&e)));
    let run = qemu.run(spec).unwrap_or_else(|e| panic!("{}", explain(&e)));
    eprintln!(
        "guest {:?}: ready after {:?}, powered off after {:?}",
        spec.cmdline, run.ready_after, run.elapsed
    );
    run
}

/// Like [`boot`], with QEMU's arguments edited by `edit` (the helper has no hook for device
/// properties): runs QEMU directly and collects the report lines the same way.
fn boot_with(spec: &VmSpec, edit: impl Fn(&mut String)) -> GuestRun {
    use bulkhead_linux_guest::qemu::Exit;
    use bulkhead_linux_guest::report::BhLine;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let qemu = Qemu::find().unwrap_or_else(|e| panic!("{}", explain(&e)));
    let args: Vec<String> = spec
        .args()
        .into_iter()
        .map(|a| {
            let mut a = a.into_string().unwrap();
            edit(&mut a);
            a
        })
        .collect();
    let start = Instant::now();
    let mut child = Command::new(qemu.binary())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((start.elapsed(), line));
        }
    });
    let mut run = GuestRun {
        console: String::new(),
        lines: Vec::new(),
        exit: Exit::TimedOut,
        elapsed: Duration::ZERO,
        ready_after: None,
    };
    while let Ok((at, line)) = rx.recv_timeout(spec.timeout.saturating_sub(start.elapsed())) {
        if let Some(bh) = BhLine::parse(&line) {
            if bh.event == "ready" && run.ready_after.is_none() {
                run.ready_after = Some(at);
            }
            run.lines.push(bh);
        }
        run.console += &line;
        run.console.push('\n');
    }
    if start.elapsed() >= spec.timeout {
        let _ = child.kill();
        let _ = child.wait();
    } else {
        run.exit = Exit::Exited(child.wait().unwrap());
    }
    run.elapsed = start.elapsed();
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

fn image(dir: &Path, name: &str, spec: CreateSpec) -> PathBuf {
    let path = dir.join(name);
    bulkhead_disk::tools::create(&path, 64 * MIB, &spec).unwrap();
    path
}

/// The first `len` bytes of the virtual disk, through the disk crate.
fn disk_bytes(path: &Path, len: usize) -> Vec<u8> {
    let disk = bulkhead_disk::open(path, &Default::default()).unwrap();
    let mut buf = vec![0; len];
    disk.read_at(&mut buf, 0).unwrap();
    buf
}

fn blk_backend(dir: &Path, name: &str, disk: &str) -> Process {
    let sock = dir.join(format!("{name}.sock"));
    Process::start(&["blk", "--disk", disk], &sock)
}

#[test]
fn linux_uses_rng_and_raw_qcow2_vmdk_disks() {
    let dir = tempfile::tempdir().unwrap();
    let raw = image(dir.path(), "a.raw", CreateSpec::Raw);
    let qcow2 = image(dir.path(), "b.qcow2", CreateSpec::Qcow2(Default::default()));
    let vmdk = image(dir.path(), "c.vmdk", CreateSpec::Vmdk(Default::default()));
    let a = blk_backend(dir.path(), "a", &format!("{},format=raw", raw.display()));
    let b = blk_backend(dir.path(), "b", &format!("{},format=qcow2", qcow2.display()));
    let c = blk_backend(dir.path(), "c", &format!("{},format=vmdk", vmdk.display()));
    let rng = Process::start(&["rng"], &dir.path().join("rng.sock"));
    let spec = spec("rng,blk")
        .arg("bulkhead.blk=vda,vdb,vdc")
        .device(Device::vhost_user_blk(&a.socket))
        .device(Device::vhost_user_blk(&b.socket))
        .device(Device::vhost_user_blk(&c.socket))
        .device(Device::VhostUserRng { socket: rng.socket.clone() });
    let run = boot(&spec);
    run.assert_ok(&["rng", "blk"]);
    assert_eq!(run.checks("blk").len(), 3);
    for check in run.checks("blk") {
        assert_eq!(check.get("size"), Some("67108864"), "{check}");
        assert_eq!(check.get("ro"), Some("0"), "{check}");
    }
    assert!(run.check("rng").unwrap().get("source").unwrap().starts_with("virtio_rng"));
    let want = blk_pattern(4 * MIB as usize);
    for path in [&raw, &qcow2, &vmdk] {
        assert!(disk_bytes(path, want.len()) == want, "{} lacks the pattern", path.display());
        let report = bulkhead_disk::open(path, &Default::default()).unwrap().check().unwrap();
        assert!(report.is_clean(), "{}: {report:?}", path.display());
    }
}

#[test]
fn linux_sees_a_read_only_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.raw");
    let mut content = blk_pattern(8 * MIB as usize);
    content.reverse();
    std::fs::write(&path, &content).unwrap();
    let p = blk_backend(dir.path(), "ro", &format!("{},readonly,format=raw", path.display()));
    let run = boot(&spec("blk").device(Device::vhost_user_blk(&p.socket)));
    run.assert_ok(&["blk"]);
    let blk = run.check("blk").unwrap();
    assert_eq!(blk.get("ro"), Some("1"));
    assert_eq!(blk.get("write"), Some("rejected"));
    assert!(std::fs::read(&path).unwrap() == content, "a read-only disk changed");
}

#[test]
fn linux_pings_through_the_net_backend_in_a_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("qemu");
    ns.add_tap("bhtap0", "10.0.2.1/24");
    let wrapper = ["ip", "netns", "exec", ns.name.as_str()];
    let sock = dir.path().join("net.sock");
    let p = Process::start_in(&wrapper, &["net", "--tap", "bhtap0"], &sock);
    let spec = spec("net").device(Device::VhostUserNet { socket: p.socket.clone() });
    // QEMU 7.2 (TCG) segfaults in vhost_net_start → msix_set_vector_notifiers for a
    // vhost-user NIC with MSI-X; with INTx (`vectors=0`) it runs.
    let run = boot_with(&spec, |arg| {
        if arg.starts_with("virtio-net-pci,") {
            arg.push_str(",vectors=0");
        }
    });
    run.assert_ok(&["net"]);
    assert_eq!(run.check("net").unwrap().get("received"), Some("3"));
}
