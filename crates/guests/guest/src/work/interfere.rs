//! The two sides of the interference test and benchmark:
//!
//! - `probe`: a latency probe. The bootstrap CPU repeats a fixed unit of
//!   work (`bulkhead.work=N` dependent multiply-adds, default 2,000,000: about
//!   0.5 ms of ring-3 arithmetic on this project's host) for
//!   `bulkhead.seconds` (default 2) and times each unit on the TSC. A unit
//!   takes its nominal time unless the host took the vCPU away while it
//!   ran, so the tail of the distribution is the time the host's scheduler
//!   gave to someone else: `BH result workload=probe units=... work=...
//!   seconds=... p50_us=... p99_us=... max_us=... slow=...` (`slow`: units
//!   that took more than twice the median, per ten thousand).
//! - `storm`: a noisy neighbour. Every application processor spins for
//!   `bulkhead.seconds` (default 5) and the bootstrap CPU runs blk-stress
//!   passes on disk `bulkhead.disk` over `bulkhead.bytes` (write the
//!   pattern, flush, read back and compare) for as long, or spins too when
//!   the VM has no disk: `BH result workload=storm seconds=... cpus=...
//!   disk=0|none`, after blk-stress's own lines.
//! - `hammer`: a guest that hammers a device's registers. Every application
//!   processor, for `bulkhead.seconds` (default 5), reads the configuration
//!   space of virtio device number `bulkhead.hammer` (in the order they were
//!   found, from 0) or, with `bulkhead.how=reinit`, resets it and brings it
//!   back to DRIVER_OK, over and over, while the bootstrap CPU goes on with
//!   the next workload: `BH hammer device=N how=read|reinit cpus=...`. The
//!   `hammer-done` workload waits for the end and reports the rounds:
//!   `BH result workload=hammer rounds=...`.
//! - `mem-touch`: writes one word in every 4 KiB page of free RAM (the
//!   arena above the guest image; `bulkhead.bytes` caps it), so that the
//!   host backs all of it: `BH check name=mem-touch status=ok bytes=...
//!   pages=... seconds=...`. With `bulkhead.hold_ms` the VM then stays up,
//!   for a test to read the VM's memory cgroup.

use core::sync::atomic::Ordering;

use crate::arch::rdtsc;
use crate::bh;
use crate::histogram::Histogram;
use crate::options::parse_ms;
use crate::report::Fixed;
use crate::{smp, time};

use super::{blk, Ctx, Fail};

/// The probe's default unit of work, in multiply-adds (about 0.5 ms here).
const DEFAULT_WORK: u64 = 2_000_000;

/// `bulkhead.seconds` in milliseconds (decimals allowed), or `default_ms`.
fn millis(ctx: &Ctx, default_ms: u64) -> Result<u64, Fail> {
    match ctx.cmdline.get("bulkhead.seconds").map(parse_ms) {
        None => Ok(default_ms),
        Some(Some(ms)) if ms > 0 => Ok(ms),
        Some(_) => Err(Fail::Text("bulkhead.seconds must be a positive number of seconds")),
    }
}

/// One unit of work: `n` dependent multiply-adds the compiler cannot fold.
#[inline(never)]
fn unit(n: u64, seed: u64) -> u64 {
    let mut x = core::hint::black_box(seed);
    for i in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i | 1);
    }
    core::hint::black_box(x)
}

/// probe.
pub fn probe(ctx: &mut Ctx) -> Result<(), Fail> {
    let ms = millis(ctx, 2000)?;
    let work = ctx.cmdline.get_u64("bulkhead.work").unwrap_or(DEFAULT_WORK);
    if work == 0 {
        return Err(Fail::Text("bulkhead.work must be above 0"));
    }
    let mut hist = Histogram::new();
    let mut durations_sum = 0u64;
    let mut sink = 0u64;
    let start = rdtsc();
    let end = time::deadline_ms(ms);
    let mut before = start;
    while before < end {
        sink = unit(work, sink);
        let after = rdtsc();
        let ticks = after - before;
        hist.record(ticks);
        durations_sum += ticks;
        before = after;
    }
    let ns = time::ticks_to_ns(before - start);
    let units = hist.count();
    // Units slower than twice the median, per ten thousand.
    let median = hist.percentile(500);
    let slow = units - hist.count_below(median.saturating_mul(2));
    let us = |ticks: u64| Fixed(time::ticks_to_ns(ticks) / 100, 1);
    bh!("check name=probe status={} units={}", ctx.checks.record(units > 0), units);
    bh!(
        "result workload=probe units={} work={} seconds={} p50_us={} p99_us={} max_us={} mean_us={} slow={} sink={}",
        units,
        work,
        Fixed(ns / 1_000_000, 3),
        us(median),
        us(hist.percentile(990)),
        us(hist.max()),
        us(durations_sum / units.max(1)),
        slow * 10_000 / units.max(1),
        sink & 0xff
    );
    Ok(())
}

/// storm.
pub fn storm(ctx: &mut Ctx) -> Result<(), Fail> {
    let ms = millis(ctx, 5000)?;
    let until = time::deadline_ms(ms);
    smp::SPIN_UNTIL.store(until, Ordering::Release);
    let cpus = match ctx.start_aps() {
        Ok(online) => online + 1,
        Err(why) => {
            bh!("storm text=the other CPUs did not start: {}", why);
            1
        }
    };
    let disk = ctx.cmdline.get_u64("bulkhead.disk").unwrap_or(0) as usize;
    let has_disk = ctx.devices().blk(disk).is_ok();
    if has_disk {
        blk::stress_until(ctx, Some(until))?;
    } else {
        while !time::passed(until) {
            core::hint::spin_loop();
        }
    }
    bh!("check name=storm status={} cpus={}", ctx.checks.record(true), cpus);
    if has_disk {
        bh!("result workload=storm seconds={} cpus={} disk={}", Fixed(ms, 3), cpus, disk);
    } else {
        bh!("result workload=storm seconds={} cpus={} disk=none", Fixed(ms, 3), cpus);
    }
    Ok(())
}

/// hammer.
pub fn hammer(ctx: &mut Ctx) -> Result<(), Fail> {
    let ms = millis(ctx, 5000)?;
    let index = ctx.cmdline.get_u64("bulkhead.hammer").unwrap_or(0) as usize;
    let reinit = match ctx.cmdline.get("bulkhead.how") {
        None | Some("read") => false,
        Some("reinit") => true,
        Some(_) => return Err(Fail::Text("bulkhead.how must be read or reinit")),
    };
    let found = ctx.devices().found().nth(index).map(|f| f.mmio.base);
    let base = found.ok_or(Fail::Text("bulkhead.hammer names no virtio device"))?;
    smp::HAMMER_BASE.store(base, Ordering::Release);
    smp::HAMMER_HOW.store(u64::from(reinit), Ordering::Release);
    smp::SPIN_UNTIL.store(time::deadline_ms(ms), Ordering::Release);
    let cpus = ctx.start_aps().map_err(Fail::Text)?;
    if cpus == 0 {
        return Err(Fail::Text("hammer needs a second CPU"));
    }
    let how = if reinit { "reinit" } else { "read" };
    bh!("hammer device={} how={} cpus={}", index, how, cpus);
    Ok(())
}

/// hammer-done.
pub fn hammer_done(ctx: &mut Ctx) -> Result<(), Fail> {
    while !time::passed(smp::SPIN_UNTIL.load(Ordering::Acquire)) {
        core::hint::spin_loop();
    }
    let rounds = smp::HAMMERED.load(Ordering::Acquire);
    bh!("check name=hammer status={} rounds={}", ctx.checks.record(rounds > 0), rounds);
    bh!("result workload=hammer rounds={}", rounds);
    Ok(())
}

/// mem-touch.
pub fn mem_touch(ctx: &mut Ctx) -> Result<(), Fail> {
    let (start, end) = ctx.arena();
    let cap = ctx.cmdline.get_u64("bulkhead.bytes").unwrap_or(u64::MAX);
    let end = end.min(start.saturating_add(cap));
    let start_tsc = rdtsc();
    let mut pages = 0u64;
    let mut at = (start + 4095) & !4095;
    while at + 8 <= end {
        // SAFETY: `at` is a page-aligned address inside the free RAM arena,
        // identity-mapped, writable and used by nothing else.
        unsafe { core::ptr::write_volatile(at as *mut u64, at) };
        pages += 1;
        at += 4096;
    }
    let ns = time::ticks_to_ns(rdtsc() - start_tsc);
    bh!(
        "check name=mem-touch status={} bytes={} pages={} seconds={}",
        ctx.checks.record(pages > 0),
        pages * 4096,
        pages,
        Fixed(ns / 1_000_000, 3)
    );
    Ok(())
}
