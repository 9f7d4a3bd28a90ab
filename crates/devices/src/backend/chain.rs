//! Descriptor chains, walked defensively.
//!
//! The guest writes the descriptor table, so every field of it is hostile input. [`walk`] follows
//! a chain from its head and returns its buffers as [`Segment`]s, checking on the way:
//!
//! * the head and every `next` index are inside the table;
//! * the chain holds at most [`MAX_SEGMENTS`] descriptors and visits no more descriptors than the
//!   table has (so a loop ends it);
//! * an indirect descriptor appears only when `VIRTIO_RING_F_INDIRECT_DESC` was negotiated, not
//!   inside an indirect table, with a length that is a non-zero multiple of 16;
//! * every buffer lies wholly inside guest memory;
//! * device-readable buffers all come before device-writable ones.
//!
//! A chain that breaks a rule comes back as a [`Chain`] with an [`error`](Chain::error) and the
//! segments read before the fault (for a buffer outside memory: all the others), so a device can
//! still find the status byte to report an error in. Zero-length descriptors are legal and are dropped from the segment list.
//!
//! [`ReadCursor`] and [`WriteCursor`] copy bytes across the segments of one direction.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Most descriptors one chain may have, counting those in an indirect table.
pub const MAX_SEGMENTS: usize = 1024;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const DESC_SIZE: u64 = 16;

/// One guest buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never zero).
    pub len: u32,
    /// The device may write it (else it may only read it).
    pub writable: bool,
}

/// What is wrong with a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The head or a `next` index is outside the descriptor table.
    #[error("the chain names descriptor {0}, which is outside the table")]
    IndexOutOfRange(u16),
    /// The chain visits more descriptors than the table holds or than a chain may have.
    #[error("the chain is longer than its table or loops")]
    TooLong,
    /// A descriptor could not be read from guest memory.
    #[error("the descriptor table is outside guest memory")]
    TableOutOfMemory,
    /// A buffer lies partly or wholly outside guest memory.
    #[error("a buffer lies outside guest memory")]
    BufferOutOfMemory,
    /// An indirect descriptor where none is allowed, or with a bad length.
    #[error("an indirect descriptor is not allowed here or has a bad length")]
    BadIndirect,
    /// A device-readable buffer follows a device-writable one.
    #[error("a device-readable buffer follows a device-writable one")]
    WrongDirection,
}

/// A walked descriptor chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The head index, to return the chain to the used ring with.
    pub head: u16,
    /// The buffers, readable ones first.
    pub segments: Vec<Segment>,
    /// Why the walk stopped early, if it did.
    pub error: Option<ChainError>,
}

impl Chain {
    /// Total bytes of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.segments.iter().filter(|s| !s.writable).map(|s| u64::from(s.len)).sum()
    }

    /// Total bytes of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.segments.iter().filter(|s| s.writable).map(|s| u64::from(s.len)).sum()
    }

    /// A cursor over the device-readable buffers.
    pub fn reader(&self) -> ReadCursor<'_> {
        ReadCursor { segments: self.segments.iter().filter(|s| !s.writable).collect(), pos: 0 }
    }

    /// A cursor over the device-writable buffers.
    pub fn writer(&self) -> WriteCursor<'_> {
        WriteCursor { segments: self.segments.iter().filter(|s| s.writable).collect(), pos: 0 }
    }
}

/// Where a chain's descriptors are: the queue's table, and whether indirect ones are allowed.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    /// Guest-physical address of the descriptor table.
    pub addr: GuestAddress,
    /// Entries in the table (the queue size).
    pub size: u16,
    /// `VIRTIO_RING_F_INDIRECT_DESC` was negotiated.
    pub indirect: bool,
}

/// Walks the chain starting at `head`. See the module documentation for the checks.
pub fn walk<M: GuestMemory>(mem: &M, table: Table, head: u16) -> Chain {
    let mut chain = Chain { head, segments: Vec::new(), error: None };
    if let Err(e) = walk_into(mem, table, head, &mut chain.segments) {
        chain.error = Some(e);
    }
    chain
}

fn walk_into<M: GuestMemory>(
    mem: &M,
    table: Table,
    head: u16,
    out: &mut Vec<Segment>,
) -> Result<(), ChainError> {
    let (mut base, mut size, mut index) = (table.addr, table.size, head);
    let mut in_indirect = false;
    let mut visited = 0usize;
    // A buffer outside memory does not stop the walk, so the status byte after it is found.
    let mut deferred = Ok(());
    loop {
        if index >= size {
            return Err(ChainError::IndexOutOfRange(index));
        }
        visited += 1;
        if visited > usize::from(size) || out.len() >= MAX_SEGMENTS {
            return Err(ChainError::TooLong);
        }
        let (addr, len, flags, next) = read_desc(mem, base, index)?;
        if flags & DESC_F_INDIRECT != 0 {
            let entries = indirect_entries(table, in_indirect, flags, len)?;
            base = GuestAddress(addr);
            size = entries;
            index = 0;
            in_indirect = true;
            visited = 0;
            continue;
        }
        match push_segment(mem, out, addr, len, flags & DESC_F_WRITE != 0) {
            Err(ChainError::BufferOutOfMemory) => deferred = Err(ChainError::BufferOutOfMemory),
            other => other?,
        }
        if flags & DESC_F_NEXT == 0 {
            return deferred;
        }
        index = next;
    }
}

/// Checks an indirect descriptor and returns the number of entries of its table.
fn indirect_entries(table: Table, nested: bool, flags: u16, len: u32) -> Result<u16, ChainError> {
    let whole = len.is_multiple_of(DESC_SIZE as u32) && len != 0;
    let entries = len / DESC_SIZE as u32;
    if !table.indirect || nested || flags & DESC_F_NEXT != 0 || !whole {
        return Err(ChainError::BadIndirect);
    }
    u16::try_from(entries).map_err(|_| ChainError::BadIndirect)
}

fn read_desc<M: GuestMemory>(
    mem: &M,
    base: GuestAddress,
    index: u16,
) -> Result<(u64, u32, u16, u16), ChainError> {
    let at = base.checked_add(u64::from(index) * DESC_SIZE).ok_or(ChainError::TableOutOfMemory)?;
    let mut raw = [0u8; DESC_SIZE as usize];
    mem.read_slice(&mut raw, at).map_err(|_| ChainError::TableOutOfMemory)?;
    let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
    let flags = u16::from_le_bytes([raw[12], raw[13]]);
    let next = u16::from_le_bytes([raw[14], raw[15]]);
    Ok((addr, len, flags, next))
}

fn push_segment<M: GuestMemory>(
    mem: &M,
    out: &mut Vec<Segment>,
    addr: u64,
    len: u32,
    writable: bool,
) -> Result<(), ChainError> {
    if len == 0 {
        return Ok(());
    }
    let addr = GuestAddress(addr);
    if !in_memory(mem, addr, len, writable) {
        return Err(ChainError::BufferOutOfMemory);
    }
    if !writable && out.last().is_some_and(|s| s.writable) {
        return Err(ChainError::WrongDirection);
    }
    out.push(Segment { addr, len, writable });
    Ok(())
}

/// Whether `len` bytes at `addr` are all guest memory (possibly across adjacent regions).
fn in_memory<M: GuestMemory>(mem: &M, addr: GuestAddress, len: u32, writable: bool) -> bool {
    let perm = if writable { Permissions::Write } else { Permissions::Read };
    mem.check_range(addr, len as usize, perm)
}

/// Reads the device-readable bytes of a chain in order.
pub struct ReadCursor<'a> {
    segments: Vec<&'a Segment>,
    pos: u64,
}

impl ReadCursor<'_> {
    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| u64::from(s.len)).sum();
        total - self.pos
    }

    /// Fills `buf` from the chain; false (and nothing consumed) when fewer bytes remain or memory
    /// could not be read.
    pub fn read_exact<M: GuestMemory>(&mut self, mem: &M, buf: &mut [u8]) -> bool {
        if (buf.len() as u64) > self.remaining() {
            return false;
        }
        let ok = copy_at(&self.segments, self.pos, buf.len(), |addr, range| {
            mem.read_slice(&mut buf[range], addr).is_ok()
        });
        if ok {
            self.pos += buf.len() as u64;
        }
        ok
    }

    /// Skips `n` bytes; false when fewer remain.
    pub fn skip(&mut self, n: u64) -> bool {
        if n > self.remaining() {
            return false;
        }
        self.pos += n;
        true
    }
}

/// Writes the device-writable bytes of a chain in order.
pub struct WriteCursor<'a> {
    segments: Vec<&'a Segment>,
    pos: u64,
}

impl WriteCursor<'_> {
    /// Bytes that can still be written.
    pub fn remaining(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| u64::from(s.len)).sum();
        total - self.pos
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.pos
    }

    /// Writes all of `buf`; false (and nothing counted) when it does not fit or memory could not
    /// be written.
    pub fn write_all<M: GuestMemory>(&mut self, mem: &M, buf: &[u8]) -> bool {
        if (buf.len() as u64) > self.remaining() {
            return false;
        }
        let ok = copy_at(&self.segments, self.pos, buf.len(), |addr, range| {
            mem.write_slice(&buf[range], addr).is_ok()
        });
        if ok {
            self.pos += buf.len() as u64;
        }
        ok
    }

    /// Writes `buf` at the last `buf.len()` bytes of the writable buffers (a status byte), without
    /// moving the cursor. False when the chain has fewer writable bytes.
    pub fn write_tail<M: GuestMemory>(&self, mem: &M, buf: &[u8]) -> bool {
        let total: u64 = self.segments.iter().map(|s| u64::from(s.len)).sum();
        let Some(at) = total.checked_sub(buf.len() as u64) else { return false };
        copy_at(&self.segments, at, buf.len(), |addr, range| {
            mem.write_slice(&buf[range], addr).is_ok()
        })
    }
}

/// Calls `op(guest address, range of the caller's buffer)` for each piece of `len` bytes that
/// starts `pos` bytes into the segments.
fn copy_at(
    segments: &[&Segment],
    mut pos: u64,
    len: usize,
    mut op: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> bool {
    let mut done = 0usize;
    for seg in segments {
        if done == len {
            break;
        }
        let seg_len = u64::from(seg.len);
        if pos >= seg_len {
            pos -= seg_len;
            continue;
        }
        let n = ((seg_len - pos) as usize).min(len - done);
        let Some(addr) = seg.addr.checked_add(pos) else { return false };
        if !op(addr, done..done + n) {
            return false;
        }
        done += n;
        pos = 0;
    }
    done == len
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MIB: usize = 1 << 20;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB)]).unwrap()
    }

    fn desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(table + u64::from(i) * 16);
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    const T: Table = Table { addr: GuestAddress(0), size: 8, indirect: true };

    #[test]
    fn walks_a_simple_chain() {
        let mem = memory();
        desc(&mem, 0, 0, 0x1000, 16, DESC_F_NEXT, 1);
        desc(&mem, 0, 1, 0x2000, 0, DESC_F_NEXT, 2); // zero-length: dropped
        desc(&mem, 0, 2, 0x3000, 512, DESC_F_WRITE | DESC_F_NEXT, 3);
        desc(&mem, 0, 3, 0x4000, 1, DESC_F_WRITE, 0);
        let c = walk(&mem, T, 0);
        assert_eq!(c.error, None);
        assert_eq!(c.segments.len(), 3);
        assert_eq!((c.readable_len(), c.writable_len()), (16, 513));
    }

    #[test]
    fn a_loop_ends_the_walk() {
        let mem = memory();
        desc(&mem, 0, 0, 0x1000, 16, DESC_F_NEXT, 1);
        desc(&mem, 0, 1, 0x2000, 16, DESC_F_NEXT, 0);
        assert_eq!(walk(&mem, T, 0).error, Some(ChainError::TooLong));
        desc(&mem, 0, 0, 0x1000, 16, DESC_F_NEXT, 0); // self-loop
        assert_eq!(walk(&mem, T, 0).error, Some(ChainError::TooLong));
    }

    #[test]
    fn out_of_range_indices_and_buffers() {
        let mem = memory();
        assert_eq!(walk(&mem, T, 8).error, Some(ChainError::IndexOutOfRange(8)));
        desc(&mem, 0, 0, 0x1000, 16, DESC_F_NEXT, 200);
        assert_eq!(walk(&mem, T, 0).error, Some(ChainError::IndexOutOfRange(200)));
        desc(&mem, 0, 0, MIB as u64 - 8, 16, 0, 0);
        assert_eq!(walk(&mem, T, 0).error, Some(ChainError::BufferOutOfMemory));
        desc(&mem, 0, 0, u64::MAX - 4, 16, 0, 0);
        assert_eq!(walk(&mem, T, 0).error, Some(ChainError::BufferOutOfMemory));
        let far = Table { addr: GuestAddress(4 * MIB as u64), ..T };
        assert_eq!(walk(&mem, far, 0).error, Some(ChainError::TableOutOfMemory));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let mem = memory();
        desc(&mem, 0, 0, 0x1000, 16, DESC_F_WRITE | DESC_F_NEXT, 1);
        desc(&mem, 0, 1, 0x2000, 16, 0, 0);
        let c = walk(&mem, T, 0);
        assert_eq!(c.error, Some(ChainError::WrongDirection));
        assert_eq!(c.segments.len(), 1, "the segments before the fault are kept");
    }

    #[test]
    fn indirect_tables() {
        let mem = memory();
        desc(&mem, 0, 0, 0x8000, 32, DESC_F_INDIRECT, 0);
        desc(&mem, 0x8000, 0, 0x1000, 16, DESC_F_NEXT, 1);
        desc(&mem, 0x8000, 1, 0x2000, 1, DESC_F_WRITE, 0);
        let c = walk(&mem, T, 0);
        assert_eq!((c.error, c.segments.len()), (None, 2));
        let no_indirect = Table { indirect: false, ..T };
        assert_eq!(walk(&mem, no_indirect, 0).error, Some(ChainError::BadIndirect));
        // Nested indirect, bad length.
        desc(&mem, 0x8000, 1, 0x9000, 16, DESC_F_INDIRECT, 0);
        assert_eq!(walk(&mem, T, 0).error, Some(ChainError::BadIndirect));
        desc(&mem, 0, 0, 0x8000, 17, DESC_F_INDIRECT, 0);
        assert_eq!(walk(&mem, T, 0).error, Some(ChainError::BadIndirect));
        // An indirect table that loops is bounded by its own size.
        desc(&mem, 0, 0, 0x8000, 32, DESC_F_INDIRECT, 0);
        desc(&mem, 0x8000, 1, 0x2000, 1, DESC_F_NEXT, 0);
        assert_eq!(walk(&mem, T, 0).error, Some(ChainError::TooLong));
    }

    #[test]
    fn cursors_cross_segments() {
        let mem = memory();
        mem.write_slice(b"abc", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"defg", GuestAddress(0x2000)).unwrap();
        let chain = Chain {
            head: 0,
            segments: vec![
                Segment { addr: GuestAddress(0x1000), len: 3, writable: false },
                Segment { addr: GuestAddress(0x2000), len: 4, writable: false },
                Segment { addr: GuestAddress(0x3000), len: 2, writable: true },
                Segment { addr: GuestAddress(0x4000), len: 2, writable: true },
            ],
            error: None,
        };
        let mut r = chain.reader();
        let mut buf = [0u8; 5];
        assert!(r.read_exact(&mem, &mut buf));
        assert_eq!(&buf, b"abcde");
        assert!(!r.read_exact(&mem, &mut buf), "only 2 bytes are left");
        assert_eq!(r.remaining(), 2);
        let mut w = chain.writer();
        assert!(w.write_all(&mem, b"xyz"));
        assert!(w.write_tail(&mem, b"!"));
        assert!(!w.write_all(&mem, b"12"));
        assert_eq!(mem.read_obj::<[u8; 2]>(GuestAddress(0x3000)).unwrap(), *b"xy");
        assert_eq!(mem.read_obj::<[u8; 2]>(GuestAddress(0x4000)).unwrap(), *b"z!");
    }
}
