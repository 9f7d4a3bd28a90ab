//! Positional file I/O with errors that name the file, and the rules for following file names
//! found inside images.
//!
//! Every format in this crate reads and writes through [`ImageFile`] with `pread`/`pwrite` only:
//! there is no file position shared between threads, and no user-space cache of metadata — the
//! kernel's page cache is the cache, which is what makes metadata updates visible to a process
//! that reopens the image after this one was killed.

use crate::error::{DiskError, Result};
use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io::{ErrorKind, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

/// One open file of an image, with its name kept for error messages.
#[derive(Debug)]
pub(crate) struct ImageFile {
    file: File,
    path: PathBuf,
    writable: bool,
}

impl ImageFile {
    /// Opens an existing file, for writing too if `writable`.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let file = FsOpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| DiskError::Open { path: path.to_path_buf(), source })?;
        Ok(ImageFile { file, path: path.to_path_buf(), writable })
    }

    /// Creates a new file, replacing an existing one, and opens it for writing.
    pub fn create(path: &Path) -> Result<Self> {
        let file = FsOpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| DiskError::Open { path: path.to_path_buf(), source })?;
        Ok(ImageFile { file, path: path.to_path_buf(), writable: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn io_err(&self, source: std::io::Error) -> DiskError {
        DiskError::Io { path: self.path.clone(), source }
    }

    /// Size of the file in bytes (works for block devices too).
    pub fn len(&self) -> Result<u64> {
        (&self.file).seek(SeekFrom::End(0)).map_err(|e| self.io_err(e))
    }

    /// Bytes the file occupies on the host (allocated blocks).
    pub fn allocated_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
    }

    /// Reads exactly `buf.len()` bytes at `offset`; a file that ends first is malformed.
    pub fn read_exact_at(
        &self,
        buf: &mut [u8],
        offset: u64,
        format: &'static str,
        what: &str,
    ) -> Result<()> {
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(DiskError::malformed(
                &self.path,
                format,
                format!(
                    "the {what} at offset {offset} ({} bytes) lies past the end of the file",
                    buf.len()
                ),
            )),
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Reads `buf.len()` bytes at `offset`; what lies past the end of the file reads as zeros.
    pub fn read_zero_fill(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let Some(pos) = offset.checked_add(done as u64) else {
                break;
            };
            match self.file.read_at(&mut buf[done..], pos) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err(e)),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.file.write_all_at(buf, offset).map_err(|e| self.io_err(e))
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_all().map_err(|e| self.io_err(e))
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(|e| self.io_err(e))
    }

    /// Deallocates a byte range so that it reads as zeros; false when the host cannot.
    pub fn punch_hole(&self, offset: u64, len: u64) -> bool {
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return false;
        };
        // SAFETY: fallocate only reads its integer arguments and acts on a file descriptor that
        // `self.file` owns and keeps open for the duration of the call.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        rc == 0
    }

    /// Writes zeros over a byte range, punching a hole where the host supports it.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        if self.punch_hole(offset, len) {
            return Ok(());
        }
        let chunk = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk.len() as u64);
            self.write_all_at(&chunk[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

/// Resolves a file name found inside `image` (a backing file, a VMDK extent or parent).
///
/// A relative name is taken relative to the image's folder. Unless `allow_outside` is set, a
/// name that is absolute, climbs with `..`, or reaches outside the folder through a symbolic
/// link is refused: an image must not make its reader open arbitrary host files.
pub(crate) fn resolve_named_file(image: &Path, name: &str, allow_outside: bool) -> Result<PathBuf> {
    let outside = || DiskError::OutsidePath { path: image.to_path_buf(), target: name.to_string() };
    if name.is_empty() || name.contains('\0') {
        return Err(DiskError::malformed(
            image,
            "disk",
            format!("it names the file {name:?}, which is not a valid file name"),
        ));
    }
    let named = Path::new(name);
    let dir = image.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if allow_outside {
        return Ok(dir.join(named));
    }
    let climbs = named.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if climbs {
        return Err(outside());
    }
    let joined = dir.join(named);
    // A symbolic link inside the folder may still lead out of it.
    if let (Ok(real_dir), Ok(real)) = (dir.canonicalize(), joined.canonicalize()) {
        if !real.starts_with(&real_dir) {
            return Err(outside());
        }
    }
    Ok(joined)
}

/// Checks that `[offset, offset + len)` lies inside a disk of `size` bytes.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DiskError::OutOfRange { offset, len, size }),
    }
}

/// True when every byte of `buf` is zero.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let (prefix, words, suffix) = {
        // SAFETY: any bit pattern is a valid u64, and align_to only reinterprets the aligned
        // middle part of the slice.
        unsafe { buf.align_to::<u64>() }
    };
    prefix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
        && suffix.iter().all(|&b| b == 0)
}

/// Allocates a zeroed buffer of `len` bytes, refusing sizes above `limit`.
pub(crate) fn bounded_vec(
    path: &Path,
    format: &'static str,
    what: &str,
    len: u64,
    limit: u64,
) -> Result<Vec<u8>> {
    if len > limit {
        return Err(DiskError::malformed(
            path,
            format,
            format!("its {what} would need {len} bytes of memory, more than the limit of {limit}"),
        ));
    }
    Ok(vec![0u8; len as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_files_stay_inside_the_folder() {
        let img = Path::new("/images/a.qcow2");
        assert_eq!(
            resolve_named_file(img, "b.qcow2", false).unwrap(),
            PathBuf::from("/images/b.qcow2")
        );
        assert!(matches!(
            resolve_named_file(img, "../etc/passwd", false),
            Err(DiskError::OutsidePath { .. })
        ));
        assert!(matches!(
            resolve_named_file(img, "/etc/passwd", false),
            Err(DiskError::OutsidePath { .. })
        ));
        assert!(matches!(
            resolve_named_file(img, "x/../../y", false),
            Err(DiskError::OutsidePath { .. })
        ));
        assert_eq!(
            resolve_named_file(img, "/etc/passwd", true).unwrap(),
            PathBuf::from("/etc/passwd")
        );
        assert!(resolve_named_file(img, "", false).is_err());
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[1] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn ranges() {
        assert!(check_range(0, 512, 512).is_ok());
        assert!(check_range(1, 512, 512).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }
}
