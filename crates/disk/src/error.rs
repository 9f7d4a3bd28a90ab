//! The one error type of the crate.
//!
//! Every variant that concerns a file names it, so that a user who reads the message knows which
//! of the files of a split VMDK or a backing chain is at fault.

use std::io;
use std::path::PathBuf;

/// What went wrong while opening, reading, writing or creating a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file could not be opened or created.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A read, write or sync of the file failed.
    #[error("I/O on {} failed", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The file is not a well-formed image of the format it claims to be.
    #[error("{} is not a valid {format} image: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The format that was being parsed.
        format: &'static str,
        /// What is wrong, as a sentence fragment.
        reason: String,
    },
    /// Metadata found while serving a request is inconsistent; the request was not carried out.
    #[error("{} is corrupt: {reason}; check it with `bulkhead disk check`", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The image uses a feature this crate does not implement.
    #[error("{} uses a {format} feature that is not supported: {feature}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The format.
        format: &'static str,
        /// The feature.
        feature: String,
    },
    /// An image names another file outside its own folder, and the caller did not allow that.
    #[error(
        "{} names {}, which is outside the image's folder; open it with outside paths allowed if you trust it",
        path.display(),
        target
    )]
    OutsidePath {
        /// The image that names the file.
        path: PathBuf,
        /// The name as written in the image.
        target: String,
    },
    /// A backing chain names an image that is already part of the chain.
    #[error("the backing chain of {} loops back to {}", path.display(), target.display())]
    BackingLoop {
        /// The image whose backing file closes the loop.
        path: PathBuf,
        /// The image named twice.
        target: PathBuf,
    },
    /// A backing chain is longer than the crate follows.
    #[error("the backing chain of {} is longer than {max} images", path.display())]
    ChainTooLong {
        /// The image at which the limit was reached.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// A request reaches past the end of the virtual disk.
    #[error(
        "a request for {len} bytes at offset {offset} reaches past the end of the {size}-byte disk"
    )]
    OutOfRange {
        /// Guest offset of the request.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// Virtual size of the disk.
        size: u64,
    },
    /// A write was sent to an image opened read-only or in a read-only format.
    #[error("{} is open read-only", path.display())]
    ReadOnly {
        /// The image.
        path: PathBuf,
    },
    /// Another process uses the file in a way this use cannot share (see the `lock` module).
    #[error(
        "{} is in use by another process ({how}); stop that process first, or, if two users are \
         safe here, open it without locking (a disk's locking=off, the disk tools' --force-share)",
        path.display()
    )]
    InUse {
        /// The file.
        path: PathBuf,
        /// How the other process uses it.
        how: String,
    },
    /// The caller asked for something that cannot be done (bad size, unknown subformat...).
    #[error("{0}")]
    InvalidArgument(String),
}

impl DiskError {
    pub(crate) fn malformed(
        path: &std::path::Path,
        format: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        DiskError::Malformed { path: path.to_path_buf(), format, reason: reason.into() }
    }

    pub(crate) fn corrupt(path: &std::path::Path, reason: impl Into<String>) -> Self {
        DiskError::Corrupt { path: path.to_path_buf(), reason: reason.into() }
    }

    pub(crate) fn unsupported(
        path: &std::path::Path,
        format: &'static str,
        feature: impl Into<String>,
    ) -> Self {
        DiskError::Unsupported { path: path.to_path_buf(), format, feature: feature.into() }
    }
}

/// Result type of the crate.
pub type Result<T> = std::result::Result<T, DiskError>;
