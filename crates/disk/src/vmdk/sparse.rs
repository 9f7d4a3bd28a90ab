//! One VMDK sparse extent: grain directory, grain tables, grains.
//!
//! The grain directory (and the redundant one) is kept in memory and written through; grain
//! table entries are written in the file and read through the file's write-through table cache
//! (`cache.rs`: the file is always updated first). An allocating write appends the whole grain
//! to the file, then writes the grain table entry, then the redundant entry. A missing grain
//! table is appended (zeroed) before the directory entry that names it. Grains are never
//! reused: a discarded grain stays in the file, unreferenced.
//!
//! Grain table entry values: 0 unallocated (read from the parent, or zeros), 1 a zero grain,
//! otherwise the sector of the grain — for compressed (streamOptimized) extents, the sector of
//! the grain marker `{lba: u64, size: u32}` that precedes the deflate data. A compressed grain
//! decompresses to a whole grain, except that the last grain of an extent that ends inside it
//! may hold only the sectors up to the end (QEMU writes it so).

use super::descriptor::FORMAT;
use super::header::{SparseHeader, FLAG_RGD, FLAG_ZERO_GRAIN, GD_AT_END, MAX_GD_BYTES, SECTOR};
use crate::compress::{decompress_prefix, Codec};
use crate::error::{DiskError, Result};
use crate::file::{ImageFile, ReadRun};
use crate::CheckReport;
use std::collections::HashSet;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Most grain table bytes kept in memory per extent file: all the tables of a 2 GiB extent
/// with 64 KiB grains take 128 KiB (256 KiB with the redundant ones, which are never read).
const TABLE_CACHE_BYTES: u64 = 1 << 20;
/// Grain table entries decoded at a time (on the stack).
const ENTRY_CHUNK: usize = 64;

/// Reads the guest bytes of an unallocated range: `(buffer, byte offset in the extent)`.
pub(crate) type Fill<'a> = &'a dyn Fn(&mut [u8], u64) -> Result<()>;

/// What a grain table entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grain {
    Unallocated,
    Zero,
    Data(u64),
    Compressed(u64),
}

/// Directories and the sorted list of grain tables (sector offsets), as writes change them.
struct Dirs {
    gd: Vec<u32>,
    rgd: Option<Vec<u32>>,
    tables: Vec<u64>,
}

/// A sparse extent file.
pub(crate) struct SparseExtent {
    file: ImageFile,
    h: SparseHeader,
    /// Sector ranges of the header, embedded descriptor and directories.
    fixed: Vec<(u64, u64)>,
    dirs: RwLock<Dirs>,
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

impl SparseExtent {
    /// Opens and checks a sparse extent.
    pub fn open(file: ImageFile) -> Result<Self> {
        let len = file.len()?;
        let mut raw = [0u8; 512];
        if len < SECTOR {
            return Err(DiskError::malformed(
                file.path(),
                FORMAT,
                format!("the sparse extent header is truncated: the file has only {len} bytes"),
            ));
        }
        file.read_exact_at(&mut raw, 0, FORMAT, "sparse extent header")?;
        let mut h = SparseHeader::parse(&raw, file.path())?;
        if h.gd_offset == GD_AT_END {
            h = Self::read_footer(&file, len)?;
        }
        let mut fixed = vec![(0, 1), (h.gd_offset, h.gd_sectors())];
        if h.desc_offset != 0 {
            fixed.push((h.desc_offset, h.desc_size));
        }
        let has_rgd = h.flags & FLAG_RGD != 0 && h.rgd_offset != 0;
        if has_rgd {
            fixed.push((h.rgd_offset, h.gd_sectors()));
        }
        let gd = Self::read_dir(&file, &h, h.gd_offset, "grain directory")?;
        let rgd = if has_rgd {
            Some(Self::read_dir(&file, &h, h.rgd_offset, "redundant grain directory")?)
        } else {
            None
        };
        if has_rgd && overlap((h.gd_offset, h.gd_sectors()), (h.rgd_offset, h.gd_sectors())) {
            return Err(DiskError::malformed(
                file.path(),
                FORMAT,
                "its grain directory and redundant grain directory overlap",
            ));
        }
        let tables =
            Self::check_tables(&file, &h, &fixed, len, gd.iter().chain(rgd.iter().flatten()))?;
        let file = file.with_table_cache(TABLE_CACHE_BYTES);
        Ok(SparseExtent { file, h, fixed, dirs: RwLock::new(Dirs { gd, rgd, tables }) })
    }

    /// Reads the header copy of a streamOptimized extent from its footer.
    fn read_footer(file: &ImageFile, len: u64) -> Result<SparseHeader> {
        if len < 3 * SECTOR {
            return Err(DiskError::malformed(
                file.path(),
                FORMAT,
                "it announces a footer but is too short to hold one",
            ));
        }
        let mut raw = [0u8; 512];
        file.read_exact_at(&mut raw, len - 2 * SECTOR, FORMAT, "footer")?;
        let h = SparseHeader::parse(&raw, file.path())?;
        if h.gd_offset == GD_AT_END {
            return Err(DiskError::malformed(
                file.path(),
                FORMAT,
                "its footer does not say where the grain directory is",
            ));
        }
        Ok(h)
    }

    fn read_dir(file: &ImageFile, h: &SparseHeader, sector: u64, what: &str) -> Result<Vec<u32>> {
        let bytes = h.gd_entries().unwrap_or(0) * 4;
        let mut raw = crate::file::bounded_vec(file.path(), FORMAT, what, bytes, MAX_GD_BYTES)?;
        let at = sector.checked_mul(SECTOR).ok_or_else(|| {
            DiskError::malformed(file.path(), FORMAT, format!("its {what} offset overflows"))
        })?;
        file.read_exact_at(&mut raw, at, FORMAT, what)?;
        Ok(raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Checks that every grain table lies in the file, apart from the fixed metadata and from
    /// every other table; returns their sorted sector offsets.
    fn check_tables<'a>(
        file: &ImageFile,
        h: &SparseHeader,
        fixed: &[(u64, u64)],
        len: u64,
        entries: impl Iterator<Item = &'a u32>,
    ) -> Result<Vec<u64>> {
        let gt = h.gt_sectors();
        let mut tables: Vec<u64> = entries.filter(|&&e| e != 0).map(|&e| u64::from(e)).collect();
        tables.sort_unstable();
        for (i, &t) in tables.iter().enumerate() {
            let bad = |why: &str| {
                DiskError::malformed(
                    file.path(),
                    FORMAT,
                    format!("a grain table at sector {t} {why}"),
                )
            };
            if (t + gt) * SECTOR > len {
                return Err(bad("lies past the end of the file"));
            }
            if fixed.iter().any(|&f| overlap(f, (t, gt))) {
                return Err(bad("overlaps the header, the descriptor or a grain directory"));
            }
            if i > 0 && tables[i - 1] + gt > t {
                return Err(bad("overlaps another grain table or is named twice"));
            }
        }
        Ok(tables)
    }

    pub fn file(&self) -> &ImageFile {
        &self.file
    }

    pub fn header(&self) -> &SparseHeader {
        &self.h
    }

    pub fn grain_bytes(&self) -> u64 {
        self.h.grain * SECTOR
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.h.capacity * SECTOR
    }

    pub fn has_zero_grains(&self) -> bool {
        self.h.flags & FLAG_ZERO_GRAIN != 0 || self.h.version >= 2
    }

    /// The descriptor stored inside the extent, if any.
    pub fn embedded_descriptor(&self) -> Result<Option<String>> {
        if self.h.desc_offset == 0 || self.h.desc_size == 0 {
            return Ok(None);
        }
        let mut raw = vec![0u8; (self.h.desc_size * SECTOR) as usize];
        self.file.read_exact_at(
            &mut raw,
            self.h.desc_offset * SECTOR,
            FORMAT,
            "embedded descriptor",
        )?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Ok(Some(String::from_utf8_lossy(&raw[..end]).into_owned()))
    }

    fn read_dirs(&self) -> RwLockReadGuard<'_, Dirs> {
        self.dirs.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_dirs(&self) -> RwLockWriteGuard<'_, Dirs> {
        self.dirs.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries of `count` grains from grain `gi` on, all in one grain table.
    fn entries(&self, d: &Dirs, gi: u64, count: u64) -> Result<Vec<Grain>> {
        let gtes = u64::from(self.h.gtes);
        let table = d.gd.get((gi / gtes) as usize).copied().unwrap_or(0);
        if table == 0 {
            return Ok(vec![Grain::Unallocated; count as usize]);
        }
        let mut raw = vec![0u8; count as usize * 4];
        self.file.read_exact_at(
            &mut raw,
            u64::from(table) * SECTOR + (gi % gtes) * 4,
            FORMAT,
            "grain table",
        )?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| self.decode(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect())
    }

    /// The entries of `out.len()` (at most [`ENTRY_CHUNK`]) grains from `gi` on, all in one
    /// grain table, through the table cache.
    fn entries_into(&self, d: &Dirs, gi: u64, out: &mut [Grain]) -> Result<()> {
        let gtes = u64::from(self.h.gtes);
        let table = d.gd.get((gi / gtes) as usize).copied().unwrap_or(0);
        if table == 0 {
            out.fill(Grain::Unallocated);
            return Ok(());
        }
        let mut raw = [0u8; ENTRY_CHUNK * 4];
        let raw = &mut raw[..out.len() * 4];
        let at = u64::from(table) * SECTOR + (gi % gtes) * 4;
        self.file.read_table(raw, at, FORMAT, "grain table")?;
        for (g, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
            *g = self.decode(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        }
        Ok(())
    }

    fn decode(&self, entry: u32) -> Grain {
        match entry {
            0 => Grain::Unallocated,
            1 => Grain::Zero,
            s if self.h.compressed() => Grain::Compressed(u64::from(s)),
            s => Grain::Data(u64::from(s)),
        }
    }

    fn entry(&self, d: &Dirs, gi: u64) -> Result<Grain> {
        let mut one = [Grain::Unallocated];
        self.entries_into(d, gi, &mut one)?;
        Ok(one[0])
    }

    /// Decompresses grain `gi`, whose marker is at `sector`, into a whole grain. The data must
    /// hold a whole grain or, in the last grain, exactly the bytes up to the end of the extent
    /// (the rest then reads as zeros); any other length is corruption, as is more than a grain.
    fn read_compressed(&self, sector: u64, gi: u64) -> Result<Vec<u8>> {
        let at = sector * SECTOR;
        let mut marker = [0u8; 12];
        self.file.read_exact_at(&mut marker, at, FORMAT, "grain marker")?;
        let size = u64::from(u32::from_le_bytes([marker[8], marker[9], marker[10], marker[11]]));
        let corrupt = |why: String| {
            DiskError::corrupt(
                self.file.path(),
                format!("the compressed grain at sector {sector} {why}"),
            )
        };
        let gb = self.grain_bytes() as usize;
        if size == 0 || size > self.grain_bytes() * 2 + 4096 {
            return Err(corrupt(format!("claims an impossible size of {size} bytes")));
        }
        let mut input = vec![0u8; size as usize];
        self.file.read_exact_at(&mut input, at + 12, FORMAT, "compressed grain")?;
        // One byte more than a grain, to tell a grain from a longer stream.
        let mut out = vec![0u8; gb + 1];
        let n = decompress_prefix(Codec::Zlib, &input, &mut out)
            .map_err(|why| corrupt(format!("cannot be read: {why}")))?;
        let tail = self.capacity_bytes().saturating_sub(gi * self.grain_bytes()) as usize;
        let last_grain_short = tail < gb && n == tail && n > 0;
        if n != gb && !last_grain_short {
            let got = if n > gb { format!("more than {gb}") } else { n.to_string() };
            let want = if tail > 0 && tail < gb {
                format!("{gb} (a grain) or {tail} (the rest of the disk)")
            } else {
                format!("{gb} (a grain)")
            };
            return Err(corrupt(format!("decompresses to {got} bytes, not {want}")));
        }
        out.truncate(gb);
        Ok(out)
    }

    fn read_grain(&self, g: Grain, gi: u64, within: u64, buf: &mut [u8], fill: Fill) -> Result<()> {
        match g {
            Grain::Unallocated => fill(buf, gi * self.grain_bytes() + within),
            Grain::Zero => {
                buf.fill(0);
                Ok(())
            }
            Grain::Data(s) => self.file.read_zero_fill(buf, s * SECTOR + within),
            Grain::Compressed(s) => {
                let data = self.read_compressed(s, gi)?;
                buf.copy_from_slice(&data[within as usize..within as usize + buf.len()]);
                Ok(())
            }
        }
    }

    /// Splits an extent byte range into per-grain pieces: `f(grain, offset in grain, range in buf)`.
    fn for_each_grain(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let gb = self.grain_bytes();
        let mut pos = offset;
        while pos < offset + len {
            let gi = pos / gb;
            let stop = ((gi + 1) * gb).min(offset + len);
            f(gi, pos - gi * gb, (pos - offset) as usize..(stop - offset) as usize)?;
            pos = stop;
        }
        Ok(())
    }

    /// Reads `buf` at byte `offset` of the extent; grains that follow each other in the file
    /// are read with one `pread`.
    pub fn read(&self, buf: &mut [u8], offset: u64, fill: Fill) -> Result<()> {
        let d = self.read_dirs();
        let gtes = u64::from(self.h.gtes);
        let last = (offset + buf.len() as u64).saturating_sub(1) / self.grain_bytes();
        let mut chunk = [Grain::Unallocated; ENTRY_CHUNK];
        let (mut first, mut count) = (0u64, 0u64);
        let mut run = ReadRun::default();
        self.for_each_grain(offset, buf.len() as u64, |gi, within, range| {
            if gi < first || gi >= first + count {
                let table_end = gi - gi % gtes + gtes;
                count = (table_end.min(last + 1) - gi).min(ENTRY_CHUNK as u64);
                first = gi;
                self.entries_into(&d, gi, &mut chunk[..count as usize])?;
            }
            match chunk[(gi - first) as usize] {
                Grain::Data(s) => {
                    run.add(&self.file, buf, s * SECTOR + within, range.start, range.len())
                }
                g => {
                    run.flush(&self.file, buf)?;
                    self.read_grain(g, gi, within, &mut buf[range], fill)
                }
            }
        })?;
        run.flush(&self.file, buf)
    }

    fn writable(&self) -> Result<()> {
        if self.file.is_writable() && !self.h.compressed() {
            Ok(())
        } else {
            Err(DiskError::ReadOnly { path: self.file.path().to_path_buf() })
        }
    }

    /// Refuses in-place writes to a grain that lies past the file or over metadata.
    fn check_in_place(&self, d: &Dirs, s: u64) -> Result<()> {
        let range = (s, self.h.grain);
        let gt = self.h.gt_sectors();
        let i = d.tables.partition_point(|&t| t + gt <= s);
        let hits_table = d.tables.get(i).is_some_and(|&t| overlap((t, gt), range));
        if hits_table || self.fixed.iter().any(|&f| overlap(f, range)) {
            return Err(DiskError::corrupt(
                self.file.path(),
                format!("the grain at sector {s} overlaps metadata"),
            ));
        }
        if s * SECTOR >= self.file.known_len() {
            return Err(DiskError::corrupt(
                self.file.path(),
                format!("the grain at sector {s} lies past the end of the file"),
            ));
        }
        Ok(())
    }

    /// Sector at the end of the file, where the next grain or table goes.
    fn end_sector(&self) -> Result<u64> {
        let s = self.file.len()?.div_ceil(SECTOR);
        if s + self.h.grain > u64::from(u32::MAX) {
            return Err(DiskError::corrupt(
                self.file.path(),
                "the extent file is full: grain offsets cannot pass 2 TiB",
            ));
        }
        Ok(s)
    }

    /// Returns the grain table (and redundant one) for grain `gi`, appending them if missing.
    fn ensure_table(&self, d: &mut Dirs, gi: u64) -> Result<(u64, Option<u64>)> {
        let gdi = (gi / u64::from(self.h.gtes)) as usize;
        let redundant = d.rgd.as_ref().map(|r| u64::from(r[gdi])).filter(|&s| s != 0);
        if d.gd[gdi] != 0 {
            return Ok((u64::from(d.gd[gdi]), redundant));
        }
        let gt = self.h.gt_sectors();
        let zeros = vec![0u8; (gt * SECTOR) as usize];
        let main = self.end_sector()?;
        self.file.write_all_at(&zeros, main * SECTOR)?;
        let mut second = None;
        if let Some(rgd) = &mut d.rgd {
            let s = main + gt;
            self.file.write_all_at(&zeros, s * SECTOR)?;
            self.file.write_all_at(
                &(s as u32).to_le_bytes(),
                self.h.rgd_offset * SECTOR + gdi as u64 * 4,
            )?;
            rgd[gdi] = s as u32;
            second = Some(s);
        }
        self.file.write_all_at(
            &(main as u32).to_le_bytes(),
            self.h.gd_offset * SECTOR + gdi as u64 * 4,
        )?;
        d.gd[gdi] = main as u32;
        for t in std::iter::once(main).chain(second) {
            let at = d.tables.partition_point(|&x| x < t);
            d.tables.insert(at, t);
        }
        Ok((main, second))
    }

    fn set_entry(&self, tables: (u64, Option<u64>), gi: u64, value: u32) -> Result<()> {
        let within = (gi % u64::from(self.h.gtes)) * 4;
        self.file.write_all_at(&value.to_le_bytes(), tables.0 * SECTOR + within)?;
        if let Some(r) = tables.1 {
            self.file.write_all_at(&value.to_le_bytes(), r * SECTOR + within)?;
        }
        Ok(())
    }

    /// Writes part of grain `gi`.
    fn write_grain(
        &self,
        d: &mut Dirs,
        gi: u64,
        within: u64,
        data: &[u8],
        fill: Fill,
    ) -> Result<()> {
        let old = self.entry(d, gi)?;
        if let Grain::Data(s) = old {
            self.check_in_place(d, s)?;
            return self.file.write_all_at(data, s * SECTOR + within);
        }
        let mut grain = vec![0u8; self.grain_bytes() as usize];
        if within != 0 || data.len() as u64 != self.grain_bytes() {
            let keep = self.grain_bytes().min(self.capacity_bytes() - gi * self.grain_bytes());
            self.read_grain(old, gi, 0, &mut grain[..keep as usize], fill)?;
        }
        grain[within as usize..within as usize + data.len()].copy_from_slice(data);
        let tables = self.ensure_table(d, gi)?;
        let s = self.end_sector()?;
        self.file.write_all_at(&grain, s * SECTOR)?;
        self.set_entry(tables, gi, s as u32)
    }

    /// Writes `data` at byte `offset` of the extent.
    pub fn write(&self, data: &[u8], offset: u64, fill: Fill) -> Result<()> {
        self.writable()?;
        let mut d = self.write_dirs();
        self.for_each_grain(offset, data.len() as u64, |gi, within, range| {
            self.write_grain(&mut d, gi, within, &data[range], fill)
        })
    }

    /// Discards (`zero == false`) or zeroes a range. `parent` says whether unallocated grains
    /// read from a parent image rather than as zeros.
    pub fn drop_range(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        parent: bool,
        fill: Fill,
    ) -> Result<()> {
        self.writable()?;
        let mut d = self.write_dirs();
        let gb = self.grain_bytes();
        let cap = self.capacity_bytes();
        self.for_each_grain(offset, len, |gi, within, range| {
            let n = (range.end - range.start) as u64;
            let whole = within == 0 && (n == gb || gi * gb + n == cap);
            let old = self.entry(&d, gi)?;
            let reads_zero = old == Grain::Zero || (old == Grain::Unallocated && !parent);
            if whole && !parent && old != Grain::Unallocated {
                let tables = self.ensure_table(&mut d, gi)?;
                self.set_entry(tables, gi, 0)
            } else if whole && parent && self.has_zero_grains() && old != Grain::Zero {
                let tables = self.ensure_table(&mut d, gi)?;
                self.set_entry(tables, gi, 1)
            } else if zero && !reads_zero {
                self.write_grain(&mut d, gi, within, &vec![0u8; n as usize], fill)
            } else {
                Ok(())
            }
        })
    }

    /// State of the range at `offset`: (allocated here, reads as zero), and its length.
    pub fn map(&self, offset: u64, len: u64) -> Result<(Grain, u64)> {
        let d = self.read_dirs();
        let gb = self.grain_bytes();
        let class = |g: Grain| match g {
            Grain::Unallocated => 0,
            Grain::Zero => 1,
            _ => 2,
        };
        let first = self.entry(&d, offset / gb)?;
        let mut gi = offset / gb + 1;
        while gi * gb < offset + len && class(self.entry(&d, gi)?) == class(first) {
            gi += 1;
        }
        Ok((first, (gi * gb).min(offset + len) - offset))
    }

    /// Checks every grain table entry: in the file, off the metadata, not shared.
    pub fn check(&self, report: &mut CheckReport) -> Result<()> {
        let d = self.read_dirs();
        let len = self.file.len()?;
        let mut seen = HashSet::new();
        let path = self.file.path().display().to_string();
        let gtes = u64::from(self.h.gtes);
        for gdi in 0..d.gd.len() as u64 {
            for (k, g) in self.entries(&d, gdi * gtes, gtes)?.into_iter().enumerate() {
                let s = match g {
                    Grain::Data(s) | Grain::Compressed(s) => s,
                    _ => continue,
                };
                let gi = gdi * gtes + k as u64;
                let span = if self.h.compressed() { 1 } else { self.h.grain };
                if (s + span) * SECTOR > len.div_ceil(SECTOR) * SECTOR {
                    report.errors.push(format!(
                        "{path}: grain {gi} points at sector {s}, past the end of the file"
                    ));
                } else if !self.h.compressed() && self.check_in_place(&d, s).is_err() {
                    report
                        .errors
                        .push(format!("{path}: grain {gi} at sector {s} overlaps metadata"));
                }
                if !seen.insert(s) {
                    report
                        .errors
                        .push(format!("{path}: grain {gi} shares sector {s} with another grain"));
                }
            }
        }
        Ok(())
    }
}
