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
    None,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Hypervisor => "hypervisor",
            Source::Cpuid15 => "cpuid15",
            Source::Cpuid16 => "cpuid16",
            Source::Pit => "pit",
            Source::None => "none",
        }
    }
}

/// Finds the TSC rate; call once on the bootstrap processor. With no
/// source at all the rate is assumed to be 1 GHz and the source says `none`.
pub fn init() -> (u64, Source) {
    let (khz, source) = from_cpuid()
        .or_else(|| calibrate_with_pit().map(|khz| (khz, Source::Pit)))
        .unwrap_or((1_000_000, Source::None));
    TSC_KHZ.store(khz.max(1), Ordering::Relaxed);
    (khz, source)
}

fn from_cpuid() -> Option<(u64, Source)> {
    // The hypervisor timing leaf (0x40000010: TSC kHz in eax), as Bulkhead,
    // QEMU (with invtsc) and VMware publish it.
    let hv = cpuid(0x4000_0000, 0);
    if (0x4000_0010..0x4001_0000).contains(&hv[0]) {
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

/// Reads PIT channel 0's counter (latched).
fn pit_count() -> u16 {
    outb(0x43, 0x00);
    let lo = inb(0x40);
    let hi = inb(0x40);
    u16::from_le_bytes([lo, hi])
}

/// Counts TSC ticks over 10 ms of PIT channel 0 (1.193182 MHz), read back
/// by latching; `None` if the counter does not move (no PIT).
fn calibrate_with_pit() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const WANT: u64 = PIT_HZ / 100; // 10 ms
    outb(0x43, 0x34); // channel 0, lobyte/hibyte, mode 2, counting from 65536
    outb(0x40, 0);
    outb(0x40, 0);
    let start_tsc = rdtsc();
    let mut last = pit_count();
    let (mut elapsed, mut polls) = (0u64, 0u32);
    while elapsed < WANT {
        let now = pit_count();
        elapsed += u64::from(last.wrapping_sub(now));
        last = now;
        polls += 1;
        if polls > 20_000 && elapsed == 0 {
            return None;
        }
    }
    let khz = (rdtsc() - start_tsc) * PIT_HZ / elapsed / 1000;
    // A counter that moves but not at the PIT's rate is no clock either.
    (10_000..100_000_000).contains(&khz).then_some(khz)
}

/// Nanoseconds between two TSC readings.
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
