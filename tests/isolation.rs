//! Spatial isolation through the core: a compartment that tries what a
//! compromised one would — open a file it was not given, reach the network,
//! make a system call outside its list — is stopped by its sandbox, and the
//! core survives (with restarts on, the device comes back and the guest's
//! I/O completes). And the core's own threads really run under their
//! filters, with the counts `bulkhead report tcb` publishes.
//!
//! The trespasses are injected with the test-only fault injector
//! (`BULKHEAD_FAULT=open=PATH|connect|syscall=NAME`, compiled into debug
//! builds), inside a queue worker of a serving backend.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{require_kvm, start, KillOnDrop, TempDir};

const T: Duration = Duration::from_secs(180);

/// blk-verify over a 4 MiB disk with `fault` armed in every block backend;
/// returns the finished run.
fn verify_with_fault(tag: &str, fault: &str, extra: &[&str]) -> common::Run {
    let dir = TempDir::new(tag);
    let image = dir.file("disk.raw", &vec![0u8; 4 << 20]);
    let disk = format!("{},format=raw", image.display());
    let mut cmd = common::bulkhead();
    // A core stopped by a violation leaves its control socket behind: keep it in the test's
    // folder.
    cmd.env("BULKHEAD_RUN_DIR", dir.0.join("run"));
    cmd.env("BULKHEAD_FAULT", fault).args(["run", "--disk", &disk, "--restart-max", "1000"]);
    cmd.args(extra).args(["--cmdline", "bulkhead.run=blk-verify bulkhead.seed=7"]);
    let child = start(&mut cmd);
    let _guard = KillOnDrop(child.id());
    common::wait(child, T)
}

#[test]
fn a_compartment_cannot_open_a_file_it_was_not_given() {
    require_kvm();
    let dir = TempDir::new("secret");
    let secret = dir.file("secret", b"the host's secret\n");
    let fault = format!("open={}:after=10:device=blk", secret.display());
    for mode in ["microkernel", "monolithic"] {
        let r = verify_with_fault("open", &fault, &["--mode", mode]);
        assert_eq!(r.code, 0, "{mode}: {}", r.stderr);
        r.assert_check("blk-verify");
        let refused = format!("open {} refused: Permission denied", secret.display());
        assert!(r.stderr.contains(&refused), "{mode}: not refused:\n{}", r.stderr);
        assert!(!r.stderr.contains("opened"), "{mode}: {}", r.stderr);
        // Refused, not killed: the backend goes on serving.
        assert!(!r.stderr.contains("restarted"), "{mode}: {}", r.stderr);
    }
}

#[test]
fn a_compartment_cannot_reach_the_network_and_comes_back() {
    require_kvm();
    let r = verify_with_fault("connect", "connect:after=20:device=blk", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_check("blk-verify");
    assert!(!r.stderr.contains("connected to"), "{}", r.stderr);
    // seccomp kills it at socket(2): SIGSYS is signal 31.
    assert!(r.stderr.contains("blk0 restarted (killed by signal 31"), "{}", r.stderr);
}

#[test]
fn a_system_call_outside_the_list_kills_the_compartment_not_the_core() {
    require_kvm();
    for call in ["ptrace", "mount", "execve"] {
        let r = verify_with_fault("syscall", &format!("syscall={call}:after=20:device=blk"), &[]);
        assert_eq!(r.code, 0, "{call}: {}", r.stderr);
        r.assert_check("blk-verify");
        assert!(!r.stderr.contains(&format!("{call} returned")), "{call}: {}", r.stderr);
        assert!(r.stderr.contains("blk0 restarted (killed by signal 31"), "{call}: {}", r.stderr);
    }
}

#[test]
fn without_restarts_the_core_outlives_a_killed_compartment() {
    require_kvm();
    let dir = TempDir::new("norestart");
    let image = dir.file("disk.raw", &vec![0u8; 4 << 20]);
    let disk = format!("{},format=raw", image.display());
    let name = format!("iso-norestart-{}", std::process::id());
    let mut cmd = common::bulkhead();
    cmd.env("BULKHEAD_FAULT", "syscall=ptrace:after=5:device=blk");
    cmd.args(["run", "--disk", &disk, "--rng", "--restart", "off", "--name", &name]);
    cmd.args(["--cmdline", "bulkhead.run=blk-verify"]);
    let child = start(&mut cmd);
    let core = child.id();
    let _guard = KillOnDrop(core);
    let start = Instant::now();
    let blk = loop {
        let status = status_json(&name);
        let device = status.as_ref().and_then(|s| device(s, "blk0"));
        if let Some(d) = device.filter(|d| d["state"] == "failed") {
            break d;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "blk0 never failed: {status:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(blk["last_exit"].as_str().unwrap().starts_with("killed by signal 31"), "{blk}");
    // The core runs on, its other compartment too, and still answers.
    let status = status_json(&name).expect("the core answers");
    assert_eq!(device(&status, "rng0").unwrap()["state"], "running");
    // SAFETY: signalling the VMM this test started.
    unsafe { libc::kill(core as i32, libc::SIGTERM) };
    let r = common::wait(child, T);
    assert_eq!(r.code, 143, "{}", r.stderr);
}

#[test]
fn in_monolithic_mode_a_call_outside_the_device_list_stops_the_core_naming_it() {
    require_kvm();
    let r = verify_with_fault(
        "mono-syscall",
        "syscall=ptrace:after=5:device=blk",
        &["--mode", "monolithic"],
    );
    assert_eq!(r.code, 159, "{}", r.stderr);
    // A queue worker, started by the device's thread with its filter.
    assert!(r.stderr.contains("bulkhead: seccomp: thread bh-blk-q"), "{}", r.stderr);
    assert!(r.stderr.contains("called ptrace (system call 101)"), "{}", r.stderr);
}

/// `bulkhead status NAME --json`, or `None` while the VM does not answer.
fn status_json(name: &str) -> Option<serde_json::Value> {
    let out = common::bulkhead().args(["status", name, "--json"]).output().unwrap();
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("status --json prints JSON"))
}

fn device(status: &serde_json::Value, id: &str) -> Option<serde_json::Value> {
    status["devices"].as_array()?.iter().find(|d| d["id"] == id).cloned()
}

/// `bulkhead report tcb`'s system-call table: (process, class) → (microkernel, monolithic).
fn published_counts() -> HashMap<(String, String), (Option<u64>, Option<u64>)> {
    let out = common::bulkhead()
        .args(["report", "tcb", "--root", env!("CARGO_MANIFEST_DIR")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut table = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("| core |") || l.starts_with("| compartment"))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [process, class, micro, mono] = cells[..] else { continue };
        let process = process.strip_prefix("compartment ").map_or(process, |k| k);
        table.insert(
            (process.to_string(), class.to_string()),
            (micro.parse().ok(), mono.parse().ok()),
        );
    }
    table
}

/// Every thread of `pid`: (TID, name, Seccomp mode, NoNewPrivs, CapEff).
fn threads(pid: u32) -> Vec<(u32, String, u32, u32, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((
            entry.file_name().to_string_lossy().parse().unwrap(),
            field("Name"),
            field("Seccomp").parse().unwrap(),
            field("NoNewPrivs").parse().unwrap(),
            u64::from_str_radix(&field("CapEff"), 16).unwrap(),
        ));
    }
    out
}

/// Boots a VM in `mode` with a disk and rng, and checks with `/proc` that
/// every thread of the core runs under a filter with no_new_privs and (but
/// for the launcher) no capability; then that `bulkhead status` reports
/// every class in force with the counts `bulkhead report tcb` publishes.
fn core_threads_are_filtered(mode: &str) {
    require_kvm();
    let dir = TempDir::new(&format!("filtered-{mode}"));
    let image = dir.file("disk.raw", &vec![0u8; 4 << 20]);
    let disk = format!("{},format=raw", image.display());
    let name = format!("iso-{mode}-{}", std::process::id());
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--mode", mode, "--cpus", "2", "--disk", &disk, "--rng", "--name", &name]);
    cmd.args(["--cmdline", "bulkhead.run=blk-stress bulkhead.seconds=600"]);
    let child = start(&mut cmd);
    let core = child.id();
    let _guard = KillOnDrop(core);
    let start = Instant::now();
    let status = loop {
        // Up once the API answers and each device's threads are there.
        if let Some(s) = status_json(&name) {
            let rows = s["confinement"].as_array().cloned().unwrap_or_default();
            let devices_up = match mode {
                "monolithic" => rows.iter().any(|r| r["class"] == "device-blk"),
                _ => rows.iter().filter(|r| r["class"] == "compartment").count() == 2,
            };
            if devices_up && rows.iter().all(|r| r["filtered"] == r["threads"]) {
                break s;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{name} never came up fully");
        std::thread::sleep(Duration::from_millis(50));
    };
    let list = threads(core);
    assert!(list.len() >= 4, "{list:?}");
    for (tid, name, seccomp, nnp, cap_eff) in &list {
        assert_eq!(*seccomp, 2, "thread {name} of the core runs without a filter: {list:?}");
        assert_eq!(*nnp, 1, "thread {name}: no_new_privs is not set");
        // The launcher (the main thread) keeps what compartments and a new core need.
        if *tid != core {
            assert_eq!(*cap_eff, 0, "thread {name} holds capabilities {cap_eff:#x}");
        }
    }
    let names: Vec<&str> = list.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(names.iter().filter(|n| n.starts_with("vcpu")).count(), 2, "{names:?}");
    assert!(names.contains(&"bulkhead-api"), "{names:?}");
    let published = published_counts();
    let rows = status["confinement"].as_array().unwrap();
    let mut classes = Vec::new();
    for row in rows {
        let (process, class) = (row["process"].as_str().unwrap(), row["class"].as_str().unwrap());
        assert_eq!(row["filtered"], row["threads"], "{row}");
        assert_eq!(row["no_new_privs"], row["threads"], "{row}");
        if (process, class) == ("core", "launcher") {
            // It may execute a new core (`--core-update on`, the default): a deny-list of the
            // calls no part of the core makes, not an allow-list to count.
            assert_eq!(row["syscalls_allowed"], serde_json::Value::Null, "{row}");
            classes.push(format!("{process}/{class}"));
            continue;
        }
        let key = match process {
            "core" => ("core".to_string(), class.to_string()),
            device => (device.trim_end_matches(char::is_numeric).to_string(), "all threads".into()),
        };
        let (micro, mono) = published.get(&key).copied().unwrap_or_else(|| panic!("{key:?}"));
        // The report counts the launcher in microkernel mode; a monolithic VM with a disk has
        // the same launcher (for a swapped disk's new image).
        let expected = if mode == "monolithic" && class != "launcher" { mono } else { micro };
        assert_eq!(row["syscalls_allowed"].as_u64(), expected, "{row} vs the report");
        classes.push(format!("{process}/{class}"));
    }
    let expected: &[&str] = match mode {
        // The launcher opens a swapped disk's new image and starts its thread.
        "monolithic" => &[
            "core/vcpu",
            "core/event-loop",
            "core/supervisor",
            "core/api",
            "core/launcher",
            "core/device-blk",
            "core/device-rng",
        ],
        _ => &[
            "core/vcpu",
            "core/event-loop",
            "core/supervisor",
            "core/api",
            "core/launcher",
            "blk0/compartment",
            "rng0/compartment",
        ],
    };
    assert_eq!(classes, expected);
    // SAFETY: signalling the VMM this test started.
    unsafe { libc::kill(core as i32, libc::SIGTERM) };
    let r = common::wait(child, T);
    assert_eq!(r.code, 143, "{}", r.stderr);
}

#[test]
fn every_core_thread_runs_under_its_filter_microkernel() {
    core_threads_are_filtered("microkernel");
}

#[test]
fn every_core_thread_runs_under_its_filter_monolithic() {
    core_threads_are_filtered("monolithic");
}

/// The event loop's filter lets the supervisor reconnect to an external
/// vhost-user backend (a unix socket: `socket(AF_UNIX)` and `connect`).
#[test]
fn the_supervisor_reconnects_to_an_external_backend_under_its_filter() {
    require_kvm();
    let dir = TempDir::new("external");
    let image = dir.file("disk.raw", &vec![0u8; 4 << 20]);
    let disk = format!("{},format=raw", image.display());
    let socket = dir.0.join("blk.sock");
    let backend = || {
        let mut cmd = common::bulkhead();
        cmd.args(["device", "blk", "--disk", &disk, "--socket"]).arg(&socket);
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        let child = child.unwrap();
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "the backend never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    };
    let mut first = backend();
    let spec = format!("blk,socket={}", socket.display());
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--vhost-user", &spec]);
    cmd.args(["--cmdline", "bulkhead.run=blk-stress bulkhead.seconds=3 bulkhead.seed=3"]);
    let child = start(&mut cmd);
    let _guard = KillOnDrop(child.id());
    std::thread::sleep(Duration::from_millis(800));
    first.kill().unwrap();
    first.wait().unwrap();
    let _ = std::fs::remove_file(&socket);
    let mut second = backend();
    let r = common::wait(child, T);
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_check("blk-stress");
    assert!(r.stderr.contains("blk0 restarted"), "{}", r.stderr);
    assert!(!r.stderr.contains("seccomp:"), "{}", r.stderr);
}
