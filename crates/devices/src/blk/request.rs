//! One virtio-blk request: parse the chain, check it, carry it out on the image.
//!
//! A request is a 16-byte header (`type`, reserved, `sector`) in device-readable buffers, then
//! the data (device-readable for writes, device-writable for reads), then one device-writable
//! status byte. Every check failure is answered with a status, never a crash:
//!
//! * a chain the walk refused, or one without a header or a status byte: `IOERR` in the status
//!   byte if the chain has one, else the chain is returned untouched;
//! * data not a whole number of sectors, more than [`MAX_REQUEST_BYTES`], or past the end of the
//!   disk: `IOERR`;
//! * writes, discards or zeroing on a read-only disk: `IOERR`;
//! * an unknown type, or a flag the device does not support: `UNSUPP`;
//! * an error from the image: `IOERR`.

use bulkhead_disk::DiskImage;
use vm_memory::GuestMemoryMmap;

use super::config::{MAX_RANGES, MAX_RANGE_SECTORS, MAX_REQUEST_BYTES, SECTOR};
use crate::backend::chain::Chain;

/// Request types.
pub mod types {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Get the device ID string.
    pub const GET_ID: u32 = 8;
    /// Discard ranges.
    pub const DISCARD: u32 = 11;
    /// Zero ranges.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status values.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// I/O error (also: a malformed request).
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

/// Length of a device ID.
pub const ID_BYTES: usize = 20;
const HEADER: u64 = 16;
const RANGE: u64 = 16;

/// What a request needs besides the chain.
pub struct Target<'a> {
    /// The image.
    pub disk: &'a dyn DiskImage,
    /// The ID `GET_ID` returns.
    pub id: &'a [u8; ID_BYTES],
    /// Served read-only.
    pub read_only: bool,
    /// Reusable data buffer (at most [`MAX_REQUEST_BYTES`]).
    pub buf: &'a mut Vec<u8>,
}

/// The data bytes a request moves, as a rate limiter counts them: a read's or a write's
/// length; 0 for any other request (a flush, GET_ID, a discard) or a malformed one.
pub fn data_bytes(mem: &GuestMemoryMmap, chain: &Chain) -> u64 {
    let mut header = [0u8; 4];
    if chain.error.is_some() || !chain.reader().read_exact(mem, &mut header) {
        return 0;
    }
    match u32::from_le_bytes(header) {
        types::IN => chain.writable_len().saturating_sub(1),
        types::OUT => chain.readable_len().saturating_sub(HEADER),
        _ => 0,
    }
}

/// Carries out the request in `chain`; returns the bytes written into it (data and status).
pub fn execute(mem: &GuestMemoryMmap, chain: &Chain, t: &mut Target<'_>) -> u32 {
    let writer = chain.writer();
    if chain.error.is_some() || chain.readable_len() < HEADER || writer.remaining() < 1 {
        log::debug!("malformed request at descriptor {}: {:?}", chain.head, chain.error);
        return if writer.write_tail(mem, &[status::IOERR]) { 1 } else { 0 };
    }
    let mut reader = chain.reader();
    let mut header = [0u8; HEADER as usize];
    if !reader.read_exact(mem, &mut header) {
        return if writer.write_tail(mem, &[status::IOERR]) { 1 } else { 0 };
    }
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let mut req = Request { mem, chain, reader, data_written: 0 };
    let st = match kind {
        types::IN => req.read(t, sector),
        types::OUT => req.write(t, sector),
        types::FLUSH => flush(t),
        types::GET_ID => req.get_id(t),
        types::DISCARD | types::WRITE_ZEROES => req.ranges(t, kind),
        _ => status::UNSUPP,
    };
    let written = req.data_written;
    if !chain.writer().write_tail(mem, &[st]) {
        return 0;
    }
    (written + 1) as u32
}

fn flush(t: &Target<'_>) -> u8 {
    match t.disk.flush() {
        Ok(()) => status::OK,
        Err(e) => {
            log::warn!("flush failed: {e}");
            status::IOERR
        }
    }
}

struct Request<'a> {
    mem: &'a GuestMemoryMmap,
    chain: &'a Chain,
    reader: crate::backend::chain::ReadCursor<'a>,
    data_written: u64,
}

impl Request<'_> {
    /// Checks a data transfer of `len` bytes at `sector`; the byte offset if it is valid.
    fn check_io(t: &Target<'_>, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR)?;
        let end = offset.checked_add(len)?;
        let capacity = t.disk.virtual_size() / SECTOR * SECTOR;
        (len.is_multiple_of(SECTOR) && len <= MAX_REQUEST_BYTES && end <= capacity)
            .then_some(offset)
    }

    fn read(&mut self, t: &mut Target<'_>, sector: u64) -> u8 {
        let len = self.chain.writable_len() - 1;
        let Some(offset) = Self::check_io(t, sector, len) else { return status::IOERR };
        if self.reader.remaining() != 0 {
            return status::IOERR; // data after the header of a read: malformed
        }
        t.buf.resize(len as usize, 0);
        if let Err(e) = t.disk.read_at(t.buf, offset) {
            log::warn!("read of {len} bytes at {offset} failed: {e}");
            return status::IOERR;
        }
        let mut writer = self.chain.writer();
        if !writer.write_all(self.mem, t.buf) {
            return status::IOERR;
        }
        self.data_written = len;
        status::OK
    }

    fn write(&mut self, t: &mut Target<'_>, sector: u64) -> u8 {
        let len = self.reader.remaining();
        if t.read_only || self.chain.writable_len() != 1 {
            return status::IOERR;
        }
        let Some(offset) = Self::check_io(t, sector, len) else { return status::IOERR };
        t.buf.resize(len as usize, 0);
        if !self.reader.read_exact(self.mem, t.buf) {
            return status::IOERR;
        }
        match t.disk.write_at(t.buf, offset) {
            Ok(()) => status::OK,
            Err(e) => {
                log::warn!("write of {len} bytes at {offset} failed: {e}");
                status::IOERR
            }
        }
    }

    fn get_id(&mut self, t: &Target<'_>) -> u8 {
        let room = (self.chain.writable_len() - 1).min(ID_BYTES as u64) as usize;
        let mut writer = self.chain.writer();
        if !writer.write_all(self.mem, &t.id[..room]) {
            return status::IOERR;
        }
        self.data_written = room as u64;
        status::OK
    }

    /// DISCARD and WRITE_ZEROES: a list of (sector, sectors, flags) ranges.
    fn ranges(&mut self, t: &Target<'_>, kind: u32) -> u8 {
        let len = self.reader.remaining();
        if t.read_only
            || len == 0
            || !len.is_multiple_of(RANGE)
            || len / RANGE > u64::from(MAX_RANGES)
        {
            return status::IOERR;
        }
        let mut ranges = Vec::with_capacity((len / RANGE) as usize);
        for _ in 0..len / RANGE {
            let mut raw = [0u8; RANGE as usize];
            if !self.reader.read_exact(self.mem, &mut raw) {
                return status::IOERR;
            }
            let sector = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
            let sectors = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(raw[12..16].try_into().unwrap_or_default());
            // Bit 0 is "unmap": allowed for zeroing, not for discard. Other bits are reserved.
            let allowed = if kind == types::WRITE_ZEROES { 1 } else { 0 };
            if flags & !allowed != 0 {
                return status::UNSUPP;
            }
            let bytes = u64::from(sectors) * SECTOR;
            let Some(offset) = Self::check_range(t, sector, sectors) else { return status::IOERR };
            ranges.push((offset, bytes));
        }
        for (offset, bytes) in ranges {
            let result = match kind {
                types::DISCARD => t.disk.discard(offset, bytes),
                _ => t.disk.write_zeroes(offset, bytes),
            };
            if let Err(e) = result {
                log::warn!("discard/zeroing of {bytes} bytes at {offset} failed: {e}");
                return status::IOERR;
            }
        }
        status::OK
    }

    fn check_range(t: &Target<'_>, sector: u64, sectors: u32) -> Option<u64> {
        if sectors > MAX_RANGE_SECTORS {
            return None;
        }
        let offset = sector.checked_mul(SECTOR)?;
        let end = offset.checked_add(u64::from(sectors) * SECTOR)?;
        (end <= t.disk.virtual_size() / SECTOR * SECTOR).then_some(offset)
    }
}
