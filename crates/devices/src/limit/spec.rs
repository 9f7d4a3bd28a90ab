//! What a user asks of a rate limiter, and its text form on the command line.
//!
//! A bucket is `SIZE@MS[+BURST]`: `SIZE` tokens (bytes for bandwidth, operations for ops) every
//! `MS` milliseconds, and `BURST` extra tokens once; `none` is no limit. `SIZE` and `BURST` take
//! the binary suffixes `K`, `M`, `G` (`10M` is 10 MiB). The keys: `bw=` and `ops=` (a disk, the
//! rng), `rx-bw=`, `rx-ops=`, `tx-bw=`, `tx-ops=` (a network interface; rx is what the guest
//! receives).

use std::fmt;
use std::str::FromStr;

use crate::DeviceError;

/// The largest bucket size or burst accepted: 1 PiB (or 2^50 operations).
pub const MAX_TOKENS: u64 = 1 << 50;
/// The longest refill time accepted: one hour.
pub const MAX_REFILL_MS: u64 = 3_600_000;

/// One token bucket, as Firecracker's API describes one: `size` tokens refilled every
/// `refill_time_ms`, plus `one_time_burst` tokens once. Size or refill time 0: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketSpec {
    /// Tokens the bucket holds, and gains every refill time.
    pub size: u64,
    /// Extra tokens at the start, not refilled.
    pub one_time_burst: u64,
    /// Milliseconds to refill `size` tokens from empty.
    pub refill_time_ms: u64,
}

impl BucketSpec {
    /// Whether the bucket limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.size == 0 || self.refill_time_ms == 0
    }

    /// Checks the bounds ([`MAX_TOKENS`], [`MAX_REFILL_MS`]); the error says which is out.
    pub fn check(&self) -> Result<(), String> {
        if self.size > MAX_TOKENS || self.one_time_burst > MAX_TOKENS {
            return Err(format!("a bucket holds at most {MAX_TOKENS} tokens (1 PiB)"));
        }
        if self.refill_time_ms > MAX_REFILL_MS {
            return Err(format!("a refill time is at most {MAX_REFILL_MS} ms (one hour)"));
        }
        Ok(())
    }
}

/// How a bucket is written: `SIZE@MS[+BURST]`, or `none`.
const BUCKET_FORM: &str = "SIZE@MS[+BURST] (e.g. 10M@1000: 10 MiB per second; \
                           500@100+1000: 500 per 100 ms and 1000 more once) or none";

impl FromStr for BucketSpec {
    type Err = String;

    /// `SIZE@MS[+BURST]` or `none`; the error names the accepted form.
    fn from_str(s: &str) -> Result<BucketSpec, String> {
        if s == "none" || s == "off" {
            return Ok(BucketSpec::default());
        }
        let bad = || format!("{s:?} is not a bucket; use {BUCKET_FORM}");
        let (size, rest) = s.split_once('@').ok_or_else(bad)?;
        let (ms, burst) = match rest.split_once('+') {
            Some((ms, burst)) => (ms, Some(burst)),
            None => (rest, None),
        };
        let spec = BucketSpec {
            size: parse_size(size).ok_or_else(bad)?,
            refill_time_ms: ms.parse().map_err(|_| bad())?,
            one_time_burst: burst.map(parse_size).unwrap_or(Some(0)).ok_or_else(bad)?,
        };
        spec.check().map_err(|why| format!("{s:?}: {why}"))?;
        Ok(spec)
    }
}

impl fmt::Display for BucketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unlimited() {
            return f.write_str("none");
        }
        write!(f, "{}@{}", self.size, self.refill_time_ms)?;
        if self.one_time_burst > 0 {
            write!(f, "+{}", self.one_time_burst)?;
        }
        Ok(())
    }
}

/// A number with an optional binary suffix (`K`, `M`, `G`).
fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 10),
        (i, 'M' | 'm') => (&s[..i], 20),
        (i, 'G' | 'g') => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift)
}

/// A rate limiter's two buckets; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterSpec {
    /// Bytes.
    pub bandwidth: Option<BucketSpec>,
    /// Operations (requests, packets).
    pub ops: Option<BucketSpec>,
}

impl LimiterSpec {
    /// Whether neither bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        let none = |b: Option<BucketSpec>| b.is_none_or(|b| b.is_unlimited());
        none(self.bandwidth) && none(self.ops)
    }
}

/// Limiters per device: blk and rng use [`MAIN`]; net uses [`RX`] and [`TX`].
pub const SLOTS: usize = 2;
/// The one limiter of a disk or an rng.
pub const MAIN: usize = 0;
/// What a network interface delivers to the guest.
pub const RX: usize = 0;
/// What the guest sends.
pub const TX: usize = 1;

/// Every limiter of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceLimits(pub [LimiterSpec; SLOTS]);

impl DeviceLimits {
    /// Reads one `key=value` option into the limiter it names, if `key` is one of `keys`
    /// (`bw`, `ops` for blk and rng; `rx-bw`, `rx-ops`, `tx-bw`, `tx-ops` for net). `Ok(false)`:
    /// not a rate-limit key.
    pub fn set_option(&mut self, keys: Keys, key: &str, value: &str) -> Result<bool, DeviceError> {
        let Some((slot, ops)) = keys.find(key) else { return Ok(false) };
        let bucket: BucketSpec =
            value.parse().map_err(|why| DeviceError::Config(format!("{key}={value}: {why}")))?;
        let bucket = (!bucket.is_unlimited()).then_some(bucket);
        let limiter = &mut self.0[slot];
        if ops {
            limiter.ops = bucket;
        } else {
            limiter.bandwidth = bucket;
        }
        Ok(true)
    }

    /// Writes the limits as `,key=value` options that [`DeviceLimits::set_option`] reads back.
    pub fn write_options(&self, keys: Keys, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &(key, slot, ops) in keys.0 {
            let l = &self.0[slot];
            if let Some(b) = if ops { l.ops } else { l.bandwidth } {
                write!(f, ",{key}={b}")?;
            }
        }
        Ok(())
    }

    /// Whether no limiter limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.0.iter().all(LimiterSpec::is_unlimited)
    }

    /// Reads a whole option list of `keys` only: `rx-bw=1M@1000,tx-ops=100@100`.
    pub fn parse(keys: Keys, s: &str) -> Result<DeviceLimits, DeviceError> {
        let mut limits = DeviceLimits::default();
        for (key, value) in crate::options(s) {
            if !limits.set_option(keys, key, value)? {
                return Err(DeviceError::Config(format!(
                    "{key:?} is not a rate limit; use {}",
                    keys.describe()
                )));
            }
        }
        Ok(limits)
    }
}

/// The option keys of a device kind: (key, slot, ops?).
#[derive(Clone, Copy, Debug)]
pub struct Keys(pub &'static [(&'static str, usize, bool)]);

impl Keys {
    /// A disk's and the rng's: `bw`, `ops`.
    pub const ONE: Keys = Keys(&[("bw", MAIN, false), ("ops", MAIN, true)]);
    /// A network interface's.
    pub const NET: Keys = Keys(&[
        ("rx-bw", RX, false),
        ("rx-ops", RX, true),
        ("tx-bw", TX, false),
        ("tx-ops", TX, true),
    ]);

    fn find(self, key: &str) -> Option<(usize, bool)> {
        self.0.iter().find(|(k, _, _)| *k == key).map(|&(_, slot, ops)| (slot, ops))
    }

    /// The keys, for an error message: `bw=SIZE@MS[+BURST], ops=N@MS[+BURST]`.
    pub fn describe(self) -> String {
        let form = |ops: bool| if ops { "N@MS[+BURST]" } else { "SIZE@MS[+BURST]" };
        self.0
            .iter()
            .map(|(k, _, ops)| format!("{k}={}", form(*ops)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_parse_with_suffixes_and_bursts() {
        let b: BucketSpec = "10M@1000".parse().unwrap();
        assert_eq!(b, BucketSpec { size: 10 << 20, one_time_burst: 0, refill_time_ms: 1000 });
        let b: BucketSpec = "500@100+2K".parse().unwrap();
        assert_eq!(b, BucketSpec { size: 500, one_time_burst: 2048, refill_time_ms: 100 });
        assert!("none".parse::<BucketSpec>().unwrap().is_unlimited());
        for bad in ["", "10M", "10M@", "@100", "1X@100", "10@1s", "10@100+", "2000T@1", "1@9999999"]
        {
            let err = bad.parse::<BucketSpec>().unwrap_err();
            assert!(err.contains("SIZE@MS") || err.contains("at most"), "{bad}: {err}");
        }
        assert!("1@3600001".parse::<BucketSpec>().unwrap_err().contains("one hour"));
        assert!("2000000G@1".parse::<BucketSpec>().unwrap_err().contains("1 PiB"));
    }

    #[test]
    fn options_name_their_limiter_and_read_back() {
        struct Show(DeviceLimits, Keys);
        impl fmt::Display for Show {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write_options(self.1, f)
            }
        }
        let mut l = DeviceLimits::default();
        assert!(l.set_option(Keys::NET, "tx-bw", "1M@100").unwrap());
        assert!(l.set_option(Keys::NET, "rx-ops", "10@1+5").unwrap());
        assert!(!l.set_option(Keys::NET, "bw", "1M@100").unwrap(), "not a net key");
        assert_eq!(l.0[TX].bandwidth.unwrap().size, 1 << 20);
        assert_eq!(l.0[RX].ops.unwrap().one_time_burst, 5);
        let text = Show(l, Keys::NET).to_string();
        assert_eq!(text, ",rx-ops=10@1+5,tx-bw=1048576@100");
        let err = l.set_option(Keys::ONE, "bw", "fast").unwrap_err().to_string();
        assert!(err.starts_with("bw=fast: ") && err.contains("10M@1000"), "{err}");
        assert!(l.set_option(Keys::NET, "tx-bw", "none").unwrap());
        assert!(l.0[TX].bandwidth.is_none());
        assert_eq!(Keys::ONE.describe(), "bw=SIZE@MS[+BURST], ops=N@MS[+BURST]");
    }
}
