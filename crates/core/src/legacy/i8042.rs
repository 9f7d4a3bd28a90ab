//! An i8042 keyboard controller with a PS/2 keyboard behind it, as much of both as Linux's
//! `i8042` and `atkbd` drivers use, so that the host can press Ctrl-Alt-Del
//! ([`Keyboard::press_ctrl_alt_del`]) and the guest can reset the machine (command 0xfe).
//!
//! # The protocol
//!
//! Two ports. **0x64** reads the status register and takes controller commands; **0x60**
//! reads the output buffer and takes a controller command's parameter or, otherwise, a byte
//! for the keyboard. Every byte the guest reads comes from one output buffer of
//! [`BUFFER_BYTES`] bytes: answers to controller commands go to its front (the next read),
//! the keyboard's bytes (its answers, and scan codes) to its back.
//!
//! - Status: bit 0 *output buffer full* (a byte waits at 0x60), bit 2 the command byte's
//!   *system flag*, bit 3 *the last write was a command* (to 0x64), bit 4 *not inhibited*
//!   (no key lock). The input buffer is never full (bit 1): every write is taken at once.
//! - Controller commands (0x64): 0x20 reads the command byte, 0x60 writes it (the next byte on
//!   0x60), 0xaa self-test → 0x55, 0xab keyboard interface test → 0x00, 0xad/0xae disable and
//!   enable the keyboard interface (command byte bit 4), 0xa7/0xa8 disable and enable the AUX
//!   port — there is none, so 0xa8 leaves it disabled, which is how Linux tells — 0xa9 AUX
//!   interface test → 0x01 (clock line stuck: no port), 0xd0/0xd1 read and write the output
//!   port (bit 0 clear: the reset line, as on a PC), 0xd2 puts the next byte in the output
//!   buffer as if the keyboard sent it, 0xd3/0xd4 take a byte for the absent AUX port and drop
//!   it, 0xf0–0xff pulse the output lines: with bit 0 clear (0xfe: Linux's `reboot=k`) that
//!   is the CPU reset line, and the VM ends as rebooted. Other commands are ignored.
//! - Command byte: bit 0 keyboard interrupt on, bit 1 AUX interrupt (no effect), bit 2 system
//!   flag, bit 4 keyboard interface disabled, bit 5 AUX disabled, bit 6 translation to scan
//!   code set 1. At power-on it is 0x05, as Firecracker's: interrupt on, **no translation**.
//!   Linux then sets `i8042_direct` (it keeps a controller that does not translate as it is)
//!   and atkbd reads scan code set 2 — the codes Firecracker sends.
//! - Keyboard commands (0x60): 0xff reset → 0xfa 0xaa (scanning on, set 2), 0xf2 identify →
//!   0xfa 0xab 0x83 (0xab 0x41 while translating, as a translating controller hands it on),
//!   0xf4/0xf5 enable/disable scanning → 0xfa, 0xf6 defaults → 0xfa, 0xed LEDs, 0xf3
//!   typematic rate, 0xf0 scan code set: 0xfa, then their argument byte → 0xfa (0xf0 with 0
//!   answers the set in use after the 0xfa), 0xee echo → 0xee, 0xf7–0xfe → 0xfa; any other
//!   byte → 0xfe (resend: not a command). A command clears what the keyboard had not yet
//!   sent, as a keyboard stops and answers.
//! - **Interrupt** (IRQ 1, an irqfd on I/O APIC pin 1): whenever a byte comes to wait at the
//!   head of the output buffer while the command byte's bit 0 is set: a byte put in an empty
//!   buffer, the next byte after a read, the bit set while a byte waits. Linux's handler reads
//!   one byte per interrupt, as a real controller gives one.
//! - **Ctrl-Alt-Del**: Ctrl, Alt and Delete pressed, then released in reverse order — set 2
//!   `14 11 e0 71 e0 f0 71 f0 11 f0 14`, or with translation on set 1 `1d 38 e0 53 e0 d3 b8
//!   9d`. Firecracker sends the three presses only; the releases leave the guest's keyboard
//!   state as a real key press does. Nothing is sent while scanning is disabled (0xf5) or the
//!   interface is (0xad, command byte bit 4): a real keyboard then drops the keys.
//!
//! Everything the guest writes is a byte it may choose freely: every value on either port is
//! answered or ignored, and nothing panics.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::{ExitLatch, VmExit};

/// The data port's and the status/command port's offsets from the base, port 0x60.
const DATA: u64 = 0;
const COMMAND: u64 = 4;

/// The controller's output buffer (Firecracker's is as large).
pub const BUFFER_BYTES: usize = 16;

/// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM: u8 = 1 << 2;
const STATUS_COMMAND: u8 = 1 << 3;
const STATUS_NOT_INHIBITED: u8 = 1 << 4;

/// Command byte bits.
const CTR_KBD_INTERRUPT: u8 = 1 << 0;
const CTR_SYSTEM: u8 = 1 << 2;
const CTR_KBD_DISABLED: u8 = 1 << 4;
const CTR_AUX_DISABLED: u8 = 1 << 5;
const CTR_TRANSLATE: u8 = 1 << 6;
/// The command byte at power-on.
const CTR_AT_RESET: u8 = CTR_KBD_INTERRUPT | CTR_SYSTEM;

/// Keyboard answers.
const ACK: u8 = 0xfa;
const RESEND: u8 = 0xfe;
const SELF_TEST_PASSED: u8 = 0xaa;
const ECHO: u8 = 0xee;

/// Ctrl-Alt-Del pressed and released, in scan code set 2 and in set 1.
const CAD_SET2: &[u8] = &[0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14];
const CAD_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// What the next byte written to 0x60 is for, after a controller command that takes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parameter {
    CommandByte,
    OutputPort,
    KeyboardOutput,
    Aux,
}

/// The controller and its keyboard, on ports 0x60–0x64 (0x61–0x63 read as all ones).
pub struct I8042 {
    exit: ExitLatch,
    irq: Arc<EventFd>,
    command_byte: u8,
    output_port: u8,
    /// The last write went to the command port (status bit 3).
    last_was_command: bool,
    parameter: Option<Parameter>,
    output: VecDeque<u8>,
    keyboard: PsKeyboard,
}

/// The keyboard's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PsKeyboard {
    scanning: bool,
    set: u8,
    /// A command waiting for its argument byte (0xed, 0xf0, 0xf3).
    awaiting: Option<u8>,
}

impl PsKeyboard {
    const AT_RESET: PsKeyboard = PsKeyboard { scanning: true, set: 2, awaiting: None };
}

/// What pressing keys did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pressed {
    /// The scan codes were put in the output buffer (false: the guest disabled its keyboard,
    /// which drops them).
    pub queued: bool,
    /// The command byte has keyboard interrupts on: IRQ 1 was raised (false: the bytes wait
    /// for a guest that reads them without).
    pub interrupt: bool,
}

/// Why keys could not be pressed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PressError {
    #[error(
        "the keyboard controller's buffer holds {waiting} bytes the guest has not read; the \
         guest is not reading its keyboard (try again once it has, or stop the VM otherwise)"
    )]
    BufferFull { waiting: usize },
}

impl I8042 {
    pub fn new(exit: ExitLatch, irq: Arc<EventFd>) -> Self {
        I8042 {
            exit,
            irq,
            command_byte: CTR_AT_RESET,
            output_port: 0x01,
            last_was_command: false,
            parameter: None,
            output: VecDeque::with_capacity(BUFFER_BYTES),
            keyboard: PsKeyboard::AT_RESET,
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_NOT_INHIBITED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.command_byte & CTR_SYSTEM != 0 {
            status |= STATUS_SYSTEM;
        }
        if self.last_was_command {
            status |= STATUS_COMMAND;
        }
        status
    }

    fn translating(&self) -> bool {
        self.command_byte & CTR_TRANSLATE != 0
    }

    /// Raises IRQ 1 if the command byte lets the keyboard interrupt. The eventfd never blocks
    /// (it is non-blocking, and a counter that could overflow has billions of signals
    /// waiting); a failure is dropped, as a lost edge is on a real bus.
    fn interrupt(&self) -> bool {
        if self.command_byte & CTR_KBD_INTERRUPT == 0 {
            return false;
        }
        let _ = self.irq.write(1);
        true
    }

    /// A controller's answer: read next, before anything the keyboard sent.
    fn answer(&mut self, byte: u8) {
        let was_empty = self.output.is_empty();
        if self.output.len() == BUFFER_BYTES {
            self.output.pop_back();
        }
        self.output.push_front(byte);
        if was_empty {
            self.interrupt();
        }
    }

    /// Bytes from the keyboard, after what waits; false (and nothing queued) if they do not
    /// all fit.
    fn keyboard_sends(&mut self, bytes: &[u8]) -> bool {
        if BUFFER_BYTES - self.output.len() < bytes.len() {
            return false;
        }
        let was_empty = self.output.is_empty();
        self.output.extend(bytes);
        if was_empty && !bytes.is_empty() {
            self.interrupt();
        }
        true
    }

    /// Presses and releases Ctrl, Alt and Delete.
    pub fn press_ctrl_alt_del(&mut self) -> Result<Pressed, PressError> {
        if !self.keyboard.scanning || self.command_byte & CTR_KBD_DISABLED != 0 {
            return Ok(Pressed { queued: false, interrupt: false });
        }
        let codes = if self.translating() { CAD_SET1 } else { CAD_SET2 };
        if !self.keyboard_sends(codes) {
            return Err(PressError::BufferFull { waiting: self.output.len() });
        }
        Ok(Pressed { queued: true, interrupt: self.command_byte & CTR_KBD_INTERRUPT != 0 })
    }

    fn read_data(&mut self) -> u8 {
        // An empty buffer reads as its last byte would on hardware; 0 is as good.
        let byte = self.output.pop_front().unwrap_or(0);
        if !self.output.is_empty() {
            self.interrupt();
        }
        byte
    }

    fn command(&mut self, command: u8) {
        self.parameter = None;
        match command {
            0x20 => self.answer(self.command_byte),
            0x60 => self.parameter = Some(Parameter::CommandByte),
            0xa7 => self.command_byte |= CTR_AUX_DISABLED,
            0xa8 => {} // no AUX port: it stays disabled
            0xa9 => self.answer(0x01),
            0xaa => self.answer(0x55),
            0xab => self.answer(0x00),
            0xad => self.command_byte |= CTR_KBD_DISABLED,
            0xae => self.command_byte &= !CTR_KBD_DISABLED,
            0xd0 => self.answer(self.output_port),
            0xd1 => self.parameter = Some(Parameter::OutputPort),
            0xd2 => self.parameter = Some(Parameter::KeyboardOutput),
            0xd3 | 0xd4 => self.parameter = Some(Parameter::Aux),
            // Pulse output lines low; bit 0 is the CPU's reset line.
            0xf0..=0xff if command & 1 == 0 => self.exit.request(VmExit::Reboot),
            _ => {}
        }
    }

    fn write_data(&mut self, byte: u8) {
        match self.parameter.take() {
            Some(Parameter::CommandByte) => {
                let before = self.command_byte;
                self.command_byte = byte;
                let turned_on = before & CTR_KBD_INTERRUPT == 0 && byte & CTR_KBD_INTERRUPT != 0;
                if turned_on && !self.output.is_empty() {
                    self.interrupt();
                }
            }
            Some(Parameter::OutputPort) => {
                self.output_port = byte;
                if byte & 1 == 0 {
                    self.exit.request(VmExit::Reboot);
                }
            }
            Some(Parameter::KeyboardOutput) => {
                self.keyboard_sends(&[byte]);
            }
            Some(Parameter::Aux) => {}
            None => self.keyboard_takes(byte),
        }
    }

    /// A byte for the keyboard: a command, or the argument of the one before.
    fn keyboard_takes(&mut self, byte: u8) {
        // The keyboard stops sending what it had not sent, and answers.
        self.output.clear();
        let kbd = &mut self.keyboard;
        if let Some(command) = kbd.awaiting.take() {
            if command == 0xf0 && (1..=3).contains(&byte) {
                kbd.set = byte;
            }
            if command == 0xf0 && byte == 0 {
                let set = kbd.set;
                self.keyboard_sends(&[ACK, set]);
            } else {
                self.keyboard_sends(&[ACK]);
            }
            return;
        }
        match byte {
            0xff => {
                *kbd = PsKeyboard::AT_RESET;
                self.keyboard_sends(&[ACK, SELF_TEST_PASSED]);
            }
            0xf2 => {
                let id = if self.translating() { 0x41 } else { 0x83 };
                self.keyboard_sends(&[ACK, 0xab, id]);
            }
            0xed | 0xf0 | 0xf3 => {
                kbd.awaiting = Some(byte);
                self.keyboard_sends(&[ACK]);
            }
            0xf4 => {
                kbd.scanning = true;
                self.keyboard_sends(&[ACK]);
            }
            0xf5 | 0xf6 => {
                kbd.scanning = byte == 0xf6;
                kbd.set = 2;
                self.keyboard_sends(&[ACK]);
            }
            0xee => {
                self.keyboard_sends(&[ECHO]);
            }
            0xf7..=0xfe => {
                self.keyboard_sends(&[ACK]);
            }
            _ => {
                self.keyboard_sends(&[RESEND]);
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (DATA, 1) => self.read_data(),
            (COMMAND, 1) => self.status(),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [byte] = data else { return };
        match offset {
            DATA => {
                self.last_was_command = false;
                self.write_data(*byte);
            }
            COMMAND => {
                self.last_was_command = true;
                self.command(*byte);
            }
            _ => {}
        }
    }
}

/// The host's hand on the keyboard: what the management API presses keys with. Pressing never
/// waits on the guest: it takes the controller's lock (held by a vCPU only for one port
/// access) and signals an eventfd.
#[derive(Clone)]
pub struct Keyboard(pub(crate) Arc<Mutex<I8042>>);

impl Keyboard {
    pub fn new(i8042: Arc<Mutex<I8042>>) -> Self {
        Keyboard(i8042)
    }

    /// Presses and releases Ctrl-Alt-Del (see the module's documentation).
    pub fn press_ctrl_alt_del(&self) -> Result<Pressed, PressError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).press_ctrl_alt_del()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (I8042, Arc<EventFd>, ExitLatch) {
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let exit = ExitLatch::new().unwrap();
        (I8042::new(exit.clone(), irq.clone()), irq, exit)
    }

    fn status(i: &mut I8042) -> u8 {
        let mut b = [0];
        i.read(COMMAND, &mut b);
        b[0]
    }

    /// Linux's `i8042_command`: the command, its parameter, then the bytes it expects,
    /// each read once the status says one is there.
    fn command(i: &mut I8042, command: u8, param: Option<u8>, answers: usize) -> Vec<u8> {
        i.write(COMMAND, &[command]);
        if let Some(p) = param {
            i.write(DATA, &[p]);
        }
        (0..answers)
            .map(|_| {
                assert_ne!(status(i) & STATUS_OUTPUT_FULL, 0, "no answer to {command:#x}");
                let mut b = [0];
                i.read(DATA, &mut b);
                b[0]
            })
            .collect()
    }

    /// Reads everything waiting, as an interrupt handler reading a byte per interrupt.
    fn drain(i: &mut I8042) -> Vec<u8> {
        let mut bytes = Vec::new();
        while status(i) & STATUS_OUTPUT_FULL != 0 {
            let mut b = [0];
            i.read(DATA, &mut b);
            bytes.push(b[0]);
        }
        bytes
    }

    fn interrupts(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    #[test]
    fn linux_probes_the_controller_and_the_keyboard() {
        let (mut i, irq, exit) = controller();
        // i8042_controller_check: flush, then the status is not 0xff.
        assert!(drain(&mut i).is_empty());
        assert_eq!(status(&mut i) & STATUS_OUTPUT_FULL, 0);
        assert_ne!(status(&mut i), 0xff);
        // i8042_controller_selftest.
        assert_eq!(command(&mut i, 0xaa, None, 1), [0x55]);
        // i8042_controller_init: the command byte read twice, keyboard disabled and its
        // interrupt off, no key lock, no translation (so i8042_direct), written back.
        let ctr = command(&mut i, 0x20, None, 1)[0];
        assert_eq!(command(&mut i, 0x20, None, 1)[0], ctr);
        assert_eq!(ctr & CTR_TRANSLATE, 0);
        assert_ne!(status(&mut i) & STATUS_NOT_INHIBITED, 0);
        let ctr = (ctr | CTR_KBD_DISABLED) & !CTR_KBD_INTERRUPT;
        command(&mut i, 0x60, Some(ctr), 0);
        assert!(drain(&mut i).is_empty());
        assert_eq!(interrupts(&irq), 3, "three answers while the power-on byte had it on");
        // i8042_check_aux (without i8042.noaux): the AUX port disables, and does not enable.
        command(&mut i, 0xa7, None, 0);
        assert_ne!(command(&mut i, 0x20, None, 1)[0] & CTR_AUX_DISABLED, 0);
        command(&mut i, 0xa8, None, 0);
        assert_ne!(command(&mut i, 0x20, None, 1)[0] & CTR_AUX_DISABLED, 0);
        assert_eq!(command(&mut i, 0xa9, None, 1), [0x01]);
        // The keyboard port: interface test, then enabled with its interrupt.
        assert_eq!(command(&mut i, 0xab, None, 1), [0x00]);
        let ctr = (ctr & !CTR_KBD_DISABLED) | CTR_KBD_INTERRUPT | CTR_AUX_DISABLED;
        command(&mut i, 0x60, Some(ctr), 0);
        assert_eq!(command(&mut i, 0x20, None, 1), [ctr]);
        assert_eq!(interrupts(&irq), 1, "the command byte's answer, interrupt on");
        // atkbd without i8042.dumbkbd: deactivate, identify, LEDs, typematic rate, activate,
        // each byte acked with an interrupt.
        let mut kbd = |bytes: &[u8]| {
            i.write(DATA, bytes);
            drain(&mut i)
        };
        assert_eq!(kbd(&[0xf5]), [ACK]);
        assert_eq!(kbd(&[0xf2]), [ACK, 0xab, 0x83]);
        assert_eq!(kbd(&[0xed]), [ACK]);
        assert_eq!(kbd(&[0x00]), [ACK]);
        assert_eq!(kbd(&[0xf3]), [ACK]);
        assert_eq!(kbd(&[0x2b]), [ACK]);
        assert_eq!(kbd(&[0xf0]), [ACK]);
        assert_eq!(kbd(&[0x00]), [ACK, 2]);
        assert_eq!(kbd(&[0xf4]), [ACK]);
        assert_eq!(kbd(&[0xff]), [ACK, SELF_TEST_PASSED]);
        assert_eq!(kbd(&[0xee]), [ECHO]);
        assert_eq!(kbd(&[0x42]), [RESEND]);
        // One interrupt per byte.
        assert_eq!(interrupts(&irq), 16);
        // The output port and A20, without a reset.
        command(&mut i, 0xd1, Some(0xdf), 0);
        assert_eq!(command(&mut i, 0xd0, None, 1), [0xdf]);
        assert!(!exit.is_set());
        // reboot=k.
        i.write(COMMAND, &[0xfe]);
        assert_eq!(exit.get(), Some(VmExit::Reboot));
    }

    #[test]
    fn ctrl_alt_del_is_set_2_then_set_1_when_translating() {
        let (mut i, irq, _) = controller();
        let pressed = i.press_ctrl_alt_del().unwrap();
        assert_eq!(pressed, Pressed { queued: true, interrupt: true });
        assert_eq!(interrupts(&irq), 1);
        assert_eq!(drain(&mut i), CAD_SET2);
        assert_eq!(interrupts(&irq), CAD_SET2.len() as u64 - 1, "one more per byte left");
        command(&mut i, 0x60, Some(CTR_AT_RESET | CTR_TRANSLATE), 0);
        i.press_ctrl_alt_del().unwrap();
        assert_eq!(drain(&mut i), CAD_SET1);
    }

    #[test]
    fn the_interrupt_follows_the_command_byte() {
        let (mut i, irq, _) = controller();
        command(&mut i, 0x60, Some(CTR_SYSTEM), 0);
        let pressed = i.press_ctrl_alt_del().unwrap();
        assert_eq!(pressed, Pressed { queued: true, interrupt: false });
        assert_eq!(interrupts(&irq), 0);
        // Turning the interrupt on while bytes wait raises it; reading a byte acknowledges it,
        // and the next byte raises it again.
        command(&mut i, 0x60, Some(CTR_SYSTEM | CTR_KBD_INTERRUPT), 0);
        assert_eq!(interrupts(&irq), 1);
        let mut b = [0];
        i.read(DATA, &mut b);
        assert_eq!(b[0], CAD_SET2[0]);
        assert_eq!(interrupts(&irq), 1);
        // A controller's answer comes before the keys still waiting.
        assert_eq!(command(&mut i, 0xaa, None, 1), [0x55]);
        assert_eq!(drain(&mut i), &CAD_SET2[1..]);
    }

    #[test]
    fn a_disabled_keyboard_drops_keys_and_a_full_buffer_refuses_them() {
        let (mut i, _, _) = controller();
        command(&mut i, 0xad, None, 0);
        assert!(!i.press_ctrl_alt_del().unwrap().queued);
        command(&mut i, 0xae, None, 0);
        i.write(DATA, &[0xf5]);
        drain(&mut i);
        assert!(!i.press_ctrl_alt_del().unwrap().queued);
        i.write(DATA, &[0xf4]);
        drain(&mut i);
        i.press_ctrl_alt_del().unwrap();
        let err = i.press_ctrl_alt_del().unwrap_err();
        assert_eq!(err, PressError::BufferFull { waiting: CAD_SET2.len() });
        assert_eq!(drain(&mut i), CAD_SET2, "the first press is whole");
    }

    #[test]
    fn any_byte_on_any_port_is_answered_or_ignored() {
        // A hostile guest: every pair of (port, byte) writes, reads between them; the only
        // effects are bytes to read, the reset, and a bounded buffer.
        let (mut i, irq, exit) = controller();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let byte = state as u8;
            let offset = (state >> 8) % 6;
            let len = 1 + ((state >> 16) % 4) as usize;
            if state >> 20 & 1 == 0 {
                i.write(offset, &vec![byte; len]);
            } else {
                let mut b = vec![0u8; len];
                i.read(offset, &mut b);
            }
            assert!(i.output.len() <= BUFFER_BYTES);
            let _ = i.press_ctrl_alt_del();
        }
        let _ = interrupts(&irq);
        // Commands 0xf0-0xff with bit 0 clear reset: a random walk finds one.
        assert_eq!(exit.get(), Some(VmExit::Reboot));
        let mut b = [0u8; 2];
        i.read(DATA, &mut b);
        assert_eq!(b, [0xff, 0xff], "a wide access is not a register");
    }
}
