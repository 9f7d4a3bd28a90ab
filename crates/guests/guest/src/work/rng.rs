//! `rng`: reads `bulkhead.bytes` (default 4096) from the entropy device and
//! counts the distinct byte values seen; constant output fails, as does a
//! device that keeps returning nothing.
//! `BH check name=rng status=ok bytes=4096 distinct=256 requests=1 seconds=...`.

use crate::arch::rdtsc;
use crate::bh;
use crate::options::rng_bytes;
use crate::report::Fixed;
use crate::time;
use crate::virtio::rng::BUF_BYTES;

use super::{Ctx, Fail};

/// Empty answers in a row after which the device is given up on.
const MAX_EMPTY: u32 = 100;

pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
    let want = rng_bytes(ctx.cmdline)?;
    let timeout_ms = ctx.common()?.timeout_ms;
    let rng = ctx.devices().rng()?;
    let mut seen = [0u64; 256];
    let mut chunk = [0u8; BUF_BYTES as usize];
    let (mut got, mut requests, mut empty) = (0u64, 0u64, 0u32);
    let start = rdtsc();
    while got < want {
        let n = (want - got).min(chunk.len() as u64) as usize;
        let n = rng.read(&mut chunk[..n], time::deadline_ms(timeout_ms))?;
        requests += 1;
        if n == 0 {
            empty += 1;
            if empty == MAX_EMPTY {
                return Err(Fail::Text("the device keeps returning no bytes"));
            }
            continue;
        }
        empty = 0;
        for &b in &chunk[..n] {
            seen[usize::from(b)] += 1;
        }
        got += n as u64;
    }
    let ns = time::ticks_to_ns(rdtsc() - start);
    let distinct = seen.iter().filter(|&&c| c > 0).count();
    let ok = distinct > 1 || want == 1;
    bh!(
        "check name=rng status={} bytes={} distinct={} requests={} seconds={}{}",
        ctx.checks.record(ok),
        got,
        distinct,
        requests,
        Fixed(ns / 1_000_000, 3),
        if ok { "" } else { " text=the device returned one byte value only" }
    );
    Ok(())
}
