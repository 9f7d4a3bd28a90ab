//! `bulkhead bench interference`: the built-in guest's latency probe
//! (`bulkhead.run=probe`, a fixed unit of work timed on the TSC) alone and
//! beside a noisy neighbour (`bulkhead.run=storm`: every vCPU spinning plus
//! disk I/O through its compartment), without and with CPU partitioning,
//! interleaved in each round; medians over the rounds.
//!
//! With limits: the probe VM gets host CPU 0 (`--host-cpus 0`) and the
//! highest CPU weight (`--cpu-shares 262144`); the storm VM the other CPUs
//! (`--host-cpus 1-N`) and half a CPU for its vCPUs (`--cpu-quota 50%`).

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::stats::summarize;

pub struct Options {
    pub rounds: usize,
    pub seconds: f64,
}

/// The storm's options without limits: no cgroup at all. (Its compartments' default limits
/// would give the VM a cgroup, which the CPU scheduler weighs as one against the probe: a
/// partition already.)
fn no_cgroups() -> Vec<String> {
    ["--device-cpu-quota", "none", "--device-memory-limit", "none"].map(String::from).to_vec()
}

/// The probe's unit of work (multiply-adds; ~0.5 ms on this project's host).
const WORK: u64 = 2_000_000;

struct Case {
    label: &'static str,
    probe: Vec<String>,
    storm: Option<Vec<String>>,
}

/// One probe run: (p50, p99, max, units).
fn probe_once(
    exe: &std::path::Path,
    case: &Case,
    disk: &str,
    seconds: f64,
) -> anyhow::Result<[f64; 4]> {
    let storm = match &case.storm {
        Some(limits) => {
            let child = Command::new(exe)
                .args(["run", "--cpus", "2", "--disk", disk])
                .args(limits)
                .arg("--cmdline")
                .arg(format!(
                    "bulkhead.run=storm bulkhead.seconds={:.3} bulkhead.bytes=4M",
                    seconds + 1.0
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("start the storm VM")?;
            std::thread::sleep(Duration::from_millis(400));
            Some(child)
        }
        None => None,
    };
    let out = Command::new(exe)
        .arg("run")
        .args(&case.probe)
        .arg("--cmdline")
        .arg(format!("bulkhead.run=probe bulkhead.seconds={seconds:.3} bulkhead.work={WORK}"))
        .stdin(Stdio::null())
        .output()
        .context("run the probe VM")?;
    if let Some(storm) = storm {
        let done = storm.wait_with_output()?;
        check(&done, "storm")?;
    }
    check(&out, "probe")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("BH result workload=probe"))
        .context("no probe result line")?;
    let get = |key: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in {line}"))
    };
    Ok([get("p50_us")?, get("p99_us")?, get("max_us")?, get("units")?])
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "the {what} VM failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn run(opts: &Options) -> anyhow::Result<i32> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        bail!("the interference benchmark needs two host CPUs (one for each VM); this host has {cpus}");
    }
    let exe = std::env::current_exe()?;
    let dir =
        std::env::temp_dir().join(format!("bulkhead-bench-interference-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("storm.img");
    std::fs::write(&disk, vec![0u8; 4 << 20])?;
    let disk = disk.to_string_lossy().into_owned();
    let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let probe_limits = strings(&["--host-cpus", "0", "--cpu-shares", "262144"]);
    let rest = if cpus == 2 { "1".to_string() } else { format!("1-{}", cpus - 1) };
    let storm_limits = strings(&["--host-cpus", &rest, "--cpu-quota", "50%"]);
    let cases = [
        Case { label: "probe alone, no limits", probe: vec![], storm: None },
        Case { label: "probe alone, its limits", probe: probe_limits.clone(), storm: None },
        Case { label: "beside the storm, no limits", probe: vec![], storm: Some(no_cgroups()) },
        Case {
            label: "beside the storm, with limits",
            probe: probe_limits,
            storm: Some(storm_limits),
        },
    ];
    let mut results: Vec<Vec<[f64; 4]>> = vec![Vec::new(); cases.len()];
    for round in 0..opts.rounds {
        for (case, out) in cases.iter().zip(results.iter_mut()) {
            let r = probe_once(&exe, case, &disk, opts.seconds)
                .with_context(|| format!("round {round}, {}", case.label))?;
            out.push(r);
        }
        eprintln!("bulkhead bench interference: round {} of {} done", round + 1, opts.rounds);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let median = |runs: &[[f64; 4]], i: usize| {
        summarize(&runs.iter().map(|r| r[i]).collect::<Vec<_>>()).map_or(f64::NAN, |s| s.median)
    };
    let base_p50 = median(&results[1], 0);
    let base_units = median(&results[1], 3);
    println!(
        "Latency probe (units of {WORK} multiply-adds, {:.1} s per run) beside a storm VM \
         (2 vCPUs spinning + blk I/O); medians of {} rounds. With limits: probe --host-cpus 0 \
         --cpu-shares 262144; storm --host-cpus {rest} --cpu-quota 50%.",
        opts.seconds, opts.rounds
    );
    println!();
    println!("| case | p50 (µs) | p99 (µs) | max (µs) | p99 / alone p50 | work done vs alone with limits |");
    println!("|---|---|---|---|---|---|");
    for (case, runs) in cases.iter().zip(&results) {
        let (p50, p99, max, units) =
            (median(runs, 0), median(runs, 1), median(runs, 2), median(runs, 3));
        println!(
            "| {} | {p50:.1} | {p99:.1} | {max:.0} | {:.2}× | {:.0}% |",
            case.label,
            p99 / base_p50,
            100.0 * units / base_units
        );
    }
    Ok(0)
}
