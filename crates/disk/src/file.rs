//! Positional file I/O with errors that name the file, and the rules for following file names
//! found inside images.
//!
//! Every format in this crate reads and writes through [`ImageFile`] with `pread`/`pwrite` only:
//! there is no file position shared between threads. Metadata a format reads on every request
//! may go through a [`TableCache`] ([`ImageFile::read_table`]), a write-through copy that every
//! write through the same [`ImageFile`] keeps up to date after its `pwrite`: the file always
//! holds every update, which is what makes them visible to a process that reopens the image
//! after this one was killed.

use crate::cache::{Lookup, TableCache, SLICE};
use crate::error::{DiskError, Result};
use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io::{ErrorKind, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One open file of an image, with its name kept for error messages.
pub(crate) struct ImageFile {
    file: File,
    path: PathBuf,
    writable: bool,
    /// The file's length as this handle knows it: its length at open, moved by every write and
    /// `set_len` through it.
    known_len: AtomicU64,
    cache: Option<TableCache>,
    /// Handed over by a previous user, with its locks (see [`crate::files`]).
    handed: bool,
    /// Its locks end when it is closed (see its `Drop`).
    unlock_on_drop: bool,
}

impl Drop for ImageFile {
    /// A file that took its locks here is unlocked explicitly when closed: closing it alone
    /// would not end its locks while a process forked meanwhile still holds a copy of the
    /// descriptor, and reopening the image at once (as `convert` does after `create`) would find
    /// it in use. Files handed on to another process keep theirs (see
    /// [`crate::HandedFiles::hand_on`]).
    fn drop(&mut self) {
        if self.unlock_on_drop {
            crate::lock::unlock(&self.file);
        }
    }
}

impl std::fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFile")
            .field("path", &self.path)
            .field("writable", &self.writable)
            .field("cached", &self.cache.is_some())
            .finish()
    }
}

impl ImageFile {
    /// Opens an existing file, for writing too if `writable`.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let file = FsOpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| DiskError::Open { path: path.to_path_buf(), source })?;
        let mut f = ImageFile::new(file, path, writable);
        f.known_len = AtomicU64::new(f.len()?);
        Ok(f)
    }

    /// A file a previous user of the image opened under `path` and handed over.
    pub fn handed(file: File, path: &Path, writable: bool) -> Result<Self> {
        let mut f = ImageFile::opened(file, path, writable)?;
        f.handed = true;
        Ok(f)
    }

    /// A file opened elsewhere (by whoever may open it) under `path`.
    pub fn opened(file: File, path: &Path, writable: bool) -> Result<Self> {
        let mut f = ImageFile::new(file, path, writable);
        f.known_len = AtomicU64::new(f.len()?);
        Ok(f)
    }

    fn new(file: File, path: &Path, writable: bool) -> Self {
        ImageFile {
            file,
            path: path.to_path_buf(),
            writable,
            known_len: AtomicU64::new(0),
            cache: None,
            handed: false,
            unlock_on_drop: false,
        }
    }

    /// Releases its locks when it is closed (it locked them, and keeps them to itself).
    pub fn unlock_when_closed(&mut self) {
        self.unlock_on_drop = true;
    }

    /// Whether it was handed over (and holds its locks already).
    pub fn was_handed(&self) -> bool {
        self.handed
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The file's identity (device and inode): two names of one file have the same.
    pub fn identity(&self) -> Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = self.file.metadata().map_err(|e| self.io_err(e))?;
        Ok((meta.dev(), meta.ino()))
    }

    /// What [`crate::DiskImage::files`] reports of it.
    pub fn open_file(&self) -> crate::OpenFile {
        crate::OpenFile { path: self.path.clone(), writable: self.writable, fd: self.raw_fd() }
    }

    /// Serves [`ImageFile::read_table`] from a write-through cache of at most `max_bytes`.
    pub fn with_table_cache(mut self, max_bytes: u64) -> Self {
        self.cache = Some(TableCache::new(max_bytes));
        self
    }

    /// Creates a new file, replacing an existing one, and opens it for writing. An existing file
    /// that another process uses (see [`crate::lock`]) is refused before it is truncated.
    pub fn create(path: &Path) -> Result<Self> {
        let file = FsOpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| DiskError::Open { path: path.to_path_buf(), source })?;
        let access = crate::lock::Access::Write { grows: true };
        crate::lock::lock(&file, path, access, crate::Locking::On)?;
        file.set_len(0).map_err(|source| DiskError::Io { path: path.to_path_buf(), source })?;
        let mut created = ImageFile::new(file, path, true);
        created.unlock_on_drop = true;
        Ok(created)
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

    /// Size of the file as this handle knows it, without a system call: right as long as
    /// nothing else changes the file's size while it is open.
    pub fn known_len(&self) -> u64 {
        self.known_len.load(Ordering::Acquire)
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
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                Err(self.past_end(format, what, offset, buf.len()))
            }
            Err(e) => Err(self.io_err(e)),
        }
    }

    fn past_end(&self, format: &'static str, what: &str, offset: u64, len: usize) -> DiskError {
        DiskError::malformed(
            &self.path,
            format,
            format!("the {what} at offset {offset} ({len} bytes) lies past the end of the file"),
        )
    }

    /// Reads metadata as [`ImageFile::read_exact_at`] does, through the table cache if the file
    /// has one.
    pub fn read_table(
        &self,
        buf: &mut [u8],
        offset: u64,
        format: &'static str,
        what: &str,
    ) -> Result<()> {
        let Some(cache) = &self.cache else {
            return self.read_exact_at(buf, offset, format, what);
        };
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let start = pos / SLICE * SLICE;
            let n = (buf.len() - done).min((start + SLICE - pos) as usize);
            let out = &mut buf[done..done + n];
            match cache.get(start, pos, out) {
                Ok(Lookup::Hit) => {}
                Ok(Lookup::Miss { generation }) => {
                    let mut slice = vec![0u8; SLICE as usize].into_boxed_slice();
                    let valid = self.read_upto(&mut slice, start)?;
                    let from = (pos - start) as usize;
                    if from + n > valid {
                        return Err(self.past_end(format, what, offset, buf.len()));
                    }
                    out.copy_from_slice(&slice[from..from + n]);
                    cache.insert(start, slice, valid, generation);
                }
                Err(_) => return Err(self.past_end(format, what, offset, buf.len())),
            }
            done += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`; what lies past the end of the file reads as zeros.
    pub fn read_zero_fill(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let done = self.read_upto(buf, offset)?;
        buf[done..].fill(0);
        Ok(())
    }

    /// Reads up to `buf.len()` bytes at `offset`, stopping at the end of the file; returns how
    /// many were read.
    fn read_upto(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
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
        Ok(done)
    }

    /// Writes all of `buf` at `offset`, then mirrors it into the table cache.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if let Err(e) = self.file.write_all_at(buf, offset) {
            // A part may have been written: forget what it touched, learn the size again.
            if let Some(cache) = &self.cache {
                cache.drop_range(offset, buf.len() as u64);
            }
            if let Ok(len) = self.len() {
                self.known_len.store(len, Ordering::Release);
            }
            return Err(self.io_err(e));
        }
        self.known_len.fetch_max(end, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            cache.wrote(buf, offset);
        }
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_all().map_err(|e| self.io_err(e))
    }

    pub fn set_len(&self, len: u64) -> Result<()> {
        let result = self.file.set_len(len).map_err(|e| self.io_err(e));
        if let Some(cache) = &self.cache {
            cache.clear();
        }
        let now =
            if result.is_ok() { len } else { self.len().unwrap_or_else(|_| self.known_len()) };
        self.known_len.store(now, Ordering::Release);
        result
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
        // After the change, as for writes: see the cache module's docs.
        if let Some(cache) = &self.cache {
            cache.drop_range(offset, len as u64);
        }
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

/// Gathers reads of consecutive pieces of a buffer that also lie one after the other in a file
/// into one `pread` (a request over several allocated clusters or grains).
#[derive(Default)]
pub(crate) struct ReadRun {
    file_at: u64,
    buf_at: usize,
    len: usize,
}

impl ReadRun {
    /// Adds the piece `buf[buf_at..buf_at + len]`, to be read at `file_at`; reads what was
    /// gathered first unless the piece continues it.
    pub fn add(
        &mut self,
        file: &ImageFile,
        buf: &mut [u8],
        file_at: u64,
        buf_at: usize,
        len: usize,
    ) -> Result<()> {
        let continues = self.len > 0
            && self.file_at + self.len as u64 == file_at
            && self.buf_at + self.len == buf_at;
        if continues {
            self.len += len;
            return Ok(());
        }
        self.flush(file, buf)?;
        *self = ReadRun { file_at, buf_at, len };
        Ok(())
    }

    /// Reads what was gathered (zeros past the end of the file).
    pub fn flush(&mut self, file: &ImageFile, buf: &mut [u8]) -> Result<()> {
        if self.len > 0 {
            file.read_zero_fill(&mut buf[self.buf_at..self.buf_at + self.len], self.file_at)?;
            self.len = 0;
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
    fn table_reads_see_every_change_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let f = ImageFile::open(&path, true).unwrap().with_table_cache(1 << 20);
        let read = |at: u64, n: usize| {
            let mut b = vec![0u8; n];
            f.read_table(&mut b, at, "test", "table").map(|()| b)
        };
        assert_eq!(read(4090, 12).unwrap(), vec![7u8; 12]); // two slices, now cached
        f.write_all_at(&[1, 2, 3], 4095).unwrap();
        assert_eq!(read(4094, 5).unwrap(), [7, 1, 2, 3, 7]);
        assert!(f.punch_hole(4096, 4096) || f.zero_range(4096, 4096).is_ok());
        assert_eq!(read(4094, 4).unwrap(), [7, 1, 0, 0]);
        assert_eq!(read(9996, 4).unwrap(), [7; 4]);
        assert!(read(9998, 4).is_err(), "past the end of the file");
        f.write_all_at(&[9; 4], 10_002).unwrap(); // extends the file; the gap reads as zeros
        assert_eq!(read(9998, 8).unwrap(), [7, 7, 0, 0, 9, 9, 9, 9]);
        assert_eq!(f.known_len(), 10_006);
        f.set_len(100).unwrap();
        assert!(read(96, 8).is_err());
        assert_eq!(f.known_len(), 100);
        // What another handle reads agrees with the cached view: the file is the truth.
        let mut disk = vec![0u8; 4];
        ImageFile::open(&path, false).unwrap().read_exact_at(&mut disk, 96, "t", "t").unwrap();
        assert_eq!(disk, read(96, 4).unwrap());
    }

    #[test]
    fn read_runs_join_consecutive_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        std::fs::write(&path, (0..=255u8).collect::<Vec<_>>()).unwrap();
        let f = ImageFile::open(&path, false).unwrap();
        let mut buf = [0u8; 8];
        let mut run = ReadRun::default();
        run.add(&f, &mut buf, 10, 0, 2).unwrap();
        run.add(&f, &mut buf, 12, 2, 2).unwrap(); // continues
        run.add(&f, &mut buf, 100, 4, 2).unwrap(); // jumps: the first two pieces are read
        assert_eq!(buf[..4], [10, 11, 12, 13]);
        run.add(&f, &mut buf, 254, 6, 2).unwrap();
        run.flush(&f, &mut buf).unwrap();
        assert_eq!(buf, [10, 11, 12, 13, 100, 101, 254, 255]);
    }

    #[test]
    fn ranges() {
        assert!(check_range(0, 512, 512).is_ok());
        assert!(check_range(1, 512, 512).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }
}
