//! The keyboard, as Linux's i8042 and atkbd drivers run it with `i8042.nopnp
//! i8042.dumbkbd`: the controller's output buffer flushed, its command byte read (0x20) and
//! written back (0x60) with the keyboard interface enabled and its interrupt on, translation
//! left as found (so scan code set 2 unless the controller translates to set 1), and I/O APIC
//! pin 1 (ISA IRQ 1) routed edge-triggered to [`VECTOR`] on this CPU. On each interrupt the
//! driver reads whatever the status register says waits, and watches it for Ctrl-Alt-Del
//! ([`crate::scancode`]).

use crate::scancode::{CtrlAltDel, Set};
use crate::{arch, irq, time};

/// The vector IRQ 1 is routed to.
pub const VECTOR: u8 = 0x44;
const GSI: u32 = 1;
const DATA: u16 = 0x60;
const STATUS: u16 = 0x64;
const OUTPUT_FULL: u8 = 1;
const CTR_KBD_INTERRUPT: u8 = 1 << 0;
const CTR_KBD_DISABLED: u8 = 1 << 4;
const CTR_TRANSLATE: u8 = 1 << 6;

/// A keyboard being listened to.
pub struct Keyboard {
    seen: u64,
    watch: CtrlAltDel,
    /// The command byte as written.
    pub command_byte: u8,
}

/// Reads the output buffer once it is full, within 100 ms.
fn read_data() -> Option<u8> {
    let deadline = time::deadline_ms(100);
    while arch::inb(STATUS) & OUTPUT_FULL == 0 {
        if time::passed(deadline) {
            return None;
        }
    }
    Some(arch::inb(DATA))
}

/// Drops what waits (at most the controller's 16 bytes, and some spare).
fn flush() {
    for _ in 0..32 {
        if arch::inb(STATUS) & OUTPUT_FULL == 0 {
            return;
        }
        arch::inb(DATA);
    }
}

impl Keyboard {
    /// Sets the controller up and routes its interrupt; `None` if no controller answers.
    pub fn listen() -> Option<Keyboard> {
        // No controller: the port reads as all ones (Linux's "no controller" too).
        if arch::inb(STATUS) == 0xff {
            return None;
        }
        flush();
        arch::outb(STATUS, 0x20);
        let ctr = read_data()?;
        let ctr = (ctr | CTR_KBD_INTERRUPT) & !CTR_KBD_DISABLED;
        let seen = irq::count(VECTOR);
        irq::route_gsi(&[], GSI, VECTOR, arch::apic_id());
        arch::outb(STATUS, 0x60);
        arch::outb(DATA, ctr);
        let set = if ctr & CTR_TRANSLATE != 0 { Set::One } else { Set::Two };
        Some(Keyboard { seen, watch: CtrlAltDel::new(set), command_byte: ctr })
    }

    /// The scan code set read.
    pub fn set(&self) -> u8 {
        if self.command_byte & CTR_TRANSLATE != 0 {
            1
        } else {
            2
        }
    }

    /// How many interrupts came.
    pub fn interrupts(&self) -> u64 {
        self.seen
    }

    /// If an interrupt came since the last call, reads what waits; true on Ctrl-Alt-Del.
    /// Without one it touches no port (a port access is an exit to the VMM).
    pub fn poll(&mut self) -> bool {
        let count = irq::count(VECTOR);
        if count == self.seen {
            return false;
        }
        self.seen = count;
        let mut pressed = false;
        for _ in 0..32 {
            if arch::inb(STATUS) & OUTPUT_FULL == 0 {
                break;
            }
            pressed |= self.watch.feed(arch::inb(DATA));
        }
        pressed
    }

    /// Halts until Ctrl-Alt-Del or `deadline` (TSC); true on Ctrl-Alt-Del. The wake-up timer
    /// must run for the deadline to be seen.
    pub fn wait(&mut self, deadline: u64) -> bool {
        while !time::passed(deadline) {
            if self.poll() {
                return true;
            }
            irq::wait_for(VECTOR, self.seen, deadline);
        }
        self.poll()
    }
}
