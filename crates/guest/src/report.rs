//! The guest's report lines on the serial console.
//!
//! Every line the guest prints starts with `BH `, then an event name, then
//! space-separated `key=value` pairs; a value never contains a space, except
//! a final free-text `text=` pair which runs to the end of the line. Lines:
//!
//! - `BH ready guest=bulkhead version=V cpu=0 protocol=pvh`: first line, as
//!   soon as the guest runs; the boot benchmark's readiness point;
//! - `BH memory ...`, `BH initrd ...`, `BH cpus ...`, `BH virtio ...`: facts;
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
