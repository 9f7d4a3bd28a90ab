//! The built-in guest's virtio drivers and workloads against QEMU's own
//! virtio-mmio devices on `-M microvm` (QEMU 7.2, KVM): device discovery
//! through ACPI and through the command line, both I/O APICs, polling and
//! interrupts, the disk pattern checked byte for byte on the host, errors and
//! timeouts reported rather than hung on, and the network stack against the
//! host kernel and against a second guest.
//!
//! Needs QEMU (`scripts/install-qemu.sh`), `/dev/kvm`, and for the network
//! tests root (network namespaces, taps) and `ip`.

mod support;

use std::fs;
use std::time::Duration;

use support::{pattern, NetNs, TempDir, Vm};

/// A sparse raw image of `bytes`.
fn image(dir: &TempDir, name: &str, bytes: u64) -> std::path::PathBuf {
    let path = dir.path(name);
    fs::File::create(&path).and_then(|f| f.set_len(bytes)).expect("create a disk image");
    path
}

#[test]
fn selftest_finds_and_starts_every_device_through_acpi() {
    let dir = TempDir::new("selftest");
    let disk = image(&dir, "disk.raw", 1 << 20);
    let run = Vm::new("bulkhead.run=selftest")
        .disk(&disk, "")
        .rng()
        .arg("-netdev user,id=u0 -device virtio-net-device,netdev=u0")
        .run();
    run.assert_done("ok");
    let devices: Vec<_> =
        run.events("virtio").into_iter().filter(|f| f.contains_key("device")).collect();
    let kinds: Vec<&str> = devices.iter().map(|f| f["device"].as_str()).collect();
    assert_eq!(kinds, ["blk", "rng", "net"], "{}", run.console);
    for d in &devices {
        // QEMU's microvm with ACPI: described in the DSDT, GSIs on the second I/O APIC.
        assert_eq!(d["source"], "acpi");
        assert!(run.num(d, "irq") >= 24.0, "{d:?}");
    }
    let inits: Vec<_> =
        run.events("check").into_iter().filter(|f| f["name"] == "virtio-init").collect();
    assert_eq!(inits.len(), 3, "{}", run.console);
    assert!(inits.iter().all(|f| f["status"] == "ok"), "{}", run.console);
    assert_eq!(inits[0]["capacity"], "1048576");
    assert_eq!(inits[0]["ro"], "0");
    assert_eq!(inits[0]["flush"], "1");
    assert_eq!(inits[2]["mac"], "52:54:00:12:34:56");
    assert_eq!(inits[2]["queues"], "256,256");
}

#[test]
fn devices_on_the_command_line_without_acpi() {
    let dir = TempDir::new("noacpi");
    let disk = image(&dir, "disk.raw", 1 << 20);
    let mut vm =
        Vm::new("bulkhead.run=selftest,blk-verify,rng bulkhead.irq=1").disk(&disk, "").rng();
    vm.acpi = false;
    let run = vm.run();
    assert!(run.console.contains("virtio_mmio.device=512@0xfeb00e00:12"), "{}", run.console);
    let devices: Vec<_> =
        run.events("virtio").into_iter().filter(|f| f.contains_key("device")).collect();
    assert_eq!(devices.len(), 2, "{}", run.console);
    for d in &devices {
        assert_eq!(d["source"], "cmdline");
        assert!((5.0..=12.0).contains(&run.num(d, "irq")), "{d:?}");
    }
    // Interrupts through the first I/O APIC.
    run.ok("blk-verify");
    run.ok("rng");
    // Without ACPI there is no MADT: only the CPU check fails.
    let failed: Vec<_> = run
        .events("check")
        .into_iter()
        .filter(|f| f["status"] != "ok")
        .map(|f| f["name"].clone())
        .collect();
    assert_eq!(failed, ["smp"], "{}", run.console);
    run.assert_done("fail");
}

#[test]
fn blk_verify_writes_the_documented_pattern() {
    let dir = TempDir::new("verify");
    // Neither a multiple of the 64 KiB request nor of 4 KiB.
    let size = (1 << 20) + 4096 + 512;
    let disk = image(&dir, "disk.raw", size);
    let run = Vm::new("bulkhead.run=blk-verify bulkhead.seed=7").disk(&disk, "").run();
    run.assert_done("ok");
    let check = run.ok("blk-verify");
    assert_eq!(check["bytes"], size.to_string());
    assert_eq!(check["requests"], "35", "17 writes, a flush, 17 reads");
    assert_eq!(fs::read(&disk).unwrap(), pattern(7, size as usize), "the image holds the pattern");

    // Part of a disk, in 4 KiB requests: the rest stays as it was.
    let disk = image(&dir, "part.raw", 1 << 20);
    let run =
        Vm::new("bulkhead.run=blk-verify bulkhead.seed=9 bulkhead.bytes=66048 bulkhead.bs=4096")
            .disk(&disk, "")
            .run();
    run.assert_done("ok");
    assert_eq!(run.ok("blk-verify")["requests"], format!("{}", 17 + 1 + 17));
    let bytes = fs::read(&disk).unwrap();
    assert_eq!(&bytes[..66048], &pattern(9, 66048)[..]);
    assert!(bytes[66048..].iter().all(|&b| b == 0), "nothing written past bulkhead.bytes");
}

#[test]
fn a_host_filled_read_only_disk_verifies_and_refuses_writes() {
    let dir = TempDir::new("ro");
    let disk = dir.path("filled.raw");
    let filled = pattern(99, 2 << 20);
    fs::write(&disk, &filled).unwrap();
    let run = Vm::new("bulkhead.run=blk-read-verify,blk-ro,blk-verify bulkhead.seed=99")
        .disk(&disk, ",readonly=on")
        .run();
    run.ok("blk-read-verify");
    let ro = run.ok("blk-ro");
    assert_eq!(ro["write_status"], "ioerr");
    assert_eq!(run.check("blk-verify")["status"], "fail", "blk-verify refuses a read-only disk");
    run.assert_done("fail");
    assert_eq!(fs::read(&disk).unwrap(), filled, "the read-only image is unchanged");

    // One flipped bit is found, at its word.
    let mut bad = filled;
    bad[(1 << 20) + 12345] ^= 0x10;
    fs::write(&disk, &bad).unwrap();
    let run =
        Vm::new("bulkhead.run=blk-read-verify bulkhead.seed=99").disk(&disk, ",readonly=on").run();
    let check = run.check("blk-read-verify");
    assert_eq!(check["status"], "fail");
    let word = ((1 << 20) + 12345) & !7;
    assert!(check["text"].contains(&format!("at byte {word} ")), "{check:?}");
    run.assert_done("fail");
}

#[test]
fn rng_gives_varied_bytes() {
    let run = Vm::new("bulkhead.run=rng bulkhead.bytes=65536").rng().run();
    run.assert_done("ok");
    let check = run.ok("rng");
    assert_eq!(check["bytes"], "65536");
    assert_eq!(check["distinct"], "256");
    assert!(run.num(&check, "requests") >= 16.0);
}

/// Checks a blk-bench result's figures for plausibility.
fn plausible_blk(run: &support::Run, bs: f64) -> support::Fields {
    let r = run.result("blk-bench", 0);
    let (ops, secs, iops) = (run.num(&r, "ops"), run.num(&r, "seconds"), run.num(&r, "iops"));
    let (p50, p99, max) = (run.num(&r, "p50_us"), run.num(&r, "p99_us"), run.num(&r, "max_us"));
    assert!(ops > 0.0 && secs > 0.0, "{r:?}");
    // `seconds` is printed with 3 decimals: ±0.5 ms, a large share of a short run.
    let rounding = 0.0005 / secs;
    assert!((iops - ops / secs).abs() <= iops * (0.02 + rounding) + 1.0, "{r:?}");
    assert!(
        (run.num(&r, "mib_s") - iops * bs / 1048576.0).abs() <= iops * bs / 1048576.0 * 0.05 + 0.2,
        "{r:?}"
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r:?}");
    eprintln!("blk-bench: {r:?}");
    r
}

#[test]
fn blk_bench_reports_plausible_figures() {
    let dir = TempDir::new("bench");
    let disk = image(&dir, "disk.raw", 64 << 20);
    let run = Vm::new("bulkhead.run=blk-bench bulkhead.mode=randread bulkhead.seconds=1")
        .disk(&disk, "")
        .run();
    run.assert_done("ok");
    let r = plausible_blk(&run, 4096.0);
    assert_eq!((r["mode"].as_str(), r["bs"].as_str(), r["qd"].as_str()), ("randread", "4096", "1"));
    assert!(run.num(&r, "iops") > 500.0, "{r:?}");
    assert!((0.9..1.5).contains(&run.num(&r, "seconds")), "{r:?}");
    assert_eq!(r["irqs"], "0", "polling takes no interrupts");

    let run = Vm::new("bulkhead.run=blk-bench bulkhead.mode=randwrite bulkhead.qd=4 bulkhead.flush=1 bulkhead.ops=300")
        .disk(&disk, "")
        .run();
    run.assert_done("ok");
    let r = plausible_blk(&run, 4096.0);
    assert_eq!((r["ops"].as_str(), r["flush"].as_str(), r["qd"].as_str()), ("300", "1", "4"));

    let run = Vm::new("bulkhead.run=blk-bench bulkhead.mode=seqread bulkhead.bs=64K bulkhead.qd=8 bulkhead.seconds=0.5")
        .disk(&disk, "")
        .run();
    run.assert_done("ok");
    plausible_blk(&run, 65536.0);
}

#[test]
fn interrupt_mode_on_the_second_io_apic() {
    let dir = TempDir::new("irq");
    let disk = image(&dir, "disk.raw", 4 << 20);
    let run = Vm::new(
        "bulkhead.run=blk-verify,blk-bench,rng bulkhead.irq=1 bulkhead.seconds=0.5 bulkhead.seed=3",
    )
    .disk(&disk, "")
    .rng()
    .run();
    run.assert_done("ok");
    run.ok("blk-verify");
    run.ok("rng");
    let r = plausible_blk(&run, 4096.0);
    // At queue depth 1 every completion raises an interrupt (10% slack for
    // a device that coalesces some).
    assert!(run.num(&r, "irqs") >= run.num(&r, "ops") * 0.9, "{r:?}");
    assert_eq!(fs::read(&disk).unwrap(), pattern(3, 4 << 20));
}

#[test]
fn device_errors_are_reported_not_hung_on() {
    let dir = TempDir::new("errors");
    let disk = image(&dir, "disk.raw", 1 << 20);
    // Every read fails with EIO: the device answers IOERR.
    let conf = dir.path("blkdebug.conf");
    fs::write(&conf, "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n").unwrap();
    let mut vm = Vm::new("bulkhead.run=blk-read-verify,blk-bench bulkhead.ops=10");
    vm.args.extend([
        "-drive".into(),
        format!("id=d0,file=blkdebug:{}:{},format=raw,if=none", conf.display(), disk.display()),
        "-device".into(),
        "virtio-blk-device,drive=d0".into(),
    ]);
    let run = vm.run();
    let check = run.check("blk-read-verify");
    assert!(check["text"].contains("failed with status 1 (ioerr)"), "{check:?}");
    assert!(run.check("blk-bench")["text"].contains("(ioerr)"));
    run.assert_done("fail");

    // A device slower than the deadline (2 requests a second): both
    // completion modes give up at the deadline, and later work is refused.
    for irq in ["0", "1"] {
        let append = format!("bulkhead.run=blk-bench,blk-verify bulkhead.ops=20 bulkhead.timeout_ms=300 bulkhead.irq={irq}");
        let run = Vm::new(&append).disk(&disk, ",throttling.iops-total=2").run();
        assert!(run.check("blk-bench")["text"].contains("deadline"), "{}", run.console);
        assert!(run.check("blk-verify")["text"].contains("gave up"), "{}", run.console);
        run.assert_done("fail");
        assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    }
}

#[test]
fn unknown_workloads_and_bad_options_fail_cleanly() {
    let run = Vm::new("bulkhead.run=blk-bench,warp-drive bulkhead.qd=0").run();
    assert!(run.check("blk-bench")["text"].contains("bulkhead.qd"), "{}", run.console);
    assert!(run.check("workload")["text"].contains("warp-drive"));
    run.assert_done("fail");
    let run = Vm::new("bulkhead.run=rng,net-ping").run();
    assert!(run.check("rng")["text"].contains("no virtio-rng device"));
    assert!(run.check("net-ping")["text"].contains("no virtio-net device"));
    run.assert_done("fail");
}

/// Reads a tap's counter inside the namespace.
fn tap_counter(ns: &NetNs, tap: &str, counter: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "cat",
            &format!("/sys/class/net/{tap}/statistics/{counter}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn net_ping_and_pingpong_against_the_host() {
    let ns = NetNs::new(1);
    let mut vm = Vm::new("bulkhead.run=net-ping,net-bench bulkhead.count=5 bulkhead.mode=pingpong bulkhead.seconds=1")
        .tap("tap0", "52:54:00:00:00:0a");
    vm.netns = Some(ns.name.clone());
    let run = vm.run();
    run.assert_done("ok");
    let ping = run.ok("net-ping");
    assert_eq!((ping["sent"].as_str(), ping["received"].as_str()), ("5", "5"));
    assert!(run.num(&ping, "p50_us") > 0.0);
    let net = &run.events("net")[0];
    assert_eq!(net["mac"], "52:54:00:00:00:0a", "the device's MAC is the default");
    let r = run.result("net-bench", 0);
    assert!(run.num(&r, "pps") > 100.0, "{r:?}");
    assert!(run.num(&r, "p50_us") <= run.num(&r, "p99_us"), "{r:?}");
    assert_eq!(r["sent"], r["packets"], "no echo lost on a tap: {r:?}");
    eprintln!("net-bench: {r:?}");

    // The same with interrupts, and a MAC from the command line.
    vm.append =
        "bulkhead.run=net-ping bulkhead.count=5 bulkhead.irq=1 bulkhead.mac=02:00:00:00:00:01"
            .into();
    let run = vm.run();
    run.assert_done("ok");
    assert_eq!(run.ok("net-ping")["received"], "5");
    assert_eq!(run.events("net")[0]["mac"], "02:00:00:00:00:01");
}

#[test]
fn net_tx_reaches_the_host() {
    let ns = NetNs::new(1);
    let before = tap_counter(&ns, "tap0", "rx_packets");
    let mut vm =
        Vm::new("bulkhead.run=net-bench bulkhead.mode=tx bulkhead.size=1400 bulkhead.seconds=1")
            .tap("tap0", "52:54:00:00:00:0a");
    vm.netns = Some(ns.name.clone());
    let run = vm.run();
    run.assert_done("ok");
    let r = run.result("net-bench", 0);
    let packets = run.num(&r, "packets");
    assert!(packets > 1000.0, "{r:?}");
    let mib_s = run.num(&r, "mib_s");
    let want = run.num(&r, "pps") * 1400.0 / 1048576.0;
    assert!((mib_s - want).abs() <= want * 0.05 + 0.2, "{r:?}");
    let seen = tap_counter(&ns, "tap0", "rx_packets") - before;
    assert!(seen as f64 >= packets, "the host saw {seen} packets of {packets}");
    eprintln!("net-bench: {r:?}");
}

#[test]
fn guests_answer_arp_and_ping_from_each_other() {
    let ns = NetNs::new(2);
    // A pings the host for 3 s and meanwhile answers B.
    let mut a = Vm::new(
        "bulkhead.run=net-bench bulkhead.mode=pingpong bulkhead.seconds=3 bulkhead.ip=10.0.2.15/24",
    )
    .tap("tap0", "52:54:00:00:00:0a");
    a.netns = Some(ns.name.clone());
    let a = a.start();
    std::thread::sleep(Duration::from_millis(500));
    let mut b = Vm::new(
        "bulkhead.run=net-ping bulkhead.count=5 bulkhead.ip=10.0.2.16/24 bulkhead.peer=10.0.2.15",
    )
    .tap("tap1", "52:54:00:00:00:0b");
    b.netns = Some(ns.name.clone());
    let b = b.run();
    let a = a.wait();
    b.assert_done("ok");
    let ping = b.ok("net-ping");
    assert_eq!(ping["received"], "5", "{}", b.console);
    assert_eq!(b.events("net")[0]["peer_mac"], "52:54:00:00:00:0a");
    a.assert_done("ok");
    let answered = a.num(&a.ok("net-bench"), "answered");
    assert!(answered >= 6.0, "A answered {answered} (an ARP request and 5 echoes expected)");
}
