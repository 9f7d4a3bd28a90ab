//! Bringing up the application processors: INIT and STARTUP IPIs through
//! the local APIC, a real-mode trampoline copied below 1 MiB, and a count of
//! the CPUs that reached ring 3.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::arch::{self, MAX_CPUS};
use crate::bootinfo::BootInfo;
use crate::time;
use crate::virtio::mmio::{Hammer, Transport};

const LAPIC_ICR_LOW: u64 = 0xfee0_0300;
const LAPIC_ICR_HIGH: u64 = 0xfee0_0310;
const ICR_INIT: u32 = 0x4500;
const ICR_STARTUP: u32 = 0x4600;

/// Application processors that reached `ap_main`.
pub static ONLINE: AtomicU64 = AtomicU64::new(0);
/// The APIC ID each CPU index reported (index 0 is the bootstrap processor).
pub static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
/// APs started before the TSC reaches this spin until it does (the
/// `storm` workload), then park.
pub static SPIN_UNTIL: AtomicU64 = AtomicU64::new(0);
/// Parked APs sleep while this stays unchanged.
static PARK: AtomicU64 = AtomicU64::new(0);
/// The `hammer` workload: the register window APs hammer until [`SPIN_UNTIL`] (0: none), and
/// how (0 read, 1 reinit).
pub static HAMMER_BASE: AtomicU64 = AtomicU64::new(0);
pub static HAMMER_HOW: AtomicU64 = AtomicU64::new(0);
/// Rounds of hammering done, by every AP.
pub static HAMMERED: AtomicU64 = AtomicU64::new(0);

/// The outcome of starting the other CPUs.
pub struct Started {
    pub wanted: usize,
    pub online: usize,
    pub trampoline: u64,
}

/// A free page below 1 MiB in RAM, away from the boot data, for the trampoline.
fn trampoline_page(boot: &BootInfo) -> Option<u64> {
    (0x8u64..0x9f)
        .map(|page| page << 12)
        .find(|&at| boot.is_ram(at, 4096) && !boot.overlaps_boot_data(at, 4096))
}

/// Starts every CPU in `apic_ids` other than this one; waits up to a second.
pub fn start_aps(boot: &BootInfo, apic_ids: &[u32]) -> Result<Started, &'static str> {
    let me = arch::apic_id();
    APIC_IDS[0].store(me, Ordering::Relaxed);
    let targets = || apic_ids.iter().copied().filter(move |&id| id != me && id < 255);
    let wanted = core::cmp::min(targets().count(), MAX_CPUS - 1);
    if wanted == 0 {
        return Ok(Started { wanted, online: 0, trampoline: 0 });
    }
    let page = trampoline_page(boot).ok_or("no free page below 1 MiB for the AP trampoline")?;
    let code = arch::ap_trampoline();
    // SAFETY: `page` is a RAM page below 1 MiB, identity-mapped and writable
    // from ring 3, that holds none of the boot data (checked above) and none
    // of the guest image (linked at 1 MiB).
    unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), page as *mut u8, code.len()) };
    for id in targets().take(wanted) {
        arch::mmio_write32(LAPIC_ICR_HIGH, id << 24);
        arch::mmio_write32(LAPIC_ICR_LOW, ICR_INIT);
        arch::mmio_write32(LAPIC_ICR_HIGH, id << 24);
        arch::mmio_write32(LAPIC_ICR_LOW, ICR_STARTUP | (page >> 12) as u32);
    }
    let deadline = time::deadline_ms(1000);
    while (ONLINE.load(Ordering::Acquire) as usize) < wanted && !time::passed(deadline) {
        core::hint::spin_loop();
    }
    Ok(Started { wanted, online: ONLINE.load(Ordering::Acquire) as usize, trampoline: page })
}

/// An application processor, in ring 3: report in, then sleep.
pub fn ap_main(index: u64) -> ! {
    if let Some(slot) = APIC_IDS.get(index as usize) {
        slot.store(arch::apic_id(), Ordering::Relaxed);
    }
    ONLINE.fetch_add(1, Ordering::Release);
    let until = SPIN_UNTIL.load(Ordering::Acquire);
    let target = Transport::probe(HAMMER_BASE.load(Ordering::Acquire)).ok().flatten();
    let how = if HAMMER_HOW.load(Ordering::Acquire) == 1 { Hammer::Reinit } else { Hammer::Read };
    while !time::passed(until) {
        match target {
            Some(t) => {
                t.hammer(how);
                HAMMERED.fetch_add(1, Ordering::Relaxed);
            }
            None => core::hint::spin_loop(),
        }
    }
    loop {
        arch::wait_while(&PARK, 0);
    }
}
