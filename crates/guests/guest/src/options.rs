//! The workloads' `bulkhead.*` command-line options, parsed into typed
//! settings with their defaults. Every option a workload reads is listed
//! here (the workload modules document what they do with them):
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `bulkhead.irq=0\|1` | complete requests by interrupt, not by polling | 0 |
//! | `bulkhead.timeout_ms=` | deadline for any one request | 5000 |
//! | `bulkhead.disk=N` | which virtio-blk device (in discovery order) | 0 |
//! | `bulkhead.bytes=` | bytes of disk to use / of rng to read / of the pattern console echoes | whole disk / 4096 / 64K |
//! | `bulkhead.bs=` | request size | 64K (verify), 4096 (bench) |
//! | `bulkhead.seed=` | pattern seed (see `pattern`) | 1 |
//! | `bulkhead.mode=` | blk-bench: randread, randwrite, seqread, seqwrite; net-bench: pingpong, tx | randread / pingpong |
//! | `bulkhead.qd=` | blk-bench: requests in flight | 1 |
//! | `bulkhead.seconds=` / `bulkhead.ops=` | benchmark length (seconds may have decimals) | 5 seconds |
//! | `bulkhead.flush=1` | blk-bench randwrite: a FLUSH after each write | 0 |
//! | `bulkhead.ip=` `bulkhead.peer=` `bulkhead.mac=` | net: address/prefix, peer, MAC | 10.0.2.15/24, 10.0.2.1, the device's |
//! | `bulkhead.count=` | net-ping: echo requests; console: lines echoed (or for `seconds`) | 4; 8 |
//! | `bulkhead.size=` | net-bench tx: UDP payload bytes | 1024 |
//! | `bulkhead.retry_ms=` | console: a line not echoed by then is sent again | 1000 |
//!
//! Sizes take K, M and G suffixes (binary) and 0x-prefixed hex.

use core::fmt;

use crate::cmdline::{parse_size, Cmdline};
use crate::packet::{parse_cidr, parse_ip, parse_mac, Ip, Mac};

/// The largest request the block workloads issue.
pub const MAX_BS: u64 = 4 << 20;
/// The most block requests in flight.
pub const MAX_QD: u64 = 64;
/// The largest UDP payload in one unfragmented Ethernet frame.
pub const MAX_UDP_PAYLOAD: u64 = 1500 - 20 - 8;

/// An option with a value the workload cannot use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptError {
    pub key: &'static str,
    pub why: &'static str,
}

impl fmt::Display for OptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bulkhead.{} {}", self.key, self.why)
    }
}

type Result<T> = core::result::Result<T, OptError>;

fn err<T>(key: &'static str, why: &'static str) -> Result<T> {
    Err(OptError { key, why })
}

/// The value of the last `bulkhead.<key>=value` option.
fn get<'a>(c: &Cmdline<'a>, key: &str) -> Option<&'a str> {
    c.text()
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("bulkhead.")?.split_once('='))
        .rfind(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Reads a numeric `bulkhead.<key>`: `None` if absent, an error if it does
/// not parse.
fn size(c: &Cmdline, key: &'static str) -> Result<Option<u64>> {
    match get(c, key) {
        None => Ok(None),
        Some(v) => parse_size(v).map(Some).ok_or(OptError { key, why: "is not a number" }),
    }
}

/// Parses seconds with up to three decimals into milliseconds.
pub fn parse_ms(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || (whole.is_empty() && frac.is_empty()) {
        return None;
    }
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(frac) {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut ms: u64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        ms += u64::from(b - b'0') * [100, 10, 1][i];
    }
    whole.checked_mul(1000)?.checked_add(ms)
}

/// Settings every device workload shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Common {
    pub irq: bool,
    pub timeout_ms: u64,
}

impl Common {
    pub fn parse(c: &Cmdline) -> Result<Common> {
        let irq = match get(c, "irq") {
            None | Some("0") => false,
            Some("1") => true,
            Some(_) => return err("irq", "must be 0 or 1"),
        };
        let timeout_ms = size(c, "timeout_ms")?.unwrap_or(5000);
        if timeout_ms == 0 {
            return err("timeout_ms", "must be above 0");
        }
        Ok(Common { irq, timeout_ms })
    }
}

/// How long a benchmark runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    Millis(u64),
    Ops(u64),
}

fn length(c: &Cmdline) -> Result<Length> {
    if let Some(ops) = size(c, "ops")? {
        return if ops == 0 { err("ops", "must be above 0") } else { Ok(Length::Ops(ops)) };
    }
    match get(c, "seconds").map(parse_ms) {
        None => Ok(Length::Millis(5000)),
        Some(Some(ms)) if ms > 0 => Ok(Length::Millis(ms)),
        Some(_) => err("seconds", "must be a positive number of seconds"),
    }
}

/// blk-verify, blk-read-verify and blk-ro.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkVerify {
    pub disk: usize,
    pub bytes: Option<u64>,
    pub bs: u64,
    pub seed: u64,
}

fn bs(c: &Cmdline, default: u64) -> Result<u64> {
    let bs = size(c, "bs")?.unwrap_or(default);
    if bs == 0 || !bs.is_multiple_of(512) {
        return err("bs", "must be a positive multiple of 512");
    }
    if bs > MAX_BS {
        return err("bs", "must be at most 4M");
    }
    Ok(bs)
}

impl BlkVerify {
    pub fn parse(c: &Cmdline) -> Result<BlkVerify> {
        Ok(BlkVerify {
            disk: size(c, "disk")?.unwrap_or(0) as usize,
            bytes: size(c, "bytes")?,
            bs: bs(c, 64 << 10)?,
            seed: size(c, "seed")?.unwrap_or(1),
        })
    }
}

/// blk-bench's access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkMode {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

impl BlkMode {
    pub fn name(self) -> &'static str {
        match self {
            BlkMode::RandRead => "randread",
            BlkMode::RandWrite => "randwrite",
            BlkMode::SeqRead => "seqread",
            BlkMode::SeqWrite => "seqwrite",
        }
    }

    pub fn writes(self) -> bool {
        matches!(self, BlkMode::RandWrite | BlkMode::SeqWrite)
    }

    pub fn random(self) -> bool {
        matches!(self, BlkMode::RandRead | BlkMode::RandWrite)
    }
}

/// blk-bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkBench {
    pub disk: usize,
    pub mode: BlkMode,
    pub bytes: Option<u64>,
    pub bs: u64,
    pub qd: u64,
    pub length: Length,
    pub flush: bool,
    pub seed: u64,
}

impl BlkBench {
    pub fn parse(c: &Cmdline) -> Result<BlkBench> {
        let mode = match get(c, "mode").unwrap_or("randread") {
            "randread" => BlkMode::RandRead,
            "randwrite" => BlkMode::RandWrite,
            "seqread" => BlkMode::SeqRead,
            "seqwrite" => BlkMode::SeqWrite,
            _ => return err("mode", "must be randread, randwrite, seqread or seqwrite"),
        };
        let qd = size(c, "qd")?.unwrap_or(1);
        if qd == 0 || qd > MAX_QD {
            return err("qd", "must be between 1 and 64");
        }
        let flush = match get(c, "flush") {
            None | Some("0") => false,
            Some("1") => true,
            Some(_) => return err("flush", "must be 0 or 1"),
        };
        if flush && !mode.writes() {
            return err("flush", "needs a write mode");
        }
        Ok(BlkBench {
            disk: size(c, "disk")?.unwrap_or(0) as usize,
            mode,
            bytes: size(c, "bytes")?,
            bs: bs(c, 4096)?,
            qd,
            length: length(c)?,
            flush,
            seed: size(c, "seed")?.unwrap_or(1),
        })
    }
}

/// rng.
pub fn rng_bytes(c: &Cmdline) -> Result<u64> {
    match size(c, "bytes")?.unwrap_or(4096) {
        0 => err("bytes", "must be above 0"),
        n if n > 64 << 20 => err("bytes", "must be at most 64M"),
        n => Ok(n),
    }
}

/// net-bench's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetMode {
    PingPong,
    Tx,
}

/// net-ping and net-bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    pub ip: Ip,
    pub prefix: u8,
    pub peer: Ip,
    pub mac: Option<Mac>,
    pub count: u64,
    pub mode: NetMode,
    pub length: Length,
    pub size: u64,
}

impl Net {
    pub fn parse(c: &Cmdline) -> Result<Net> {
        let (ip, prefix) = match get(c, "ip") {
            None => ([10, 0, 2, 15], 24),
            Some(v) => parse_cidr(v)
                .ok_or(OptError { key: "ip", why: "must be an IPv4 address/prefix" })?,
        };
        let peer = match get(c, "peer") {
            None => [10, 0, 2, 1],
            Some(v) => {
                parse_ip(v).ok_or(OptError { key: "peer", why: "must be an IPv4 address" })?
            }
        };
        let mac = match get(c, "mac") {
            None => None,
            Some(v) => Some(
                parse_mac(v).ok_or(OptError { key: "mac", why: "must be aa:bb:cc:dd:ee:ff" })?,
            ),
        };
        let mode = match get(c, "mode").unwrap_or("pingpong") {
            "pingpong" => NetMode::PingPong,
            "tx" => NetMode::Tx,
            _ => return err("mode", "must be pingpong or tx"),
        };
        let size = size(c, "size")?.unwrap_or(1024);
        if size > MAX_UDP_PAYLOAD {
            return err("size", "must be at most 1472 (one unfragmented frame)");
        }
        let count = size_or(c, "count", 4)?;
        Ok(Net { ip, prefix, peer, mac, count, mode, length: length(c)?, size })
    }

    /// Whether `addr` is on the guest's own subnet.
    pub fn on_link(&self, addr: Ip) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
        u32::from_be_bytes(addr) & mask == u32::from_be_bytes(self.ip) & mask
    }
}

/// console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Console {
    /// How many lines, or for how long, one at a time.
    pub lines: Length,
    /// Bytes of the pattern streamed after the lines (0: none).
    pub bytes: u64,
    pub seed: u64,
    pub retry_ms: u64,
}

impl Console {
    pub fn parse(c: &Cmdline) -> Result<Console> {
        let lines = match get(c, "seconds").map(parse_ms) {
            None => Length::Ops(size_or(c, "count", 8)?),
            Some(Some(ms)) if ms > 0 => Length::Millis(ms),
            Some(_) => return err("seconds", "must be a positive number of seconds"),
        };
        let bytes = size(c, "bytes")?.unwrap_or(64 << 10);
        if bytes > 64 << 20 {
            return err("bytes", "must be at most 64M");
        }
        let seed = size(c, "seed")?.unwrap_or(1);
        Ok(Console { lines, bytes, seed, retry_ms: size_or(c, "retry_ms", 1000)? })
    }
}

fn size_or(c: &Cmdline, key: &'static str, default: u64) -> Result<u64> {
    match size(c, key)?.unwrap_or(default) {
        0 => err(key, "must be above 0"),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_with_decimals() {
        assert_eq!(parse_ms("2"), Some(2000));
        assert_eq!(parse_ms("0.25"), Some(250));
        assert_eq!(parse_ms(".5"), Some(500));
        assert_eq!(parse_ms("1.2345"), None);
        assert_eq!(parse_ms("x"), None);
        assert_eq!(parse_ms(""), None);
        assert_eq!(parse_ms("-1"), None);
    }

    #[test]
    fn defaults() {
        let c = Cmdline::new("bulkhead.run=blk-verify");
        assert_eq!(Common::parse(&c), Ok(Common { irq: false, timeout_ms: 5000 }));
        assert_eq!(
            BlkVerify::parse(&c),
            Ok(BlkVerify { disk: 0, bytes: None, bs: 65536, seed: 1 })
        );
        let b = BlkBench::parse(&c).unwrap();
        assert_eq!(
            (b.mode, b.bs, b.qd, b.length, b.flush),
            (BlkMode::RandRead, 4096, 1, Length::Millis(5000), false)
        );
        assert_eq!(rng_bytes(&c), Ok(4096));
        let n = Net::parse(&c).unwrap();
        assert_eq!(
            (n.ip, n.prefix, n.peer, n.mac, n.count),
            ([10, 0, 2, 15], 24, [10, 0, 2, 1], None, 4)
        );
        assert!(n.on_link([10, 0, 2, 200]) && !n.on_link([10, 0, 3, 1]));
    }

    #[test]
    fn values_and_refusals() {
        let c = Cmdline::new(
            "bulkhead.irq=1 bulkhead.bs=16K bulkhead.bytes=1M bulkhead.mode=randwrite \
             bulkhead.qd=8 bulkhead.ops=1000 bulkhead.flush=1 bulkhead.disk=1 bulkhead.seed=0x42",
        );
        assert!(Common::parse(&c).unwrap().irq);
        let b = BlkBench::parse(&c).unwrap();
        assert_eq!(
            b,
            BlkBench {
                disk: 1,
                mode: BlkMode::RandWrite,
                bytes: Some(1 << 20),
                bs: 16384,
                qd: 8,
                length: Length::Ops(1000),
                flush: true,
                seed: 0x42
            }
        );
        let bad = |text: &str| BlkBench::parse(&Cmdline::new(text)).unwrap_err().key;
        assert_eq!(bad("bulkhead.bs=1000"), "bs");
        assert_eq!(bad("bulkhead.bs=8M"), "bs");
        assert_eq!(bad("bulkhead.qd=0"), "qd");
        assert_eq!(bad("bulkhead.qd=65"), "qd");
        assert_eq!(bad("bulkhead.mode=sideways"), "mode");
        assert_eq!(bad("bulkhead.flush=1"), "flush");
        assert_eq!(bad("bulkhead.seconds=0"), "seconds");
        assert_eq!(bad("bulkhead.bytes=lots"), "bytes");
        let e = Common::parse(&Cmdline::new("bulkhead.irq=yes")).unwrap_err();
        assert_eq!(e.to_string(), "bulkhead.irq must be 0 or 1");
    }

    #[test]
    fn net_values() {
        let c = Cmdline::new(
            "bulkhead.ip=192.168.1.2/16 bulkhead.peer=192.168.7.7 bulkhead.mac=02:00:00:00:00:09 \
             bulkhead.mode=tx bulkhead.size=1472 bulkhead.seconds=1.5 bulkhead.count=10",
        );
        let n = Net::parse(&c).unwrap();
        assert_eq!((n.ip, n.prefix, n.peer), ([192, 168, 1, 2], 16, [192, 168, 7, 7]));
        assert_eq!((n.mac, n.mode, n.size), (Some([2, 0, 0, 0, 0, 9]), NetMode::Tx, 1472));
        assert_eq!((n.length, n.count), (Length::Millis(1500), 10));
        assert!(n.on_link([192, 168, 7, 7]));
        let bad = |text: &str| Net::parse(&Cmdline::new(text)).unwrap_err().key;
        assert_eq!(bad("bulkhead.size=1473"), "size");
        assert_eq!(bad("bulkhead.ip=10.0.2.15/40"), "ip");
        assert_eq!(bad("bulkhead.mac=zz"), "mac");
        assert_eq!(bad("bulkhead.count=0"), "count");
    }

    #[test]
    fn console_options() {
        let parse = |s| Console::parse(&Cmdline::new(s));
        let d = parse("").unwrap();
        assert_eq!((d.lines, d.bytes, d.seed, d.retry_ms), (Length::Ops(8), 65536, 1, 1000));
        let o = parse("bulkhead.seconds=2.5 bulkhead.bytes=0 bulkhead.retry_ms=300").unwrap();
        assert_eq!((o.lines, o.bytes, o.retry_ms), (Length::Millis(2500), 0, 300));
        assert_eq!(parse("bulkhead.count=3").unwrap().lines, Length::Ops(3));
        assert_eq!(parse("bulkhead.retry_ms=0").unwrap_err().key, "retry_ms");
        assert_eq!(parse("bulkhead.bytes=65M").unwrap_err().key, "bytes");
        assert_eq!(rng_bytes(&Cmdline::new("bulkhead.bytes=0")).unwrap_err().key, "bytes");
    }
}
