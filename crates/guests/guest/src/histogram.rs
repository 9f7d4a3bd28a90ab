//! A fixed-size latency histogram: recording is a few integer instructions
//! and never allocates, so it can run once per request in a benchmark loop.
//!
//! Buckets are log-linear (as in HdrHistogram): values below 32 have a
//! bucket each; above, every power of two is split into 32 equal buckets, so
//! a percentile is off by at most 1/32 (3%) of its value. A percentile is
//! reported as the middle of its bucket.

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Enough buckets for any `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// Counts of values (nanoseconds, say) in log-linear buckets.
pub struct Histogram {
    counts: [u32; BUCKETS],
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub const fn new() -> Self {
        Histogram { counts: [0; BUCKETS], total: 0, max: 0 }
    }

    fn bucket(value: u64) -> usize {
        if value < SUB as u64 {
            return value as usize;
        }
        let top = 63 - value.leading_zeros(); // >= SUB_BITS
        let shift = top - SUB_BITS;
        let sub = (value >> shift) as usize & (SUB - 1);
        (shift as usize + 1) * SUB + sub
    }

    /// The smallest value in bucket `b` and the bucket's width.
    fn bounds(b: usize) -> (u64, u64) {
        if b < SUB {
            return (b as u64, 1);
        }
        let shift = (b / SUB - 1) as u32;
        let sub = (b % SUB) as u64;
        ((SUB as u64 + sub) << shift, 1 << shift)
    }

    pub fn record(&mut self, value: u64) {
        let b = Self::bucket(value);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total += 1;
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value below which `per_mille`/1000 of the recorded values lie
    /// (the middle of its bucket, capped at the largest value seen); 0 if
    /// nothing was recorded.
    pub fn percentile(&self, per_mille: u64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        // The rank of the wanted value, 1-based, rounded up.
        let rank = (self.total * per_mille.min(1000)).div_ceil(1000).max(1);
        let mut seen = 0u64;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                let (low, width) = Self::bounds(b);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }

    /// How many recorded values lie in buckets wholly below `value`'s
    /// (so values within 3% under `value` may not be counted).
    pub fn count_below(&self, value: u64) -> u64 {
        let b = Self::bucket(value);
        self.counts[..b].iter().map(|&n| u64::from(n)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000u64).chain([u64::MAX / 2, u64::MAX]) {
            let b = Histogram::bucket(v);
            assert!(b >= last && b < BUCKETS, "value {v}");
            let (low, width) = Histogram::bounds(b);
            assert!(low <= v && v - low < width, "value {v} in bucket {b}");
            last = b;
        }
    }

    #[test]
    fn percentiles_are_within_three_percent() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 10_000);
        for (p, want) in [(500, 5_000_000u64), (990, 9_900_000), (1000, 10_000_000)] {
            let got = h.percentile(p);
            assert!(got.abs_diff(want) * 32 <= want, "p{p}: {got} vs {want}");
        }
        assert_eq!(h.percentile(1000), h.max());
        assert_eq!(h.count_below(1), 0);
        let below = h.count_below(5_000_000);
        assert!(below.abs_diff(5_000) <= 5_000 / 32, "{below}");
        assert_eq!(h.count_below(u64::MAX), 10_000);
    }

    #[test]
    fn small_and_empty_histograms() {
        let mut h = Histogram::new();
        assert_eq!(h.percentile(500), 0);
        h.record(7);
        assert_eq!(h.percentile(0), 7);
        assert_eq!(h.percentile(990), 7);
        h.record(3);
        assert_eq!(h.percentile(500), 3);
    }
}
