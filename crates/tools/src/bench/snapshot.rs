//! `bulkhead bench snapshot`: pause, snapshot, update the core of, and restore a built-in guest
//! that does block I/O, in both modes, and time each step.
//!
//! Each run starts a VM whose guest runs blk-stress passes over a small disk, waits for its
//! first pass, then asks it for a snapshot while it runs (`ctl VM snapshot`: the VM is paused,
//! written and resumed; the reply says how long the pause took and when the files were synced).
//! Its core is then updated to a copy of the binary (`ctl VM update-core`: the new core says
//! how long the guest was paused, from the old core's vCPUs stopped to its own running), and
//! the time from the request to the new core's answer is taken. The VM is then paused,
//! snapshotted again and stopped, and `bulkhead run --restore` is started: the time to the
//! core's "vCPUs running" line (measured from the spawn, process start-up included) and to the
//! guest's next console line (a pass it finishes after the restore).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::stats::summarize;

pub struct Options {
    pub runs: usize,
    pub memory_mib: u64,
}

/// One mode's figures, a value per run each.
#[derive(Default)]
struct Figures {
    pause_ms: Vec<f64>,
    snapshot_ms: Vec<f64>,
    memory_mib: Vec<f64>,
    running_ms: Vec<f64>,
    fill_ms: Vec<f64>,
    console_ms: Vec<f64>,
    update_pause_ms: Vec<f64>,
    update_ms: Vec<f64>,
}

/// A process with its stdout and stderr lines, each with when it arrived.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<(bool, String, Instant)>,
}

impl Lines {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Lines> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start bulkhead")?;
        let (tx, lines) = mpsc::channel();
        for (is_err, out) in [
            (false, Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>),
            (true, Box::new(child.stderr.take().unwrap())),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send((is_err, line, Instant::now())).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Lines { child, lines })
    }

    /// The first line (stderr if `err`) containing `wanted`, and when it came.
    fn wait(&self, err: bool, wanted: &str) -> anyhow::Result<(String, Instant)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((is_err, line, at)) => {
                    if is_err == err && line.contains(wanted) {
                        return Ok((line, at));
                    }
                    seen.push(line);
                }
                Err(_) => bail!("no line with {wanted:?}; saw:\n{}", seen.join("\n")),
            }
        }
    }

    fn stop(mut self) {
        // SAFETY: signalling a child this benchmark started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The number after `key` in `line` (`key 1.23`).
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.trim_end_matches([',', ')']).parse().ok()
}

fn ctl(exe: &std::path::Path, run_dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(exe).env("BULKHEAD_RUN_DIR", run_dir).arg("ctl").args(args).output()?;
    if !out.status.success() {
        bail!("ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a run snapshots: the guest doing block I/O through a disk in `mode`, or a guest with
/// no device at all (ring-3 work only, as a Firecracker restore is usually measured).
#[derive(Clone, Copy)]
enum Subject {
    Disk(&'static str),
    NoDevices,
}

fn one_run(
    exe: &std::path::Path,
    dir: &std::path::Path,
    subject: Subject,
    memory_mib: u64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let run_dir = dir.join("run");
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 4 << 20])?;
    let name = format!("bench-snap-{}", std::process::id());
    let mut cmd = Command::new(exe);
    cmd.env("BULKHEAD_RUN_DIR", &run_dir).args([
        "run",
        "--name",
        &name,
        "--memory",
        &format!("{memory_mib}M"),
    ]);
    match subject {
        Subject::Disk(mode) => cmd.args(["--mode", mode]).arg("--disk").arg(&disk).args([
            "--cmdline",
            "bulkhead.run=blk-stress bulkhead.rounds=1000000 bulkhead.bytes=1048576",
        ]),
        Subject::NoDevices => cmd.args(["--cmdline", "bulkhead.run=probe bulkhead.seconds=100000"]),
    };
    let vm = Lines::spawn(&mut cmd)?;
    match subject {
        Subject::Disk(_) => drop(vm.wait(false, "BH progress name=blk-stress")?),
        // The probe says nothing until its end: let it start.
        Subject::NoDevices => std::thread::sleep(Duration::from_millis(300)),
    }
    let snapshot = dir.join("snap");
    let out =
        ctl(exe, &run_dir, &[&name, "snapshot", "--to", snapshot.to_str().unwrap(), "--json"])?;
    let done: serde_json::Value = serde_json::from_str(&out)?;
    figures.pause_ms.push(done["paused_ms"].as_f64().unwrap_or(f64::NAN));
    figures.snapshot_ms.push(done["took_ms"].as_f64().unwrap_or(f64::NAN));
    figures.memory_mib.push(done["memory_written"].as_f64().unwrap_or(0.0) / f64::from(1 << 20));
    let next = dir.join("core-next");
    if !next.exists() {
        std::fs::copy(exe, &next).context("cannot copy the binary for the core update")?;
    }
    let start = Instant::now();
    let out =
        ctl(exe, &run_dir, &[&name, "update-core", "--binary", next.to_str().unwrap(), "--json"])?;
    figures.update_ms.push(start.elapsed().as_secs_f64() * 1000.0);
    let core: serde_json::Value = serde_json::from_str(&out)?;
    figures.update_pause_ms.push(core["last_update"]["pause_ms"].as_f64().unwrap_or(f64::NAN));
    // The restore starts from a snapshot of a paused VM, whose disk is as the snapshot left it.
    ctl(exe, &run_dir, &[&name, "pause"])?;
    ctl(exe, &run_dir, &[&name, "snapshot", "--to", snapshot.to_str().unwrap()])?;
    vm.stop();
    let start = Instant::now();
    let restored = Lines::spawn(
        Command::new(exe)
            .env("BULKHEAD_RUN_DIR", &run_dir)
            .args(["run", "-v", "--restore"])
            .arg(&snapshot),
    )?;
    let (line, running) = restored.wait(true, "bulkhead: restored from")?;
    if let Subject::Disk(_) = subject {
        let (_, console) = restored.wait(false, "BH progress name=blk-stress")?;
        figures.console_ms.push((console - start).as_secs_f64() * 1000.0);
    }
    restored.stop();
    figures.running_ms.push((running - start).as_secs_f64() * 1000.0);
    figures.fill_ms.push(number_after(&line, "memory filled in").unwrap_or(f64::NAN));
    Ok(())
}

/// One row's values out of a subject's figures.
type Column = fn(&Figures) -> &Vec<f64>;

pub fn run(opts: &Options) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("cannot find the bulkhead binary")?;
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let subjects = [Subject::Disk("microkernel"), Subject::Disk("monolithic"), Subject::NoDevices];
    let mut figures: Vec<Figures> = subjects.iter().map(|_| Figures::default()).collect();
    // Interleaved: run i of each subject back to back.
    for _ in 0..opts.runs {
        for (subject, f) in subjects.iter().zip(&mut figures) {
            one_run(&exe, &dir, *subject, opts.memory_mib, f)?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "bench snapshot: built-in guest, 1 vCPU, {} MiB: under blk-stress (1 MiB of a 4 MiB raw \
         disk) in each mode, and with no device (ring-3 work); {} runs each, interleaved; median \
         (min–max)\n",
        opts.memory_mib, opts.runs
    );
    println!("| step | microkernel, a disk | monolithic, a disk | no device |");
    println!("|---|---|---|---|");
    let rows: [(&str, Column, &str); 8] = [
        ("running VM: request → paused (vCPUs parked, queues stopped)", |f| &f.pause_ms, "ms"),
        ("running VM: request → snapshot synced and VM resumed", |f| &f.snapshot_ms, "ms"),
        ("guest memory written (pages not all zero)", |f| &f.memory_mib, "MiB"),
        ("restore: spawn → vCPUs running", |f| &f.running_ms, "ms"),
        ("restore: of which memory filled from memory.bin", |f| &f.fill_ms, "ms"),
        ("restore: spawn → guest's next console line", |f| &f.console_ms, "ms"),
        (
            "core update: guest paused (old core's vCPUs stopped → new core's running)",
            |f| &f.update_pause_ms,
            "ms",
        ),
        ("core update: request → the new core answers `status`", |f| &f.update_ms, "ms"),
    ];
    for (label, values, unit) in rows {
        let cells: Vec<String> = figures
            .iter()
            .map(|f| match summarize(values(f)) {
                Some(s) => format!("{:.2} {unit} ({:.2}–{:.2})", s.median, s.min, s.max),
                None => "–".into(),
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    Ok(0)
}
