//! `console`: talks to the host through the first virtio-console device (port 0), whose host
//! side echoes every byte back (a test's client on the console's socket), in two parts:
//!
//! 1. **Lines**, one at a time: `console <i> <word>\n` for i = 0, 1, …, where `word` is the
//!    pattern's word i (`splitmix64(seed ^ i)`, 16 hex digits, seed `bulkhead.seed`), so the
//!    host can check them too; `bulkhead.count` lines (default 8), or as many as
//!    `bulkhead.seconds` allows. Each waits for its echo, and is sent again when none came in
//!    `bulkhead.retry_ms` (default 1000): a restarted device may have lost it (`resent`). An
//!    echo of a line already echoed (one sent again, or a transmit buffer a restarted device
//!    wrote twice) is counted (`stale`); any other line, or no echo within
//!    `bulkhead.timeout_ms`, fails.
//! 2. **A stream** of `bulkhead.bytes` (default 64K; 0: none) of the pattern, at most
//!    [`WINDOW`] bytes ahead of its echo (so the device never has to drop output that waits
//!    for the host), the echo checked byte by byte: nothing may be lost here.
//!
//! `BH check name=console status=ok lines=N resent=R stale=S bytes=B seconds=…`.

use core::fmt::Write as _;

use crate::arch::rdtsc;
use crate::bh;
use crate::options::{Console as Options, Length};
use crate::pattern;
use crate::report::Fixed;
use crate::time;
use crate::virtio::console::{Console, BUF_BYTES};

use super::{Ctx, Fail};

/// The longest line the workload sends (`console`, 20 digits, 16 hex digits).
const LINE_MAX: usize = 64;
/// Stream bytes sent and not yet echoed, at most.
pub const WINDOW: u64 = 16 << 10;

/// A line being assembled, or received.
struct Line {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Line {
    const fn new() -> Line {
        Line { buf: [0; LINE_MAX], len: 0 }
    }

    /// Line `i`, without its newline.
    fn numbered(i: u64, seed: u64) -> Line {
        let mut line = Line::new();
        let _ = write!(line, "console {} {:016x}", i, pattern::word(seed, i * 8));
        line
    }

    fn text(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Adds a received byte: the line, when `b` ends it.
    fn push(&mut self, b: u8) -> Result<Option<&[u8]>, Fail> {
        if b == b'\n' {
            let n = core::mem::take(&mut self.len);
            return Ok(Some(&self.buf[..n]));
        }
        if self.len == LINE_MAX {
            return Err(Fail::Text("the console echoed a line longer than any sent"));
        }
        self.buf[self.len] = b;
        self.len += 1;
        Ok(None)
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        if end > LINE_MAX {
            return Err(core::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The line number `text` claims to be (`console <i> …`).
fn number(text: &[u8]) -> Option<u64> {
    let rest = text.strip_prefix(b"console ")?;
    let digits = rest.split(|&b| b == b' ').next()?;
    crate::cmdline::parse_u64(core::str::from_utf8(digits).ok()?)
}

/// What the lines part counts.
#[derive(Default)]
struct Counts {
    /// Lines echoed.
    echoed: u64,
    resent: u64,
    stale: u64,
}

impl Counts {
    /// Takes a received line: the next one expected, or one echoed already.
    fn take(&mut self, text: &[u8], seed: u64) -> Result<(), Fail> {
        let genuine = number(text).filter(|&k| Line::numbered(k, seed).text() == text);
        match genuine {
            Some(k) if k == self.echoed => self.echoed += 1,
            Some(k) if k < self.echoed => self.stale += 1,
            _ => return Err(Fail::Text("the console echoed a line the guest did not send")),
        }
        Ok(())
    }
}

/// Feeds what the device returned now to `received` and `counts`.
fn take_lines(
    c: &mut Console,
    received: &mut Line,
    counts: &mut Counts,
    seed: u64,
) -> Result<(), Fail> {
    let mut chunk = [0u8; BUF_BYTES];
    while let Some(n) = c.recv(&mut chunk)? {
        for &b in &chunk[..n] {
            if let Some(text) = received.push(b)? {
                counts.take(text, seed)?;
            }
        }
    }
    Ok(())
}

/// Part 1: the lines.
fn lines(c: &mut Console, o: &Options, t: u64) -> Result<Counts, Fail> {
    let end = match o.lines {
        Length::Millis(ms) => time::deadline_ms(ms),
        Length::Ops(_) => u64::MAX,
    };
    let mut counts = Counts::default();
    let mut received = Line::new();
    loop {
        let i = counts.echoed;
        let done = match o.lines {
            Length::Ops(n) => i >= n,
            Length::Millis(_) => time::passed(end),
        };
        if done {
            break;
        }
        let mut line = Line::numbered(i, o.seed);
        let _ = line.write_str("\n");
        let give_up = time::deadline_ms(t);
        while counts.echoed == i {
            c.send(line.text(), give_up)?;
            let retry = time::deadline_ms(o.retry_ms).min(give_up);
            loop {
                take_lines(c, &mut received, &mut counts, o.seed)?;
                if counts.echoed > i {
                    break;
                }
                if time::passed(give_up) {
                    return Err(Fail::Text("a line was not echoed before bulkhead.timeout_ms"));
                }
                if time::passed(retry) {
                    counts.resent += 1;
                    break;
                }
                c.wait_rx(retry)?;
            }
        }
    }
    // A line sent again may be echoed twice, the second time late: before the stream, wait
    // until the console has been quiet for `retry_ms`.
    if counts.resent > 0 && o.bytes > 0 {
        let mut quiet = time::deadline_ms(o.retry_ms);
        while !time::passed(quiet) {
            let before = counts.stale;
            take_lines(c, &mut received, &mut counts, o.seed)?;
            if counts.stale != before {
                quiet = time::deadline_ms(o.retry_ms);
            }
            c.wait_rx(quiet)?;
        }
    }
    Ok(counts)
}

/// The pattern's byte at stream offset `at`.
fn pattern_byte(seed: u64, at: u64) -> u8 {
    pattern::word(seed, at).to_le_bytes()[(at % 8) as usize]
}

/// Part 2: the stream.
fn stream(c: &mut Console, o: &Options, t: u64) -> Result<(), Fail> {
    let (mut sent, mut checked) = (0u64, 0u64);
    let mut out = [0u8; BUF_BYTES];
    let mut chunk = [0u8; BUF_BYTES];
    let mut give_up = time::deadline_ms(t);
    while checked < o.bytes {
        while sent < o.bytes && sent - checked < WINDOW {
            let n = (o.bytes - sent).min(WINDOW - (sent - checked)).min(BUF_BYTES as u64);
            for (i, b) in out[..n as usize].iter_mut().enumerate() {
                *b = pattern_byte(o.seed, sent + i as u64);
            }
            c.send(&out[..n as usize], time::deadline_ms(t))?;
            sent += n;
        }
        match c.recv(&mut chunk)? {
            Some(n) => {
                if checked + n as u64 > sent {
                    return Err(Fail::Text("the console echoed more than the guest sent"));
                }
                let at = |i: usize| checked + i as u64;
                if chunk[..n].iter().enumerate().any(|(i, &b)| b != pattern_byte(o.seed, at(i))) {
                    return Err(Fail::Text("the console's echo differs from what was sent"));
                }
                checked += n as u64;
                give_up = time::deadline_ms(t);
            }
            None if time::passed(give_up) => {
                return Err(Fail::Text("the console stopped echoing the stream"));
            }
            None => c.wait_rx(give_up)?,
        }
    }
    Ok(())
}

pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
    let t = ctx.common()?.timeout_ms;
    let o = Options::parse(ctx.cmdline)?;
    let c = ctx.devices().console()?;
    let start = rdtsc();
    let counts = lines(c, &o, t)?;
    stream(c, &o, t)?;
    let ns = time::ticks_to_ns(rdtsc() - start);
    bh!(
        "check name=console status={} lines={} resent={} stale={} bytes={} seconds={}",
        ctx.checks.record(true),
        counts.echoed,
        counts.resent,
        counts.stale,
        o.bytes,
        Fixed(ns / 1_000_000, 3)
    );
    Ok(())
}
