//! Image locking: who may use a file at the same time, in QEMU's scheme, so that QEMU's tools and
//! Bulkhead each see the other's use.
//!
//! QEMU (since 2.10, `block/file-posix.c`) marks its use of a file with open file description
//! (OFD) locks on single bytes, all of them *shared* (`F_RDLCK`) locks:
//!
//! * byte `100 + p` for each permission `p` the user holds;
//! * byte `200 + p` for each permission `p` the user does *not* share with others.
//!
//! The permissions, by bit: 0 consistent read, 1 write, 2 write without changing the data, 3
//! resize. A user first takes its bytes, then tests, with `F_OFD_GETLK`, that no *other* open
//! file description holds byte `200 + p` for a permission it holds (someone refuses to share
//! it) or byte `100 + p` for a permission it does not share (someone holds it). Because every
//! lock is shared, two users starting at the same moment both get their bytes and then both see
//! the other: neither runs. Locks belong to the open file description: they last as long as any
//! process holds a descriptor of it, and end when the last one is closed — which is how a
//! compartment's successor keeps them (the core holds a copy of each descriptor, see the
//! project's `docs/ARCHITECTURE.md`, "Who uses an image").
//!
//! What Bulkhead takes, the way QEMU's block devices and tools do:
//!
//! | use | holds | does not share | so it is refused while another… |
//! |---|---|---|---|
//! | reader (a read-only disk, a backing file, `disk info/check/compare`, `convert`'s source) | consistent read | write, resize | writes or resizes it |
//! | writer (a writable disk, `convert`'s destination) | consistent read, write (+ resize for qcow2 and sparse VMDK, which grow their files) | write, resize | reads it consistently, writes or resizes it |
//! | `--force-share` reader (`-U`, as `qemu-img -U`) | consistent read | nothing | refuses to share reading |
//!
//! A file system that has no OFD locks (some network file systems) gets none: the file is used
//! unlocked, as QEMU does with `locking=auto`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{DiskError, Result};

/// Whether an image's files are locked (`locking=` of a disk, `--force-share` of the tools).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Locking {
    /// Take the locks of the use, and refuse a file another process uses in a conflicting way.
    #[default]
    On,
    /// Read whatever others do with the file, as `qemu-img -U`: take only the read lock, and
    /// refuse nothing but a user that forbids reading. The data read may be inconsistent.
    ForceShare,
    /// Take no lock and check none (QEMU's `file.locking=off`).
    Off,
}

/// How a file is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read only.
    Read,
    /// Read and written; `grows`: the format appends to the file (qcow2, sparse VMDK).
    Write { grows: bool },
}

/// QEMU's permission bits (`BLK_PERM_*`, as bit numbers).
const CONSISTENT_READ: u32 = 0;
const WRITE: u32 = 1;
const RESIZE: u32 = 3;
/// Byte `PERM_BASE + p` is locked by a user holding permission `p`.
const PERM_BASE: i64 = 100;
/// Byte `SHARED_BASE + p` is locked by a user that does not share permission `p`.
const SHARED_BASE: i64 = 200;

/// The permissions a use holds and those it does not share, as bit masks.
fn permissions(access: Access, locking: Locking) -> (u32, u32) {
    let held = match access {
        Access::Read => 1 << CONSISTENT_READ,
        Access::Write { grows: false } => 1 << CONSISTENT_READ | 1 << WRITE,
        Access::Write { grows: true } => 1 << CONSISTENT_READ | 1 << WRITE | 1 << RESIZE,
    };
    let unshared = match locking {
        Locking::ForceShare => 0,
        _ => 1 << WRITE | 1 << RESIZE,
    };
    (held, unshared)
}

/// The name QEMU gives a permission in its messages.
fn name(permission: u32) -> &'static str {
    match permission {
        CONSISTENT_READ => "consistent read",
        WRITE => "write",
        RESIZE => "resize",
        _ => "write unchanged",
    }
}

/// Takes the locks of `access` on `file` and checks that no other process's use conflicts.
/// On a conflict the locks just taken stay with the file description: the caller drops it.
pub(crate) fn lock(file: &File, path: &Path, access: Access, locking: Locking) -> Result<()> {
    if locking == Locking::Off {
        return Ok(());
    }
    let (held, unshared) = permissions(access, locking);
    let bytes = bits(held)
        .map(|p| PERM_BASE + i64::from(p))
        .chain(bits(unshared).map(|p| SHARED_BASE + i64::from(p)));
    for byte in bytes {
        match set_read_lock(file, byte) {
            Ok(()) => {}
            Err(e) if unsupported(&e) => return Ok(()),
            Err(source) => return Err(DiskError::Open { path: path.to_path_buf(), source }),
        }
    }
    for p in bits(held) {
        if held_by_another(file, SHARED_BASE + i64::from(p)).map_err(io_error(path))? {
            return Err(DiskError::InUse {
                path: path.to_path_buf(),
                how: format!("it does not share {} access", name(p)),
            });
        }
    }
    for p in bits(unshared) {
        if held_by_another(file, PERM_BASE + i64::from(p)).map_err(io_error(path))? {
            let how = match p {
                WRITE => "it writes to the image".to_string(),
                p => format!("it holds {} access", name(p)),
            };
            return Err(DiskError::InUse { path: path.to_path_buf(), how });
        }
    }
    Ok(())
}

/// Releases every lock this open file description holds on the bytes of the scheme.
pub(crate) fn unlock(file: &File) {
    let mut fl = flock(libc::F_UNLCK, PERM_BASE);
    fl.l_len = SHARED_BASE + 4 - PERM_BASE;
    // SAFETY: F_OFD_SETLK reads a `flock` struct that lives for the call.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> DiskError + '_ {
    move |source| DiskError::Open { path: path.to_path_buf(), source }
}

/// The bit numbers set in `mask`.
fn bits(mask: u32) -> impl Iterator<Item = u32> {
    (0..4).filter(move |p| mask & (1 << p) != 0)
}

/// Errors that mean the file system has no OFD locks.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOLCK))
}

fn flock(kind: libc::c_int, byte: i64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all zeroes is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

/// A shared lock on one byte, owned by the open file description.
fn set_read_lock(file: &File, byte: i64) -> io::Result<()> {
    let fl = flock(libc::F_RDLCK, byte);
    // SAFETY: F_OFD_SETLK reads a `flock` struct that lives for the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether another open file description holds a lock on `byte` (ours never conflict with us).
fn held_by_another(file: &File, byte: i64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, byte);
    // SAFETY: F_OFD_GETLK reads and writes a `flock` struct that lives for the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return if unsupported(&e) { Ok(false) } else { Err(e) };
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> File {
        std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap()
    }

    /// The bytes locked on the file, from `/proc/locks` (which merges a holder's adjacent bytes
    /// into one range).
    fn locked_bytes(path: &Path) -> Vec<u64> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(path).unwrap().ino();
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let mut bytes: Vec<u64> = locks
            .lines()
            .filter(|l| l.contains("OFDLCK"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let ino_field = f.get(5)?.rsplit(':').next()?;
                let (start, end) = (f.get(6)?.parse::<u64>().ok()?, f.get(7)?.parse().ok()?);
                (ino_field.parse::<u64>().ok()? == ino).then_some(start..=end)
            })
            .flatten()
            .collect();
        bytes.sort_unstable();
        bytes
    }

    #[test]
    fn the_bytes_are_qemus() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let reader = open(&path);
        lock(&reader, &path, Access::Read, Locking::On).unwrap();
        assert_eq!(locked_bytes(&path), [100, 201, 203]);
        drop(reader);
        let writer = open(&path);
        lock(&writer, &path, Access::Write { grows: true }, Locking::On).unwrap();
        assert_eq!(locked_bytes(&path), [100, 101, 103, 201, 203]);
        drop(writer);
        let shared = open(&path);
        lock(&shared, &path, Access::Read, Locking::ForceShare).unwrap();
        assert_eq!(locked_bytes(&path), [100]);
        drop(shared);
        lock(&open(&path), &path, Access::Write { grows: false }, Locking::Off).unwrap();
        assert_eq!(locked_bytes(&path), Vec::<u64>::new());
    }

    #[test]
    fn uses_that_conflict_are_refused_and_readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let writer = open(&path);
        lock(&writer, &path, Access::Write { grows: false }, Locking::On).unwrap();
        let second = lock(&open(&path), &path, Access::Write { grows: false }, Locking::On);
        let e = second.unwrap_err().to_string();
        assert!(e.contains("another process") && e.contains("img"), "{e}");
        assert!(lock(&open(&path), &path, Access::Read, Locking::On).is_err());
        // -U reads what a writer writes.
        lock(&open(&path), &path, Access::Read, Locking::ForceShare).unwrap();
        drop(writer);
        let a = open(&path);
        lock(&a, &path, Access::Read, Locking::On).unwrap();
        let b = open(&path);
        lock(&b, &path, Access::Read, Locking::On).unwrap();
        assert!(lock(&open(&path), &path, Access::Write { grows: false }, Locking::On).is_err());
        drop((a, b));
        lock(&open(&path), &path, Access::Write { grows: false }, Locking::On).unwrap();
    }
}
