//! Scan codes as a keyboard driver reads them from an i8042: Ctrl-Alt-Del recognised in scan
//! code set 2 (what the keyboard sends while the controller does not translate: Bulkhead's and
//! Firecracker's default, which Linux keeps) and in set 1 (what a translating controller hands
//! on). Pure code, tested on the host.
//!
//! Set 2: a key's make code, `f0` before a break code, `e0` before an extended key's code.
//! Set 1: a key's make code, the same `| 0x80` for its break, `e0` before an extended key.
//! Left and right Ctrl and Alt count alike; Delete and the keypad's `.` (Linux's
//! `ctrl-alt-KP_Period` is Boot too) end the combination when pressed with both held.

/// The scan code set the bytes are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    One,
    Two,
}

/// Watches a stream of scan codes for Ctrl-Alt-Del.
#[derive(Clone, Copy, Debug)]
pub struct CtrlAltDel {
    set: Set,
    extended: bool,
    release: bool,
    ctrl: bool,
    alt: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Ctrl,
    Alt,
    Delete,
    Other,
}

impl CtrlAltDel {
    pub const fn new(set: Set) -> Self {
        CtrlAltDel { set, extended: false, release: false, ctrl: false, alt: false }
    }

    /// Takes the next byte; true when it completes a press of Delete with Ctrl and Alt held.
    pub fn feed(&mut self, byte: u8) -> bool {
        if byte == 0xe0 {
            self.extended = true;
            return false;
        }
        let (code, release) = match self.set {
            Set::Two if byte == 0xf0 => {
                self.release = true;
                return false;
            }
            Set::Two => (byte, core::mem::take(&mut self.release)),
            Set::One => (byte & 0x7f, byte & 0x80 != 0),
        };
        let extended = core::mem::take(&mut self.extended);
        let key = match (self.set, code, extended) {
            (Set::Two, 0x14, _) | (Set::One, 0x1d, _) => Key::Ctrl,
            (Set::Two, 0x11, _) | (Set::One, 0x38, _) => Key::Alt,
            (Set::Two, 0x71, _) | (Set::One, 0x53, _) => Key::Delete,
            _ => Key::Other,
        };
        match key {
            Key::Ctrl => self.ctrl = !release,
            Key::Alt => self.alt = !release,
            Key::Delete => return !release && self.ctrl && self.alt,
            Key::Other => {}
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_match(set: Set, bytes: &[u8]) -> Option<usize> {
        let mut d = CtrlAltDel::new(set);
        bytes.iter().position(|&b| d.feed(b))
    }

    #[test]
    fn the_i8042s_sequences_are_recognised_at_delete() {
        // Bulkhead's: pressed, then released in reverse order.
        let set2 = [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14];
        assert_eq!(first_match(Set::Two, &set2), Some(3));
        // Firecracker's: the presses only.
        assert_eq!(first_match(Set::Two, &[0x14, 0x11, 0xe0, 0x71]), Some(3));
        let set1 = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
        assert_eq!(first_match(Set::One, &set1), Some(3));
        // Right Ctrl and Alt, the keypad's '.'.
        assert_eq!(first_match(Set::Two, &[0xe0, 0x14, 0xe0, 0x11, 0x71]), Some(4));
    }

    #[test]
    fn released_or_missing_modifiers_do_not_count() {
        // Ctrl released before Delete.
        assert_eq!(first_match(Set::Two, &[0x14, 0x11, 0xf0, 0x14, 0xe0, 0x71]), None);
        assert_eq!(first_match(Set::One, &[0x1d, 0x9d, 0x38, 0xe0, 0x53]), None);
        // Alt alone, Delete's break code, acks and other keys.
        assert_eq!(first_match(Set::Two, &[0x11, 0xe0, 0x71, 0xfa, 0xaa, 0x1c]), None);
        assert_eq!(first_match(Set::Two, &[0x14, 0x11, 0xe0, 0xf0, 0x71]), None);
        // Set 2's codes read as set 1 are other keys.
        assert_eq!(first_match(Set::One, &[0x14, 0x11, 0xe0, 0x71]), None);
    }

    #[test]
    fn any_bytes_are_taken() {
        let mut d = CtrlAltDel::new(Set::Two);
        let mut e = CtrlAltDel::new(Set::One);
        for b in 0..=255u8 {
            d.feed(b);
            e.feed(b);
        }
    }
}
