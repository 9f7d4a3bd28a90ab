//! When a failed device is started again: a pure function of the restart policy, the device's
//! recent restarts and the clock ([`decide`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// When and how failed devices are restarted.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    pub enabled: bool,
    /// Restarts allowed within `window`; one more marks the device failed.
    pub max_restarts: u32,
    pub window: Duration,
    /// Restarts within a second that happen at once; later ones back off.
    pub burst: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// No progress for this long with requests outstanding: hung.
    pub hang_deadline: Option<Duration>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            enabled: true,
            max_restarts: 100,
            window: Duration::from_secs(60),
            burst: 5,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            hang_deadline: Some(Duration::from_secs(5)),
        }
    }
}

/// What to do with a device whose backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start a new backend now.
    Now,
    /// Back off: start one at this instant.
    At(Instant),
    /// Leave the device stopped.
    GiveUp(GiveUp),
}

/// Why a device is left stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The policy restarts nothing (`--restart off`).
    Disabled,
    /// It was restarted `max_restarts` times within the window already.
    TooMany,
}

impl GiveUp {
    /// In words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            GiveUp::Disabled => "restarts are off",
            GiveUp::TooMany => "too many restarts",
        }
    }
}

/// The times a device was started again (each attempt), oldest first, within the policy's
/// window.
#[derive(Clone, Debug, Default)]
pub struct History {
    recent: VecDeque<Instant>,
}

impl History {
    /// Records an attempt to start the device again at `at`.
    pub fn record(&mut self, at: Instant) {
        self.recent.push_back(at);
    }

    /// Forgets attempts older than `window` at `now`.
    pub fn forget_before(&mut self, window: Duration, now: Instant) {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.recent.pop_front();
        }
    }

    /// Attempts within `window` before `now`.
    fn within(&self, window: Duration, now: Instant) -> u32 {
        self.recent.iter().filter(|t| now.duration_since(**t) <= window).count() as u32
    }
}

/// What to do with a device that failed at `now`, given its history: up to `burst` restarts a
/// second happen at once, more back off exponentially from `backoff` to `backoff_max`; past
/// `max_restarts` in the window (or with restarts off) the device is left stopped.
pub fn decide(policy: &RestartPolicy, history: &History, now: Instant) -> Decision {
    if !policy.enabled {
        return Decision::GiveUp(GiveUp::Disabled);
    }
    if history.within(policy.window, now) >= policy.max_restarts {
        return Decision::GiveUp(GiveUp::TooMany);
    }
    let last_second = history.within(Duration::from_secs(1), now);
    if last_second < policy.burst {
        return Decision::Now;
    }
    let doublings = (last_second - policy.burst).min(16);
    let delay = (policy.backoff * 2u32.pow(doublings)).min(policy.backoff_max);
    Decision::At(now + delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn with(times: &[Duration], start: Instant) -> History {
        let mut h = History::default();
        for t in times {
            h.record(start + *t);
        }
        h
    }

    #[test]
    fn a_burst_restarts_at_once_and_then_backs_off_doubling() {
        let p = RestartPolicy::default();
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..5 {
            let now = t0 + i * 10 * MS;
            assert_eq!(decide(&p, &h, now), Decision::Now, "restart {i} of the burst");
            h.record(now);
        }
        let now = t0 + 50 * MS;
        assert_eq!(decide(&p, &h, now), Decision::At(now + 50 * MS));
        h.record(now + 50 * MS);
        let now = t0 + 120 * MS;
        assert_eq!(decide(&p, &h, now), Decision::At(now + 100 * MS));
        h.record(now + 100 * MS);
        let now = t0 + 250 * MS;
        assert_eq!(decide(&p, &h, now), Decision::At(now + 200 * MS));
    }

    #[test]
    fn the_back_off_is_capped() {
        let p = RestartPolicy { burst: 1, ..RestartPolicy::default() };
        let t0 = Instant::now();
        let h = with(&[MS; 20], t0);
        assert_eq!(decide(&p, &h, t0 + 2 * MS), Decision::At(t0 + 2 * MS + p.backoff_max));
    }

    #[test]
    fn a_quiet_second_ends_the_back_off() {
        let p = RestartPolicy::default();
        let t0 = Instant::now();
        let h = with(&[Duration::ZERO, MS, 2 * MS, 3 * MS, 4 * MS, 5 * MS], t0);
        assert!(matches!(decide(&p, &h, t0 + 10 * MS), Decision::At(_)));
        assert_eq!(decide(&p, &h, t0 + 1100 * MS), Decision::Now);
    }

    #[test]
    fn past_the_limit_in_the_window_the_device_is_left_stopped_until_it_slides() {
        let p = RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(10),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut h = with(&[Duration::ZERO, 2000 * MS, 4000 * MS], t0);
        let now = t0 + 5000 * MS;
        assert_eq!(decide(&p, &h, now), Decision::GiveUp(GiveUp::TooMany));
        // Once the first attempt is out of the window, one more is allowed.
        let later = t0 + 10_001 * MS;
        h.forget_before(p.window, later);
        assert_eq!(decide(&p, &h, later), Decision::Now);
        assert_eq!(decide(&p, &with(&[], t0), t0), Decision::Now);
    }

    #[test]
    fn restarts_off_gives_up_at_once() {
        let p = RestartPolicy { enabled: false, ..RestartPolicy::default() };
        let now = Instant::now();
        assert_eq!(decide(&p, &History::default(), now), Decision::GiveUp(GiveUp::Disabled));
        assert_eq!(GiveUp::Disabled.describe(), "restarts are off");
    }
}
