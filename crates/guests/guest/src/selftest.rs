//! The guest's main program: check what the VMM handed over, run the
//! workloads named by `bulkhead.run=` (comma-separated, in order; default
//! `selftest`), print `BH done` and power off.
//!
//! Workloads here: `selftest` (every check below, and every virtio device
//! brought up and described), `boot` (nothing: the ready and done lines are
//! the boot benchmark), `reboot` (done, then reset), `fault` (a page fault
//! in ring 3, reported), `crash` (a triple fault), `cost` (what system calls
//! and exits cost, see [`crate::cost`]). The device workloads are
//! in [`crate::work`]. With `bulkhead.hold_ms=N` the guest waits N ms before
//! powering off.
//!
//! The keyboard: while it holds (`hold_ms`) or in the workload `wait-cad` (which waits up to
//! `bulkhead.wait_s` seconds, default 60), the guest listens to its i8042 keyboard as Linux does
//! ([`crate::kbd`]: `BH kbd listening set=2 ctr=0x05` once it does), and on Ctrl-Alt-Del
//! prints `BH ctrl-alt-del` and resets the machine through the i8042 (Linux's `reboot=k`),
//! which ends a Bulkhead VM with the reboot exit (3).

use core::sync::atomic::Ordering;

use crate::acpi::{self, Acpi};
use crate::bootinfo::{self, BootInfo, E820_RAM};
use crate::cmdline::Cmdline;
use crate::devices::{DevError, Driver, Found};
use crate::kbd::Keyboard;
use crate::mem::Identity;
use crate::virtio::mmio::InitError;
use crate::work::{self, Checks, Ctx};
use crate::{arch, bh, irq, power, smp, time, virtio, VERSION};
use core::fmt::Write as _;

/// The boot timer's port and the value that says "booted" (Firecracker's `--boot-timer`,
/// `bulkhead run --boot-timer`). A VMM without the device ignores the write.
const BOOT_TIMER_PORT: u16 = 0x3f0;
const BOOT_TIMER_DONE: u8 = 123;

pub fn main(start_info: u64) -> ! {
    bh!("ready guest=bulkhead version={} protocol=pvh apic={}", VERSION, arch::apic_id());
    arch::outb(BOOT_TIMER_PORT, BOOT_TIMER_DONE);
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
    let mut checks = Checks::default();
    let mut ctx = Ctx::new(&cmdline, &mut checks, &boot, acpi.as_ref());
    for name in cmdline.get("bulkhead.run").unwrap_or("selftest").split(',') {
        match name {
            "boot" | "" => {}
            "reboot" => {
                bh!("done status=ok checks=0 failed=0 next=reboot");
                power::reboot();
            }
            "crash" => arch::crash(),
            "wait-cad" => wait_ctrl_alt_del(&cmdline, ctx.checks),
            "cost" => crate::cost::run(),
            "fault" => {
                // SAFETY: none; this read is meant to fault (nothing is mapped
                // above 4 GiB) so the fault reporter runs.
                let _ = unsafe { core::ptr::read_volatile(0x1_0000_0000 as *const u64) };
            }
            "selftest" => selftest(&mut ctx, &boot, acpi.as_ref(), tsc_khz, source),
            other => {
                if !work::run(other, &mut ctx) {
                    bh!(
                        "check name=workload status={} text=unknown workload {}",
                        ctx.checks.record(false),
                        other
                    );
                }
            }
        }
    }
    let status = if checks.failed == 0 { "ok" } else { "fail" };
    bh!("done status={} checks={} failed={}", status, checks.run, checks.failed);
    if let Some(ms) = cmdline.get_u64("bulkhead.hold_ms") {
        bh!("hold ms={}", ms);
        let mut keyboard = listen_to_keyboard();
        let deadline = time::deadline_ms(ms);
        while !time::passed(deadline) {
            if keyboard.as_mut().is_some_and(Keyboard::poll) {
                ctrl_alt_del();
            }
            core::hint::spin_loop();
        }
    }
    power::poweroff()
}

/// Sets the keyboard up and says so: `BH kbd listening set=2 ctr=0x05`, or `BH kbd none`.
fn listen_to_keyboard() -> Option<Keyboard> {
    let keyboard = Keyboard::listen();
    match &keyboard {
        Some(k) => bh!("kbd listening set={} ctr={:#04x}", k.set(), k.command_byte),
        None => bh!("kbd none"),
    }
    keyboard
}

/// `wait-cad`: halts until Ctrl-Alt-Del (then resets) or `bulkhead.wait_s` (60) pass.
fn wait_ctrl_alt_del(cmdline: &Cmdline, checks: &mut Checks) {
    let seconds = cmdline.get("bulkhead.wait_s");
    let Some(ms) = seconds.map_or(Some(60_000), crate::options::parse_ms).filter(|&ms| ms > 0)
    else {
        let ok = checks.record(false);
        bh!("check name=wait-cad status={} text=bulkhead.wait_s must be a positive number", ok);
        return;
    };
    let Some(mut keyboard) = listen_to_keyboard() else {
        let ok = checks.record(false);
        bh!("check name=wait-cad status={} text=no i8042 keyboard controller answers", ok);
        return;
    };
    irq::wake_start();
    if keyboard.wait(time::deadline_ms(ms)) {
        ctrl_alt_del();
    }
    bh!(
        "check name=wait-cad status={} interrupts={} text=no Ctrl-Alt-Del within {} ms",
        checks.record(false),
        keyboard.interrupts(),
        ms
    );
}

/// What Linux does on Ctrl-Alt-Del (its init's default): reboot, here through the i8042.
fn ctrl_alt_del() -> ! {
    bh!("ctrl-alt-del");
    power::reset_by_keyboard_controller()
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
    ctx: &mut Ctx,
    boot: &BootInfo,
    acpi: Option<&Acpi>,
    tsc_khz: u64,
    source: time::Source,
) {
    bh!("clock tsc_khz={} source={}", tsc_khz, source.name());
    bh!("cmdline len={} text={}", ctx.cmdline.text().len(), ctx.cmdline.text());
    check_memory(boot, ctx.checks);
    report_initrd(boot);
    check_cpus(boot, acpi, ctx.checks);
    check_interrupts(ctx.checks);
    check_virtio(ctx);
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
    irq::route_gsi(&[], 4, UART_VECTOR, me);
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
    irq::wake_resume();
    let ok = after == before + 1 && (1500..100_000).contains(&elapsed_us);
    bh!("check name=timer status={} elapsed_us={}", checks.record(ok), elapsed_us);
}

/// Lists every virtio device described to the guest and brings each one
/// up: `BH virtio index=.. ...` and `BH check name=virtio-init index=..`.
fn check_virtio(ctx: &mut Ctx) {
    let devices = ctx.devices();
    let unparsed = devices.unparsed;
    let found: [Option<Found>; crate::cmdline::MAX_VIRTIO] = {
        let mut all = [None; crate::cmdline::MAX_VIRTIO];
        for (slot, f) in all.iter_mut().zip(devices.found()) {
            *slot = Some(*f);
        }
        all
    };
    let count = found.iter().flatten().count();
    bh!("virtio count={} unparsed={}", count, unparsed);
    let mut ok = unparsed == 0;
    for (i, f) in found.iter().enumerate() {
        let Some(f) = f else { continue };
        let t = match f.probe {
            Ok(Some(t)) => t,
            Ok(None) => {
                bh!(
                    "virtio index={} base={:#x} irq={} source={} device=none",
                    i,
                    f.mmio.base,
                    f.mmio.irq,
                    f.source.name()
                );
                continue;
            }
            Err(e) => {
                bh!(
                    "check name=virtio-init status={} index={} base={:#x} text={}",
                    ctx.checks.record(false),
                    i,
                    f.mmio.base,
                    e
                );
                ok = false;
                continue;
            }
        };
        let id = f.id;
        bh!(
            "virtio index={} base={:#x} size={} irq={} source={} device={} id={} vendor={:#x} features={:#x}",
            i,
            f.mmio.base,
            f.mmio.size,
            f.mmio.irq,
            f.source.name(),
            virtio::device_name(id),
            id,
            t.vendor_id(),
            t.device_features()
        );
        ok &= describe_driver(ctx, i, virtio::device_name(id));
    }
    if count > 0 || unparsed > 0 {
        bh!("check name=virtio status={} devices={}", ctx.checks.record(ok), count);
    }
}

/// Starts device `i`'s driver and reports what it found; false if it failed.
fn describe_driver(ctx: &mut Ctx, i: usize, kind: &str) -> bool {
    let result = ctx.devices().start(i);
    let mut line = crate::report::Line::new();
    let w = &mut line;
    let _ = match &result {
        Ok(Driver::Blk(b)) => {
            let n = b.info();
            write!(
                w,
                "features={:#x} queues={} capacity={} block_size={} ro={} flush={}",
                n.features,
                n.queue_size,
                n.capacity,
                n.block_size,
                u8::from(n.read_only),
                u8::from(n.flush)
            )
        }
        Ok(Driver::Net(net)) => {
            let (rx, tx) = net.queue_sizes();
            let mac = net.device_mac().map(crate::packet::MacDisplay);
            match mac {
                Some(m) => {
                    write!(w, "features={:#x} queues={},{} mac={}", net.features(), rx, tx, m)
                }
                None => write!(w, "features={:#x} queues={},{} mac=none", net.features(), rx, tx),
            }
        }
        Ok(Driver::Console(c)) => {
            let (rx, tx) = c.queue_sizes();
            write!(w, "queues={},{}", rx, tx)
        }
        Ok(Driver::Rng(r)) => write!(w, "features={:#x} queues={}", r.features(), r.queue_size()),
        Ok(Driver::Vsock(v)) => write!(w, "guest_cid={}", v.guest_cid),
        Ok(Driver::Fs(f)) => {
            write!(w, "tag={}", core::str::from_utf8(f.tag()).unwrap_or("?"))
        }
        Ok(_) => Ok(()),
        Err(e) => write!(w, "text={}", e),
    };
    let detail = core::str::from_utf8(&line.finish()[3..]).unwrap_or("?").trim_end();
    if matches!(result, Err(DevError::Init(InitError::NoDriver))) {
        bh!("virtio index={} driver=none", i);
        return true;
    }
    let ok = result.is_ok();
    bh!(
        "check name=virtio-init status={} index={} device={} {}",
        ctx.checks.record(ok),
        i,
        kind,
        detail
    );
    ok
}
