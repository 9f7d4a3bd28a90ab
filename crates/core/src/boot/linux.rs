//! The Linux x86 boot protocol (64-bit entry): `boot_params` with its E820
//! map, command line and initrd, and identity-mapped page tables for the
//! first 1 GiB.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::KernelLoaderResult;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{BootError, Initrd, Region};
use crate::layout;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

pub(super) fn write_boot_params(
    mem: &GuestMemoryMmap,
    regions: &[Region],
    initrd: Option<Initrd>,
    kernel: &KernelLoaderResult,
    cmdline_len: usize,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(header) = kernel.setup_header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = layout::ACPI_START;
    for (i, r) in regions.iter().enumerate().take(params.e820_table.len()) {
        params.e820_table[i].addr = r.addr;
        params.e820_table[i].size = r.size;
        params.e820_table[i].r#type = r.kind;
        params.e820_entries = (i + 1) as u8;
    }
    let params = BootParams::new::<boot_params>(&params, GuestAddress(layout::ZERO_PAGE));
    LinuxBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| BootError::Configure(e.to_string()))
}

/// PML4 -> PDPT -> PD with 512 2 MiB pages: the first 1 GiB, identity-mapped.
pub(super) fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_obj(layout::BOOT_PDPT | 0x03, GuestAddress(layout::BOOT_PML4))?;
    mem.write_obj(layout::BOOT_PD | 0x03, GuestAddress(layout::BOOT_PDPT))?;
    let entries: Vec<u8> = (0u64..512).flat_map(|i| ((i << 21) | 0x83).to_le_bytes()).collect();
    mem.write_slice(&entries, GuestAddress(layout::BOOT_PD))?;
    Ok(())
}
