//! Block correctness workloads:
//!
//! - `blk-verify`: writes the pattern of [`crate::pattern`] over the first
//!   `bulkhead.bytes` of disk `bulkhead.disk` (default: all of it) in
//!   requests of `bulkhead.bs` (the last one shorter if the size is not a
//!   multiple), FLUSHes (if the device offers it), reads everything back and
//!   compares; `BH check name=blk-verify status=ok disk=0 bytes=...
//!   requests=... seconds=... mib_s=...`.
//! - `blk-read-verify`: the read-and-compare half only, for a disk the host
//!   filled with the pattern (or one `blk-verify` wrote), read-only or not.
//! - `blk-stress`: `bulkhead.rounds` (default 10) passes of blk-verify, pass
//!   `r` with seed `bulkhead.seed + r` (with `bulkhead.seconds`: as many
//!   passes as fit in that time), so a write lost in any pass shows up
//!   as a mismatch in that pass; any I/O error status fails it at once.
//!   `BH progress name=blk-stress round=R` after each pass, then
//!   `BH check name=blk-stress status=ok disk=0 bytes=... rounds=... requests=... seconds=...`.
//!   The disk ends holding the last pass's pattern (seed + rounds - 1).
//! - `blk-ro`: on a disk that offers VIRTIO_BLK_F_RO, reads the first
//!   block, writes different data over it, which must fail with an error
//!   status, and reads it again, which must give the same data:
//!   `BH check name=blk-ro status=ok disk=0 write_status=ioerr`.
//! - `blk-swap`: for a disk whose image the host swaps for a larger one while the guest runs
//!   (`bulkhead ctl VM device replace-disk`). Reads and checks the whole disk (pattern of
//!   `bulkhead.seed`), says `BH progress name=blk-swap capacity=N`, then goes on reading and
//!   checking it, request after request, until the device reports a configuration change
//!   with another capacity (for at most `bulkhead.seconds`, default 120); says
//!   `BH progress name=blk-swap capacity=M`, reads and checks what lies beyond the old size
//!   (pattern of `bulkhead.seed2`, default the same seed: an image holding one pattern over
//!   its whole size has the first image's bytes below the old size), then writes the pattern
//!   of `seed + 1` over the first MiB (at most the old size; of an empty disk, at most the
//!   new size), flushes and reads it back:
//!   `BH check name=blk-swap status=ok disk=0 old_capacity=N capacity=M during=R beyond=B
//!   written=W`; then, with `bulkhead.hold_ms`, keeps the disk that long before it goes on
//!   (a test looks at the images' locks meanwhile).

use crate::arch::rdtsc;
use crate::bh;
use crate::options::BlkVerify;
use crate::pattern;
use crate::report::{per_second, Fixed};
use crate::time;
use crate::virtio::blk::{Blk, Info, Op};
use crate::virtio::blk_spec::{status_name, S_OK};
use crate::virtio::queue::IoError;

use super::{Ctx, Fail};

/// The byte count to use: `bytes` or the whole disk, checked against it.
fn span(info: &Info, bytes: Option<u64>) -> Result<u64, Fail> {
    let bytes = bytes.unwrap_or(info.capacity);
    if bytes == 0 {
        return Err(Fail::Text("the disk is empty (or bulkhead.bytes=0)"));
    }
    if bytes > info.capacity {
        return Err(Fail::Text("bulkhead.bytes is larger than the disk"));
    }
    if !bytes.is_multiple_of(u64::from(info.block_size)) {
        return Err(Fail::Text("bulkhead.bytes is not a multiple of the disk's block size"));
    }
    Ok(bytes)
}

/// The first `len` bytes of slot 0's buffer (absent only if an earlier
/// request on the device never finished).
fn buffer(blk: &mut Blk, len: u32) -> Result<&mut [u8], Fail> {
    blk.data(0).get_mut(..len as usize).ok_or(Fail::Io(IoError::Broken))
}

/// Runs one request and checks its status.
fn request(blk: &mut Blk, op: Op, offset: u64, len: u32, timeout_ms: u64) -> Result<(), Fail> {
    let status = blk.run(0, op, offset, len, time::deadline_ms(timeout_ms))?;
    if status != S_OK {
        let op = match op {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
        };
        return Err(Fail::Status { op, offset, status });
    }
    Ok(())
}

/// blk-verify (`write`) and blk-read-verify.
pub fn verify(ctx: &mut Ctx, write: bool) -> Result<(), Fail> {
    let name = if write { "blk-verify" } else { "blk-read-verify" };
    let o = BlkVerify::parse(ctx.cmdline)?;
    let timeout_ms = ctx.common()?.timeout_ms;
    let (blk, bump) = ctx.devices().blk(o.disk)?;
    let info = *blk.info();
    if write && info.read_only {
        return Err(Fail::Text("the disk is read-only (VIRTIO_BLK_F_RO)"));
    }
    let bytes = span(&info, o.bytes)?;
    if !o.bs.is_multiple_of(u64::from(info.block_size)) {
        return Err(Fail::Text("bulkhead.bs is not a multiple of the disk's block size"));
    }
    blk.buffers(1, o.bs as u32, bump)?;
    let start = rdtsc();
    let mut requests = 0u64;
    if write {
        for offset in (0..bytes).step_by(o.bs as usize) {
            let len = (bytes - offset).min(o.bs) as u32;
            pattern::fill(buffer(blk, len)?, o.seed, offset);
            request(blk, Op::Write, offset, len, timeout_ms)?;
            requests += 1;
        }
        if info.flush {
            request(blk, Op::Flush, 0, 0, timeout_ms)?;
            requests += 1;
        }
    }
    for offset in (0..bytes).step_by(o.bs as usize) {
        let len = (bytes - offset).min(o.bs) as u32;
        buffer(blk, len)?.fill(0);
        request(blk, Op::Read, offset, len, timeout_ms)?;
        requests += 1;
        if let Some((at, want, got)) = pattern::first_mismatch(buffer(blk, len)?, o.seed, offset) {
            return Err(Fail::Mismatch { offset: at, want, got });
        }
    }
    let ns = time::ticks_to_ns(rdtsc() - start);
    let moved = if write { 2 * bytes } else { bytes };
    bh!(
        "check name={} status={} disk={} bytes={} bs={} seed={} requests={} flush={} seconds={} mib_s={}",
        name,
        ctx.checks.record(true),
        o.disk,
        bytes,
        o.bs,
        o.seed,
        requests,
        u8::from(write && info.flush),
        Fixed(ns / 1_000_000, 3),
        Fixed(per_second(moved, ns, 1) >> 20, 1)
    );
    Ok(())
}

/// Writes the pattern of `seed` over `bytes`, then FLUSHes; returns the requests made.
fn write_pass(
    blk: &mut Blk,
    bytes: u64,
    bs: u64,
    seed: u64,
    flush: bool,
    timeout_ms: u64,
) -> Result<u64, Fail> {
    let mut requests = 0;
    for offset in (0..bytes).step_by(bs as usize) {
        let len = (bytes - offset).min(bs) as u32;
        pattern::fill(buffer(blk, len)?, seed, offset);
        request(blk, Op::Write, offset, len, timeout_ms)?;
        requests += 1;
    }
    if flush {
        request(blk, Op::Flush, 0, 0, timeout_ms)?;
        requests += 1;
    }
    Ok(requests)
}

/// Reads `bytes` back and compares with the pattern of `seed`.
fn read_pass(blk: &mut Blk, bytes: u64, bs: u64, seed: u64, timeout_ms: u64) -> Result<u64, Fail> {
    read_range(blk, 0, bytes, bs, seed, timeout_ms)
}

/// Reads bytes `from..to` and compares them with the pattern of `seed`.
fn read_range(
    blk: &mut Blk,
    from: u64,
    to: u64,
    bs: u64,
    seed: u64,
    timeout_ms: u64,
) -> Result<u64, Fail> {
    let mut requests = 0;
    for offset in (from..to).step_by(bs as usize) {
        let len = (to - offset).min(bs) as u32;
        buffer(blk, len)?.fill(0);
        request(blk, Op::Read, offset, len, timeout_ms)?;
        requests += 1;
        if let Some((at, want, got)) = pattern::first_mismatch(buffer(blk, len)?, seed, offset) {
            return Err(Fail::Mismatch { offset: at, want, got });
        }
    }
    Ok(requests)
}

/// blk-stress.
pub fn stress(ctx: &mut Ctx) -> Result<(), Fail> {
    // With bulkhead.seconds, passes go on until that much time has passed.
    let until = ctx.cmdline.get_u64("bulkhead.seconds").map(|s| time::deadline_ms(s * 1000));
    stress_until(ctx, until)
}

/// blk-stress's passes, until the TSC reaches `until` (or
/// `bulkhead.rounds` passes when `None`).
pub fn stress_until(ctx: &mut Ctx, until: Option<u64>) -> Result<(), Fail> {
    let o = BlkVerify::parse(ctx.cmdline)?;
    let rounds = ctx.cmdline.get_u64("bulkhead.rounds").unwrap_or(10).max(1);
    let timeout_ms = ctx.common()?.timeout_ms;
    let (blk, bump) = ctx.devices().blk(o.disk)?;
    let info = *blk.info();
    if info.read_only {
        return Err(Fail::Text("the disk is read-only (VIRTIO_BLK_F_RO)"));
    }
    let bytes = span(&info, o.bytes)?;
    if !o.bs.is_multiple_of(u64::from(info.block_size)) {
        return Err(Fail::Text("bulkhead.bs is not a multiple of the disk's block size"));
    }
    blk.buffers(1, o.bs as u32, bump)?;
    let start = rdtsc();
    let mut requests = 0u64;
    let mut round = 0;
    while until.map_or(round < rounds, |t| round == 0 || !time::passed(t)) {
        let seed = o.seed.wrapping_add(round);
        requests += write_pass(blk, bytes, o.bs, seed, info.flush, timeout_ms)?;
        requests += read_pass(blk, bytes, o.bs, seed, timeout_ms)?;
        bh!("progress name=blk-stress round={}", round);
        round += 1;
    }
    let rounds = round;
    let ns = time::ticks_to_ns(rdtsc() - start);
    bh!(
        "check name=blk-stress status={} disk={} bytes={} rounds={} requests={} seconds={}",
        ctx.checks.record(true),
        o.disk,
        bytes,
        rounds,
        requests,
        Fixed(ns / 1_000_000, 3)
    );
    Ok(())
}

/// blk-ro.
pub fn read_only(ctx: &mut Ctx) -> Result<(), Fail> {
    let o = BlkVerify::parse(ctx.cmdline)?;
    let timeout_ms = ctx.common()?.timeout_ms;
    let (blk, bump) = ctx.devices().blk(o.disk)?;
    let info = *blk.info();
    if !info.read_only {
        return Err(Fail::Text("the disk does not offer VIRTIO_BLK_F_RO"));
    }
    let bs = info.block_size;
    blk.buffers(1, 2 * bs, bump)?;
    request(blk, Op::Read, 0, bs, timeout_ms)?;
    // Keep the original in the second half; write its complement.
    let (before, scratch) = buffer(blk, 2 * bs)?.split_at_mut(bs as usize);
    scratch.copy_from_slice(before);
    before.iter_mut().for_each(|b| *b = !*b);
    let status = blk.run(0, Op::Write, 0, bs, time::deadline_ms(timeout_ms))?;
    if status == S_OK {
        return Err(Fail::Text("a write to the read-only disk succeeded"));
    }
    request(blk, Op::Read, 0, bs, timeout_ms)?;
    let (after, original) = buffer(blk, 2 * bs)?.split_at(bs as usize);
    if after != original {
        return Err(Fail::Text("the refused write changed the disk"));
    }
    bh!(
        "check name=blk-ro status={} disk={} ro=1 write_status={}",
        ctx.checks.record(true),
        o.disk,
        status_name(status)
    );
    Ok(())
}

/// blk-swap (see the module docs).
pub fn swap(ctx: &mut Ctx) -> Result<(), Fail> {
    let o = BlkVerify::parse(ctx.cmdline)?;
    let seed2 = ctx.cmdline.get_u64("bulkhead.seed2").unwrap_or(o.seed);
    let wait_ms = ctx.cmdline.get_u64("bulkhead.seconds").unwrap_or(120).saturating_mul(1000);
    let timeout_ms = ctx.common()?.timeout_ms;
    let (blk, bump) = ctx.devices().blk(o.disk)?;
    let info = *blk.info();
    // An empty disk (a placeholder, as Kata gives its VMs) has nothing to read until the swap.
    let old = if info.capacity == 0 { 0 } else { span(&info, None)? };
    blk.buffers(1, o.bs as u32, bump)?;
    read_pass(blk, old, o.bs, o.seed, timeout_ms)?;
    bh!("progress name=blk-swap capacity={}", old);
    let until = time::deadline_ms(wait_ms);
    let mut during = 0u64;
    let mut offset = 0;
    let new = loop {
        if let Some(capacity) = blk.config_change().filter(|&c| c != old) {
            break capacity;
        }
        if time::passed(until) {
            return Err(Fail::Text("the disk's capacity did not change in time"));
        }
        if old == 0 {
            core::hint::spin_loop();
            continue;
        }
        // The disk stays in use meanwhile: one read of the old span, checked.
        let len = (old - offset).min(o.bs);
        during += read_range(blk, offset, offset + len, o.bs, o.seed, timeout_ms)?;
        offset = (offset + len) % old;
    };
    bh!("progress name=blk-swap capacity={}", new);
    if new < old {
        return Err(Fail::Text("the new image is smaller than the old one"));
    }
    let beyond = read_range(blk, old, new, o.bs, seed2, timeout_ms)?;
    let mut written = 0;
    if !info.read_only {
        written = (if old == 0 { new } else { old }).min(1 << 20);
        write_pass(blk, written, o.bs, o.seed.wrapping_add(1), info.flush, timeout_ms)?;
        read_pass(blk, written, o.bs, o.seed.wrapping_add(1), timeout_ms)?;
    }
    bh!(
        "check name=blk-swap status={} disk={} old_capacity={} capacity={} during={} beyond={} written={}",
        ctx.checks.record(true),
        o.disk,
        old,
        new,
        during,
        beyond,
        written
    );
    let hold = time::deadline_ms(ctx.cmdline.get_u64("bulkhead.hold_ms").unwrap_or(0));
    while !time::passed(hold) {
        core::hint::spin_loop();
    }
    Ok(())
}
