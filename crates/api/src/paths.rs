//! Where control sockets live, and what a VM may be named.
//!
//! A VM named `NAME` listens on `RUN_DIR/NAME.sock`, where `RUN_DIR` is, first that applies:
//!
//! 1. `$BULKHEAD_RUN_DIR`, if set (to anything but the empty string);
//! 2. `/run/bulkhead` for root;
//! 3. `$XDG_RUNTIME_DIR/bulkhead` for other users, if that variable holds an absolute path;
//! 4. `/tmp/bulkhead-UID` otherwise.
//!
//! The server creates a missing run folder with mode 0700. It refuses a folder that exists but
//! belongs to another user (other than root), or that others may write to without the sticky
//! bit: someone who can rename files in it could put their own socket in the VM's place.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The environment variable that overrides the run folder.
pub const RUN_DIR_ENV: &str = "BULKHEAD_RUN_DIR";

/// Names `bulkhead ctl` uses as commands, so no VM may take them.
pub const RESERVED_NAMES: &[&str] = &["list", "help"];

/// The longest VM name.
pub const MAX_NAME_LEN: usize = 64;

/// The longest path a unix socket can have (`sun_path` holds 108 bytes, NUL included).
const MAX_SOCKET_PATH: usize = 107;

/// Why a VM name or a run folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The name has characters, a length or a form that is not allowed.
    #[error(
        "{name:?} is not a valid VM name: use 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or \
         '-', not starting with '.' or '-'"
    )]
    BadName {
        /// The name.
        name: String,
    },
    /// The name is one of [`RESERVED_NAMES`].
    #[error("{name:?} cannot name a VM: `bulkhead ctl {name}` is a command; choose another name")]
    Reserved {
        /// The name.
        name: String,
    },
    /// The socket's path does not fit in a `sockaddr_un`.
    #[error(
        "the socket path {} is too long for a unix socket ({len} bytes, at most \
         {MAX_SOCKET_PATH}); set {RUN_DIR_ENV} to a shorter folder", path.display()
    )]
    TooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The run folder could not be created or examined.
    #[error("cannot create or examine the run folder {}", dir.display())]
    Dir {
        /// The folder.
        dir: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The run folder exists but is not safe to put a socket in.
    #[error("the run folder {} is not safe for control sockets: {reason}", dir.display())]
    UnsafeDir {
        /// The folder.
        dir: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
}

/// The folder where this user's VMs put their control sockets (see the module docs).
pub fn run_dir() -> PathBuf {
    run_dir_from(std::env::var_os(RUN_DIR_ENV), std::env::var_os("XDG_RUNTIME_DIR"), euid())
}

/// [`run_dir`] from explicit inputs: the two variables and the effective uid.
pub fn run_dir_from(run_dir: Option<OsString>, xdg: Option<OsString>, uid: u32) -> PathBuf {
    if let Some(dir) = run_dir.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if uid == 0 {
        return PathBuf::from("/run/bulkhead");
    }
    match xdg.map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() => xdg.join("bulkhead"),
        _ => PathBuf::from(format!("/tmp/bulkhead-{uid}")),
    }
}

/// Checks that `name` may name a VM: 1 to 64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`,
/// and not a `bulkhead ctl` command. Such a name is a single path component.
pub fn check_name(name: &str) -> Result<(), PathError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(allowed)
        && !name.starts_with(['.', '-']);
    if !valid {
        return Err(PathError::BadName { name: name.to_string() });
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(PathError::Reserved { name: name.to_string() });
    }
    Ok(())
}

/// The control socket of the VM `name` in [`run_dir`]; checks the name.
pub fn socket_path(name: &str) -> Result<PathBuf, PathError> {
    socket_path_in(&run_dir(), name)
}

/// The control socket of the VM `name` in `dir`; checks the name and the path's length.
pub fn socket_path_in(dir: &Path, name: &str) -> Result<PathBuf, PathError> {
    check_name(name)?;
    let path = dir.join(format!("{name}.sock"));
    check_socket_path(&path)?;
    Ok(path)
}

/// Checks that `path` fits in a unix socket address.
pub(crate) fn check_socket_path(path: &Path) -> Result<(), PathError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(PathError::TooLong { path: path.to_path_buf(), len });
    }
    Ok(())
}

/// Creates `dir` (mode 0700, parents as needed) or checks the one that is there: a folder,
/// owned by this user or root, not writable by others unless sticky.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), PathError> {
    let io_err = |source| PathError::Dir { dir: dir.to_path_buf(), source };
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(e)),
    }
    let meta = fs::metadata(dir).map_err(io_err)?;
    let unsafe_dir = |reason: String| PathError::UnsafeDir { dir: dir.to_path_buf(), reason };
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a folder".into()));
    }
    let me = euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, not to you (uid {me}) or root; use another folder",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_dir(format!(
            "others may write to it (mode {:o}); `chmod go-w` it or use another folder",
            mode & 0o7777
        )));
    }
    Ok(())
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_rules() {
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(run_dir_from(some("/x"), some("/run/user/1000"), 1000), Path::new("/x"));
        assert_eq!(run_dir_from(some("/x"), None, 0), Path::new("/x"));
        assert_eq!(run_dir_from(some(""), None, 0), Path::new("/run/bulkhead"));
        assert_eq!(run_dir_from(None, some("/run/user/0"), 0), Path::new("/run/bulkhead"));
        assert_eq!(
            run_dir_from(None, some("/run/user/1000"), 1000),
            Path::new("/run/user/1000/bulkhead")
        );
        assert_eq!(run_dir_from(None, some("relative"), 1000), Path::new("/tmp/bulkhead-1000"));
        assert_eq!(run_dir_from(None, None, 1000), Path::new("/tmp/bulkhead-1000"));
    }

    #[test]
    fn names() {
        for good in ["vm0", "web-1", "a", "A.b_c-d", &"x".repeat(MAX_NAME_LEN)] {
            check_name(good).unwrap();
        }
        for bad in ["", ".hidden", "-x", "a/b", "..", "a b", "é", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(matches!(check_name(bad), Err(PathError::BadName { .. })), "{bad:?}");
        }
        assert!(matches!(check_name("list"), Err(PathError::Reserved { .. })));
    }

    #[test]
    fn socket_paths() {
        assert_eq!(socket_path_in(Path::new("/r"), "vm0").unwrap(), Path::new("/r/vm0.sock"));
        let deep = PathBuf::from(format!("/{}", "d".repeat(60)));
        assert!(matches!(socket_path_in(&deep, &"n".repeat(50)), Err(PathError::TooLong { .. })));
    }

    #[test]
    fn prepare_dir_creates_0700_and_refuses_unsafe_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        prepare_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        prepare_dir(&dir).unwrap();

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("others may write to it (mode 777)"), "{err}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        prepare_dir(&dir).unwrap();

        if euid() == 0 {
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            let err = prepare_dir(&dir).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534"), "{err}");
        }

        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(prepare_dir(&file).is_err());
    }
}
