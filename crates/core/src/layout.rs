//! The guest-physical address map every Bulkhead VM gets.
//!
//! ```text
//! 0x0000_0500  GDT for the vCPU's initial segments (Linux 64-bit entry)
//! 0x0000_6000  PVH start_info, then its memory map and module list
//! 0x0000_7000  Linux boot_params (the "zero page")
//! 0x0000_9000  initial page tables (Linux 64-bit entry)
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX bytes)
//! 0x0009_fc00  end of low RAM; EBDA and BIOS area reserved to 1 MiB
//! 0x000e_0000  ACPI tables: RSDP, XSDT, FADT, MADT, DSDT
//! 0x0010_0000  kernel (1 MiB), then RAM up to the MMIO hole
//! 0xc000_0000  MMIO hole: virtio-mmio devices from 0xd000_0000, IOAPIC
//!              at 0xfec0_0000, local APICs at 0xfee0_0000
//! 0x1_0000_0000 RAM above 4 GiB, when the VM has more than 3 GiB
//! ```

/// The GDT loaded for the boot vCPU.
pub const BOOT_GDT: u64 = 0x500;
/// The PVH `hvm_start_info` structure.
pub const PVH_START_INFO: u64 = 0x6000;
/// The PVH module list (the initrd), right after start_info.
pub const PVH_MODLIST: u64 = 0x6040;
/// The PVH memory map, after the module list.
pub const PVH_MEMMAP: u64 = 0x6080;
/// Linux `boot_params`.
pub const ZERO_PAGE: u64 = 0x7000;
/// Boot stack top for the Linux 64-bit entry.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4, PDPT and PD of the identity map for the Linux 64-bit entry.
pub const BOOT_PML4: u64 = 0x9000;
pub const BOOT_PDPT: u64 = 0xa000;
pub const BOOT_PD: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE: u64 = 0x2_0000;
/// The longest command line accepted, terminating NUL included.
pub const CMDLINE_MAX: usize = 4096;
/// Start of the EBDA: low RAM ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// The ACPI tables region (the BIOS read-only area, where the RSDP is searched).
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_SIZE: u64 = 0x2_0000;
/// Where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First virtio-mmio device window; one page per device.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The I/O APIC and local APIC windows.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// RAM continues here when the VM has more than fits below the hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// Legacy I/O ports the core emulates.
pub mod ports {
    /// The first serial port (8250/16550), IRQ 4.
    pub const COM1: u16 = 0x3f8;
    pub const COM1_IRQ: u32 = 4;
    /// The i8042 keyboard controller: data port 0x60, status/command port 0x64
    /// (the range between reads as all ones), IRQ 1.
    pub const I8042_DATA: u16 = 0x60;
    pub const I8042_PORTS: u16 = 5;
    pub const I8042_IRQ: u32 = 1;
    /// ACPI hardware-reduced sleep control, sleep status and reset registers.
    pub const ACPI_SLEEP_CONTROL: u16 = 0x600;
    pub const ACPI_SLEEP_STATUS: u16 = 0x601;
    pub const ACPI_RESET: u16 = 0x602;
    /// The value the reset register takes to reset.
    pub const ACPI_RESET_VALUE: u8 = 0x1;
    /// The boot timer (`bulkhead run --boot-timer`): the guest writes
    /// [`BOOT_TIMER_DONE`] here once booted.
    pub const BOOT_TIMER: u16 = 0x3f0;
    /// The value that says the guest has booted (Firecracker's magic value).
    pub const BOOT_TIMER_DONE: u8 = 123;
}

// The boot structures must not overlap: checked at compile time.
const _: () = {
    assert!(PVH_MODLIST >= PVH_START_INFO + 56);
    assert!(PVH_MEMMAP >= PVH_MODLIST + 32);
    assert!(PVH_MEMMAP + 24 * 8 <= ZERO_PAGE);
    assert!(ZERO_PAGE + 4096 <= BOOT_STACK - 0x800);
    assert!(BOOT_PD + 4096 <= CMDLINE);
    assert!(CMDLINE + CMDLINE_MAX as u64 <= EBDA_START);
};

/// The guest-physical RAM ranges for a VM of `size` bytes: low RAM up to the
/// MMIO hole, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_HOLE_START), (HIGH_RAM_START, size - MMIO_HOLE_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_HOLE_START), (HIGH_RAM_START, (4 << 30) - MMIO_HOLE_START)]
        );
    }
}
