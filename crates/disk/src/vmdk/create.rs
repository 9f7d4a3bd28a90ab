//! Creating empty VMDK disks, laid out as QEMU and VMware do.
//!
//! Sparse extent layout: header (sector 0), embedded descriptor (monolithicSparse only, 20
//! sectors), redundant grain directory and its grain tables, grain directory and its grain
//! tables, padding to a grain boundary; every grain table exists from the start. Split disks
//! (`twoGbMaxExtent*`) have a descriptor file `NAME.vmdk` and extents `NAME-s001.vmdk` (sparse)
//! or `NAME-f001.vmdk` (flat) of at most 2 GiB each.

use super::descriptor::{render, ExtentLine, ExtentType};
use super::header::{SparseHeader, FLAG_NL_DETECT, FLAG_RGD, FLAG_ZERO_GRAIN, SECTOR};
use crate::error::{DiskError, Result};
use crate::file::ImageFile;
use std::path::Path;
use std::str::FromStr;

/// VMDK create types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VmdkSubformat {
    /// One sparse file with the descriptor inside.
    #[default]
    MonolithicSparse,
    /// A descriptor and one flat (raw) file.
    MonolithicFlat,
    /// A descriptor and sparse extents of 2 GiB.
    TwoGbMaxExtentSparse,
    /// A descriptor and flat extents of 2 GiB.
    TwoGbMaxExtentFlat,
    /// One compressed sparse file, written once from start to end (only `convert` makes these).
    StreamOptimized,
}

impl VmdkSubformat {
    /// The createType name.
    pub fn name(self) -> &'static str {
        match self {
            VmdkSubformat::MonolithicSparse => "monolithicSparse",
            VmdkSubformat::MonolithicFlat => "monolithicFlat",
            VmdkSubformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            VmdkSubformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            VmdkSubformat::StreamOptimized => "streamOptimized",
        }
    }
}

impl FromStr for VmdkSubformat {
    type Err = DiskError;
    fn from_str(s: &str) -> Result<Self> {
        [
            VmdkSubformat::MonolithicSparse,
            VmdkSubformat::MonolithicFlat,
            VmdkSubformat::TwoGbMaxExtentSparse,
            VmdkSubformat::TwoGbMaxExtentFlat,
            VmdkSubformat::StreamOptimized,
        ]
        .into_iter()
        .find(|f| f.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            DiskError::InvalidArgument(format!(
                "unknown VMDK subformat {s:?}; use monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat or streamOptimized"
            ))
        })
    }
}

/// How to create a VMDK disk.
#[derive(Clone, Debug, Default)]
pub struct VmdkCreateOptions {
    /// Layout.
    pub subformat: VmdkSubformat,
    /// Let sparse extents mark grains as zero (grain table entry 1; VMDK version 2).
    pub zeroed_grain: bool,
}

/// Grain size of created sparse extents, in sectors (64 KiB).
pub(crate) const GRAIN_SECTORS: u64 = 128;
/// Grain table entries per table.
pub(crate) const GTES: u32 = 512;
/// Size of one extent of a split disk, in sectors.
const SPLIT_SECTORS: u64 = (2 << 30) / SECTOR;
/// Sectors reserved for an embedded descriptor.
const DESC_SECTORS: u64 = 20;

/// A fresh content identifier.
pub(crate) fn new_cid() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    ((t ^ (t >> 32)) as u32) | 1
}

/// Creates a disk of `size` bytes (rounded up to whole sectors) at `path`.
pub(crate) fn create(path: &Path, size: u64, opts: &VmdkCreateOptions) -> Result<()> {
    let sectors = size.div_ceil(SECTOR);
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        DiskError::InvalidArgument(format!("{} has no usable file name", path.display()))
    })?;
    let stem = name.strip_suffix(".vmdk").unwrap_or(name);
    let dir = path.parent().unwrap_or(Path::new("."));
    let cid = new_cid();
    match opts.subformat {
        VmdkSubformat::MonolithicSparse => {
            let line = ExtentLine {
                read_only: false,
                sectors,
                kind: ExtentType::Sparse,
                file: Some(name.to_string()),
                offset: 0,
            };
            let text = render(opts.subformat.name(), &[line], cid);
            create_sparse_extent(path, sectors, Some(&text), opts.zeroed_grain)
        }
        VmdkSubformat::MonolithicFlat => {
            let flat = format!("{stem}-flat.vmdk");
            ImageFile::create(&dir.join(&flat))?.set_len(sectors * SECTOR)?;
            let line = ExtentLine {
                read_only: false,
                sectors,
                kind: ExtentType::Flat,
                file: Some(flat),
                offset: 0,
            };
            write_descriptor(path, &render(opts.subformat.name(), &[line], cid))
        }
        VmdkSubformat::TwoGbMaxExtentSparse | VmdkSubformat::TwoGbMaxExtentFlat => {
            create_split(path, dir, stem, sectors, opts, cid)
        }
        VmdkSubformat::StreamOptimized => super::stream::write_empty(path, sectors),
    }
}

fn create_split(
    path: &Path,
    dir: &Path,
    stem: &str,
    sectors: u64,
    opts: &VmdkCreateOptions,
    cid: u32,
) -> Result<()> {
    let sparse = opts.subformat == VmdkSubformat::TwoGbMaxExtentSparse;
    let mut lines = Vec::new();
    let mut done = 0;
    let mut n = 1;
    while done < sectors || lines.is_empty() {
        let part = (sectors - done).min(SPLIT_SECTORS);
        let file = format!("{stem}-{}{n:03}.vmdk", if sparse { 's' } else { 'f' });
        let full = dir.join(&file);
        if sparse {
            create_sparse_extent(&full, part, None, opts.zeroed_grain)?;
        } else {
            ImageFile::create(&full)?.set_len(part * SECTOR)?;
        }
        let kind = if sparse { ExtentType::Sparse } else { ExtentType::Flat };
        lines.push(ExtentLine {
            read_only: false,
            sectors: part,
            kind,
            file: Some(file),
            offset: 0,
        });
        done += part;
        n += 1;
    }
    write_descriptor(path, &render(opts.subformat.name(), &lines, cid))
}

fn write_descriptor(path: &Path, text: &str) -> Result<()> {
    let f = ImageFile::create(path)?;
    f.write_all_at(text.as_bytes(), 0)?;
    f.sync()
}

/// Creates one sparse extent file of `sectors` sectors, with an embedded descriptor if given.
pub(crate) fn create_sparse_extent(
    path: &Path,
    sectors: u64,
    descriptor: Option<&str>,
    zeroed_grain: bool,
) -> Result<()> {
    let mut h = SparseHeader {
        version: if zeroed_grain { 2 } else { 1 },
        flags: FLAG_NL_DETECT | FLAG_RGD | if zeroed_grain { FLAG_ZERO_GRAIN } else { 0 },
        capacity: sectors,
        grain: GRAIN_SECTORS,
        desc_offset: 0,
        desc_size: 0,
        gtes: GTES,
        rgd_offset: 0,
        gd_offset: 0,
        overhead: 0,
        compress_algorithm: 0,
    };
    let gd_entries = h.gd_entries().unwrap_or(0);
    if gd_entries * 4 > super::header::MAX_GD_BYTES || sectors > u64::from(u32::MAX) {
        return Err(DiskError::InvalidArgument(format!(
            "a sparse VMDK extent of {sectors} sectors is too large; the limit is 2 TiB"
        )));
    }
    let (gd_sectors, gt_sectors) = (h.gd_sectors(), h.gt_sectors());
    let mut next = 1;
    if let Some(text) = descriptor {
        if text.len() as u64 > DESC_SECTORS * SECTOR {
            return Err(DiskError::InvalidArgument(
                "the descriptor does not fit in 20 sectors".into(),
            ));
        }
        (h.desc_offset, h.desc_size) = (1, DESC_SECTORS);
        next += DESC_SECTORS;
    }
    h.rgd_offset = next;
    h.gd_offset = next + gd_sectors + gd_entries * gt_sectors;
    let end = h.gd_offset + gd_sectors + gd_entries * gt_sectors;
    h.overhead = end.div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    let file = ImageFile::create(path)?;
    file.write_all_at(&h.to_bytes(), 0)?;
    if let Some(text) = descriptor {
        file.write_all_at(text.as_bytes(), SECTOR)?;
    }
    for dir in [h.rgd_offset, h.gd_offset] {
        let first_table = dir + gd_sectors;
        let gd: Vec<u8> = (0..gd_entries)
            .flat_map(|i| ((first_table + i * gt_sectors) as u32).to_le_bytes())
            .collect();
        file.write_all_at(&gd, dir * SECTOR)?;
    }
    file.set_len(h.overhead * SECTOR)?;
    file.sync()
}
