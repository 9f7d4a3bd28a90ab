//! The guest's only memory allocator: a bump allocator over one arena of
//! RAM above the guest image, for virtqueues and I/O buffers that live as
//! long as the guest does. Nothing is ever freed.
//!
//! The arena is the largest stretch of RAM (from the PVH memory map) above
//! the end of the guest image and below 4 GiB (the identity-mapped part)
//! that holds none of the data the VMM handed over: start_info, the memory
//! map, the module list, the command line and the modules (initrd).

use crate::bootinfo::{BootInfo, MemRegion, E820_RAM, MAX_MODULES};

const PAGE: u64 = 4096;
const FOUR_GIB: u64 = 1 << 32;

/// A bump allocator over `[next, end)`.
#[derive(Debug, PartialEq, Eq)]
pub struct Bump {
    next: u64,
    end: u64,
}

impl Bump {
    pub const fn new(start: u64, end: u64) -> Self {
        Bump { next: start, end }
    }

    /// `size` bytes aligned to `align` (a power of two), or `None` when the
    /// arena is exhausted.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let at = self.next.checked_add(align - 1)? & !(align - 1);
        let end = at.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(at)
    }

    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.next)
    }
}

/// The ranges (address, length) the arena must avoid.
pub fn boot_data(boot: &BootInfo) -> [(u64, u64); 4 + MAX_MODULES] {
    let mut out = [(0, 0); 4 + MAX_MODULES];
    out[0] = (boot.addr, 56);
    out[1] = (boot.memmap_addr, 24 * boot.memmap().len() as u64);
    out[2] = (boot.modlist_addr, 32 * boot.modules().len() as u64);
    out[3] = (boot.cmdline_addr, boot.cmdline_len as u64 + 1);
    for (slot, m) in out[4..].iter_mut().zip(boot.modules()) {
        *slot = (m.addr, m.size);
    }
    out
}

/// The arena (start, end), page-aligned: see the module docs.
pub fn arena(memmap: &[MemRegion], image_end: u64, avoid: &[(u64, u64)]) -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64)> = None;
    for r in memmap.iter().filter(|r| r.kind == E820_RAM) {
        let lo = r.addr.max(image_end);
        let hi = r.addr.saturating_add(r.size).min(FOUR_GIB);
        // A gap starts at the region's start or just after an avoided range.
        let starts = core::iter::once(lo).chain(avoid.iter().map(|&(a, l)| a.saturating_add(l)));
        for start in starts.map(|s| align_up(s.max(lo))) {
            if start >= hi || avoid.iter().any(|&(a, l)| l > 0 && a <= start && start < a + l) {
                continue;
            }
            let end = avoid
                .iter()
                .filter(|&&(a, l)| l > 0 && a > start)
                .map(|&(a, _)| a)
                .fold(hi, u64::min)
                & !(PAGE - 1);
            if end > start && best.is_none_or(|(s, e)| end - start > e - s) {
                best = Some((start, end));
            }
        }
    }
    best
}

fn align_up(x: u64) -> u64 {
    x.saturating_add(PAGE - 1) & !(PAGE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(addr: u64, size: u64) -> MemRegion {
        MemRegion { addr, size, kind: E820_RAM }
    }

    #[test]
    fn allocates_aligned_until_exhausted() {
        let mut b = Bump::new(0x1001, 0x4000);
        assert_eq!(b.alloc(16, 16), Some(0x1010));
        assert_eq!(b.alloc(0x1000, 0x1000), Some(0x2000));
        assert_eq!(b.remaining(), 0x1000);
        assert_eq!(b.alloc(0x1001, 8), None);
        assert_eq!(b.alloc(0x1000, 8), Some(0x3000));
        assert_eq!(b.alloc(1, 1), None);
    }

    #[test]
    fn arena_is_above_the_image_and_avoids_boot_data() {
        let map = [ram(0, 0x9fc00), ram(0x10_0000, 0xff0_0000)];
        // Nothing to avoid: all of the big region above the image.
        assert_eq!(arena(&map, 0x50_0123, &[]), Some((0x50_1000, 0x1000_0000)));
        // A command line in the middle: the larger side wins.
        let avoid = [(0x800_0000, 100), (0, 0)];
        assert_eq!(arena(&map, 0x50_0000, &avoid), Some((0x800_1000, 0x1000_0000)));
        // An initrd at the top of RAM.
        let avoid = [(0x0f00_0000, 0x100_0000)];
        assert_eq!(arena(&map, 0x50_0000, &avoid), Some((0x50_0000, 0x0f00_0000)));
        // Only RAM below 4 GiB counts.
        let map = [ram(0x10_0000, 0x1000_0000), ram(0xffff_0000, 0x2_0000_0000)];
        assert_eq!(arena(&map, 0x20_0000, &[]), Some((0x20_0000, 0x1010_0000)));
        assert_eq!(arena(&[ram(0, 0x9f000)], 0x10_0000, &[]), None);
    }
}
