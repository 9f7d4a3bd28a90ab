//! The seccomp allow-lists of `sandbox.rs` (with the sandbox's baseline), enforced: backends run with their list installed at
//! the sandbox hook (anything else kills the process) and must still serve the test frontend's
//! requests, hostile ones included, and a Linux guest under QEMU.
//!
//! The backend processes are this test binary itself, re-run with `BH_SECCOMP_CHILD` set: then
//! `child_process_entry` runs `cli::run_with_sandbox` with a hook that compiles the device's
//! list with seccompiler and applies it.

mod harness;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_devices::cli::{run_with_sandbox, DeviceCommand};
use bulkhead_devices::SandboxSpec;
use bulkhead_disk::tools::CreateSpec;
use bulkhead_linux_guest::qemu::{Device, Qemu, VmSpec};
use clap::Parser;
use harness::netns::NetNs;
use harness::{r, w, Driver, GuestMem, Process, Setup};
use vm_memory::{Bytes, GuestAddress};

const CHILD: &str = "BH_SECCOMP_CHILD";

/// The allow-list and the sandbox's baseline as seccompiler JSON, killing the process on
/// anything else.
fn filter_json(spec: &SandboxSpec) -> String {
    let baseline = bulkhead_sandbox::seccomp::BASELINE.iter().map(|&name| (name, None));
    let getfd = ("fcntl", Some((1, libc::F_GETFD as u64)));
    let own = spec.seccomp.iter().map(|rule| (rule.name, rule.arg_eq));
    let rules: Vec<String> = baseline
        .chain([getfd])
        .chain(own)
        .map(|(name, arg_eq)| match arg_eq {
            None => format!(r#"{{"syscall":"{name}"}}"#),
            Some((index, val)) => format!(
                r#"{{"syscall":"{name}","args":[{{"index":{index},"type":"dword","op":"eq","val":{val}}}]}}"#
            ),
        })
        .collect();
    format!(
        r#"{{"main":{{"mismatch_action":"kill_process","match_action":"allow","filter":[{}]}}}}"#,
        rules.join(",")
    )
}

fn apply(spec: &SandboxSpec, _conn: std::os::fd::RawFd) -> anyhow::Result<()> {
    let json = filter_json(spec);
    let arch = seccompiler::TargetArch::x86_64;
    let mut filters = seccompiler::compile_from_json(json.as_bytes(), arch)?;
    let main = filters.remove("main").expect("the filter is named main");
    seccompiler::apply_filter_all_threads(&main)?;
    Ok(())
}

#[derive(Parser)]
struct ChildCli {
    #[command(subcommand)]
    cmd: DeviceCommand,
}

/// Not a test: the entry point of the backend processes (does nothing in a normal run).
#[test]
fn child_process_entry() {
    let Ok(args) = std::env::var(CHILD) else { return };
    let argv = std::iter::once("child").chain(args.split('\u{1f}'));
    let cli = ChildCli::parse_from(argv);
    let code = match run_with_sandbox(cli.cmd, apply) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("seccomp child: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// A backend with its seccomp list enforced, listening on `socket`.
fn confined(wrapper: &[&str], args: &[&str], socket: &Path) -> Process {
    confined_with(wrapper, args, socket, &[])
}

/// [`confined`], with more environment variables.
fn confined_with(wrapper: &[&str], args: &[&str], socket: &Path, envs: &[(&str, &str)]) -> Process {
    let socket_arg = socket.to_str().unwrap();
    let all: Vec<&str> = args.iter().copied().chain(["--socket", socket_arg]).collect();
    let me = std::env::current_exe().unwrap();
    let test_args = ["--exact", "child_process_entry", "--nocapture", "--test-threads=1"];
    let env = all.join("\u{1f}");
    let envs: Vec<(&str, &str)> =
        [(CHILD, env.as_str())].into_iter().chain(envs.iter().copied()).collect();
    Process::start_program(wrapper, me.to_str().unwrap(), &test_args, &envs, socket)
}

fn request(d: &mut Driver, kind: u32, sector: u64) -> (u64, u64) {
    let hdr = d.alloc(16);
    let st = d.alloc(1);
    d.mem().write_obj(kind, GuestAddress(hdr)).unwrap();
    d.mem().write_obj(sector, GuestAddress(hdr + 8)).unwrap();
    d.mem().write_obj(0xffu8, GuestAddress(st)).unwrap();
    (hdr, st)
}

#[test]
fn the_lists_compile_and_name_only_known_system_calls() {
    use bulkhead_devices::DeviceKind;
    for kind in DeviceKind::ALL {
        let spec = bulkhead_devices::sandbox::spec_for(kind, vec![]);
        let json = filter_json(&spec);
        seccompiler::compile_from_json(json.as_bytes(), seccompiler::TargetArch::x86_64)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[test]
fn confined_blk_serves_reads_writes_flushes_discards_and_survives_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.qcow2");
    bulkhead_disk::tools::create(&image, 8 << 20, &CreateSpec::Qcow2(Default::default())).unwrap();
    let disk = format!("{},format=qcow2", image.display());
    let mut p = confined(&[], &["blk", "--disk", &disk], &dir.path().join("blk.sock"));
    for round in 0..2 {
        let mut d = Driver::connect(p.connect(), Arc::new(GuestMem::new()), &Setup::default());
        let ask = vhost::vhost_user::message::VhostUserInflight::new(0, 0, 1, 256);
        use vhost::vhost_user::VhostUserFrontend;
        let (info, region) = d.frontend.get_inflight_fd(&ask).unwrap();
        d.frontend.set_inflight_fd(&info, std::os::fd::AsRawFd::as_raw_fd(&region)).unwrap();
        d.start(0);
        let data = vec![0x3c + round; 64 << 10];
        let (hdr, st) = request(&mut d, 1, 128);
        let buf = d.alloc(data.len() as u64);
        d.mem().write_slice(&data, GuestAddress(buf)).unwrap();
        assert_eq!(d.roundtrip(0, &[r(hdr, 16), r(buf, data.len() as u32), w(st, 1)]), 1);
        for kind in [4u32, 11, 13] {
            // FLUSH, then DISCARD and WRITE_ZEROES of sectors 0..8
            let (hdr, st) = request(&mut d, kind, 0);
            let range = d.alloc(16);
            d.mem().write_obj(8u32, GuestAddress(range + 8)).unwrap();
            let bufs: Vec<_> = match kind {
                4 => vec![r(hdr, 16), w(st, 1)],
                _ => vec![r(hdr, 16), r(range, 16), w(st, 1)],
            };
            d.roundtrip(0, &bufs);
            assert_eq!(d.mem().read_obj::<u8>(GuestAddress(st)).unwrap(), 0, "type {kind}");
        }
        let (hdr, st) = request(&mut d, 0, 128);
        let back = d.alloc(data.len() as u64);
        d.roundtrip(0, &[r(hdr, 16), w(back, data.len() as u32), w(st, 1)]);
        let mut got = vec![0; data.len()];
        d.mem().read_slice(&mut got, GuestAddress(back)).unwrap();
        assert!(got == data, "read back through the confined backend");
        let (hdr, st) = request(&mut d, 0, 1 << 40);
        d.roundtrip(0, &[r(hdr, 16), w(back, 512), w(st, 1)]);
        assert_eq!(d.mem().read_obj::<u8>(GuestAddress(st)).unwrap(), 1, "past the end");
    }
    let mut garbage = p.connect();
    std::io::Write::write_all(&mut garbage, &[0xff; 64]).unwrap();
    drop(garbage);
    std::thread::sleep(Duration::from_millis(100));
    assert!(p.alive(), "the confined backend was killed");
    let d = Driver::ready(p.connect(), Arc::new(GuestMem::new()), &Setup::default());
    drop(d);
    std::thread::sleep(Duration::from_millis(100));
    assert!(p.alive(), "the confined backend was killed");
}

#[test]
fn a_confined_backend_that_panics_aborts_and_one_that_exits_exits() {
    // Not killed by its filter (SIGSYS): abort(3) and exit(2) are on the list.
    use std::os::unix::process::ExitStatusExt;
    for (knob, signal, code) in
        [("panic:after=1", Some(libc::SIGABRT), None), ("exit:after=1", None, Some(42))]
    {
        let dir = tempfile::tempdir().unwrap();
        let image = harness::raw_image(dir.path(), "disk.raw", 1 << 20, 0);
        let disk = format!("{},format=raw", image.display());
        let envs = [("BULKHEAD_FAULT", knob)];
        let mut p = confined_with(&[], &["blk", "--disk", &disk], &dir.path().join("s"), &envs);
        let mut d = Driver::ready(p.connect(), Arc::new(GuestMem::new()), &Setup::default());
        let (hdr, st) = request(&mut d, 4, 0); // FLUSH
        assert_eq!(d.roundtrip(0, &[r(hdr, 16), w(st, 1)]), 1, "served before the fault");
        let (hdr, st) = request(&mut d, 4, 0);
        let guest = d.guest.clone();
        d.q(0).submit(&guest.mem, &[r(hdr, 16), w(st, 1)]);
        let status = p.wait_exit(Duration::from_secs(10)).expect("the backend ends");
        assert_eq!((status.signal(), status.code()), (signal, code), "{knob}: {status:?}");
    }
}

#[test]
fn confined_backends_serve_a_linux_guest() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("a.raw");
    bulkhead_disk::tools::create(&raw, 64 << 20, &CreateSpec::Raw).unwrap();
    let vmdk = dir.path().join("b.vmdk");
    bulkhead_disk::tools::create(&vmdk, 64 << 20, &CreateSpec::Vmdk(Default::default())).unwrap();
    let a = format!("{},format=raw", raw.display());
    let b = format!("{},format=vmdk", vmdk.display());
    let pa = confined(&[], &["blk", "--disk", &a], &dir.path().join("a.sock"));
    let pb = confined(&[], &["blk", "--disk", &b], &dir.path().join("b.sock"));
    let rng = confined(&[], &["rng"], &dir.path().join("rng.sock"));
    let ns = NetNs::new("sec");
    ns.add_tap("bhtap0", "10.0.2.1/24");
    let wrapper = ["ip", "netns", "exec", ns.name.as_str()];
    let net = confined(&wrapper, &["net", "--tap", "bhtap0"], &dir.path().join("net.sock"));
    let guest = bulkhead_linux_guest::build(&Default::default())
        .unwrap_or_else(|e| panic!("the Linux guest is missing ({e}); run `bulkhead image build`"));
    let mut spec = VmSpec::new(&guest, "rng,blk,net")
        .arg("bulkhead.blk=vda,vdb")
        .device(Device::vhost_user_blk(&pa.socket))
        .device(Device::vhost_user_blk(&pb.socket))
        .device(Device::VhostUserRng { socket: rng.socket.clone() });
    spec.timeout = Duration::from_secs(180);
    // The NIC goes in with INTx: QEMU 7.2 segfaults with MSI-X on a vhost-user NIC (see
    // qemu.rs), and the helper has no device properties, so the NIC is added by hand.
    let qemu = Qemu::find().unwrap_or_else(|e| panic!("{e}"));
    let mut args: Vec<String> = spec.args().into_iter().map(|a| a.into_string().unwrap()).collect();
    args.extend([
        "-chardev".into(),
        format!("socket,id=chrnet,path={}", net.socket.display()),
        "-netdev".into(),
        "vhost-user,id=net9,chardev=chrnet".into(),
        "-device".into(),
        "virtio-net-pci,netdev=net9,romfile=,vectors=0".into(),
    ]);
    let (console, stderr) = run_with_timeout(qemu.binary(), &args, Duration::from_secs(180));
    let checks: Vec<&str> = console.lines().filter(|l| l.starts_with("BH check")).collect();
    assert!(console.contains("BH done status=ok") && checks.len() == 4, "{console}\n{stderr}");
    for (name, mut p) in [("blk a", pa), ("blk b", pb), ("rng", rng), ("net", net)] {
        assert!(p.alive(), "the confined {name} backend was killed");
    }
}

/// Runs a program to its end (killing it after `timeout`); returns its stdout and stderr.
fn run_with_timeout(program: &Path, args: &[String], timeout: Duration) -> (String, String) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    (reader.join().unwrap(), err_reader.join().unwrap())
}
