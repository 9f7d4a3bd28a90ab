//! Rate limits measured by the guest: the built-in guest's `blk-rate` workload reports what
//! each second and the whole run did, and the rate a limit allows must be met within 5% —
//! from below too, since the unlimited device is far faster here (checked in the same test).
//! Limits are changed through `bulkhead ctl … device limits` while the guest runs, in both
//! modes, and hold across a SIGKILL of the block compartment. A network interface's transmit
//! limits (frames and bytes) are measured the same way by `net-bench` sending UDP datagrams
//! over a tap in a private network namespace (root, /dev/net/tun); it reports whole runs
//! only, so a change is measured by a later run than the one it fell in. The rng's bandwidth
//! limit is checked by how long a read takes.
//!
//! The rates are low (1000 requests or frames/s, 4 MiB/s, 1000 KiB/s) and the guest halts
//! between requests (`bulkhead.irq=1`), so neither the guest nor the device is ever short of
//! CPU on a loaded host; the waits around them are generous. The first second of a run
//! carries the bucket's initial contents (a tenth of a second of tokens), so whole runs are
//! 5 s or more and windows after a change leave out the one the change fell in.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::compartments::{wait_compartment, wait_compartment_other};
use common::{parse_line, require_kvm, NetNs, TempDir};

const T: Duration = Duration::from_secs(180);
const TOLERANCE: f64 = 0.05;

/// A VM whose console lines arrive as they are printed.
struct LiveVm {
    child: Child,
    lines: Receiver<String>,
    /// Lines received and not yet looked at by `wait_for`.
    pending: std::collections::VecDeque<String>,
    seen: Vec<String>,
    run_dir: PathBuf,
    _dir: TempDir,
}

impl LiveVm {
    /// `bulkhead run --name rl …args`, with `{disk}` in `args` standing for a 16 MiB raw disk.
    fn start(tag: &str, args: &[&str]) -> LiveVm {
        LiveVm::start_with(common::bulkhead(), tag, args)
    }

    /// As [`LiveVm::start`], the VM inside the network namespace `ns` (its tap is `tap0`).
    fn start_in(ns: &NetNs, tag: &str, args: &[&str]) -> LiveVm {
        LiveVm::start_with(ns.bulkhead(), tag, args)
    }

    fn start_with(mut bulkhead: Command, tag: &str, args: &[&str]) -> LiveVm {
        require_kvm();
        let dir = TempDir::new(tag);
        let run_dir = dir.0.join("run");
        let mut disk = String::new();
        if args.iter().any(|a| a.contains("{disk}")) {
            let image = dir.file("disk.raw", &vec![0u8; 16 << 20]);
            disk = format!("{},format=raw", image.display());
        }
        let args: Vec<String> = args.iter().map(|a| a.replace("{disk}", &disk)).collect();
        let mut child = bulkhead
            .env("BULKHEAD_RUN_DIR", &run_dir)
            .args(["run", "--name", "rl"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = common::lines_of(child.stdout.take().unwrap());
        LiveVm { child, lines, pending: Default::default(), seen: Vec::new(), run_dir, _dir: dir }
    }

    /// Waits for a line starting with `prefix` (and returns its fields).
    fn wait_for(&mut self, prefix: &str) -> HashMap<String, String> {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = self.pending.pop_front().ok_or(RecvTimeoutError::Timeout);
            match next.or_else(|_| self.lines.recv_timeout(left)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return parse_line(&line).unwrap().1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {prefix:?} in {T:?}:\n{:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the VM ended before {prefix:?}:\n{:#?}", self.seen)
                }
            }
        }
    }

    /// The last `blk-rate` second printed so far (at least `since`), keeping the lines for
    /// `wait_for`.
    fn latest_second(&mut self, since: u64) -> u64 {
        self.pending.extend(self.lines.try_iter());
        let seconds = self.pending.iter().filter_map(|l| {
            let (event, kv) = parse_line(l)?;
            (event == "rate").then(|| kv["second"].parse::<u64>().ok()).flatten()
        });
        seconds.fold(since, u64::max)
    }

    /// The `blk-rate` line of second `n`.
    fn second(&mut self, n: u64) -> HashMap<String, String> {
        self.wait_for(&format!("BH rate workload=blk-rate second={n} "))
    }

    /// `bulkhead ctl rl ARGS`: its stdout, or the test fails with its stderr.
    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        ctl(&self.run_dir, args)
    }

    /// Waits for the end; the guest must have said `BH done status=ok`.
    fn finish(mut self) -> Vec<String> {
        self.wait_for("BH done ");
        let done = self.seen.last().unwrap().clone();
        assert!(done.contains("status=ok"), "{done}\n{:#?}", self.seen);
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0));
        std::mem::take(&mut self.seen)
    }
}

impl Drop for LiveVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- the guest's lines ---\n{}", self.seen.join("\n"));
        }
    }
}

fn ctl(run_dir: &Path, args: &[&str]) -> Result<String, String> {
    let args: Vec<&str> = std::iter::once("rl").chain(args.iter().copied()).collect();
    let out = common::ctl(run_dir, &args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `ctl` once the control socket answers (it comes up after the devices).
fn ctl_when_up(vm: &LiveVm, args: &[&str]) -> String {
    let start = Instant::now();
    loop {
        match vm.ctl(args) {
            Ok(out) => return out,
            Err(e) if start.elapsed() > Duration::from_secs(30) => panic!("ctl {args:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn field(kv: &HashMap<String, String>, key: &str) -> f64 {
    kv.get(key).unwrap_or_else(|| panic!("no {key} in {kv:?}")).parse().unwrap()
}

/// Requests per second over the `blk-rate` windows `lines`.
fn iops(windows: &[HashMap<String, String>]) -> f64 {
    let ops: f64 = windows.iter().map(|w| field(w, "ops")).sum();
    let ns: f64 = windows.iter().map(|w| field(w, "ns")).sum();
    ops * 1e9 / ns
}

fn assert_near(what: &str, got: f64, want: f64) {
    let off = (got - want) / want;
    eprintln!("{what}: {got:.1} for a limit of {want:.1} ({:+.2}%)", off * 100.0);
    assert!(off.abs() <= TOLERANCE, "{what}: {got:.1}, not within 5% of {want:.1}");
}

/// The guest's rate with no limit, to know that a limit is what holds it down.
fn unlimited(mode: &str, bs: &str) -> HashMap<String, String> {
    let mut vm = LiveVm::start(
        "rl-free",
        &["--mode", mode, "--disk", "{disk}", "--cmdline", &blk_rate(1, bs)],
    );
    vm.wait_for("BH result workload=blk-rate")
}

fn blk_rate(seconds: u32, bs: &str) -> String {
    format!(
        "bulkhead.run=blk-rate bulkhead.mode=randread bulkhead.bs={bs} bulkhead.seconds={seconds} \
         bulkhead.irq=1"
    )
}

/// A disk limited to 1000 requests/s (100 per 100 ms) runs at 1000 requests/s over 5 s, in
/// both modes; unlimited, the same device runs over twice as fast.
#[test]
fn a_disk_ops_limit_holds_within_five_percent_in_both_modes() {
    for mode in ["microkernel", "monolithic"] {
        let free = field(&unlimited(mode, "4096"), "iops");
        assert!(free > 2000.0, "{mode}: unlimited, the disk does only {free} requests/s");
        let disk = "{disk},ops=100@100";
        let mut vm = LiveVm::start(
            "rl-ops",
            &["--mode", mode, "--disk", disk, "--cmdline", &blk_rate(5, "4096")],
        );
        let total = vm.wait_for("BH result workload=blk-rate");
        assert_near(&format!("{mode}: requests/s over 5 s"), field(&total, "iops"), 1000.0);
        vm.finish();
    }
}

/// A disk limited to 4000 KiB/s (400 KiB per 100 ms), read 64 KiB at a time, moves 4000 KiB/s
/// over 5 s; unlimited, over twice that.
#[test]
fn a_disk_bandwidth_limit_holds_within_five_percent() {
    let free = unlimited("microkernel", "65536");
    let free_bps = field(&free, "ops") * 65536.0 * 1e9 / field(&free, "ns");
    assert!(free_bps > 2.0 * 4_096_000.0, "unlimited, the disk moves only {free_bps} B/s");
    let mut vm = LiveVm::start(
        "rl-bw",
        &["--disk", "{disk},bw=400K@100", "--cmdline", &blk_rate(5, "65536")],
    );
    let total = vm.wait_for("BH result workload=blk-rate");
    let bps = field(&total, "ops") * 65536.0 * 1e9 / field(&total, "ns");
    assert_near("bytes/s over 5 s", bps, 4_096_000.0);
    vm.finish();
}

/// Runs `blk-rate` at 1000 requests/s, halves the limit through `ctl` at the third second, and
/// measures the windows from two seconds after the change on; `disrupt` runs after the change
/// (and returns how many more seconds to skip).
fn change_while_running(mode: &str, disrupt: impl FnOnce(&mut LiveVm, u32) -> u64) {
    let mut vm = LiveVm::start(
        "rl-change",
        &["--mode", mode, "--disk", "{disk},ops=100@100", "--cmdline", &blk_rate(14, "4096")],
    );
    let status = ctl_when_up(&vm, &["status"]);
    assert!(status.contains("blk0 limits: bandwidth none, ops 100/100ms"), "{status}");
    let before: Vec<_> = (2..=3).map(|s| vm.second(s)).collect();
    assert_near(&format!("{mode}: requests/s before the change"), iops(&before), 1000.0);

    let reply = vm.ctl(&["device", "limits", "blk0", "--ops", "50@100"]).unwrap();
    assert_eq!(reply.trim(), "blk0 limits: bandwidth none, ops 50/100ms");
    // The guest may have printed more seconds meanwhile: the change fell in the one after
    // the latest printed.
    let changed_in = vm.latest_second(3) + 1;
    let core = vm.child.id();
    let skip = disrupt(&mut vm, core);
    let first = changed_in + 1 + skip;
    assert!(first + 3 <= 13, "too few seconds left after the change (from {first})");
    let after: Vec<_> = (first..=13).map(|s| vm.second(s)).collect();
    assert_near(&format!("{mode}: requests/s after the change"), iops(&after), 500.0);
    let status = vm.ctl(&["status", "--json"]).unwrap();
    assert!(status.contains("\"refill_time\": 100") && status.contains("\"size\": 50"), "{status}");
    vm.finish();
}

/// `ctl device limits` halves a disk's rate while the guest runs, in both modes: the guest's
/// rate before is the old limit's, after it the new one's, each within 5%.
#[test]
fn a_limit_changed_through_ctl_takes_effect_while_the_guest_runs() {
    for mode in ["microkernel", "monolithic"] {
        change_while_running(mode, |_, _| 0);
    }
}

/// A block compartment killed after its limit was changed comes back with the changed limit
/// (the core keeps the page), and the guest's rate after it is that limit's.
#[test]
fn a_compartment_killed_while_limited_comes_back_still_limited() {
    change_while_running("microkernel", |vm, core| {
        let old = wait_compartment(core, "blk");
        // SAFETY: killing a compartment of the VM this test started.
        assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);
        let new = wait_compartment_other(core, "blk", Some(old));
        assert_ne!(new, old);
        vm.wait_for("BH rate"); // the second the restart fell in
        1
    });
}

/// The API refuses what it cannot do, saying why.
#[test]
fn limits_refusals_name_the_device_and_what_to_do() {
    let mut vm = LiveVm::start(
        "rl-refuse",
        &["--disk", "{disk}", "--console", "pty", "--cmdline", &blk_rate(30, "4096")],
    );
    ctl_when_up(&vm, &["status"]);
    let err = vm.ctl(&["device", "limits", "blk9", "--ops", "1@1"]).unwrap_err();
    assert!(err.contains("there is no device blk9; this VM has blk0, console0"), "{err}");
    let err = vm.ctl(&["device", "limits", "console0", "--bw", "1M@1000"]).unwrap_err();
    assert!(err.contains("console0 is a console device, which has no rate limiter"), "{err}");
    let err = vm.ctl(&["device", "limits", "blk0", "--rx-ops", "none"]).unwrap_err();
    assert!(err.contains("has no rx_ops bucket; its buckets are bandwidth, ops"), "{err}");
    let err = vm.ctl(&["device", "limits", "blk0", "--bw", "10X@1"]).unwrap_err();
    assert!(err.contains("SIZE@MS[+BURST]"), "{err}");
    let shown = vm.ctl(&["device", "limits", "blk0"]).unwrap();
    assert_eq!(shown.trim(), "blk0 limits: bandwidth none, ops none");
    vm.wait_for("BH rate");
}

/// The rng's bandwidth limit (40 KiB/s here) holds the guest's 80 KiB read to about 2 s.
#[test]
fn the_rng_bandwidth_limit_slows_the_entropy_down() {
    let mut vm = LiveVm::start(
        "rl-rng",
        &["--rng=bw=4K@100", "--cmdline", "bulkhead.run=rng bulkhead.bytes=81920"],
    );
    let check = vm.wait_for("BH check name=rng");
    // 4 KiB are in the bucket at the start; the other 76 KiB take 1.9 s at 40 KiB/s.
    let seconds = field(&check, "seconds");
    eprintln!("rng: 80 KiB in {seconds} s");
    assert!((1.8..6.0).contains(&seconds), "80 KiB of entropy took {seconds} s");
    vm.finish();
}

/// `net-bench` transmitting UDP datagrams of 1 KiB (1066-byte Ethernet frames) to the host for
/// `seconds` each run, `runs` times in a row, completions by interrupt.
fn net_tx(runs: usize, seconds: u32) -> String {
    let run = vec!["net-bench"; runs].join(",");
    format!(
        "bulkhead.run={run} bulkhead.mode=tx bulkhead.size=1024 bulkhead.seconds={seconds} \
         bulkhead.irq=1 bulkhead.ip=10.0.2.15/24 bulkhead.peer=10.0.2.1"
    )
}

/// The bytes of one `net_tx` frame, as a transmit limiter counts them: the Ethernet frame
/// (14-byte Ethernet, 20-byte IPv4 and 8-byte UDP headers and the payload).
const NET_TX_FRAME: f64 = 1024.0 + 42.0;

/// Frames per second of a `net-bench` result line, over the whole run.
fn pps(result: &HashMap<String, String>) -> f64 {
    field(result, "packets") / field(result, "seconds")
}

/// The guest's transmit rate over a tap with no limit, in `mode`.
fn net_unlimited(ns: &NetNs, mode: &str) -> f64 {
    let mut vm = LiveVm::start_in(
        ns,
        "rl-net-free",
        &["--mode", mode, "--net", "tap=tap0", "--cmdline", &net_tx(1, 1)],
    );
    pps(&vm.wait_for("BH result workload=net-bench"))
}

/// A network interface's transmit limit of 1000 frames/s (100 per 100 ms) holds the guest's
/// whole 5 s run within 5%, in both modes; `ctl device limits net0 --tx-ops 50@100` while the
/// guest runs halves it, which a later run measures (`net-bench` reports whole runs only: the
/// guest runs it three times, the change falls in the second, the third is measured).
/// Unlimited, the same device sends over twice the limit.
#[test]
fn a_network_interfaces_transmit_limits_hold_and_a_change_takes_effect() {
    for mode in ["microkernel", "monolithic"] {
        let ns = NetNs::new("rl-net");
        let free = net_unlimited(&ns, mode);
        eprintln!("{mode}: unlimited, {free:.0} frames/s");
        assert!(free > 2000.0, "{mode}: unlimited, the interface sends only {free:.0} frames/s");
        let mut vm = LiveVm::start_in(
            &ns,
            "rl-net-ops",
            &["--mode", mode, "--net", "tap=tap0,tx-ops=100@100", "--cmdline", &net_tx(3, 5)],
        );
        let status = ctl_when_up(&vm, &["status"]);
        assert!(status.contains("tx_ops 100/100ms"), "{status}");
        let first = vm.wait_for("BH result workload=net-bench");
        assert_near(&format!("{mode}: frames/s over 5 s"), pps(&first), 1000.0);
        let reply = vm.ctl(&["device", "limits", "net0", "--tx-ops", "50@100"]).unwrap();
        assert!(reply.contains("tx_ops 50/100ms"), "{reply}");
        vm.wait_for("BH result workload=net-bench"); // the change fell in this run
        let third = vm.wait_for("BH result workload=net-bench");
        assert_near(&format!("{mode}: frames/s after the change"), pps(&third), 500.0);
        vm.finish();
    }
}

/// A transmit bandwidth limit of 1000 KiB/s (100 KiB per 100 ms) holds the guest's frames
/// (their Ethernet bytes, as the limiter counts them) within 5% over 5 s.
#[test]
fn a_network_interfaces_transmit_bandwidth_limit_holds_within_five_percent() {
    let ns = NetNs::new("rl-net-bw");
    let free = net_unlimited(&ns, "microkernel") * NET_TX_FRAME;
    eprintln!("unlimited, {free:.0} frame bytes/s");
    assert!(free > 2.0 * 1_024_000.0, "unlimited, the interface moves only {free:.0} B/s");
    let mut vm = LiveVm::start_in(
        &ns,
        "rl-net-bw",
        &["--net", "tap=tap0,tx-bw=100K@100", "--cmdline", &net_tx(1, 5)],
    );
    let result = vm.wait_for("BH result workload=net-bench");
    assert_near("frame bytes/s over 5 s", pps(&result) * NET_TX_FRAME, 1_024_000.0);
    vm.finish();
}
