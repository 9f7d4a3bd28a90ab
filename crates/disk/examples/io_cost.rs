//! Host-side cost of `read_at`/`write_at` per format, without a VM: the time
//! the disk crate adds to a guest request, measured alone.
//!
//! ```sh
//! cargo run --release -p bulkhead-disk --example io_cost -- IMAGE FORMAT [SECONDS]
//! ```
//!
//! Prints nanoseconds per call for 4 KiB random reads and writes and 128 KiB
//! sequential reads and writes over the whole image (page cache warm after
//! the first pass): CPU time of the calling thread, user and kernel, which
//! other load on the host disturbs less than wall-clock time does. Writes
//! overwrite the image's content with a pattern.

use bulkhead_disk::{open, DiskImage, OpenOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(format)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: io_cost IMAGE raw|qcow2|vmdk [SECONDS]");
    };
    let seconds: f64 = args.get(3).map_or(Ok(1.0), |s| s.parse())?;
    let opts =
        OpenOptions { read_only: false, format: Some(format.parse()?), ..Default::default() };
    let disk = open(&PathBuf::from(path), &opts)?;
    let budget = Duration::from_secs_f64(seconds);
    // Warm the page cache.
    let mut big = vec![0u8; 128 << 10];
    let size = disk.virtual_size() / (128 << 10) * (128 << 10);
    for off in (0..size).step_by(big.len()) {
        disk.read_at(&mut big, off)?;
    }
    for (name, bs, random, write) in [
        ("4 KiB random read", 4096u64, true, false),
        ("4 KiB random write", 4096, true, true),
        ("128 KiB sequential read", 128 << 10, false, false),
        ("128 KiB sequential write", 128 << 10, false, true),
    ] {
        let ns = measure(disk.as_ref(), bs, random, write, budget)?;
        // MiB/s at one CPU fully busy with these calls.
        let mib_s = bs as f64 / ns * 1e9 / f64::from(1 << 20);
        println!("{name:26} {ns:9.0} ns/op {mib_s:9.0} MiB/s");
    }
    Ok(())
}

/// CPU nanoseconds of this thread so far.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// CPU nanoseconds per call, over `budget` of wall-clock time.
fn measure(
    disk: &dyn DiskImage,
    bs: u64,
    random: bool,
    write: bool,
    budget: Duration,
) -> anyhow::Result<f64> {
    let blocks = disk.virtual_size() / bs;
    let mut buf = vec![0x5au8; bs as usize];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let (mut ops, mut next) = (0u64, 0u64);
    let (start, cpu) = (Instant::now(), thread_cpu_ns());
    while start.elapsed() < budget {
        for _ in 0..64 {
            let block = if random {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % blocks
            } else {
                next = (next + 1) % blocks;
                next
            };
            if write {
                disk.write_at(&buf, block * bs)?;
            } else {
                disk.read_at(&mut buf, block * bs)?;
            }
            ops += 1;
        }
    }
    Ok((thread_cpu_ns() - cpu) as f64 / ops as f64)
}
