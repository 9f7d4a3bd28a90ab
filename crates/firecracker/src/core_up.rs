//! Waiting for the core to be up, for `InstanceStart`'s answer. The core serves its control
//! socket once the VM is built and its devices started, right before its vCPUs run: the
//! front looks for that socket every 250 µs for the first 100 ms, then every 5 ms (a 5 ms
//! interval from the start cost 2.5 ms on average of every answer). A core that ended
//! before its socket was seen either ran the guest, which powered off, rebooted or crashed
//! within the interval (exit codes 0, 3, 4: the VM was up), or failed to build the VM.
//!
//! inotify on the run folder would see the socket at once, but closing an inotify instance
//! waits for an SRCU grace period (10 ms and more on a loaded nested host, measured with
//! `bulkhead bench boot`), which a front then pays at its exit or on the answer.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long the core may take to be up before `InstanceStart` is answered anyway.
const PATIENCE: Duration = Duration::from_secs(10);
/// How often the socket is looked for at first, and for how long.
const FAST_POLL: Duration = Duration::from_micros(250);
const FAST_FOR: Duration = Duration::from_millis(100);
/// How often after that.
const SLOW_POLL: Duration = Duration::from_millis(5);

/// The core's exit codes that mean the guest ran: it powered off, rebooted, crashed (see the
/// README's exit codes).
const RAN: [i32; 3] = [0, 3, 4];

/// What became of a core just started.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its control socket appeared, or it ended as a VM that ran ends: the VM runs (or ran).
    Up,
    /// It ended before the VM ran.
    Ended(ExitStatus),
    /// Neither within [`PATIENCE`].
    Slow,
}

/// Waits until the core's control socket `socket` is there or the core ends.
pub fn wait(socket: &Path, core: &mut Child) -> Outcome {
    let start = Instant::now();
    loop {
        if socket.exists() {
            return Outcome::Up;
        }
        if let Ok(Some(status)) = core.try_wait() {
            let ran = status.code().is_some_and(|c| RAN.contains(&c));
            return if ran { Outcome::Up } else { Outcome::Ended(status) };
        }
        let waited = start.elapsed();
        if waited >= PATIENCE {
            return Outcome::Slow;
        }
        std::thread::sleep(if waited < FAST_FOR { FAST_POLL } else { SLOW_POLL });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn core(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).spawn().unwrap()
    }

    #[test]
    fn a_core_whose_guest_ran_and_ended_counts_as_up() {
        let socket = Path::new("/nonexistent/bulkhead-core-up.sock");
        assert_eq!(wait(socket, &mut core("exit 0")), Outcome::Up);
        assert_eq!(wait(socket, &mut core("exit 4")), Outcome::Up);
    }

    #[test]
    fn a_core_that_failed_is_told() {
        let socket = Path::new("/nonexistent/bulkhead-core-up.sock");
        let outcome = wait(socket, &mut core("exit 1"));
        assert!(matches!(outcome, Outcome::Ended(s) if s.code() == Some(1)), "{outcome:?}");
    }

    #[test]
    fn the_socket_appearing_is_seen() {
        let dir = std::env::temp_dir().join(format!("bh-core-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("vm.sock");
        let mut c = core(&format!("sleep 0.05; touch {}; sleep 5", socket.display()));
        let start = Instant::now();
        assert_eq!(wait(&socket, &mut c), Outcome::Up);
        assert!(start.elapsed() < Duration::from_secs(4));
        let _ = c.kill();
        let _ = c.wait();
        let _ = std::fs::remove_dir_all(dir);
    }
}
