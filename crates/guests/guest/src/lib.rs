//! The built-in guest: a tiny PVH kernel that Bulkhead ships inside its
//! binary, the guest side of every test and benchmark on hosts where Linux
//! cannot boot (KVM-PVM) and a cross-VMM instrument everywhere else.
//!
//! It is booted the standard way (the PVH entry point, so QEMU `-M microvm`
//! and other VMMs can boot it too), checks the boot information it was given
//! (memory map, command line, initrd, ACPI tables, CPUs), brings up the other
//! vCPUs, finds its virtio-mmio devices (the `virtio_mmio.device=`
//! command-line convention, or the ACPI DSDT), runs the workloads named by
//! `bulkhead.run=` — checks, and block, network and entropy workloads and
//! benchmarks through its own virtio drivers ([`virtio`], `work`) — and
//! reports on the serial console in lines tests can parse (see [`report`]),
//! then powers off. `README.md` beside this crate lists the workloads.
//!
//! Ring 0 runs only the few hundred instructions of `arch/boot.s` (set-up,
//! interrupt stubs and a system-call handler): on KVM-PVM hosts ring 0 goes
//! through a slow instruction emulator. All Rust code runs in ring 3, where it
//! runs natively, and reaches ports and the local APIC through `ud2` system
//! calls.
//!
//! The parsing modules are plain `no_std` code with host unit tests; the
//! hardware-facing modules are built only for the guest
//! (`--cfg bulkhead_guest`, set by `crates/guests/guest-elf/build.rs`).

#![cfg_attr(not(test), no_std)]
#![cfg_attr(bulkhead_guest, no_main)]

pub mod acpi;
pub mod bootinfo;
pub mod bump;
pub mod cmdline;
pub mod histogram;
pub mod mem;
pub mod options;
pub mod packet;
pub mod pattern;
pub mod report;
pub mod scancode;
pub mod virtio;

#[cfg(bulkhead_guest)]
mod arch;
#[cfg(bulkhead_guest)]
mod cost;
#[cfg(bulkhead_guest)]
mod devices;
#[cfg(bulkhead_guest)]
mod irq;
#[cfg(bulkhead_guest)]
mod kbd;
#[cfg(bulkhead_guest)]
mod power;
#[cfg(bulkhead_guest)]
mod rt;
#[cfg(bulkhead_guest)]
mod selftest;
#[cfg(bulkhead_guest)]
mod smp;
#[cfg(bulkhead_guest)]
mod time;
#[cfg(bulkhead_guest)]
mod work;

/// The guest's version, printed on its ready line.
pub const VERSION: &str = "0.1.0";
