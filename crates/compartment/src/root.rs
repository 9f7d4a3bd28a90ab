//! The empty-root layer: inside its own mount namespace the compartment
//! replaces its root by a small tmpfs that holds only the paths its policy
//! lists (bind-mounted at the same absolute paths, read-only where the policy
//! says so, never executable), then makes that root read-only.
//!
//! Landlock already denies opening anything unlisted; the empty root also
//! hides the host's files from calls Landlock does not cover (`stat`,
//! `readlink`, `access`) and takes `/proc` away, host PIDs with it.
//!
//! Steps, each of which must succeed:
//! 1. open every listed path (`O_PATH`), so later mounts cannot hide it;
//! 2. make every mount private, so nothing propagates to the host;
//! 3. mount a tmpfs on `/tmp` (the first of a few directories that exist);
//! 4. recreate each listed path in it and bind-mount the original there from
//!    `/proc/self/fd/N`, then remount the bind `nosuid`, `noexec` unless listed
//!    for running programs, `nodev` unless it is a device, `ro` unless listed
//!    read-write; an outside backend's root also gets links (`/lib` where `/usr`
//!    is merged), small writable tmpfs folders and its own `/proc` ([`Extras`]);
//! 5. `pivot_root(".", ".")` into the tmpfs and detach the old root;
//! 6. remount the new root read-only.
//!
//! It runs only in a mount namespace that `spawn` created (the caller checks),
//! never in the host's: a pivot there would move the host's root.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bulkhead_sandbox::policy::{Access, PathRule};

/// Errors of the empty-root layer.
#[derive(Debug, thiserror::Error)]
#[error("could not {step} {}", path.display())]
pub struct RootError {
    step: &'static str,
    path: PathBuf,
    source: io::Error,
}

fn err<'p>(step: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> RootError + 'p {
    move |source| RootError { step, path: path.to_path_buf(), source }
}

/// Where the new root is mounted before the pivot.
const STAGING: &[&str] = &["/tmp", "/mnt", "/run", "/var/tmp"];

struct Source {
    path: PathBuf,
    fd: OwnedFd,
    is_dir: bool,
    is_device: bool,
    access: Access,
}

/// What a root holds besides the paths of a policy: an outside backend's program needs more
/// than a device of Bulkhead's (its libraries, a place for its socket, `/proc`).
#[derive(Debug, Default)]
pub struct Extras {
    /// Symbolic links to recreate, link → target (`/lib` → `usr/lib` where `/usr` is merged).
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// Empty writable folders, a small tmpfs each (where a program makes its socket).
    pub scratch: Vec<PathBuf>,
    /// Empty read-only folders made where no path is bound (the program's working folder, so
    /// that relative paths in its arguments reach what it was handed below it).
    pub folders: Vec<PathBuf>,
    /// A procfs of the compartment's own PID namespace on `/proc`.
    pub proc: bool,
    /// The user and group (the same number, inside the user namespace) that own the scratch
    /// folders, and that the process becomes before it drops its capabilities.
    pub run_as: Option<u32>,
}

/// Replaces the root by an empty read-only tmpfs holding `paths` and `extras`;
/// returns the report detail.
pub fn make_root(paths: &[PathRule], extras: &Extras) -> Result<String, RootError> {
    let mut sources = open_sources(paths)?;
    sources.sort_by_key(|s| s.path.components().count());
    let root = Path::new("/");
    mount(None, root, None, libc::MS_REC | libc::MS_PRIVATE, None)
        .map_err(err("make private the mounts of", root))?;
    let staging = STAGING.iter().map(Path::new).find(|p| p.is_dir()).ok_or_else(|| RootError {
        step: "find a directory to stage the new root in, tried",
        path: PathBuf::from(STAGING.join(", ")),
        source: io::ErrorKind::NotFound.into(),
    })?;
    let tmpfs_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        Some(b"tmpfs".as_slice()),
        staging,
        Some("tmpfs"),
        tmpfs_flags,
        Some("mode=0755,size=1m"),
    )
    .map_err(err("mount a tmpfs on", staging))?;
    let inside = |path: &Path| staging.join(path.strip_prefix("/").unwrap_or(path));
    for (link, target) in &extras.symlinks {
        std::os::unix::fs::symlink(target, inside(link)).map_err(err("create the link", link))?;
    }
    let mut bound: Vec<&Path> = Vec::new();
    for source in &sources {
        let target = inside(&source.path);
        // Below an earlier bind, the path exists already: it is the host's own
        // file seen through that bind, and binding it over itself gives it its
        // own flags. Elsewhere only the tmpfs is written to.
        if !bound.iter().any(|b| source.path.starts_with(b)) {
            create_mount_point(&target, source.is_dir)?;
        }
        bind(source, &target)?;
        bound.push(&source.path);
    }
    for dir in &extras.folders {
        if !bound.iter().any(|b| dir.starts_with(b)) {
            fs::create_dir_all(inside(dir)).map_err(err("create", dir))?;
        }
    }
    for dir in &extras.scratch {
        let target = inside(dir);
        create_mount_point(&target, true)?;
        let owner = extras.run_as.map(|id| format!(",uid={id},gid={id}")).unwrap_or_default();
        let options = format!("mode=0700,size=1m{owner}");
        mount(Some(b"tmpfs"), &target, Some("tmpfs"), tmpfs_flags, Some(&options))
            .map_err(err("mount a tmpfs on", dir))?;
    }
    let mut detail = String::new();
    if extras.proc {
        let target = inside(Path::new("/proc"));
        create_mount_point(&target, true)?;
        // Only a PID namespace's own procfs shows its processes and nothing of the host's.
        if let Err(e) = mount(Some(b"proc"), &target, Some("proc"), tmpfs_flags, None) {
            detail = format!(", no /proc ({e})");
        } else {
            detail = ", own /proc".into();
        }
    }
    std::env::set_current_dir(staging).map_err(err("enter", staging))?;
    pivot_to_cwd().map_err(err("pivot_root into", staging))?;
    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | tmpfs_flags;
    mount(None, root, None, flags, None).map_err(err("remount read-only", root))?;
    let n = sources.len();
    Ok(format!("empty, ro, {n} bind{}{detail}", if n == 1 { "" } else { "s" }))
}

fn open_sources(paths: &[PathRule]) -> Result<Vec<Source>, RootError> {
    let mut sources = Vec::new();
    for rule in paths {
        let path = fs::canonicalize(&rule.path).map_err(err("resolve", &rule.path))?;
        // O_PATH: a handle on the file itself, whatever its type and permissions.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(&path)
            .map_err(err("open", &path))?;
        let meta = file.metadata().map_err(err("stat", &path))?;
        let kind = meta.file_type();
        sources.push(Source {
            path,
            fd: file.into(),
            is_dir: meta.is_dir(),
            is_device: kind.is_block_device() || kind.is_char_device(),
            access: rule.access,
        });
    }
    Ok(sources)
}

fn create_mount_point(target: &Path, is_dir: bool) -> Result<(), RootError> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(err("create", parent))?;
    }
    let made = if is_dir {
        fs::create_dir(target)
    } else {
        fs::OpenOptions::new().write(true).create_new(true).open(target).map(drop)
    };
    match made {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(err("create", target)(e)),
        _ => Ok(()),
    }
}

fn bind(source: &Source, target: &Path) -> Result<(), RootError> {
    let from = PathBuf::from(format!("/proc/self/fd/{}", source.fd.as_raw_fd()));
    mount(Some(from.as_os_str().as_bytes()), target, None, libc::MS_BIND | libc::MS_REC, None)
        .map_err(err("bind-mount", &source.path))?;
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID;
    if source.access != Access::ReadExec {
        flags |= libc::MS_NOEXEC;
    }
    if !source.is_device {
        flags |= libc::MS_NODEV;
    }
    if source.access != Access::ReadWrite {
        flags |= libc::MS_RDONLY;
    }
    // A remount must keep the flags the mount has (they may be locked).
    flags |= locked_flags(target).map_err(err("read the mount flags of", target))?;
    mount(None, target, None, flags, None).map_err(err("restrict the bind mount of", &source.path))
}

/// The mount flags of the mount holding `path`, as `MS_*` bits.
fn locked_flags(path: &Path) -> io::Result<libc::c_ulong> {
    let c_path = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: all-zero is a valid statvfs.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid C string and stat a writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let pairs = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(pairs.iter().filter(|(st, _)| stat.f_flag & st != 0).fold(0, |acc, (_, ms)| acc | ms))
}

/// `pivot_root(".", ".")` then detaches the old root stacked on the new one.
fn pivot_to_cwd() -> io::Result<()> {
    let dot = c".";
    // SAFETY: both arguments are valid C strings.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a valid C string and a flag.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::env::set_current_dir("/")
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn mount(
    source: Option<&[u8]>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target.as_os_str().as_bytes())?;
    let fstype = fstype.map(|s| cstring(s.as_bytes())).transpose()?;
    let data = data.map(|s| cstring(s.as_bytes())).transpose()?;
    let ptr = |s: &Option<CString>| s.as_deref().map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a valid C string that outlives the call.
    let rc = unsafe {
        libc::mount(ptr(&source), target.as_ptr(), ptr(&fstype), flags, ptr(&data).cast())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
