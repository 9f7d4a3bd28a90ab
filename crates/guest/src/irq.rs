//! Interrupts in ring 3's terms: routing an I/O APIC pin to a vector on this
//! CPU, the local APIC timer, and waiting for a vector's count to move.
//! (Ring 0's stubs count every vector in `irq_counts` and send the EOI.)

use core::sync::atomic::{AtomicU64, Ordering};

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
    // SAFETY: the I/O APIC window is identity-mapped, reachable from ring 3;
    // IOREGSEL (offset 0) selects and IOWIN (offset 0x10) writes a register.
    unsafe {
        core::ptr::write_volatile(IOAPIC_BASE as *mut u32, register);
        core::ptr::write_volatile((IOAPIC_BASE + 0x10) as *mut u32, value);
    }
}

/// Routes I/O APIC `pin` to `vector` on the CPU with `apic_id`, edge-triggered.
pub fn route(pin: u8, vector: u8, apic_id: u32) {
    let register = 0x10 + 2 * u32::from(pin);
    ioapic_write(register + 1, apic_id << 24);
    ioapic_write(register, u32::from(vector));
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

/// Sleeps until `vector`'s count passes `seen` or `deadline` (TSC) passes;
/// returns the new count. A timer must be armed if `deadline` matters: a
/// halted CPU wakes only on an interrupt.
pub fn wait_for(vector: u8, seen: u64, deadline: u64) -> u64 {
    while count(vector) == seen && !crate::time::passed(deadline) {
        arch::wait_while(counter(vector), seen);
    }
    count(vector)
}
