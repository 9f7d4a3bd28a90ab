//! The limiter as a queue worker uses it: a [`Gate`] per queue, over a [`SharedLimiter`] per
//! limiter of the device (so that a disk's queues share one rate), fed from the limits page.
//!
//! A handler calls [`Gate::refresh`] once per batch (one atomic load of the page's generation)
//! and [`Gate::admit`] per request. Unlimited, `admit` is one branch. Limited, a request whose
//! tokens are not there yet is not admitted: the gate arms its timerfd for the moment they
//! will be, and the handler keeps the request and stops taking more from its queue until the
//! timer fires (the worker waits on the timerfd beside the kick, [`Gate::timer_fd`]). A request
//! is only ever delayed, never dropped or failed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::bucket::RateLimiter;
use super::page::LimitsView;

/// The shortest wait a gate arms its timer for: less would spin the worker.
const MIN_WAIT_NS: u64 = 50_000;

/// One limiter of a device, shared by the queues it limits.
pub struct SharedLimiter {
    view: LimitsView,
    slot: usize,
    epoch: Instant,
    state: Mutex<State>,
}

struct State {
    /// The page generation `limiter` was built from (`u64::MAX`: none yet).
    generation: u64,
    limiter: RateLimiter,
    /// A bad page was logged (once).
    warned: bool,
}

impl SharedLimiter {
    /// Limiter `slot` of the page `view`.
    pub fn new(view: LimitsView, slot: usize) -> Arc<SharedLimiter> {
        Arc::new(SharedLimiter {
            view,
            slot,
            epoch: Instant::now(),
            state: Mutex::new(State {
                generation: u64::MAX,
                limiter: RateLimiter::default(),
                warned: false,
            }),
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Brings the limiter up to the page's generation `g` (new buckets, full); returns the
    /// generation it now holds and whether it is unlimited.
    fn update(&self, state: &mut State, g: u64) {
        if state.generation == g {
            return;
        }
        match self.view.read() {
            Ok((read_g, limits)) => {
                state.limiter = RateLimiter::new(&limits.0[self.slot], self.now_ns());
                state.generation = read_g;
            }
            Err(super::page::PageError::Torn) => {} // the writer is busy: next batch
            Err(e) => {
                if !state.warned {
                    log::warn!("rate limits off: {e}");
                    state.warned = true;
                }
                state.limiter = RateLimiter::default();
                state.generation = g;
            }
        }
    }
}

/// One queue's view of a [`SharedLimiter`], with its timer.
pub struct Gate {
    shared: Arc<SharedLimiter>,
    seen: u64,
    unlimited: bool,
    timer: Timer,
}

impl Gate {
    /// A gate on `shared` for one queue.
    pub fn new(shared: Arc<SharedLimiter>) -> std::io::Result<Gate> {
        Ok(Gate { shared, seen: u64::MAX, unlimited: false, timer: Timer::new()? })
    }

    /// A gate that never limits (tests, fuzz targets).
    pub fn unlimited() -> std::io::Result<Gate> {
        let view = LimitsView::fixed(&Default::default());
        Gate::new(SharedLimiter::new(view, 0))
    }

    /// Takes a change of limits, if there was one: call once per batch of requests.
    #[inline]
    pub fn refresh(&mut self) {
        let g = self.shared.view.generation();
        if g != self.seen {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.update(&mut st, g);
            self.seen = st.generation;
            self.unlimited = st.limiter.is_unlimited();
        }
    }

    /// Whether a request of `bytes` (computed only when limited) may go now. If not, the timer
    /// is armed for when it may: keep the request and take no other until then.
    #[inline]
    pub fn admit(&mut self, bytes: impl FnOnce() -> u64) -> bool {
        self.unlimited || self.admit_limited(bytes())
    }

    fn admit_limited(&mut self, bytes: u64) -> bool {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.shared.now_ns();
        match st.limiter.consume(now, bytes) {
            Ok(()) => true,
            Err(wait_ns) => {
                self.timer.arm(wait_ns.max(MIN_WAIT_NS));
                false
            }
        }
    }

    /// The timerfd the worker waits on.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.0.as_raw_fd()
    }
}

/// A one-shot, non-blocking timerfd on the monotonic clock.
struct Timer(OwnedFd);

impl Timer {
    fn new() -> std::io::Result<Timer> {
        let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
        // SAFETY: timerfd_create takes no pointer; the result is checked.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created, owned by nothing else.
        Ok(Timer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn arm(&self, ns: u64) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000).min(i64::MAX as u64) as i64,
                tv_nsec: (ns % 1_000_000_000) as i64,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        let r =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            log::warn!("cannot arm the rate limiter's timer: {}", std::io::Error::last_os_error());
        }
    }
}

/// Empties a timerfd that fired (the worker, before it serves the queue).
pub fn clear_timer(fd: RawFd) {
    let mut expirations = 0u64;
    // SAFETY: reads at most 8 bytes into `expirations`; the fd is non-blocking.
    unsafe { libc::read(fd, (&mut expirations as *mut u64).cast(), 8) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::page::LimitsPage;
    use crate::limit::spec::{BucketSpec, DeviceLimits, LimiterSpec, MAIN};

    fn ops(size: u64, refill_time_ms: u64) -> DeviceLimits {
        let b = BucketSpec { size, one_time_burst: 0, refill_time_ms };
        let mut l = DeviceLimits::default();
        l.0[MAIN] = LimiterSpec { bandwidth: None, ops: Some(b) };
        l
    }

    fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, timeout_ms) == 1 }
    }

    #[test]
    fn a_refused_request_arms_the_timer_and_a_change_takes_effect_at_the_next_batch() {
        let page = LimitsPage::create(&ops(2, 100)).unwrap();
        let shared = SharedLimiter::new(page.view().unwrap(), MAIN);
        let mut a = Gate::new(shared.clone()).unwrap();
        let mut b = Gate::new(shared).unwrap();
        a.refresh();
        b.refresh();
        assert!(a.admit(|| 0));
        assert!(b.admit(|| 0), "queues share the device's bucket");
        assert!(!a.admit(|| 0));
        assert!(readable(a.timer_fd(), 5000), "the timer fires when a token is there");
        clear_timer(a.timer_fd());
        assert!(!readable(a.timer_fd(), 0));
        assert!(a.admit(|| 0));
        // Unlimited now: nothing is computed per request.
        page.write(&DeviceLimits::default());
        assert!(!a.admit(|| 0), "until the next batch, the old limit holds");
        a.refresh();
        assert!(a.admit(|| unreachable!("no cost is computed without a limit")));
    }

    #[test]
    fn a_garbage_page_means_no_limit() {
        let view = LimitsView::fixed(&ops(1, 1000));
        let mut g = Gate::new(SharedLimiter::new(view, MAIN)).unwrap();
        g.refresh();
        assert!(g.admit(|| 0));
        assert!(!g.admit(|| 0));
        let bad = BucketSpec { size: u64::MAX, one_time_burst: 0, refill_time_ms: 1 };
        let mut limits = DeviceLimits::default();
        limits.0[MAIN].bandwidth = Some(bad);
        let mut g = Gate::new(SharedLimiter::new(LimitsView::fixed(&limits), MAIN)).unwrap();
        g.refresh();
        for _ in 0..100 {
            assert!(g.admit(|| u64::MAX));
        }
    }
}
