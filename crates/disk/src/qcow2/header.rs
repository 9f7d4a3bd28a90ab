//! The qcow2 header and its extensions: parsing with every field checked, and serializing.
//!
//! Layout (big-endian), see QEMU's `docs/interop/qcow2.rst`: bytes 0..72 are common to v2 and
//! v3; v3 adds feature bitmaps, the refcount order and the header length, and optionally the
//! compression type at byte 104. Extensions (type, length, data padded to 8 bytes) follow the
//! header up to the end of the first cluster; the backing file name is stored anywhere in it.

use crate::error::{DiskError, Result};
use crate::file::ImageFile;

pub(crate) const FORMAT: &str = "qcow2";
const V2_HEADER_LEN: usize = 72;
const V3_HEADER_LEN: usize = 104;
/// Header length this crate writes for v3 (with the compression type field, padded).
pub(crate) const V3_WRITTEN_LEN: u32 = 112;
/// Largest L1 table accepted, in bytes (QEMU's limit).
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted, in bytes (QEMU's limit).
pub(crate) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Longest backing file name (QEMU's limit).
const MAX_BACKING_NAME: u32 = 1023;

pub(crate) const EXT_END: u32 = 0;
pub(crate) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Byte offset of `refcount_table_offset` (followed by `refcount_table_clusters`).
pub(crate) const REFTABLE_FIELDS_OFFSET: u64 = 48;
/// Byte offset of `autoclear_features`.
pub(crate) const AUTOCLEAR_OFFSET: u64 = 88;

/// How compressed clusters are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Raw deflate (no zlib header), window of 4 KiB.
    Zlib,
    /// Zstandard frames.
    Zstd,
}

/// A parsed, validated qcow2 header.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: Compression,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// log2 of the number of entries of an L2 table.
    pub fn l2_bits(&self) -> u32 {
        self.cluster_bits - 3
    }

    /// Number of L1 entries a disk of `size` bytes needs, or None on overflow.
    pub fn l1_entries_for(size: u64, cluster_bits: u32) -> Option<u64> {
        let per_l2 = 1u64.checked_shl(cluster_bits + cluster_bits - 3)?;
        Some(size.div_ceil(per_l2))
    }

    /// Reads and validates the header of `file`.
    pub fn read(file: &ImageFile) -> Result<Header> {
        let path = file.path();
        let bad = |reason: String| DiskError::malformed(path, FORMAT, reason);
        let file_len = file.len()?;
        if file_len < V2_HEADER_LEN as u64 {
            return Err(bad(format!(
                "the header is truncated: the file has only {file_len} bytes"
            )));
        }
        let mut fixed = [0u8; V2_HEADER_LEN];
        file.read_exact_at(&mut fixed, 0, FORMAT, "header")?;
        if &fixed[0..4] != crate::probe::QCOW2_MAGIC {
            return Err(bad("the file does not start with the qcow2 magic".into()));
        }
        let version = be32(&fixed, 4);
        if version != 2 && version != 3 {
            return Err(DiskError::unsupported(path, FORMAT, format!("version {version}")));
        }
        let cluster_bits = be32(&fixed, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(format!(
                "cluster_bits is {cluster_bits}; it must lie between 9 (512 bytes) and 21 (2 MiB)"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        // The header and its extensions lie in the first cluster; read it whole (bounded by 2 MiB).
        let mut first = vec![0u8; cluster_size.min(file_len) as usize];
        file.read_exact_at(&mut first, 0, FORMAT, "first cluster")?;
        let mut h = Self::parse_fields(&first, path)?;
        h.read_backing_name(&first, path)?;
        h.read_extensions(&first, path)?;
        h.validate(path, file_len)?;
        Ok(h)
    }

    fn parse_fields(b: &[u8], path: &std::path::Path) -> Result<Header> {
        let bad = |reason: String| DiskError::malformed(path, FORMAT, reason);
        let version = be32(b, 4);
        let crypt = be32(b, 32);
        if crypt != 0 {
            return Err(DiskError::unsupported(path, FORMAT, "encryption"));
        }
        let mut h = Header {
            version,
            cluster_bits: be32(b, 20),
            size: be64(b, 24),
            l1_size: be32(b, 36),
            l1_table_offset: be64(b, 40),
            refcount_table_offset: be64(b, 48),
            refcount_table_clusters: be32(b, 56),
            nb_snapshots: be32(b, 60),
            snapshots_offset: be64(b, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            compression: Compression::Zlib,
            backing_file: None,
            backing_format: None,
        };
        // Backing name location, validated in read_backing_name.
        if version == 3 {
            if b.len() < V3_HEADER_LEN {
                return Err(bad(format!(
                    "the version 3 header is truncated: the file has only {} bytes",
                    b.len()
                )));
            }
            h.incompatible = be64(b, 72);
            h.compatible = be64(b, 80);
            h.autoclear = be64(b, 88);
            h.refcount_order = be32(b, 96);
            h.header_length = be32(b, 100);
            if (h.header_length as usize) < V3_HEADER_LEN || h.header_length as usize > b.len() {
                return Err(bad(format!(
                    "its header length {} is outside the first cluster",
                    h.header_length
                )));
            }
            if !h.header_length.is_multiple_of(8) {
                return Err(bad(format!(
                    "its header length {} is not a multiple of 8",
                    h.header_length
                )));
            }
            h.compression = Self::compression(b, &h, path)?;
        }
        Ok(h)
    }

    fn compression(b: &[u8], h: &Header, path: &std::path::Path) -> Result<Compression> {
        if h.incompatible & INCOMPAT_COMPRESSION == 0 {
            return Ok(Compression::Zlib);
        }
        if h.header_length < 105 {
            return Err(DiskError::malformed(
                path,
                FORMAT,
                "the compression type bit is set but the header has no compression type field",
            ));
        }
        match b[104] {
            0 => Ok(Compression::Zlib),
            1 => Ok(Compression::Zstd),
            t => Err(DiskError::unsupported(path, FORMAT, format!("compression type {t}"))),
        }
    }

    fn read_backing_name(&mut self, b: &[u8], path: &std::path::Path) -> Result<()> {
        let offset = be64(b, 8);
        let len = be32(b, 16);
        if offset == 0 {
            return Ok(());
        }
        if len == 0 || len > MAX_BACKING_NAME {
            return Err(DiskError::malformed(
                path,
                FORMAT,
                format!(
                    "its backing file name is {len} bytes long; the limit is {MAX_BACKING_NAME}"
                ),
            ));
        }
        let end = offset.checked_add(u64::from(len)).filter(|&e| e <= b.len() as u64);
        let Some(end) = end else {
            return Err(DiskError::malformed(
                path,
                FORMAT,
                "its backing file name lies outside the first cluster",
            ));
        };
        let name = std::str::from_utf8(&b[offset as usize..end as usize]).map_err(|_| {
            DiskError::malformed(path, FORMAT, "its backing file name is not UTF-8")
        })?;
        self.backing_file = Some(name.to_string());
        Ok(())
    }

    fn read_extensions(&mut self, b: &[u8], path: &std::path::Path) -> Result<()> {
        let bad = |reason: &str| DiskError::malformed(path, FORMAT, reason.to_string());
        let mut pos = self.header_length as usize;
        loop {
            if pos + 8 > b.len() {
                return Err(bad("its header extensions run past the end of the first cluster"));
            }
            let kind = be32(b, pos);
            let len = be32(b, pos + 4) as usize;
            if kind == EXT_END {
                return Ok(());
            }
            let data_end = pos + 8 + len;
            if data_end > b.len() {
                return Err(bad("a header extension runs past the end of the first cluster"));
            }
            if kind == EXT_BACKING_FORMAT {
                let fmt = std::str::from_utf8(&b[pos + 8..data_end])
                    .map_err(|_| bad("its backing format name is not UTF-8"))?;
                self.backing_format = Some(fmt.trim_end_matches('\0').to_string());
            }
            pos = data_end.div_ceil(8) * 8;
        }
    }

    fn validate(&self, path: &std::path::Path, file_len: u64) -> Result<()> {
        let bad = |reason: String| DiskError::malformed(path, FORMAT, reason);
        let cs = self.cluster_size();
        let unknown = self.incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(DiskError::unsupported(
                path,
                FORMAT,
                format!("unknown incompatible features {unknown:#x}"),
            ));
        }
        if self.incompatible & INCOMPAT_DATA_FILE != 0 {
            return Err(DiskError::unsupported(path, FORMAT, "external data files"));
        }
        if self.incompatible & INCOMPAT_EXTL2 != 0 {
            return Err(DiskError::unsupported(path, FORMAT, "extended L2 entries (subclusters)"));
        }
        if self.refcount_order > 6 {
            return Err(bad(format!("its refcount order {} is above 6", self.refcount_order)));
        }
        let need = Self::l1_entries_for(self.size, self.cluster_bits)
            .ok_or_else(|| bad(format!("its virtual size {} overflows", self.size)))?;
        if u64::from(self.l1_size) < need {
            return Err(bad(format!(
                "its L1 table has {} entries; a disk of {} bytes needs {need}",
                self.l1_size, self.size
            )));
        }
        if u64::from(self.l1_size) * 8 > MAX_L1_BYTES {
            return Err(bad(format!(
                "its L1 table of {} entries is larger than the 32 MiB limit",
                self.l1_size
            )));
        }
        let reftable_bytes = u64::from(self.refcount_table_clusters) * cs;
        if self.refcount_table_clusters == 0 || reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(bad(format!(
                "its refcount table of {} clusters is empty or larger than the 8 MiB limit",
                self.refcount_table_clusters
            )));
        }
        let l1 = (self.l1_table_offset, u64::from(self.l1_size) * 8);
        let rt = (self.refcount_table_offset, reftable_bytes);
        for (what, (off, len)) in [("L1 table", l1), ("refcount table", rt)] {
            if len == 0 {
                continue;
            }
            if off % cs != 0 || off == 0 {
                return Err(bad(format!(
                    "its {what} offset {off:#x} is not a non-zero multiple of the cluster size"
                )));
            }
            if off.checked_add(len).is_none_or(|end| end > file_len) {
                return Err(bad(format!(
                    "its {what} at offset {off:#x} ({len} bytes) lies past the end of the file"
                )));
            }
        }
        if l1.1 > 0 && ranges_overlap(l1, rt) {
            return Err(bad("its L1 table and refcount table overlap".into()));
        }
        if self.nb_snapshots > 0
            && (!self.snapshots_offset.is_multiple_of(cs) || self.snapshots_offset == 0)
        {
            return Err(bad(format!(
                "its snapshot table offset {:#x} is not a non-zero multiple of the cluster size",
                self.snapshots_offset
            )));
        }
        Ok(())
    }

    /// Serializes the header, its extensions and the backing file name into one cluster.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.cluster_size() as usize];
        b[0..4].copy_from_slice(crate::probe::QCOW2_MAGIC);
        put32(&mut b, 4, self.version);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 60, self.nb_snapshots);
        put64(&mut b, 64, self.snapshots_offset);
        if self.version == 3 {
            put64(&mut b, 72, self.incompatible);
            put64(&mut b, 80, self.compatible);
            put64(&mut b, 88, self.autoclear);
            put32(&mut b, 96, self.refcount_order);
            put32(&mut b, 100, self.header_length);
            b[104] = if self.compression == Compression::Zstd { 1 } else { 0 };
        }
        let mut pos = self.header_length as usize;
        if let Some(fmt) = &self.backing_format {
            if pos + 16 + fmt.len() > b.len() / 2 {
                return Err(DiskError::InvalidArgument(format!(
                    "the backing format name {fmt:?} is too long"
                )));
            }
            put32(&mut b, pos, EXT_BACKING_FORMAT);
            put32(&mut b, pos + 4, fmt.len() as u32);
            b[pos + 8..pos + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
            pos += 8 + fmt.len().div_ceil(8) * 8;
        }
        put32(&mut b, pos, EXT_END);
        pos += 8;
        if let Some(name) = &self.backing_file {
            if name.len() > MAX_BACKING_NAME as usize || pos + name.len() > b.len() {
                return Err(DiskError::InvalidArgument(format!(
                    "the backing file name {name:?} is too long"
                )));
            }
            put64(&mut b, 8, pos as u64);
            put32(&mut b, 16, name.len() as u32);
            b[pos..pos + name.len()].copy_from_slice(name.as_bytes());
        }
        Ok(b)
    }
}

pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// True when the byte ranges `(offset, len)` share a byte.
pub(crate) fn ranges_overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}
