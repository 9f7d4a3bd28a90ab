//! The driver's side of a split virtqueue (virtio 1.2, section 2.7).
//!
//! Three areas of guest memory make a queue of `size` entries (a power of
//! two up to [`MAX_QUEUE`]):
//!
//! - the **descriptor table**, `size` × 16 bytes: `addr: u64, len: u32,
//!   flags: u16, next: u16`; a buffer the device may write has
//!   `VIRTQ_DESC_F_WRITE`, and `VIRTQ_DESC_F_NEXT` chains a descriptor to
//!   `next`;
//! - the **available ring** (driver → device): `flags: u16, idx: u16,
//!   ring: [u16; size], used_event: u16`; the driver writes the head of each
//!   chain into `ring[idx % size]`, then increments `idx`;
//!   `VIRTQ_AVAIL_F_NO_INTERRUPT` in `flags` asks the device not to interrupt;
//! - the **used ring** (device → driver): `flags: u16, idx: u16, ring:
//!   [{id: u32, len: u32}; size], avail_event: u16`; the device writes each
//!   finished chain's head and the bytes it wrote, then increments `idx`;
//!   `VIRTQ_USED_F_NO_NOTIFY` in `flags` says the device needs no notification.
//!
//! The free list and each chain's links are kept in private arrays, never
//! read back from the descriptor table, and every value the device returns
//! is checked: a used `id` must be the head of a chain in flight, `len` is
//! capped at the chain's writable bytes, and the used `idx` may not run more
//! than `size` ahead. A device that breaks these rules gets a [`RingError`],
//! never an out-of-bounds access.
//!
//! Memory ordering: descriptors and the ring entry are written before the
//! available `idx` (a release fence), the used entry is read after the used
//! `idx` (an acquire fence), and the check of `VIRTQ_USED_F_NO_NOTIFY` after
//! publishing is ordered by a full fence, as the specification requires.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// The largest queue the driver sets up.
pub const MAX_QUEUE: usize = 256;
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
pub const USED_F_NO_NOTIFY: u16 = 1;

/// Where a queue's three areas are (guest-physical = identity-mapped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Layout {
    /// Bytes one contiguous allocation (aligned to 4096) needs for a queue
    /// of `size` entries laid out by [`Layout::at`].
    pub const fn bytes(size: u16) -> u64 {
        Self::used_offset(size) + 6 + 8 * size as u64
    }

    const fn used_offset(size: u16) -> u64 {
        let avail_end = 16 * size as u64 + 6 + 2 * size as u64;
        (avail_end + 63) & !63 // its own cache line
    }

    /// The areas of a queue placed at `base`.
    pub const fn at(base: u64, size: u16) -> Layout {
        Layout { desc: base, avail: base + 16 * size as u64, used: base + Self::used_offset(size) }
    }
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    /// Whether the device writes it (else it reads it).
    pub writable: bool,
}

/// A finished chain: its head descriptor and the bytes the device wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub id: u16,
    pub len: u32,
}

/// The device broke the ring's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The used index ran more than a queue's worth ahead.
    UsedIndex { last: u16, device: u16 },
    /// A used element named a descriptor that is not a chain in flight.
    UsedId(u32),
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RingError::UsedIndex { last, device } => {
                write!(f, "the device moved the used index from {last} to {device}")
            }
            RingError::UsedId(id) => {
                write!(f, "the device returned descriptor {id}, not in flight")
            }
        }
    }
}

/// The driver's state for one split virtqueue.
pub struct SplitRing {
    size: u16,
    layout: Layout,
    /// Private links: the free list, and each chain in flight.
    next: [u16; MAX_QUEUE],
    free_head: u16,
    num_free: u16,
    /// Per chain head: descriptors in the chain, writable bytes, in flight.
    chain_len: [u16; MAX_QUEUE],
    writable: [u32; MAX_QUEUE],
    in_flight: [bool; MAX_QUEUE],
    outstanding: u16,
    avail_idx: u16,
    last_used: u16,
}

impl SplitRing {
    /// Takes over a queue's memory, zeroing its rings.
    ///
    /// # Safety
    /// `layout`'s areas, sized for `size` entries as [`Layout::bytes`]
    /// describes, must be valid for reads and writes, aligned (16 for the
    /// descriptors, 4 for the rings), and touched by nothing but this ring
    /// and the device for as long as the ring is used. `size` must be a
    /// power of two no larger than [`MAX_QUEUE`] (checked: otherwise
    /// `None`).
    pub unsafe fn new(layout: Layout, size: u16) -> Option<SplitRing> {
        if !size.is_power_of_two() || usize::from(size) > MAX_QUEUE {
            return None;
        }
        let mut ring = SplitRing {
            size,
            layout,
            next: [0; MAX_QUEUE],
            free_head: 0,
            num_free: size,
            chain_len: [0; MAX_QUEUE],
            writable: [0; MAX_QUEUE],
            in_flight: [false; MAX_QUEUE],
            outstanding: 0,
            avail_idx: 0,
            last_used: 0,
        };
        for i in 0..size {
            ring.next[usize::from(i)] = (i + 1) % size;
        }
        let zero = |at: u64, len: u64| {
            // SAFETY: the caller gave us these areas (see # Safety).
            unsafe { core::ptr::write_bytes(at as *mut u8, 0, len as usize) }
        };
        zero(layout.desc, 16 * u64::from(size));
        zero(layout.avail, 6 + 2 * u64::from(size));
        zero(layout.used, 6 + 8 * u64::from(size));
        Some(ring)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Descriptors free for new chains.
    pub fn free_descriptors(&self) -> u16 {
        self.num_free
    }

    /// Chains handed to the device and not yet returned.
    pub fn outstanding(&self) -> u16 {
        self.outstanding
    }

    fn w16(&self, at: u64, v: u16) {
        // SAFETY: `at` lies inside one of the areas `new` was given (every
        // caller computes it from the layout and an index below `size`).
        unsafe { write_volatile(at as *mut u16, v) }
    }

    fn r16(&self, at: u64) -> u16 {
        // SAFETY: as in `w16`.
        unsafe { read_volatile(at as *const u16) }
    }

    fn r32(&self, at: u64) -> u32 {
        // SAFETY: as in `w16`.
        unsafe { read_volatile(at as *const u32) }
    }

    fn write_desc(&self, i: u16, buf: Buf, flags: u16, next: u16) {
        let at = self.layout.desc + 16 * u64::from(i);
        // SAFETY: descriptor `i < size` lies in the descriptor table.
        unsafe {
            write_volatile(at as *mut u64, buf.addr);
            write_volatile((at + 8) as *mut u32, buf.len);
            write_volatile((at + 12) as *mut u16, flags);
            write_volatile((at + 14) as *mut u16, next);
        }
    }

    /// Asks the device not to interrupt for this queue (polling), or to.
    pub fn set_interrupts(&mut self, enabled: bool) {
        self.w16(self.layout.avail, if enabled { 0 } else { AVAIL_F_NO_INTERRUPT });
    }

    /// Writes a chain of `bufs` and puts its head in the available ring
    /// (not yet visible: see [`SplitRing::publish`]). `None` if `bufs` is
    /// empty or there are not enough free descriptors.
    pub fn push(&mut self, bufs: &[Buf]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > usize::from(self.num_free) {
            return None;
        }
        let head = self.free_head;
        let mut i = head;
        let mut writable = 0u32;
        for (k, buf) in bufs.iter().enumerate() {
            let last = k + 1 == bufs.len();
            let next = self.next[usize::from(i)];
            let flags =
                if last { 0 } else { DESC_F_NEXT } | if buf.writable { DESC_F_WRITE } else { 0 };
            self.write_desc(i, *buf, flags, if last { 0 } else { next });
            if buf.writable {
                writable = writable.saturating_add(buf.len);
            }
            if last {
                self.free_head = next;
            } else {
                i = next;
            }
        }
        self.num_free -= bufs.len() as u16;
        let h = usize::from(head);
        self.chain_len[h] = bufs.len() as u16;
        self.writable[h] = writable;
        self.in_flight[h] = true;
        self.outstanding += 1;
        let slot = u64::from(self.avail_idx & (self.size - 1));
        self.w16(self.layout.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Some(head)
    }

    /// Makes the chains pushed so far visible to the device; returns whether
    /// the device wants a notification.
    pub fn publish(&mut self) -> bool {
        fence(Ordering::Release);
        self.w16(self.layout.avail + 2, self.avail_idx);
        fence(Ordering::SeqCst);
        self.r16(self.layout.used) & USED_F_NO_NOTIFY == 0
    }

    /// Whether the device has returned chains not yet taken by [`SplitRing::pop`].
    pub fn has_used(&self) -> bool {
        self.r16(self.layout.used + 2) != self.last_used
    }

    /// Takes the next chain the device returned, freeing its descriptors.
    pub fn pop(&mut self) -> Option<Result<Used, RingError>> {
        let device = self.r16(self.layout.used + 2);
        if device == self.last_used {
            return None;
        }
        fence(Ordering::Acquire);
        if device.wrapping_sub(self.last_used) > self.size {
            return Some(Err(RingError::UsedIndex { last: self.last_used, device }));
        }
        let slot = u64::from(self.last_used & (self.size - 1));
        let elem = self.layout.used + 4 + 8 * slot;
        let (id, len) = (self.r32(elem), self.r32(elem + 4));
        self.last_used = self.last_used.wrapping_add(1);
        let head = match u16::try_from(id) {
            Ok(h) if h < self.size && self.in_flight[usize::from(h)] => h,
            _ => return Some(Err(RingError::UsedId(id))),
        };
        let h = usize::from(head);
        self.in_flight[h] = false;
        self.outstanding -= 1;
        let mut last = head;
        for _ in 1..self.chain_len[h] {
            last = self.next[usize::from(last)];
        }
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.num_free += self.chain_len[h];
        Some(Ok(Used { id: head, len: len.min(self.writable[h]) }))
    }
}

#[cfg(test)]
pub mod mock {
    //! A device's view of a [`SplitRing`](super::SplitRing), for tests.
    use super::*;

    /// Reads chains from the available ring and returns them in the used ring.
    pub struct MockDevice {
        pub layout: Layout,
        pub size: u16,
        pub last_avail: u16,
        pub used_idx: u16,
    }

    impl MockDevice {
        pub fn new(layout: Layout, size: u16) -> Self {
            MockDevice { layout, size, last_avail: 0, used_idx: 0 }
        }

        fn r16(at: u64) -> u16 {
            // SAFETY: tests point the layout at live host memory.
            unsafe { read_volatile(at as *const u16) }
        }

        /// The next available chain: its head and buffers.
        pub fn take(&mut self) -> Option<(u16, Vec<Buf>)> {
            if Self::r16(self.layout.avail + 2) == self.last_avail {
                return None;
            }
            let slot = u64::from(self.last_avail % self.size);
            let head = Self::r16(self.layout.avail + 4 + 2 * slot);
            self.last_avail = self.last_avail.wrapping_add(1);
            let (mut bufs, mut i) = (Vec::new(), head);
            loop {
                let at = self.layout.desc + 16 * u64::from(i);
                // SAFETY: as in `r16`.
                let (addr, len) = unsafe {
                    (read_volatile(at as *const u64), read_volatile((at + 8) as *const u32))
                };
                let flags = Self::r16(at + 12);
                bufs.push(Buf { addr, len, writable: flags & DESC_F_WRITE != 0 });
                if flags & DESC_F_NEXT == 0 {
                    return Some((head, bufs));
                }
                i = Self::r16(at + 14);
            }
        }

        /// Writes a used element (any values, for hostile tests) and publishes it.
        pub fn complete(&mut self, id: u32, len: u32) {
            let slot = u64::from(self.used_idx % self.size);
            let at = self.layout.used + 4 + 8 * slot;
            // SAFETY: as in `r16`.
            unsafe {
                write_volatile(at as *mut u32, id);
                write_volatile((at + 4) as *mut u32, len);
                self.used_idx = self.used_idx.wrapping_add(1);
                write_volatile((self.layout.used + 2) as *mut u16, self.used_idx);
            }
        }

        pub fn set_used_flags(&mut self, flags: u16) {
            // SAFETY: as in `r16`.
            unsafe { write_volatile(self.layout.used as *mut u16, flags) }
        }

        pub fn avail_flags(&self) -> u16 {
            Self::r16(self.layout.avail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mock::MockDevice;
    use super::*;

    /// Queue memory on the host, aligned for the rings.
    struct Mem(Vec<u64>);

    impl Mem {
        fn new(size: u16) -> Mem {
            Mem(vec![0xa5a5_a5a5_a5a5_a5a5; Layout::bytes(size) as usize / 8 + 8])
        }
        fn ring(&mut self, size: u16) -> (SplitRing, MockDevice) {
            let layout = Layout::at(self.0.as_mut_ptr() as u64, size);
            // SAFETY: the vector outlives the ring in every test and is
            // large enough for the layout; u64 elements give 8-byte alignment.
            let ring = unsafe { SplitRing::new(layout, size) }.unwrap();
            (ring, MockDevice::new(layout, size))
        }
    }

    fn buf(addr: u64, len: u32, writable: bool) -> Buf {
        Buf { addr, len, writable }
    }

    #[test]
    fn layout_is_aligned_and_sized() {
        let l = Layout::at(0x10000, 256);
        assert_eq!(l.avail, 0x10000 + 4096);
        assert_eq!(l.used % 64, 0);
        assert!(l.used >= l.avail + 6 + 512);
        assert_eq!(Layout::bytes(256), l.used - 0x10000 + 6 + 2048);
    }

    #[test]
    fn refuses_bad_sizes() {
        let mut mem = Mem::new(512);
        let layout = Layout::at(mem.0.as_mut_ptr() as u64, 8);
        // SAFETY: the memory is large enough for any of these sizes.
        unsafe {
            assert!(SplitRing::new(layout, 0).is_none());
            assert!(SplitRing::new(layout, 6).is_none());
            assert!(SplitRing::new(layout, 512).is_none());
        }
    }

    #[test]
    fn chains_go_round_and_come_back_out_of_order() {
        let mut mem = Mem::new(8);
        let (mut ring, mut dev) = mem.ring(8);
        let a = ring.push(&[buf(0x1000, 16, false), buf(0x2000, 512, true), buf(0x3000, 1, true)]);
        let b = ring.push(&[buf(0x4000, 100, false)]);
        assert_eq!((a, b), (Some(0), Some(3)));
        assert_eq!(ring.free_descriptors(), 4);
        assert!(dev.take().is_none(), "nothing is visible before publish");
        assert!(ring.publish());
        let (head, bufs) = dev.take().unwrap();
        assert_eq!(head, 0);
        assert_eq!(
            bufs,
            vec![buf(0x1000, 16, false), buf(0x2000, 512, true), buf(0x3000, 1, true)]
        );
        assert_eq!(dev.take().unwrap(), (3, vec![buf(0x4000, 100, false)]));
        assert!(ring.pop().is_none());
        dev.complete(3, 0);
        dev.complete(0, 513);
        assert!(ring.has_used());
        assert_eq!(ring.pop(), Some(Ok(Used { id: 3, len: 0 })));
        assert_eq!(ring.pop(), Some(Ok(Used { id: 0, len: 513 })));
        assert_eq!((ring.free_descriptors(), ring.outstanding()), (8, 0));
        // Many more rounds than the queue has entries: indices wrap cleanly.
        for round in 0..70_000u32 {
            let chain = [buf(u64::from(round), 8, false), buf(0, 8, true)];
            let id = ring.push(&chain).unwrap();
            ring.publish();
            let (head, got) = dev.take().unwrap();
            assert_eq!((head, got), (id, chain.to_vec()));
            dev.complete(head.into(), 99);
            assert_eq!(ring.pop(), Some(Ok(Used { id, len: 8 })), "len is capped");
        }
    }

    #[test]
    fn a_full_ring_refuses_more() {
        let mut mem = Mem::new(4);
        let (mut ring, _dev) = mem.ring(4);
        assert!(ring.push(&[]).is_none());
        assert!(ring.push(&[buf(0, 1, false); 5]).is_none());
        for _ in 0..4 {
            assert!(ring.push(&[buf(0, 1, false)]).is_some());
        }
        assert!(ring.push(&[buf(0, 1, false)]).is_none());
        assert_eq!(ring.outstanding(), 4);
    }

    #[test]
    fn hostile_used_entries_are_errors() {
        let mut mem = Mem::new(8);
        let (mut ring, mut dev) = mem.ring(8);
        let id = ring.push(&[buf(0, 4, true)]).unwrap();
        ring.publish();
        dev.complete(8, 0); // out of range
        assert_eq!(ring.pop(), Some(Err(RingError::UsedId(8))));
        dev.complete(5, 0); // in range, not in flight
        assert_eq!(ring.pop(), Some(Err(RingError::UsedId(5))));
        dev.complete(u32::MAX, 0);
        assert_eq!(ring.pop(), Some(Err(RingError::UsedId(u32::MAX))));
        dev.complete(id.into(), 4);
        assert_eq!(ring.pop(), Some(Ok(Used { id, len: 4 })));
        dev.complete(id.into(), 4); // twice
        assert_eq!(ring.pop(), Some(Err(RingError::UsedId(id.into()))));
        assert_eq!(ring.free_descriptors(), 8);
        // The used index jumps far ahead.
        dev.used_idx = dev.used_idx.wrapping_add(100);
        dev.complete(0, 0);
        assert!(matches!(ring.pop(), Some(Err(RingError::UsedIndex { .. }))));
    }

    #[test]
    fn flags_go_both_ways() {
        let mut mem = Mem::new(4);
        let (mut ring, mut dev) = mem.ring(4);
        ring.set_interrupts(false);
        assert_eq!(dev.avail_flags(), AVAIL_F_NO_INTERRUPT);
        ring.set_interrupts(true);
        assert_eq!(dev.avail_flags(), 0);
        ring.push(&[buf(0, 1, false)]);
        dev.set_used_flags(USED_F_NO_NOTIFY);
        assert!(!ring.publish());
        dev.set_used_flags(0);
        assert!(ring.publish());
    }
}
