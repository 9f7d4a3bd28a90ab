//! `bulkhead bench`: measurements taken side by side in one run, medians
//! over several runs, as tables ready for `docs/BENCHMARKS.md`.

mod boot;
mod boot_api;
mod disk;
mod docs;
mod fs;
mod host;
mod interference;
mod io;
mod linux;
mod outside;
mod peer;
mod recovery;
mod snapshot;
mod stats;
mod svg;
mod vsock;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Boot time and memory: Bulkhead, Bulkhead through Firecracker's API (`bulkhead
    /// firecracker`) and QEMU microvm, same built-in guest.
    Boot {
        /// Boots per VMM (each also gets one memory run).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 256)]
        memory: u64,
        /// Leave QEMU out.
        #[arg(long)]
        no_qemu: bool,
        /// Leave out the boot through Firecracker's API.
        #[arg(long)]
        no_api: bool,
        /// Also boot the guest under this VMM binary, Firecracker or Cloud Hypervisor (told
        /// apart by its `--version`); repeat for both, or list them, colon-separated, in
        /// `BULKHEAD_BENCH_PEERS`.
        #[arg(long, value_name = "PATH", env = "BULKHEAD_BENCH_PEERS", value_delimiter = ':')]
        peer: Vec<std::path::PathBuf>,
    },
    /// Linux to `Run /init`: the test kernel (`bulkhead image kernel`) through Bulkhead's core
    /// and through QEMU 7.2 microvm, same kernel and root image.
    LinuxInit {
        /// Boots per VMM (each takes a minute or more on a KVM-PVM host).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Leave QEMU out.
        #[arg(long)]
        no_qemu: bool,
    },
    /// Block I/O: microkernel vs monolithic vs QEMU microvm (and, with --outside, Bulkhead with
    /// qemu-storage-daemon as the backend), same image.
    Blk(IoArgs),
    /// Disk formats: raw, qcow2 and the four VMDK layouts, Bulkhead vs QEMU microvm.
    Disk(disk::DiskArgs),
    /// Network: microkernel vs monolithic vs QEMU microvm, over a tap in a private namespace.
    Net(IoArgs),
    /// vsock through rust-vmm's vhost-device-vsock: as Bulkhead's compartment, unsandboxed
    /// beside Bulkhead's core, and beside QEMU microvm (round trips and a stream).
    Vsock(IoArgs),
    /// virtio-fs through the Rust virtiofsd: as Bulkhead's compartment, unsandboxed beside
    /// Bulkhead's core, and beside QEMU microvm (4 KiB sequential reads and writes).
    Fs(IoArgs),
    /// Temporal isolation: a latency probe alone, beside a noisy neighbour without limits, and with limits.
    Interference {
        /// Rounds (each runs every case once).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per probe run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Re-measures the tables of docs/BENCHMARKS.md in one sitting: runs each benchmark named
    /// by a `<!-- bench: ARGS -->` marker, in order, and puts what it printed between the
    /// marker and the next `<!-- end bench -->`.
    UpdateDocs {
        /// The document.
        #[arg(default_value = "docs/BENCHMARKS.md")]
        file: std::path::PathBuf,
        /// Only the benchmarks whose arguments contain this (`boot`, `recovery --kills`).
        #[arg(long)]
        only: Option<String>,
        /// List what would run, and stop.
        #[arg(long)]
        list: bool,
    },
    /// Recovery from killed compartments while the guest does I/O (blk and net).
    Recovery {
        /// Kills per device.
        #[arg(long, default_value_t = 100)]
        kills: usize,
        /// Milliseconds between a recovery and the next kill (below 200, the
        /// restart policy's back-off after 5 restarts a second takes over).
        #[arg(long, default_value_t = 250)]
        interval_ms: u64,
        /// Run the compartments without cgroups of their own (`--device-cpu-quota none
        /// --device-memory-limit none`): moving a process into a v1 cgroup waits for an RCU
        /// grace period, part of every restart with the default limits.
        #[arg(long)]
        no_device_cgroups: bool,
        /// Keep a standby compartment per device (`bulkhead run --standby on`): each kill
        /// waits for the next standby to be ready.
        #[arg(long)]
        standby: bool,
    },
    /// Pause, snapshot and restore (`ctl VM snapshot`, `run --restore`) of a guest doing block
    /// I/O, both modes.
    Snapshot {
        /// Runs per mode.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 256)]
        memory: u64,
    },
}

#[derive(clap::Args)]
pub struct IoArgs {
    /// Rounds (each subject runs each workload once per round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per workload run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Leave QEMU out.
    #[arg(long)]
    no_qemu: bool,
    /// `bench blk` only: also Bulkhead's core with qemu-storage-daemon as the device's
    /// backend (`--vhost-user blk`), an outside backend beside Bulkhead's own compartment.
    #[arg(long)]
    outside: bool,
    /// `bench blk`, `net` and `disk`: pin Bulkhead's threads the same way in both modes — the
    /// vCPU on host CPU VCPU (`bulkhead run --pin 0=VCPU`), the core and the device's backend
    /// (compartment or thread) on host CPU OTHER, by the affinity the VMM starts with. Bare
    /// `--pin` is `--pin 1,0`. QEMU and qemu-storage-daemon are not pinned.
    #[arg(long, value_name = "VCPU,OTHER", num_args = 0..=1, default_missing_value = "1,0",
          value_parser = io::Pin::parse)]
    pin: Option<io::Pin>,
}

impl IoArgs {
    fn options(&self) -> io::Options {
        io::Options {
            rounds: self.rounds.max(1),
            seconds: self.seconds,
            with_qemu: !self.no_qemu,
            with_monolithic: true,
            with_outside: self.outside,
            retries: 0,
            pin: self.pin,
        }
    }
}

const LATENCY_AND_RATE: &[&str] = &["iops", "p50_us", "p99_us"];

fn blk(args: &IoArgs) -> anyhow::Result<i32> {
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let image = io::filled_image(&dir, 256 << 20)?;
    let w = |label, mode: &str, extra: &str, metrics| io::Workload {
        label,
        cmdline: format!("bulkhead.run=blk-bench bulkhead.mode={mode} {extra}"),
        metrics,
    };
    let workloads = [
        w("4 KiB random read, qd 1", "randread", "bulkhead.bs=4096", LATENCY_AND_RATE),
        w(
            "4 KiB random write + flush, qd 1",
            "randwrite",
            "bulkhead.bs=4096 bulkhead.flush=1",
            LATENCY_AND_RATE,
        ),
        w(
            "128 KiB sequential read, qd 4",
            "seqread",
            "bulkhead.bs=131072 bulkhead.qd=4",
            &["mib_s"],
        ),
        w(
            "128 KiB sequential write, qd 4",
            "seqwrite",
            "bulkhead.bs=131072 bulkhead.qd=4",
            &["mib_s"],
        ),
    ];
    let result = io::run(
        "bench blk (256 MiB raw image)",
        io::Attach::Disk { path: image, format: "raw" },
        &workloads,
        &args.options(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| 0)
}

fn net(args: &IoArgs) -> anyhow::Result<i32> {
    if args.outside {
        anyhow::bail!("--outside is for bench blk (qemu-storage-daemon serves disks)");
    }
    let ns = io::BenchNetns::new()?;
    let ping = "bulkhead.ip=10.0.2.15/24 bulkhead.peer=10.0.2.1";
    let workloads = [
        io::Workload {
            label: "ICMP echo ping-pong with the host",
            cmdline: format!("bulkhead.run=net-bench bulkhead.mode=pingpong {ping}"),
            metrics: &["pps", "p50_us", "p99_us"],
        },
        io::Workload {
            label: "UDP transmit, 1 KiB payload",
            cmdline: format!("bulkhead.run=net-bench bulkhead.mode=tx bulkhead.size=1024 {ping}"),
            metrics: &["pps", "mib_s"],
        },
    ];
    io::run(
        "bench net (tap in a private namespace)",
        io::Attach::Tap(ns.0.clone()),
        &workloads,
        &args.options(),
    )?;
    Ok(0)
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<i32> {
    if let BenchCommand::UpdateDocs { file, only, list } = cmd {
        // Each benchmark it runs prints its own host line.
        return docs::run(&docs::Options { file, only, list });
    }
    println!("{}\n", host::line());
    match cmd {
        BenchCommand::UpdateDocs { .. } => unreachable!("handled above"),
        BenchCommand::Boot { runs, memory, no_qemu, no_api, peer } => boot::run(&boot::Options {
            runs: runs.max(1),
            memory_mib: memory,
            with_qemu: !no_qemu,
            with_api: !no_api,
            peers: peer,
        }),
        BenchCommand::LinuxInit { runs, no_qemu } => {
            linux::run(&linux::Options { runs: runs.max(1), with_qemu: !no_qemu })
        }
        BenchCommand::Blk(args) => blk(&args),
        BenchCommand::Disk(args) => disk::run(&args),
        BenchCommand::Net(args) => net(&args),
        BenchCommand::Vsock(args) | BenchCommand::Fs(args) if args.pin.is_some() => {
            anyhow::bail!("--pin is for bench blk, net and disk (Bulkhead's own backends)")
        }
        BenchCommand::Vsock(args) => vsock::run(&args),
        BenchCommand::Fs(args) => fs::run(&args),
        BenchCommand::Interference { rounds, seconds } => {
            interference::run(&interference::Options { rounds: rounds.max(1), seconds })
        }
        BenchCommand::Snapshot { runs, memory } => {
            snapshot::run(&snapshot::Options { runs: runs.max(1), memory_mib: memory })
        }
        BenchCommand::Recovery { kills, interval_ms, no_device_cgroups, standby } => {
            recovery::run(&recovery::Options {
                kills: kills.max(1),
                interval_ms,
                no_device_cgroups,
                standby,
            })
        }
    }
}
