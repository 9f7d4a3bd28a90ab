//! `bulkhead bench blk`, `bench disk` and `bench net`: the built-in guest's
//! I/O workloads under Bulkhead in microkernel mode (compartments), in
//! monolithic mode (threads), and under QEMU microvm with its own
//! in-process virtio devices on the same images or tap — runs interleaved,
//! medians over rounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use super::peer;
use super::stats::{summarize, Summary};

/// How a subject attaches the device under test.
#[derive(Clone)]
pub enum Attach {
    /// A disk image and its format as both VMMs name it (`raw`, `qcow2`, `vmdk`).
    Disk { path: PathBuf, format: &'static str },
    /// A tap named `tap0` inside network namespace `.0`.
    Tap(String),
}

impl Attach {
    fn describe(&self) -> String {
        match self {
            Attach::Disk { path, format } => format!("{format} image {}", path.display()),
            Attach::Tap(ns) => format!("tap0 in namespace {ns}"),
        }
    }

    /// Reads every file of a disk image, so that the runs that follow find
    /// it in the page cache: hosts that reclaim idle page cache (e.g. DAMON's
    /// pageout scheme) would otherwise make the first run after a pause
    /// read from the device.
    fn warm(&self) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        for mut f in self.files()? {
            while std::io::Read::read(&mut f, &mut buf)? > 0 {}
        }
        Ok(())
    }

    /// Writes back what the runs wrote to a disk image, so that the host's
    /// writeback of it does not land in the runs of the next image.
    fn settle(&self) -> anyhow::Result<()> {
        for f in self.files()? {
            f.sync_all()?;
        }
        Ok(())
    }

    /// Every file of a disk image (descriptor and extents), opened for reading.
    fn files(&self) -> anyhow::Result<Vec<std::fs::File>> {
        let Attach::Disk { path, format } = self else { return Ok(Vec::new()) };
        let opts = bulkhead_disk::OpenOptions {
            read_only: true,
            format: Some(format.parse()?),
            ..Default::default()
        };
        let files = bulkhead_disk::tools::info(path, &opts)?.files;
        files
            .iter()
            .map(|p| std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display())))
            .collect()
    }
}

/// Builds a VMM's command line for an attachment and a guest command line.
type MakeCommand = Box<dyn Fn(&Attach, &str) -> Command>;

/// One VMM under test.
struct Subject {
    name: &'static str,
    make: MakeCommand,
}

fn subjects(guest: &Path, opts: &Options) -> anyhow::Result<Vec<Subject>> {
    let exe = std::env::current_exe().context("cannot find the bulkhead binary")?;
    let mut out = Vec::new();
    let modes: &[_] = if opts.with_monolithic {
        &[("Bulkhead microkernel", "microkernel"), ("Bulkhead monolithic", "monolithic")]
    } else {
        &[("Bulkhead microkernel", "microkernel")]
    };
    for &(name, mode) in modes {
        let exe = exe.clone();
        out.push(Subject {
            name,
            make: Box::new(move |attach, cmdline| {
                let mut c = in_netns(attach, &exe);
                c.args(["run", "--mode", mode, "--memory", "256M"]);
                match attach {
                    Attach::Disk { path, format } => {
                        c.arg("--disk").arg(format!("{},format={format}", path.display()))
                    }
                    Attach::Tap(_) => c.args(["--net", "tap=tap0"]),
                };
                c.args(["--cmdline", cmdline]);
                c
            }),
        });
    }
    if opts.with_qemu {
        let qemu = peer::find_qemu().ok_or_else(|| {
            anyhow::anyhow!("QEMU was not found: run scripts/install-qemu.sh, set BULKHEAD_QEMU, or pass --no-qemu")
        })?;
        let guest = guest.to_path_buf();
        out.push(Subject {
            name: "QEMU microvm",
            make: Box::new(move |attach, cmdline| {
                let mut c = in_netns(attach, &qemu);
                let base = peer::microvm(&qemu, &guest, 1, 256, cmdline);
                c.args(base.get_args());
                c.args(["-global", "virtio-mmio.force-legacy=false"]);
                match attach {
                    Attach::Disk { path, format } => c
                        .arg("-drive")
                        .arg(format!("id=d0,file={},format={format},if=none", path.display()))
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
        Attach::Disk { .. } => Command::new(program),
    }
}

/// Runs one guest and returns the fields of its `BH result` line.
fn run_once(
    s: &Subject,
    attach: &Attach,
    cmdline: &str,
) -> anyhow::Result<HashMap<String, String>> {
    let out = (s.make)(attach, cmdline).stdin(Stdio::null()).stderr(Stdio::piped()).output()?;
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
    /// Bulkhead in monolithic mode too (microkernel mode always runs).
    pub with_monolithic: bool,
}

/// Values of each figure by name, one per round.
pub type Figures = HashMap<&'static str, Vec<f64>>;

/// What [`measure`] collected: every sample of every figure.
pub struct Samples {
    /// Subject names, in column order.
    pub subjects: Vec<&'static str>,
    /// `values[attach][workload][subject][metric]`: one value per round.
    values: Vec<Vec<Vec<Figures>>>,
}

impl Samples {
    /// Samples as [`measure`] collects them: `values[attach][workload][subject][metric]`.
    pub fn new(subjects: Vec<&'static str>, values: Vec<Vec<Vec<Figures>>>) -> Samples {
        Samples { subjects, values }
    }

    /// Median and p99 of one figure across rounds.
    pub fn summary(&self, attach: usize, workload: usize, subject: usize, metric: &str) -> Summary {
        let values = self.values[attach][workload][subject].get(metric);
        summarize(values.map_or(&[][..], Vec::as_slice)).unwrap_or(Summary {
            n: 0,
            median: f64::NAN,
            p99: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        })
    }
}

/// Runs every workload on every attachment and subject for `rounds` rounds,
/// interleaved (a round runs everything once), and returns the samples.
pub fn measure(
    attaches: &[Attach],
    workloads: &[Workload],
    opts: &Options,
) -> anyhow::Result<Samples> {
    let guest =
        std::env::temp_dir().join(format!("bulkhead-bench-guest-{}.elf", std::process::id()));
    std::fs::write(&guest, bulkhead_guest_elf::GUEST_ELF)?;
    let result = measure_with(&guest, attaches, workloads, opts);
    let _ = std::fs::remove_file(&guest);
    result
}

fn measure_with(
    guest: &Path,
    attaches: &[Attach],
    workloads: &[Workload],
    opts: &Options,
) -> anyhow::Result<Samples> {
    let subjects = subjects(guest, opts)?;
    let mut values: Vec<Vec<Vec<Figures>>> = attaches
        .iter()
        .map(|_| {
            workloads.iter().map(|_| subjects.iter().map(|_| HashMap::new()).collect()).collect()
        })
        .collect();
    for round in 0..opts.rounds {
        for (a, attach) in attaches.iter().enumerate() {
            attach.warm()?;
            for (w, workload) in workloads.iter().enumerate() {
                let cmdline = format!("{} bulkhead.seconds={}", workload.cmdline, opts.seconds);
                for (i, s) in subjects.iter().enumerate() {
                    let fields = run_once(s, attach, &cmdline)
                        .with_context(|| format!("round {round}, {}", attach.describe()))?;
                    for m in workload.metrics {
                        let v: f64 =
                            fields.get(*m).and_then(|v| v.parse().ok()).with_context(|| {
                                format!("{}: no {m} in the result of {}", s.name, workload.label)
                            })?;
                        values[a][w][i].entry(*m).or_default().push(v);
                    }
                }
            }
            attach.settle()?;
        }
    }
    Ok(Samples::new(subjects.iter().map(|s| s.name).collect(), values))
}

/// Measures one attachment and prints a table of medians with the ratios
/// between the subjects.
pub fn run(
    title: &str,
    attach: Attach,
    workloads: &[Workload],
    opts: &Options,
) -> anyhow::Result<()> {
    let samples = measure(&[attach], workloads, opts)?;
    print_table(title, &samples, workloads, opts);
    Ok(())
}

fn print_table(title: &str, samples: &Samples, workloads: &[Workload], opts: &Options) {
    println!(
        "{title}: medians (p99 across rounds in parentheses) of {} rounds of {} s, interleaved.",
        opts.rounds, opts.seconds
    );
    println!();
    let n = samples.subjects.len();
    let mut header = format!("| workload | figure | {}", samples.subjects.join(" | "));
    let ratios: &[(usize, &str)] = match (opts.with_monolithic, opts.with_qemu) {
        (true, true) => &[(1, "microkernel/monolithic"), (2, "microkernel/QEMU")],
        (true, false) => &[(1, "microkernel/monolithic")],
        (false, true) => &[(1, "microkernel/QEMU")],
        (false, false) => &[],
    };
    for (_, name) in ratios {
        header.push_str(&format!(" | {name}"));
    }
    println!("{header} |");
    println!("|{}", "---|".repeat(2 + n + ratios.len()));
    for (w, workload) in workloads.iter().enumerate() {
        for m in workload.metrics {
            let s: Vec<Summary> = (0..n).map(|i| samples.summary(0, w, i, m)).collect();
            let cells: Vec<String> = s.iter().map(cell).collect();
            let mut row = format!("| {} | {} | {}", workload.label, m, cells.join(" | "));
            for &(other, _) in ratios {
                row.push_str(&format!(" | {:.3}", s[0].median / s[other].median));
            }
            println!("{row} |");
        }
    }
}

/// A table cell: the median, and the p99 across rounds in parentheses.
pub fn cell(s: &Summary) -> String {
    format!("{} ({})", num(s.median), num(s.p99))
}

pub fn num(v: f64) -> String {
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
