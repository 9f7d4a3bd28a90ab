//! Rate limits as the API carries them: each bucket a Firecracker `TokenBucket` object, so that
//! Firecracker's `rate_limiter` fields map onto them one to one.
//!
//! ```text
//! {"version":1,"request":"device_limits","id":"blk0",
//!  "limits":{"bandwidth":{"size":10485760,"one_time_burst":0,"refill_time":1000},"ops":null}}
//! ```
//!
//! A disk and the rng have `bandwidth` (bytes) and `ops` (requests); a network interface has
//! `rx_bandwidth`, `rx_ops` (what the guest receives), `tx_bandwidth`, `tx_ops`. In a request,
//! a key that is absent leaves that bucket as it is, `null` removes its limit, an object sets it
//! (and starts it full) — Firecracker's PATCH semantics. In a reply or a status, every bucket of
//! the device is there, `null` where there is no limit.

use serde::{Deserialize, Deserializer, Serialize};

/// One token bucket: `size` tokens (bytes or operations), refilled from empty in
/// `refill_time` milliseconds, and `one_time_burst` more tokens once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Tokens the bucket holds.
    pub size: u64,
    /// Extra tokens at the start, not refilled (optional in a request).
    #[serde(default)]
    pub one_time_burst: u64,
    /// Milliseconds to refill `size` tokens.
    pub refill_time: u64,
}

/// The buckets of a device; see the module documentation for absent and `null` keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// A disk's or the rng's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub bandwidth: Option<Option<TokenBucket>>,
    /// A disk's or the rng's requests.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub ops: Option<Option<TokenBucket>>,
    /// Bytes a network interface delivers to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub rx_bandwidth: Option<Option<TokenBucket>>,
    /// Frames a network interface delivers to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub rx_ops: Option<Option<TokenBucket>>,
    /// Bytes the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub tx_bandwidth: Option<Option<TokenBucket>>,
    /// Frames the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub tx_ops: Option<Option<TokenBucket>>,
}

/// A key that is present (`null` included) is `Some`; an absent one gets the default, `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<TokenBucket>>, D::Error> {
    Option::<TokenBucket>::deserialize(d).map(Some)
}

impl RateLimits {
    /// Each key with its value, in the order above.
    pub fn entries(&self) -> [(&'static str, Option<Option<TokenBucket>>); 6] {
        [
            ("bandwidth", self.bandwidth),
            ("ops", self.ops),
            ("rx_bandwidth", self.rx_bandwidth),
            ("rx_ops", self.rx_ops),
            ("tx_bandwidth", self.tx_bandwidth),
            ("tx_ops", self.tx_ops),
        ]
    }
}

/// What a `device_limits` request did: the limits now in force on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsChange {
    /// The device.
    pub id: String,
    /// Every bucket of the device.
    pub limits: RateLimits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_null_and_set_are_three_things() {
        let l: RateLimits =
            serde_json::from_str(r#"{"ops":null,"bandwidth":{"size":5,"refill_time":100}}"#)
                .unwrap();
        let b = TokenBucket { size: 5, one_time_burst: 0, refill_time: 100 };
        assert_eq!(l.bandwidth, Some(Some(b)));
        assert_eq!(l.ops, Some(None));
        assert_eq!(l.rx_ops, None);
        let text = serde_json::to_string(&l).unwrap();
        assert_eq!(
            text,
            r#"{"bandwidth":{"size":5,"one_time_burst":0,"refill_time":100},"ops":null}"#
        );
        assert_eq!(serde_json::from_str::<RateLimits>(&text).unwrap(), l);
        assert!(serde_json::from_str::<RateLimits>(r#"{"bw":null}"#).is_err());
        assert!(serde_json::from_str::<RateLimits>(r#"{"ops":{"size":1}}"#).is_err());
        assert!(serde_json::from_str::<RateLimits>(r#"{"ops":{"size":1,"refill_time":1,"x":1}}"#)
            .is_err());
    }
}
