//! Consistency check of a qcow2 image: rebuilds every cluster's reference count from the
//! tables and compares it with the stored refcounts, as `qemu-img check` does.

use super::header::{Header, FORMAT};
use super::refcount::{read_all, Refcounts, OFFSET_MASK};
use super::{COMPRESSED, COPIED, ZERO};
use crate::error::Result;
use crate::file::ImageFile;
use crate::CheckReport;

/// Largest number of clusters a check counts (memory: 12 bytes each).
const MAX_CHECK_CLUSTERS: u64 = 1 << 24;
/// Reports of one kind beyond this many are summarized.
const MAX_LINES: usize = 50;

struct Checker<'a> {
    file: &'a ImageFile,
    h: &'a Header,
    file_len: u64,
    refs: Vec<u32>,
    /// (host offset, COPIED flag set, what it is) of each L1/L2 entry, for the flag check.
    copied: Vec<(u64, bool, &'static str)>,
    report: CheckReport,
}

impl Checker<'_> {
    fn error(&mut self, msg: String) {
        if self.report.errors.len() < MAX_LINES {
            self.report.errors.push(msg);
        } else if self.report.errors.len() == MAX_LINES {
            self.report.errors.push("more errors follow; only the first ones are listed".into());
        }
    }

    fn cs(&self) -> u64 {
        self.h.cluster_size()
    }

    /// Counts one reference to each cluster of the byte range.
    fn reference(&mut self, offset: u64, len: u64, what: &str) {
        if len == 0 {
            return;
        }
        if offset.saturating_add(len) > self.file_len {
            self.error(format!("the {what} at offset {offset:#x} lies past the end of the file"));
            return;
        }
        let cs = self.cs();
        for c in offset / cs..=(offset + len - 1) / cs {
            if let Some(r) = self.refs.get_mut(c as usize) {
                *r += 1;
            }
        }
    }

    fn walk_l2(&mut self, l2: u64) -> Result<()> {
        let mut table = vec![0u8; self.cs() as usize];
        self.file.read_exact_at(&mut table, l2, FORMAT, "L2 table")?;
        for raw in table.chunks_exact(8) {
            let e = u64::from_be_bytes(raw.try_into().unwrap_or_default());
            if e & COMPRESSED != 0 {
                let x = 62 - (self.h.cluster_bits - 8);
                let host = e & ((1u64 << x) - 1);
                let sectors = ((e >> x) & ((1u64 << (self.h.cluster_bits - 8)) - 1)) + 1;
                if e & COPIED != 0 {
                    self.error(format!(
                        "the compressed cluster at offset {host:#x} has the COPIED flag set"
                    ));
                }
                self.reference(host & !511, sectors * 512, "compressed cluster");
                continue;
            }
            let host = e & OFFSET_MASK;
            if host == 0 {
                continue;
            }
            if !host.is_multiple_of(self.cs()) {
                self.error(format!(
                    "an L2 entry points at offset {host:#x}, which is not aligned to a cluster"
                ));
                continue;
            }
            if self.h.version == 2 && e & ZERO != 0 {
                self.error(format!(
                    "an L2 entry of a version 2 image has the zero flag set (offset {host:#x})"
                ));
            }
            self.reference(host, self.cs(), "data cluster");
            self.copied.push((host, e & COPIED != 0, "data cluster"));
        }
        Ok(())
    }

    fn walk_l1(&mut self) -> Result<()> {
        let mut raw = vec![0u8; self.h.l1_size as usize * 8];
        self.file.read_exact_at(&mut raw, self.h.l1_table_offset, FORMAT, "L1 table")?;
        for chunk in raw.chunks_exact(8) {
            let e = u64::from_be_bytes(chunk.try_into().unwrap_or_default());
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if !l2.is_multiple_of(self.cs()) || l2.saturating_add(self.cs()) > self.file_len {
                self.error(format!(
                    "an L2 table at offset {l2:#x} is misaligned or lies past the end of the file"
                ));
                continue;
            }
            self.reference(l2, self.cs(), "L2 table");
            self.copied.push((l2, e & COPIED != 0, "L2 table"));
            self.walk_l2(l2)?;
        }
        Ok(())
    }

    fn compare(&mut self, stored: &[u64]) {
        let mut leaks = 0usize;
        for (c, &s) in stored.iter().enumerate() {
            let r = u64::from(self.refs.get(c).copied().unwrap_or(0));
            let off = c as u64 * self.cs();
            if s < r {
                self.error(format!(
                    "the cluster at offset {off:#x} is used {r} times but its refcount is {s}"
                ));
            } else if s > r {
                leaks += 1;
                if self.report.leaks.len() < MAX_LINES {
                    self.report.leaks.push(format!(
                        "the cluster at offset {off:#x} has refcount {s} but is used {r} times"
                    ));
                }
            }
        }
        if leaks > MAX_LINES {
            self.report.leaks.push(format!("{} more leaked clusters", leaks - MAX_LINES));
        }
        for i in 0..self.copied.len() {
            let (host, copied, what) = self.copied[i];
            let s = stored.get((host / self.cs()) as usize).copied().unwrap_or(0);
            if (s == 1) != copied {
                self.error(format!(
                    "the {what} at offset {host:#x} has refcount {s} but its COPIED flag is {}",
                    if copied { "set" } else { "clear" }
                ));
            }
        }
    }
}

/// Checks the image behind `file`.
pub(crate) fn check(file: &ImageFile, h: &Header) -> Result<CheckReport> {
    let file_len = file.len()?;
    let cs = h.cluster_size();
    let mut report = CheckReport::default();
    let refcounts = match Refcounts::load(file, h) {
        Ok(r) => r,
        Err(e) => {
            report.errors.push(format!("the refcount table cannot be read: {e}"));
            return Ok(report);
        }
    };
    let clusters = file_len.div_ceil(cs).max(refcounts.covered_clusters());
    if clusters > MAX_CHECK_CLUSTERS {
        report.notes.push(format!("the image has {clusters} clusters, more than the {MAX_CHECK_CLUSTERS} this check counts"));
        return Ok(report);
    }
    let mut ck =
        Checker { file, h, file_len, refs: vec![0; clusters as usize], copied: Vec::new(), report };
    ck.reference(0, cs, "header");
    ck.reference(h.l1_table_offset, u64::from(h.l1_size) * 8, "L1 table");
    ck.reference(
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters) * cs,
        "refcount table",
    );
    for block in refcounts.block_offsets() {
        ck.reference(block, cs, "refcount block");
    }
    let stored = match read_all(file, h, clusters) {
        Ok(s) => s,
        Err(e) => {
            ck.error(format!("the refcount blocks cannot be read: {e}"));
            return Ok(ck.report);
        }
    };
    ck.walk_l1()?;
    if h.nb_snapshots > 0 {
        ck.report.notes.push("the image has internal snapshots, whose tables this check does not walk; refcounts were not compared".into());
        return Ok(ck.report);
    }
    ck.compare(&stored);
    Ok(ck.report)
}
