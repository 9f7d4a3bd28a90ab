//! Guest memory, backed by one sealed memfd so that compartments can map
//! exactly the guest's RAM (and nothing of the core's) through its file
//! descriptor.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::layout;

/// The smallest and largest guest memory Bulkhead accepts.
pub const MIN_MEMORY: u64 = 16 << 20;
pub const MAX_MEMORY: u64 = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} bytes is too small: give at least 16 MiB")]
    TooSmall(u64),
    #[error("guest memory of {size} MiB is more than this host has ({host} MiB); give less with --memory")]
    TooLarge { size: u64, host: u64 },
    #[error("guest memory of {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
    #[error("cannot create the guest memory file (memfd)")]
    Memfd(#[source] std::io::Error),
    #[error("the guest memory handed over cannot be used: {0}")]
    HandedOver(String),
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// The guest's RAM and the memfd behind it.
pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    pub file: Arc<File>,
    pub size: u64,
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM laid out by [`layout::ram_ranges`].
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        check_size(size, host_memory())?;
        let file = Arc::new(create_memfd("bulkhead-guest-ram", size).map_err(MemoryError::Memfd)?);
        Self::map(file, size)
    }

    /// Guest RAM of `size` bytes in a memfd another core made (a core update hands it over,
    /// with the guest's memory in it as it stood): mapped, not copied.
    pub fn from_file(file: File, size: u64) -> Result<Self, MemoryError> {
        check_size(size, None)?;
        let len = file.metadata().map_err(|e| MemoryError::HandedOver(e.to_string()))?.len();
        if len != size {
            return Err(MemoryError::HandedOver(format!(
                "its file holds {len} bytes where the VM has {size}"
            )));
        }
        Self::map(Arc::new(file), size)
    }

    fn map(file: Arc<File>, size: u64) -> Result<Self, MemoryError> {
        let mut offset = 0;
        let ranges: Vec<_> = layout::ram_ranges(size)
            .into_iter()
            .map(|(start, len)| {
                let r = (
                    GuestAddress(start),
                    len as usize,
                    Some(FileOffset::from_arc(file.clone(), offset)),
                );
                offset += len;
                r
            })
            .collect();
        let memory = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
        Ok(GuestRam { memory, file, size })
    }
}

fn check_size(size: u64, host: Option<u64>) -> Result<(), MemoryError> {
    if size < MIN_MEMORY {
        return Err(MemoryError::TooSmall(size));
    }
    if !size.is_multiple_of(4096) {
        return Err(MemoryError::Unaligned(size));
    }
    let limit = host.unwrap_or(MAX_MEMORY).min(MAX_MEMORY);
    if size > limit {
        return Err(MemoryError::TooLarge { size: size >> 20, host: limit >> 20 });
    }
    Ok(())
}

/// MemTotal from /proc/meminfo, in bytes.
fn host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A memfd of `size` bytes that can be neither shrunk nor grown: a
/// compartment holding it cannot truncate guest memory under the core.
pub fn create_memfd(name: &str, size: u64) -> std::io::Result<File> {
    let name = CString::new(name).expect("memfd name has no NUL");
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new fd
    // or -1; no memory is shared with the kernel beyond the call.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and is owned by no one else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a memfd we own takes an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(check_size(1 << 20, None), Err(MemoryError::TooSmall(_))));
        assert!(matches!(check_size((64 << 20) + 1, None), Err(MemoryError::Unaligned(_))));
        assert!(matches!(
            check_size(64 << 30, Some(8 << 30)),
            Err(MemoryError::TooLarge { size: 65536, host: 8192 })
        ));
        assert!(check_size(64 << 20, Some(8 << 30)).is_ok());
    }

    #[test]
    fn memory_is_shared_through_the_sealed_memfd() {
        let ram = GuestRam::new(64 << 20).unwrap();
        ram.memory.write_obj(0xdead_beef_u32, GuestAddress(0x1000)).unwrap();
        let mut word = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&*ram.file, &mut word, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0xdead_beef);
        assert_eq!(ram.memory.num_regions(), 1);
        assert!(ram.file.set_len(4096).is_err(), "sealed against shrinking");
    }
}
