//! Deadlines for the core's requests to device backends.
//!
//! A vhost-user request waits for its reply in a blocking receive. A receive timeout on the
//! socket would not end that wait: the vhost crate takes the timeout (`EAGAIN`) for a passing
//! error and receives again, for ever. So each request is armed here with its operation's
//! deadline and its socket, and a thread of the core, the alarm, shuts the socket down once a
//! deadline passes: the receive ends at once (the reply reads as the end of the stream), and the
//! request fails with [`super::frontend::FrontendError::Deadline`]. The backend's socket is then
//! shut, which its supervisor sees as a failed backend, and replaces it. The alarm waits on
//! nothing but its own lock and clock.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

/// The process's alarm, once started.
static ALARM: OnceLock<Arc<Alarm>> = OnceLock::new();

/// Requests waiting for their backends, and the thread that ends those past their deadline.
struct Alarm {
    armed: Mutex<Vec<Armed>>,
    changed: Condvar,
}

struct Armed {
    id: u64,
    deadline: Instant,
    socket: RawFd,
    fired: Arc<AtomicBool>,
}

/// Starts the alarm's thread (`bulkhead-alarm`) unless it runs; `started` is called on it
/// first (the binary confines it there). Without it, requests have no deadline.
pub fn start(started: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    if ALARM.get().is_some() {
        return Ok(());
    }
    let alarm = Arc::new(Alarm { armed: Mutex::new(Vec::new()), changed: Condvar::new() });
    if ALARM.set(alarm.clone()).is_err() {
        return Ok(());
    }
    std::thread::Builder::new().name("bulkhead-alarm".into()).spawn(move || {
        started();
        alarm.run();
    })?;
    Ok(())
}

/// A request in progress on `socket`, to be ended at `deadline`; disarmed when dropped.
pub struct Guard {
    id: u64,
    fired: Arc<AtomicBool>,
}

impl Guard {
    /// Whether the alarm ended the request (its deadline passed).
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(alarm) = ALARM.get() {
            alarm.lock().retain(|a| a.id != self.id);
        }
    }
}

/// Arms the alarm for a request on `socket` that must be answered by `deadline`. The socket
/// must stay open until the guard is dropped.
pub fn arm(socket: RawFd, deadline: Instant) -> Guard {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let fired = Arc::new(AtomicBool::new(false));
    if let Some(alarm) = ALARM.get() {
        alarm.lock().push(Armed { id, deadline, socket, fired: fired.clone() });
        alarm.changed.notify_one();
    }
    Guard { id, fired }
}

impl Alarm {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Armed>> {
        self.armed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let mut armed = self.lock();
        loop {
            let now = Instant::now();
            armed.retain(|a| {
                if a.deadline > now {
                    return true;
                }
                a.fired.store(true, Ordering::SeqCst);
                // SAFETY: shutdown on a socket its request keeps open while it is armed (the
                // guard, dropped before the socket is closed, removes it under this lock).
                unsafe { libc::shutdown(a.socket, libc::SHUT_RDWR) };
                false
            });
            armed = match armed.iter().map(|a| a.deadline).min() {
                None => self.changed.wait(armed).unwrap_or_else(|p| p.into_inner()),
                Some(next) => {
                    let left = next.saturating_duration_since(Instant::now());
                    self.changed.wait_timeout(armed, left).unwrap_or_else(|p| p.into_inner()).0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn a_receive_past_its_deadline_is_ended_and_one_in_time_is_left_alone() {
        start(|| {}).unwrap();
        let (mut waiting, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let start = Instant::now();
        let guard = arm(waiting.as_raw_fd(), start + Duration::from_millis(50));
        let mut buf = [0u8; 1];
        // Blocks until the alarm shuts the socket down: end of stream.
        assert_eq!(waiting.read(&mut buf).unwrap(), 0);
        assert!(guard.fired());
        assert!(start.elapsed() >= Duration::from_millis(50));
        drop(guard);

        let (mut answered, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let guard = arm(answered.as_raw_fd(), Instant::now() + Duration::from_secs(5));
        std::io::Write::write_all(&mut peer, b"x").unwrap();
        assert_eq!(answered.read(&mut buf).unwrap(), 1);
        drop(guard);
        std::thread::sleep(Duration::from_millis(20));
        std::io::Write::write_all(&mut peer, b"y").unwrap();
        assert_eq!(answered.read(&mut buf).unwrap(), 1, "a disarmed socket stays open");
    }
}
