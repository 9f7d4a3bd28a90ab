//! Disk image formats for Bulkhead: raw, qcow2 (v2 and v3) and VMware VMDK (monolithic and
//! split, sparse and flat; streamOptimized read-only), behind one trait, [`DiskImage`].
//!
//! The virtio-blk device uses the same code in both process models: in a compartment it opens
//! the image with [`open`], hands [`DiskImage::files`] to the sandbox, and serves requests from
//! several queue threads through `&self`.
//!
//! # Restart safety: what is on the file when `write_at` returns
//!
//! A compartment may be SIGKILLed at any instant and a new process reopen the image. So no
//! format keeps metadata only in memory: every change to a qcow2 L1/L2/refcount table, a VMDK
//! grain table or directory, or a header field is `pwrite`n to the file before the call that
//! made it returns. The kernel's page cache keeps those writes across the death of the process;
//! [`DiskImage::flush`] makes them durable across a host crash with `fsync`.
//!
//! Writes are ordered so that a process killed between any two of them leaves an image whose
//! worst damage is a leaked cluster (which `qemu-img check -r all` or `bulkhead disk check`
//! reports and repairs) and never a table entry that points at garbage:
//!
//! * qcow2, allocating write: (1) the new cluster's refcount is set to 1 (a new refcount block
//!   is written, pointing at itself, before the refcount table entry naming it); (2) the guest
//!   data — the whole cluster, merged with the backing file or the old compressed data — is
//!   written; (3) the L2 entry is written. A new L2 table is written, zeroed, and its refcount
//!   set, before the L1 entry that names it. Clusters that a write or discard stops using are
//!   freed only after the table entry that pointed at them was overwritten.
//! * qcow2, refcount table growth: new refcount blocks and the new table are written at the end
//!   of the file, then the header fields naming the table (one 12-byte write), then the old
//!   table's clusters are freed.
//! * VMDK sparse, allocating write: the grain is appended to the extent file, then the grain
//!   table entry is written, then the redundant grain table entry. A grain table that did not
//!   exist is written before the directory entry that names it.
//!
//! In-place overwrites of allocated data touch no metadata. A write that was not followed by a
//! completed `flush` may be lost or torn by a host crash, as on any disk with a volatile cache.

mod cache;
mod compress;
mod error;
mod file;
mod files;
mod lock;
mod probe;
mod qcow2;
mod raw;
mod vmdk;

pub mod tools;

pub use error::{DiskError, Result};
pub use files::{HandedFiles, OpenFile, OpenFn};
pub use lock::Locking;
pub use qcow2::{Qcow2CreateOptions, Qcow2Version};
pub use vmdk::{VmdkCreateOptions, VmdkSubformat};

use serde::Serialize;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Longest backing chain [`open`] follows.
pub const MAX_CHAIN_LENGTH: usize = 64;

/// A disk image, opened.
///
/// All methods take `&self` and may be called from several threads at once. Offsets and lengths
/// are in bytes and need no alignment. A request that reaches past [`DiskImage::virtual_size`]
/// fails with [`DiskError::OutOfRange`] and does nothing.
pub trait DiskImage: Send + Sync {
    /// Size of the virtual disk in bytes.
    fn virtual_size(&self) -> u64;

    /// Reads `buf.len()` bytes at `offset`. Unallocated ranges read from the backing file, or as
    /// zeros when there is none.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes `buf` at `offset`. All metadata the write needed is in the file (not necessarily
    /// durable) when this returns.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes everything written so far durable.
    fn flush(&self) -> Result<()>;

    /// Tells the image that a range is no longer needed. Advisory: the range may keep its
    /// content or read as zeros afterwards (never as another range's data).
    fn discard(&self, offset: u64, len: u64) -> Result<()>;

    /// Makes a range read as zeros, deallocating it where the format can.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;

    /// True when writes are refused.
    fn is_read_only(&self) -> bool;

    /// Every file the image holds (name, access, descriptor), backing files included, so that a
    /// sandbox can keep exactly these open and a successor can be handed them
    /// ([`HandedFiles`]).
    fn files(&self) -> Vec<OpenFile>;

    /// Describes the image (format, sizes, files, backing chain).
    fn info(&self) -> ImageInfo;

    /// What the range starting at `offset` holds, and how many bytes (at most `len`) share that
    /// state. The default says "data" for everything.
    fn map(&self, offset: u64, len: u64) -> Result<(Mapping, u64)> {
        file::check_range(offset, len, self.virtual_size())?;
        Ok((Mapping::Data, len))
    }

    /// Checks the image's metadata for corruption and leaks, without changing it.
    fn check(&self) -> Result<CheckReport> {
        Ok(CheckReport::default())
    }
}

/// State of a guest range, as [`DiskImage::map`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mapping {
    /// The range may hold data (it may still happen to be zeros).
    Data,
    /// The range reads as zeros without any data stored for it in this image or below it.
    Zero,
}

/// Image formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Raw: the file is the disk.
    Raw,
    /// QEMU copy-on-write v2 (compat=0.10) or v3 (compat=1.1).
    Qcow2,
    /// VMware virtual disk.
    Vmdk,
}

impl Format {
    /// The lowercase name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = DiskError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vmdk" => Ok(Format::Vmdk),
            other => Err(DiskError::InvalidArgument(format!(
                "unknown image format {other:?}; use raw, qcow2 or vmdk"
            ))),
        }
    }
}

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Open for reading only. Backing files are always opened read-only.
    pub read_only: bool,
    /// The format, or `None` to probe it from the file's content. Probing a file that a guest
    /// writes to is unsafe (a guest could write a qcow2 header into a raw disk): name the format
    /// of images you did not make.
    pub format: Option<Format>,
    /// Follow backing-file and extent names that are absolute or lead outside the image's folder.
    pub allow_outside_paths: bool,
    /// Lock the files against conflicting use by other processes (QEMU's scheme; see
    /// [`Locking`]).
    pub locking: Locking,
}

/// Description of an opened image.
#[derive(Clone, Debug, Serialize)]
pub struct ImageInfo {
    /// The image (for VMDK: the descriptor, or the monolithic file).
    pub path: PathBuf,
    /// Format.
    pub format: Format,
    /// Qcow2 version ("0.10", "1.1") or VMDK createType.
    pub subformat: Option<String>,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Cluster (qcow2) or grain (sparse VMDK) size in bytes.
    pub cluster_size: Option<u64>,
    /// Bytes the image's own files occupy on the host.
    pub allocated_bytes: u64,
    /// The image's own files (VMDK: the descriptor and every extent).
    pub files: Vec<PathBuf>,
    /// VMDK extents.
    pub extents: Vec<ExtentInfo>,
    /// The backing image, if any.
    pub backing: Option<Box<ImageInfo>>,
    /// Opened read-only.
    pub read_only: bool,
}

/// One VMDK extent.
#[derive(Clone, Debug, Serialize)]
pub struct ExtentInfo {
    /// The extent's file (none for ZERO extents).
    pub path: Option<PathBuf>,
    /// FLAT, SPARSE, ZERO.
    pub kind: String,
    /// Size of the extent's part of the disk, in bytes.
    pub size: u64,
    /// Opened with write access.
    pub writable: bool,
}

/// What [`DiskImage::check`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Inconsistencies that can lose or corrupt data.
    pub errors: Vec<String>,
    /// Clusters marked used that nothing uses (space lost, no data at risk).
    pub leaks: Vec<String>,
    /// Things the check could not look at.
    pub notes: Vec<String>,
}

impl CheckReport {
    /// True when there are neither errors nor leaks.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.leaks.is_empty()
    }
}

/// Opens an image, probing its format unless `opts.format` names it, and its backing chain.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn DiskImage>> {
    open_with(path, opts, HandedFiles::default())
}

/// [`open`], using the files in `handed` (a previous user's, with their locks) instead of
/// opening those names again.
pub fn open_with(
    path: &Path,
    opts: &OpenOptions,
    handed: HandedFiles,
) -> Result<Box<dyn DiskImage>> {
    let opener = files::Opener::new(opts.locking, handed);
    let mut chain = Chain::new(opts.allow_outside_paths, opener);
    chain.open(path, opts.format, !opts.read_only)
}

/// The images opened so far in one backing chain, to refuse loops and endless chains, and where
/// their files come from.
pub(crate) struct Chain {
    /// The files of the chain's images, by identity (device, inode).
    seen: HashSet<(u64, u64)>,
    allow_outside_paths: bool,
    files: files::Opener,
}

impl Chain {
    fn new(allow_outside_paths: bool, files: files::Opener) -> Self {
        Chain { seen: HashSet::new(), allow_outside_paths, files }
    }

    pub(crate) fn allow_outside_paths(&self) -> bool {
        self.allow_outside_paths
    }

    /// Where the chain's files come from (for a VMDK's extents).
    pub(crate) fn files(&mut self) -> &mut files::Opener {
        &mut self.files
    }

    /// Opens one image of the chain (and, recursively, what lies below it).
    pub(crate) fn open(
        &mut self,
        path: &Path,
        format: Option<Format>,
        writable: bool,
    ) -> Result<Box<dyn DiskImage>> {
        let mut file = self.files.open(path, writable)?;
        if !self.seen.insert(file.identity()?) {
            return Err(DiskError::BackingLoop {
                path: path.to_path_buf(),
                target: path.to_path_buf(),
            });
        }
        if self.seen.len() > MAX_CHAIN_LENGTH {
            return Err(DiskError::ChainTooLong {
                path: path.to_path_buf(),
                max: MAX_CHAIN_LENGTH,
            });
        }
        let format = match format {
            Some(f) => f,
            None => probe::probe(&file)?,
        };
        // Every format but raw may append to its file (new clusters, grains, a descriptor).
        let access = match writable {
            true => lock::Access::Write { grows: format != Format::Raw },
            false => lock::Access::Read,
        };
        self.files.lock(&mut file, access)?;
        match format {
            Format::Raw => Ok(Box::new(raw::RawImage::new(file)?)),
            Format::Qcow2 => Ok(Box::new(qcow2::Qcow2::open(file, self)?)),
            Format::Vmdk => Ok(Box::new(vmdk::Vmdk::open(file, self)?)),
        }
    }

    /// Opens a backing file named inside `image`, read-only.
    pub(crate) fn open_backing(
        &mut self,
        image: &Path,
        name: &str,
        format: Option<Format>,
    ) -> Result<Box<dyn DiskImage>> {
        let target = file::resolve_named_file(image, name, self.allow_outside_paths)?;
        self.open(&target, format, false)
    }
}
