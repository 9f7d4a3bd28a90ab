//! Virtio devices through Bulkhead's core, driven by the built-in guest, in
//! both modes: compartments (microkernel) and threads (monolithic).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{require_kvm, run, NetNs, TempDir};

const T: Duration = Duration::from_secs(90);
const MODES: [&str; 2] = ["microkernel", "monolithic"];

fn qemu_img(args: &[&str]) -> std::process::Output {
    std::process::Command::new("qemu-img").args(args).output().expect(
        "qemu-img is required for these tests: install qemu-utils (scripts/install-deps.sh)",
    )
}

/// The guest writes its pattern over a disk in `format`, flushes and reads
/// it back; the host then checks the image holds exactly that pattern
/// (`qemu-img compare` against a raw file of it) and, for formats with
/// metadata, that `qemu-img check` finds no error or leak.
fn write_and_verify(mode: &str, format: &str, options: &[&str], size: u64) {
    let dir = TempDir::new(&format!("disk-{mode}-{format}"));
    let image = dir.0.join(format!("disk.{format}"));
    let mut create = vec!["create", "-q", "-f", format];
    create.extend_from_slice(options);
    let size_arg = size.to_string();
    create.extend_from_slice(&[image.to_str().unwrap(), &size_arg]);
    let out = qemu_img(&create);
    assert!(out.status.success(), "qemu-img create: {}", String::from_utf8_lossy(&out.stderr));
    let disk = format!("{},format={format}", image.display());
    let r = run(
        &[
            "run",
            "--mode",
            mode,
            "--disk",
            &disk,
            "--cmdline",
            "bulkhead.run=blk-verify bulkhead.seed=7",
        ],
        T,
    );
    assert_eq!(r.code, 0, "{mode} {format}: {}\n{}", r.stderr, r.stdout);
    let check = r.assert_check("blk-verify");
    assert_eq!(check["bytes"], size.to_string());
    let expected = dir.file("expected.raw", &common::pattern(7, size as usize));
    let out = qemu_img(&[
        "compare",
        "-q",
        "-f",
        format,
        "-F",
        "raw",
        image.to_str().unwrap(),
        expected.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{mode} {format}: the image does not hold the guest's pattern");
    if format != "raw" {
        let out = qemu_img(&["check", "-q", "-f", format, image.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{mode} {format}: qemu-img check: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn a_raw_disk_written_by_the_guest_holds_its_pattern_in_both_modes() {
    require_kvm();
    for mode in MODES {
        // Not a multiple of the guest's 64 KiB requests.
        write_and_verify(mode, "raw", &[], (8 << 20) + 4096);
    }
}

#[test]
fn qcow2_and_vmdk_disks_in_both_modes() {
    require_kvm();
    for mode in MODES {
        write_and_verify(mode, "qcow2", &[], (6 << 20) + 512);
        write_and_verify(mode, "vmdk", &["-o", "subformat=monolithicSparse"], 6 << 20);
        write_and_verify(mode, "vmdk", &["-o", "subformat=twoGbMaxExtentSparse"], 4 << 20);
        write_and_verify(mode, "vmdk", &["-o", "subformat=monolithicFlat"], 4 << 20);
    }
}

#[test]
fn a_read_only_disk_refuses_writes_and_stays_unchanged() {
    require_kvm();
    for mode in MODES {
        let dir = TempDir::new(&format!("ro-{mode}"));
        let content = common::pattern(3, 1 << 20);
        let image = dir.file("ro.raw", &content);
        let disk = format!("{},readonly,format=raw", image.display());
        let r = run(
            &[
                "run",
                "--mode",
                mode,
                "--disk",
                &disk,
                "--cmdline",
                "bulkhead.run=blk-read-verify,blk-ro bulkhead.seed=3",
            ],
            T,
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.assert_check("blk-read-verify");
        assert_eq!(r.assert_check("blk-ro")["write_status"], "ioerr");
        assert_eq!(std::fs::read(&image).unwrap(), content, "{mode}: a read-only image changed");
    }
}

#[test]
fn the_rng_serves_random_bytes_in_both_modes() {
    require_kvm();
    for mode in MODES {
        let r = run(
            &["run", "--mode", mode, "--rng", "--cmdline", "bulkhead.run=rng bulkhead.bytes=65536"],
            T,
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let rng = r.assert_check("rng");
        assert_eq!(rng["distinct"], "256", "{mode}: {rng:?}");
    }
}

#[test]
fn the_guest_pings_the_host_over_a_tap_in_both_modes() {
    require_kvm();
    for mode in MODES {
        let ns = NetNs::new("ping");
        let mut cmd = ns.bulkhead();
        cmd.args(["run", "--mode", mode, "--net", "tap=tap0", "--cmdline"]);
        cmd.arg("bulkhead.run=net-ping bulkhead.ip=10.0.2.15/24 bulkhead.peer=10.0.2.1 bulkhead.count=5");
        let r = common::run_command(cmd, T);
        assert_eq!(r.code, 0, "{mode}: {}\n{}", r.stderr, r.stdout);
        let ping = r.assert_check("net-ping");
        assert_eq!((ping["sent"].as_str(), ping["received"].as_str()), ("5", "5"), "{mode}");
    }
}

#[test]
fn interrupts_complete_requests_in_both_modes() {
    require_kvm();
    for mode in MODES {
        let dir = TempDir::new(&format!("irq-{mode}"));
        let image = dir.file("d.raw", &vec![0u8; 4 << 20]);
        let disk = format!("{},format=raw", image.display());
        let r = run(
            &["run", "--mode", mode, "--disk", &disk, "--rng", "--cmdline",
              "bulkhead.run=blk-verify,rng,blk-bench bulkhead.irq=1 bulkhead.ops=2000 bulkhead.bytes=4194304"],
            T,
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.assert_check("blk-verify");
        r.assert_check("rng");
        let bench = r
            .events()
            .into_iter()
            .find(|(e, kv)| e == "result" && kv["workload"] == "blk-bench")
            .unwrap()
            .1;
        let irqs: u64 = bench["irqs"].parse().unwrap();
        // About one interrupt per request (two completions can share one
        // when they land before the guest takes it); polling would take none.
        assert!(irqs >= 1000, "{mode}: requests should complete by interrupt: {bench:?}");
    }
}

/// Starts a VM whose guest holds for a while, and reads the compartments'
/// PIDs from `-v`.
fn start_holding(args: &[&str]) -> (std::process::Child, Vec<(String, i32)>) {
    let mut child = common::bulkhead()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut pids = Vec::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        // "bulkhead: blk0 at 0xd0000000 irq 5: compartment pid 904: …"
        if let Some((name, rest)) =
            line.strip_prefix("bulkhead: ").and_then(|l| l.split_once(" at "))
        {
            if let Some(pid) =
                rest.split("compartment pid ").nth(1).and_then(|p| p.split(':').next())
            {
                pids.push((name.to_string(), pid.parse().unwrap()));
            }
        }
        if pids.len() == 2 {
            break;
        }
        line.clear();
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, pids)
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or("").trim().to_string()
}

#[test]
fn each_compartment_is_a_sandboxed_process_and_killing_one_spares_the_core() {
    require_kvm();
    let dir = TempDir::new("compartments");
    let image = dir.file("d.raw", &vec![0u8; 1 << 20]);
    let disk = format!("{},format=raw", image.display());
    let (mut child, pids) = start_holding(&[
        "run",
        "-v",
        "--disk",
        &disk,
        "--rng",
        "--cmdline",
        "bulkhead.run=boot bulkhead.hold_ms=3000",
    ]);
    assert_eq!(pids.len(), 2, "two compartments expected");
    let core = child.id() as i32;
    for (name, pid) in &pids {
        assert_ne!(*pid, core, "{name} runs in its own process");
        assert_eq!(status_field(*pid, "Seccomp:"), "2", "{name}: seccomp in filter mode");
        assert_eq!(status_field(*pid, "NoNewPrivs:"), "1", "{name}");
        assert_eq!(status_field(*pid, "CapEff:"), "0000000000000000", "{name}");
        let ns = |p: i32, which: &str| std::fs::read_link(format!("/proc/{p}/ns/{which}")).unwrap();
        assert_ne!(ns(*pid, "net"), ns(core, "net"), "{name} has its own network namespace");
        // An unprivileged user of the host: root only inside its own user namespace.
        assert_ne!(ns(*pid, "user"), ns(core, "user"), "{name} has its own user namespace");
        let unprivileged = "65534\t65534\t65534\t65534";
        assert_eq!(status_field(*pid, "Uid:"), unprivileged, "{name}: host uid");
        assert_eq!(status_field(*pid, "Gid:"), unprivileged, "{name}: host gid");
    }
    assert_ne!(pids[0].1, pids[1].1);
    // SIGKILL the block compartment: the core and the guest go on.
    // SAFETY: signalling a process this test started (through the core).
    unsafe { libc::kill(pids[0].1, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the core died with its compartment");
    let r = common::wait(child, T);
    assert_eq!(r.code, 0, "the guest powered off normally");
    assert!(r.stdout.contains("BH done status=ok"), "{}", r.stdout);
}

#[test]
fn compartments_die_with_a_killed_core() {
    require_kvm();
    let dir = TempDir::new("orphans");
    let image = dir.file("d.raw", &vec![0u8; 1 << 20]);
    let disk = format!("{},format=raw", image.display());
    let (mut child, pids) = start_holding(&[
        "run",
        "-v",
        "--disk",
        &disk,
        "--rng",
        "--cmdline",
        "bulkhead.run=boot bulkhead.hold_ms=20000",
    ]);
    assert_eq!(pids.len(), 2, "two compartments expected");
    let pidfds: Vec<(String, i32)> = pids
        .iter()
        .map(|(name, pid)| {
            // SAFETY: pidfd_open on a PID this test started (through the core): a
            // pidfd stays bound to its process even if the PID is reused.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, *pid, 0) } as i32;
            assert!(fd >= 0, "{name}: pidfd_open: {}", std::io::Error::last_os_error());
            (name.clone(), fd)
        })
        .collect();
    // Stopped compartments cannot notice their sockets closing: only the kernel's
    // parent-death signal ends them. A core that cannot clean up (SIGKILL, the OOM
    // killer) still leaves no compartment behind.
    for (_, pid) in &pids {
        // SAFETY: signalling a process this test started (through the core).
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for (name, fd) in pidfds {
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: polls one pollfd on the stack; a pidfd is readable once its process ended.
        let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
        // SAFETY: closes the pidfd opened above.
        unsafe { libc::close(fd) };
        assert_eq!(ready, 1, "the {name} compartment outlived its core");
    }
}

#[test]
fn bad_device_arguments_are_refused_clearly() {
    require_kvm();
    for mode in MODES {
        let r = run(&["run", "--mode", mode, "--disk", "/nonexistent/disk.img"], T);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains("/nonexistent/disk.img"), "{mode}: {}", r.stderr);
        let r = run(&["run", "--mode", mode, "--disk", "x.img,format=floppy"], T);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("floppy"), "{mode}: {}", r.stderr);
    }
    let dir = TempDir::new("bad-qcow2");
    let bad = dir.file("bad.qcow2", b"QFI\xfb\0\0\0\x03truncated");
    for mode in MODES {
        let disk = format!("{},format=qcow2", bad.display());
        let r = run(&["run", "--mode", mode, "--disk", &disk], T);
        assert_eq!(r.code, 1, "{mode}: {}", r.stderr);
        assert!(r.stderr.contains("bad.qcow2"), "{mode}: {}", r.stderr);
    }
}
