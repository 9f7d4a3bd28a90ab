//! Real Linux drivers against the backends: QEMU 7.2 (TCG) boots the Debian test guest with
//! vhost-user devices served by `bulkhead-device` processes started on socket paths, and the
//! guest's init checks them (`crates/guests/linux-guest/src/init.sh`).
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
    boot_watched(spec, edit, |_| {})
}

/// [`boot_with`], showing each report line to `watch` as it arrives.
fn boot_watched(
    spec: &VmSpec,
    edit: impl Fn(&mut String),
    mut watch: impl FnMut(&bulkhead_linux_guest::report::BhLine),
) -> GuestRun {
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
    let mut cmd = Command::new(qemu.binary());
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe and touches only the child. QEMU dies with the thread
    // that started it, so a failed test leaves no guest running.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
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
            watch(&bh);
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
    let disk = bulkhead_disk::open(path, &shared_read()).unwrap();
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
        let report = bulkhead_disk::open(path, &shared_read()).unwrap().check().unwrap();
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

/// What ends each backend of [`linux_survives_its_disk_backend_dying_again_and_again`]: SIGKILL
/// at a random moment, or an injected fault (`BULKHEAD_FAULT`) in the middle of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Death {
    Kill,
    Fault(&'static str),
}

/// Five SIGKILLs at random moments and four deaths in the middle of a request.
const DEATHS: [Death; 9] = [
    Death::Kill,
    Death::Fault("exit-before-used"),
    Death::Kill,
    Death::Fault("exit-after-used"),
    Death::Kill,
    Death::Fault("corrupt"),
    Death::Kill,
    Death::Fault("panic"),
    Death::Kill,
];

/// The stressed disk and how many passes the guest makes over it: enough I/O to outlast the
/// deaths above (up to 0.4 s of it between two deaths; each death then costs about 1 s, QEMU's
/// reconnection delay).
const STRESS_MIB: u64 = 16;
const STRESS_ROUNDS: u32 = 2;

/// xorshift64: the random moments, reproducible with `BULKHEAD_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("BULKHEAD_TEST_SEED").ok().and_then(|s| s.parse().ok());
        let seed = seed.unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(1, |d| d.as_nanos() as u64) | 1
        });
        eprintln!("random moments from BULKHEAD_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The guest's report lines as they come, from QEMU's thread.
struct Watch {
    rx: std::sync::mpsc::Receiver<bulkhead_linux_guest::report::BhLine>,
    done: bool,
    progress: usize,
}

impl Watch {
    /// Takes the lines that arrived; whether the guest is still stressing the disk.
    fn busy(&mut self) -> bool {
        while let Ok(line) = self.rx.try_recv() {
            self.done |= line.event == "done";
            self.progress += usize::from(line.event == "progress");
        }
        !self.done
    }
}

/// Waits until `ready` (polled every 10 ms) or the guest finished; false if it finished.
fn wait_while_busy(watch: &mut Watch, what: &str, ready: impl Fn(&Watch) -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !ready(watch) {
        if !watch.busy() {
            return false;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The block the init's stress-blk check writes at index `block` in round `round`.
fn stress_block(round: u32, block: usize, bytes: usize) -> Vec<u8> {
    let mut out = format!("bulkhead stress round {round} block {block}\n").into_bytes();
    out.extend(blk_pattern(bytes));
    out.truncate(bytes);
    out
}

#[test]
fn linux_survives_its_disk_backend_dying_again_and_again() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("stress.raw");
    bulkhead_disk::tools::create(&image, STRESS_MIB * MIB, &CreateSpec::Raw).unwrap();
    let disk = format!("{},format=raw", image.display());
    let sock = dir.path().join("blk.sock");
    let log = |n: usize| dir.path().join(format!("backend{n}.log"));
    let mut rng = Rng::seeded();
    // Backend n dies of DEATHS[n]; the one after the last death serves to the end.
    let start = |n: usize, rng: &mut Rng| {
        let fault = match DEATHS.get(n) {
            Some(Death::Fault(action)) => format!("{action}:after={}", 1 + rng.below(5)),
            _ => String::new(),
        };
        let envs = [("BULKHEAD_LOG", "info"), ("BULKHEAD_FAULT", fault.as_str())];
        Process::start_logged(&["blk", "--disk", &disk], &envs, &sock, &log(n))
    };
    let mut backend = start(0, &mut rng);

    let spec = spec("stress-blk")
        .arg(&format!("bulkhead.rounds={STRESS_ROUNDS}"))
        .device(Device::vhost_user_blk(&sock));
    let (tx, rx) = std::sync::mpsc::channel();
    let qemu = std::thread::spawn(move || {
        // QEMU reconnects to a backend that went away, once a second.
        let reconnect = |arg: &mut String| {
            if arg.starts_with("socket,id=chr0,") {
                arg.push_str(",reconnect=1");
            }
        };
        boot_watched(&spec, reconnect, |line| drop(tx.send(line.clone())))
    });
    let mut watch = Watch { rx, done: false, progress: 0 };
    let stressing = wait_while_busy(&mut watch, "the stress to start", |w| w.progress > 0);
    assert!(stressing, "the guest finished without stressing its disk");

    for (n, death) in DEATHS.iter().enumerate() {
        let started = |n: usize| read_log(&log(n)).contains("queue 0 started");
        let alive = wait_while_busy(&mut watch, "the backend to start", |_| n == 0 || started(n));
        assert!(alive, "the guest finished after {n} deaths of {}: stress it longer", DEATHS.len());
        match death {
            Death::Kill => {
                std::thread::sleep(Duration::from_millis(50 + rng.below(300)));
                assert!(watch.busy(), "the guest finished before death {n}: stress it longer");
                backend.kill();
            }
            Death::Fault(action) => {
                let status = backend.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| {
                    panic!("death {n}: {action} did not fire in 60 s: is the guest stuck?")
                });
                let aborts = ["panic", "corrupt"].contains(action);
                let want = if aborts { (Some(libc::SIGABRT), None) } else { (None, Some(42)) };
                assert_eq!((status.signal(), status.code()), want, "{action}: {status:?}");
            }
        }
        backend = start(n + 1, &mut rng);
    }

    let run = qemu.join().unwrap();
    drop(backend);
    run.assert_ok(&["stress-blk"]);
    check_successors(&log);
    let bytes = std::fs::read(&image).unwrap();
    let block = 1 << 20;
    for (i, got) in bytes.chunks(block).enumerate() {
        let want = stress_block(STRESS_ROUNDS, i, block);
        assert!(got == want, "block {i} is not what the guest wrote last");
    }
}

/// Each backend that died in the middle of a request left it to its successor: resubmitted
/// unless its used entry was already published (`exit-after-used`).
fn check_successors(log: &impl Fn(usize) -> PathBuf) {
    let mut resubmitted = 0;
    for (n, death) in DEATHS.iter().enumerate() {
        let next = read_log(&log(n + 1));
        let again = next.contains("resubmitting 1 requests");
        resubmitted += usize::from(again);
        match death {
            Death::Kill => {}
            Death::Fault("exit-after-used") => assert!(!again, "resubmitted a published request"),
            Death::Fault(action) => assert!(again, "{action}: not resubmitted:\n{next}"),
        }
        assert!(next.contains("queue 0 started"), "backend {} never served:\n{next}", n + 1);
    }
    eprintln!("{} deaths; {resubmitted} requests resubmitted", DEATHS.len());
}

/// Reading an image its backend (still running) holds for writing: the locks would refuse
/// it, so read as `qemu-img -U` does.
fn shared_read() -> bulkhead_disk::OpenOptions {
    bulkhead_disk::OpenOptions {
        locking: bulkhead_disk::Locking::ForceShare,
        read_only: true,
        ..Default::default()
    }
}
