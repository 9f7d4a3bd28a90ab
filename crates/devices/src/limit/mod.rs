//! Rate limits: token buckets for bandwidth and operations, as Firecracker and Cloud Hypervisor
//! offer them, enforced by the device itself (in its compartment, or on its threads in
//! monolithic mode) and changeable while the guest runs.
//!
//! - [`spec`]: what is asked (a bucket's size, one-time burst and refill time; a limiter's two
//!   buckets; a device's limiters) and its text form, `bw=10M@1000,ops=500@100+1000`;
//! - [`bucket`]: the token bucket and the rate limiter, pure arithmetic over a clock the caller
//!   passes in;
//! - [`page`]: the limits page the core writes and the device reads (a sealed memfd, a seqlock);
//! - [`gate`]: what a queue worker does with it — refuse, arm a timer, resume.
//!
//! What counts: a disk's one limiter takes the data bytes of each read and write and one
//! operation per request (a flush is an operation of no bytes); a network interface's rx limiter
//! takes each frame delivered to the guest, its tx limiter each frame sent (bytes without the
//! virtio-net header); the rng's takes the bytes of entropy given.

pub mod bucket;
pub mod gate;
pub mod page;
pub mod spec;

pub use bucket::{RateLimiter, TokenBucket};
pub use gate::{Gate, SharedLimiter};
pub use page::{LimitsPage, LimitsView};
pub use spec::{BucketSpec, DeviceLimits, Keys, LimiterSpec};

/// A device's limiters, one per slot, over one page.
#[derive(Clone)]
pub struct Limiters(Vec<std::sync::Arc<SharedLimiter>>);

impl Limiters {
    /// The limiters of the page `view`.
    pub fn new(view: LimitsView) -> Limiters {
        Limiters((0..spec::SLOTS).map(|slot| SharedLimiter::new(view.clone(), slot)).collect())
    }

    /// A gate on limiter `slot` for one queue.
    pub fn gate(&self, slot: usize) -> Result<Gate, crate::DeviceError> {
        Gate::new(self.0[slot].clone()).map_err(crate::DeviceError::io("timerfd_create"))
    }
}
