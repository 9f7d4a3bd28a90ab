//! The snapshot folder, format version 1. Three files:
//!
//! - `machine.json`: [`MachineState`] — each vCPU's KVM structures as hex, its MSRs, the VM
//!   clock, the I/O APIC's entries, the serial port, each virtio transport (registers, queues,
//!   configuration space, inflight region);
//! - `memory.bin`: guest RAM as its memfd holds it, byte for byte; pages of zeros are left as
//!   holes, so the file takes the room of what the guest touched;
//! - `snapshot.json`: the manifest — format name and version, the writer, the time, vCPUs and
//!   memory size, the VMM's recipe (how the VM was started), and each file's size and CRC-32
//!   (`memory.bin`'s over its non-zero 4 KiB pages, each after its page number as 8
//!   little-endian bytes, so that it does not depend on where the file system keeps holes).
//!
//! The manifest is written last, to a temporary name renamed into place: a folder whose
//! snapshot is being written, or was interrupted, has none and is refused as no snapshot. A
//! file missing, truncated, changed or malformed, or another version, is refused naming the
//! file, before anything of the VM is started; memory's checksum is checked as it is read,
//! before any vCPU runs.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::MachineState;
use crate::memory::GuestRam;

/// The format's name in the manifest.
pub const FORMAT: &str = "bulkhead-snapshot";
/// The format version written and read.
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "snapshot.json";
pub const MACHINE: &str = "machine.json";
pub const MEMORY: &str = "memory.bin";
const PAGE: usize = 4096;
/// Memory is copied this much at a time.
const CHUNK: usize = 1 << 20;
/// The most a manifest or machine file may hold (a hostile folder cannot make the core read
/// gigabytes into its heap).
const MAX_JSON: u64 = 64 << 20;

/// `snapshot.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The program and version that wrote it.
    pub written_by: String,
    /// Seconds since the Unix epoch.
    pub created_unix_s: u64,
    pub cpus: u8,
    pub memory_bytes: u64,
    /// How the VM was started, as the VMM wrote it (`bulkhead run`'s arguments and folder).
    pub recipe: Option<String>,
    pub files: Vec<FileEntry>,
}

/// A file of the snapshot, with its size and checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// What [`write`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub dir: PathBuf,
    /// Bytes of guest memory written (the pages that are not zero).
    pub memory_written: u64,
    /// Bytes of state (`machine.json`).
    pub state_bytes: u64,
    /// From the request to the VM paused.
    pub paused: Duration,
    /// From the request to the files written (and the VM resumed, if it ran).
    pub took: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{} is not a snapshot: it has no {MANIFEST} (a snapshot still being written, or interrupted, has none)", dir.display())]
    NoManifest { dir: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is malformed: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("{} is a snapshot of format version {got}; this Bulkhead reads version {VERSION} only", path.display())]
    Version { path: PathBuf, got: u32 },
    #[error("{} is damaged: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Read { path: path.to_path_buf(), source }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Write { path: path.to_path_buf(), source }
}

/// Writes `machine` and `ram` to `dir` as a snapshot (see the module's docs).
pub fn write(
    dir: &Path,
    machine: &MachineState,
    ram: &GuestRam,
    recipe: Option<&str>,
) -> Result<Written, SnapshotError> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(write_err(dir)(e)),
    }
    // A snapshot being replaced is no snapshot until the new manifest is in place.
    let manifest_path = dir.join(MANIFEST);
    match std::fs::remove_file(&manifest_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(write_err(&manifest_path)(e))
        }
        _ => {}
    }
    let machine_path = dir.join(MACHINE);
    let json = serde_json::to_vec(machine).expect("the machine state serializes");
    write_file(&machine_path, &json)?;
    let memory_path = dir.join(MEMORY);
    let (memory_written, memory_crc) = write_memory(&memory_path, ram)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        written_by: format!("bulkhead {}", env!("CARGO_PKG_VERSION")),
        created_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        cpus: machine.vcpus.len() as u8,
        memory_bytes: ram.size,
        recipe: recipe.map(str::to_string),
        files: vec![
            FileEntry { name: MACHINE.into(), bytes: json.len() as u64, crc32: crc(&json) },
            FileEntry { name: MEMORY.into(), bytes: ram.size, crc32: memory_crc },
        ],
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("the manifest serializes");
    let partial = dir.join(format!("{MANIFEST}.partial"));
    write_file(&partial, &text)?;
    std::fs::rename(&partial, &manifest_path).map_err(write_err(&manifest_path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(write_err(dir))?;
    Ok(Written {
        dir: dir.to_path_buf(),
        memory_written,
        state_bytes: json.len() as u64,
        paused: Duration::ZERO,
        took: Duration::ZERO,
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let mut file = File::create(path).map_err(write_err(path))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(write_err(path))
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Writes guest memory's non-zero pages at their offsets; returns the bytes written and the
/// pages' checksum.
fn write_memory(path: &Path, ram: &GuestRam) -> Result<(u64, u32), SnapshotError> {
    let file = File::create(path).map_err(write_err(path))?;
    file.set_len(ram.size).map_err(write_err(path))?;
    let copied = copy_pages((&ram.file, Path::new("guest memory")), (&file, path), ram.size)?;
    file.sync_all().map_err(write_err(path))?;
    Ok(copied)
}

/// Copies the pages of `from` that are not all zeros, below `len`, to the same offsets of `to`
/// (each a file and the name its errors give), reading only where `from` holds data; returns
/// the bytes copied and the pages' checksum ([`hash_pages`]). Memory goes to a snapshot and
/// comes back from one this way, so both sides count the same pages.
fn copy_pages(
    (from, from_path): (&File, &Path),
    (to, to_path): (&File, &Path),
    len: u64,
) -> Result<(u64, u32), SnapshotError> {
    let mut hasher = crc32fast::Hasher::new();
    let mut copied = 0;
    let mut buf = vec![0u8; CHUNK];
    for (start, end) in data_extents(from, len) {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            from.read_exact_at(&mut buf[..n], at).map_err(read_err(from_path))?;
            for (first, last) in nonzero_runs(&buf[..n]) {
                let offset = at + first as u64;
                hash_pages(&mut hasher, offset, &buf[first..last]);
                to.write_all_at(&buf[first..last], offset).map_err(write_err(to_path))?;
                copied += (last - first) as u64;
            }
            at += n as u64;
        }
    }
    Ok((copied, hasher.finalize()))
}

/// The runs of pages of `buf` that are not all zeros: (first byte, end byte) of each.
fn nonzero_runs(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut run = None;
    for (i, page) in buf.chunks(PAGE).enumerate() {
        let zero = page.iter().all(|&b| b == 0);
        match (zero, run) {
            (false, None) => run = Some(i * PAGE),
            (true, Some(first)) => {
                runs.push((first, i * PAGE));
                run = None;
            }
            _ => {}
        }
    }
    if let Some(first) = run {
        runs.push((first, buf.len()));
    }
    runs
}

/// Adds the pages of `bytes`, which starts at byte `offset` of memory, to the checksum: each
/// page's number, then the page.
fn hash_pages(hasher: &mut crc32fast::Hasher, offset: u64, bytes: &[u8]) {
    for (i, page) in bytes.chunks(PAGE).enumerate() {
        hasher.update(&(offset / PAGE as u64 + i as u64).to_le_bytes());
        hasher.update(page);
    }
}

/// The (start, end) of each range of `file` that holds data, page-aligned, below `len`
/// (`SEEK_DATA`/`SEEK_HOLE`; a file system without holes reports one range).
fn data_extents(file: &File, len: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut at = 0i64;
    while (at as u64) < len {
        // SAFETY: lseek on a descriptor we own; it only moves the file offset.
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 {
            break; // ENXIO: no data past `at`
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let end = if end < 0 { len as i64 } else { end };
        let aligned = |x: i64| x as u64 / PAGE as u64 * PAGE as u64;
        let (s, e) = (aligned(start), (end as u64).div_ceil(PAGE as u64) * PAGE as u64);
        extents.push((s, e.min(len)));
        at = end;
    }
    extents
}

/// A snapshot read and checked, but for memory's checksum (checked as [`Snapshot::fill`]
/// reads it).
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub machine: MachineState,
    memory: File,
}

impl Snapshot {
    /// Reads the snapshot in `dir` and checks all of it but memory's content.
    pub fn load(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let manifest_path = dir.join(MANIFEST);
        let text = match read_limited(&manifest_path) {
            Err(SnapshotError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(if dir.is_dir() {
                    SnapshotError::NoManifest { dir: dir.to_path_buf() }
                } else {
                    SnapshotError::Read { path: dir.to_path_buf(), source }
                });
            }
            other => other?,
        };
        let malformed = |path: &Path, reason: String| SnapshotError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        // The version first, so that another version is named as such, not as malformed.
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| malformed(&manifest_path, e.to_string()))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(malformed(&manifest_path, format!("its format is not {FORMAT:?}")));
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                let got = u32::try_from(v).unwrap_or(u32::MAX);
                return Err(SnapshotError::Version { path: manifest_path, got });
            }
            None => return Err(malformed(&manifest_path, "it has no version".into())),
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| malformed(&manifest_path, e.to_string()))?;
        let entry = |name: &str| {
            manifest
                .files
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| malformed(&manifest_path, format!("it lists no {name}")))
        };
        let machine_entry = entry(MACHINE)?;
        let memory_entry = entry(MEMORY)?;
        let machine_path = dir.join(MACHINE);
        let json = read_limited(&machine_path)?;
        let corrupt = |path: &Path, reason: String| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        if json.len() as u64 != machine_entry.bytes {
            return Err(corrupt(
                &machine_path,
                format!(
                    "it has {} bytes where the manifest says {}",
                    json.len(),
                    machine_entry.bytes
                ),
            ));
        }
        if crc(&json) != machine_entry.crc32 {
            return Err(corrupt(
                &machine_path,
                "its checksum does not match the manifest's".into(),
            ));
        }
        let machine: MachineState =
            serde_json::from_slice(&json).map_err(|e| malformed(&machine_path, e.to_string()))?;
        if machine.vcpus.len() != usize::from(manifest.cpus) || manifest.cpus == 0 {
            return Err(malformed(
                &machine_path,
                format!(
                    "it has {} vCPUs where the manifest says {}",
                    machine.vcpus.len(),
                    manifest.cpus
                ),
            ));
        }
        let memory_path = dir.join(MEMORY);
        let memory = File::open(&memory_path).map_err(read_err(&memory_path))?;
        let len = memory.metadata().map_err(read_err(&memory_path))?.len();
        if len != memory_entry.bytes || len != manifest.memory_bytes {
            return Err(corrupt(
                &memory_path,
                format!(
                    "it has {len} bytes where the manifest says {} of memory",
                    manifest.memory_bytes
                ),
            ));
        }
        Ok(Snapshot { dir: dir.to_path_buf(), manifest, machine, memory })
    }

    /// Copies the snapshot's memory into `ram` (a new, zeroed guest RAM of the snapshot's
    /// size), checking its checksum.
    pub fn fill(&self, ram: &GuestRam) -> Result<(), SnapshotError> {
        let path = self.dir.join(MEMORY);
        if ram.size != self.manifest.memory_bytes {
            return Err(SnapshotError::Corrupt {
                path,
                reason: format!(
                    "it holds {} bytes of memory where the VM has {}",
                    self.manifest.memory_bytes, ram.size
                ),
            });
        }
        let (_, crc) =
            copy_pages((&self.memory, &path), (&ram.file, Path::new("guest memory")), ram.size)?;
        let want = self.manifest.files.iter().find(|f| f.name == MEMORY).map(|f| f.crc32);
        if Some(crc) != want {
            return Err(SnapshotError::Corrupt {
                path,
                reason: "its checksum does not match the manifest's".into(),
            });
        }
        Ok(())
    }
}

/// A file's bytes, refused past [`MAX_JSON`].
fn read_limited(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let file = File::open(path).map_err(read_err(path))?;
    let len = file.metadata().map_err(read_err(path))?.len();
    if len > MAX_JSON {
        return Err(SnapshotError::Malformed {
            path: path.to_path_buf(),
            reason: format!("{len} bytes is more than a snapshot's state holds"),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_JSON), &mut bytes)
        .map_err(read_err(path))?;
    Ok(bytes)
}
