//! Rate limits in the core: one limits page per device that has limiters (blk, net, rng),
//! created before the device's backend starts, handed to each of its compartments (or threads),
//! and rewritten when the API changes them.
//!
//! The core only writes the page; the device reads it at its next batch of requests. Nothing
//! here waits on a compartment: a change is a few stores into shared memory, in force without a
//! message or a restart, and it survives restarts (a successor maps the same page).

use std::sync::Arc;

use bulkhead_api::{LimitsChange, RateLimits, TokenBucket};
use bulkhead_devices::limit::spec::{MAIN, RX, TX};
use bulkhead_devices::limit::{BucketSpec, DeviceLimits, LimitsPage};
use bulkhead_devices::DeviceKind;

/// A device's limits page.
pub struct LimitedDevice {
    /// The device's name (`blk0`).
    pub name: String,
    /// Its kind: which buckets it has.
    pub kind: DeviceKind,
    /// The page its backends read.
    pub page: Arc<LimitsPage>,
}

/// The API's keys of a device kind's buckets: (key, limiter, ops?).
fn keys(kind: DeviceKind) -> &'static [(&'static str, usize, bool)] {
    match kind {
        DeviceKind::Net => &[
            ("rx_bandwidth", RX, false),
            ("rx_ops", RX, true),
            ("tx_bandwidth", TX, false),
            ("tx_ops", TX, true),
        ],
        _ => &[("bandwidth", MAIN, false), ("ops", MAIN, true)],
    }
}

fn to_api(b: Option<BucketSpec>) -> Option<TokenBucket> {
    b.map(|b| TokenBucket {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time: b.refill_time_ms,
    })
}

/// Every bucket of a `kind` device, as the API shows them.
pub fn describe(kind: DeviceKind, limits: &DeviceLimits) -> RateLimits {
    let mut out = RateLimits::default();
    for &(key, slot, ops) in keys(kind) {
        let l = &limits.0[slot];
        let value = Some(to_api(if ops { l.ops } else { l.bandwidth }));
        match key {
            "bandwidth" => out.bandwidth = value,
            "ops" => out.ops = value,
            "rx_bandwidth" => out.rx_bandwidth = value,
            "rx_ops" => out.rx_ops = value,
            "tx_bandwidth" => out.tx_bandwidth = value,
            _ => out.tx_ops = value,
        }
    }
    out
}

/// `limits` applied over `current` for a `kind` device named `id`, or why not (a bucket this
/// kind does not have, a value out of range).
pub fn apply(
    id: &str,
    kind: DeviceKind,
    current: DeviceLimits,
    limits: &RateLimits,
) -> Result<DeviceLimits, String> {
    let mut new = current;
    let own = keys(kind);
    let names = || own.iter().map(|(k, _, _)| *k).collect::<Vec<_>>().join(", ");
    for (key, value) in limits.entries() {
        let Some(value) = value else { continue };
        let Some(&(_, slot, ops)) = own.iter().find(|(k, _, _)| *k == key) else {
            return Err(format!(
                "{id} is a {kind} device, which has no {key} bucket; its buckets are {}",
                names()
            ));
        };
        let spec = value.map(|b| BucketSpec {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time_ms: b.refill_time,
        });
        if let Some(spec) = spec {
            spec.check().map_err(|why| format!("the {key} bucket of {id}: {why}"))?;
        }
        let spec = spec.filter(|s| !s.is_unlimited());
        if ops {
            new.0[slot].ops = spec;
        } else {
            new.0[slot].bandwidth = spec;
        }
    }
    Ok(new)
}

impl LimitedDevice {
    /// Applies `limits` (absent buckets stay) and says what is in force now.
    pub fn change(&self, limits: &RateLimits) -> Result<LimitsChange, String> {
        let new = apply(&self.name, self.kind, self.page.read(), limits)?;
        self.page.write(&new);
        Ok(LimitsChange { id: self.name.clone(), limits: describe(self.kind, &new) })
    }

    /// The limits in force.
    pub fn current(&self) -> RateLimits {
        describe(self.kind, &self.page.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64) -> TokenBucket {
        TokenBucket { size, one_time_burst: 0, refill_time: 100 }
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let start = apply(
            "blk0",
            DeviceKind::Blk,
            DeviceLimits::default(),
            &RateLimits { bandwidth: Some(Some(bucket(4096))), ..Default::default() },
        )
        .unwrap();
        let patch = RateLimits { ops: Some(Some(bucket(10))), ..Default::default() };
        let both = apply("blk0", DeviceKind::Blk, start, &patch).unwrap();
        let shown = describe(DeviceKind::Blk, &both);
        assert_eq!(shown.bandwidth, Some(Some(bucket(4096))));
        assert_eq!(shown.ops, Some(Some(bucket(10))));
        assert_eq!(shown.rx_ops, None, "a disk shows its own buckets only");
        let off = RateLimits { bandwidth: Some(None), ..Default::default() };
        let shown = describe(DeviceKind::Blk, &apply("blk0", DeviceKind::Blk, both, &off).unwrap());
        assert_eq!((shown.bandwidth, shown.ops), (Some(None), Some(Some(bucket(10)))));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let rx = RateLimits { rx_ops: Some(None), ..Default::default() };
        let err = apply("blk0", DeviceKind::Blk, DeviceLimits::default(), &rx).unwrap_err();
        assert_eq!(
            err,
            "blk0 is a blk device, which has no rx_ops bucket; its buckets are bandwidth, ops"
        );
        let huge = RateLimits { tx_bandwidth: Some(Some(bucket(u64::MAX))), ..Default::default() };
        let err = apply("net0", DeviceKind::Net, DeviceLimits::default(), &huge).unwrap_err();
        assert!(
            err.starts_with("the tx_bandwidth bucket of net0: a bucket holds at most"),
            "{err}"
        );
    }
}
