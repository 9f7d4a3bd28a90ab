//! The boot timer (`bulkhead run --boot-timer`, Firecracker's `--boot-timer`): a guest that
//! writes [`ports::BOOT_TIMER_DONE`] to port [`ports::BOOT_TIMER`] once it has booted gets
//! the time since the VMM started logged on stderr, wall-clock and CPU time:
//!
//! ```text
//! bulkhead: Guest-boot-time =  41234 us 41 ms,  30120 CPU us 30 CPU ms
//! ```
//!
//! Without `--boot-timer` nothing is on the port and the write is ignored.

use std::io::Write;
use std::time::Instant;

use crate::bus::BusDevice;
use crate::layout::ports;

/// When the VMM started: the reading boot times are measured from.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    wall: Instant,
    cpu_us: u64,
}

impl BootClock {
    /// Now, on the wall clock and in this process's CPU time.
    pub fn now() -> BootClock {
        BootClock { wall: Instant::now(), cpu_us: process_cpu_us() }
    }

    /// Wall-clock and CPU microseconds from this reading to now.
    fn elapsed_us(&self) -> (u64, u64) {
        let wall = u64::try_from(self.wall.elapsed().as_micros()).unwrap_or(u64::MAX);
        (wall, process_cpu_us().saturating_sub(self.cpu_us))
    }
}

/// CPU time this process (all its threads) has used, in microseconds.
fn process_cpu_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000) + ts.tv_nsec as u64 / 1_000
}

/// The line logged for a boot that took `wall_us` and `cpu_us`, in Firecracker's words.
pub fn boot_time_line(wall_us: u64, cpu_us: u64) -> String {
    format!(
        "Guest-boot-time = {wall_us:>6} us {} ms, {cpu_us:>6} CPU us {} CPU ms",
        wall_us / 1000,
        cpu_us / 1000
    )
}

/// The device on [`ports::BOOT_TIMER`].
pub struct BootTimer {
    start: BootClock,
}

impl BootTimer {
    pub fn new(start: BootClock) -> BootTimer {
        BootTimer { start }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // One byte at the port itself, the magic value: anything else is ignored.
        if offset != 0 || data != [ports::BOOT_TIMER_DONE] {
            return;
        }
        let (wall_us, cpu_us) = self.start.elapsed_us();
        // One write, so that the line is not interleaved with the console's.
        let line = format!("bulkhead: {}\n", boot_time_line(wall_us, cpu_us));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_as_firecrackers() {
        assert_eq!(
            boot_time_line(41_234, 3_120),
            "Guest-boot-time =  41234 us 41 ms,   3120 CPU us 3 CPU ms"
        );
        let clock = BootClock::now();
        let (wall, _) = clock.elapsed_us();
        assert!(wall < 10_000_000);
    }
}
