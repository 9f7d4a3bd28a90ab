//! `bulkhead bench recovery`: kill the block (or net) compartment over and
//! over while the built-in guest does I/O through it, and measure how long
//! each recovery takes and what the guest saw.
//!
//! Recovery time is the supervisor's own measurement, printed with each
//! restart: from its noticing the compartment's end (its socket closing,
//! microseconds after the SIGKILL) to the first request completed by the
//! successor (or to the successor's start, if nothing was outstanding).
//! The guest's view is its worst request latency over the whole run (blk)
//! or the pings that went unanswered (net).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::io::BenchNetns;
use super::stats::summarize;

pub struct Options {
    pub kills: usize,
    pub interval_ms: u64,
    /// No cgroup per compartment (see `bench recovery --help`).
    pub no_device_cgroups: bool,
    /// A standby compartment per device (`bulkhead run --standby on`).
    pub standby: bool,
}

/// The `run` options for `opts`'s compartment limits and standbys.
fn limits(opts: &Options) -> Vec<&'static str> {
    let mut args = Vec::new();
    if opts.no_device_cgroups {
        args.extend(["--device-cpu-quota", "none", "--device-memory-limit", "none"]);
    }
    if opts.standby {
        args.extend(["--standby", "on"]);
    }
    args
}

/// The pids of the device `id` (`blk0`) of the VM whose core is `core` (named `vm-CORE`, in
/// the default run folder): the serving compartment and the standby, from `ctl status`.
fn device_pids(core: u32, id: &str) -> Option<(i32, Option<i32>)> {
    let exe = std::env::current_exe().ok()?;
    let out =
        Command::new(exe).args(["ctl", &format!("vm-{core}"), "status", "--json"]).output().ok()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let device = status["devices"].as_array()?.iter().find(|d| d["id"] == id)?;
    if device["state"] != "running" {
        return None;
    }
    let pid = device["pid"].as_i64()? as i32;
    Some((pid, device["standby_pid"].as_i64().map(|p| p as i32)))
}

/// With standbys: waits until the device serves from a compartment other than `not` and its
/// next standby is ready; returns the serving one.
fn serving_with_standby(core: u32, id: &str, not: Option<i32>) -> anyhow::Result<i32> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some((pid, Some(_))) = device_pids(core, id) {
            if Some(pid) != not {
                return Ok(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("{id} did not serve with a standby ready within 10 s")
}

/// The core's child running `bulkhead device KIND`, once it serves.
fn compartment(core: u32, kind: &str, not: Option<i32>) -> anyhow::Result<i32> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            if Some(pid) == not {
                continue;
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let mut f = stat.rsplit_once(") ").map(|(_, r)| r.split(' ')).into_iter().flatten();
            let (state, ppid) = (f.next(), f.next());
            if ppid != Some(&*core.to_string()) || state == Some("Z") {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            // Past `enter`: its own two filters and no capability (from birth it has the
            // core's launcher thread's filter and capabilities).
            let field = |name: &str| {
                status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
            };
            let filters: u32 = field("Seccomp_filters").and_then(|v| v.parse().ok()).unwrap_or(0);
            let sandboxed = filters >= 2 && field("CapEff") == Some("0000000000000000");
            if sandboxed && args.windows(2).any(|w| w[0] == b"device" && w[1] == kind.as_bytes()) {
                return Ok(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("no {kind} compartment came up")
}

/// Runs one VM, kills its `kind` compartment `opts.kills` times, returns
/// the recovery times (ms) and the guest's output.
fn run_one(mut cmd: Command, kind: &str, opts: &Options) -> anyhow::Result<(Vec<f64>, String)> {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let core = child.id();
    let stderr = BufReader::new(child.stderr.take().expect("piped"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let id = format!("{kind}0");
    let find = |not| match opts.standby {
        true => serving_with_standby(core, &id, not),
        false => compartment(core, kind, not),
    };
    let mut pid = find(None).context("at start")?;
    std::thread::sleep(Duration::from_millis(300));
    for kill in 0..opts.kills {
        // SAFETY: killing a compartment of the VM this benchmark started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        pid = match find(Some(pid)) {
            Ok(pid) => pid,
            Err(e) => {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("after kill {kill}: the VM ended ({status}): its guest's run was over");
                }
                let _ = child.kill();
                let said: Vec<String> = rx.try_iter().collect();
                bail!("after kill {kill}: {e}; the VMM said:\n{}", said.join("\n"));
            }
        };
        std::thread::sleep(Duration::from_millis(opts.interval_ms));
    }
    let out = child.wait_with_output().context("wait for the VM")?;
    let mut times = Vec::new();
    let mut other = String::new();
    for line in rx.try_iter() {
        match line.split("serving again after ").nth(1).and_then(|t| t.strip_suffix(" ms")) {
            Some(ms) if line.contains("(killed by signal 9)") => times.push(ms.parse()?),
            _ => other.push_str(&format!("{line}\n")),
        }
    }
    if times.len() != opts.kills {
        bail!("{} kills, {} restarts:\n{other}", opts.kills, times.len());
    }
    Ok((times, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// A `key=` value from the guest's result or check lines.
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .filter(|l| l.starts_with("BH result") || l.starts_with("BH check"))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(key)))
}

pub fn run(opts: &Options) -> anyhow::Result<i32> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let image = super::io::filled_image(&dir, 64 << 20)?;
    // Long enough for every kill, short enough to end on its own. With standbys each kill also
    // waits for the next standby, started on the supervisor's next tick (100 ms): 1,000 kills
    // took 327 ms each here, and a guest whose run ends before the last kill ends the VM.
    let per_kill = opts.interval_ms + if opts.standby { 200 } else { 60 };
    let seconds = (opts.kills as u64 * per_kill).div_ceil(1000) + 3;
    let mut blk = Command::new(&exe);
    blk.args(["run", "--restart-max", "100000"])
        .args(limits(opts))
        .arg("--disk")
        .arg(format!("{},format=raw", image.display()))
        .arg("--cmdline")
        .arg(format!("bulkhead.run=blk-bench bulkhead.mode=randread bulkhead.seconds={seconds}"));
    let (blk_times, blk_out) = run_one(blk, "blk", opts)?;
    let _ = std::fs::remove_dir_all(&dir);
    let ns = BenchNetns::new()?;
    let mut net = Command::new("ip");
    net.args(["netns", "exec", &ns.0])
        .arg(&exe)
        .args(["run", "--restart-max", "100000"])
        .args(limits(opts))
        .args(["--net", "tap=tap0", "--cmdline"])
        .arg(format!(
            "bulkhead.run=net-bench bulkhead.mode=pingpong bulkhead.seconds={seconds} bulkhead.timeout_ms=200"
        ));
    let (net_times, net_out) = run_one(net, "net", opts)?;
    println!(
        "Recovery from SIGKILL of a compartment while the guest does I/O: {} kills each, {} ms apart; {}.",
        opts.kills,
        opts.interval_ms,
        match (opts.no_device_cgroups, opts.standby) {
            (true, false) => "compartments without cgroups",
            (false, false) => "compartments in their own cgroups (the default limits)",
            (true, true) => "compartments without cgroups, a standby each",
            (false, true) => "compartments in their own cgroups (the default limits), a standby each",
        }
    );
    println!();
    println!("| device | recovery median (ms) | p99 (ms) | max (ms) | guest's view |");
    println!("|---|---|---|---|---|");
    for (name, times, guest) in [
        ("blk (4 KiB random reads, qd 1)", &blk_times, blk_view(&blk_out)),
        ("net (ICMP ping-pong with the host)", &net_times, net_view(&net_out)),
    ] {
        let s = summarize(times).expect("one time per kill");
        println!("| {name} | {:.1} | {:.1} | {:.1} | {guest} |", s.median, s.p99, s.max);
    }
    Ok(0)
}

fn blk_view(out: &str) -> String {
    let errors = field(out, "errors=").unwrap_or("?");
    let verdict = if out.contains("status=fail") { "FAILED" } else { "ok" };
    format!(
        "{verdict}: {} requests, {errors} errors; latency p99 {} us, worst {} us",
        field(out, "ops=").unwrap_or("?"),
        field(out, "p99_us=").unwrap_or("?"),
        field(out, "max_us=").unwrap_or("?")
    )
}

fn net_view(out: &str) -> String {
    let sent: u64 = field(out, "sent=").and_then(|v| v.parse().ok()).unwrap_or(0);
    let got: u64 = field(out, "packets=").and_then(|v| v.parse().ok()).unwrap_or(0);
    format!(
        "{got} of {sent} pings answered ({} lost with killed compartments)",
        sent.saturating_sub(got)
    )
}
