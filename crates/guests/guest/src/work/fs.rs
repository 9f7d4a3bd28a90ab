//! `fs`: the host folder behind the first virtio-fs device, through its FUSE server.
//! - `bulkhead.fs_read=NAME`: looks NAME up in the root, opens and reads it to its end, and
//!   reports its size and FNV-1a 64 hash;
//! - `bulkhead.fs_write=NAME`: creates NAME (truncated), writes `bulkhead.bytes` (default
//!   8192) of the disk pattern with seed `bulkhead.seed` (default 1), closes it and checks its
//!   size from the server.
//!
//! `BH check name=fs status=ok tag=TAG protocol=7.N read_bytes=N read_fnv=0x… wrote=N`.
//!
//! `bulkhead.fs_bench=read|write` (`bulkhead bench fs`) instead times sequential requests of
//! 4 KiB, one at a time, for `bulkhead.seconds` (default 5): `read` reads `bulkhead.fs_file`
//! (default `bench.bin`) from its start, again from the start at its end; `write` creates it
//! (truncated) and writes the pattern, again from the start after `bulkhead.bytes` (default
//! 64 MiB). The data is not checked.
//! `BH result workload=fs-bench mode=read bs=4096 ops=N seconds=S mib_s=M p50_us=… p99_us=…`.

use crate::arch::rdtsc;
use crate::bh;
use crate::histogram::Histogram;
use crate::options::parse_ms;
use crate::pattern;
use crate::report::{per_second, Fixed};
use crate::time;
use crate::virtio::fs::{Fs, FsError, IO_MAX, ROOT};

use super::{Ctx, Fail};

/// The longest file name an option can give.
const NAME_MAX: usize = 64;

impl From<FsError> for Fail {
    fn from(e: FsError) -> Self {
        Fail::Fs(e)
    }
}

fn fnv1a64(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Reads `name` to its end: (bytes, hash).
fn read_all(fs: &mut Fs, name: &[u8], timeout_ms: u64) -> Result<(u64, u64), Fail> {
    let entry = fs.lookup(ROOT, name, time::deadline_ms(timeout_ms))?;
    let fh = fs.open(entry.node, 0, time::deadline_ms(timeout_ms))?;
    let (mut offset, mut hash) = (0u64, 0xcbf2_9ce4_8422_2325u64);
    let mut chunk = [0u8; IO_MAX as usize];
    loop {
        let n = fs.read(entry.node, fh, offset, &mut chunk, time::deadline_ms(timeout_ms))?;
        if n == 0 {
            break;
        }
        hash = fnv1a64(hash, &chunk[..n]);
        offset += n as u64;
    }
    fs.release(entry.node, fh, time::deadline_ms(timeout_ms))?;
    if offset != entry.size {
        return Err(Fail::Text("the file read back is not as long as LOOKUP said"));
    }
    Ok((offset, hash))
}

/// Creates `name` holding `bytes` of the pattern for `seed`.
fn write_all(fs: &mut Fs, name: &[u8], bytes: u64, seed: u64, timeout_ms: u64) -> Result<(), Fail> {
    let (entry, fh) = fs.create(ROOT, name, time::deadline_ms(timeout_ms))?;
    let mut chunk = [0u8; IO_MAX as usize];
    let mut offset = 0u64;
    while offset < bytes {
        let n = (bytes - offset).min(IO_MAX.into()) as usize;
        pattern::fill(&mut chunk[..n], seed, offset);
        let mut done = 0;
        while done < n {
            let at = offset + done as u64;
            let wrote =
                fs.write(entry.node, fh, at, &chunk[done..n], time::deadline_ms(timeout_ms))?;
            if wrote == 0 {
                return Err(Fail::Text("the server took no bytes of a write"));
            }
            done += wrote;
        }
        offset += n as u64;
    }
    fs.release(entry.node, fh, time::deadline_ms(timeout_ms))?;
    if fs.size(entry.node, time::deadline_ms(timeout_ms))? != bytes {
        return Err(Fail::Text("the written file's size is not what was written"));
    }
    Ok(())
}

/// Which way `bulkhead.fs_bench` moves data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BenchMode {
    Read,
    Write,
}

/// Sequential 4 KiB requests on `name` for `ms`: (requests, ns, latencies in TSC ticks).
fn bench_io(
    fs: &mut Fs,
    name: &[u8],
    mode: BenchMode,
    wrap: u64,
    ms: u64,
    timeout_ms: u64,
) -> Result<(u64, u64, Histogram), Fail> {
    let d = || time::deadline_ms(timeout_ms);
    let (node, fh, wrap) = match mode {
        BenchMode::Read => {
            let entry = fs.lookup(ROOT, name, d())?;
            (entry.node, fs.open(entry.node, 0, d())?, entry.size)
        }
        BenchMode::Write => {
            let (entry, fh) = fs.create(ROOT, name, d())?;
            (entry.node, fh, wrap)
        }
    };
    if wrap < u64::from(IO_MAX) {
        return Err(Fail::Text("the benchmark's file is shorter than one request"));
    }
    let mut chunk = [0u8; IO_MAX as usize];
    pattern::fill(&mut chunk, 1, 0);
    let mut hist = Histogram::new();
    let (start, end) = (rdtsc(), time::deadline_ms(ms));
    let (mut ops, mut offset, mut now) = (0u64, 0u64, start);
    while now < end {
        if offset + u64::from(IO_MAX) > wrap {
            offset = 0;
        }
        let n = match mode {
            BenchMode::Read => fs.read(node, fh, offset, &mut chunk, d())?,
            BenchMode::Write => fs.write(node, fh, offset, &chunk, d())?,
        };
        if n != IO_MAX as usize {
            return Err(Fail::Text("a 4 KiB request moved less than 4 KiB"));
        }
        offset += n as u64;
        let done = rdtsc();
        hist.record(done - now);
        ops += 1;
        now = done;
    }
    let ns = time::ticks_to_ns(now - start);
    fs.release(node, fh, d())?;
    Ok((ops, ns, hist))
}

/// `bulkhead.fs_bench`: the timed sequential reads or writes.
fn bench(ctx: &mut Ctx, mode: &str, timeout_ms: u64) -> Result<(), Fail> {
    let mode = match mode {
        "read" => BenchMode::Read,
        "write" => BenchMode::Write,
        _ => return Err(Fail::Text("bulkhead.fs_bench is read or write")),
    };
    let name = name_option(ctx, "bulkhead.fs_file")?.unwrap_or(b"bench.bin");
    let wrap = ctx.cmdline.get_u64("bulkhead.bytes").unwrap_or(64 << 20);
    let ms = match ctx.cmdline.get("bulkhead.seconds") {
        None => 5000,
        Some(s) => parse_ms(s)
            .filter(|&ms| ms > 0)
            .ok_or(Fail::Text("bulkhead.seconds must be a positive number of seconds"))?,
    };
    let fs = ctx.devices().fs()?;
    fs.init(time::deadline_ms(timeout_ms))?;
    let (ops, ns, hist) = bench_io(fs, name, mode, wrap, ms, timeout_ms)?;
    let us = |ticks: u64| Fixed(time::ticks_to_ns(ticks) / 100, 1);
    let mode = if mode == BenchMode::Read { "read" } else { "write" };
    bh!("check name=fs status={} mode={} ops={}", ctx.checks.record(ops > 0), mode, ops);
    bh!(
        "result workload=fs-bench mode={} bs={} ops={} seconds={} mib_s={} p50_us={} p99_us={}",
        mode,
        IO_MAX,
        ops,
        Fixed(ns / 1_000_000, 3),
        Fixed(per_second(ops * u64::from(IO_MAX), ns, 1) >> 20, 1),
        us(hist.percentile(500)),
        us(hist.percentile(990))
    );
    Ok(())
}

/// Option `key`'s value as a file name.
fn name_option<'a>(ctx: &Ctx<'a>, key: &str) -> Result<Option<&'a [u8]>, Fail> {
    match ctx.cmdline.get(key) {
        None => Ok(None),
        Some(n) if n.is_empty() || n.len() > NAME_MAX || n.contains('/') => {
            Err(Fail::Text("a file name option is empty, too long or has a '/'"))
        }
        Some(n) => Ok(Some(n.as_bytes())),
    }
}

pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
    let timeout_ms = ctx.common()?.timeout_ms;
    if let Some(mode) = ctx.cmdline.get("bulkhead.fs_bench") {
        return bench(ctx, mode, timeout_ms);
    }
    let read = name_option(ctx, "bulkhead.fs_read")?;
    let write = name_option(ctx, "bulkhead.fs_write")?;
    let bytes = ctx.cmdline.get_u64("bulkhead.bytes").unwrap_or(8192);
    let seed = ctx.cmdline.get_u64("bulkhead.seed").unwrap_or(1);
    let fs = ctx.devices().fs()?;
    let (major, minor) = fs.init(time::deadline_ms(timeout_ms))?;
    let mut tag = [0u8; crate::virtio::fs::TAG_MAX];
    let tag_len = fs.tag().len();
    tag[..tag_len].copy_from_slice(fs.tag());
    let tag = core::str::from_utf8(&tag[..tag_len]).unwrap_or("?");
    let (read_bytes, read_fnv) = match read {
        Some(name) => read_all(fs, name, timeout_ms)?,
        None => (0, 0),
    };
    if let Some(name) = write {
        write_all(fs, name, bytes, seed, timeout_ms)?;
    }
    bh!(
        "check name=fs status={} tag={} protocol={}.{} read_bytes={} read_fnv={:#018x} wrote={}",
        ctx.checks.record(true),
        tag,
        major,
        minor,
        read_bytes,
        read_fnv,
        if write.is_some() { bytes } else { 0 }
    );
    Ok(())
}
