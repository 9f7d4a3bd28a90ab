//! The inflight region (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`), split-virtqueue format.
//!
//! The frontend asks for the region with `GET_INFLIGHT_FD` (the backend creates a memfd and
//! returns it), keeps it across backend restarts, and hands it to every new backend with
//! `SET_INFLIGHT_FD`. The backend records in it which descriptor chains it has taken from the
//! available ring and not yet returned, so that a backend started after a crash resubmits them.
//!
//! Layout, per queue, at `queue * queue_region_size(queue_size)` (all little-endian):
//!
//! ```text
//! 0   u64 features          (unused here)
//! 8   u16 version           0 = never used; 1 = this format
//! 10  u16 desc_num          the queue size
//! 12  u16 last_batch_head   head of the last batch put in the used ring
//! 14  u16 used_idx          the used ring's idx after that batch
//! 16  desc[desc_num], 16 bytes each:
//!       u8 inflight, u8 padding[5], u16 next, u64 counter
//! ```
//!
//! Taking a chain sets `counter` (a per-queue sequence number) and then `inflight = 1`.
//! Returning it (batches of one here) sets `next = last_batch_head`, `last_batch_head = head`,
//! publishes the used ring entry, then sets `inflight = 0` and `used_idx`. On start, if
//! `used_idx` differs from the used ring's idx, the backend died between publishing and clearing:
//! the last batch is cleared. The chains still marked inflight are then resubmitted in counter
//! order, and the next chain to take from the available ring is `used idx + inflight count` (the
//! queue is processed and completed in order, so those are exactly the ones in flight). The
//! region size per queue matches libvhost-user's, so either backend can pick up the other's.

use std::fs::File;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

/// Largest region `GET_INFLIGHT_FD` creates or `SET_INFLIGHT_FD` maps.
pub const MAX_REGION_BYTES: u64 = 64 << 20;

const HEADER: usize = 16;
const DESC: usize = 16;
const VERSION: u16 = 1;

/// Why an inflight region could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The sizes in the message are zero, too large or not what this device has.
    #[error("the inflight region's sizes are invalid: {0}")]
    BadSize(String),
    /// The memfd could not be made or sized.
    #[error("cannot create the inflight region")]
    Create(#[source] std::io::Error),
    /// The file could not be mapped.
    #[error("cannot map the inflight region")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
}

/// Bytes of one queue's part of the region (a multiple of 64).
pub fn queue_region_size(queue_size: u16) -> usize {
    (HEADER + DESC * usize::from(queue_size)).div_ceil(64) * 64
}

/// A mapped inflight region shared with the frontend.
pub struct InflightRegion {
    map: MmapRegion,
    file: File,
    num_queues: u16,
    queue_size: u16,
}

impl InflightRegion {
    /// Creates a zeroed region for `num_queues` queues of `queue_size`.
    pub fn create(num_queues: u16, queue_size: u16) -> Result<InflightRegion, InflightError> {
        let size = region_size(num_queues, queue_size)?;
        let file = memfd("bulkhead-inflight").map_err(InflightError::Create)?;
        file.set_len(size as u64).map_err(InflightError::Create)?;
        Self::map(file, 0, size as u64, num_queues, queue_size)
    }

    /// Maps a region the frontend handed over.
    pub fn map(
        file: File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<InflightRegion, InflightError> {
        let need = region_size(num_queues, queue_size)? as u64;
        let file_len = file.metadata().map_err(InflightError::Create)?.len();
        let fits = offset.checked_add(size).is_some_and(|end| end <= file_len);
        if size < need || size > MAX_REGION_BYTES || !fits {
            return Err(InflightError::BadSize(format!(
                "{size} bytes at offset {offset} of a {file_len}-byte file for {num_queues} \
                 queues of {queue_size} (needs {need})"
            )));
        }
        let dup = file.try_clone().map_err(InflightError::Create)?;
        let map = MmapRegion::from_file(FileOffset::new(dup, offset), need as usize)
            .map_err(InflightError::Map)?;
        Ok(InflightRegion { map, file, num_queues, queue_size })
    }

    /// The memfd (to send to the frontend).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Mapped size in bytes.
    pub fn size(&self) -> u64 {
        self.map.size() as u64
    }

    /// Number of queues the region covers.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Queue size the region was made for.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    fn write<T: vm_memory::ByteValued>(&self, at: usize, value: T) {
        // Out-of-range writes cannot happen (offsets are computed from checked sizes); should one,
        // it is dropped rather than trusted.
        let _ = self.map.as_volatile_slice().write_obj(value, at);
    }

    fn read<T: vm_memory::ByteValued + Default>(&self, at: usize) -> T {
        self.map.as_volatile_slice().read_obj(at).unwrap_or_default()
    }
}

fn region_size(num_queues: u16, queue_size: u16) -> Result<usize, InflightError> {
    let size = usize::from(num_queues) * queue_region_size(queue_size);
    if num_queues == 0 || queue_size == 0 || size as u64 > MAX_REGION_BYTES {
        return Err(InflightError::BadSize(format!(
            "{num_queues} queues of {queue_size} descriptors"
        )));
    }
    Ok(size)
}

fn memfd(name: &str) -> std::io::Result<File> {
    let name = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// One queue's view of the region.
pub struct InflightQueue {
    region: Arc<InflightRegion>,
    base: usize,
    size: u16,
    counter: u64,
}

impl InflightQueue {
    /// The part of `region` for queue `index` of `size` descriptors; `None` if the region does
    /// not cover it.
    pub fn new(region: Arc<InflightRegion>, index: usize, size: u16) -> Option<InflightQueue> {
        if index >= usize::from(region.num_queues) || size > region.queue_size {
            return None;
        }
        let base = index * queue_region_size(region.queue_size);
        Some(InflightQueue { region, base, size, counter: 0 })
    }

    fn desc(&self, head: u16) -> usize {
        self.base + HEADER + DESC * usize::from(head)
    }

    /// Recovers after a (re)connection, given the used ring's idx. Returns the heads to resubmit,
    /// oldest first. A region never used before is initialized and yields none.
    pub fn recover(&mut self, used_idx: u16) -> Vec<u16> {
        let r = &self.region;
        let version: u16 = r.read(self.base + 8);
        let desc_num: u16 = r.read(self.base + 10);
        if version != VERSION || desc_num != self.size {
            if version != 0 {
                log::warn!("inflight region has version {version}, {desc_num} descriptors; reset");
            }
            for head in 0..self.size {
                r.write(self.desc(head), [0u8; DESC]);
            }
            r.write(self.base + 10, self.size);
            r.write(self.base + 12, 0u16);
            r.write(self.base + 14, used_idx);
            fence(Ordering::SeqCst);
            r.write(self.base + 8, VERSION);
            return Vec::new();
        }
        let recorded_used: u16 = r.read(self.base + 14);
        if recorded_used != used_idx {
            // Died after publishing the last batch (of one) and before clearing it.
            let last: u16 = r.read(self.base + 12);
            if last < self.size {
                r.write(self.desc(last), 0u8);
            }
            r.write(self.base + 14, used_idx);
        }
        let mut pending: Vec<(u64, u16)> = (0..self.size)
            .filter(|&h| r.read::<u8>(self.desc(h)) == 1)
            .map(|h| (r.read::<u64>(self.desc(h) + 8), h))
            .collect();
        pending.sort_unstable();
        self.counter = pending.last().map_or(0, |(c, _)| c.wrapping_add(1));
        pending.into_iter().map(|(_, h)| h).collect()
    }

    /// Records that the chain at `head` was taken from the available ring.
    pub fn begin(&mut self, head: u16) {
        if head >= self.size {
            return;
        }
        let at = self.desc(head);
        self.region.write(at + 8, self.counter);
        self.counter = self.counter.wrapping_add(1);
        fence(Ordering::SeqCst);
        self.region.write(at, 1u8);
        fence(Ordering::SeqCst);
    }

    /// Before the used ring entry for `head` is published.
    pub fn before_used(&mut self, head: u16) {
        if head >= self.size {
            return;
        }
        let last: u16 = self.region.read(self.base + 12);
        self.region.write(self.desc(head) + 6, last);
        self.region.write(self.base + 12, head);
        fence(Ordering::SeqCst);
    }

    /// After the used ring's idx became `used_idx` with `head` in it.
    pub fn after_used(&mut self, head: u16, used_idx: u16) {
        fence(Ordering::SeqCst);
        if head < self.size {
            self.region.write(self.desc(head), 0u8);
        }
        fence(Ordering::SeqCst);
        self.region.write(self.base + 14, used_idx);
    }

    /// Whether `head` is marked inflight (for tests and checks).
    pub fn is_inflight(&self, head: u16) -> bool {
        head < self.size && self.region.read::<u8>(self.desc(head)) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_libvhost_user() {
        // libvhost-user: ALIGN_UP(16 * queue_size + 2, 64); header of 16 bytes fits.
        for qs in [1u16, 2, 3, 4, 128, 256, 1024, 32768] {
            let theirs = (16 * usize::from(qs) + 2).div_ceil(64) * 64;
            assert_eq!(queue_region_size(qs), theirs, "queue size {qs}");
        }
        assert!(InflightRegion::create(0, 128).is_err());
        assert!(InflightRegion::create(1, 0).is_err());
        assert!(InflightRegion::create(u16::MAX, 32768).is_err(), "bounded");
    }

    #[test]
    fn recovery_resubmits_in_counter_order_and_clears_the_last_batch() {
        let region = Arc::new(InflightRegion::create(2, 8).unwrap());
        let mut q = InflightQueue::new(region.clone(), 1, 8).unwrap();
        assert!(q.recover(0).is_empty(), "a fresh region has nothing in flight");
        for head in [5, 2, 7, 1] {
            q.begin(head);
        }
        // Head 5 completes fully; head 2 dies between publishing and clearing.
        q.before_used(5);
        q.after_used(5, 1);
        q.before_used(2);
        // A new backend maps the same file.
        let file = region.file().try_clone().unwrap();
        let again = Arc::new(InflightRegion::map(file, 0, region.size(), 2, 8).unwrap());
        let mut q2 = InflightQueue::new(again, 1, 8).unwrap();
        assert_eq!(q2.recover(1), vec![2, 7, 1], "head 2 not yet in the used ring");
        let mut q3 = InflightQueue::new(region.clone(), 1, 8).unwrap();
        assert_eq!(q3.recover(2), vec![7, 1], "used idx 2: head 2 was published");
        assert!(!q3.is_inflight(2));
        // Queue 0 is untouched.
        assert!(InflightQueue::new(region.clone(), 0, 8).unwrap().recover(0).is_empty());
        assert!(InflightQueue::new(region, 2, 8).is_none());
    }

    #[test]
    fn map_refuses_short_files() {
        let region = InflightRegion::create(1, 128).unwrap();
        let f = || region.file().try_clone().unwrap();
        assert!(InflightRegion::map(f(), 0, region.size(), 1, 256).is_err());
        assert!(InflightRegion::map(f(), 64, region.size(), 1, 128).is_err());
        assert!(InflightRegion::map(f(), 0, region.size(), 1, 128).is_ok());
    }
}
