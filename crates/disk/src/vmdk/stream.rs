//! Writing streamOptimized VMDK files, front to back, from another disk.
//!
//! Layout: header (grain directory "at end"), embedded descriptor, then each non-zero grain as a
//! marker `{lba, size}` followed by its zlib data (padded to a sector), then each grain table
//! after a table marker, the grain directory after a directory marker, a footer marker, the
//! footer (the header again, with the real directory offset) and an end-of-stream marker. When
//! the disk ends inside its last grain, that grain's data stops at the disk's end, as QEMU
//! writes it.

use super::create::{new_cid, GRAIN_SECTORS, GTES};
use super::descriptor::{render, ExtentLine, ExtentType};
use super::header::{
    SparseHeader, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NL_DETECT, GD_AT_END, SECTOR,
};
use crate::compress::zlib_compress;
use crate::error::{DiskError, Result};
use crate::file::{is_zero, ImageFile};
use crate::{DiskImage, Mapping};
use std::path::Path;

const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;
const DESC_SECTORS: u64 = 20;

struct Writer {
    file: ImageFile,
    h: SparseHeader,
    next: u64,
    gtes: Vec<u32>,
}

impl Writer {
    fn new(path: &Path, sectors: u64) -> Result<Writer> {
        let mut h = SparseHeader {
            version: 3,
            flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: sectors,
            grain: GRAIN_SECTORS,
            desc_offset: 1,
            desc_size: DESC_SECTORS,
            gtes: GTES,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: GRAIN_SECTORS,
            compress_algorithm: 1,
        };
        let entries = h.gd_entries().unwrap_or(0) * u64::from(GTES);
        if entries * 4 > super::header::MAX_GD_BYTES * 16 || sectors > u64::from(u32::MAX) {
            return Err(DiskError::InvalidArgument(format!(
                "a streamOptimized VMDK of {sectors} sectors is too large"
            )));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("disk.vmdk").to_string();
        let line = ExtentLine {
            read_only: false,
            sectors,
            kind: ExtentType::Sparse,
            file: Some(name),
            offset: 0,
        };
        let text = render("streamOptimized", &[line], new_cid());
        let file = ImageFile::create(path)?;
        file.write_all_at(&h.to_bytes(), 0)?;
        file.write_all_at(text.as_bytes(), SECTOR)?;
        h.gd_offset = GD_AT_END;
        Ok(Writer { file, h, next: GRAIN_SECTORS, gtes: vec![0; entries as usize] })
    }

    fn marker(&self, sectors: u64, kind: u32) -> [u8; 512] {
        let mut m = [0u8; 512];
        m[0..8].copy_from_slice(&sectors.to_le_bytes());
        m[12..16].copy_from_slice(&kind.to_le_bytes());
        m
    }

    fn grain(&mut self, gi: u64, data: &[u8]) -> Result<()> {
        let packed = zlib_compress(data);
        let mut rec = Vec::with_capacity(packed.len() + 12 + 512);
        rec.extend_from_slice(&(gi * GRAIN_SECTORS).to_le_bytes());
        rec.extend_from_slice(&(packed.len() as u32).to_le_bytes());
        rec.extend_from_slice(&packed);
        rec.resize(rec.len().div_ceil(512) * 512, 0);
        self.file.write_all_at(&rec, self.next * SECTOR)?;
        self.gtes[gi as usize] = self.next as u32;
        self.next += rec.len() as u64 / SECTOR;
        if self.next > u64::from(u32::MAX) {
            return Err(DiskError::InvalidArgument(
                "the streamOptimized file would pass 2 TiB".into(),
            ));
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all_at(bytes, self.next * SECTOR)?;
        self.next += (bytes.len() as u64).div_ceil(SECTOR);
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        let gt_sectors = self.h.gt_sectors();
        let mut gd = Vec::new();
        let tables: Vec<Vec<u8>> = self
            .gtes
            .chunks(GTES as usize)
            .map(|t| t.iter().flat_map(|e| e.to_le_bytes()).collect())
            .collect();
        for mut table in tables {
            self.put(&self.marker(gt_sectors, MARKER_GT))?;
            gd.extend_from_slice(&(self.next as u32).to_le_bytes());
            table.resize((gt_sectors * SECTOR) as usize, 0);
            self.put(&table)?;
        }
        self.put(&self.marker(self.h.gd_sectors(), MARKER_GD))?;
        let gd_offset = self.next;
        gd.resize((self.h.gd_sectors() * SECTOR) as usize, 0);
        self.put(&gd)?;
        self.put(&self.marker(1, MARKER_FOOTER))?;
        let mut footer = self.h.clone();
        footer.gd_offset = gd_offset;
        self.put(&footer.to_bytes())?;
        self.put(&[0u8; 512])?;
        self.file.sync()
    }
}

/// Creates a streamOptimized disk with no data.
pub(crate) fn write_empty(path: &Path, sectors: u64) -> Result<()> {
    Writer::new(path, sectors)?.finish()
}

/// Writes `src` as a streamOptimized disk; `progress(bytes done)` is called as it goes.
///
/// The disk holds `src` rounded up to whole sectors. When that is not a multiple of the grain,
/// the last grain holds only the sectors up to the end of the disk, as QEMU writes it.
pub(crate) fn write_from(
    path: &Path,
    src: &dyn DiskImage,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let size = src.virtual_size();
    let sectors = size.div_ceil(SECTOR);
    let mut w = Writer::new(path, sectors)?;
    let gb = GRAIN_SECTORS * SECTOR;
    let mut buf = vec![0u8; gb as usize];
    let mut pos = 0;
    while pos < size {
        let (state, run) = src.map(pos, (size - pos).min(64 << 20))?;
        if state == Mapping::Zero {
            pos += run;
            progress(pos);
            continue;
        }
        let gi = pos / gb;
        let start = gi * gb;
        let grain = &mut buf[..gb.min(sectors * SECTOR - start) as usize];
        let n = gb.min(size - start) as usize;
        grain[n..].fill(0);
        src.read_at(&mut grain[..n], start)?;
        if !is_zero(grain) {
            w.grain(gi, grain)?;
        }
        pos = start + gb;
        progress(pos.min(size));
    }
    w.finish()
}
