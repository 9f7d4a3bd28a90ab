//! Time from the TSC, its rate from CPUID or, failing that, measured
//! against the PIT.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{cpuid, inb, outb, rdtsc};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// How the TSC rate was found.
#[derive(Clone, Copy)]
pub enum Source {
    Hypervisor,
    Cpuid15,
    Cpuid16,
    Pit,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Hypervisor => "hypervisor",
            Source::Cpuid15 => "cpuid15",
            Source::Cpuid16 => "cpuid16",
            Source::Pit => "pit",
        }
    }
}

/// Finds the TSC rate; call once on the bootstrap processor.
pub fn init() -> (u64, Source) {
    let (khz, source) = from_cpuid().unwrap_or_else(|| (calibrate_with_pit(), Source::Pit));
    TSC_KHZ.store(khz.max(1), Ordering::Relaxed);
    (khz, source)
}

fn from_cpuid() -> Option<(u64, Source)> {
    // The hypervisor timing leaf (0x40000010: TSC kHz in eax), as Bulkhead,
    // QEMU and VMware publish it.
    let hv = cpuid(0x4000_0000, 0);
    if hv[0] >= 0x4000_0010 {
        let khz = cpuid(0x4000_0010, 0)[0];
        if khz != 0 {
            return Some((khz.into(), Source::Hypervisor));
        }
    }
    let max = cpuid(0, 0)[0];
    if max >= 0x15 {
        let [den, num, crystal_hz, _] = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal_hz != 0 {
            let hz = u64::from(crystal_hz) * u64::from(num) / u64::from(den);
            return Some((hz / 1000, Source::Cpuid15));
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16, 0)[0] & 0xffff;
        if mhz != 0 {
            return Some((u64::from(mhz) * 1000, Source::Cpuid16));
        }
    }
    None
}

/// Counts TSC ticks over 10 ms of PIT channel 2 (1.193182 MHz).
fn calibrate_with_pit() -> u64 {
    const TICKS: u16 = 11932; // 10 ms
    let gate = inb(0x61);
    outb(0x61, (gate & !0x02) | 0x01); // gate on, speaker off
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0
    outb(0x42, TICKS as u8);
    outb(0x42, (TICKS >> 8) as u8);
    let start = rdtsc();
    let mut polls = 0u32;
    while inb(0x61) & 0x20 == 0 && polls < 100_000 {
        polls += 1;
    }
    (rdtsc() - start) / 10
}

/// Nanoseconds between two TSC readings.
#[allow(dead_code)] // used by the I/O workloads
pub fn ticks_to_ns(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(TSC_KHZ.load(Ordering::Relaxed))) as u64
}

/// A deadline `ms` milliseconds from now, in TSC ticks.
pub fn deadline_ms(ms: u64) -> u64 {
    rdtsc().saturating_add(ms.saturating_mul(TSC_KHZ.load(Ordering::Relaxed).max(1)))
}

/// Spins until `deadline` (from [`deadline_ms`]) passes.
pub fn passed(deadline: u64) -> bool {
    rdtsc() >= deadline
}
