//! Where the files of an image come from: opened by name and locked, or handed over by a
//! previous user of the image, with their locks.
//!
//! A compartment that serves an image opens its files (the image, its backing chain, a VMDK's
//! descriptor and extents) and locks them (see [`crate::lock`]). Its successor — restarted after
//! a crash, or an upgraded binary — must use the same files without a moment in which another
//! process could take them. So the core keeps a descriptor of each file the first compartment
//! opened ([`crate::DiskImage::files`]), and hands them to every successor as
//! [`HandedFiles`]: the successor opens nothing, and the locks, which belong to the open file
//! description, never lapse.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use crate::error::{DiskError, Result};
use crate::file::ImageFile;
use crate::lock::{self, Access, Locking};

/// One file an open image uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFile {
    /// Its name, as the image's chain resolved it (the image's own path; backing files and
    /// extents relative to the file that names them).
    pub path: PathBuf,
    /// Opened for writing.
    pub writable: bool,
    /// The descriptor; valid as long as the image is open.
    pub fd: RawFd,
}

/// Opens a file by name for an image that may not open files itself (a compartment asks its
/// core): `(path, writable)`.
pub type OpenFn = Box<dyn FnMut(&Path, bool) -> std::io::Result<File> + Send>;

/// Files handed over by a previous user of the same image (a compartment's predecessor), by the
/// name it opened them under; and, optionally, who opens the others.
#[derive(Default)]
pub struct HandedFiles {
    files: HashMap<PathBuf, (File, bool)>,
    opener: Option<OpenFn>,
    /// The files the image opens are handed on too (see [`HandedFiles::hand_on`]).
    hand_on: bool,
}

impl std::fmt::Debug for HandedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandedFiles")
            .field("files", &self.files)
            .field("opener", &self.opener.is_some())
            .field("hand_on", &self.hand_on)
            .finish()
    }
}

impl HandedFiles {
    /// The files the image opens will be handed to another process that keeps them open
    /// ([`crate::DiskImage::files`]; a compartment's core): their locks then last as long as any
    /// process holds them, rather than end when this one closes them.
    pub fn hand_on(&mut self) {
        self.hand_on = true;
    }

    /// Files not handed over are opened by `opener` instead of by name in this process (they
    /// are locked here all the same).
    pub fn open_others_with(&mut self, opener: OpenFn) {
        self.opener = Some(opener);
    }

    /// Adds a file opened (for writing, if `writable`) under `path`.
    pub fn insert(&mut self, path: PathBuf, writable: bool, file: File) {
        self.files.insert(path, (file, writable));
    }

    /// Takes the file handed over under `path` out of the set (a device's file that is no
    /// image's: a console's connected client).
    pub fn take(&mut self, path: &Path) -> Option<File> {
        self.files.remove(path).map(|(file, _)| file)
    }

    /// How many files there are.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Opens the files of one image: each name once, from the handed-over files when it is one of
/// them, otherwise from the file system, locked for its use.
pub(crate) struct Opener {
    locking: Locking,
    handed: HandedFiles,
}

impl Opener {
    pub fn new(locking: Locking, handed: HandedFiles) -> Opener {
        Opener { locking, handed }
    }

    /// The file `path`, for writing too if `writable`; not locked yet (see [`Opener::lock`]).
    pub fn open(&mut self, path: &Path, writable: bool) -> Result<ImageFile> {
        match self.handed.files.remove(path) {
            Some((file, handed_writable)) => {
                if writable && !handed_writable {
                    return Err(DiskError::InvalidArgument(format!(
                        "{} was handed over read-only and cannot be written",
                        path.display()
                    )));
                }
                ImageFile::handed(file, path, writable)
            }
            None => match self.handed.opener.as_mut() {
                Some(opener) => {
                    let file = opener(path, writable)
                        .map_err(|source| DiskError::Open { path: path.to_path_buf(), source })?;
                    ImageFile::opened(file, path, writable)
                }
                None => ImageFile::open(path, writable),
            },
        }
    }

    /// Takes the locks of `access` on `file`, unless it was handed over (then it holds them).
    pub fn lock(&self, file: &mut ImageFile, access: Access) -> Result<()> {
        if file.was_handed() {
            return Ok(());
        }
        lock::lock(file.file(), file.path(), access, self.locking)?;
        if !self.handed.hand_on {
            file.unlock_when_closed();
        }
        Ok(())
    }
}
