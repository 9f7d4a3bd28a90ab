//! A VM's state out of its process. Snapshots: a running built-in guest paused, written to a
//! folder, its process ended, and restored in a new process from the files — again and again
//! while it works — in both modes and with several vCPUs; damaged snapshots refused, naming
//! the file. Core updates: the same guest handed from one core binary to another in its
//! process, again and again; a new core that cannot take it over hands it back.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{bulkhead, lines_of, TempDir};

/// How long any one step may take (a debug build on a busy 2-core host).
const STEP: Duration = Duration::from_secs(60);

/// One process of a VM's life: its console lines as they come, and its errors.
struct Process {
    child: Child,
    lines: Receiver<String>,
    errors: Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn start(cmd: &mut Command) -> Process {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bulkhead");
        let lines = lines_of(child.stdout.take().unwrap());
        let errors = lines_of(child.stderr.take().unwrap());
        Process { child, lines, errors, seen: Vec::new() }
    }

    /// Waits for a console line containing `wanted`; fails with what was seen.
    fn wait_for(&mut self, wanted: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(wanted) {
                        return line;
                    }
                }
                Err(_) => self.fail(&format!("no console line with {wanted:?}")),
            }
        }
    }

    /// Ends the process with SIGTERM (a clean stop: its compartments end with it) and waits.
    fn stop(mut self) {
        // SAFETY: signalling the VMM this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Waits for the guest's end; returns the exit code, the console and the errors.
    fn finish(self) -> (i32, String, String) {
        self.finish_within(STEP)
    }

    /// [`Process::finish`], for a guest that may work for up to `within` more.
    fn finish_within(mut self, within: Duration) -> (i32, String, String) {
        let deadline = Instant::now() + within;
        while let Ok(line) =
            self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.fail("the VM did not end");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let errors: Vec<String> = self.errors.try_iter().collect();
        (status.code().unwrap_or(-1), self.seen.join("\n"), errors.join("\n"))
    }

    fn fail(&mut self, why: &str) -> ! {
        // A VM that is ending says why on its way out: a moment for it first.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut ended = None;
        while Instant::now() < deadline && ended.is_none() {
            ended = self.child.try_wait().ok().flatten();
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.seen.extend(self.lines.try_iter());
        self.seen.push(format!("(the VM: {ended:?})"));
        std::thread::sleep(Duration::from_millis(100));
        let errors: Vec<String> = self.errors.try_iter().collect();
        panic!("{why}; the console:\n{}\nthe errors:\n{}", self.seen.join("\n"), errors.join("\n"));
    }
}

/// `bulkhead ctl ARGS` against the VMs of `run_dir`; fails unless it succeeds.
fn ctl(run_dir: &Path, args: &[&str]) -> String {
    let out = common::ctl(run_dir, args);
    assert!(
        out.status.success(),
        "bulkhead ctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What each cycle of [`cycles`] does to the running VM.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Pause, snapshot, stop the process, restore in a new process started in another folder.
    Snapshot,
    /// `update-core` to the other of two copies of the binary (the VM runs the first).
    UpdateCore,
}

/// The two copies of the binary a VM's core is updated between, in `dir`.
fn core_copies(dir: &Path) -> [PathBuf; 2] {
    ["core-a", "core-b"].map(|name| {
        let copy = dir.join(name);
        std::fs::copy(env!("CARGO_BIN_EXE_bulkhead"), &copy).unwrap();
        copy
    })
}

/// A VM whose disk (a raw image beside it, named by a relative path) takes blk-stress passes,
/// put through `cycles` of `op` while it works. The guest must end with every pass verified,
/// and the image hold the last pass.
fn cycles(tag: &str, mode: &str, cpus: u32, workload: &str, cycles: usize, op: Op) {
    common::require_kvm();
    let dir = TempDir::new(tag);
    let run_dir = dir.0.join("run");
    let vm_dir = dir.0.join("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let cores = core_copies(&dir.0);
    let bytes = 4 << 20;
    std::fs::write(vm_dir.join("disk.raw"), vec![0u8; 16 << 20]).unwrap();
    // Enough passes that the guest is still working at the last cycle (one or two per cycle).
    let rounds = 3 * cycles + 3;
    let cmdline = format!(
        "bulkhead.run={workload} bulkhead.rounds={rounds} bulkhead.seconds=3600 \
         bulkhead.bytes={bytes} bulkhead.seed=3"
    );
    let cmdline = match (workload, op) {
        ("storm", _) => cmdline.replace("bulkhead.seconds=3600", "bulkhead.seconds=8"),
        // An update is quick, and the guest's passes are not held up by it: the guest works
        // for a time long enough for every update, however busy the host, rather than a count
        // of passes it could finish first.
        (_, Op::UpdateCore) => cmdline
            .replace(&format!("bulkhead.rounds={rounds}"), "bulkhead.rounds=1000000")
            .replace("bulkhead.seconds=3600", &format!("bulkhead.seconds={}", 10 + 3 * cycles)),
        _ => cmdline.replace(" bulkhead.seconds=3600", ""),
    };
    let name = |cycle: usize| match op {
        Op::Snapshot => format!("{tag}-{cycle}"),
        Op::UpdateCore => tag.to_string(),
    };
    let mut vm = Process::start(
        Command::new(&cores[0])
            .current_dir(&vm_dir)
            .env("BULKHEAD_RUN_DIR", &run_dir)
            .args(["run", "--name", &name(0), "--mode", mode])
            .args(["--cpus", &cpus.to_string(), "--disk", "disk.raw", "--cmdline", &cmdline]),
    );
    let core = vm.child.id();
    let status = |run_dir: &Path| -> serde_json::Value {
        serde_json::from_str(&ctl(run_dir, &[tag, "status", "--json"])).unwrap()
    };
    let mut compartment = None;
    for cycle in 0..cycles {
        vm.wait_for("BH progress name=blk-stress");
        if op == Op::UpdateCore && mode == "microkernel" {
            // The disk's compartment goes on under each new core: the same process.
            let blk = &status(&run_dir)["devices"][0];
            assert_eq!(blk["restarts"], 0, "{blk}");
            let pid = blk["pid"].as_u64().unwrap();
            assert_eq!(*compartment.get_or_insert(pid), pid, "update {cycle}: {blk}");
        }
        if op == Op::UpdateCore {
            let next = &cores[(cycle + 1) % 2];
            let out =
                common::ctl(&run_dir, &[tag, "update-core", "--binary", next.to_str().unwrap()]);
            let said = format!("core updated to {} (update {})", next.display(), cycle + 1);
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains(&said) {
                vm.fail(&format!(
                    "update {}: {text}{}",
                    cycle + 1,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            // The same process, now running the other binary.
            let exe = std::fs::read_link(format!("/proc/{core}/exe")).unwrap();
            assert_eq!(&exe, next);
            continue;
        }
        let paused = ctl(&run_dir, &[&name(cycle), "pause"]);
        assert!(paused.contains("paused in"), "{paused}");
        let status = ctl(&run_dir, &[&name(cycle), "status"]);
        assert!(status.contains("PAUSED"), "{status}");
        let snapshot = dir.0.join(format!("snap-{cycle}"));
        let written =
            ctl(&run_dir, &[&name(cycle), "snapshot", "--to", snapshot.to_str().unwrap()]);
        assert!(written.contains("the VM stays paused"), "{written}");
        vm.stop();
        // Restored from another folder: the disk's relative path is the snapshot's VM's.
        vm = Process::start(
            bulkhead()
                .current_dir("/")
                .env("BULKHEAD_RUN_DIR", &run_dir)
                .arg("run")
                .arg("--restore")
                .arg(&snapshot)
                .args(["--name", &name(cycle + 1)]),
        );
    }
    if op == Op::UpdateCore {
        let status = status(&run_dir);
        assert_eq!(status["core"]["updates"], cycles as u64, "{status}");
        assert_eq!(status["core_pid"], core, "{status}");
        assert!(status["core"]["last_update"]["pause_ms"].as_f64().unwrap() > 0.0, "{status}");
    }
    // An update cycle's guest works for a time, however quick the updates were.
    let (code, console, errors) = match op {
        Op::UpdateCore => vm.finish_within(STEP + Duration::from_secs(10 + 3 * cycles as u64)),
        Op::Snapshot => vm.finish(),
    };
    assert_eq!(code, 0, "{console}\n{errors}");
    let check = format!("BH check name={workload} status=ok");
    assert!(console.contains(&check), "{console}\n{errors}");
    assert!(console.contains("BH done status=ok"), "{console}\n{errors}");
    let stress = console
        .lines()
        .filter_map(common::parse_line)
        .find(|(event, kv)| {
            event == "check" && kv.get("name").map(String::as_str) == Some("blk-stress")
        })
        .map(|(_, kv)| kv)
        .unwrap_or_else(|| panic!("no blk-stress check:\n{console}"));
    let passes: u64 = stress["rounds"].parse().unwrap();
    let image = std::fs::read(vm_dir.join("disk.raw")).unwrap();
    assert!(
        image[..bytes] == common::pattern(3 + passes - 1, bytes)[..],
        "the image does not hold the last of {passes} passes"
    );
}

#[test]
fn blk_stress_survives_twenty_snapshot_restore_cycles_in_microkernel_mode() {
    cycles("snap-micro", "microkernel", 1, "blk-stress", 20, Op::Snapshot);
}

#[test]
fn blk_stress_survives_snapshot_restore_cycles_in_monolithic_mode() {
    cycles("snap-mono", "monolithic", 1, "blk-stress", 5, Op::Snapshot);
}

/// Two and four vCPUs (the application processors spinning, the bootstrap one verifying
/// passes): every vCPU's state comes back, and the guest's end-of-run checks pass.
#[test]
fn smp_guests_survive_snapshot_restore_cycles() {
    cycles("snap-smp2", "microkernel", 2, "storm", 3, Op::Snapshot);
    cycles("snap-smp4", "microkernel", 4, "storm", 2, Op::Snapshot);
}

#[test]
fn blk_stress_survives_twenty_core_updates_in_microkernel_mode() {
    cycles("update-micro", "microkernel", 1, "blk-stress", 20, Op::UpdateCore);
}

#[test]
fn blk_stress_survives_core_updates_in_monolithic_mode() {
    cycles("update-mono", "monolithic", 1, "blk-stress", 5, Op::UpdateCore);
}

#[test]
fn smp_guests_survive_core_updates() {
    cycles("update-smp2", "microkernel", 2, "storm", 3, Op::UpdateCore);
    cycles("update-smp4", "microkernel", 4, "storm", 2, Op::UpdateCore);
}

/// A network interface and the rng across core updates: their compartments (and the tap) go
/// on under each new core, and every echo request the guest sends meanwhile is answered.
#[test]
fn net_and_rng_compartments_are_kept_across_core_updates() {
    common::require_kvm();
    let dir = TempDir::new("update-net");
    let run_dir = dir.0.join("run");
    let [a, b] = core_copies(&dir.0);
    let ns = common::NetNs::new("upd-net");
    let mut vm = Process::start(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&a)
            .env("BULKHEAD_RUN_DIR", &run_dir)
            .args(["run", "--name", "update-net", "--net", "tap=tap0", "--rng", "--cmdline"])
            .arg(
                "bulkhead.run=net-bench,rng bulkhead.mode=pingpong bulkhead.seconds=8 \
                 bulkhead.ip=10.0.2.15/24 bulkhead.peer=10.0.2.1 bulkhead.timeout_ms=2000",
            ),
    );
    vm.wait_for("BH ready");
    let pids = |vm: &mut Process| -> Vec<u64> {
        let out = common::ctl(&run_dir, &["update-net", "status", "--json"]);
        if !out.status.success() {
            vm.fail(&String::from_utf8_lossy(&out.stderr));
        }
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let devices = status["devices"].as_array().unwrap().clone();
        devices.iter().map(|d| d["pid"].as_u64().unwrap()).collect()
    };
    let before = pids(&mut vm);
    for (i, next) in [&b, &a, &b].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(700));
        let out = common::ctl(
            &run_dir,
            &["update-net", "update-core", "--binary", next.to_str().unwrap()],
        );
        if !out.status.success() {
            vm.fail(&format!("update {}: {}", i + 1, String::from_utf8_lossy(&out.stderr)));
        }
        assert_eq!(pids(&mut vm), before, "update {}: the compartments changed", i + 1);
    }
    let (code, console, errors) = vm.finish();
    assert_eq!(code, 0, "{console}\n{errors}");
    let (_, result) = console
        .lines()
        .filter_map(common::parse_line)
        .find(|(event, kv)| {
            event == "result" && kv.get("workload").map(String::as_str) == Some("net-bench")
        })
        .unwrap_or_else(|| panic!("no net-bench result:\n{console}"));
    assert!(result["sent"].parse::<u64>().unwrap() > 100, "{result:?}");
    assert_eq!(result["sent"], result["packets"], "echo requests went unanswered: {result:?}");
    assert!(console.contains("BH check name=rng status=ok"), "{console}\n{errors}");
    assert!(console.contains("BH done status=ok"), "{console}\n{errors}");
}

/// Updates that cannot be done change nothing, and a new core that fails to take the VM over
/// hands it back: the guest runs on with the binary it had, and a later update works.
#[test]
fn a_core_update_that_cannot_be_done_leaves_the_vm_running() {
    common::require_kvm();
    let dir = TempDir::new("update-refused");
    let run_dir = dir.0.join("run");
    let [a, b] = core_copies(&dir.0);
    std::fs::write(dir.0.join("disk.raw"), vec![0u8; 16 << 20]).unwrap();
    let mut vm = Process::start(
        Command::new(&a)
            .current_dir(&dir.0)
            .env("BULKHEAD_RUN_DIR", &run_dir)
            // Debug builds: a core whose binary is named core-b fails to take a VM over.
            .env("BULKHEAD_TAKEOVER_FAULT", "core-b")
            .args(["run", "--name", "refused", "--rng", "--disk", "disk.raw"])
            .args(["--cmdline", "bulkhead.run=blk-stress bulkhead.rounds=40 bulkhead.seed=5"]),
    );
    let core = vm.child.id();
    vm.wait_for("BH progress name=blk-stress");
    let update = |binary: &Path| {
        common::ctl(&run_dir, &["refused", "update-core", "--binary", binary.to_str().unwrap()])
    };
    let refused = |out: std::process::Output, why: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains(why), "{why}: {err}");
    };
    refused(update(Path::new("/bin/true")), "is not a Bulkhead core that can take a VM over");
    refused(update(&dir.0.join("disk.raw")), "is not executable");
    ctl(&run_dir, &["refused", "pause"]);
    refused(update(&b), "the VM is paused: resume it");
    ctl(&run_dir, &["refused", "resume"]);
    // core-b starts, fails, and hands the VM back to core-a.
    refused(update(&b), "the new core did not take the VM over: BULKHEAD_TAKEOVER_FAULT");
    let status: serde_json::Value =
        serde_json::from_str(&ctl(&run_dir, &["refused", "status", "--json"])).unwrap();
    assert_eq!(status["core"]["updates"], 0, "{status}");
    assert_eq!(status["core"]["attempts"], 1, "{status}");
    assert_eq!(std::fs::read_link(format!("/proc/{core}/exe")).unwrap(), a);
    // A working update after it.
    let out = ctl(&run_dir, &["refused", "update-core", "--binary", a.to_str().unwrap()]);
    assert!(out.contains("(update 1)"), "{out}");
    let (code, console, errors) = vm.finish();
    assert_eq!(code, 0, "{console}\n{errors}");
    assert!(console.contains("BH done status=ok"), "{console}\n{errors}");
    assert!(errors.contains("handing it back to"), "{errors}");
}

/// A snapshot of a small paused VM (a disk and the rng), for the damaged-snapshot checks.
fn take_snapshot(dir: &Path) -> PathBuf {
    let run_dir = dir.join("run");
    std::fs::write(dir.join("disk.raw"), vec![0u8; 1 << 20]).unwrap();
    let mut vm = Process::start(
        bulkhead()
            .env("BULKHEAD_RUN_DIR", &run_dir)
            .args(["run", "--name", "damaged", "--rng", "--disk"])
            .arg(dir.join("disk.raw"))
            .args([
                "--cmdline",
                "bulkhead.run=blk-stress bulkhead.rounds=100000 bulkhead.bytes=65536",
            ]),
    );
    vm.wait_for("BH progress name=blk-stress");
    let snapshot = dir.join("good");
    ctl(&run_dir, &["damaged", "pause"]);
    ctl(&run_dir, &["damaged", "snapshot", "--to", snapshot.to_str().unwrap()]);
    vm.stop();
    snapshot
}

/// A copy of the snapshot `good` as `name`, changed by `damage`.
fn damaged(good: &Path, name: &str, damage: impl FnOnce(&Path)) -> PathBuf {
    let copy = good.parent().unwrap().join(name);
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(good).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    damage(&copy);
    copy
}

fn flip_byte(file: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
}

/// The offset of the first byte that is not zero in `file`.
fn first_data(file: &Path) -> u64 {
    let bytes = std::fs::read(file).unwrap();
    bytes.iter().position(|&b| b != 0).expect("memory holds something") as u64
}

fn rewrite_manifest(dir: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("snapshot.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    change(&mut manifest);
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[test]
fn damaged_snapshots_are_refused_naming_the_file() {
    common::require_kvm();
    let dir = TempDir::new("snap-damaged");
    let good = take_snapshot(&dir.0);
    let truncate = |file: &'static str, keep: u64| {
        move |d: &Path| {
            let f = std::fs::OpenOptions::new().write(true).open(d.join(file)).unwrap();
            f.set_len(keep).unwrap();
        }
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            damaged(&good, "no-manifest", |d| {
                std::fs::remove_file(d.join("snapshot.json")).unwrap()
            }),
            "has no snapshot.json",
        ),
        (
            damaged(&good, "manifest-cut", truncate("snapshot.json", 40)),
            "snapshot.json is malformed",
        ),
        (damaged(&good, "machine-cut", truncate("machine.json", 100)), "machine.json is damaged"),
        (
            damaged(&good, "machine-flipped", |d| flip_byte(&d.join("machine.json"), 200)),
            "machine.json is damaged",
        ),
        (damaged(&good, "memory-cut", truncate("memory.bin", 1 << 20)), "memory.bin is damaged"),
        (
            damaged(&good, "memory-flipped", |d| {
                let f = d.join("memory.bin");
                flip_byte(&f, first_data(&f));
            }),
            "memory.bin is damaged",
        ),
        (
            damaged(&good, "memory-gone", |d| std::fs::remove_file(d.join("memory.bin")).unwrap()),
            "memory.bin",
        ),
        (
            damaged(&good, "version", |d| rewrite_manifest(d, |m| m["version"] = 99.into())),
            "format version 99",
        ),
        (
            damaged(&good, "more-memory", |d| {
                rewrite_manifest(d, |m| {
                    let recipe: serde_json::Value =
                        serde_json::from_str(m["recipe"].as_str().unwrap()).unwrap();
                    let mut recipe = recipe;
                    let args = recipe["args"].as_array_mut().unwrap();
                    args.push("--memory".into());
                    args.push("512M".into());
                    m["recipe"] = recipe.to_string().into();
                })
            }),
            "bytes of memory where the VM was given",
        ),
    ];
    for (snapshot, wanted) in cases {
        let run = common::run_command(
            {
                let mut cmd = bulkhead();
                cmd.env("BULKHEAD_RUN_DIR", dir.0.join("run"))
                    .arg("run")
                    .arg("--restore")
                    .arg(&snapshot);
                cmd
            },
            STEP,
        );
        assert_ne!(run.code, 0, "{}: restored:\n{}", snapshot.display(), run.stdout);
        assert!(
            run.stderr.contains(wanted),
            "{}: {:?} not in:\n{}",
            snapshot.display(),
            wanted,
            run.stderr
        );
        assert!(
            !run.stdout.contains("BH "),
            "{}: the guest ran:\n{}",
            snapshot.display(),
            run.stdout
        );
    }
    // The good one restores (and the options beside --restore are refused).
    let refused = common::run_command(
        {
            let mut cmd = bulkhead();
            cmd.arg("run").arg("--restore").arg(&good).args(["--memory", "1G"]);
            cmd
        },
        STEP,
    );
    assert!(refused.stderr.contains("give only --name and -v beside it"), "{}", refused.stderr);
    let mut vm = Process::start(
        bulkhead()
            .env("BULKHEAD_RUN_DIR", dir.0.join("run"))
            .arg("run")
            .arg("--restore")
            .arg(&good),
    );
    vm.wait_for("BH progress name=blk-stress");
    vm.stop();
}

/// The block compartment's pid, from `ctl status`, once it serves (and is not `not`).
fn blk_pid(run_dir: &Path, name: &str, not: Option<i64>) -> i64 {
    let deadline = Instant::now() + STEP;
    loop {
        let out = common::ctl(run_dir, &[name, "status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let device = &status["devices"][0];
        if let (Some(pid), "running") =
            (device["pid"].as_i64(), device["state"].as_str().unwrap_or(""))
        {
            if Some(pid) != not {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "blk0 did not serve: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A compartment killed while its VM is paused is restarted, but its queues wait for the
/// resume; a snapshot taken then holds the device as it stood, the VM resumes, and the
/// snapshot restores: the guest's passes all verify, in the resumed VM and in the restored one.
#[test]
fn a_compartment_killed_while_paused_comes_back_and_the_snapshot_holds() {
    common::require_kvm();
    let dir = TempDir::new("snap-killed");
    let run_dir = dir.0.join("run");
    std::fs::write(dir.0.join("disk.raw"), vec![0u8; 4 << 20]).unwrap();
    let cmdline =
        "bulkhead.run=blk-stress bulkhead.rounds=12 bulkhead.bytes=1048576 bulkhead.seed=3";
    let mut vm =
        Process::start(bulkhead().current_dir(&dir.0).env("BULKHEAD_RUN_DIR", &run_dir).args([
            "run",
            "--name",
            "killed",
            "--disk",
            "disk.raw",
            "--cmdline",
            cmdline,
        ]));
    vm.wait_for("BH progress name=blk-stress round=1");
    ctl(&run_dir, &["killed", "pause"]);
    let old = blk_pid(&run_dir, "killed", None);
    // SAFETY: killing the compartment this test's VM started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let new = blk_pid(&run_dir, "killed", Some(old));
    assert_ne!(new, old);
    let snapshot = dir.0.join("snap");
    ctl(&run_dir, &["killed", "snapshot", "--to", snapshot.to_str().unwrap()]);
    // The disk as the snapshot's memory expects it, kept aside while the VM runs on.
    std::fs::copy(dir.0.join("disk.raw"), dir.0.join("disk.at-snapshot")).unwrap();
    ctl(&run_dir, &["killed", "resume"]);
    vm.wait_for("BH progress name=blk-stress round=3");
    ctl(&run_dir, &["killed", "pause"]);
    vm.stop();
    std::fs::copy(dir.0.join("disk.at-snapshot"), dir.0.join("disk.raw")).unwrap();
    let restored = Process::start(
        bulkhead().env("BULKHEAD_RUN_DIR", &run_dir).arg("run").arg("--restore").arg(&snapshot),
    );
    let (code, console, errors) = restored.finish();
    assert_eq!(code, 0, "{console}\n{errors}");
    assert!(console.contains("BH check name=blk-stress status=ok"), "{console}\n{errors}");
}
