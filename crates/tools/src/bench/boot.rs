//! `bulkhead bench boot`: time from process start to the built-in guest's
//! ready line and to process exit, and the VMM's memory beyond guest RAM,
//! for Bulkhead, Bulkhead started through Firecracker's API (`bulkhead
//! firecracker`, see [`super::boot_api`]), QEMU microvm, and the peers named
//! with `--peer` (Firecracker, Cloud Hypervisor) booting the same guest, runs
//! interleaved.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::boot_api::{ApiTimes, Front};
use super::peer;
use super::stats::{summarize, Summary};

/// The plain subject's name: the API path is compared with it.
const DIRECT: &str = "Bulkhead";
/// The API path's name.
const VIA_API: &str = "Bulkhead via Firecracker's API";

/// One VMM under test.
pub struct Subject {
    pub name: String,
    how: How,
}

/// How a subject boots the guest.
enum How {
    /// A command line with the guest's command line in it.
    Command(Box<dyn Fn(&str) -> Command>),
    /// `bulkhead firecracker`, configured and started over its API.
    Api(Front),
}

/// One boot: milliseconds to the ready line and to exit (and the API's steps).
struct Boot {
    ready_ms: f64,
    exit_ms: f64,
    api: Option<ApiTimes>,
}

/// Memory seen while the guest holds after its ready line, in KiB: the VMM's (the core's,
/// through the API) and, through the API, the front's, with its startup CPU time.
struct Memory {
    vmm: ProcessMemory,
    front: Option<(ProcessMemory, f64)>,
}

/// One process's memory beyond guest RAM, in KiB.
struct ProcessMemory {
    rss_beyond_guest_kib: f64,
    peak_beyond_guest_kib: f64,
    /// RssAnon: what the process has of its own (no file pages, no shared memory).
    anon_kib: f64,
}

pub struct Options {
    pub runs: usize,
    pub memory_mib: u64,
    pub with_qemu: bool,
    pub with_api: bool,
    /// Firecracker or Cloud Hypervisor binaries to boot the guest beside Bulkhead.
    pub peers: Vec<PathBuf>,
}

pub fn run(opts: &Options) -> anyhow::Result<i32> {
    let mut subjects = vec![bulkhead_subject(opts.memory_mib)?];
    let guest_file = write_guest()?;
    let api_dir = std::env::temp_dir().join(format!("bulkhead-bench-fc-{}", std::process::id()));
    // Removed however the run ends.
    let _files = RemoveOnDrop(vec![guest_file.clone(), api_dir.clone()]);
    if opts.with_api {
        std::fs::create_dir_all(&api_dir)?;
        let exe = std::env::current_exe().context("cannot find the bulkhead binary")?;
        let front = Front::new(exe, api_dir.clone(), guest_file.clone(), opts.memory_mib);
        subjects.push(Subject { name: VIA_API.into(), how: How::Api(front) });
    }
    if opts.with_qemu {
        match peer::find_qemu() {
            Some(qemu) => subjects.push(qemu_subject(qemu, guest_file.clone(), opts.memory_mib)),
            None => bail!("QEMU was not found: run scripts/install-qemu.sh, set BULKHEAD_QEMU, or pass --no-qemu"),
        }
    }
    for path in &opts.peers {
        let peer = peer::Peer::identify(path)?;
        let (guest, dir, memory_mib) = (guest_file.clone(), api_dir.clone(), opts.memory_mib);
        std::fs::create_dir_all(&dir)?;
        subjects.push(Subject {
            name: peer.version.clone(),
            how: How::Command(Box::new(move |cmdline| {
                peer.command(&guest, memory_mib, cmdline, &dir).unwrap_or_else(|e| {
                    eprintln!("bulkhead: {e:#}");
                    std::process::exit(1)
                })
            })),
        });
    }
    let mut boots: Vec<Vec<Boot>> = subjects.iter().map(|_| Vec::new()).collect();
    let mut mems: Vec<Vec<Memory>> = subjects.iter().map(|_| Vec::new()).collect();
    // Warm the page cache and KVM once each, then interleave the subjects.
    for s in &subjects {
        boot_once(s).with_context(|| format!("warm-up boot of {}", s.name))?;
    }
    for round in 0..opts.runs {
        for (i, s) in subjects.iter().enumerate() {
            boots[i].push(boot_once(s).with_context(|| format!("{} boot {round}", s.name))?);
            mems[i].push(
                memory_once(s, opts.memory_mib << 20)
                    .with_context(|| format!("{} memory {round}", s.name))?,
            );
        }
    }
    print_table(opts, &subjects, &boots, &mems);
    print_api(&subjects, &boots, &mems);
    print_costs(&subjects)?;
    // Through the API the core is the same as the plain subject's.
    for s in subjects.iter().filter(|s| matches!(s.how, How::Command(_))) {
        print_breakdown(s, opts.memory_mib << 20)?;
    }
    Ok(0)
}

/// Where a VMM's memory goes: one more held boot, its `smaps` summed by kind of mapping.
fn print_breakdown(s: &Subject, guest: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut boot = start_boot(s, "bulkhead.run=boot bulkhead.hold_ms=400", start, false)?;
    wait_ready(&boot.lines)?;
    std::thread::sleep(Duration::from_millis(200));
    let pid = boot.child.id();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    boot.lines.iter().for_each(drop);
    boot.child.wait()?;
    println!();
    println!(
        "Where {}'s memory goes (`/proc/PID/smaps` of one more boot, 200 ms after the ready line, \
         summed by kind of mapping; KiB):",
        s.name
    );
    println!();
    println!("| mapping | resident | of it anonymous |");
    println!("|---|---|---|");
    let rows = breakdown(&smaps, &exe.to_string_lossy(), guest);
    for (kind, rss, anon) in &rows {
        println!("| {kind} | {rss:.0} | {anon:.0} |");
    }
    let counted = rows.iter().filter(|r| r.0 != GUEST_RAM);
    let (rss, anon) = counted.fold((0.0, 0.0), |(r, a), row| (r + row.1, a + row.2));
    println!("| **beyond guest memory** | **{rss:.0}** ({:.2} MiB) | {anon:.0} |", rss / 1024.0);
    Ok(())
}

/// The guest's RAM's row in [`breakdown`], not counted in the VMM's memory.
const GUEST_RAM: &str = "guest RAM (not counted)";

/// `smaps` summed by kind of mapping: (kind, resident KiB, anonymous KiB), in a fixed order,
/// rows with nothing resident left out. `exe` is the VMM binary's path; `guest` the guest's
/// RAM in bytes (see [`process_memory`]).
fn breakdown(smaps: &str, exe: &str, guest: u64) -> Vec<(&'static str, f64, f64)> {
    const KINDS: [&str; 10] = [
        "the VMM binary's code (`r-xp`)",
        "the VMM binary's read-only data and relro (`r--p`)",
        "the VMM binary's data (`rw-p`)",
        "libc",
        "other libraries (libm, ld.so, libgcc_s…)",
        "heap",
        "main thread's stack",
        "other anonymous (thread stacks, allocations by mmap)",
        "vCPU `kvm_run` pages, vdso, other",
        GUEST_RAM,
    ];
    let mut sums = [(0.0, 0.0); KINDS.len()];
    for m in mappings(smaps) {
        let kind = match m.path {
            _ if is_guest_ram(m.size, guest) => 9,
            p if p == exe && m.perms.starts_with("r-x") => 0,
            p if p == exe && m.perms.starts_with("rw") => 2,
            p if p == exe => 1,
            p if p.contains("/libc.so") => 3,
            p if p.contains(".so") => 4,
            "[heap]" => 5,
            "[stack]" => 6,
            "" => 7,
            _ => 8,
        };
        sums[kind].0 += m.rss;
        sums[kind].1 += m.anon;
    }
    KINDS
        .iter()
        .zip(sums)
        .filter(|(_, (rss, _))| *rss > 0.0)
        .map(|(k, (r, a))| (*k, r, a))
        .collect()
}

/// Files and folders removed when it is dropped.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path));
        }
    }
}

fn bulkhead_subject(memory_mib: u64) -> anyhow::Result<Subject> {
    let exe = std::env::current_exe().context("cannot find the bulkhead binary")?;
    Ok(Subject {
        name: DIRECT.into(),
        how: How::Command(Box::new(move |cmdline| {
            let mut c = Command::new(&exe);
            c.args(["run", "--memory", &format!("{memory_mib}M"), "--cmdline", cmdline]);
            c
        })),
    })
}

fn qemu_subject(qemu: PathBuf, guest: PathBuf, memory_mib: u64) -> Subject {
    Subject {
        name: "QEMU microvm".into(),
        how: How::Command(Box::new(move |cmdline| {
            peer::microvm(&qemu, &guest, 1, memory_mib, cmdline)
        })),
    }
}

/// The built-in guest as a file, for QEMU's -kernel.
fn write_guest() -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("bulkhead-guest-{}.elf", std::process::id()));
    std::fs::write(&path, bulkhead_guest_elf::GUEST_ELF)
        .context("cannot write the built-in guest")?;
    Ok(path)
}

/// A started boot: the process (the front, through the API), its console lines with the time
/// each was read, and the API's steps.
struct Started {
    child: Child,
    lines: Receiver<(String, Instant)>,
    api: Option<ApiTimes>,
    /// Through the API: the connection, and where the front's metrics go (memory runs).
    client: Option<(super::boot_api::Client, Option<PathBuf>)>,
}

/// Starts `s` booting the guest with `cmdline`, from `start`; through the API, configures and
/// starts the microVM (and, with `metrics`, has the front write its metrics to a file).
fn start_boot(
    s: &Subject,
    cmdline: &str,
    start: Instant,
    metrics: bool,
) -> anyhow::Result<Started> {
    match &s.how {
        How::Command(make) => {
            let (child, lines) = spawn(make(cmdline))?;
            Ok(Started { child, lines, api: None, client: None })
        }
        How::Api(front) => {
            let (cmd, launch) = front.command();
            let (mut child, lines) = spawn(cmd)?;
            let path = metrics.then(|| front.metrics_path(&launch));
            let booted = front.boot(&launch, &mut child, start, cmdline, path.as_deref());
            let (client, times) = match booted {
                Ok(b) => b,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            };
            Ok(Started { child, lines, api: Some(times), client: Some((client, path)) })
        }
    }
}

/// Starts `cmd` and returns it with its stdout's lines, each with the time it was read.
fn spawn(mut cmd: Command) -> anyhow::Result<(Child, Receiver<(String, Instant)>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the VMM")?;
    let out = child.stdout.take().expect("stdout is piped");
    Ok((child, watch(out)))
}

/// Reads `out` line by line on a thread of its own, timing each line as it arrives (a client
/// of the API may still be waiting for an answer when the guest is ready).
fn watch(out: ChildStdout) -> Receiver<(String, Instant)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut line = String::new();
        while out.read_line(&mut line).is_ok_and(|n| n > 0) {
            if tx.send((std::mem::take(&mut line), Instant::now())).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for the guest's ready line; the time it arrived.
fn wait_ready(lines: &Receiver<(String, Instant)>) -> anyhow::Result<Instant> {
    let mut said = Vec::new();
    for (line, at) in lines.iter() {
        if line.contains("BH ready") {
            return Ok(at);
        }
        said.push(line);
    }
    let last = said[said.len().saturating_sub(10)..].concat();
    bail!("the VMM exited before the guest's ready line; its last lines:\n{last}")
}

fn boot_once(s: &Subject) -> anyhow::Result<Boot> {
    let start = Instant::now();
    let mut boot = start_boot(s, "bulkhead.run=boot", start, false)?;
    let ready = wait_ready(&boot.lines)? - start;
    boot.lines.iter().for_each(drop);
    boot.child.wait()?;
    let exit = start.elapsed();
    Ok(Boot { ready_ms: ms(ready), exit_ms: ms(exit), api: boot.api })
}

/// `guest` is the guest's RAM in bytes.
fn memory_once(s: &Subject, guest: u64) -> anyhow::Result<Memory> {
    let start = Instant::now();
    let mut boot = start_boot(s, "bulkhead.run=boot bulkhead.hold_ms=400", start, true)?;
    wait_ready(&boot.lines)?;
    std::thread::sleep(Duration::from_millis(200));
    let pid = boot.child.id();
    let memory = match boot.client.as_mut() {
        None => Memory { vmm: process_memory(pid, guest)?, front: None },
        Some((client, metrics)) => {
            let core = process_memory(Front::core_pid(pid)?, guest)?;
            let front = process_memory(pid, guest)?;
            let cpu_us = match metrics {
                Some(path) => client.startup_cpu_us(path)?,
                None => f64::NAN,
            };
            Memory { vmm: core, front: Some((front, cpu_us)) }
        }
    };
    drop(boot.client);
    boot.lines.iter().for_each(drop);
    boot.child.wait()?;
    Ok(memory)
}

/// The process's resident memory beyond the guest's RAM, now and at its peak, and its
/// anonymous part: `/proc/PID/status`'s figures less what the guest's RAM has resident. The
/// guest's RAM is each mapping of more than 64 MiB and at least half of `guest` bytes (a
/// malloc arena reserves 64 MiB): shared memory for Bulkhead and QEMU (a memfd), private
/// anonymous memory for Firecracker and Cloud Hypervisor. Its resident size is taken now; the
/// guest's RAM only grows while it holds, so the peak less it is the VMM's own at most.
fn process_memory(pid: u32, guest: u64) -> anyhow::Result<ProcessMemory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (guest_rss, guest_anon) = guest_resident(&smaps, guest);
    Ok(ProcessMemory {
        rss_beyond_guest_kib: field("VmRSS:") - guest_rss,
        peak_beyond_guest_kib: field("VmHWM:") - guest_rss,
        anon_kib: field("RssAnon:") - guest_anon,
    })
}

/// The resident and anonymous KiB of the guest's RAM mappings in `smaps` (see
/// [`process_memory`]).
fn guest_resident(smaps: &str, guest: u64) -> (f64, f64) {
    let guest_ram = mappings(smaps).into_iter().filter(|m| is_guest_ram(m.size, guest));
    guest_ram.fold((0.0, 0.0), |(rss, anon), m| (rss + m.rss, anon + m.anon))
}

/// Whether a mapping of `size` bytes is the guest's RAM of `guest` bytes: more than 64 MiB (a
/// malloc arena reserves 64 MiB) and at least half of it.
fn is_guest_ram(size: u64, guest: u64) -> bool {
    size > 64 << 20 && size >= guest / 2
}

/// One mapping of `/proc/PID/smaps`: its size in bytes, permissions, path (empty when
/// anonymous), and its resident and anonymous KiB.
struct Mapping<'a> {
    size: u64,
    perms: &'a str,
    path: &'a str,
    rss: f64,
    anon: f64,
}

/// The mappings of an `smaps` text, in order.
fn mappings(smaps: &str) -> Vec<Mapping<'_>> {
    let mut found: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let first = words.first().copied().unwrap_or("");
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let size = match (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) {
                (Ok(start), Ok(end)) => end.saturating_sub(start),
                _ => 0,
            };
            let perms = words.get(1).copied().unwrap_or("");
            let path = words.get(5).copied().unwrap_or("");
            found.push(Mapping { size, perms, path, rss: 0.0, anon: 0.0 });
            continue;
        }
        let kib = || words.get(1).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        match (first, found.last_mut()) {
            ("Rss:", Some(m)) => m.rss += kib(),
            ("Anonymous:", Some(m)) => m.anon += kib(),
            _ => {}
        }
    }
    found
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_table(opts: &Options, subjects: &[Subject], boots: &[Vec<Boot>], mems: &[Vec<Memory>]) {
    println!(
        "Boot of the built-in guest, 1 vCPU, {} MiB; median (p99) of {} runs, interleaved.",
        opts.memory_mib, opts.runs
    );
    if opts.with_api {
        println!("Through the API, the memory columns are the core's (the front's are below).");
    }
    println!();
    println!("| VMM | to ready line (ms) | to exit (ms) | RSS beyond guest memory (MiB) | peak RSS beyond guest memory (MiB) |");
    println!("|---|---|---|---|---|");
    for (i, s) in subjects.iter().enumerate() {
        let col = |f: &dyn Fn(&Boot) -> f64| fmt(summary(&boots[i], f));
        let mem = |f: &dyn Fn(&ProcessMemory) -> f64| {
            fmt(summary(&mems[i], &|m: &Memory| f(&m.vmm) / 1024.0))
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            s.name,
            col(&|b| b.ready_ms),
            col(&|b| b.exit_ms),
            mem(&|m| m.rss_beyond_guest_kib),
            mem(&|m| m.peak_beyond_guest_kib)
        );
    }
    let Some(d) = subjects.iter().position(|s| s.name == DIRECT) else { return };
    let med = |i: usize, f: &dyn Fn(&Boot) -> f64| median(&boots[i], f);
    let mem = |i: usize| median(&mems[i], &|m: &Memory| m.vmm.peak_beyond_guest_kib);
    let others: Vec<usize> = (0..subjects.len()).filter(|&i| subjects[i].name != VIA_API).collect();
    if others.len() > 1 {
        println!();
        println!(
            "Bulkhead's medians over each other VMM's (below 1: Bulkhead is quicker, smaller):"
        );
        println!();
        println!("| Bulkhead / | to ready line | to exit | peak RSS beyond guest memory |");
        println!("|---|---|---|---|");
    }
    for &o in others.iter().filter(|&&o| o != d) {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} |",
            subjects[o].name,
            med(d, &|b| b.ready_ms) / med(o, &|b| b.ready_ms),
            med(d, &|b| b.exit_ms) / med(o, &|b| b.exit_ms),
            mem(d) / mem(o)
        );
    }
}

/// The API path step by step against the plain subject, and the front's own memory.
fn print_api(subjects: &[Subject], boots: &[Vec<Boot>], mems: &[Vec<Memory>]) {
    let find = |name: &str| subjects.iter().position(|s| s.name == name);
    let (Some(d), Some(a)) = (find(DIRECT), find(VIA_API)) else { return };
    let (direct, api) = (&boots[d], &boots[a]);
    let step =
        |f: &dyn Fn(&ApiTimes) -> f64| summary(api, &|b: &Boot| b.api.as_ref().map_or(f64::NAN, f));
    println!();
    println!(
        "Through Firecracker's API: `bulkhead firecracker --api-sock`, then PUT /machine-config, \
         PUT /boot-source (the guest as kernel_image_path), PUT /actions InstanceStart on one \
         connection; median (p99), ms from the process's start:"
    );
    println!();
    println!("| to | via the API (ms) | `bulkhead run` (ms) | API/direct | API − direct (ms) |");
    println!("|---|---|---|---|---|");
    println!("| the API socket accepting | {} | - | - | - |", fmt(step(&|t| t.socket_ms)));
    println!("| the first request answered | {} | - | - | - |", fmt(step(&|t| t.first_ms)));
    println!("| InstanceStart answered (204) | {} | - | - | - |", fmt(step(&|t| t.started_ms)));
    for (label, f) in [
        ("the ready line", &(|b: &Boot| b.ready_ms) as &dyn Fn(&Boot) -> f64),
        ("exit", &|b: &Boot| b.exit_ms),
    ] {
        let (x, y) = (median(api, f), median(direct, f));
        println!(
            "| {label} | {} | {} | {:.3} | {:+.2} |",
            fmt(summary(api, f)),
            fmt(summary(direct, f)),
            x / y,
            x - y
        );
    }
    let after_start =
        summary(api, &|b: &Boot| b.api.as_ref().map_or(f64::NAN, |t| b.ready_ms - t.start_sent_ms));
    println!("| the ready line, from InstanceStart sent | {} | - | - | - |", fmt(after_start));
    println!();
    println!("Memory while the guest holds (MiB; median (p99)); the front's startup CPU time:");
    println!();
    println!("| process | RSS beyond guest memory | peak | anonymous (RssAnon) |");
    println!("|---|---|---|---|");
    let row = |label: &str, ms: &[Memory], f: &dyn Fn(&Memory) -> Option<&ProcessMemory>| {
        let col = |g: &dyn Fn(&ProcessMemory) -> f64| {
            fmt(summary(ms, &|m: &Memory| f(m).map_or(f64::NAN, |p| g(p) / 1024.0)))
        };
        println!(
            "| {label} | {} | {} | {} |",
            col(&|p| p.rss_beyond_guest_kib),
            col(&|p| p.peak_beyond_guest_kib),
            col(&|p| p.anon_kib)
        );
    };
    row("core, `bulkhead run`", &mems[d], &|m| Some(&m.vmm));
    row("core, started by the front", &mems[a], &|m| Some(&m.vmm));
    row("front, `bulkhead firecracker`", &mems[a], &|m| m.front.as_ref().map(|f| &f.0));
    let cpu = summary(&mems[a], &|m: &Memory| m.front.as_ref().map_or(f64::NAN, |f| f.1 / 1000.0));
    println!();
    println!(
        "The front's CPU time up to its socket listening (api_server.process_startup_time_cpu_us): \
         {} ms",
        fmt(cpu)
    );
    let front_mib = |g: &dyn Fn(&ProcessMemory) -> f64| {
        median(&mems[a], &|m: &Memory| m.front.as_ref().map_or(f64::NAN, |f| g(&f.0) / 1024.0))
    };
    println!(
        "Added by the API path (medians): {:+.2} ms to the ready line, {:+.2} ms to exit; \
         the front's RSS {:.2} MiB (peak {:.2}), of it anonymous {:.2} MiB",
        median(api, &|b| b.ready_ms) - median(direct, &|b| b.ready_ms),
        median(api, &|b| b.exit_ms) - median(direct, &|b| b.exit_ms),
        front_mib(&|p| p.rss_beyond_guest_kib),
        front_mib(&|p| p.peak_beyond_guest_kib),
        front_mib(&|p| p.anon_kib)
    );
}

/// The summary of `f` over `xs`, leaving out what it has not (NaN).
fn summary<T>(xs: &[T], f: &dyn Fn(&T) -> f64) -> Option<Summary> {
    summarize(&xs.iter().map(f).filter(|v| !v.is_nan()).collect::<Vec<_>>())
}

fn median<T>(xs: &[T], f: &dyn Fn(&T) -> f64) -> f64 {
    summary(xs, f).map_or(f64::NAN, |s| s.median)
}

/// The built-in guest's own measurements of its mechanisms (`cost`
/// workload, each a median of batches) under each VMM.
fn print_costs(subjects: &[Subject]) -> anyhow::Result<()> {
    println!();
    println!("Inside the guest (`bulkhead.run=cost`, medians of 15 batches, ns per operation):");
    println!();
    println!(
        "| VMM | ud2 system call | port-I/O exit to the VMM | MMIO exit to the VMM (from ring 3) |"
    );
    println!("|---|---|---|---|");
    // Through the API the core is the same: its costs are the plain subject's.
    for (s, make) in subjects.iter().filter_map(|s| match &s.how {
        How::Command(make) => Some((s, make)),
        How::Api(_) => None,
    }) {
        let out = make("bulkhead.run=cost").stderr(Stdio::null()).stdin(Stdio::null()).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("BH result workload=cost")).unwrap_or("");
        let field = |k: &str| {
            line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or("-").to_string()
        };
        println!(
            "| {} | {} | {} | {} |",
            s.name,
            field("syscall_ns="),
            field("pio_exit_ns="),
            field("mmio_exit_ns=")
        );
    }
    Ok(())
}

fn fmt(s: Option<Summary>) -> String {
    match s {
        Some(s) if s.median >= 100.0 => format!("{:.0} ({:.0})", s.median, s.p99),
        Some(s) => format!("{:.2} ({:.2})", s.median, s.p99),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's RAM is told from a malloc arena and the binary by its size.
    #[test]
    fn the_guest_ram_is_the_large_mapping() {
        let smaps = "\
55d0c0000000-55d0c0200000 r-xp 00000000 fd:01 123 /usr/bin/vmm
Rss:                2048 kB
Anonymous:             0 kB
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
Rss:                 512 kB
Anonymous:           512 kB
7f1000000000-7f1010000000 rw-p 00000000 00:00 0
Rss:                1536 kB
Anonymous:          1536 kB
VmFlags: rd wr mr mw me ac
";
        assert_eq!(guest_resident(smaps, 256 << 20), (1536.0, 1536.0));
        let rows = breakdown(smaps, "/usr/bin/vmm", 256 << 20);
        assert_eq!(
            rows,
            [
                ("the VMM binary's code (`r-xp`)", 2048.0, 0.0),
                ("other anonymous (thread stacks, allocations by mmap)", 512.0, 512.0),
                (GUEST_RAM, 1536.0, 1536.0)
            ]
        );
        // A guest of 64 MiB is not told from an arena: nothing is taken off.
        assert_eq!(guest_resident(smaps, 64 << 20).0, 1536.0);
    }
}
