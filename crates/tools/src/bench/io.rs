//! `bulkhead bench blk`, `bench disk` and `bench net`: the built-in guest's
//! I/O workloads under Bulkhead in microkernel mode (compartments), in
//! monolithic mode (threads), under QEMU microvm with its own in-process
//! virtio devices on the same images or tap, and (blk, `--outside`) under
//! Bulkhead's core with qemu-storage-daemon as the disk's backend — runs
//! interleaved, medians over rounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

use super::peer;
use super::stats::{paired_ratio, rounds_for, summarize, Summary, Verdict};

/// How a subject attaches the device under test.
#[derive(Clone)]
pub enum Attach {
    /// A disk image and its format as both VMMs name it (`raw`, `qcow2`, `vmdk`).
    Disk { path: PathBuf, format: &'static str },
    /// A tap named `tap0` inside network namespace `.0`.
    Tap(String),
    /// A host folder the subjects' backends serve or talk through (`bench vsock`, `bench fs`):
    /// nothing to attach on the VMMs' own command lines.
    Folder(PathBuf),
}

impl Attach {
    fn describe(&self) -> String {
        match self {
            Attach::Disk { path, format } => format!("{format} image {}", path.display()),
            Attach::Tap(ns) => format!("tap0 in namespace {ns}"),
            Attach::Folder(dir) => format!("folder {}", dir.display()),
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
pub type MakeCommand = Box<dyn Fn(&Attach, &str) -> Command>;

/// Starts what a subject needs beside its VMM before each run (an outside backend), and
/// returns the process to stop after the run, if any.
pub type Prepare = Box<dyn Fn() -> anyhow::Result<Option<Child>>>;

/// One VMM under test.
pub struct Subject {
    pub name: &'static str,
    pub make: MakeCommand,
    pub prepare: Option<Prepare>,
}

fn subjects(guest: &Path, opts: &Options) -> anyhow::Result<Vec<Subject>> {
    let exe = std::env::current_exe().context("cannot find the bulkhead binary")?;
    let mut out = Vec::new();
    let modes: &[_] = if opts.with_monolithic {
        &[("Bulkhead microkernel", "microkernel"), (MONOLITHIC, "monolithic")]
    } else {
        &[("Bulkhead microkernel", "microkernel")]
    };
    for &(name, mode) in modes {
        let exe = exe.clone();
        let pin = opts.pin;
        out.push(Subject {
            name,
            prepare: None,
            make: Box::new(move |attach, cmdline| {
                let mut c = in_netns(attach, &exe);
                c.args(["run", "--mode", mode, "--memory", "256M"]);
                if let Some(pin) = pin {
                    pin.apply(&mut c);
                }
                match attach {
                    Attach::Disk { path, format } => {
                        c.arg("--disk").arg(format!("{},format={format}", path.display()))
                    }
                    Attach::Tap(_) => c.args(["--net", "tap=tap0"]),
                    Attach::Folder(_) => &mut c,
                };
                c.args(["--cmdline", cmdline]);
                c
            }),
        });
    }
    if opts.with_outside {
        let exe = exe.clone();
        out.push(Subject {
            name: OUTSIDE,
            prepare: None,
            make: Box::new(move |attach, cmdline| {
                let Attach::Disk { path, format } = attach else {
                    let mut c = Command::new("sh");
                    c.args(["-c", "echo 'qemu-storage-daemon serves disks only' >&2; exit 1"]);
                    return c;
                };
                outside_blk(&exe, path, format, cmdline)
            }),
        });
    }
    if opts.with_qemu {
        let qemu = peer::find_qemu().ok_or_else(|| {
            anyhow::anyhow!("QEMU was not found: run scripts/install-qemu.sh, set BULKHEAD_QEMU, or pass --no-qemu")
        })?;
        let guest = guest.to_path_buf();
        out.push(Subject {
            name: QEMU,
            prepare: None,
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
                    Attach::Folder(_) => &mut c,
                };
                c
            }),
        });
    }
    Ok(out)
}

/// The subjects' names the tables' ratios look for.
const MONOLITHIC: &str = "Bulkhead monolithic";
const QEMU: &str = "QEMU microvm";
const OUTSIDE: &str = "Bulkhead + qemu-storage-daemon";
/// The ratio that is the cost of isolation.
const MICRO_MONO: &str = "microkernel/monolithic";

/// Bulkhead's core with qemu-storage-daemon serving `path` over vhost-user-blk: one shell
/// starts the daemon on a socket of its own, waits for it, runs the VM, then stops the daemon.
fn outside_blk(exe: &Path, path: &Path, format: &str, cmdline: &str) -> Command {
    let socket = path.with_extension(format!("{}.sock", std::process::id()));
    let blockdev = match format {
        "raw" => format!("driver=file,node-name=d,filename={}", path.display()),
        other => {
            format!("driver={other},node-name=d,file.driver=file,file.filename={}", path.display())
        }
    };
    let export = format!(
        "type=vhost-user-blk,id=e,node-name=d,writable=on,addr.type=unix,addr.path={}",
        socket.display()
    );
    let script = r#"qsd=$1 exe=$2 blockdev=$3 export=$4 socket=$5 cmdline=$6
rm -f "$socket"
"$qsd" --blockdev "$blockdev" --export "$export" </dev/null >/dev/null &
daemon=$!
tries=0
while [ ! -S "$socket" ]; do
  tries=$((tries + 1))
  if [ $tries -gt 1000 ] || ! kill -0 $daemon 2>/dev/null; then
    echo "qemu-storage-daemon did not start" >&2; exit 1
  fi
  sleep 0.01
done
"$exe" run --memory 256M --vhost-user "blk,socket=$socket" --cmdline "$cmdline"
status=$?
kill $daemon; wait $daemon 2>/dev/null
rm -f "$socket"
exit $status"#;
    let mut c = Command::new("sh");
    c.args(["-c", script, "sh", "qemu-storage-daemon"]);
    c.arg(exe).args([&blockdev, &export]).arg(&socket).arg(cmdline);
    c
}

/// `program` run inside the tap's namespace (for net), or as is.
fn in_netns(attach: &Attach, program: &Path) -> Command {
    match attach {
        Attach::Tap(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        Attach::Disk { .. } | Attach::Folder(_) => Command::new(program),
    }
}

/// Runs one guest and returns the fields of its `BH result` line.
fn run_once(
    s: &Subject,
    attach: &Attach,
    cmdline: &str,
) -> anyhow::Result<HashMap<String, String>> {
    let mut beside = match &s.prepare {
        Some(prepare) => {
            prepare().with_context(|| format!("{}: cannot start its backend", s.name))?
        }
        None => None,
    };
    let out = (s.make)(attach, cmdline).stdin(Stdio::null()).stderr(Stdio::piped()).output();
    if let Some(child) = &mut beside {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = out?;
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

/// [`run_once`], run again up to `retries` times when it fails; every failure retried is
/// said on stderr.
fn run_retried(
    s: &Subject,
    attach: &Attach,
    cmdline: &str,
    retries: usize,
) -> anyhow::Result<HashMap<String, String>> {
    let mut tries = 0;
    loop {
        match run_once(s, attach, cmdline) {
            Err(e) if tries < retries => {
                tries += 1;
                let why = format!("{e:#}");
                let why = why.lines().find(|l| l.contains("status=fail")).unwrap_or(&why);
                eprintln!("{}: run failed, running it again ({tries} of {retries}): {why}", s.name);
            }
            result => return result,
        }
    }
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
    /// Bulkhead's core with qemu-storage-daemon as the disk's backend (disks only).
    pub with_outside: bool,
    /// How many times a failed run is run again before the benchmark gives up.
    pub retries: usize,
    /// Where Bulkhead's subjects run (both modes alike), if pinned.
    pub pin: Option<Pin>,
}

/// Bulkhead's threads on host CPUs, the same in both modes: the vCPU on one CPU (`bulkhead
/// run --pin 0=CPU`), every other thread of the VM — the core and the device's backend,
/// whether a compartment (a child process) or a thread of the core — on another, by the
/// CPU affinity the VMM starts with and its threads and children inherit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    pub vcpu: usize,
    pub rest: usize,
}

impl Pin {
    /// `VCPU,REST`, e.g. `1,0`.
    pub fn parse(s: &str) -> Result<Pin, String> {
        let bad = || format!("'{s}' is not VCPU_CPU,OTHER_CPU (e.g. 1,0)");
        let (v, r) = s.split_once(',').ok_or_else(bad)?;
        let cpu = |x: &str| x.trim().parse::<usize>().map_err(|_| bad());
        let pin = Pin { vcpu: cpu(v)?, rest: cpu(r)? };
        if pin.vcpu == pin.rest {
            return Err(format!("'{s}': the vCPU and the other threads need CPUs of their own"));
        }
        if pin.vcpu.max(pin.rest) >= libc::CPU_SETSIZE as usize {
            return Err(format!("'{s}': a host CPU is out of range"));
        }
        Ok(pin)
    }

    pub fn describe(&self) -> String {
        format!(
            "vCPU on host CPU {}, the core and the device's backend on host CPU {} (both modes)",
            self.vcpu, self.rest
        )
    }

    /// Adds the vCPU's pin to a `bulkhead run` command and starts it on the other CPU.
    fn apply(&self, c: &mut Command) {
        use std::os::unix::process::CommandExt;
        c.args(["--pin", &format!("0={}", self.vcpu)]);
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `rest` is below CPU_SETSIZE (checked by `parse`).
        unsafe { libc::CPU_SET(self.rest, &mut set) };
        let hook = move || {
            // SAFETY: sched_setaffinity is async-signal-safe and reads the live set given.
            let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: the hook makes one system call and touches no lock or allocation.
        unsafe { c.pre_exec(hook) };
    }
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

    /// One figure's values, one per round (in round order).
    pub fn rounds(&self, attach: usize, workload: usize, subject: usize, metric: &str) -> &[f64] {
        self.values[attach][workload][subject].get(metric).map_or(&[][..], Vec::as_slice)
    }

    /// Median and p99 of one figure across rounds.
    pub fn summary(&self, attach: usize, workload: usize, subject: usize, metric: &str) -> Summary {
        summarize(self.rounds(attach, workload, subject, metric)).unwrap_or(Summary {
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
    with_guest(|guest| measure_subjects(&subjects(guest, opts)?, attaches, workloads, opts))
}

/// Runs `f` with the built-in guest written to a file, removed after.
pub fn with_guest<T>(f: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let guest =
        std::env::temp_dir().join(format!("bulkhead-bench-guest-{}.elf", std::process::id()));
    std::fs::write(&guest, bulkhead_guest_elf::GUEST_ELF)?;
    let result = f(&guest);
    let _ = std::fs::remove_file(&guest);
    result
}

/// [`measure`] with subjects of the caller's.
pub fn measure_subjects(
    subjects: &[Subject],
    attaches: &[Attach],
    workloads: &[Workload],
    opts: &Options,
) -> anyhow::Result<Samples> {
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
                // Every other round runs the subjects in reverse order, so that neither of a
                // pair always runs first after a change of workload.
                let mut order: Vec<usize> = (0..subjects.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for (i, s) in order.into_iter().map(|i| (i, &subjects[i])) {
                    let fields = run_retried(s, attach, &cmdline, opts.retries)
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
    let ratios = io_ratios(&samples);
    let paired: Vec<Ratio> =
        ratios.iter().copied().filter(|&(_, _, name)| name == MICRO_MONO).collect();
    print_table_paired(title, &samples, workloads, opts, &ratios, &paired);
    Ok(())
}

/// A ratio column: (numerator subject, denominator subject, label).
pub type Ratio = (usize, usize, &'static str);

/// The ratios of `bench blk` and `bench net`: the first subject is Bulkhead microkernel.
fn io_ratios(samples: &Samples) -> Vec<Ratio> {
    let find = |name: &str| samples.subjects.iter().position(|s| *s == name);
    let mut ratios: Vec<Ratio> = Vec::new();
    if let Some(m) = find(MONOLITHIC) {
        ratios.push((0, m, MICRO_MONO));
    }
    if let Some(q) = find(QEMU) {
        ratios.push((0, q, "microkernel/QEMU"));
    }
    if let Some(o) = find(OUTSIDE) {
        ratios.push((o, 0, "qemu-storage-daemon/own compartment"));
    }
    ratios
}

/// Prints the title and a table of medians with `ratios` of medians, a row per workload and
/// figure.
pub fn print_table(
    title: &str,
    samples: &Samples,
    workloads: &[Workload],
    opts: &Options,
    ratios: &[Ratio],
) {
    print_table_paired(title, samples, workloads, opts, ratios, &[]);
}

/// [`print_table`], and for each of `paired` three more columns: the geometric mean of the
/// per-round ratios with its 95% confidence interval, whether the interval excludes 1
/// (`cost`, `none`, `gain`), and how many rounds' ratios lie beyond 1.5 IQR (kept in the
/// mean). Below the table, the widest interval against issue 16's target (±1%).
pub fn print_table_paired(
    title: &str,
    samples: &Samples,
    workloads: &[Workload],
    opts: &Options,
    ratios: &[Ratio],
    paired: &[Ratio],
) {
    println!(
        "{title}: medians (p99 across rounds in parentheses) of {} rounds of {} s, interleaved.",
        opts.rounds, opts.seconds
    );
    if let Some(pin) = &opts.pin {
        println!("Pinned: {}.", pin.describe());
    }
    for (_, _, name) in paired {
        println!(
            "{name}, paired: the geometric mean of the per-round ratios [95% confidence \
             interval, t on their logarithms]; cost/none/gain: whether the interval excludes 1, \
             and on which side; outliers: rounds beyond 1.5 IQR of the per-round ratios (kept)."
        );
    }
    println!();
    let n = samples.subjects.len();
    let mut header = format!("| workload | figure | {}", samples.subjects.join(" | "));
    for (num, den, name) in ratios {
        header.push_str(&format!(" | {name}"));
        if paired.contains(&(*num, *den, *name)) {
            header.push_str(&format!(" | {name}, paired [95% CI] | cost/none/gain | outliers"));
        }
    }
    println!("{header} |");
    let columns = 2 + n + ratios.len() + 3 * paired.len();
    println!("|{}", "---|".repeat(columns));
    let mut widest: Option<(f64, String)> = None;
    for (w, workload) in workloads.iter().enumerate() {
        for m in workload.metrics {
            let s: Vec<Summary> = (0..n).map(|i| samples.summary(0, w, i, m)).collect();
            let cells: Vec<String> = s.iter().map(cell).collect();
            let mut row = format!("| {} | {} | {}", workload.label, m, cells.join(" | "));
            for ratio in ratios {
                let &(num, den, _) = ratio;
                row.push_str(&format!(" | {:.3}", s[num].median / s[den].median));
                if paired.contains(ratio) {
                    let (cells, half) = paired_cells(samples, w, m, num, den);
                    row.push_str(&cells);
                    if half.is_some_and(|h| widest.as_ref().is_none_or(|(x, _)| h > *x)) {
                        widest = half.map(|h| (h, format!("{}, {m}", workload.label)));
                    }
                }
            }
            println!("{row} |");
        }
    }
    if !paired.is_empty() {
        println!();
        match widest {
            Some((h, _)) if h < 0.01 => println!(
                "Widest 95% interval: ±{:.2}%; issue 16's target, narrower than ±1% on every \
                 figure: met.",
                h * 100.0
            ),
            Some((h, at)) => println!(
                "Widest 95% interval: ±{:.1}% ({at}); issue 16's target, narrower than ±1% on \
                 every figure: missed (at this spread between rounds, about {} rounds would \
                 reach it).",
                h * 100.0,
                rounds_for(h, opts.rounds, 0.01)
            ),
            None => println!("No interval: it needs at least 2 rounds (--rounds)."),
        }
    }
}

/// The paired columns of one figure, and the interval's half-width as a fraction of the
/// ratio (the larger side).
fn paired_cells(
    samples: &Samples,
    w: usize,
    metric: &str,
    num: usize,
    den: usize,
) -> (String, Option<f64>) {
    let p = paired_ratio(samples.rounds(0, w, num, metric), samples.rounds(0, w, den, metric));
    let Some(p) = p else { return (" | - | - | -".into(), None) };
    // Quartiles of fewer than 4 rounds mark nothing: say so rather than print 0.
    let outliers = match p.n {
        0..4 => format!("- ({} rounds)", p.n),
        n => format!("{} of {n}", p.outliers),
    };
    let Some((low, high)) = p.interval else {
        return (format!(" | {:.3} [-] | - | {outliers}", p.ratio), None);
    };
    // Latencies (`_us`) are better lower; rates and throughputs higher.
    let verdict = Verdict::of((low, high), !metric.ends_with("_us"));
    let half = (high / p.ratio - 1.0).max(1.0 - low / p.ratio);
    let cells =
        format!(" | {:.3} [{low:.3}, {high:.3}] | {} | {outliers}", p.ratio, verdict.word());
    (cells, Some(half))
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
