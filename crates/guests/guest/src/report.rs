//! The guest's report lines on the serial console.
//!
//! Every line the guest prints starts with `BH `, then an event name, then
//! space-separated `key=value` pairs; a value never contains a space, except
//! a final free-text `text=` pair which runs to the end of the line. Lines:
//!
//! - `BH ready guest=bulkhead version=V cpu=0 protocol=pvh`: first line, as
//!   soon as the guest runs; the boot benchmark's readiness point;
//! - `BH memory ...`, `BH initrd ...`, `BH cpus ...`, `BH virtio ...`,
//!   `BH net ...`: facts;
//! - `BH check name=N status=ok|fail ...`: one per check;
//! - `BH result workload=W ...`: a workload's figures;
//! - `BH fault ...`, `BH panic text=...`: the guest broke;
//! - `BH done status=ok|fail checks=N failed=M`: last line before power-off.
//!
//! Lines are assembled in a fixed buffer and written with one system call,
//! so lines from different CPUs never interleave.

use core::fmt;

/// Longest line; longer output is cut and ends with `...`.
pub const LINE_MAX: usize = 480;

/// A line being assembled.
pub struct Line {
    buf: [u8; LINE_MAX + 1],
    len: usize,
    truncated: bool,
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Line {
    pub fn new() -> Self {
        let mut line = Line { buf: [0; LINE_MAX + 1], len: 0, truncated: false };
        line.push(b"BH ");
        line
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len >= LINE_MAX - 3 {
                self.truncated = true;
                return;
            }
            // Keep the line format intact whatever the text holds.
            self.buf[self.len] =
                if b == b'\n' || b == b'\r' || !(0x20..0x7f).contains(&b) { b'?' } else { b };
            self.len += 1;
        }
    }

    /// The finished line, with `...` if cut, ending in a newline.
    pub fn finish(&mut self) -> &[u8] {
        if self.truncated {
            self.buf[self.len..self.len + 3].copy_from_slice(b"...");
            self.len += 3;
            self.truncated = false;
        }
        self.buf[self.len] = b'\n';
        &self.buf[..=self.len]
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Displays `value / 10^digits` with `digits` decimals, so figures need no
/// floating point: `Fixed(12345, 3)` shows as `12.345`.
pub struct Fixed(pub u64, pub u32);

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = 10u64.pow(self.1);
        if self.1 == 0 {
            return write!(f, "{}", self.0);
        }
        write!(f, "{}.{:0width$}", self.0 / scale, self.0 % scale, width = self.1 as usize)
    }
}

/// `count` events over `ns` nanoseconds, per second, scaled by `10^digits`
/// (for [`Fixed`]); 0 if no time passed.
pub fn per_second(count: u64, ns: u64, digits: u32) -> u64 {
    if ns == 0 {
        return 0;
    }
    (u128::from(count) * 1_000_000_000 * u128::from(10u64.pow(digits)) / u128::from(ns)) as u64
}

/// Prints one report line: `bh!("check name={} status=ok", name)`.
#[cfg(bulkhead_guest)]
#[macro_export]
macro_rules! bh {
    ($($arg:tt)*) => {{
        let mut line = $crate::report::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        $crate::rt::console_write(line.finish());
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn lines_have_the_prefix_and_no_stray_newlines() {
        let mut line = Line::new();
        let name = "memory";
        write!(line, "check name={name} status=ok text=a\nb").unwrap();
        assert_eq!(line.finish(), b"BH check name=memory status=ok text=a?b\n");
    }

    #[test]
    fn fixed_point_figures() {
        assert_eq!(Fixed(12345, 3).to_string(), "12.345");
        assert_eq!(Fixed(5, 1).to_string(), "0.5");
        assert_eq!(Fixed(1002, 3).to_string(), "1.002");
        assert_eq!(Fixed(7, 0).to_string(), "7");
        assert_eq!(per_second(500, 250_000_000, 0), 2000);
        assert_eq!(per_second(1, 3_000_000_000, 1), 3); // 0.3/s
        assert_eq!(per_second(1, 0, 0), 0);
    }

    #[test]
    fn long_lines_are_cut_visibly() {
        let mut line = Line::new();
        for _ in 0..100 {
            line.write_str("0123456789").unwrap();
        }
        let out = line.finish();
        assert_eq!(out.len(), LINE_MAX + 1);
        assert!(out.ends_with(b"...\n"));
    }
}
