//! `bulkhead bench boot`: time from process start to the built-in guest's
//! ready line and to process exit, and the VMM's memory beyond guest RAM,
//! for Bulkhead and QEMU microvm booting the same guest, runs interleaved.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::peer;
use super::stats::{summarize, Summary};

/// One VMM under test.
pub struct Subject {
    pub name: String,
    make: Box<dyn Fn(&str) -> Command>,
}

/// One boot: milliseconds to the ready line and to exit.
struct Boot {
    ready_ms: f64,
    exit_ms: f64,
}

/// Memory seen while the guest holds after its ready line, in KiB.
struct Memory {
    rss_beyond_guest_kib: f64,
    peak_beyond_guest_kib: f64,
}

pub struct Options {
    pub runs: usize,
    pub memory_mib: u64,
    pub with_qemu: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<i32> {
    let mut subjects = vec![bulkhead_subject(opts.memory_mib)?];
    let guest_file = write_guest()?;
    if opts.with_qemu {
        match peer::find_qemu() {
            Some(qemu) => subjects.push(qemu_subject(qemu, guest_file.clone(), opts.memory_mib)),
            None => bail!("QEMU was not found: run scripts/install-qemu.sh, set BULKHEAD_QEMU, or pass --no-qemu"),
        }
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
            mems[i].push(memory_once(s).with_context(|| format!("{} memory {round}", s.name))?);
        }
    }
    print_table(opts, &subjects, &boots, &mems);
    print_costs(&subjects)?;
    let _ = std::fs::remove_file(&guest_file);
    Ok(0)
}

fn bulkhead_subject(memory_mib: u64) -> anyhow::Result<Subject> {
    let exe = std::env::current_exe().context("cannot find the bulkhead binary")?;
    Ok(Subject {
        name: "Bulkhead".into(),
        make: Box::new(move |cmdline| {
            let mut c = Command::new(&exe);
            c.args(["run", "--memory", &format!("{memory_mib}M"), "--cmdline", cmdline]);
            c
        }),
    })
}

fn qemu_subject(qemu: PathBuf, guest: PathBuf, memory_mib: u64) -> Subject {
    Subject {
        name: "QEMU microvm".into(),
        make: Box::new(move |cmdline| peer::microvm(&qemu, &guest, 1, memory_mib, cmdline)),
    }
}

/// The built-in guest as a file, for QEMU's -kernel.
fn write_guest() -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("bulkhead-guest-{}.elf", std::process::id()));
    std::fs::write(&path, bulkhead_guest_elf::GUEST_ELF)
        .context("cannot write the built-in guest")?;
    Ok(path)
}

/// Starts `cmd` and returns it with a reader on its stdout.
fn spawn(
    mut cmd: Command,
) -> anyhow::Result<(std::process::Child, BufReader<std::process::ChildStdout>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the VMM")?;
    let out = BufReader::new(child.stdout.take().expect("stdout is piped"));
    Ok((child, out))
}

/// Reads lines until the guest's ready line.
fn wait_ready(out: &mut BufReader<std::process::ChildStdout>) -> anyhow::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            bail!("the VMM exited before the guest's ready line");
        }
        if line.contains("BH ready") {
            return Ok(());
        }
    }
}

fn boot_once(s: &Subject) -> anyhow::Result<Boot> {
    let start = Instant::now();
    let (mut child, mut out) = spawn((s.make)("bulkhead.run=boot"))?;
    wait_ready(&mut out)?;
    let ready = start.elapsed();
    std::io::copy(&mut out, &mut std::io::sink())?;
    child.wait()?;
    let exit = start.elapsed();
    Ok(Boot { ready_ms: ms(ready), exit_ms: ms(exit) })
}

fn memory_once(s: &Subject) -> anyhow::Result<Memory> {
    let (mut child, mut out) = spawn((s.make)("bulkhead.run=boot bulkhead.hold_ms=400"))?;
    wait_ready(&mut out)?;
    std::thread::sleep(Duration::from_millis(200));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    std::io::copy(&mut out, &mut std::io::sink())?;
    child.wait()?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let shmem = field("RssShmem:");
    Ok(Memory {
        rss_beyond_guest_kib: field("VmRSS:") - shmem,
        peak_beyond_guest_kib: field("VmHWM:") - shmem,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_table(opts: &Options, subjects: &[Subject], boots: &[Vec<Boot>], mems: &[Vec<Memory>]) {
    println!(
        "Boot of the built-in guest, 1 vCPU, {} MiB; median (p99) of {} runs, interleaved.",
        opts.memory_mib, opts.runs
    );
    println!();
    println!("| VMM | to ready line (ms) | to exit (ms) | RSS beyond guest memory (MiB) | peak RSS beyond guest memory (MiB) |");
    println!("|---|---|---|---|---|");
    for (i, s) in subjects.iter().enumerate() {
        let col =
            |f: &dyn Fn(&Boot) -> f64| fmt(summarize(&boots[i].iter().map(f).collect::<Vec<_>>()));
        let mem = |f: &dyn Fn(&Memory) -> f64| {
            fmt(summarize(&mems[i].iter().map(|m| f(m) / 1024.0).collect::<Vec<_>>()))
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
    if subjects.len() == 2 {
        let med = |i: usize, f: &dyn Fn(&Boot) -> f64| {
            summarize(&boots[i].iter().map(f).collect::<Vec<_>>()).map_or(f64::NAN, |s| s.median)
        };
        println!();
        println!(
            "QEMU/Bulkhead, median time to ready: {:.1}x; to exit: {:.1}x",
            med(1, &|b| b.ready_ms) / med(0, &|b| b.ready_ms),
            med(1, &|b| b.exit_ms) / med(0, &|b| b.exit_ms)
        );
    }
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
    for s in subjects {
        let out =
            (s.make)("bulkhead.run=cost").stderr(Stdio::null()).stdin(Stdio::null()).output()?;
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
