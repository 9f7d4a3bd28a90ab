//! `blk-bench`: requests of `bulkhead.bs` bytes at `bulkhead.qd` in flight
//! over the first `bulkhead.bytes` of disk `bulkhead.disk` (default: all of
//! it), for `bulkhead.seconds` or `bulkhead.ops` requests.
//!
//! Modes: `randread` and `randwrite` pick block-aligned offsets from a
//! SplitMix64 sequence seeded with `bulkhead.seed`; `seqread` and
//! `seqwrite` walk the span in order and wrap around. With
//! `bulkhead.flush=1` (write modes) each write is followed by a FLUSH, and
//! an operation is the pair. A slot's next request is submitted as soon as
//! its previous one finishes, so the queue stays at depth `qd`; new
//! requests are published with one notification per batch.
//!
//! Latency is from submission to completion, on the TSC, in a fixed
//! histogram. Output:
//! `BH result workload=blk-bench mode=randread bs=4096 qd=1 ops=... seconds=...
//! iops=... mib_s=... p50_us=... p99_us=...`, after
//! `BH check name=blk-bench status=ok ...`.
//!
//! `blk-rate` is the same run that also prints, after each second, what that second did:
//! `BH rate workload=blk-rate second=N ops=... bytes=... ns=... iops=... mib_s=...` (the
//! window's own length in `ns`, on the TSC), for tests of a device's rate limits; its last
//! lines say `workload=blk-rate` and `name=blk-rate`.

use crate::arch::rdtsc;
use crate::bh;
use crate::histogram::Histogram;
use crate::options::{BlkBench, BlkMode, Length};
use crate::pattern::splitmix64;
use crate::report::{per_second, Fixed};
use crate::time;
use crate::virtio::blk::{Blk, Op, MAX_SLOTS};
use crate::virtio::blk_spec::S_OK;

use super::{Ctx, Fail};

/// Where the next request goes.
struct Offsets {
    mode: BlkMode,
    blocks: u64,
    bs: u64,
    state: u64,
    cursor: u64,
}

impl Offsets {
    fn next(&mut self) -> u64 {
        let block = if self.mode.random() {
            self.state = self.state.wrapping_add(1);
            splitmix64(self.state) % self.blocks
        } else {
            let b = self.cursor;
            self.cursor = (self.cursor + 1) % self.blocks;
            b
        };
        block * self.bs
    }
}

/// The benchmark's running state.
struct Run {
    o: BlkBench,
    offsets: Offsets,
    /// Per slot: when its operation began, where, and whether it is flushing.
    began: [u64; MAX_SLOTS],
    offset: [u64; MAX_SLOTS],
    flushing: [bool; MAX_SLOTS],
    submitted: u64,
    done: u64,
    end_tsc: u64,
    hist: Histogram,
}

impl Run {
    fn more(&self, now: u64) -> bool {
        match self.o.length {
            Length::Ops(n) => self.submitted < n,
            Length::Millis(_) => now < self.end_tsc,
        }
    }

    fn start_op(&mut self, blk: &mut Blk, slot: usize, now: u64) -> Result<(), Fail> {
        let op = if self.o.mode.writes() { Op::Write } else { Op::Read };
        let offset = self.offsets.next();
        blk.submit(slot, op, offset, self.o.bs as u32, now)?;
        self.began[slot] = now;
        self.offset[slot] = offset;
        self.flushing[slot] = false;
        self.submitted += 1;
        Ok(())
    }

    /// Handles every finished request; returns whether any was.
    fn reap(&mut self, blk: &mut Blk) -> Result<bool, Fail> {
        let mut any = false;
        while let Some(done) = blk.poll() {
            let done = done?;
            let now = rdtsc();
            any = true;
            if done.status != S_OK {
                let op = match (self.flushing[done.slot], self.o.mode.writes()) {
                    (true, _) => "flush",
                    (false, true) => "write",
                    (false, false) => "read",
                };
                return Err(Fail::Status {
                    op,
                    offset: self.offset[done.slot],
                    status: done.status,
                });
            }
            if self.o.flush && !self.flushing[done.slot] {
                blk.submit(done.slot, Op::Flush, 0, 0, now)?;
                self.flushing[done.slot] = true;
                continue;
            }
            self.hist.record(now - self.began[done.slot]);
            self.done += 1;
            if self.more(now) {
                self.start_op(blk, done.slot, now)?;
            }
        }
        Ok(any)
    }
}

/// One-second windows of a `blk-rate` run.
struct Windows {
    start: u64,
    done: u64,
    second: u64,
}

impl Windows {
    /// Prints the window that ended, if one did by `now`.
    fn tick(&mut self, now: u64, done: u64, bs: u64) {
        let ns = time::ticks_to_ns(now - self.start);
        if ns < 1_000_000_000 {
            return;
        }
        let ops = done - self.done;
        self.second += 1;
        bh!(
            "rate workload=blk-rate second={} ops={} bytes={} ns={} iops={} mib_s={}",
            self.second,
            ops,
            ops * bs,
            ns,
            per_second(ops, ns, 0),
            Fixed(per_second(ops * bs, ns, 1) >> 20, 1)
        );
        self.start = now;
        self.done = done;
    }
}

pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
    run_as(ctx, "blk-bench")
}

/// `blk-rate`: `blk-bench` with a line per second.
pub fn rate(ctx: &mut Ctx) -> Result<(), Fail> {
    run_as(ctx, "blk-rate")
}

fn run_as(ctx: &mut Ctx, name: &str) -> Result<(), Fail> {
    let o = BlkBench::parse(ctx.cmdline)?;
    let timeout_ms = ctx.common()?.timeout_ms;
    let (blk, bump) = ctx.devices().blk(o.disk)?;
    let info = *blk.info();
    let bytes = o.bytes.unwrap_or(info.capacity);
    if bytes > info.capacity {
        return Err(Fail::Text("bulkhead.bytes is larger than the disk"));
    }
    if bytes < o.bs {
        return Err(Fail::Text("the disk (or bulkhead.bytes) is smaller than one request"));
    }
    if o.mode.writes() && info.read_only {
        return Err(Fail::Text("the disk is read-only (VIRTIO_BLK_F_RO)"));
    }
    if o.flush && !info.flush {
        return Err(Fail::Text("the device does not offer VIRTIO_BLK_F_FLUSH"));
    }
    if !o.bs.is_multiple_of(u64::from(info.block_size)) {
        return Err(Fail::Text("bulkhead.bs is not a multiple of the disk's block size"));
    }
    let qd = o.qd as usize;
    blk.buffers(qd, o.bs as u32, bump)?;
    let offsets =
        Offsets { mode: o.mode, blocks: bytes / o.bs, bs: o.bs, state: o.seed, cursor: 0 };
    let ms = if let Length::Millis(ms) = o.length { ms } else { 0 };
    let mut r = Run {
        o,
        offsets,
        began: [0; MAX_SLOTS],
        offset: [0; MAX_SLOTS],
        flushing: [false; MAX_SLOTS],
        submitted: 0,
        done: 0,
        end_tsc: time::deadline_ms(ms),
        hist: Histogram::new(),
    };
    let counters = blk.counters();
    let start = rdtsc();
    for slot in 0..qd {
        if r.more(start) {
            r.start_op(blk, slot, start)?;
        }
    }
    blk.kick();
    let mut windows = (name == "blk-rate").then_some(Windows { start, done: 0, second: 0 });
    while blk.in_flight() > 0 {
        if r.reap(blk)? {
            blk.kick();
        } else {
            blk.wait(time::deadline_ms(timeout_ms))?;
        }
        if let Some(w) = &mut windows {
            w.tick(rdtsc(), r.done, r.o.bs);
        }
    }
    let ns = time::ticks_to_ns(rdtsc() - start);
    let (kicks, irqs) = blk.counters();
    report(ctx, name, &r, ns, (kicks - counters.0, irqs - counters.1));
    Ok(())
}

/// Prints the check and result lines; `counters` are the QueueNotify
/// writes and interrupts during the run.
fn report(ctx: &mut Ctx, name: &str, r: &Run, ns: u64, counters: (u64, u64)) {
    let us = |ticks: u64| Fixed(time::ticks_to_ns(ticks) / 100, 1);
    let o = &r.o;
    let ok = ctx.checks.record(r.done > 0);
    bh!("check name={} status={} ops={} errors=0", name, ok, r.done);
    bh!(
        "result workload={} disk={} mode={} bs={} qd={} flush={} ops={} seconds={} ns={} iops={} mib_s={} p50_us={} p99_us={} max_us={} kicks={} irqs={}",
        name,
        o.disk,
        o.mode.name(),
        o.bs,
        o.qd,
        u8::from(o.flush),
        r.done,
        Fixed(ns / 1_000_000, 3),
        ns,
        per_second(r.done, ns, 0),
        Fixed(per_second(r.done * o.bs, ns, 1) >> 20, 1),
        us(r.hist.percentile(500)),
        us(r.hist.percentile(990)),
        us(r.hist.max()),
        counters.0,
        counters.1
    );
}
