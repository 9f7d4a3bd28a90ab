//! Checking the binary a device upgrade would run, before the VM is asked to run it.
//!
//! An upgrade makes the core start a compartment from another binary, with the core's
//! privileges until the sandbox closes. So the server runs only a binary nobody but the VM's
//! user or root could have put there: the path must be absolute (a relative path would be
//! resolved against the core's folder, not the client's), and once symbolic links are
//! resolved, it must name a regular, executable file owned by root or the VM's user that no one
//! else may write to, in folders that no one else may change (a folder others may write to is
//! accepted only with the sticky bit, which stops them from renaming what they do not own).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a binary may not be used for an upgrade.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// The path is relative.
    #[error("the binary path {} is not absolute; give its full path", path.display())]
    NotAbsolute {
        /// The path as given.
        path: PathBuf,
    },
    /// The path does not lead to a file.
    #[error("cannot find the binary {}", path.display())]
    Missing {
        /// The path as given.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The path leads to a folder, a device or another kind of file.
    #[error("{} is not a regular file", path.display())]
    NotFile {
        /// The path as given.
        path: PathBuf,
    },
    /// No execute permission bit is set.
    #[error("{} is not executable (mode {mode:o}); `chmod +x` it", path.display())]
    NotExecutable {
        /// The path as given.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file, or a folder on the way to it, belongs to someone else.
    #[error(
        "{} belongs to uid {owner}; an upgrade runs only binaries that root or the VM's user \
         (uid {vm_uid}) own, in folders they own", path.display()
    )]
    Owner {
        /// The file or folder at fault.
        path: PathBuf,
        /// Who owns it.
        owner: u32,
        /// The VM's user.
        vm_uid: u32,
    },
    /// The file, or a folder on the way to it, may be changed by others.
    #[error(
        "{} may be changed by users other than its owner (mode {mode:o}); `chmod go-w` it",
        path.display()
    )]
    Writable {
        /// The file or folder at fault.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Checks `path` as described in the module docs and returns it with symbolic links resolved:
/// the path to hand to the VM. `vm_uid` is the VM's user.
pub fn check_binary(path: &Path, vm_uid: u32) -> Result<PathBuf, BinaryError> {
    if !path.is_absolute() {
        return Err(BinaryError::NotAbsolute { path: path.to_path_buf() });
    }
    let missing = |source| BinaryError::Missing { path: path.to_path_buf(), source };
    let real = fs::canonicalize(path).map_err(missing)?;
    let meta = fs::metadata(&real).map_err(missing)?;
    if !meta.is_file() {
        return Err(BinaryError::NotFile { path: path.to_path_buf() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o111 == 0 {
        return Err(BinaryError::NotExecutable { path: path.to_path_buf(), mode });
    }
    check_owner_and_mode(&real, &meta, vm_uid)?;
    for dir in real.ancestors().skip(1) {
        let meta = fs::metadata(dir).map_err(missing)?;
        check_owner_and_mode(dir, &meta, vm_uid)?;
    }
    Ok(real)
}

/// Owned by root or `vm_uid`; not writable by group or others, unless a sticky folder.
fn check_owner_and_mode(path: &Path, meta: &fs::Metadata, vm_uid: u32) -> Result<(), BinaryError> {
    if meta.uid() != 0 && meta.uid() != vm_uid {
        return Err(BinaryError::Owner { path: path.to_path_buf(), owner: meta.uid(), vm_uid });
    }
    let mode = meta.permissions().mode() & 0o7777;
    let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky_dir {
        return Err(BinaryError::Writable { path: path.to_path_buf(), mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A private folder under `/tmp` (sticky, so acceptable) holding an executable.
    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("bulkhead");
        fs::write(&bin, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        (dir, bin)
    }

    fn me() -> u32 {
        crate::paths::euid()
    }

    #[test]
    fn a_good_binary_is_accepted_with_links_resolved() {
        let (dir, bin) = setup();
        assert_eq!(check_binary(&bin, me()).unwrap(), fs::canonicalize(&bin).unwrap());
        let link = dir.path().join("link");
        symlink(&bin, &link).unwrap();
        assert_eq!(check_binary(&link, me()).unwrap(), fs::canonicalize(&bin).unwrap());
    }

    #[test]
    fn bad_binaries_are_refused_with_the_reason() {
        let (dir, bin) = setup();
        let err = |p: &Path| check_binary(p, me()).unwrap_err().to_string();
        assert!(err(Path::new("bulkhead")).contains("is not absolute"));
        assert!(err(&dir.path().join("nothing")).starts_with("cannot find the binary"));
        assert!(err(dir.path()).contains("is not a regular file"));
        assert!(err(Path::new("/dev/null")).contains("is not a regular file"));

        fs::set_permissions(&bin, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(err(&bin).contains("is not executable (mode 644)"));
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(err(&bin).contains("(mode 775); `chmod go-w` it"));
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o757)).unwrap();
        assert!(err(&bin).contains("mode 757"));
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();

        // A folder on the way that others may write to (and that is not sticky).
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let message = err(&bin);
        assert!(message.starts_with(&format!("{} may be changed", dir.path().display())));
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn owners_other_than_root_and_the_vm_user_are_refused() {
        let (dir, bin) = setup();
        // Seen from a VM run by uid 4321, a file of ours (root's, in the tests) is fine...
        if me() == 0 {
            check_binary(&bin, 4321).unwrap();
            // ...but one of uid 1234 is not, nor is a folder of uid 1234 on the way.
            std::os::unix::fs::chown(&bin, Some(1234), None).unwrap();
            let message = check_binary(&bin, 4321).unwrap_err().to_string();
            assert!(message.contains("belongs to uid 1234"), "{message}");
            check_binary(&bin, 1234).unwrap();
            std::os::unix::fs::chown(&bin, Some(0), None).unwrap();
            std::os::unix::fs::chown(dir.path(), Some(1234), None).unwrap();
            let message = check_binary(&bin, 4321).unwrap_err().to_string();
            assert!(message.starts_with(&dir.path().display().to_string()), "{message}");
        } else {
            let message = check_binary(&bin, me() + 1).unwrap_err().to_string();
            assert!(message.contains(&format!("belongs to uid {}", me())), "{message}");
        }
    }
}
