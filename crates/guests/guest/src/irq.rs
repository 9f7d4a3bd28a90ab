//! Interrupts in ring 3's terms: routing an I/O APIC pin to a vector on this
//! CPU, the local APIC timer, and waiting for a vector's count to move.
//! (Ring 0's stubs count every vector in `irq_counts` and send the EOI.)
//!
//! A global system interrupt (GSI) is a pin of the I/O APIC whose range
//! (`gsi_base` up to its number of redirection entries) holds it; the MADT
//! lists the I/O APICs, and without one the standard I/O APIC at 0xfec00000
//! with GSIs from 0 is assumed. Device interrupts are routed edge-triggered:
//! Bulkhead signals them as MSIs and QEMU's microvm raises its line on
//! every notification, so an edge per completion arrives either way, and a
//! level-triggered pin would re-fire until ring 3 acknowledged the device.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::acpi::IoApic;
use crate::arch;

const IOAPIC_BASE: u64 = 0xfec0_0000;
const LAPIC_TIMER_LVT: u64 = 0xfee0_0320;
const LAPIC_TIMER_INITIAL: u64 = 0xfee0_0380;
const LAPIC_TIMER_DIVIDE: u64 = 0xfee0_03e0;

extern "C" {
    static irq_counts: [AtomicU64; 256];
}

/// How many times `vector` has been taken on any CPU.
pub fn count(vector: u8) -> u64 {
    counter(vector).load(Ordering::Acquire)
}

fn counter(vector: u8) -> &'static AtomicU64 {
    // SAFETY: `irq_counts` is a 256-entry array of 64-bit counters in
    // boot.s's .bss, updated only with `lock incq`; reading it atomically is
    // always sound.
    unsafe { &irq_counts[usize::from(vector)] }
}

fn ioapic_write(register: u32, value: u32) {
    ioapic_write_at(IOAPIC_BASE, register, value);
}

fn ioapic_write_at(base: u64, register: u32, value: u32) {
    // SAFETY: an I/O APIC window below 4 GiB is identity-mapped, reachable
    // from ring 3; IOREGSEL (offset 0) selects and IOWIN (offset 0x10)
    // writes a register. Nothing else in the guest uses the I/O APIC
    // concurrently (routing is done on the bootstrap processor).
    unsafe {
        core::ptr::write_volatile(base as *mut u32, register);
        core::ptr::write_volatile((base + 0x10) as *mut u32, value);
    }
}

fn ioapic_read_at(base: u64, register: u32) -> u32 {
    // SAFETY: as in `ioapic_write_at`; IOWIN reads the selected register.
    unsafe {
        core::ptr::write_volatile(base as *mut u32, register);
        core::ptr::read_volatile((base + 0x10) as *const u32)
    }
}

/// The I/O APIC (from `ioapics`, else the standard one) whose pins hold
/// `gsi`, and the pin: `None` if no I/O APIC has it.
pub fn find_gsi(ioapics: &[IoApic], gsi: u32) -> Option<(u64, u8)> {
    let standard = [IoApic { id: 0, address: IOAPIC_BASE as u32, gsi_base: 0 }];
    let list = if ioapics.is_empty() { &standard[..] } else { ioapics };
    list.iter().find_map(|io| {
        let base = u64::from(io.address);
        // IOAPICVER (register 1), bits 16-23: the highest redirection entry.
        let pins = ((ioapic_read_at(base, 1) >> 16) & 0xff) + 1;
        let pin = gsi.checked_sub(io.gsi_base).filter(|&p| p < pins)?;
        Some((base, pin as u8))
    })
}

/// Routes `gsi` to `vector` on the CPU with `apic_id`, edge-triggered,
/// active high; returns false if no I/O APIC has the GSI.
pub fn route_gsi(ioapics: &[IoApic], gsi: u32, vector: u8, apic_id: u32) -> bool {
    let Some((base, pin)) = find_gsi(ioapics, gsi) else {
        return false;
    };
    let register = 0x10 + 2 * u32::from(pin);
    ioapic_write_at(base, register + 1, apic_id << 24);
    ioapic_write_at(base, register, u32::from(vector));
    true
}

/// Masks I/O APIC `pin`.
pub fn mask(pin: u8) {
    ioapic_write(0x10 + 2 * u32::from(pin), 1 << 16);
}

/// Fires `vector` once on this CPU after `ticks` local APIC timer ticks
/// (divide by 1: under KVM, 1 GHz).
pub fn timer_oneshot(vector: u8, ticks: u32) {
    arch::mmio_write32(LAPIC_TIMER_DIVIDE, 0xb);
    arch::mmio_write32(LAPIC_TIMER_LVT, u32::from(vector));
    arch::mmio_write32(LAPIC_TIMER_INITIAL, ticks);
}

/// Fires `vector` on this CPU every `ticks` local APIC timer ticks (1 GHz
/// under KVM), until stopped with `timer_oneshot(_, 0)`: a wake-up for
/// waits with a deadline.
pub fn timer_periodic(vector: u8, ticks: u32) {
    arch::mmio_write32(LAPIC_TIMER_DIVIDE, 0xb);
    arch::mmio_write32(LAPIC_TIMER_LVT, u32::from(vector) | (1 << 17));
    arch::mmio_write32(LAPIC_TIMER_INITIAL, ticks);
}

/// The vector of the periodic wake-up timer.
pub const WAKE_VECTOR: u8 = 0x42;
const WAKE_TICKS: u32 = 10_000_000; // 10 ms
static WAKE_RUNNING: AtomicU32 = AtomicU32::new(0);

/// Starts a 10 ms periodic local APIC timer on this CPU, once: it bounds
/// every halt of a wait with a deadline (interrupt-driven I/O), at the cost
/// of 100 interrupts a second.
pub fn wake_start() {
    if WAKE_RUNNING.swap(1, Ordering::Relaxed) == 0 {
        timer_periodic(WAKE_VECTOR, WAKE_TICKS);
    }
}

/// Re-arms the wake-up timer if it was started, after the timer was used
/// for something else.
pub fn wake_resume() {
    if WAKE_RUNNING.load(Ordering::Relaxed) != 0 {
        timer_periodic(WAKE_VECTOR, WAKE_TICKS);
    }
}

/// Sleeps until `vector`'s count passes `seen` or `deadline` (TSC) passes;
/// returns the new count. A timer must be armed if `deadline` matters: a
/// halted CPU wakes only on an interrupt.
pub fn wait_for(vector: u8, seen: u64, deadline: u64) -> u64 {
    while count(vector) == seen && !crate::time::passed(deadline) {
        arch::wait_while(counter(vector), seen);
    }
    count(vector)
}
