//! `bulkhead bench blk` and `bulkhead bench net`: the built-in guest's I/O
//! workloads under Bulkhead in microkernel mode (compartments), in
//! monolithic mode (threads), and under QEMU microvm with its own
//! in-process virtio devices on the same image or tap — runs interleaved,
//! medians over rounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::peer;
use super::stats::summarize;

/// How a subject attaches the device under test.
#[derive(Clone)]
pub enum Attach {
    Disk(PathBuf),
    /// A tap named `tap0` inside network namespace `.0`.
    Tap(String),
}

struct Subject {
    name: &'static str,
    make: Box<dyn Fn(&str) -> Command>,
}

fn subjects(attach: &Attach, guest: &Path, with_qemu: bool) -> anyhow::Result<Vec<Subject>> {
    let exe = std::env::current_exe().context("cannot find the bulkhead binary")?;
    let mut out = Vec::new();
    for (name, mode) in
        [("Bulkhead microkernel", "microkernel"), ("Bulkhead monolithic", "monolithic")]
    {
        let (exe, attach) = (exe.clone(), attach.clone());
        out.push(Subject {
            name,
            make: Box::new(move |cmdline| {
                let mut c = in_netns(&attach, &exe);
                c.args(["run", "--mode", mode, "--memory", "256M"]);
                match &attach {
                    Attach::Disk(p) => c.arg("--disk").arg(format!("{},format=raw", p.display())),
                    Attach::Tap(_) => c.args(["--net", "tap=tap0"]),
                };
                c.args(["--cmdline", cmdline]);
                c
            }),
        });
    }
    if with_qemu {
        let qemu = peer::find_qemu().ok_or_else(|| {
            anyhow::anyhow!("QEMU was not found: run scripts/install-qemu.sh, set BULKHEAD_QEMU, or pass --no-qemu")
        })?;
        let (guest, attach) = (guest.to_path_buf(), attach.clone());
        out.push(Subject {
            name: "QEMU microvm",
            make: Box::new(move |cmdline| {
                let mut c = in_netns(&attach, &qemu);
                let base = peer::microvm(&qemu, &guest, 1, 256, cmdline);
                c.args(base.get_args());
                c.args(["-global", "virtio-mmio.force-legacy=false"]);
                match &attach {
                    Attach::Disk(p) => c
                        .arg("-drive")
                        .arg(format!("id=d0,file={},format=raw,if=none", p.display()))
                        .args(["-device", "virtio-blk-device,drive=d0"]),
                    Attach::Tap(_) => c
                        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
                        .args(["-device", "virtio-net-device,netdev=n0"]),
                };
                c
            }),
        });
    }
    Ok(out)
}

/// `program` run inside the tap's namespace (for net), or as is.
fn in_netns(attach: &Attach, program: &Path) -> Command {
    match attach {
        Attach::Tap(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        Attach::Disk(_) => Command::new(program),
    }
}

/// Runs one guest and returns the fields of its `BH result` line.
fn run_once(s: &Subject, cmdline: &str) -> anyhow::Result<HashMap<String, String>> {
    let out = (s.make)(cmdline).stdin(Stdio::null()).stderr(Stdio::piped()).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("BH result ")).with_context(|| {
        format!(
            "{}: no result from the guest ({cmdline}):\n{stdout}\n{}",
            s.name,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// One workload, its figures of interest and a label.
pub struct Workload {
    pub label: &'static str,
    pub cmdline: String,
    pub metrics: &'static [&'static str],
}

pub struct Options {
    pub rounds: usize,
    pub seconds: f64,
    pub with_qemu: bool,
}

/// Runs every workload on every subject for `rounds` rounds, interleaved,
/// and prints a table of medians with the ratios.
pub fn run(
    title: &str,
    attach: Attach,
    workloads: &[Workload],
    opts: &Options,
) -> anyhow::Result<()> {
    let guest =
        std::env::temp_dir().join(format!("bulkhead-bench-guest-{}.elf", std::process::id()));
    std::fs::write(&guest, bulkhead_guest_elf::GUEST_ELF)?;
    let subjects = subjects(&attach, &guest, opts.with_qemu)?;
    // samples[workload][subject][metric] -> values
    let mut samples: Vec<Vec<HashMap<&str, Vec<f64>>>> =
        workloads.iter().map(|_| subjects.iter().map(|_| HashMap::new()).collect()).collect();
    for round in 0..opts.rounds {
        for (w, workload) in workloads.iter().enumerate() {
            let cmdline = format!("{} bulkhead.seconds={}", workload.cmdline, opts.seconds);
            for (i, s) in subjects.iter().enumerate() {
                let fields = run_once(s, &cmdline).with_context(|| format!("round {round}"))?;
                for m in workload.metrics {
                    let v: f64 =
                        fields.get(*m).and_then(|v| v.parse().ok()).with_context(|| {
                            format!("{}: no {m} in the result of {}", s.name, workload.label)
                        })?;
                    samples[w][i].entry(*m).or_default().push(v);
                }
            }
        }
    }
    let _ = std::fs::remove_file(&guest);
    print_table(title, &subjects, workloads, &samples, opts);
    Ok(())
}

fn print_table(
    title: &str,
    subjects: &[Subject],
    workloads: &[Workload],
    samples: &[Vec<HashMap<&str, Vec<f64>>>],
    opts: &Options,
) {
    println!(
        "{title}: medians (p99 across rounds in parentheses) of {} rounds of {} s, interleaved.",
        opts.rounds, opts.seconds
    );
    println!();
    let names: Vec<&str> = subjects.iter().map(|s| s.name).collect();
    let mut header =
        format!("| workload | figure | {} | microkernel/monolithic", names.join(" | "));
    if subjects.len() == 3 {
        header.push_str(" | microkernel/QEMU");
    }
    println!("{header} |");
    println!("|{}", "---|".repeat(3 + subjects.len() + usize::from(subjects.len() == 3)));
    for (w, workload) in workloads.iter().enumerate() {
        for m in workload.metrics {
            let medians: Vec<f64> = (0..subjects.len())
                .map(|i| summarize(&samples[w][i][m]).map_or(f64::NAN, |s| s.median))
                .collect();
            let cells: Vec<String> = (0..subjects.len())
                .map(|i| {
                    let s = summarize(&samples[w][i][m]).expect("a sample per round");
                    format!("{} ({})", num(s.median), num(s.p99))
                })
                .collect();
            let mut row = format!(
                "| {} | {} | {} | {:.3}",
                workload.label,
                m,
                cells.join(" | "),
                medians[0] / medians[1]
            );
            if subjects.len() == 3 {
                row.push_str(&format!(" | {:.3}", medians[0] / medians[2]));
            }
            println!("{row} |");
        }
    }
}

fn num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A raw image of `size` bytes filled with data, so that reads are of data.
pub fn filled_image(dir: &Path, size: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join("bench.raw");
    let chunk: Vec<u8> =
        (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut f = std::fs::File::create(&path)?;
    for _ in 0..size >> 20 {
        std::io::Write::write_all(&mut f, &chunk)?;
    }
    f.sync_all()?;
    Ok(path)
}

/// A network namespace with `tap0` at 10.0.2.1/24, deleted when dropped.
pub struct BenchNetns(pub String);

impl BenchNetns {
    pub fn new() -> anyhow::Result<Self> {
        let name = format!("bh-bench-{}", std::process::id());
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let st = Command::new("ip").args(args).status().context("cannot run ip (iproute2)")?;
            if !st.success() {
                bail!(
                    "`ip {}` failed (the net benchmark needs root and /dev/net/tun)",
                    args.join(" ")
                );
            }
            Ok(())
        };
        ip(&["netns", "add", &name])?;
        let ns = BenchNetns(name);
        let n = ns.0.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "tuntap", "add", "dev", "tap0", "mode", "tap"])?;
        ip(&["-n", n, "addr", "add", "10.0.2.1/24", "dev", "tap0"])?;
        ip(&["-n", n, "link", "set", "tap0", "up"])?;
        Ok(ns)
    }
}

impl Drop for BenchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
