//! Token buckets and the rate limiter built of two of them, as pure arithmetic over a time the
//! caller passes in (nanoseconds on any monotonic clock), so that tests drive them with a fake
//! clock.
//!
//! A bucket holds at most `size` tokens and gains `size` tokens every `refill_time` (smoothly:
//! `size / refill_time` per nanosecond, kept exactly in scaled integers, so nothing drifts). It
//! starts full. `one_time_burst` tokens are there once, beside the bucket, spent first and never
//! refilled. A request that asks for more than the bucket can hold (a 4 MiB write against a
//! 1 MiB bucket) would never fit: it goes through once the bucket is full and leaves the bucket
//! in debt for the excess, which the refill pays back before anything else goes — so the rate
//! over time holds, and no request waits forever. (Firecracker lets such a request through the
//! same way.)

use super::spec::{BucketSpec, LimiterSpec};

const NS_PER_MS: i128 = 1_000_000;

/// One token bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    spec: BucketSpec,
    /// Tokens in the bucket, in units of `1 / refill_ns` token (refilling adds `size` units
    /// per nanosecond). Negative: in debt after an oversized request.
    budget: i128,
    /// One-time burst tokens left.
    burst: u64,
    /// When `budget` was last brought up to date.
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket as `spec` describes it, at time `now_ns`; `None` if `spec` is unlimited.
    pub fn new(spec: BucketSpec, now_ns: u64) -> Option<TokenBucket> {
        if spec.is_unlimited() {
            return None;
        }
        let mut b = TokenBucket { spec, budget: 0, burst: spec.one_time_burst, last_ns: now_ns };
        b.budget = b.capacity();
        Some(b)
    }

    fn refill_ns(&self) -> i128 {
        i128::from(self.spec.refill_time_ms) * NS_PER_MS
    }

    fn capacity(&self) -> i128 {
        i128::from(self.spec.size) * self.refill_ns()
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        let gained = i128::from(elapsed) * i128::from(self.spec.size);
        self.budget = (self.budget + gained).min(self.capacity());
    }

    /// Scaled units `tokens` take from the bucket once the burst is spent.
    fn units(&self, tokens: u64) -> i128 {
        i128::from(tokens - tokens.min(self.burst)) * self.refill_ns()
    }

    /// Nanoseconds until `tokens` can be taken (0: now).
    pub fn wait_ns(&mut self, now_ns: u64, tokens: u64) -> u64 {
        self.refill(now_ns);
        let units = self.units(tokens);
        if units == 0 {
            return 0;
        }
        // An oversized request waits for a full bucket, then goes into debt.
        let needed = units.min(self.capacity());
        if self.budget >= needed {
            return 0;
        }
        let short = needed - self.budget;
        let size = i128::from(self.spec.size);
        u64::try_from((short + size - 1) / size).unwrap_or(u64::MAX)
    }

    /// Takes `tokens` (after [`TokenBucket::wait_ns`] said 0): the burst first, then the bucket.
    pub fn take(&mut self, tokens: u64) {
        let units = self.units(tokens);
        self.burst -= tokens.min(self.burst);
        self.budget -= units;
    }

    /// Whole tokens in the bucket now (the burst not counted; negative in debt).
    pub fn tokens(&mut self, now_ns: u64) -> i128 {
        self.refill(now_ns);
        self.budget / self.refill_ns()
    }

    /// One-time burst tokens left.
    pub fn burst_left(&self) -> u64 {
        self.burst
    }
}

/// A bandwidth bucket (bytes) and an operations bucket, either optional: what one queue (or
/// one direction of a net device) may do.
#[derive(Clone, Debug, Default)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// Full buckets as `spec` says, at time `now_ns`.
    pub fn new(spec: &LimiterSpec, now_ns: u64) -> RateLimiter {
        RateLimiter {
            bandwidth: spec.bandwidth.and_then(|b| TokenBucket::new(b, now_ns)),
            ops: spec.ops.and_then(|b| TokenBucket::new(b, now_ns)),
        }
    }

    /// Whether neither bucket limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Takes `bytes` and one operation at `now_ns`, both or neither; `Err(ns)`: ask again in
    /// that many nanoseconds.
    pub fn consume(&mut self, now_ns: u64, bytes: u64) -> Result<(), u64> {
        let bw = self.bandwidth.as_mut().map_or(0, |b| b.wait_ns(now_ns, bytes));
        let ops = self.ops.as_mut().map_or(0, |b| b.wait_ns(now_ns, 1));
        let wait = bw.max(ops);
        if wait > 0 {
            return Err(wait);
        }
        if let Some(b) = &mut self.bandwidth {
            b.take(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.take(1);
        }
        Ok(())
    }

    /// The bandwidth bucket, if limited.
    pub fn bandwidth(&mut self) -> Option<&mut TokenBucket> {
        self.bandwidth.as_mut()
    }

    /// The operations bucket, if limited.
    pub fn ops(&mut self) -> Option<&mut TokenBucket> {
        self.ops.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn bucket(size: u64, one_time_burst: u64, refill_time_ms: u64) -> BucketSpec {
        BucketSpec { size, one_time_burst, refill_time_ms }
    }

    #[test]
    fn a_bucket_starts_full_and_refills_at_its_rate() {
        let mut b = TokenBucket::new(bucket(100, 0, 100), 0).unwrap();
        assert_eq!(b.tokens(0), 100);
        assert_eq!(b.wait_ns(0, 100), 0);
        b.take(100);
        assert_eq!(b.tokens(0), 0);
        // 100 tokens per 100 ms: one per millisecond.
        assert_eq!(b.wait_ns(0, 1), MS);
        assert_eq!(b.wait_ns(0, 10), 10 * MS);
        assert_eq!(b.tokens(5 * MS), 5);
        assert_eq!(b.wait_ns(5 * MS, 10), 5 * MS);
        // Never more than its size.
        assert_eq!(b.tokens(10_000 * MS), 100);
    }

    #[test]
    fn the_rate_holds_exactly_over_many_small_requests() {
        // 3 tokens per 7 ms does not divide evenly: the scaled arithmetic must not drift.
        let mut b = TokenBucket::new(bucket(3, 0, 7), 0).unwrap();
        let (mut now, mut taken) = (0u64, 0u64);
        while now <= 7_000 * MS {
            match b.wait_ns(now, 1) {
                0 => {
                    b.take(1);
                    taken += 1;
                }
                wait => now += wait,
            }
        }
        // 3 at the start, then 3 per 7 ms for 7 s.
        assert_eq!(taken, 3 + 3000, "taken {taken}");
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_once() {
        let mut b = TokenBucket::new(bucket(10, 50, 1000), 0).unwrap();
        assert_eq!(b.wait_ns(0, 40), 0);
        b.take(40);
        assert_eq!((b.burst_left(), b.tokens(0)), (10, 10));
        assert_eq!(b.wait_ns(0, 20), 0, "10 of burst and 10 of bucket");
        b.take(20);
        assert_eq!((b.burst_left(), b.tokens(0)), (0, 0));
        // A full refill later, only the bucket is back.
        assert_eq!(b.tokens(1000 * MS), 10);
        assert_eq!(b.burst_left(), 0);
        assert_eq!(b.wait_ns(1000 * MS, 10), 0);
        b.take(10);
        assert_eq!(b.wait_ns(1000 * MS, 5), 500 * MS);
    }

    #[test]
    fn an_oversized_request_goes_on_a_full_bucket_and_leaves_a_debt() {
        let mut b = TokenBucket::new(bucket(100, 0, 100), 0).unwrap();
        b.take(1);
        // Larger than the bucket: waits for it to be full, not forever.
        assert_eq!(b.wait_ns(0, 250), MS);
        assert_eq!(b.wait_ns(MS, 250), 0);
        b.take(250);
        assert_eq!(b.tokens(MS), -150);
        // The debt is paid before anything else goes: 151 ms for the next token.
        assert_eq!(b.wait_ns(MS, 1), 151 * MS);
        // Zero tokens never wait (a flush against a bandwidth bucket).
        assert_eq!(b.wait_ns(MS, 0), 0);
    }

    #[test]
    fn unlimited_buckets_do_not_exist() {
        assert!(TokenBucket::new(bucket(0, 10, 100), 0).is_none());
        assert!(TokenBucket::new(bucket(10, 10, 0), 0).is_none());
        let mut l = RateLimiter::new(&LimiterSpec::default(), 0);
        assert!(l.is_unlimited());
        assert_eq!(l.consume(0, u64::MAX), Ok(()));
    }

    #[test]
    fn a_limiter_takes_both_buckets_or_neither() {
        let spec =
            LimiterSpec { bandwidth: Some(bucket(1000, 0, 1000)), ops: Some(bucket(2, 0, 1000)) };
        let mut l = RateLimiter::new(&spec, 0);
        assert!(!l.is_unlimited());
        assert_eq!(l.consume(0, 600), Ok(()));
        // Bandwidth is short (400 left): nothing is taken from ops either.
        assert_eq!(l.consume(0, 600), Err(200 * MS));
        assert_eq!(l.ops().unwrap().tokens(0), 1);
        assert_eq!(l.consume(0, 100), Ok(()));
        // Now ops is short: 500 ms for one operation.
        assert_eq!(l.consume(0, 0), Err(500 * MS));
        assert_eq!(l.bandwidth().unwrap().tokens(0), 300);
        assert_eq!(l.consume(500 * MS, 0), Ok(()));
    }

    #[test]
    fn a_new_limiter_starts_full_whatever_the_old_one_had_spent() {
        let spec = LimiterSpec { bandwidth: None, ops: Some(bucket(5, 0, 1000)) };
        let mut l = RateLimiter::new(&spec, 0);
        for _ in 0..5 {
            assert_eq!(l.consume(0, 0), Ok(()));
        }
        assert!(l.consume(0, 0).is_err());
        let mut l = RateLimiter::new(&spec, 0);
        assert_eq!(l.consume(0, 0), Ok(()), "reconfiguration resets the buckets");
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let mut b = TokenBucket::new(bucket(10, 0, 10), 100 * MS).unwrap();
        b.take(10);
        assert_eq!(b.tokens(50 * MS), 0);
        assert_eq!(b.tokens(101 * MS), 1);
    }
}
