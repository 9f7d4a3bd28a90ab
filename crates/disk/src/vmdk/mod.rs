//! VMware VMDK: monolithicSparse, monolithicFlat, twoGbMaxExtentSparse and
//! twoGbMaxExtentFlat read-write, streamOptimized read-only, parent (delta) disks read through.
//!
//! A disk is a list of extents laid end to end, named by a text descriptor — a file of its own
//! (flat and split disks) or embedded in a sparse extent (monolithicSparse, streamOptimized).
//! Flat extents are raw files; sparse extents have a grain directory and grain tables
//! ([`sparse`] describes their write ordering); ZERO extents have no file.
//!
//! Extent and parent names are resolved relative to the descriptor and may not leave its folder
//! unless the caller allows it. An extent file named twice, or a descriptor naming itself as a
//! flat extent, is refused: two writers would corrupt the one file.

mod create;
mod descriptor;
mod header;
mod sparse;
mod stream;

pub(crate) use create::create;
pub use create::{VmdkCreateOptions, VmdkSubformat};
pub(crate) use stream::write_from as write_stream;

use crate::error::{DiskError, Result};
use crate::file::{check_range, resolve_named_file, ImageFile};
use crate::lock::Access;
use crate::{Chain, CheckReport, DiskImage, ExtentInfo, Format, ImageInfo, Mapping, OpenFile};
use descriptor::{Descriptor, ExtentType, FORMAT, MAX_DESCRIPTOR};
use header::SECTOR;
use sparse::{Grain, SparseExtent};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Where an extent's data lives.
enum Backend {
    Flat { file: ImageFile, offset: u64 },
    Sparse(SparseExtent),
    Zero,
}

/// One extent: its byte range of the disk.
struct Extent {
    start: u64,
    len: u64,
    writable: bool,
    backend: Backend,
}

/// A VMDK disk.
pub(crate) struct Vmdk {
    path: PathBuf,
    create_type: String,
    /// The descriptor, for disks that have one of their own (kept open for its lock).
    descriptor_file: Option<ImageFile>,
    extents: Vec<Extent>,
    size: u64,
    parent: Option<Box<dyn DiskImage>>,
    writable: bool,
}

impl Vmdk {
    /// The disk whose descriptor or monolithic sparse extent is `file` (opened and locked by
    /// `chain`): its extents, opened and locked through `chain`, and its parent.
    pub fn open(file: ImageFile, chain: &mut Chain) -> Result<Self> {
        let writable = file.is_writable();
        let path = file.path().to_path_buf();
        let mut magic = [0u8; 4];
        file.read_zero_fill(&mut magic, 0)?;
        let (descriptor, extents, descriptor_file) = if &magic == crate::probe::VMDK_MAGIC {
            let (d, extents) = Self::open_monolithic_sparse(file, writable)?;
            (d, extents, None)
        } else {
            let len = file.len()?;
            if len > MAX_DESCRIPTOR {
                return Err(DiskError::malformed(&path, FORMAT, format!("it is neither a sparse extent nor a descriptor of at most 1 MiB ({len} bytes)")));
            }
            let mut raw = vec![0u8; len as usize];
            file.read_exact_at(&mut raw, 0, FORMAT, "descriptor")?;
            let text = std::str::from_utf8(&raw).map_err(|_| {
                DiskError::malformed(&path, FORMAT, "its descriptor is not UTF-8 text")
            })?;
            let d = Descriptor::parse(&path, text)?;
            let extents = Self::open_extents(&file, &d, writable, chain)?;
            // The descriptor stays open: its lock says the disk is in use.
            (d, extents, Some(file))
        };
        let size = extents.last().map_or(0, |e| e.start + e.len);
        if writable
            && extents
                .iter()
                .any(|e| matches!(&e.backend, Backend::Sparse(s) if s.header().compressed()))
        {
            return Err(DiskError::unsupported(
                &path,
                FORMAT,
                "writing to streamOptimized (compressed) extents; open it read-only",
            ));
        }
        let parent = match &descriptor.parent_hint {
            Some(hint) => Some(chain.open_backing(&path, hint, None)?),
            None => None,
        };
        Ok(Vmdk {
            path,
            create_type: descriptor.create_type,
            descriptor_file,
            extents,
            size,
            parent,
            writable,
        })
    }

    /// A file that starts with a sparse header is the whole disk: one extent, itself.
    fn open_monolithic_sparse(
        file: ImageFile,
        writable: bool,
    ) -> Result<(Descriptor, Vec<Extent>)> {
        let path = file.path().to_path_buf();
        let sparse = SparseExtent::open(file)?;
        let mut d = match sparse.embedded_descriptor()? {
            Some(text) => Descriptor::parse(&path, &text).unwrap_or_default(),
            None => Descriptor::default(),
        };
        if d.create_type.is_empty() {
            d.create_type =
                if sparse.header().compressed() { "streamOptimized" } else { "monolithicSparse" }
                    .to_string();
        }
        let extent = Extent {
            start: 0,
            len: sparse.capacity_bytes(),
            writable,
            backend: Backend::Sparse(sparse),
        };
        Ok((d, vec![extent]))
    }

    fn open_extents(
        descriptor: &ImageFile,
        d: &Descriptor,
        writable: bool,
        chain: &mut Chain,
    ) -> Result<Vec<Extent>> {
        let mut seen = HashSet::from([descriptor.identity()?]);
        let mut extents = Vec::with_capacity(d.extents.len());
        let mut start = 0u64;
        for line in &d.extents {
            let len = line.sectors * SECTOR;
            let ext_writable = writable && !line.read_only;
            let backend = match (&line.file, line.kind) {
                (_, ExtentType::Zero) | (None, _) => Backend::Zero,
                (Some(name), kind) => {
                    let access = match ext_writable {
                        true => Access::Write { grows: kind != ExtentType::Flat },
                        false => Access::Read,
                    };
                    let file =
                        Self::open_extent_file(descriptor.path(), name, access, chain, &mut seen)?;
                    if kind == ExtentType::Flat {
                        Backend::Flat { file, offset: line.offset * SECTOR }
                    } else {
                        let s = SparseExtent::open(file)?;
                        if s.capacity_bytes() < len {
                            return Err(DiskError::malformed(descriptor.path(), FORMAT, format!("its extent {name:?} holds {} bytes but the descriptor gives it {len}", s.capacity_bytes())));
                        }
                        Backend::Sparse(s)
                    }
                }
            };
            extents.push(Extent { start, len, writable: ext_writable, backend });
            start += len;
        }
        Ok(extents)
    }

    fn open_extent_file(
        path: &Path,
        name: &str,
        access: Access,
        chain: &mut Chain,
        seen: &mut HashSet<(u64, u64)>,
    ) -> Result<ImageFile> {
        let target = resolve_named_file(path, name, chain.allow_outside_paths())?;
        let writable = matches!(access, Access::Write { .. });
        let mut file = chain.files().open(&target, writable).map_err(|e| match e {
            DiskError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                DiskError::malformed(
                    path,
                    FORMAT,
                    format!("it names the extent file {name:?}, which does not exist"),
                )
            }
            e => e,
        })?;
        if !seen.insert(file.identity()?) {
            return Err(DiskError::malformed(
                path,
                FORMAT,
                format!("it names the extent file {name:?} twice, or names itself"),
            ));
        }
        chain.files().lock(&mut file, access)?;
        Ok(file)
    }

    /// Calls `f(extent, byte offset in the extent, range of the request)` for each extent piece.
    fn for_each_extent(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&Extent, u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        check_range(offset, len, self.size)?;
        let end = offset + len;
        let first = self.extents.partition_point(|e| e.start + e.len <= offset);
        for e in &self.extents[first..] {
            if e.start >= end {
                break;
            }
            let from = offset.max(e.start);
            let to = end.min(e.start + e.len);
            if to > from {
                f(e, from - e.start, (from - offset) as usize..(to - offset) as usize)?;
            }
        }
        Ok(())
    }

    /// Reads guest bytes from the parent disk, zeros where there is none.
    fn read_parent(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(p) = &self.parent else {
            buf.fill(0);
            return Ok(());
        };
        let avail = p.virtual_size().saturating_sub(offset).min(buf.len() as u64) as usize;
        if avail > 0 {
            p.read_at(&mut buf[..avail], offset)?;
        }
        buf[avail..].fill(0);
        Ok(())
    }

    fn check_writable(&self, e: &Extent) -> Result<()> {
        if e.writable {
            return Ok(());
        }
        let path = match &e.backend {
            Backend::Flat { file, .. } => file.path().to_path_buf(),
            Backend::Sparse(s) => s.file().path().to_path_buf(),
            Backend::Zero => self.path.clone(),
        };
        Err(DiskError::ReadOnly { path })
    }

    fn drop_range(&self, offset: u64, len: u64, zero: bool) -> Result<()> {
        if !self.writable {
            return Err(DiskError::ReadOnly { path: self.path.clone() });
        }
        self.for_each_extent(offset, len, |e, at, range| {
            self.check_writable(e)?;
            let n = (range.end - range.start) as u64;
            match &e.backend {
                Backend::Flat { file, offset } => {
                    if zero {
                        file.zero_range(offset + at, n)
                    } else {
                        file.punch_hole(offset + at, n);
                        Ok(())
                    }
                }
                Backend::Sparse(s) => {
                    let fill = |b: &mut [u8], o: u64| self.read_parent(b, e.start + o);
                    s.drop_range(at, n, zero, self.parent.is_some(), &fill)
                }
                Backend::Zero => Ok(()),
            }
        })
    }
}

impl DiskImage for Vmdk {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.for_each_extent(offset, buf.len() as u64, |e, at, range| {
            let part = &mut buf[range];
            match &e.backend {
                Backend::Flat { file, offset } => file.read_zero_fill(part, offset + at),
                Backend::Sparse(s) => s.read(part, at, &|b, o| self.read_parent(b, e.start + o)),
                Backend::Zero => {
                    part.fill(0);
                    Ok(())
                }
            }
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(DiskError::ReadOnly { path: self.path.clone() });
        }
        self.for_each_extent(offset, buf.len() as u64, |e, at, range| {
            self.check_writable(e)?;
            let part = &buf[range];
            match &e.backend {
                Backend::Flat { file, offset } => file.write_all_at(part, offset + at),
                Backend::Sparse(s) => s.write(part, at, &|b, o| self.read_parent(b, e.start + o)),
                Backend::Zero => Err(DiskError::ReadOnly { path: self.path.clone() }),
            }
        })
    }

    fn flush(&self) -> Result<()> {
        for e in self.extents.iter().filter(|e| e.writable) {
            match &e.backend {
                Backend::Flat { file, .. } => file.sync()?,
                Backend::Sparse(s) => s.file().sync()?,
                Backend::Zero => {}
            }
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
        !self.writable
    }

    fn files(&self) -> Vec<OpenFile> {
        let extents = self.extents.iter().filter_map(|e| match &e.backend {
            Backend::Flat { file, .. } => Some(file.open_file()),
            Backend::Sparse(s) => Some(s.file().open_file()),
            Backend::Zero => None,
        });
        let mut fds: Vec<OpenFile> =
            self.descriptor_file.iter().map(ImageFile::open_file).chain(extents).collect();
        if let Some(p) = &self.parent {
            fds.extend(p.files());
        }
        fds
    }

    fn info(&self) -> ImageInfo {
        let mut files = vec![self.path.clone()];
        let mut allocated = 0;
        let mut extents = Vec::new();
        let mut grain = None;
        for e in &self.extents {
            let (file, kind) = match &e.backend {
                Backend::Flat { file, .. } => (Some(file), "FLAT"),
                Backend::Sparse(s) => {
                    grain = grain.or(Some(s.grain_bytes()));
                    (Some(s.file()), "SPARSE")
                }
                Backend::Zero => (None, "ZERO"),
            };
            if let Some(f) = file {
                if f.path() != self.path {
                    files.push(f.path().to_path_buf());
                }
                allocated += f.allocated_bytes();
            }
            extents.push(ExtentInfo {
                path: file.map(|f| f.path().to_path_buf()),
                kind: kind.to_string(),
                size: e.len,
                writable: e.writable,
            });
        }
        if files.len() > 1 || extents.iter().all(|e| e.path.is_none()) {
            allocated += std::fs::metadata(&self.path)
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                .unwrap_or(0);
        }
        ImageInfo {
            path: self.path.clone(),
            format: Format::Vmdk,
            subformat: Some(self.create_type.clone()),
            virtual_size: self.size,
            cluster_size: grain,
            allocated_bytes: allocated,
            files,
            extents,
            backing: self.parent.as_ref().map(|p| Box::new(p.info())),
            read_only: !self.writable,
        }
    }

    fn map(&self, offset: u64, len: u64) -> Result<(Mapping, u64)> {
        check_range(offset, len, self.size)?;
        let i = self.extents.partition_point(|e| e.start + e.len <= offset);
        let Some(e) = self.extents.get(i) else {
            return Ok((Mapping::Data, len));
        };
        let n = len.min(e.start + e.len - offset);
        match &e.backend {
            Backend::Flat { .. } => Ok((Mapping::Data, n)),
            Backend::Zero => Ok((Mapping::Zero, n)),
            Backend::Sparse(s) => match s.map(offset - e.start, n)? {
                (Grain::Unallocated, run) => match &self.parent {
                    Some(p) if offset < p.virtual_size() => {
                        p.map(offset, run.min(p.virtual_size() - offset))
                    }
                    _ => Ok((Mapping::Zero, run)),
                },
                (Grain::Zero, run) => Ok((Mapping::Zero, run)),
                (_, run) => Ok((Mapping::Data, run)),
            },
        }
    }

    fn check(&self) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        for e in &self.extents {
            if let Backend::Sparse(s) = &e.backend {
                s.check(&mut report)?;
            }
        }
        Ok(report)
    }
}
