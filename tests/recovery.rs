//! Surviving compartment failures with no I/O lost: the built-in guest keeps
//! doing I/O through Bulkhead's core while the test kills, stops or breaks
//! the compartment serving it; the supervisor restarts it and the guest
//! must see nothing but a pause.

mod common;

use std::time::{Duration, Instant};

use common::compartments::{compartments, jitter, wait_compartment, wait_compartment_other};
use common::{ctl, require_kvm, NetNs, Running, TempDir};

const T: Duration = Duration::from_secs(180);

/// Stops a VM running blk-stress by SIGTERM; checks it ended by the signal and the guest saw no
/// error; returns how it ended and the passes it reported.
fn stop_stress(vm: Running) -> (common::Run, usize) {
    // SAFETY: signalling the VMM this test started.
    unsafe { libc::kill(vm.id() as i32, libc::SIGTERM) };
    let r = vm.wait(T);
    assert_eq!(r.code, 143, "stopped by the test: {}", r.stderr);
    assert!(
        !r.stdout.contains("status=fail"),
        "the guest saw an error:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    let passes = r.stdout.lines().filter(|l| l.starts_with("BH progress name=blk-stress")).count();
    (r, passes)
}

/// Runs blk-stress over a 4 MiB disk while `disrupt` is applied to the block
/// compartment `times` times; then checks the guest saw no error, every pass
/// verified, and the image holds the last pass's pattern.
fn stress_with(tag: &str, extra: &[&str], times: usize, disrupt: impl Fn(i32)) -> String {
    let dir = TempDir::new(tag);
    let size = 4usize << 20;
    let image = dir.file("disk.raw", &vec![0u8; size]);
    let disk = format!("{},format=raw", image.display());
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--disk", &disk]).args(extra);
    cmd.args(["--cmdline", "bulkhead.run=blk-stress bulkhead.seconds=600 bulkhead.seed=100"]);
    let mut vm = Running::start(&mut cmd);
    let core = vm.id();
    let mut rng = 0x1234_5678_u64 ^ u64::from(core);
    let mut pid = wait_compartment(core, "blk");
    for _ in 0..times {
        std::thread::sleep(jitter(&mut rng, 10, 120));
        assert!(vm.is_running(), "the VM ended during the disruptions");
        disrupt(pid);
        pid = wait_compartment_other(core, "blk", Some(pid));
    }
    // Let the guest run a last full pass with the final compartment, then
    // stop the VM by a signal.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(compartments(core, "blk"), vec![pid]);
    let (r, passes) = stop_stress(vm);
    assert!(passes >= 3, "too few passes: {passes}\n{}", r.stdout);
    // The image holds a whole pass: the last completed one, or the one in
    // progress when the VM was stopped (partly written over the last).
    let bytes = std::fs::read(&image).unwrap();
    let last = common::pattern(100 + passes as u64 - 1, size);
    let next = common::pattern(100 + passes as u64, size);
    for (i, chunk) in bytes.chunks(65536).enumerate() {
        let at = i * 65536;
        let want_last = &last[at..at + chunk.len()];
        let want_next = &next[at..at + chunk.len()];
        assert!(
            chunk == want_last || chunk == want_next,
            "block at {at} holds neither pass's data"
        );
    }
    r.stderr
}

#[test]
fn the_block_compartment_survives_fifty_sigkills_with_no_io_lost() {
    require_kvm();
    let stderr = stress_with("sigkill", &[], 50, |pid| {
        // SAFETY: killing a compartment this test's VMM started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    assert_eq!(common::sigkills_seen(&stderr, "blk0"), 50, "{stderr}");
}

#[test]
fn a_hung_block_compartment_is_restarted_by_the_watchdog() {
    require_kvm();
    // SIGSTOP freezes the compartment mid-request: alive, silent, no progress.
    let stderr = stress_with("hang", &["--watchdog", "0.5"], 5, |pid| {
        // SAFETY: stopping a compartment this test's VMM started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    });
    assert_eq!(stderr.matches("blk0 restarted (hung: no progress").count(), 5, "{stderr}");
}

#[test]
fn past_its_restart_limit_a_device_is_marked_failed_and_the_vm_runs_on() {
    require_kvm();
    let dir = TempDir::new("limit");
    let image = dir.file("disk.raw", &vec![0u8; 1 << 20]);
    let disk = format!("{},format=raw", image.display());
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--disk", &disk, "--rng", "--restart-max", "2"]);
    cmd.args(["--cmdline", "bulkhead.run=boot bulkhead.hold_ms=3000"]);
    let vm = Running::start(&mut cmd);
    let core = vm.id();
    let mut pid = wait_compartment(core, "blk");
    for round in 0..3 {
        // SAFETY: killing a compartment this test's VMM started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        if round < 2 {
            pid = wait_compartment_other(core, "blk", Some(pid));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(compartments(core, "blk").is_empty(), "no new block compartment after the limit");
    assert_eq!(compartments(core, "rng").len(), 1, "the other device runs on");
    let r = vm.wait(T);
    assert_eq!(r.code, 0, "the VM runs on and powers off normally: {}", r.stderr);
    assert!(
        r.stderr.contains("blk0: failed (killed by signal 9); too many restarts"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_rng_keeps_serving_across_kills() {
    require_kvm();
    let mut cmd = common::bulkhead();
    cmd.args([
        "run",
        "--rng",
        "--cmdline",
        "bulkhead.run=rng,rng,rng,rng,rng,rng,rng,rng bulkhead.bytes=8388608",
    ]);
    let mut vm = Running::start(&mut cmd);
    let core = vm.id();
    let mut pid = wait_compartment(core, "rng");
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(30));
        if !vm.is_running() {
            break;
        }
        // SAFETY: killing a compartment this test's VMM started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        pid = wait_compartment_other(core, "rng", Some(pid));
    }
    let r = vm.wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.matches("BH check name=rng status=ok").count(), 8, "{}", r.stdout);
    assert!(r.stderr.contains("rng0 restarted"), "{}", r.stderr);
}

/// A compartment restarted after the binary was replaced on disk (a package upgrade under a
/// running VM) runs the binary the core runs, not the new file: only `device upgrade` changes
/// a compartment's program.
#[test]
fn a_binary_replaced_on_disk_does_not_reach_restarted_compartments() {
    require_kvm();
    let dir = TempDir::new("replaced");
    let binary = dir.0.join("bulkhead");
    std::fs::copy(env!("CARGO_BIN_EXE_bulkhead"), &binary).unwrap();
    let mut cmd = std::process::Command::new(&binary);
    cmd.args(["run", "--rng", "--cmdline"]);
    cmd.arg("bulkhead.run=rng,rng,rng,rng,rng,rng,rng,rng bulkhead.bytes=8388608");
    let vm = Running::start(&mut cmd);
    let core = vm.id();
    let pid = wait_compartment(core, "rng");
    std::fs::remove_file(&binary).unwrap();
    std::fs::write(&binary, "#!/bin/sh\necho an impostor ran >&2\nexit 7\n").unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // SAFETY: killing a compartment this test's VMM started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let successor = wait_compartment_other(core, "rng", Some(pid));
    let exe = std::fs::read_link(format!("/proc/{successor}/exe")).unwrap();
    assert!(exe.to_string_lossy().ends_with("(deleted)"), "it runs the core's own binary: {exe:?}");
    let r = vm.wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.matches("BH check name=rng status=ok").count(), 8, "{}", r.stdout);
    assert!(r.stderr.contains("rng0 restarted (killed by signal 9)"), "{}", r.stderr);
    assert!(!r.stderr.contains("impostor"), "{}", r.stderr);
}

/// Starts net-bench (`args`) in a network namespace of its own and SIGKILLs
/// the net compartment `kills` times, each `delay` (a range, ms) after the
/// previous successor began to serve; returns the namespace and the VM.
fn net_bench_with_kills(
    tag: &str,
    args: &str,
    kills: usize,
    delay: (u64, u64),
) -> (NetNs, Running) {
    let ns = NetNs::new(tag);
    let mut cmd = ns.bulkhead();
    cmd.args(["run", "--net", "tap=tap0", "--restart-max", "1000", "--cmdline", args]);
    let mut vm = Running::start(&mut cmd);
    // The core runs under `ip netns exec`, which execs it: same PID.
    let core = vm.id();
    let mut rng = 0x9e37_79b9_u64 ^ u64::from(core);
    let mut pid = wait_compartment(core, "net");
    for _ in 0..kills {
        std::thread::sleep(jitter(&mut rng, delay.0, delay.1));
        assert!(vm.is_running(), "the VM ended during the kills");
        // SAFETY: killing a compartment this test's VMM started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        pid = wait_compartment_other(core, "net", Some(pid));
    }
    assert!(vm.is_running(), "the VM ended during the kills");
    (ns, vm)
}

/// The `BH result` line of `workload`.
fn result(r: &common::Run, workload: &str) -> std::collections::HashMap<String, String> {
    r.events()
        .into_iter()
        .find(|(e, kv)| e == "result" && kv.get("workload").map(String::as_str) == Some(workload))
        .map(|(_, kv)| kv)
        .unwrap_or_else(|| panic!("no {workload} result:\n{}\n{}", r.stdout, r.stderr))
}

#[test]
fn packets_keep_flowing_while_the_net_compartment_is_killed() {
    require_kvm();
    let args =
        "bulkhead.run=net-bench bulkhead.mode=pingpong bulkhead.seconds=4 bulkhead.timeout_ms=300";
    let (_ns, vm) = net_bench_with_kills("netkill", args, 8, (300, 301));
    let r = vm.wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_check("net-bench");
    let result = result(&r, "net-bench");
    let sent: u64 = result["sent"].parse().unwrap();
    let received: u64 = result["packets"].parse().unwrap();
    // A killed compartment may lose the packets it held, as a link would (a
    // lost echo request or reply is a ping unanswered within 300 ms, which
    // the guest counts and goes on), but the queues must not wedge: nearly
    // every ping is answered.
    assert!(sent - received <= 16, "{received} of {sent} answered");
    assert_eq!(common::sigkills_seen(&r.stderr, "net0"), 8, "{}", r.stderr);
}

/// Every transmit buffer the guest gives the device must come back, whatever
/// moment the compartment dies at: a Linux driver would leak one that does not
/// and, after enough kills, stop transmitting. The guest sends as fast as the
/// device returns buffers (the ring full most of the time) and, once the test
/// has killed the compartment 200 times, is told to stop by a datagram; it
/// then waits for every buffer still out (a Linux driver's transmit watchdog
/// waits 5 s) and checks that each datagram it sent was returned.
#[test]
fn the_transmit_ring_loses_no_buffer_across_two_hundred_net_kills() {
    require_kvm();
    let args =
        "bulkhead.run=net-bench bulkhead.mode=tx bulkhead.seconds=600 bulkhead.timeout_ms=5000";
    let (ns, vm) = net_bench_with_kills("txkill", args, 200, (0, 100));
    ns.send_udp("10.0.2.1", "10.0.2.15:9", b"stop");
    let r = vm.wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_check("net-bench");
    let result = result(&r, "net-bench");
    let sent: u64 = result["sent"].parse().unwrap();
    assert!(sent > 0, "{}", r.stdout);
    assert_eq!(result["packets"], result["sent"], "every datagram sent came back: {}", r.stdout);
    assert_eq!(common::sigkills_seen(&r.stderr, "net0"), 200, "{}", r.stderr);
}

#[test]
fn ctl_lists_compartments_and_upgrades_one_while_io_runs() {
    require_kvm();
    let dir = TempDir::new("upgrade");
    let run_dir = dir.0.join("run");
    // The "new build": the same binary, copied elsewhere.
    let new_binary = dir.0.join("bulkhead-new");
    std::fs::copy(env!("CARGO_BIN_EXE_bulkhead"), &new_binary).unwrap();
    let size = 2usize << 20;
    let image = dir.file("disk.raw", &vec![0u8; size]);
    let disk = format!("{},format=raw", image.display());
    let mut cmd = common::bulkhead();
    cmd.env("BULKHEAD_RUN_DIR", &run_dir).args(["run", "--name", "upg", "--disk", &disk, "--rng"]);
    cmd.args(["--cmdline", "bulkhead.run=blk-stress bulkhead.seconds=4 bulkhead.seed=500"]);
    let vm = Running::start(&mut cmd);
    let core = vm.id();
    let old = wait_compartment(core, "blk");

    // The control socket comes up after the devices: give it the moment it needs.
    let asked = Instant::now();
    let status = loop {
        let status = ctl(&run_dir, &["upg", "status", "--json"]);
        if status.status.success() || asked.elapsed() > Duration::from_secs(10) {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let json = String::from_utf8_lossy(&status.stdout);
    assert!(json.contains(&format!("\"pid\": {old}")), "{json}");
    assert!(
        json.contains("\"mode\": \"compartment\"") && json.contains("seccomp(filter"),
        "{json}"
    );

    let up = ctl(
        &run_dir,
        &["upg", "device", "upgrade", "blk0", "--binary", new_binary.to_str().unwrap()],
    );
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let new = wait_compartment_other(core, "blk", Some(old));
    let exe = std::fs::read_link(format!("/proc/{new}/exe")).unwrap();
    assert_eq!(
        exe,
        new_binary.canonicalize().unwrap(),
        "the upgraded compartment runs the new binary"
    );
    let restart = ctl(&run_dir, &["upg", "device", "restart", "rng0"]);
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    let missing = ctl(&run_dir, &["upg", "device", "restart", "blk9"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("there is no device blk9"));

    let r = vm.wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.assert_check("blk-stress");
    let rounds: u64 = check["rounds"].parse().unwrap();
    assert_eq!(std::fs::read(&image).unwrap(), common::pattern(500 + rounds - 1, size));
}

/// blk-stress for 3 s with every block compartment faulting after
/// `after` requests (`BULKHEAD_FAULT`, compiled into debug builds); the
/// guest must see no error and the image must hold the last pass.
fn stress_with_fault(fault: &str, extra: &[&str]) -> String {
    let dir = TempDir::new("fault");
    let size = 2usize << 20;
    let image = dir.file("disk.raw", &vec![0u8; size]);
    let disk = format!("{},format=raw", image.display());
    let mut cmd = common::bulkhead();
    cmd.env("BULKHEAD_FAULT", fault).args(["run", "--disk", &disk, "--restart-max", "1000"]);
    cmd.args(extra)
        .args(["--cmdline", "bulkhead.run=blk-stress bulkhead.seconds=3 bulkhead.seed=900"]);
    let r = Running::start(&mut cmd).wait(T);
    assert_eq!(r.code, 0, "{fault}: {}", r.stderr);
    let check = r.assert_check("blk-stress");
    let rounds: u64 = check["rounds"].parse().unwrap();
    assert_eq!(std::fs::read(&image).unwrap(), common::pattern(900 + rounds - 1, size), "{fault}");
    let restarts = r.stderr.matches("blk0 restarted").count();
    assert!(restarts >= 2, "{fault}: the fault should have fired repeatedly:\n{}", r.stderr);
    r.stderr
}

#[test]
fn injected_panics_exits_and_corruption_mid_request_lose_no_io() {
    require_kvm();
    for (fault, reason) in [
        ("panic:after=700:device=blk", "panicked (exited with status 134)"),
        ("exit:after=700:device=blk", "exited with status 42"),
        ("corrupt:after=700:device=blk", "panicked (exited with status 134)"),
        ("exit-before-used:after=700:device=blk", "exited with status 42"),
        ("exit-after-used:after=700:device=blk", "exited with status 42"),
    ] {
        let stderr = stress_with_fault(fault, &[]);
        assert!(stderr.contains(&format!("blk0 restarted ({reason}")), "{fault}:\n{stderr}");
    }
}

#[test]
fn an_injected_hang_is_caught_by_the_watchdog() {
    require_kvm();
    let stderr = stress_with_fault("hang:after=700:device=blk", &["--watchdog", "0.3"]);
    assert!(stderr.contains("blk0 restarted (hung: no progress"), "{stderr}");
}

#[test]
fn in_monolithic_mode_an_injected_panic_ends_the_vm_naming_the_device() {
    require_kvm();
    let dir = TempDir::new("mono-panic");
    let image = dir.file("disk.raw", &vec![0u8; 1 << 20]);
    let disk = format!("{},format=raw", image.display());
    let mut cmd = common::bulkhead();
    cmd.env("BULKHEAD_FAULT", "panic:after=50:device=blk");
    cmd.args(["run", "--mode", "monolithic", "--disk", &disk]);
    cmd.args(["--cmdline", "bulkhead.run=blk-stress bulkhead.seconds=10"]);
    let r = Running::start(&mut cmd).wait(T);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("device thread bh-blk"), "{}", r.stderr);
    assert!(r.stderr.contains("in monolithic mode a device fault ends the VM"), "{}", r.stderr);
}

/// The serving compartment and the standby of `id`, from `ctl status`, once both are there.
fn serving_and_standby(
    run_dir: &std::path::Path,
    vm: &str,
    id: &str,
    not: Option<i64>,
) -> (i64, i64) {
    let start = Instant::now();
    loop {
        let out = ctl(run_dir, &[vm, "status", "--json"]);
        if let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            let device =
                status["devices"].as_array().and_then(|d| d.iter().find(|d| d["id"] == id));
            if let Some(d) = device {
                if let (Some(pid), Some(standby)) = (d["pid"].as_i64(), d["standby_pid"].as_i64()) {
                    if d["state"] == "running" && Some(pid) != not {
                        return (pid, standby);
                    }
                }
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{id}: no serving and standby pair");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// With `--standby on`, a compartment waits, started and sandboxed, beside each one that serves:
/// every kill is taken over by the standby (the device's new process is the old standby), the
/// next standby follows, and the guest's blk-stress sees no error, its image whole.
#[test]
fn a_standby_compartment_takes_over_each_kill_with_no_io_lost() {
    require_kvm();
    const KILLS: usize = 10;
    let dir = TempDir::new("standby");
    let size = 4usize << 20;
    let image = dir.file("disk.raw", &vec![0u8; size]);
    let run_dir = dir.0.join("run");
    let mut cmd = common::bulkhead();
    cmd.env("BULKHEAD_RUN_DIR", &run_dir)
        .args(["run", "--name", "sb", "--standby", "on", "--rng", "--disk"])
        .arg(format!("{},format=raw", image.display()))
        .args(["--cmdline", "bulkhead.run=blk-stress bulkhead.seconds=600 bulkhead.seed=100"]);
    let mut vm = Running::start(&mut cmd);
    let core = vm.id();
    let mut last = None;
    for kill in 0..KILLS {
        let (serving, standby) = serving_and_standby(&run_dir, "sb", "blk0", last);
        let mut both = compartments(core, "blk");
        both.sort_unstable();
        let mut want = vec![serving as i32, standby as i32];
        want.sort_unstable();
        assert_eq!(both, want, "kill {kill}: the core's blk compartments");
        assert!(vm.is_running(), "the VM ended during the kills");
        // SAFETY: killing a compartment this test's VMM started.
        unsafe { libc::kill(serving as i32, libc::SIGKILL) };
        let (next, _) = serving_and_standby(&run_dir, "sb", "blk0", Some(serving));
        assert_eq!(next, standby, "kill {kill}: the standby took over");
        last = Some(serving);
    }
    // The rng has its standby too, and blk-stress runs a last pass on the last compartment.
    let (_, rng_standby) = serving_and_standby(&run_dir, "sb", "rng0", None);
    assert!(compartments(core, "rng").contains(&(rng_standby as i32)));
    std::thread::sleep(Duration::from_millis(600));
    let (r, passes) = stop_stress(vm);
    assert_eq!(common::sigkills_seen(&r.stderr, "blk0"), KILLS, "{}", r.stderr);
    assert!(passes >= 2, "too few passes: {passes}\n{}", r.stdout);
}
