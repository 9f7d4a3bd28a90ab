//! An 82093AA-style I/O APIC (version 0x11, 24 pins) emulated in the core.
//!
//! The guest programs redirection entries through IOREGSEL (offset 0x00) and
//! IOWIN (0x10). For every pin that has a device (an irqfd) and is unmasked,
//! the entry becomes a KVM MSI route on the pin's GSI and the irqfd is
//! registered, so interrupts flow device → KVM → local APIC. Masking a pin
//! unregisters its irqfd: signals raised while masked accumulate in the
//! eventfd, and KVM delivers them as soon as the pin is unmasked (an irqfd
//! that is readable when registered fires at once). No interrupt is lost.
//!
//! All device interrupts are edge-triggered; an entry the guest marks
//! level-triggered is delivered the same way.

use std::sync::Arc;

use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::IOAPIC_PINS;
use crate::bus::BusDevice;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIRECTION: u32 = 0x10;
/// Version 0x11 with the highest redirection entry (23) in bits 16-23.
const VERSION: u32 = 0x11 | (((IOAPIC_PINS as u32) - 1) << 16);
const MASKED: u64 = 1 << 16;

/// The guest's view of the I/O APIC and the routes it implies.
pub struct IoApic {
    vm: Arc<VmFd>,
    select: u32,
    id: u32,
    entries: [u64; IOAPIC_PINS],
    sources: [Option<Arc<EventFd>>; IOAPIC_PINS],
    registered: [bool; IOAPIC_PINS],
}

/// The I/O APIC's registers in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoApicState {
    pub id: u32,
    pub select: u32,
    /// The 24 redirection entries.
    pub entries: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum IoApicError {
    #[error("I/O APIC pin {0} does not exist or is already taken")]
    Pin(usize),
}

impl IoApic {
    pub fn new(vm: Arc<VmFd>) -> Self {
        IoApic {
            vm,
            select: 0,
            id: 0,
            entries: [MASKED; IOAPIC_PINS],
            sources: Default::default(),
            registered: [false; IOAPIC_PINS],
        }
    }

    /// Connects a device's interrupt eventfd to `pin`.
    pub fn connect(&mut self, pin: usize, source: Arc<EventFd>) -> Result<(), IoApicError> {
        match self.sources.get_mut(pin) {
            Some(slot @ None) => {
                *slot = Some(source);
                Ok(())
            }
            _ => Err(IoApicError::Pin(pin)),
        }
    }

    /// What the guest programmed, for a snapshot.
    pub fn state(&self) -> IoApicState {
        IoApicState { id: self.id, select: self.select, entries: self.entries.to_vec() }
    }

    /// Takes what a snapshot saved, and routes every connected pin it unmasks.
    pub fn restore(&mut self, state: &IoApicState) -> Result<(), String> {
        if state.entries.len() != IOAPIC_PINS {
            return Err(format!(
                "the I/O APIC has {} redirection entries where {IOAPIC_PINS} were expected",
                state.entries.len()
            ));
        }
        self.id = state.id & 0xf;
        self.select = state.select;
        self.entries.copy_from_slice(&state.entries);
        for pin in 0..IOAPIC_PINS {
            self.update(pin);
        }
        Ok(())
    }

    /// An end of interrupt for `vector` (split-irqchip EOI exit). Entries are
    /// delivered edge-triggered, so there is no remote IRR to clear.
    pub fn end_of_interrupt(&mut self, _vector: u8) {}

    fn read_register(&self, reg: u32) -> u32 {
        match reg {
            REG_ID => self.id << 24,
            REG_VERSION => VERSION,
            REG_ARBITRATION => self.id << 24,
            r if (REG_REDIRECTION..REG_REDIRECTION + 2 * IOAPIC_PINS as u32).contains(&r) => {
                let entry = self.entries[((r - REG_REDIRECTION) / 2) as usize];
                if r % 2 == 0 {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u32, value: u32) {
        match reg {
            REG_ID => self.id = (value >> 24) & 0xf,
            r if (REG_REDIRECTION..REG_REDIRECTION + 2 * IOAPIC_PINS as u32).contains(&r) => {
                let pin = ((r - REG_REDIRECTION) / 2) as usize;
                let old = self.entries[pin];
                // Delivery status (bit 12) and remote IRR (bit 14) are read-only.
                let entry = if r % 2 == 0 {
                    (old & !0xffff_ffff) | u64::from(value & !(1 << 12 | 1 << 14))
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                self.entries[pin] = entry;
                if entry != old {
                    self.update(pin);
                }
            }
            _ => {}
        }
    }

    /// Brings KVM's routes and irqfds in line with the entries after `pin` changed.
    fn update(&mut self, pin: usize) {
        let Some(source) = self.sources[pin].clone() else { return };
        let unmasked = self.entries[pin] & MASKED == 0;
        if unmasked {
            // Route first, then register: a pending signal fires on registration.
            self.set_routes();
            if !self.registered[pin] && self.vm.register_irqfd(&source, pin as u32).is_ok() {
                self.registered[pin] = true;
            }
        } else {
            if self.registered[pin] && self.vm.unregister_irqfd(&source, pin as u32).is_ok() {
                self.registered[pin] = false;
            }
            self.set_routes();
        }
    }

    fn set_routes(&self) {
        let routes: Vec<_> = (0..IOAPIC_PINS)
            .filter(|&pin| self.sources[pin].is_some() && self.entries[pin] & MASKED == 0)
            .map(|pin| msi_route(pin as u32, self.entries[pin]))
            .collect();
        let mut table = KvmIrqRouting::new(0).expect("an empty routing table");
        for route in routes {
            table.push(route).expect("24 routes fit KVM's table");
        }
        if let Err(e) = self.vm.set_gsi_routing(&table) {
            log::error!("cannot update interrupt routes: {e}");
        }
    }
}

/// The MSI a redirection entry describes, as a route for GSI `gsi`.
pub fn msi_route(gsi: u32, entry: u64) -> kvm_irq_routing_entry {
    let (address, data) = msi_message(entry);
    let mut route = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
    route.u.msi.address_lo = address;
    route.u.msi.address_hi = 0;
    route.u.msi.data = data;
    route
}

/// (address, data) of the MSI equivalent to a redirection entry.
pub fn msi_message(entry: u64) -> (u32, u32) {
    let vector = (entry & 0xff) as u32;
    let delivery_mode = ((entry >> 8) & 0x7) as u32;
    let logical = ((entry >> 11) & 1) as u32;
    let destination = ((entry >> 56) & 0xff) as u32;
    let lowest_priority = u32::from(delivery_mode == 1);
    let address = 0xfee0_0000 | (destination << 12) | (lowest_priority << 3) | (logical << 2);
    (address, vector | (delivery_mode << 8))
}

impl BusDevice for IoApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => self.select,
            IOWIN => self.read_register(self.select),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL => self.select = value & 0xff,
            IOWIN => self.write_register(self.select, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirection_entries_become_msi_messages() {
        // Vector 0x31, fixed delivery, physical destination APIC 2.
        let (address, data) = msi_message(0x31 | (2 << 56));
        assert_eq!(address, 0xfee0_2000);
        assert_eq!(data, 0x31);
        // Lowest priority, logical destination 0x0f.
        let (address, data) = msi_message(0x40 | (1 << 8) | (1 << 11) | (0x0f << 56));
        assert_eq!(address, 0xfee0_f00c);
        assert_eq!(data, 0x140);
    }

    fn ioapic() -> IoApic {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        super::super::enable_split_irqchip(&vm).unwrap();
        IoApic::new(Arc::new(vm))
    }

    fn write_reg(a: &mut IoApic, reg: u32, value: u32) {
        a.write(IOREGSEL, &reg.to_le_bytes());
        a.write(IOWIN, &value.to_le_bytes());
    }

    fn read_reg(a: &mut IoApic, reg: u32) -> u32 {
        a.write(IOREGSEL, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        a.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn registers_read_back_and_unmasking_registers_the_irqfd() {
        let mut a = ioapic();
        assert_eq!(read_reg(&mut a, REG_VERSION), 0x0017_0011);
        assert_eq!(read_reg(&mut a, REG_REDIRECTION + 8), MASKED as u32, "pins start masked");
        let source = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        a.connect(4, source.clone()).unwrap();
        assert!(a.connect(4, source.clone()).is_err());
        assert!(a.connect(24, source.clone()).is_err());
        write_reg(&mut a, REG_REDIRECTION + 9, 0x0100_0000); // destination APIC 1
        write_reg(&mut a, REG_REDIRECTION + 8, 0x24 | 1 << 12); // vector 0x24, unmasked
        assert_eq!(read_reg(&mut a, REG_REDIRECTION + 8), 0x24, "delivery status is read-only");
        assert!(a.registered[4]);
        write_reg(&mut a, REG_REDIRECTION + 8, 0x24 | MASKED as u32);
        assert!(!a.registered[4]);
        // While masked the eventfd keeps the signal for later.
        source.write(1).unwrap();
        assert_eq!(source.read().unwrap(), 1);
    }
}
