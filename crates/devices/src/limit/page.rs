//! The limits page: one page of shared memory holding a device's current limits, written by the
//! core and read by the device (in its compartment, or on a thread in monolithic mode).
//!
//! # Layout (version 1)
//!
//! Little-endian 64-bit words from offset 0; the rest of the page is zero.
//!
//! | word | field |
//! |---|---|
//! | 0 | magic, `BHLIMITS` as bytes |
//! | 1 | layout version, 1 |
//! | 2 | generation: even when stable, odd while the core writes |
//! | 3 + 6·s … | limiter `s` (0 or 1): bandwidth size, burst, refill ms; ops size, burst, refill ms |
//!
//! A size or refill time of 0 is no limit.
//!
//! # Writing and reading: a seqlock
//!
//! The core is the only writer (one lock in [`LimitsPage`] orders its writers): it makes the
//! generation odd, stores the fields, and makes it even again (one more than before). A reader
//! loads the generation (one atomic load per batch of requests: [`LimitsView::generation`]);
//! only when it changed does it read the fields, then the generation again, and retries, a
//! bounded number of times, while the two differ or are odd. The reader never blocks the
//! writer, nor the writer the reader: the core never waits on a compartment.
//!
//! # Trust
//!
//! The core creates the page as a sealed memfd (`F_SEAL_SHRINK | F_SEAL_GROW |
//! F_SEAL_FUTURE_WRITE`, added after its own writable mapping): a compartment that inherits it can
//! map it only read-only, and cannot resize it under the core. The compartment still validates
//! what it reads: a wrong magic or version, or a value out of range, reads as no limit, logged.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::mmap::MmapRegion;
use vm_memory::FileOffset;

use super::spec::{BucketSpec, DeviceLimits, LimiterSpec, SLOTS};

/// The page's size.
pub const PAGE_SIZE: usize = 4096;
/// Word 0.
pub const MAGIC: u64 = u64::from_le_bytes(*b"BHLIMITS");
/// Word 1.
pub const VERSION: u64 = 1;
/// How many times a reader retries a torn read before it keeps what it had.
const READ_TRIES: usize = 1000;

/// The page's words.
#[repr(C)]
struct Words {
    magic: AtomicU64,
    version: AtomicU64,
    generation: AtomicU64,
    slots: [[AtomicU64; 6]; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Words>() <= PAGE_SIZE);

/// Where the words are: a shared mapping, or private memory (a device with no page).
enum Backing {
    Mapped(MmapRegion),
    Private(Box<Words>),
}

impl Backing {
    fn words(&self) -> &Words {
        match self {
            // SAFETY: the region is PAGE_SIZE bytes (checked when mapped), page-aligned, and
            // lives as long as `self`; `Words` is made of AtomicU64s, valid for any bits, and
            // only ever accessed atomically here (an atomic load of read-only memory is a
            // plain load on x86-64, which is what a compartment's read-only mapping allows).
            Backing::Mapped(region) => unsafe { &*region.as_ptr().cast::<Words>() },
            Backing::Private(words) => words,
        }
    }
}

fn zeroed() -> Box<Words> {
    let z = || AtomicU64::new(0);
    Box::new(Words {
        magic: z(),
        version: z(),
        generation: z(),
        slots: std::array::from_fn(|_| std::array::from_fn(|_| z())),
    })
}

/// Why a page's content was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Not a limits page of a version this code reads.
    #[error("the limits page has magic {magic:#x}, version {version}; expected version {VERSION}")]
    Layout {
        /// Word 0.
        magic: u64,
        /// Word 1.
        version: u64,
    },
    /// A value out of range.
    #[error("the limits page holds an invalid bucket ({0})")]
    Range(String),
    /// The writer was busy on every try.
    #[error("the limits page changed on each of {READ_TRIES} reads")]
    Torn,
}

fn bucket(words: &[AtomicU64]) -> Option<BucketSpec> {
    let w = |i: usize| words[i].load(Ordering::Relaxed);
    let b = BucketSpec { size: w(0), one_time_burst: w(1), refill_time_ms: w(2) };
    (!b.is_unlimited()).then_some(b)
}

fn store_bucket(words: &[AtomicU64], b: Option<BucketSpec>) {
    let b = b.unwrap_or_default();
    words[0].store(b.size, Ordering::Relaxed);
    words[1].store(b.one_time_burst, Ordering::Relaxed);
    words[2].store(b.refill_time_ms, Ordering::Relaxed);
}

impl Words {
    fn write(&self, limits: &DeviceLimits) {
        let g = self.generation.load(Ordering::Relaxed);
        self.generation.store(g | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (slot, l) in self.slots.iter().zip(&limits.0) {
            store_bucket(&slot[..3], l.bandwidth);
            store_bucket(&slot[3..], l.ops);
        }
        self.magic.store(MAGIC, Ordering::Relaxed);
        self.version.store(VERSION, Ordering::Relaxed);
        self.generation.store((g | 1).wrapping_add(1), Ordering::Release);
    }

    /// One consistent read, or why not; `Ok` carries the generation read.
    fn read(&self) -> Result<(u64, DeviceLimits), PageError> {
        for _ in 0..READ_TRIES {
            let g = self.generation.load(Ordering::Acquire);
            if g & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let magic = self.magic.load(Ordering::Relaxed);
            let version = self.version.load(Ordering::Relaxed);
            let mut limits = DeviceLimits::default();
            for (l, slot) in limits.0.iter_mut().zip(&self.slots) {
                *l = LimiterSpec { bandwidth: bucket(&slot[..3]), ops: bucket(&slot[3..]) };
            }
            fence(Ordering::Acquire);
            if self.generation.load(Ordering::Relaxed) != g {
                continue;
            }
            if magic != MAGIC || version != VERSION {
                return Err(PageError::Layout { magic, version });
            }
            for b in limits.0.iter().flat_map(|l| [l.bandwidth, l.ops]).flatten() {
                b.check().map_err(PageError::Range)?;
            }
            return Ok((g, limits));
        }
        Err(PageError::Torn)
    }
}

/// The core's side: the page, mapped read-write, and its file for the device.
pub struct LimitsPage {
    file: File,
    backing: Backing,
    writer: Mutex<()>,
}

impl LimitsPage {
    /// A new sealed page holding `limits`.
    pub fn create(limits: &DeviceLimits) -> std::io::Result<LimitsPage> {
        // SAFETY: memfd_create reads the NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::memfd_create(
                c"bulkhead-limits".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created, owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(PAGE_SIZE as u64)?;
        let region = map(&file, libc::PROT_READ | libc::PROT_WRITE)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE;
        // SAFETY: F_ADD_SEALS on a memfd we own; it changes no memory of this process.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let page = LimitsPage { file, backing: Backing::Mapped(region), writer: Mutex::new(()) };
        page.write(limits);
        Ok(page)
    }

    /// The memfd, for a compartment to inherit (it can map it read-only only).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Publishes `limits`; devices take them at their next batch of requests.
    pub fn write(&self, limits: &DeviceLimits) {
        let _one_writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.backing.words().write(limits);
    }

    /// The limits the page holds.
    pub fn read(&self) -> DeviceLimits {
        let _one_writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.backing.words().read().map(|(_, l)| l).unwrap_or_default()
    }

    /// A reader of this page in this process (monolithic mode): a second, read-only mapping.
    pub fn view(&self) -> std::io::Result<LimitsView> {
        LimitsView::map(self.file.try_clone()?)
    }
}

/// The device's side: the page, read-only.
#[derive(Clone)]
pub struct LimitsView(Arc<Backing>);

impl LimitsView {
    /// Maps an inherited page read-only.
    pub fn map(file: File) -> std::io::Result<LimitsView> {
        let len = file.metadata()?.len();
        if len < PAGE_SIZE as u64 {
            return Err(std::io::Error::other(format!(
                "the limits page is {len} bytes, less than a page"
            )));
        }
        Ok(LimitsView(Arc::new(Backing::Mapped(map(&file, libc::PROT_READ)?))))
    }

    /// A page of this process's own, holding `limits` for good (a device run by hand).
    pub fn fixed(limits: &DeviceLimits) -> LimitsView {
        let words = zeroed();
        words.write(limits);
        LimitsView(Arc::new(Backing::Private(words)))
    }

    /// The generation: it changes when the limits do. One atomic load.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.0.words().generation.load(Ordering::Acquire)
    }

    /// The limits and the generation they are of, validated.
    pub fn read(&self) -> Result<(u64, DeviceLimits), PageError> {
        self.0.words().read()
    }
}

fn map(file: &File, prot: i32) -> std::io::Result<MmapRegion> {
    let file = file.try_clone()?;
    MmapRegion::build(Some(FileOffset::new(file, 0)), PAGE_SIZE, prot, libc::MAP_SHARED)
        .map_err(|e| std::io::Error::other(format!("cannot map the limits page: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::spec::TX;

    fn limits() -> DeviceLimits {
        let mut l = DeviceLimits::default();
        l.0[TX].ops = Some(BucketSpec { size: 5, one_time_burst: 7, refill_time_ms: 100 });
        l
    }

    #[test]
    fn what_the_core_writes_the_device_reads_and_a_change_moves_the_generation() {
        let page = LimitsPage::create(&DeviceLimits::default()).unwrap();
        let view = page.view().unwrap();
        let (g0, l0) = view.read().unwrap();
        assert_eq!((g0 % 2, l0), (0, DeviceLimits::default()));
        page.write(&limits());
        assert_ne!(view.generation(), g0);
        assert_eq!(view.read().unwrap().1, limits());
        assert_eq!(page.read(), limits());
        assert_eq!(LimitsView::fixed(&limits()).read().unwrap().1, limits());
    }

    #[test]
    fn a_compartment_cannot_write_or_resize_the_page() {
        let page = LimitsPage::create(&limits()).unwrap();
        let file = page.file().try_clone().unwrap();
        assert!(map(&file, libc::PROT_READ | libc::PROT_WRITE).is_err(), "writable mapping");
        assert!(file.set_len(2 * PAGE_SIZE as u64).is_err(), "grown");
        assert!(file.set_len(0).is_err(), "shrunk");
        use std::os::unix::fs::FileExt;
        assert!(file.write_at(&[0xff; 8], 0).is_err(), "written");
        let view = LimitsView::map(file).unwrap();
        assert_eq!(view.read().unwrap().1, limits());
    }

    #[test]
    fn garbage_reads_as_an_error_never_a_crash() {
        let words = zeroed();
        assert!(matches!(words.read(), Err(PageError::Layout { .. })), "all zero");
        words.write(&limits());
        words.slots[0][0].store(u64::MAX, Ordering::Relaxed);
        words.slots[0][2].store(1, Ordering::Relaxed);
        assert!(matches!(words.read(), Err(PageError::Range(_))));
        words.slots[0][0].store(0, Ordering::Relaxed);
        words.generation.store(3, Ordering::Relaxed);
        assert_eq!(words.read(), Err(PageError::Torn), "a writer that never finishes");
    }

    #[test]
    fn readers_never_see_a_torn_write() {
        let page = Arc::new(LimitsPage::create(&DeviceLimits::default()).unwrap());
        let view = page.view().unwrap();
        let writer = {
            let page = page.clone();
            std::thread::spawn(move || {
                for i in 1..20_000u64 {
                    let b = BucketSpec { size: i, one_time_burst: i, refill_time_ms: i % 1000 + 1 };
                    page.write(&DeviceLimits(
                        [LimiterSpec { bandwidth: Some(b), ops: Some(b) }; 2],
                    ));
                }
            })
        };
        while !writer.is_finished() {
            if let Ok((_, l)) = view.read() {
                let words: Vec<u64> =
                    l.0.iter()
                        .flat_map(|s| [s.bandwidth, s.ops])
                        .map(|b| b.map_or(0, |b| b.size))
                        .collect();
                assert!(words.iter().all(|&w| w == words[0]), "torn: {words:?}");
            }
        }
        writer.join().unwrap();
    }
}
