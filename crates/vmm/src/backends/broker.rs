//! Opening a compartment's files for it.
//!
//! A compartment runs as an unprivileged user (see `policy.rs`) and may not open the image it
//! serves, so it asks the core over its start-up socket, and the core opens — on the launcher
//! thread, the one thread that keeps the rights to — what the device was configured with and
//! nothing else:
//!
//! - the disk image itself, by the path the user gave (made absolute);
//! - files the image names (backing files, a VMDK's extents), only beneath the image's folder:
//!   the kernel resolves them from that folder with `openat2(RESOLVE_BENEATH)`, so that neither
//!   `..` nor a symbolic link leads out of it, whatever a (hostile) image names;
//! - for writing, only if the disk is not read-only.
//!
//! A compartment that asks for anything else is refused, with the reason.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bulkhead_devices::DeviceConfig;

/// What one device's compartment may have opened.
#[derive(Clone, Debug)]
pub struct Broker {
    /// The image, and whether the disk may be written.
    image: Option<(PathBuf, bool)>,
}

impl Broker {
    /// The broker for `config`: a disk's image and its folder, nothing for other devices.
    pub fn for_config(config: &DeviceConfig) -> Broker {
        let image = match config {
            DeviceConfig::Blk(disk) => Some((disk.path.clone(), !disk.read_only)),
            _ => None,
        };
        Broker { image }
    }

    /// Opens `path` (for writing too if `writable`), or says why not.
    pub fn open(&self, path: &Path, writable: bool) -> Result<File, String> {
        let Some((image, may_write)) = &self.image else {
            return Err("this device serves no file".into());
        };
        if writable && !may_write {
            return Err(format!("{} is served read-only", image.display()));
        }
        let mode = if writable { libc::O_RDWR } else { libc::O_RDONLY };
        if path == image {
            return std::fs::OpenOptions::new()
                .read(true)
                .write(writable)
                .open(path)
                .map_err(|e| e.to_string());
        }
        let folder = image.parent().unwrap_or(Path::new("/"));
        let Ok(relative) = path.strip_prefix(folder) else {
            return Err(format!(
                "{} is outside the folder of the image {}",
                path.display(),
                image.display()
            ));
        };
        open_beneath(folder, relative, mode).map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV) => format!(
                "{} leads outside the folder of the image {}",
                path.display(),
                image.display()
            ),
            _ => e.to_string(),
        })
    }
}

/// `relative`, resolved from `folder` by the kernel without leaving it.
fn open_beneath(folder: &Path, relative: &Path, mode: libc::c_int) -> std::io::Result<File> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(folder)?;
    let name = CString::new(relative.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `open_how` is a plain C struct for which all zeroes is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (mode | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads a NUL-terminated name and an `open_how` of the given size, both of
    // which live for the call; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat2 just returned, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_devices::BlkConfig;

    fn broker(image: &Path, read_only: bool) -> Broker {
        let mut disk = BlkConfig::new(image);
        disk.read_only = read_only;
        Broker::for_config(&DeviceConfig::Blk(disk))
    }

    #[test]
    fn the_image_and_what_lies_beneath_its_folder_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("vm");
        std::fs::create_dir_all(folder.join("sub")).unwrap();
        let image = folder.join("top.qcow2");
        std::fs::write(&image, b"top").unwrap();
        std::fs::write(folder.join("sub/base.raw"), b"base").unwrap();
        std::fs::write(dir.path().join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), folder.join("link")).unwrap();
        let b = broker(&image, false);
        b.open(&image, true).unwrap();
        b.open(&folder.join("sub/base.raw"), false).unwrap();
        let outside = b.open(&dir.path().join("secret"), false).unwrap_err();
        assert!(outside.contains("outside the folder"), "{outside}");
        let climbing = b.open(&folder.join("../secret"), false).unwrap_err();
        assert!(climbing.contains("leads outside"), "{climbing}");
        let link = b.open(&folder.join("link"), false).unwrap_err();
        assert!(link.contains("leads outside"), "{link}");
        let ro = broker(&image, true).open(&image, true).unwrap_err();
        assert!(ro.contains("read-only"), "{ro}");
        let none = Broker::for_config(&DeviceConfig::Rng(Default::default()));
        assert!(none.open(&image, false).is_err());
    }
}
