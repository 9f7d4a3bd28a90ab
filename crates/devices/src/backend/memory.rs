//! Guest memory, as the frontend describes it in `SET_MEM_TABLE`.
//!
//! Each region arrives as (guest-physical address, size, the frontend's virtual address, offset
//! into the file) plus a file descriptor. The backend maps each file shared and builds a
//! `GuestMemoryMmap` from them; vring addresses arrive as the frontend's *virtual* addresses and
//! are translated through the same table.
//!
//! The table is refused (and the old one kept) when it has no region or more than
//! [`MAX_REGIONS`], a region is empty or larger than [`MAX_REGION_BYTES`], an address range
//! wraps, regions overlap, or a region reaches past the end of its file: mapping past the end
//! would turn the first access into a `SIGBUS`. (A frontend that shrinks the file afterwards can
//! still cause one; Bulkhead's core seals its memfd against that, and so does QEMU's
//! `memory-backend-memfd` by default.)

use std::fs::File;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserMemoryRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Most regions in one table (the protocol's limit without `CONFIGURE_MEM_SLOTS`).
pub const MAX_REGIONS: usize = 8;
/// Largest region accepted (1 TiB).
pub const MAX_REGION_BYTES: u64 = 1 << 40;

/// Why a memory table was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Wrong number of regions or of file descriptors.
    #[error("the memory table has {regions} regions and {files} files; 1 to 8 of each, as many files as regions")]
    Count {
        /// Regions in the message.
        regions: usize,
        /// File descriptors attached.
        files: usize,
    },
    /// A region is empty, too large, wraps, or reaches past the end of its file.
    #[error("memory region {index} is invalid: {reason}")]
    Region {
        /// Index in the table.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The regions could not be mapped or they overlap.
    #[error("cannot map the memory table: {0}")]
    Map(String),
}

/// How one region maps the frontend's addresses to guest-physical ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Translation {
    guest_phys: u64,
    size: u64,
    user_addr: u64,
}

/// A memory table, mapped.
#[derive(Clone, Debug, Default)]
pub struct MemoryTable {
    translations: Vec<Translation>,
}

impl MemoryTable {
    /// Maps the regions of a `SET_MEM_TABLE` message.
    pub fn map(
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
    ) -> Result<(GuestMemoryMmap, MemoryTable), MemoryError> {
        if regions.is_empty() || regions.len() > MAX_REGIONS || files.len() != regions.len() {
            return Err(MemoryError::Count { regions: regions.len(), files: files.len() });
        }
        let mut mapped = Vec::with_capacity(regions.len());
        let mut translations = Vec::with_capacity(regions.len());
        for (index, (r, file)) in regions.iter().zip(files).enumerate() {
            let region = Region {
                guest_phys: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                offset: r.mmap_offset,
            };
            mapped.push(Arc::new(region.map(index, file)?));
            translations.push(Translation {
                guest_phys: region.guest_phys,
                size: region.size,
                user_addr: region.user_addr,
            });
        }
        let mem = GuestMemoryMmap::from_arc_regions(mapped)
            .map_err(|e| MemoryError::Map(e.to_string()))?;
        Ok((mem, MemoryTable { translations }))
    }

    /// Translates a frontend virtual address to a guest-physical one.
    pub fn to_guest_phys(&self, user_addr: u64) -> Option<GuestAddress> {
        self.translations.iter().find_map(|t| {
            let off = user_addr.checked_sub(t.user_addr)?;
            (off < t.size).then(|| GuestAddress(t.guest_phys + off))
        })
    }

    /// Whether a table has been set.
    pub fn is_set(&self) -> bool {
        !self.translations.is_empty()
    }
}

/// One region as the message describes it.
struct Region {
    guest_phys: u64,
    size: u64,
    user_addr: u64,
    offset: u64,
}

impl Region {
    fn check(&self, file_len: u64) -> Result<(), String> {
        if self.size == 0 || self.size > MAX_REGION_BYTES {
            return Err(format!("size {:#x} is not between 1 byte and 1 TiB", self.size));
        }
        let ends = [self.guest_phys, self.user_addr, self.offset];
        if ends.iter().any(|a| a.checked_add(self.size).is_none()) {
            return Err("an address range wraps around".into());
        }
        if self.offset + self.size > file_len {
            return Err(format!(
                "it reaches {:#x} bytes into a file of {file_len:#x} bytes",
                self.offset + self.size
            ));
        }
        Ok(())
    }

    fn map(&self, index: usize, file: File) -> Result<GuestRegionMmap, MemoryError> {
        let bad = |reason: String| MemoryError::Region { index, reason };
        let file_len = file_size(&file).map_err(|e| bad(format!("cannot stat its file: {e}")))?;
        self.check(file_len).map_err(bad)?;
        let map = MmapRegion::from_file(FileOffset::new(file, self.offset), self.size as usize)
            .map_err(|e| bad(format!("cannot map it: {e}")))?;
        GuestRegionMmap::new(map, GuestAddress(self.guest_phys))
            .ok_or_else(|| bad("its guest-physical range wraps around".into()))
    }
}

/// Size of a regular file or memfd; block devices and others report 0 and are refused.
fn file_size(file: &File) -> std::io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // hugetlbfs files and memfds are regular files; anything else has no size we can trust.
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    fn memfd(len: u64) -> File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        f
    }

    fn region(gpa: u64, size: u64, uaddr: u64, offset: u64) -> VhostUserMemoryRegion {
        VhostUserMemoryRegion::new(gpa, size, uaddr, offset)
    }

    #[test]
    fn maps_and_translates() {
        let regions = [region(0, 0x10000, 0x7f00_0000_0000, 0), region(0x10000, 0x1000, 0x5000, 0)];
        let (mem, table) = MemoryTable::map(&regions, vec![memfd(0x10000), memfd(0x1000)]).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(table.to_guest_phys(0x7f00_0000_0010), Some(GuestAddress(0x10)));
        assert_eq!(table.to_guest_phys(0x5fff), Some(GuestAddress(0x10fff)));
        assert_eq!(table.to_guest_phys(0x6000), None);
        mem.write_obj(7u32, GuestAddress(0x10ffc)).unwrap();
    }

    #[test]
    fn refuses_bad_tables() {
        let one = |r: VhostUserMemoryRegion, len: u64| MemoryTable::map(&[r], vec![memfd(len)]);
        assert!(one(region(0, 0, 0, 0), 0x1000).is_err(), "empty region");
        assert!(one(region(0, 0x2000, 0, 0), 0x1000).is_err(), "past the end of the file");
        assert!(one(region(0, 0x1000, 0, 0x1000), 0x1000).is_err(), "offset past the end");
        assert!(one(region(u64::MAX - 0xfff, 0x1000, 0, 0), 0x1000).is_err(), "wraps");
        assert!(one(region(0, 0x1000, u64::MAX, 0), 0x1000).is_err(), "user address wraps");
        assert!(MemoryTable::map(&[], vec![]).is_err());
        assert!(MemoryTable::map(&[region(0, 0x1000, 0, 0)], vec![]).is_err(), "no file");
        let overlap = [region(0, 0x2000, 0, 0), region(0x1000, 0x1000, 0x9000, 0)];
        assert!(MemoryTable::map(&overlap, vec![memfd(0x2000), memfd(0x1000)]).is_err());
        let dev_null = File::open("/dev/null").unwrap();
        assert!(MemoryTable::map(&[region(0, 0x1000, 0, 0)], vec![dev_null]).is_err());
    }
}
