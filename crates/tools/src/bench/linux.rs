//! `bulkhead bench linux-init`: the test kernel (`bulkhead image kernel`, Linux 6.1) from the
//! VMM's start to the kernel's `Run /init`, through Bulkhead's core (microkernel mode: the
//! root disk and the rng in compartments) and through QEMU 7.2 microvm (ACPI, its own
//! virtio-mmio devices), the same kernel, command line and root image, interleaved.
//!
//! On a KVM-PVM host the kernel's ring 0 runs in KVM's instruction emulator, so a boot takes a
//! minute and this measures the emulator as much as the VMM; on a host with VT-x/AMD-V it
//! measures the VMMs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::peer;
use super::stats::summarize;

pub struct Options {
    pub runs: usize,
    pub with_qemu: bool,
}

/// How long one boot may take before the run is given up.
const LIMIT: Duration = Duration::from_secs(600);

const MEMORY_MIB: u64 = 256;

/// What one boot took.
struct Boot {
    /// From the VMM's start to the kernel's first console line.
    first_line: Duration,
    /// From the VMM's start to `Run /init` on the console.
    init: Duration,
    /// The kernel's own clock (printk time) at `Run /init`.
    kernel_clock: f64,
}

pub fn run(opts: &Options) -> anyhow::Result<i32> {
    let kernel = bulkhead_linux_guest::kernel::build(&Default::default())
        .context("cannot build the test kernel (`bulkhead image kernel`)")?;
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-linux-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(opts, &kernel.vmlinux, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(opts: &Options, vmlinux: &Path, dir: &Path) -> anyhow::Result<i32> {
    let image = root_image(dir)?;
    let exe = std::env::current_exe().context("cannot find the bulkhead binary")?;
    let qemu = match (opts.with_qemu, peer::find_qemu()) {
        (false, _) => None,
        (true, Some(qemu)) => Some(qemu),
        (true, None) => bail!(
            "QEMU was not found: run scripts/install-qemu.sh, set BULKHEAD_QEMU, or pass --no-qemu"
        ),
    };
    let cmdline = format!(
        "{} root=/dev/vda rw rootfstype=ext4 init=/init",
        bulkhead_linux_guest::kernel::CMDLINE
    );
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let copy = dir.join("root-copy.raw");
    let bulkhead = |disk: &Path| {
        let mut c = Command::new(&exe);
        c.args(["run", "--memory", &format!("{MEMORY_MIB}M"), "--rng", "--cmdline", &cmdline]);
        if pvm {
            c.arg("--force");
        }
        c.arg("--kernel").arg(vmlinux).arg("--disk").arg(disk);
        c
    };
    let qemu_cmd = |qemu: &Path, disk: &Path| {
        let mut c = Command::new(qemu);
        c.args(["-M", "microvm,acpi=on", "-accel", "kvm", "-cpu", "host,-arch-capabilities"])
            .args(["-m", &format!("{MEMORY_MIB}M"), "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"])
            .args(["-no-reboot", "-kernel"])
            .arg(vmlinux)
            .args(["-append", &cmdline, "-drive"])
            .arg(format!("id=root,file={},format=raw,if=none", disk.display()))
            .args(["-device", "virtio-blk-device,drive=root", "-device", "virtio-rng-device"]);
        c
    };
    let mut names = vec!["Bulkhead (microkernel)"];
    if qemu.is_some() {
        names.push("QEMU 7.2 microvm");
    }
    let mut boots: Vec<Vec<Boot>> = names.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.runs {
        for (i, name) in names.iter().enumerate() {
            // A fresh copy of the clean root each boot: nothing to replay, the same work.
            std::fs::copy(&image, &copy)?;
            let cmd = match (i, &qemu) {
                (0, _) => bulkhead(&copy),
                (_, Some(qemu)) => qemu_cmd(qemu, &copy),
                (_, None) => unreachable!("QEMU is only a subject when found"),
            };
            let boot = boot_once(cmd).with_context(|| format!("{name}, boot {}", round + 1))?;
            eprintln!(
                "  {name}, boot {}: Run /init after {:.1} s (kernel clock {:.1} s)",
                round + 1,
                boot.init.as_secs_f64(),
                boot.kernel_clock
            );
            boots[i].push(boot);
        }
    }
    print_table(&names, &boots, pvm);
    Ok(0)
}

/// A 64 MiB ext4 root with `/dev` and an empty `/init`, made by `mkfs.ext4 -d`.
fn root_image(dir: &Path) -> anyhow::Result<PathBuf> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("dev"))?;
    std::fs::write(tree.join("init"), b"")?;
    let image = dir.join("root.raw");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("64M")
        .output()
        .context("cannot run mkfs.ext4 (Debian's e2fsprogs)")?;
    if !out.status.success() {
        bail!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(image)
}

/// Boots once, until `Run /init`; the VMM is then killed.
fn boot_once(mut cmd: Command) -> anyhow::Result<Boot> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((line, start.elapsed())).is_err() {
                break;
            }
        }
    });
    let mut first_line = None;
    let result = loop {
        match lines.recv_timeout(LIMIT.saturating_sub(start.elapsed())) {
            Ok((line, at)) => {
                let first = *first_line.get_or_insert(at);
                if line.contains("Run /init") {
                    let kernel_clock = printk_time(&line).unwrap_or(f64::NAN);
                    break Ok(Boot { first_line: first, init: at, kernel_clock });
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(anyhow::anyhow!("no `Run /init` within {} s", LIMIT.as_secs()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(anyhow::anyhow!("the VMM ended before the kernel reached `Run /init`"))
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The seconds of a `[   12.345678] …` kernel log line.
fn printk_time(line: &str) -> Option<f64> {
    line.strip_prefix('[')?.split_once(']')?.0.trim().parse().ok()
}

fn print_table(names: &[&str], boots: &[Vec<Boot>], pvm: bool) {
    let runs = boots.first().map_or(0, Vec::len);
    println!(
        "## bench linux-init: Linux 6.1 test kernel to `Run /init`, 1 vCPU, {MEMORY_MIB} MiB, \
         ext4 root on virtio-blk + virtio-rng (virtio-mmio through ACPI); median of {runs} \
         (min–max), interleaved\n"
    );
    if pvm {
        println!(
            "This host's KVM is KVM-PVM: the kernel's ring 0 runs in KVM's instruction \
             emulator, for both VMMs; the times measure the emulator as much as the VMM.\n"
        );
    }
    println!("| VMM | to the first kernel line (s) | to `Run /init` (s) | kernel clock at `Run /init` (s) |");
    println!("|---|---|---|---|");
    let secs = |v: &[Boot], f: fn(&Boot) -> f64| summarize(&v.iter().map(f).collect::<Vec<_>>());
    let cell = |s: Option<super::stats::Summary>| match s {
        Some(s) => format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max),
        None => "–".into(),
    };
    for (name, v) in names.iter().zip(boots) {
        println!(
            "| {name} | {} | {} | {} |",
            cell(secs(v, |b| b.first_line.as_secs_f64())),
            cell(secs(v, |b| b.init.as_secs_f64())),
            cell(secs(v, |b| b.kernel_clock)),
        );
    }
    if let [ours, theirs] = boots {
        let median = |v: &[Boot]| secs(v, |b| b.init.as_secs_f64()).map(|s| s.median);
        if let (Some(a), Some(b)) = (median(ours), median(theirs)) {
            println!("\nBulkhead / QEMU, to `Run /init` (medians): {:.3}", a / b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_clock_is_read_from_a_log_line() {
        assert_eq!(printk_time("[   60.361535] Run /init as init process"), Some(60.361535));
        assert_eq!(printk_time("Run /init as init process"), None);
    }
}
