//! Qcow2 refcounts: reading, setting, allocating clusters and growing the refcount table.
//!
//! The refcount table (kept in memory, at most 8 MiB) points at refcount blocks; each block
//! holds `cluster_size * 8 / refcount_bits` entries. Entries are written in the file with
//! `pwrite` before the call returns, so a reopening process sees every update; they are read
//! through the image file's write-through table cache.
//!
//! Ordering: a new refcount block is written (with its own refcount already 1) before the table
//! entry that names it; table growth writes the new blocks and table, then the header, then frees
//! the old table. A crash at any point leaves at worst leaked clusters.

use super::header::{
    put64, ranges_overlap, Header, FORMAT, MAX_REFTABLE_BYTES, REFTABLE_FIELDS_OFFSET,
};
use crate::error::{DiskError, Result};
use crate::file::ImageFile;
use std::collections::HashSet;

/// Mask of the offset bits of a refcount table (and L1/L2) entry.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Outcome of a search for a free cluster.
enum Free {
    /// This cluster is free and covered by the refcount table.
    At(u64),
    /// Every covered cluster from the hint on is used; the table must grow to cover this one.
    Beyond(u64),
}

/// The refcount structures of a writable image.
pub(crate) struct Refcounts {
    table: Vec<u64>,
    table_offset: u64,
    table_clusters: u64,
    blocks: HashSet<u64>,
    order: u32,
    cluster_bits: u32,
    free_hint: u64,
    /// Byte ranges that are metadata at fixed places: never handed out, whatever the refcounts say.
    fixed: Vec<(u64, u64)>,
}

impl Refcounts {
    /// Reads the refcount table of `file` and checks every block it names.
    pub fn load(file: &ImageFile, h: &Header) -> Result<Self> {
        let cs = h.cluster_size();
        let bytes = u64::from(h.refcount_table_clusters) * cs;
        let raw = crate::file::bounded_vec(
            file.path(),
            FORMAT,
            "refcount table",
            bytes,
            MAX_REFTABLE_BYTES,
        )?;
        let mut raw = raw;
        file.read_exact_at(&mut raw, h.refcount_table_offset, FORMAT, "refcount table")?;
        let table: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()) & OFFSET_MASK)
            .collect();
        let fixed = vec![
            (0, cs),
            (h.l1_table_offset, (u64::from(h.l1_size) * 8).div_ceil(cs) * cs),
            (h.refcount_table_offset, bytes),
        ];
        let file_len = file.len()?;
        let mut blocks = HashSet::new();
        for &off in table.iter().filter(|&&o| o != 0) {
            let bad = |why: &str| {
                DiskError::malformed(
                    file.path(),
                    FORMAT,
                    format!("a refcount block at offset {off:#x} {why}"),
                )
            };
            if off % cs != 0 {
                return Err(bad("is not aligned to a cluster"));
            }
            if off.saturating_add(cs) > file_len {
                return Err(bad("lies past the end of the file"));
            }
            if fixed.iter().any(|&r| ranges_overlap(r, (off, cs))) {
                return Err(bad("overlaps the header, the L1 table or the refcount table"));
            }
            if !blocks.insert(off) {
                return Err(bad("is named twice in the refcount table"));
            }
        }
        Ok(Refcounts {
            table,
            table_offset: h.refcount_table_offset,
            table_clusters: u64::from(h.refcount_table_clusters),
            blocks,
            order: h.refcount_order,
            cluster_bits: h.cluster_bits,
            free_hint: 0,
            fixed,
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries per refcount block.
    fn rb_entries(&self) -> u64 {
        (self.cs() * 8) >> self.order
    }

    fn max_value(&self) -> u64 {
        if self.order == 6 {
            u64::MAX
        } else {
            (1u64 << (1u32 << self.order)) - 1
        }
    }

    /// Offsets of all refcount blocks.
    pub fn block_offsets(&self) -> Vec<u64> {
        self.table.iter().copied().filter(|&o| o != 0).collect()
    }

    /// Number of clusters up to the end of the last refcount block's range.
    pub fn covered_clusters(&self) -> u64 {
        let last = self.table.iter().rposition(|&o| o != 0).map_or(0, |i| i as u64 + 1);
        last * self.rb_entries()
    }

    /// True when `off` (a cluster offset) is one of the refcount blocks.
    pub fn is_block(&self, off: u64) -> bool {
        self.blocks.contains(&off)
    }

    /// True when the cluster at `off` is part of the header, L1 table or refcount table.
    pub fn is_fixed(&self, off: u64) -> bool {
        self.fixed.iter().any(|&r| ranges_overlap(r, (off, self.cs())))
    }

    /// Where entry `index` of a block lives: (byte offset in the block, bytes, bit shift).
    fn entry_pos(&self, index: u64) -> (u64, usize, u32) {
        let width = 1u64 << self.order;
        if width >= 8 {
            (index * width / 8, (width / 8) as usize, 0)
        } else {
            let per_byte = 8 / width;
            (index / per_byte, 1, ((index % per_byte) * width) as u32)
        }
    }

    fn decode(&self, bytes: &[u8], shift: u32) -> u64 {
        let v = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        if self.order < 3 {
            (v >> shift) & self.max_value()
        } else {
            v
        }
    }

    /// Refcount of cluster number `cluster`.
    pub fn get(&self, file: &ImageFile, cluster: u64) -> Result<u64> {
        let idx = cluster / self.rb_entries();
        let Some(&block) = self.table.get(idx as usize) else {
            return Ok(0);
        };
        if block == 0 {
            return Ok(0);
        }
        let (pos, n, shift) = self.entry_pos(cluster % self.rb_entries());
        let mut bytes = [0u8; 8];
        file.read_table(&mut bytes[..n], block + pos, FORMAT, "refcount block")?;
        Ok(self.decode(&bytes[..n], shift))
    }

    /// Sets the refcount of `cluster`, creating its refcount block if needed. The cluster must be
    /// covered by the table.
    pub fn set(&mut self, file: &ImageFile, cluster: u64, value: u64) -> Result<()> {
        if value > self.max_value() {
            return Err(DiskError::corrupt(
                file.path(),
                format!("the refcount of cluster {cluster} would overflow"),
            ));
        }
        let idx = (cluster / self.rb_entries()) as usize;
        if idx >= self.table.len() {
            return Err(DiskError::corrupt(
                file.path(),
                format!("cluster {cluster} is not covered by the refcount table"),
            ));
        }
        if self.table[idx] == 0 {
            self.create_block(file, idx as u64, cluster)?;
        }
        let block = self.table[idx];
        let (pos, n, shift) = self.entry_pos(cluster % self.rb_entries());
        let mut bytes = [0u8; 8];
        if self.order < 3 {
            file.read_table(&mut bytes[..1], block + pos, FORMAT, "refcount block")?;
            let mask = (self.max_value() as u8) << shift;
            bytes[0] = (bytes[0] & !mask) | (((value as u8) << shift) & mask);
        } else {
            let be = value.to_be_bytes();
            bytes[..n].copy_from_slice(&be[8 - n..]);
        }
        file.write_all_at(&bytes[..n], block + pos)
    }

    /// Writes a new refcount block for range `idx`, placed inside that range and counting itself,
    /// then points the table at it. `avoid` is a cluster the caller is about to use.
    fn create_block(&mut self, file: &ImageFile, idx: u64, avoid: u64) -> Result<()> {
        let first = idx * self.rb_entries();
        let at = if first == avoid { first + 1 } else { first };
        let off = at << self.cluster_bits;
        if self.is_fixed(off) {
            return Err(DiskError::corrupt(
                file.path(),
                format!("cluster {at} is metadata but has no refcount"),
            ));
        }
        let mut block = vec![0u8; self.cs() as usize];
        let (pos, n, shift) = self.entry_pos(at - first);
        if self.order < 3 {
            block[pos as usize] = 1 << shift;
        } else {
            block[pos as usize + n - 1] = 1;
        }
        file.write_all_at(&block, off)?;
        let mut entry = [0u8; 8];
        put64(&mut entry, 0, off);
        file.write_all_at(&entry, self.table_offset + idx * 8)?;
        self.table[idx as usize] = off;
        self.blocks.insert(off);
        Ok(())
    }

    /// Allocates one cluster (refcount set to 1 in the file) and returns its byte offset.
    pub fn alloc(&mut self, file: &ImageFile) -> Result<u64> {
        loop {
            match self.find_free(file)? {
                Free::At(c) => {
                    self.set(file, c, 1)?;
                    self.free_hint = c + 1;
                    return Ok(c << self.cluster_bits);
                }
                Free::Beyond(c) => self.grow(file, c)?,
            }
        }
    }

    fn find_free(&mut self, file: &ImageFile) -> Result<Free> {
        let rbe = self.rb_entries();
        let mut c = self.free_hint;
        let mut block = Vec::new();
        loop {
            let idx = c / rbe;
            let Some(&off) = self.table.get(idx as usize) else {
                return Ok(Free::Beyond(c));
            };
            if off == 0 {
                if !self.is_fixed(c << self.cluster_bits) {
                    return Ok(Free::At(c));
                }
                c += 1;
                continue;
            }
            block.resize(self.cs() as usize, 0);
            file.read_exact_at(&mut block, off, FORMAT, "refcount block")?;
            for i in c % rbe..rbe {
                let (pos, n, shift) = self.entry_pos(i);
                let cluster = idx * rbe + i;
                let v = self.decode(&block[pos as usize..pos as usize + n], shift);
                if v == 0 && !self.is_fixed(cluster << self.cluster_bits) {
                    return Ok(Free::At(cluster));
                }
            }
            c = (idx + 1) * rbe;
        }
    }

    /// Decrements the refcount of the cluster at byte offset `off`.
    pub fn release(&mut self, file: &ImageFile, off: u64) -> Result<()> {
        let c = off >> self.cluster_bits;
        let v = self.get(file, c)?;
        if v == 0 {
            return Err(DiskError::corrupt(
                file.path(),
                format!("cluster at offset {off:#x} is in use but its refcount is zero"),
            ));
        }
        self.set(file, c, v - 1)?;
        if v == 1 {
            self.free_hint = self.free_hint.min(c);
        }
        Ok(())
    }

    /// Sizes a new table and its area so that the table covers `needed` and the area covers
    /// itself: returns (first area cluster, refcount blocks, table clusters).
    fn plan_growth(&self, file_len: u64, needed: u64) -> (u64, u64, u64) {
        let rbe = self.rb_entries();
        let entries_per_cluster = self.cs() / 8;
        let start = file_len.div_ceil(self.cs()).max(self.table.len() as u64 * rbe);
        let (mut nrb, mut tc) = (1u64, self.table_clusters + self.table_clusters.div_ceil(2));
        loop {
            let end = start + nrb + tc;
            let entries = end.div_ceil(rbe).max(needed / rbe + 1);
            let tc_need = entries.div_ceil(entries_per_cluster).max(tc);
            let nrb_need = (end - 1) / rbe - start / rbe + 1;
            if tc_need == tc && nrb_need == nrb {
                return (start, nrb, tc);
            }
            (nrb, tc) = (nrb.max(nrb_need), tc_need);
        }
    }

    /// Moves the refcount table to a bigger one at the end of the file.
    fn grow(&mut self, file: &ImageFile, needed: u64) -> Result<()> {
        let (start, nrb, tc) = self.plan_growth(file.len()?, needed);
        if tc * self.cs() > MAX_REFTABLE_BYTES {
            return Err(DiskError::corrupt(
                file.path(),
                "the image is full: its refcount table cannot grow past 8 MiB",
            ));
        }
        let rbe = self.rb_entries();
        let end = start + nrb + tc;
        let mut table = self.table.clone();
        table.resize((tc * self.cs() / 8) as usize, 0);
        for k in 0..nrb {
            let idx = start / rbe + k;
            let mut block = vec![0u8; self.cs() as usize];
            for c in (idx * rbe).max(start)..((idx + 1) * rbe).min(end) {
                let (pos, n, shift) = self.entry_pos(c - idx * rbe);
                if self.order < 3 {
                    block[pos as usize] |= 1 << shift;
                } else {
                    block[pos as usize + n - 1] = 1;
                }
            }
            let off = (start + k) << self.cluster_bits;
            file.write_all_at(&block, off)?;
            table[idx as usize] = off;
        }
        let table_off = (start + nrb) << self.cluster_bits;
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        file.write_all_at(&bytes, table_off)?;
        let mut fields = [0u8; 12];
        fields[..8].copy_from_slice(&table_off.to_be_bytes());
        fields[8..].copy_from_slice(&(tc as u32).to_be_bytes());
        file.write_all_at(&fields, REFTABLE_FIELDS_OFFSET)?;
        let (old_off, old_clusters) = (self.table_offset, self.table_clusters);
        for k in 0..nrb {
            self.blocks.insert((start + k) << self.cluster_bits);
        }
        self.table = table;
        self.table_offset = table_off;
        self.table_clusters = tc;
        self.fixed[2] = (table_off, tc * self.cs());
        for k in 0..old_clusters {
            self.release(file, old_off + (k << self.cluster_bits))?;
        }
        Ok(())
    }
}

/// Reads the refcount of every cluster of a file (for checks): returns one value per cluster
/// from 0 to `clusters`, or an error text for blocks that cannot be read.
pub(crate) fn read_all(file: &ImageFile, h: &Header, clusters: u64) -> Result<Vec<u64>> {
    let rc = Refcounts::load(file, h)?;
    let rbe = rc.rb_entries();
    let mut out = vec![0u64; clusters as usize];
    let mut block = vec![0u8; rc.cs() as usize];
    for (idx, &off) in rc.table.iter().enumerate() {
        if off == 0 || idx as u64 * rbe >= clusters {
            continue;
        }
        file.read_exact_at(&mut block, off, FORMAT, "refcount block")?;
        for i in 0..rbe {
            let c = idx as u64 * rbe + i;
            if c >= clusters {
                break;
            }
            let (pos, n, shift) = rc.entry_pos(i);
            out[c as usize] = rc.decode(&block[pos as usize..pos as usize + n], shift);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(order: u32) -> Refcounts {
        Refcounts {
            table: vec![0; 1],
            table_offset: 512,
            table_clusters: 1,
            blocks: HashSet::new(),
            order,
            cluster_bits: 9,
            free_hint: 0,
            fixed: vec![(0, 512), (1024, 512), (512, 512)],
        }
    }

    #[test]
    fn entry_positions_for_every_width() {
        assert_eq!(rc(0).entry_pos(9), (1, 1, 1));
        assert_eq!(rc(2).entry_pos(3), (1, 1, 4));
        assert_eq!(rc(4).entry_pos(3), (6, 2, 0));
        assert_eq!(rc(6).entry_pos(2), (16, 8, 0));
        assert_eq!(rc(4).rb_entries(), 256);
        assert_eq!(rc(0).max_value(), 1);
        assert_eq!(rc(6).max_value(), u64::MAX);
    }

    #[test]
    fn growth_plan_covers_itself() {
        let r = rc(4);
        let (start, nrb, tc) = r.plan_growth(300 * 512, 256);
        assert_eq!(start, 300);
        let end = start + nrb + tc;
        assert!(tc * 64 >= end.div_ceil(256));
        assert_eq!(nrb, (end - 1) / 256 - start / 256 + 1);
    }
}
