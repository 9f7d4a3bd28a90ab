//! The 512-byte header of a VMDK sparse extent (hosted sparse extent, "KDMV").
//!
//! Little-endian fields: magic, version, flags, capacity, grainSize, descriptorOffset,
//! descriptorSize, numGTEsPerGT, rgdOffset, gdOffset, overHead, uncleanShutdown, four newline
//! detection characters, compressAlgorithm. Sizes and offsets are in 512-byte sectors. A
//! streamOptimized extent stores `gdOffset = GD_AT_END` here and the real header in a footer
//! 1024 bytes before the end of the file.

use super::descriptor::FORMAT;
use crate::error::{DiskError, Result};
use std::path::Path;

pub(crate) const SECTOR: u64 = 512;
pub(crate) const GD_AT_END: u64 = u64::MAX;
pub(crate) const FLAG_NL_DETECT: u32 = 1 << 0;
pub(crate) const FLAG_RGD: u32 = 1 << 1;
pub(crate) const FLAG_ZERO_GRAIN: u32 = 1 << 2;
pub(crate) const FLAG_COMPRESSED: u32 = 1 << 16;
pub(crate) const FLAG_MARKERS: u32 = 1 << 17;
/// Largest grain accepted, in sectors (1 MiB).
const MAX_GRAIN_SECTORS: u64 = 2048;
/// Most entries a grain table may have.
const MAX_GTES: u32 = 4096;
/// Largest grain directory accepted, in bytes.
pub(crate) const MAX_GD_BYTES: u64 = 16 << 20;
/// Largest sector offset of metadata (2^44 sectors: 8 PiB, far beyond any extent file).
const MAX_SECTOR_OFFSET: u64 = 1 << 44;
/// Largest embedded descriptor accepted, in sectors.
const MAX_DESC_SECTORS: u64 = 2048;

/// A parsed sparse extent header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    pub capacity: u64,
    pub grain: u64,
    pub desc_offset: u64,
    pub desc_size: u64,
    pub gtes: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub overhead: u64,
    pub compress_algorithm: u16,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

impl SparseHeader {
    /// Parses and checks a header (without looking at the file it came from).
    pub fn parse(b: &[u8], path: &Path) -> Result<SparseHeader> {
        let bad = |reason: String| DiskError::malformed(path, FORMAT, reason);
        if b.len() < SECTOR as usize {
            return Err(bad(format!(
                "the sparse extent header is truncated: the file has only {} bytes",
                b.len()
            )));
        }
        if &b[0..4] != crate::probe::VMDK_MAGIC {
            return Err(bad("the sparse extent header does not start with the VMDK magic".into()));
        }
        let h = SparseHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain: le64(b, 20),
            desc_offset: le64(b, 28),
            desc_size: le64(b, 36),
            gtes: le32(b, 44),
            rgd_offset: le64(b, 48),
            gd_offset: le64(b, 56),
            overhead: le64(b, 64),
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        };
        if !(1..=3).contains(&h.version) {
            return Err(DiskError::unsupported(
                path,
                FORMAT,
                format!("sparse extent version {}", h.version),
            ));
        }
        if !h.grain.is_power_of_two() || h.grain > MAX_GRAIN_SECTORS {
            return Err(bad(format!(
                "its grain size of {} sectors is not a power of two up to {MAX_GRAIN_SECTORS}",
                h.grain
            )));
        }
        if h.gtes == 0 || h.gtes > MAX_GTES {
            return Err(bad(format!(
                "its grain tables have {} entries; the limit is {MAX_GTES}",
                h.gtes
            )));
        }
        if h.flags & FLAG_COMPRESSED != 0 && h.compress_algorithm != 1 {
            return Err(DiskError::unsupported(
                path,
                FORMAT,
                format!("compression algorithm {}", h.compress_algorithm),
            ));
        }
        if h.desc_size > MAX_DESC_SECTORS {
            return Err(bad(format!(
                "its embedded descriptor of {} sectors is larger than 1 MiB",
                h.desc_size
            )));
        }
        for (what, sector) in [
            ("descriptor", h.desc_offset),
            ("grain directory", h.gd_offset),
            ("redundant grain directory", h.rgd_offset),
        ] {
            let stream_gd = what == "grain directory" && sector == GD_AT_END;
            if !stream_gd && sector > MAX_SECTOR_OFFSET {
                return Err(bad(format!(
                    "its {what} offset of {sector} sectors is beyond any file"
                )));
            }
        }
        let gd_bytes = h.gd_entries().and_then(|n| n.checked_mul(4));
        if gd_bytes.is_none_or(|n| n > MAX_GD_BYTES) {
            return Err(bad(format!(
                "a capacity of {} sectors needs a grain directory larger than 16 MiB",
                h.capacity
            )));
        }
        Ok(h)
    }

    /// Number of grain directory entries.
    pub fn gd_entries(&self) -> Option<u64> {
        let per_gt = self.grain.checked_mul(u64::from(self.gtes))?;
        Some(self.capacity.div_ceil(per_gt))
    }

    /// Sectors one grain table takes.
    pub fn gt_sectors(&self) -> u64 {
        (u64::from(self.gtes) * 4).div_ceil(SECTOR)
    }

    /// Sectors the grain directory takes.
    pub fn gd_sectors(&self) -> u64 {
        (self.gd_entries().unwrap_or(0) * 4).div_ceil(SECTOR)
    }

    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(crate::probe::VMDK_MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain.to_le_bytes());
        b[28..36].copy_from_slice(&self.desc_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.desc_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.gtes.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[73..77].copy_from_slice(b"\n \r\n");
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> SparseHeader {
        SparseHeader {
            version: 1,
            flags: FLAG_NL_DETECT | FLAG_RGD,
            capacity: 2048,
            grain: 128,
            desc_offset: 1,
            desc_size: 20,
            gtes: 512,
            rgd_offset: 21,
            gd_offset: 30,
            overhead: 128,
            compress_algorithm: 0,
        }
    }

    #[test]
    fn round_trip_and_limits() {
        let p = Path::new("x.vmdk");
        let h = good();
        assert_eq!(SparseHeader::parse(&h.to_bytes(), p).unwrap(), h);
        type Case = (fn(&mut SparseHeader), &'static str);
        let cases: Vec<Case> = vec![
            (|h| h.grain = 3, "grain size"),
            (|h| h.grain = 1 << 20, "grain size"),
            (|h| h.gtes = 0, "grain tables"),
            (|h| h.gtes = 1 << 20, "grain tables"),
            (|h| h.capacity = u64::MAX, "grain directory"),
            (|h| h.desc_size = 1 << 40, "descriptor"),
            (|h| h.version = 9, "version"),
            (|h| h.desc_offset = 0xa2ff_ffff_ffff_ffff, "beyond any file"),
            (|h| h.gd_offset = 1 << 60, "beyond any file"),
            (|h| h.desc_offset = u64::MAX, "beyond any file"),
            (|h| h.rgd_offset = u64::MAX, "beyond any file"),
        ];
        for (mutate, word) in cases {
            let mut h = good();
            mutate(&mut h);
            let err = SparseHeader::parse(&h.to_bytes(), p).unwrap_err().to_string();
            assert!(err.contains(word), "{err}");
        }
        assert!(SparseHeader::parse(&[0u8; 100], p).unwrap_err().to_string().contains("truncated"));
    }
}
