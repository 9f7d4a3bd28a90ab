//! Raw images: the file is the disk.

use crate::error::{DiskError, Result};
use crate::file::{check_range, ImageFile};
use crate::{DiskImage, Format, ImageInfo, OpenFile};
use std::path::Path;

/// A raw image file.
#[derive(Debug)]
pub(crate) struct RawImage {
    file: ImageFile,
    size: u64,
}

impl RawImage {
    /// The image in `file` (opened and locked by the chain).
    pub fn new(file: ImageFile) -> Result<Self> {
        let size = file.len()?;
        Ok(RawImage { file, size })
    }

    fn writable(&self) -> Result<()> {
        if self.file.is_writable() {
            Ok(())
        } else {
            Err(DiskError::ReadOnly { path: self.file.path().to_path_buf() })
        }
    }
}

/// Creates a raw image of `size` bytes, all a hole.
pub(crate) fn create(path: &Path, size: u64) -> Result<()> {
    let file = ImageFile::create(path)?;
    file.set_len(size)?;
    file.sync()
}

impl DiskImage for RawImage {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_zero_fill(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.writable()?;
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> Result<()> {
        if self.file.is_writable() {
            self.file.sync()?;
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        check_range(offset, len, self.size)?;
        self.file.punch_hole(offset, len);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        check_range(offset, len, self.size)?;
        self.file.zero_range(offset, len)
    }

    fn is_read_only(&self) -> bool {
        !self.file.is_writable()
    }

    fn files(&self) -> Vec<OpenFile> {
        vec![self.file.open_file()]
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            path: self.file.path().to_path_buf(),
            format: Format::Raw,
            subformat: None,
            virtual_size: self.size,
            cluster_size: None,
            allocated_bytes: self.file.allocated_bytes(),
            files: vec![self.file.path().to_path_buf()],
            extents: Vec::new(),
            backing: None,
            read_only: self.is_read_only(),
        }
    }
}
