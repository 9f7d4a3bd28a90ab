//! The PVH boot protocol's `hvm_start_info`, memory map and module list.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{BootError, Initrd, Region};
use crate::layout;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

pub(super) fn write_start_info(
    mem: &GuestMemoryMmap,
    regions: &[Region],
    initrd: Option<Initrd>,
    rsdp: u64,
    _cmdline_len: usize,
) -> Result<(), BootError> {
    let memmap: Vec<_> = regions
        .iter()
        .map(|r| hvm_memmap_table_entry { addr: r.addr, size: r.size, type_: r.kind, reserved: 0 })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { layout::PVH_MODLIST } else { 0 },
        cmdline_paddr: layout::CMDLINE,
        rsdp_paddr: rsdp,
        memmap_paddr: layout::PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(layout::PVH_START_INFO));
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP));
    if let Some(initrd) = initrd {
        let module =
            hvm_modlist_entry { paddr: initrd.addr, size: initrd.size, ..Default::default() };
        params.set_modules(&[module], GuestAddress(layout::PVH_MODLIST));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| BootError::Configure(e.to_string()))
}
