//! Powering off and resetting the machine the way ACPI says, with the
//! conventional fallbacks (QEMU's isa-debug-exit, the i8042 reset line, which also ends a
//! power-off on a microVM without ACPI).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::acpi::{Fadt, Gas};
use crate::arch;

/// The FADT found at boot, packed for lock-free sharing between CPUs:
/// `None` until [`set_fadt`] is called.
static FADT: spin_cell::Cell = spin_cell::Cell::new();

pub fn set_fadt(fadt: Fadt) {
    FADT.set(fadt);
}

fn write_gas(gas: &Gas, value: u64) {
    let bits = if gas.bit_width == 0 { 8 } else { gas.bit_width };
    match gas.space {
        Gas::SYSTEM_IO => {
            let port = gas.address as u16;
            match bits {
                8 => arch::outb(port, value as u8),
                16 => arch::outw(port, value as u16),
                _ => arch::outl(port, value as u32),
            }
        }
        Gas::SYSTEM_MEMORY if gas.address < 1 << 32 => {
            let addr = gas.address as usize;
            // SAFETY: ACPI names this register as memory-mapped below 4 GiB,
            // which the page tables map; writing it is its purpose.
            unsafe {
                match bits {
                    8 => core::ptr::write_volatile(addr as *mut u8, value as u8),
                    16 => core::ptr::write_volatile(addr as *mut u16, value as u16),
                    _ => core::ptr::write_volatile(addr as *mut u32, value as u32),
                }
            }
        }
        _ => {}
    }
}

/// Powers the machine off; never returns.
pub fn poweroff() -> ! {
    if let Some(fadt) = FADT.get() {
        let slp_typ = u64::from(fadt.s5_sleep_type.unwrap_or(5));
        if fadt.sleep_control.is_present() {
            write_gas(&fadt.sleep_control, (slp_typ << 2) | (1 << 5));
        }
        if fadt.pm1a_cnt != 0 {
            arch::outw(fadt.pm1a_cnt as u16, ((slp_typ << 10) | (1 << 13)) as u16);
        }
    }
    // QEMU's isa-debug-exit, if present; then, for a VMM with neither (Firecracker without
    // ACPI), the i8042's reset, which ends a microVM. Where a power-off above worked, the VM
    // has already ended (Bulkhead keeps the first request).
    arch::outb(0xf4, 0);
    arch::outb(0x64, 0xfe);
    stop()
}

/// Resets the machine; never returns.
pub fn reboot() -> ! {
    if let Some((gas, value)) = FADT.get().and_then(|f| f.reset) {
        write_gas(&gas, value.into());
    }
    arch::outb(0x64, 0xfe); // i8042 pulse reset line
    arch::crash()
}

/// Resets the machine through the i8042's reset line only, as Linux's `reboot=k` does;
/// never returns.
pub fn reset_by_keyboard_controller() -> ! {
    arch::outb(0x64, 0xfe);
    arch::crash()
}

/// Halts forever.
pub fn stop() -> ! {
    static NEVER: AtomicU64 = AtomicU64::new(0);
    loop {
        arch::wait_while(&NEVER, NEVER.load(Ordering::Relaxed));
    }
}

/// A write-once cell for the FADT, readable from any CPU.
mod spin_cell {
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicBool, Ordering};

    use crate::acpi::Fadt;

    pub struct Cell {
        ready: AtomicBool,
        value: UnsafeCell<Fadt>,
    }

    // SAFETY: the value is written once before `ready` is released and only
    // read after `ready` is acquired.
    unsafe impl Sync for Cell {}

    impl Cell {
        pub const fn new() -> Self {
            Cell {
                ready: AtomicBool::new(false),
                value: UnsafeCell::new(Fadt {
                    hw_reduced: false,
                    pm1a_cnt: 0,
                    sleep_control: crate::acpi::Gas { space: 0, bit_width: 0, address: 0 },
                    reset: None,
                    s5_sleep_type: None,
                }),
            }
        }

        pub fn set(&self, fadt: Fadt) {
            if self.ready.load(Ordering::Acquire) {
                return;
            }
            // SAFETY: set runs once, on the bootstrap processor, before any
            // reader can observe `ready`.
            unsafe { *self.value.get() = fadt };
            self.ready.store(true, Ordering::Release);
        }

        pub fn get(&self) -> Option<Fadt> {
            // SAFETY: read only after `ready` was published by `set`.
            self.ready.load(Ordering::Acquire).then(|| unsafe { *self.value.get() })
        }
    }
}
