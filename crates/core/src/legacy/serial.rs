//! COM1: a 16550 UART (vm-superio) whose output goes to the VM's console
//! sink and whose interrupt is an irqfd on IRQ 4.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the serial interrupt by signalling the irqfd KVM listens on.
pub struct IrqTrigger(pub Arc<EventFd>);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Collects bytes the UART emits; they reach the sink once per guest access,
/// so a `rep outsb` of a whole line costs one write to the host.
pub struct Collector {
    pending: Vec<u8>,
}

impl Write for Collector {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where console output goes.
pub type ConsoleSink = Box<dyn Write + Send>;

pub struct SerialConsole {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Collector>,
    irq: Arc<EventFd>,
    sink: ConsoleSink,
}

/// The UART's registers and its receive FIFO in a snapshot (vm-superio's `SerialState`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSaved {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl SerialConsole {
    pub fn new(irq: Arc<EventFd>, sink: ConsoleSink) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(SerialConsole {
            uart: Serial::new(IrqTrigger(irq.clone()), Collector { pending: Vec::new() }),
            irq,
            sink,
        }))
    }

    /// Feeds host input to the guest.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// The UART's state, for a snapshot.
    pub fn state(&self) -> SerialSaved {
        let s = self.uart.state();
        SerialSaved {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Takes a snapshot's UART state (the output goes on to this console's sink).
    pub fn restore(&mut self, saved: &SerialSaved) -> Result<(), String> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: saved.baud_divisor_low,
            baud_divisor_high: saved.baud_divisor_high,
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        let trigger = IrqTrigger(self.irq.clone());
        let collector = Collector { pending: Vec::new() };
        self.uart = Serial::from_state(&state, trigger, vm_superio::serial::NoEvents, collector)
            .map_err(|e| format!("the serial port's state: {e:?}"))?;
        Ok(())
    }

    fn drain(&mut self) {
        let out = &mut self.uart.writer_mut().pending;
        if !out.is_empty() {
            // A closed or full console must not stop the guest: drop output.
            let _ = self.sink.write_all(out);
            let _ = self.sink.flush();
            out.clear();
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for b in data.iter_mut() {
            *b = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for &b in data {
            let _ = self.uart.write(offset as u8, b);
        }
        self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_string_write_reaches_the_sink_in_one_piece() {
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let out = Shared::default();
        let console = SerialConsole::new(irq.clone(), Box::new(out.clone()));
        console.lock().unwrap().write(0, b"BH ready\n");
        assert_eq!(&*out.0.lock().unwrap(), b"BH ready\n");
        // Enable the "data available" interrupt, then feed input.
        console.lock().unwrap().write(1, &[0x01]);
        assert_eq!(console.lock().unwrap().input(b"x"), 1);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8];
        console.lock().unwrap().read(0, &mut b);
        assert_eq!(b, *b"x");
    }
}
