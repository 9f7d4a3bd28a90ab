//! Creating empty qcow2 images.
//!
//! Layout, all from cluster 0: the header (with the backing file name and extensions), the
//! refcount table, the refcount blocks that count all of these, then the L1 table. Every one of
//! those clusters has refcount 1 and nothing else is allocated, so the image is clean for
//! `qemu-img check` from the start.

use super::header::{Compression, Header, MAX_L1_BYTES, V3_WRITTEN_LEN};
use crate::error::{DiskError, Result};
use crate::file::ImageFile;
use crate::Format;
use std::path::Path;

/// Qcow2 versions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Qcow2Version {
    /// Version 2, `compat=0.10`: no zero clusters.
    V2,
    /// Version 3, `compat=1.1`.
    #[default]
    V3,
}

/// How to create a qcow2 image.
#[derive(Clone, Debug)]
pub struct Qcow2CreateOptions {
    /// Version.
    pub version: Qcow2Version,
    /// Cluster size in bytes: a power of two from 512 to 2 MiB.
    pub cluster_size: u64,
    /// Backing file name, written as given (relative names are relative to the new image).
    pub backing_file: Option<String>,
    /// Format of the backing file, recorded in the image.
    pub backing_format: Option<Format>,
}

impl Default for Qcow2CreateOptions {
    fn default() -> Self {
        Qcow2CreateOptions {
            version: Qcow2Version::V3,
            cluster_size: 65536,
            backing_file: None,
            backing_format: None,
        }
    }
}

/// Refcount order this crate creates images with (16-bit refcounts, as QEMU).
const REFCOUNT_ORDER: u32 = 4;

/// Creates an empty image of `size` bytes at `path`.
pub(crate) fn create(path: &Path, size: u64, opts: &Qcow2CreateOptions) -> Result<()> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(DiskError::InvalidArgument(format!(
            "the cluster size {cs} is not a power of two from 512 to 2 MiB"
        )));
    }
    let cluster_bits = cs.trailing_zeros();
    let l1_entries = Header::l1_entries_for(size, cluster_bits)
        .filter(|&n| n * 8 <= MAX_L1_BYTES)
        .ok_or_else(|| {
            DiskError::InvalidArgument(format!(
                "a size of {size} bytes needs an L1 table above 32 MiB; use bigger clusters"
            ))
        })?;
    let l1_clusters = (l1_entries * 8).div_ceil(cs);
    let rb_entries = (cs * 8) >> REFCOUNT_ORDER;
    // Header, refcount table, refcount blocks, L1: find block/table counts that cover it all.
    let (mut rt_clusters, mut blocks) = (1u64, 1u64);
    loop {
        let total = 1 + rt_clusters + blocks + l1_clusters;
        let need_blocks = total.div_ceil(rb_entries);
        let need_rt = (need_blocks * 8).div_ceil(cs);
        if need_blocks == blocks && need_rt == rt_clusters {
            break;
        }
        (blocks, rt_clusters) = (need_blocks.max(blocks), need_rt.max(rt_clusters));
    }
    let total = 1 + rt_clusters + blocks + l1_clusters;
    let v3 = opts.version == Qcow2Version::V3;
    let header = Header {
        version: if v3 { 3 } else { 2 },
        cluster_bits,
        size,
        l1_size: l1_entries as u32,
        l1_table_offset: (1 + rt_clusters + blocks) * cs,
        refcount_table_offset: cs,
        refcount_table_clusters: rt_clusters as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible: 0,
        compatible: 0,
        autoclear: 0,
        refcount_order: REFCOUNT_ORDER,
        header_length: if v3 { V3_WRITTEN_LEN } else { 72 },
        compression: Compression::Zlib,
        backing_file: opts.backing_file.clone(),
        backing_format: opts.backing_format.map(|f| f.name().to_string()),
    };
    let file = ImageFile::create(path)?;
    file.write_all_at(&header.to_bytes()?, 0)?;
    let mut table = vec![0u8; (rt_clusters * cs) as usize];
    for b in 0..blocks {
        let off = (1 + rt_clusters + b) * cs;
        table[b as usize * 8..b as usize * 8 + 8].copy_from_slice(&off.to_be_bytes());
    }
    file.write_all_at(&table, cs)?;
    for b in 0..blocks {
        let mut block = vec![0u8; cs as usize];
        for c in b * rb_entries..((b + 1) * rb_entries).min(total) {
            let i = (c - b * rb_entries) as usize;
            block[i * 2 + 1] = 1;
        }
        file.write_all_at(&block, (1 + rt_clusters + b) * cs)?;
    }
    file.set_len(total * cs)?;
    file.sync()
}
