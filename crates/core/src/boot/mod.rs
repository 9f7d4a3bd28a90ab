//! Loading a kernel into guest memory and preparing what it is handed at
//! entry: the PVH `start_info` (ELF kernels with a PVH note, the built-in
//! guest included) or Linux `boot_params` (bzImage and ELF vmlinux without a
//! PVH note, entered in 64-bit mode), plus the command line, initrd and ACPI
//! tables.

pub mod acpi;
mod linux;
mod pvh;

use std::io::Cursor;
use std::path::PathBuf;

use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

pub use acpi::MmioDevice;

/// Where a kernel image comes from.
pub enum KernelSource {
    /// Bytes already in memory (the built-in guest).
    Bytes(&'static [u8]),
    /// A file the user named.
    File(PathBuf),
}

/// What kind of kernel an image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// Bulkhead's built-in guest (an ELF with the Bulkhead note).
    BuiltIn,
    /// An ELF with a PVH entry point (Linux vmlinux built with PVH, others).
    PvhElf,
    /// An ELF without a PVH note: entered through the Linux 64-bit protocol.
    Elf,
    /// A Linux bzImage.
    BzImage,
}

impl KernelKind {
    /// Whether this is a Linux (or other foreign) kernel rather than the built-in guest.
    pub fn is_foreign(self) -> bool {
        self != KernelKind::BuiltIn
    }
}

/// How the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// 32-bit protected mode, paging off, rbx = start_info.
    Pvh { entry: u64, start_info: u64 },
    /// 64-bit mode with identity-mapped page tables, rsi = boot_params.
    Linux64 { entry: u64, boot_params: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read the kernel {path}")]
    ReadKernel { path: PathBuf, source: std::io::Error },
    #[error(
        "{0} is not a kernel Bulkhead can boot: expected an x86-64 ELF (vmlinux, PVH) or a bzImage"
    )]
    UnknownFormat(String),
    #[error("cannot load the kernel {what}: {detail}")]
    Load { what: String, detail: String },
    #[error("cannot read the initrd {path}")]
    ReadInitrd { path: PathBuf, source: std::io::Error },
    #[error("the initrd ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel; give the VM more memory")]
    InitrdTooLarge { size: u64, limit: u64 },
    #[error("the kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error("cannot write boot data into guest memory")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot write the boot parameters: {0}")]
    Configure(String),
}

/// A kernel image read into memory.
pub struct Kernel {
    pub name: String,
    bytes: std::borrow::Cow<'static, [u8]>,
    pub kind: KernelKind,
}

impl Kernel {
    /// Reads and identifies a kernel image.
    pub fn open(source: &KernelSource) -> Result<Self, BootError> {
        let (name, bytes) = match source {
            KernelSource::Bytes(b) => {
                ("the built-in guest".to_string(), std::borrow::Cow::Borrowed(*b))
            }
            KernelSource::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|source| BootError::ReadKernel { path: path.clone(), source })?;
                (path.display().to_string(), std::borrow::Cow::Owned(bytes))
            }
        };
        let kind = identify(&bytes).ok_or_else(|| BootError::UnknownFormat(name.clone()))?;
        Ok(Kernel { name, bytes, kind })
    }
}

/// Identifies an image by its headers.
pub fn identify(bytes: &[u8]) -> Option<KernelKind> {
    if bytes.len() >= 64 && bytes[..4] == *b"\x7fELF" {
        // ELF64, little-endian, x86-64.
        if bytes[4] != 2 || bytes[5] != 1 || u16::from_le_bytes([bytes[18], bytes[19]]) != 62 {
            return None;
        }
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        return Some(if has(b"Bulkhead\0") && has(b"Xen\0") {
            KernelKind::BuiltIn
        } else if has(b"Xen\0") {
            KernelKind::PvhElf
        } else {
            KernelKind::Elf
        });
    }
    if bytes.len() >= 0x206 && bytes[0x202..0x206] == *b"HdrS" {
        return Some(KernelKind::BzImage);
    }
    None
}

/// What to boot.
pub struct BootSpec<'a> {
    pub kernel: &'a Kernel,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u8,
    pub devices: Vec<MmioDevice>,
}

/// Loads the kernel, initrd, command line and tables; returns the entry.
pub fn load(mem: &GuestMemoryMmap, ram_size: u64, spec: &BootSpec) -> Result<BootEntry, BootError> {
    let loaded = load_kernel(mem, spec.kernel)?;
    write_cmdline(mem, &spec.cmdline)?;
    let initrd = match &spec.initrd {
        Some(path) => Some(load_initrd(mem, ram_size, path, loaded.result.kernel_end)?),
        None => None,
    };
    let rsdp = acpi::write_tables(mem, spec.cpus, &spec.devices)?;
    let regions = e820(ram_size);
    match loaded.pvh_entry {
        Some(entry) => {
            pvh::write_start_info(mem, &regions, initrd, rsdp, spec.cmdline.len())?;
            Ok(BootEntry::Pvh { entry, start_info: layout::PVH_START_INFO })
        }
        None => {
            linux::write_boot_params(mem, &regions, initrd, &loaded.result, spec.cmdline.len())?;
            linux::write_page_tables(mem)?;
            Ok(BootEntry::Linux64 { entry: loaded.entry, boot_params: layout::ZERO_PAGE })
        }
    }
}

struct Loaded {
    result: KernelLoaderResult,
    pvh_entry: Option<u64>,
    entry: u64,
}

fn load_kernel(mem: &GuestMemoryMmap, kernel: &Kernel) -> Result<Loaded, BootError> {
    let mut image = Cursor::new(kernel.bytes.as_ref());
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let fail = |e: linux_loader::loader::Error| BootError::Load {
        what: kernel.name.clone(),
        detail: e.to_string(),
    };
    match kernel.kind {
        KernelKind::BzImage => {
            let result = BzImage::load(mem, None, &mut image, himem).map_err(fail)?;
            // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
            let entry = result.kernel_load.0 + 0x200;
            Ok(Loaded { result, pvh_entry: None, entry })
        }
        _ => {
            let result = Elf::load(mem, None, &mut image, himem).map_err(fail)?;
            let pvh_entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
                _ => None,
            };
            let entry = result.kernel_load.0;
            Ok(Loaded { result, pvh_entry, entry })
        }
    }
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= layout::CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong { len: cmdline.len(), max: layout::CMDLINE_MAX - 1 });
    }
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE))?;
    Ok(())
}

/// Where an initrd went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

/// Places the initrd at the top of low RAM, page-aligned, above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    path: &PathBuf,
    kernel_end: u64,
) -> Result<Initrd, BootError> {
    let bytes = std::fs::read(path)
        .map_err(|source| BootError::ReadInitrd { path: path.clone(), source })?;
    let size = bytes.len() as u64;
    let top = ram_size.min(layout::MMIO_HOLE_START);
    let addr = top.checked_sub(size).map(|a| a & !0xfff);
    match addr {
        Some(addr) if addr >= kernel_end.max(layout::HIMEM_START) => {
            mem.write_slice(&bytes, GuestAddress(addr))?;
            Ok(Initrd { addr, size })
        }
        _ => Err(BootError::InitrdTooLarge { size, limit: top }),
    }
}

/// An E820 / PVH memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The memory map: low RAM, the reserved BIOS area, RAM from 1 MiB.
pub fn e820(ram_size: u64) -> Vec<Region> {
    let mut map = vec![
        Region { addr: 0, size: layout::EBDA_START, kind: E820_RAM },
        Region {
            addr: layout::EBDA_START,
            size: layout::HIMEM_START - layout::EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in layout::ram_ranges(ram_size) {
        let start = start.max(layout::HIMEM_START);
        let end = if start == layout::HIMEM_START { len } else { start + len };
        map.push(Region { addr: start, size: end - start, kind: E820_RAM });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_images() {
        let mut elf = vec![0u8; 128];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 62;
        assert_eq!(identify(&elf), Some(KernelKind::Elf));
        elf[64..68].copy_from_slice(b"Xen\0");
        assert_eq!(identify(&elf), Some(KernelKind::PvhElf));
        elf[80..89].copy_from_slice(b"Bulkhead\0");
        assert_eq!(identify(&elf), Some(KernelKind::BuiltIn));
        elf[18] = 3; // i386
        assert_eq!(identify(&elf), None);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(identify(&bz), Some(KernelKind::BzImage));
        assert_eq!(identify(b"garbage"), None);
    }

    #[test]
    fn memory_map_covers_ram_and_skips_the_holes() {
        let map = e820(512 << 20);
        assert_eq!(map[0], Region { addr: 0, size: 0x9fc00, kind: E820_RAM });
        assert_eq!(map[2], Region { addr: 1 << 20, size: (512 << 20) - (1 << 20), kind: E820_RAM });
        let big = e820(4 << 30);
        assert_eq!(big[3].addr, 1 << 32);
        assert_eq!(big[2].addr + big[2].size, layout::MMIO_HOLE_START);
        let ram: u64 = big.iter().filter(|r| r.kind == E820_RAM).map(|r| r.size).sum();
        assert_eq!(ram, (4 << 30) - (1 << 20) + layout::EBDA_START);
    }
}
