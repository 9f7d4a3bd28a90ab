//! A write-through copy of the metadata tables an image reads on every request (qcow2 L2
//! tables and refcount blocks, VMDK grain tables), so that a read of allocated data costs one
//! `pread` — the data's — as on a raw file.
//!
//! The file stays the only truth. The cache holds *slices*: aligned byte ranges of the file,
//! copied from it on a miss. [`crate::file::ImageFile`] updates every cached slice that a write
//! through it touches, after the `pwrite` succeeded (and drops the slices a failed write, a hole
//! punch or a truncation touched), so every metadata update is still in the file before the call
//! that made it returns, and a process killed at any point loses nothing the file does not hold.
//!
//! Coherence does not depend on the callers' locks: a miss notes the cache's generation before
//! its `pread` and inserts the slice only if no write or drop happened meanwhile (every write
//! and drop bumps the generation), so a slice read before a concurrent write cannot be kept.
//! Only writes through the same [`crate::file::ImageFile`] are seen; another process writing the
//! image while it is open is unsupported, as it is for every format's in-memory tables.
//!
//! Bounded: at most `max_bytes / SLICE` slices; when full, the least recently used half goes.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Bytes per cached slice: one page, the unit the kernel reads anyway.
pub(crate) const SLICE: u64 = 4096;

/// The cached slices of one file.
pub(crate) struct TableCache {
    max_slices: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Slices by file offset (a multiple of [`SLICE`]).
    slices: BTreeMap<u64, Slice>,
    /// Bumped by every write and drop; see the module docs.
    generation: u64,
    /// Use counter, for eviction.
    clock: u64,
}

struct Slice {
    bytes: Box<[u8]>,
    /// Bytes of the slice that lie inside the file (the rest is past its end).
    valid: usize,
    used: u64,
}

/// What a lookup found: the bytes, or the generation to insert a freshly read slice with.
pub(crate) enum Lookup {
    Hit,
    Miss { generation: u64 },
}

impl TableCache {
    /// A cache of at most `max_bytes` (rounded down to whole slices, at least one).
    pub fn new(max_bytes: u64) -> Self {
        let max_slices = (max_bytes / SLICE).max(1) as usize;
        TableCache { max_slices, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies `out.len()` bytes at `offset` (inside the slice at `start`) from the cache.
    /// `Ok(Hit)`; `Ok(Miss)` when the slice is not cached; `Err(valid)` when it is, but the
    /// bytes reach past the end of the file (`valid` bytes of the slice exist).
    pub fn get(&self, start: u64, offset: u64, out: &mut [u8]) -> Result<Lookup, usize> {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let generation = inner.generation;
        let Some(slice) = inner.slices.get_mut(&start) else {
            return Ok(Lookup::Miss { generation });
        };
        slice.used = clock;
        let from = (offset - start) as usize;
        if from + out.len() > slice.valid {
            return Err(slice.valid);
        }
        out.copy_from_slice(&slice.bytes[from..from + out.len()]);
        Ok(Lookup::Hit)
    }

    /// Keeps a slice read from the file at `start` (`valid` bytes of it inside the file), unless
    /// the file changed since `generation`.
    pub fn insert(&self, start: u64, bytes: Box<[u8]>, valid: usize, generation: u64) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.slices.len() >= self.max_slices {
            evict_half(&mut inner);
        }
        inner.clock += 1;
        let used = inner.clock;
        inner.slices.insert(start, Slice { bytes, valid, used });
    }

    /// Mirrors a successful write of `data` at `offset` into the cached slices it touches.
    pub fn wrote(&self, data: &[u8], offset: u64) {
        let mut inner = self.lock();
        inner.generation += 1;
        let end = offset + data.len() as u64;
        for (&start, slice) in inner.slices.range_mut(offset / SLICE * SLICE..end) {
            let from = offset.max(start);
            let to = end.min(start + SLICE);
            let src = &data[(from - offset) as usize..(to - offset) as usize];
            let at = (from - start) as usize;
            slice.bytes[at..at + src.len()].copy_from_slice(src);
            // Bytes between the old end of the file and this write read as zeros, as the
            // slice's tail already does.
            slice.valid = slice.valid.max(at + src.len());
        }
    }

    /// Forgets the slices that touch `[offset, offset + len)` (a failed write, a punched hole).
    pub fn drop_range(&self, offset: u64, len: u64) {
        let mut inner = self.lock();
        inner.generation += 1;
        let end = offset.saturating_add(len);
        let doomed: Vec<u64> =
            inner.slices.range(offset / SLICE * SLICE..end).map(|(&s, _)| s).collect();
        for s in doomed {
            inner.slices.remove(&s);
        }
    }

    /// Forgets everything (the file was truncated or extended by `set_len`).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.slices.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().slices.len()
    }
}

/// Drops the least recently used half of the slices.
fn evict_half(inner: &mut Inner) {
    let mut uses: Vec<u64> = inner.slices.values().map(|s| s.used).collect();
    let mid = uses.len() / 2;
    let (_, &mut median, _) = uses.select_nth_unstable(mid);
    inner.slices.retain(|_, s| s.used > median);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(fill: u8, valid: usize) -> Box<[u8]> {
        let mut b = vec![0u8; SLICE as usize].into_boxed_slice();
        b[..valid].fill(fill);
        b
    }

    fn miss_generation(c: &TableCache, start: u64) -> u64 {
        match c.get(start, start, &mut [0u8; 1]) {
            Ok(Lookup::Miss { generation }) => generation,
            _ => panic!("expected a miss at {start}"),
        }
    }

    #[test]
    fn hits_reflect_writes_and_drops() {
        let c = TableCache::new(1 << 20);
        let g = miss_generation(&c, 0);
        c.insert(0, slice(7, 4096), 4096, g);
        let mut out = [0u8; 4];
        assert!(matches!(c.get(0, 10, &mut out), Ok(Lookup::Hit)));
        assert_eq!(out, [7; 4]);
        // A write across the slice's end updates the part inside it.
        c.wrote(&[1, 2, 3, 4], 4094);
        assert!(matches!(c.get(0, 4092, &mut out), Ok(Lookup::Hit)));
        assert_eq!(out, [7, 7, 1, 2]);
        c.drop_range(100, 1);
        assert!(matches!(c.get(0, 0, &mut out), Ok(Lookup::Miss { .. })));
    }

    #[test]
    fn a_slice_read_before_a_write_is_not_kept() {
        let c = TableCache::new(1 << 20);
        let g = miss_generation(&c, 8192);
        c.wrote(&[9], 8192); // not cached: nothing to update, but the generation moves
        c.insert(8192, slice(0, 4096), 4096, g);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn partial_slices_at_the_end_of_the_file() {
        let c = TableCache::new(1 << 20);
        let g = miss_generation(&c, 0);
        c.insert(0, slice(5, 100), 100, g);
        let mut out = [0u8; 8];
        assert!(matches!(c.get(0, 96, &mut out), Err(100)));
        // Extending the file through a write makes the gap read as zeros.
        c.wrote(&[8; 8], 200);
        assert!(matches!(c.get(0, 96, &mut out), Ok(Lookup::Hit)));
        assert_eq!(out, [5, 5, 5, 5, 0, 0, 0, 0]);
    }

    #[test]
    fn bounded_with_recent_slices_kept() {
        let c = TableCache::new(8 * SLICE);
        for i in 0..8u64 {
            let g = miss_generation(&c, i * SLICE);
            c.insert(i * SLICE, slice(1, 4096), 4096, g);
        }
        c.get(0, 0, &mut [0u8; 1]).unwrap(); // slice 0 is now the most recently used
        let g = miss_generation(&c, 100 * SLICE);
        c.insert(100 * SLICE, slice(1, 4096), 4096, g);
        assert!(c.len() <= 8);
        assert!(matches!(c.get(0, 0, &mut [0u8; 1]), Ok(Lookup::Hit)));
        assert!(matches!(c.get(SLICE, SLICE, &mut [0u8; 1]), Ok(Lookup::Miss { .. })));
        c.clear();
        assert_eq!(c.len(), 0);
    }
}
