//! Ring 0 (`boot.s`) and the system calls ring 3 uses to reach it.

use core::arch::{asm, global_asm};

/// The most CPUs the guest brings up; must match `crates/guests/guest-elf/build.rs`.
pub const MAX_CPUS: usize = 64;

global_asm!(".set MAX_CPUS, {n}", n = const MAX_CPUS, options(att_syntax));
global_asm!(include_str!("boot.s"), options(att_syntax, raw));

/// System call numbers (the order of `sys_table` in boot.s). Every call
/// ring 0 offers is listed, used or not, since this is its ABI.
#[allow(dead_code)]
#[derive(Clone, Copy)]
#[repr(u64)]
pub enum Sys {
    Write = 0,
    Outb = 1,
    Outw = 2,
    Outl = 3,
    Inb = 4,
    Inw = 5,
    Inl = 6,
    Wait = 7,
    MmioWrite32 = 8,
    MmioRead32 = 9,
    RepOutsb = 10,
    Crash = 11,
    Cpuid = 12,
}

/// Enters ring 0 through `ud2`. Like a function call, it may clobber the
/// caller-saved registers, which spares ring 0 (emulated on KVM-PVM) from
/// saving and restoring them.
#[inline(always)]
pub fn syscall(nr: Sys, a0: u64, a1: u64, a2: u64) -> u64 {
    let ret: u64;
    // SAFETY: `ud2` traps to the #UD handler in boot.s, which recognises the
    // instruction, performs call `nr` with the arguments in rdi/rsi/rdx and
    // resumes after the `ud2` with the result in rax; it touches no other
    // registers than those declared clobbered here, and no memory but what
    // the call's arguments point to (borrowed by the caller for its
    // duration). The red zone is safe: the trap switches to the ring-0 stack.
    unsafe {
        asm!("ud2",
             inout("rax") nr as u64 => ret,
             inout("rdi") a0 => _, inout("rsi") a1 => _, inout("rdx") a2 => _,
             out("rcx") _, out("r8") _, out("r9") _, out("r10") _, out("r11") _,
             options(nostack));
    }
    ret
}

pub fn outb(port: u16, value: u8) {
    syscall(Sys::Outb, port.into(), value.into(), 0);
}
pub fn outw(port: u16, value: u16) {
    syscall(Sys::Outw, port.into(), value.into(), 0);
}
pub fn outl(port: u16, value: u32) {
    syscall(Sys::Outl, port.into(), value.into(), 0);
}
pub fn inb(port: u16) -> u8 {
    syscall(Sys::Inb, port.into(), 0, 0) as u8
}

/// Halts this CPU until an interrupt arrives, unless `*word != value`
/// already (checked with interrupts off, so no wake-up is missed).
pub fn wait_while(word: &core::sync::atomic::AtomicU64, value: u64) {
    syscall(Sys::Wait, word.as_ptr() as u64, value, 0);
}

pub fn mmio_write32(addr: u64, value: u32) {
    syscall(Sys::MmioWrite32, addr, value.into(), 0);
}

/// Writes bytes to the first serial port in one `rep outsb`.
pub fn serial_write(bytes: &[u8]) {
    syscall(Sys::Write, bytes.as_ptr() as u64, bytes.len() as u64, 0);
}

/// Triple-faults the machine, as a broken kernel would.
pub fn crash() -> ! {
    syscall(Sys::Crash, 0, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

/// `cpuid`, executed in ring 0: on KVM-PVM hosts ring 3 runs natively and
/// its cpuid answers with the host's values, not the VM's.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let mut out = [0u32; 4];
    syscall(Sys::Cpuid, leaf.into(), subleaf.into(), out.as_mut_ptr() as u64);
    out
}

/// This CPU's local APIC ID.
pub fn apic_id() -> u32 {
    if cpuid(0, 0)[0] >= 0xb && cpuid(0xb, 0)[1] != 0 {
        cpuid(0xb, 0)[3]
    } else {
        cpuid(1, 0)[1] >> 24
    }
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads a counter; CR4.TSD is clear so ring 3 may use it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

extern "C" {
    static __image_end: u8;
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    static fault_cr2: u64;
}

/// The application-processor trampoline's code.
pub fn ap_trampoline() -> &'static [u8] {
    // SAFETY: both symbols are labels in boot.s's .text.boot section with
    // start before end; the bytes between them are the trampoline's code,
    // mapped readable for the life of the guest.
    unsafe {
        let start = core::ptr::addr_of!(ap_tramp_start);
        let end = core::ptr::addr_of!(ap_tramp_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

/// The first address past the guest image (its .bss included).
pub fn image_end() -> u64 {
    core::ptr::addr_of!(__image_end) as u64
}

/// CR2 as saved by the last ring-3 fault.
pub fn last_fault_cr2() -> u64 {
    // SAFETY: written by the fault handler before it resumes in ring 3.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(fault_cr2)) }
}
