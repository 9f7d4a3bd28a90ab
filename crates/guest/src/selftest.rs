//! The guest's main program: check what the VMM handed over, run the
//! workload named by `bulkhead.run=` (default `selftest`) and power off.
//!
//! Workloads: `selftest` (every check below), `boot` (ready line, then power
//! off: the boot benchmark), `reboot` (ready, then reset), `fault` (a page
//! fault in ring 3, reported), `crash` (a triple fault). With
//! `bulkhead.hold_ms=N` the guest waits N ms before powering off.

use core::sync::atomic::Ordering;

use crate::acpi::{self, Acpi};
use crate::bootinfo::{self, BootInfo, E820_RAM};
use crate::cmdline::Cmdline;
use crate::mem::Identity;
use crate::{arch, bh, irq, power, smp, time, VERSION};

/// Counts checks and failures for the `done` line.
#[derive(Default)]
struct Checks {
    run: u32,
    failed: u32,
}

impl Checks {
    fn record(&mut self, ok: bool) -> &'static str {
        self.run += 1;
        if ok {
            "ok"
        } else {
            self.failed += 1;
            "fail"
        }
    }
}

pub fn main(start_info: u64) -> ! {
    bh!("ready guest=bulkhead version={} protocol=pvh apic={}", VERSION, arch::apic_id());
    let boot = match BootInfo::parse(&Identity, start_info) {
        Ok(boot) => boot,
        Err(e) => {
            bh!("check name=bootinfo status=fail text={:?} at {:#x}", e, start_info);
            bh!("done status=fail checks=1 failed=1");
            power::poweroff();
        }
    };
    let cmdline = Cmdline::new(cmdline_text(&boot));
    let rsdp = if boot.rsdp != 0 { Some(boot.rsdp) } else { acpi::find_rsdp(&Identity) };
    let acpi = rsdp.and_then(|r| acpi::parse(&Identity, r));
    if let Some(fadt) = acpi.as_ref().and_then(|a| a.fadt) {
        power::set_fadt(fadt);
    }
    let (tsc_khz, source) = time::init();
    match cmdline.get("bulkhead.run").unwrap_or("selftest") {
        "boot" => bh!("done status=ok checks=0 failed=0"),
        "reboot" => {
            bh!("done status=ok checks=0 failed=0 next=reboot");
            power::reboot();
        }
        "crash" => arch::crash(),
        "cost" => crate::cost::run(),
        "fault" => {
            // SAFETY: none; this read is meant to fault (nothing is mapped
            // above 4 GiB) so the fault reporter runs.
            let _ = unsafe { core::ptr::read_volatile(0x1_0000_0000 as *const u64) };
        }
        "selftest" => selftest(&boot, &cmdline, acpi.as_ref(), tsc_khz, source),
        other => {
            bh!("check name=workload status=fail text=unknown workload {}", other);
            bh!("done status=fail checks=1 failed=1");
        }
    }
    if let Some(ms) = cmdline.get_u64("bulkhead.hold_ms") {
        bh!("hold ms={}", ms);
        let deadline = time::deadline_ms(ms);
        while !time::passed(deadline) {
            core::hint::spin_loop();
        }
    }
    power::poweroff()
}

fn cmdline_text(boot: &BootInfo) -> &'static str {
    if boot.cmdline_addr == 0 || boot.cmdline_addr + boot.cmdline_len as u64 > 1 << 32 {
        return "";
    }
    // SAFETY: the command line lies below 4 GiB (checked), which is
    // identity-mapped, and nothing writes it after boot.
    let bytes =
        unsafe { core::slice::from_raw_parts(boot.cmdline_addr as *const u8, boot.cmdline_len) };
    core::str::from_utf8(bytes).unwrap_or("")
}

fn selftest(
    boot: &BootInfo,
    cmdline: &Cmdline,
    acpi: Option<&Acpi>,
    tsc_khz: u64,
    source: time::Source,
) {
    let mut checks = Checks::default();
    bh!("clock tsc_khz={} source={}", tsc_khz, source.name());
    bh!("cmdline len={} text={}", cmdline.text().len(), cmdline.text());
    check_memory(boot, &mut checks);
    report_initrd(boot);
    check_cpus(boot, acpi, &mut checks);
    check_interrupts(&mut checks);
    check_virtio(cmdline, &mut checks);
    let status = if checks.failed == 0 { "ok" } else { "fail" };
    bh!("done status={} checks={} failed={}", status, checks.run, checks.failed);
}

/// Every RAM region below 4 GiB is writable at its first, middle and last
/// words (values are restored).
fn check_memory(boot: &BootInfo, checks: &mut Checks) {
    let below_4g: u64 = boot
        .memmap()
        .iter()
        .filter(|r| r.kind == E820_RAM)
        .map(|r| r.size.min((1u64 << 32).saturating_sub(r.addr)))
        .sum();
    bh!(
        "memory regions={} ram_bytes={} ram_below_4g={}",
        boot.memmap().len(),
        boot.ram_bytes(),
        below_4g
    );
    let mut ok = boot.ram_bytes() > 0;
    for r in boot.memmap().iter().filter(|r| r.kind == E820_RAM && r.addr >= 0x1000) {
        let end = (r.addr + r.size).min(1 << 32);
        for at in [r.addr, r.addr + (end - r.addr) / 2, end - 8] {
            ok &= probe_word(at & !7);
        }
    }
    bh!("check name=memory status={}", checks.record(ok));
}

fn probe_word(at: u64) -> bool {
    let p = at as *mut u64;
    // SAFETY: `at` is an aligned word inside a RAM region below 4 GiB,
    // identity-mapped and writable; its value is restored before return and
    // no other CPU runs yet.
    unsafe {
        let saved = core::ptr::read_volatile(p);
        core::ptr::write_volatile(p, !at);
        let seen = core::ptr::read_volatile(p);
        core::ptr::write_volatile(p, saved);
        seen == !at
    }
}

fn report_initrd(boot: &BootInfo) {
    bh!("initrd count={}", boot.modules().len());
    for (i, m) in boot.modules().iter().enumerate() {
        match bootinfo::fnv1a64(&Identity, m.addr, m.size) {
            Some(h) => {
                bh!("initrd index={} addr={:#x} size={} fnv1a64={:#018x}", i, m.addr, m.size, h)
            }
            None => bh!("initrd index={} addr={:#x} size={} fnv1a64=unreadable", i, m.addr, m.size),
        }
    }
}

fn check_cpus(boot: &BootInfo, acpi: Option<&Acpi>, checks: &mut Checks) {
    let Some(acpi) = acpi else {
        bh!("check name=smp status={} text=no ACPI tables", checks.record(false));
        return;
    };
    let ids = acpi.apic_ids();
    match smp::start_aps(boot, ids) {
        Ok(s) => {
            let mut list = crate::report::Line::new();
            for (i, slot) in smp::APIC_IDS.iter().enumerate().take(s.online + 1) {
                let sep = if i == 0 { "" } else { "," };
                let _ = core::fmt::Write::write_fmt(
                    &mut list,
                    format_args!("{}{}", sep, slot.load(Ordering::Relaxed)),
                );
            }
            let ok = s.online == s.wanted && s.wanted + 1 == ids.len();
            bh!(
                "check name=smp status={} cpus={} online={} trampoline={:#x} apic_ids={}",
                checks.record(ok),
                ids.len(),
                s.online + 1,
                s.trampoline,
                core::str::from_utf8(&list.finish()[3..]).unwrap_or("?").trim_end()
            );
        }
        Err(e) => bh!("check name=smp status={} text={}", checks.record(false), e),
    }
}

/// A device interrupt through the I/O APIC (the UART's "transmitter empty"
/// on pin 4) and the local APIC timer both reach this CPU.
fn check_interrupts(checks: &mut Checks) {
    const UART_VECTOR: u8 = 0x40;
    const TIMER_VECTOR: u8 = 0x41;
    const COM1_IER: u16 = 0x3f9;
    let me = arch::apic_id();
    // The UART: route pin 4, enable its THRE interrupt (fires at once:
    // the transmitter is empty), wait, switch it off again.
    let before = irq::count(UART_VECTOR);
    irq::route(4, UART_VECTOR, me);
    irq::timer_oneshot(TIMER_VECTOR, 100_000_000); // a 100 ms safety net
    arch::outb(COM1_IER, 0x02);
    let after = irq::wait_for(UART_VECTOR, before, time::deadline_ms(100));
    arch::outb(COM1_IER, 0);
    irq::mask(4);
    irq::timer_oneshot(TIMER_VECTOR, 0);
    bh!(
        "check name=ioapic status={} vector={:#x} count={}",
        checks.record(after > before),
        UART_VECTOR,
        after - before
    );
    // The local APIC timer: 2 ms one-shot.
    let before = irq::count(TIMER_VECTOR);
    let start = arch::rdtsc();
    irq::timer_oneshot(TIMER_VECTOR, 2_000_000);
    let after = irq::wait_for(TIMER_VECTOR, before, time::deadline_ms(200));
    let elapsed_us = time::ticks_to_ns(arch::rdtsc() - start) / 1000;
    let ok = after == before + 1 && (1500..100_000).contains(&elapsed_us);
    bh!("check name=timer status={} elapsed_us={}", checks.record(ok), elapsed_us);
}

fn check_virtio(cmdline: &Cmdline, checks: &mut Checks) {
    let (devs, n, bad) = cmdline.virtio_mmio();
    bh!("virtio count={} unparsed={}", n, bad);
    let mut ok = bad == 0;
    for (i, d) in devs[..n].iter().enumerate() {
        let magic = mmio_read32(d.base);
        let version = mmio_read32(d.base + 4);
        let device = mmio_read32(d.base + 8);
        ok &= magic == 0x7472_6976;
        bh!(
            "virtio index={} base={:#x} irq={} magic={:#x} version={} device={}",
            i,
            d.base,
            d.irq,
            magic,
            version,
            device
        );
    }
    if n > 0 || bad > 0 {
        bh!("check name=virtio status={}", checks.record(ok));
    }
}

/// A 32-bit register read (virtio-mmio registers are 32 bits wide).
fn mmio_read32(addr: u64) -> u32 {
    if addr >= 1 << 32 {
        return 0;
    }
    // SAFETY: below 4 GiB is identity-mapped and readable from ring 3; a
    // device window reads its registers, anything else reads as all ones.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}
