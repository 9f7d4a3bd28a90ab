//! Qcow2, versions 2 (compat=0.10) and 3 (compat=1.1), read-write.
//!
//! Supported: allocation on write, backing files of any format (copy-on-write of whole
//! clusters), zero clusters (v3), compressed clusters (read; deflate and zstd), discard, any
//! cluster size from 512 bytes to 2 MiB, any refcount width, refcount table growth. Images with
//! internal snapshots open read-only. Not supported: encryption, external data files, extended
//! L2 entries (subclusters).
//!
//! # Metadata on the file, in this order
//!
//! The L1 table and refcount table are kept in memory *and* written through; L2 tables and
//! refcount blocks are read through a bounded write-through cache of file slices (`cache.rs`:
//! every `pwrite` reaches the file first, then the cached copy) and written in the file. An
//! allocating write does, each step a `pwrite` that completes before the next:
//!
//! 1. if the L2 table is missing: refcount of a new cluster set to 1, that cluster zeroed, the
//!    L1 entry pointed at it;
//! 2. refcount of the new data cluster set to 1 (a missing refcount block is created first and
//!    counts itself);
//! 3. the whole data cluster written (the request merged into the old content: backing file,
//!    decompressed cluster, or zeros);
//! 4. the L2 entry pointed at it, with the COPIED flag;
//! 5. the refcount of a cluster the entry used to point at (a compressed cluster) decremented.
//!
//! Discard and zeroing write the L2 entry first and decrement refcounts after. A process killed
//! between two steps leaves only leaked clusters, which `qemu-img check -r leaks` repairs; a
//! write never becomes visible through an L2 entry before its data is in the file.

mod check;
mod create;
mod header;
mod refcount;

pub(crate) use create::create;
pub use create::{Qcow2CreateOptions, Qcow2Version};

use crate::compress::{decompress, Codec};
use crate::error::{DiskError, Result};
use crate::file::{check_range, ImageFile, ReadRun};
use crate::{Chain, CheckReport, DiskImage, Format, ImageInfo, Mapping, OpenFile};
use header::{Compression, Header, FORMAT, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use refcount::{Refcounts, OFFSET_MASK};
use std::collections::HashSet;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
/// Most L2 table and refcount block bytes kept in memory per image: with 64 KiB clusters,
/// the L2 tables of 128 GiB of disk (QEMU keeps up to 32 MiB).
const TABLE_CACHE_BYTES: u64 = 16 << 20;
/// L2 entries decoded at a time (on the stack).
const ENTRY_CHUNK: usize = 64;

/// What an L2 entry says about a guest cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cluster {
    /// Not allocated: read from the backing file, or zeros.
    Unallocated,
    /// Reads as zeros; may keep a preallocated host cluster.
    Zero { host: Option<u64> },
    /// Data at a host offset; `copied` means the refcount is exactly 1 (may be written in place).
    Normal { host: u64, copied: bool },
    /// Compressed data: byte offset and the 512-byte-sector range it is read from.
    Compressed { host: u64, sectors: u64 },
}

/// A qcow2 image.
pub(crate) struct Qcow2 {
    file: ImageFile,
    header: Header,
    backing: Option<Box<dyn DiskImage>>,
    state: RwLock<State>,
}

/// What writes change.
struct State {
    l1: Vec<u64>,
    l2_tables: HashSet<u64>,
    refs: Option<Refcounts>,
}

impl Qcow2 {
    /// The image in `file` (opened and locked by `chain`), and its backing chain.
    pub fn open(file: ImageFile, chain: &mut Chain) -> Result<Self> {
        let writable = file.is_writable();
        let path = file.path().to_path_buf();
        let path = path.as_path();
        let file = file.with_table_cache(TABLE_CACHE_BYTES);
        let mut header = Header::read(&file)?;
        if writable {
            Self::prepare_for_writes(&file, &mut header)?;
        }
        let (l1, l2_tables) = Self::load_l1(&file, &header)?;
        let refs = if writable { Some(Refcounts::load(&file, &header)?) } else { None };
        if let Some(shared) = refs.as_ref().and_then(|r| l2_tables.iter().find(|&&t| r.is_block(t)))
        {
            return Err(DiskError::malformed(
                path,
                FORMAT,
                format!(
                    "the cluster at offset {shared:#x} is both an L2 table and a refcount block"
                ),
            ));
        }
        let backing = match &header.backing_file {
            Some(name) => {
                let format = match header.backing_format.as_deref() {
                    None => None,
                    Some(f) => Some(f.parse::<Format>().map_err(|_| {
                        DiskError::unsupported(path, FORMAT, format!("backing file format {f:?}"))
                    })?),
                };
                Some(chain.open_backing(path, name, format)?)
            }
            None => None,
        };
        Ok(Qcow2 { file, header, backing, state: RwLock::new(State { l1, l2_tables, refs }) })
    }

    /// Refuses to write to images whose metadata cannot be trusted or that this crate cannot keep
    /// consistent, and clears autoclear bits as the specification asks of writers.
    fn prepare_for_writes(file: &ImageFile, h: &mut Header) -> Result<()> {
        let path = file.path();
        if h.incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(DiskError::corrupt(
                path,
                "it is marked corrupt; repair it with `qemu-img check -r all` before writing",
            ));
        }
        if h.incompatible & INCOMPAT_DIRTY != 0 {
            return Err(DiskError::corrupt(path, "it was not closed cleanly (lazy refcounts); repair it with `qemu-img check -r all` before writing"));
        }
        if h.nb_snapshots > 0 {
            return Err(DiskError::unsupported(
                path,
                FORMAT,
                "writing to an image with internal snapshots (open it read-only)",
            ));
        }
        if h.version == 3 && h.autoclear != 0 {
            file.write_all_at(&0u64.to_be_bytes(), header::AUTOCLEAR_OFFSET)?;
            h.autoclear = 0;
        }
        Ok(())
    }

    /// Reads the L1 table and checks every L2 table it names.
    fn load_l1(file: &ImageFile, h: &Header) -> Result<(Vec<u64>, HashSet<u64>)> {
        let cs = h.cluster_size();
        let mut raw = crate::file::bounded_vec(
            file.path(),
            FORMAT,
            "L1 table",
            u64::from(h.l1_size) * 8,
            header::MAX_L1_BYTES,
        )?;
        file.read_exact_at(&mut raw, h.l1_table_offset, FORMAT, "L1 table")?;
        let l1: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let file_len = file.len()?;
        let fixed = [
            (0, cs),
            (h.l1_table_offset, u64::from(h.l1_size) * 8),
            (h.refcount_table_offset, u64::from(h.refcount_table_clusters) * cs),
        ];
        let mut tables = HashSet::new();
        for off in l1.iter().map(|e| e & OFFSET_MASK).filter(|&o| o != 0) {
            let bad = |why: &str| {
                DiskError::malformed(
                    file.path(),
                    FORMAT,
                    format!("an L2 table at offset {off:#x} {why}"),
                )
            };
            if off % cs != 0 {
                return Err(bad("is not aligned to a cluster"));
            }
            if off.saturating_add(cs) > file_len {
                return Err(bad("lies past the end of the file"));
            }
            if fixed.iter().any(|&r| header::ranges_overlap(r, (off, cs))) {
                return Err(bad("overlaps the header, the L1 table or the refcount table"));
            }
            if !tables.insert(off) {
                return Err(bad("is named by two L1 entries"));
            }
        }
        Ok((l1, tables))
    }

    fn cs(&self) -> u64 {
        self.header.cluster_size()
    }

    fn l2_entries(&self) -> u64 {
        1 << self.header.l2_bits()
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, State>> {
        if !self.file.is_writable() {
            return Err(DiskError::ReadOnly { path: self.file.path().to_path_buf() });
        }
        Ok(self.state.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// Decodes an L2 entry.
    fn decode(&self, entry: u64) -> Result<Cluster> {
        if entry & COMPRESSED != 0 {
            let x = 62 - (self.header.cluster_bits - 8);
            let host = entry & ((1u64 << x) - 1);
            let sectors = ((entry >> x) & ((1u64 << (self.header.cluster_bits - 8)) - 1)) + 1;
            return Ok(Cluster::Compressed { host, sectors });
        }
        let host = entry & OFFSET_MASK;
        if !host.is_multiple_of(self.cs()) {
            return Err(DiskError::corrupt(
                self.file.path(),
                format!(
                    "an L2 entry points at offset {host:#x}, which is not aligned to a cluster"
                ),
            ));
        }
        if self.header.version == 3 && entry & ZERO != 0 {
            return Ok(Cluster::Zero { host: (host != 0).then_some(host) });
        }
        if host == 0 {
            return Ok(Cluster::Unallocated);
        }
        Ok(Cluster::Normal { host, copied: entry & COPIED != 0 })
    }

    /// L2 table offset for guest cluster `gc`, 0 when not allocated.
    fn l2_table(&self, st: &State, gc: u64) -> u64 {
        let idx = (gc >> self.header.l2_bits()) as usize;
        st.l1.get(idx).map_or(0, |e| e & OFFSET_MASK)
    }

    /// The entries of `out.len()` (at most [`ENTRY_CHUNK`]) guest clusters from `gc` on, all
    /// within one L2 table.
    fn entries(&self, st: &State, gc: u64, out: &mut [Cluster]) -> Result<()> {
        let table = self.l2_table(st, gc);
        if table == 0 {
            out.fill(Cluster::Unallocated);
            return Ok(());
        }
        let mut raw = [0u8; ENTRY_CHUNK * 8];
        let raw = &mut raw[..out.len() * 8];
        let at = table + (gc & (self.l2_entries() - 1)) * 8;
        self.file.read_table(raw, at, FORMAT, "L2 table")?;
        for (c, bytes) in out.iter_mut().zip(raw.chunks_exact(8)) {
            *c = self.decode(u64::from_be_bytes(bytes.try_into().unwrap_or_default()))?;
        }
        Ok(())
    }

    fn entry(&self, st: &State, gc: u64) -> Result<Cluster> {
        let mut one = [Cluster::Unallocated];
        self.entries(st, gc, &mut one)?;
        Ok(one[0])
    }

    /// Reads guest bytes that this image does not hold: from the backing file, zeros past it.
    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let avail = b.virtual_size().saturating_sub(offset).min(buf.len() as u64) as usize;
        if avail > 0 {
            b.read_at(&mut buf[..avail], offset)?;
        }
        buf[avail..].fill(0);
        Ok(())
    }

    /// Decompresses a compressed cluster whole.
    fn read_compressed(&self, host: u64, sectors: u64) -> Result<Vec<u8>> {
        let start = host & !511;
        let len = (sectors * 512).saturating_sub(host - start);
        let mut input = vec![0u8; len as usize];
        self.file.read_zero_fill(&mut input, host)?;
        let mut out = vec![0u8; self.cs() as usize];
        let codec = match self.header.compression {
            Compression::Zlib => Codec::Deflate,
            Compression::Zstd => Codec::Zstd,
        };
        decompress(codec, &input, &mut out).map_err(|why| {
            DiskError::corrupt(
                self.file.path(),
                format!("the compressed cluster at offset {host:#x} cannot be read: {why}"),
            )
        })?;
        Ok(out)
    }

    /// Reads part of one guest cluster, `buf` starting `within` bytes into it.
    fn read_cluster(&self, c: Cluster, gc: u64, within: u64, buf: &mut [u8]) -> Result<()> {
        match c {
            Cluster::Unallocated => {
                self.read_backing(buf, (gc << self.header.cluster_bits) + within)
            }
            Cluster::Zero { .. } => {
                buf.fill(0);
                Ok(())
            }
            Cluster::Normal { host, .. } => self.file.read_zero_fill(buf, host + within),
            Cluster::Compressed { host, sectors } => {
                let data = self.read_compressed(host, sectors)?;
                buf.copy_from_slice(&data[within as usize..within as usize + buf.len()]);
                Ok(())
            }
        }
    }

    /// Splits `[offset, offset + len)` into runs of clusters that share an L2 table, calling
    /// `f(first guest cluster, byte offset of the run in the request, cluster count)`.
    fn for_each_run(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let cs = self.cs();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let gc = pos / cs;
            let table_end_gc = (gc | (self.l2_entries() - 1)) + 1;
            let run_end = (table_end_gc * cs).min(end);
            let count = (run_end - 1) / cs - gc + 1;
            f(gc, pos - offset, count)?;
            pos = run_end;
        }
        Ok(())
    }

    /// Guest byte range of cluster `gc` that lies inside `[offset, end)`: (start, length).
    fn clip(&self, gc: u64, offset: u64, end: u64) -> (u64, u64) {
        let start = (gc * self.cs()).max(offset);
        let stop = ((gc + 1) * self.cs()).min(end);
        (start, stop - start)
    }

    /// Refuses in-place writes to a cluster that is really metadata or lies past the file.
    fn check_data_cluster(&self, st: &State, host: u64) -> Result<()> {
        let refs = st.refs.as_ref();
        let is_meta = st.l2_tables.contains(&host)
            || refs.is_some_and(|r| r.is_block(host) || r.is_fixed(host));
        if is_meta {
            return Err(DiskError::corrupt(
                self.file.path(),
                format!("a data cluster at offset {host:#x} overlaps metadata"),
            ));
        }
        if host >= self.file.known_len() {
            return Err(DiskError::corrupt(
                self.file.path(),
                format!("a data cluster at offset {host:#x} lies past the end of the file"),
            ));
        }
        Ok(())
    }

    fn refs<'a>(&self, st: &'a mut State) -> Result<&'a mut Refcounts> {
        st.refs.as_mut().ok_or_else(|| DiskError::ReadOnly { path: self.file.path().to_path_buf() })
    }

    /// Returns the L2 table for guest cluster `gc`, allocating it (steps 1 of the module docs).
    fn ensure_l2(&self, st: &mut State, gc: u64) -> Result<u64> {
        let existing = self.l2_table(st, gc);
        if existing != 0 {
            return Ok(existing);
        }
        let idx = gc >> self.header.l2_bits();
        let off = self.refs(st)?.alloc(&self.file)?;
        self.file.write_all_at(&vec![0u8; self.cs() as usize], off)?;
        let entry = off | COPIED;
        self.file.write_all_at(&entry.to_be_bytes(), self.header.l1_table_offset + idx * 8)?;
        st.l1[idx as usize] = entry;
        st.l2_tables.insert(off);
        Ok(off)
    }

    fn set_entry(&self, l2: u64, gc: u64, entry: u64) -> Result<()> {
        self.file.write_all_at(&entry.to_be_bytes(), l2 + (gc & (self.l2_entries() - 1)) * 8)
    }

    /// Drops this image's reference to the host clusters of an entry that was just replaced.
    fn release(&self, st: &mut State, old: Cluster) -> Result<()> {
        let refs = self.refs(st)?;
        match old {
            Cluster::Normal { host, .. } | Cluster::Zero { host: Some(host) } => {
                refs.release(&self.file, host)
            }
            Cluster::Compressed { host, sectors } => {
                let start = host & !511;
                let cs = 1u64 << self.header.cluster_bits;
                for c in start / cs..=(start + sectors * 512 - 1) / cs {
                    refs.release(&self.file, c * cs)?;
                }
                Ok(())
            }
            Cluster::Unallocated | Cluster::Zero { host: None } => Ok(()),
        }
    }

    /// Writes part of one guest cluster (`within` bytes into it).
    fn write_cluster(&self, st: &mut State, gc: u64, within: u64, data: &[u8]) -> Result<()> {
        let old = self.entry(st, gc)?;
        if let Cluster::Normal { host, copied: true } = old {
            self.check_data_cluster(st, host)?;
            return self.file.write_all_at(data, host + within);
        }
        let mut cluster = vec![0u8; self.cs() as usize];
        if within != 0 || data.len() as u64 != self.cs() {
            self.read_cluster(old, gc, 0, &mut cluster)?;
        }
        cluster[within as usize..within as usize + data.len()].copy_from_slice(data);
        let l2 = self.ensure_l2(st, gc)?;
        let host = self.refs(st)?.alloc(&self.file)?;
        self.file.write_all_at(&cluster, host)?;
        self.set_entry(l2, gc, host | COPIED)?;
        self.release(st, old)
    }

    /// Makes whole guest cluster `gc` read as zeros (`zero`) or unallocated, freeing its data.
    fn drop_cluster(&self, st: &mut State, gc: u64, zero: bool) -> Result<()> {
        let old = self.entry(st, gc)?;
        let new = if zero { ZERO } else { 0 };
        let unchanged = match old {
            Cluster::Unallocated => !zero,
            Cluster::Zero { host: None } => zero,
            _ => false,
        };
        if unchanged {
            return Ok(());
        }
        let l2 = self.ensure_l2(st, gc)?;
        self.set_entry(l2, gc, new)?;
        self.release(st, old)
    }

    /// Applies `zero`/`discard` semantics over a range. `partial` handles parts of clusters.
    fn drop_range(&self, offset: u64, len: u64, zero_request: bool) -> Result<()> {
        let mut st = self.write_state()?;
        check_range(offset, len, self.header.size)?;
        let end = offset + len;
        let size = self.header.size;
        let cs = self.cs();
        let v3 = self.header.version == 3;
        let mut gc = offset / cs;
        while gc * cs < end {
            let (start, n) = self.clip(gc, offset, end);
            let whole = start == gc * cs && (n == cs || start + n == size);
            let entry = self.entry(&st, gc)?;
            let reads_zero = matches!(entry, Cluster::Zero { .. })
                || (entry == Cluster::Unallocated && self.backing.is_none());
            if whole && self.backing.is_none() {
                self.drop_cluster(&mut st, gc, false)?;
            } else if whole && v3 {
                self.drop_cluster(&mut st, gc, true)?;
            } else if zero_request && !reads_zero {
                self.write_cluster(&mut st, gc, start - gc * cs, &vec![0u8; n as usize])?;
            }
            gc += 1;
        }
        Ok(())
    }
}

impl DiskImage for Qcow2 {
    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.header.size)?;
        let st = self.read_state();
        let end = offset + buf.len() as u64;
        let mut chunk = [Cluster::Unallocated; ENTRY_CHUNK];
        let mut run = ReadRun::default();
        self.for_each_run(offset, buf.len() as u64, |gc, at, count| {
            let mut pos = at as usize;
            for first in (gc..gc + count).step_by(ENTRY_CHUNK) {
                let entries = &mut chunk[..(gc + count - first).min(ENTRY_CHUNK as u64) as usize];
                self.entries(&st, first, entries)?;
                for (g, &c) in (first..).zip(entries.iter()) {
                    let (start, n) = self.clip(g, offset, end);
                    let within = start - g * self.cs();
                    if let Cluster::Normal { host, .. } = c {
                        run.add(&self.file, buf, host + within, pos, n as usize)?;
                    } else {
                        run.flush(&self.file, buf)?;
                        self.read_cluster(c, g, within, &mut buf[pos..pos + n as usize])?;
                    }
                    pos += n as usize;
                }
            }
            Ok(())
        })?;
        run.flush(&self.file, buf)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut st = self.write_state()?;
        check_range(offset, buf.len() as u64, self.header.size)?;
        let end = offset + buf.len() as u64;
        let mut pos = 0usize;
        let mut gc = offset / self.cs();
        while pos < buf.len() {
            let (start, n) = self.clip(gc, offset, end);
            self.write_cluster(&mut st, gc, start - gc * self.cs(), &buf[pos..pos + n as usize])?;
            pos += n as usize;
            gc += 1;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.file.is_writable() {
            let _st = self.read_state();
            self.file.sync()?;
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.drop_range(offset, len, false)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.drop_range(offset, len, true)
    }

    fn is_read_only(&self) -> bool {
        !self.file.is_writable()
    }

    fn files(&self) -> Vec<OpenFile> {
        let mut fds = vec![self.file.open_file()];
        if let Some(b) = &self.backing {
            fds.extend(b.files());
        }
        fds
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            path: self.file.path().to_path_buf(),
            format: Format::Qcow2,
            subformat: Some(if self.header.version == 2 { "0.10" } else { "1.1" }.to_string()),
            virtual_size: self.header.size,
            cluster_size: Some(self.cs()),
            allocated_bytes: self.file.allocated_bytes(),
            files: vec![self.file.path().to_path_buf()],
            extents: Vec::new(),
            backing: self.backing.as_ref().map(|b| Box::new(b.info())),
            read_only: self.is_read_only(),
        }
    }

    fn map(&self, offset: u64, len: u64) -> Result<(Mapping, u64)> {
        check_range(offset, len, self.header.size)?;
        if len == 0 {
            return Ok((Mapping::Data, 0));
        }
        let st = self.read_state();
        let cs = self.cs();
        let first = self.entry(&st, offset / cs)?;
        let class = |c: Cluster| match c {
            Cluster::Unallocated => 0,
            Cluster::Zero { .. } => 1,
            _ => 2,
        };
        let mut gc = offset / cs + 1;
        while gc * cs < offset + len && class(self.entry(&st, gc)?) == class(first) {
            gc += 1;
        }
        let run = (gc * cs).min(offset + len) - offset;
        match (first, &self.backing) {
            (Cluster::Unallocated, Some(b)) if offset < b.virtual_size() => {
                b.map(offset, run.min(b.virtual_size() - offset))
            }
            (Cluster::Unallocated, _) | (Cluster::Zero { .. }, _) => Ok((Mapping::Zero, run)),
            _ => Ok((Mapping::Data, run)),
        }
    }

    fn check(&self) -> Result<CheckReport> {
        let _st = self.read_state();
        check::check(&self.file, &self.header)
    }
}
