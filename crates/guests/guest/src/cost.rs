//! `bulkhead.run=cost`: what the built-in guest's design costs on this host,
//! measured from inside: a system call (ring 3 → ring 0 through `ud2` and
//! back), a port-I/O exit to the VMM, an MMIO exit to the VMM from ring 3,
//! and, for scale, plain ring-3 arithmetic. Medians of batches, in ns.

use crate::arch::{self, rdtsc, Sys};
use crate::{bh, time};

/// An address in the MMIO hole that no device claims: writes exit to the VMM.
const UNCLAIMED_MMIO: u64 = 0xcfff_f000;
/// A port no device claims (the POST-code port).
const UNCLAIMED_PORT: u16 = 0x80;

const BATCHES: usize = 15;

/// Median over batches of the per-operation time of `op`, in ns.
fn measure(per_batch: u32, mut op: impl FnMut()) -> u64 {
    let mut samples = [0u64; BATCHES];
    for s in samples.iter_mut() {
        let start = rdtsc();
        for _ in 0..per_batch {
            op();
        }
        *s = time::ticks_to_ns(rdtsc() - start) / u64::from(per_batch);
    }
    samples.sort_unstable();
    samples[BATCHES / 2]
}

pub fn run() {
    let never = core::sync::atomic::AtomicU64::new(1);
    // A wait whose condition is already false returns at once: a null call.
    let syscall_ns = measure(200, || {
        arch::syscall(Sys::Wait, never.as_ptr() as u64, 0, 0);
    });
    let pio_ns = measure(100, || {
        arch::inb(UNCLAIMED_PORT);
    });
    let mmio_ns = measure(100, || {
        // SAFETY: the address is in the identity-mapped MMIO hole where no
        // device or RAM lives; the write exits to the VMM, which drops it.
        unsafe { core::ptr::write_volatile(UNCLAIMED_MMIO as *mut u32, 0) };
    });
    let mut x = 1u64;
    let add_ps = measure(1, || {
        for i in 0..1000u64 {
            x = core::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }) * 1000
        / 1000;
    bh!(
        "result workload=cost syscall_ns={} pio_exit_ns={} mmio_exit_ns={} ring3_mul_add_ps={}",
        syscall_ns,
        pio_ns,
        mmio_ns,
        add_ps
    );
}
