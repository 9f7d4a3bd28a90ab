//! Shared by the fuzz targets: a scratch folder, and a workout for an opened image.

use bulkhead_disk::{open, DiskImage, Format, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A folder of this process, in memory where possible, with a flat and a sparse extent that
/// descriptors may name.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("bulkhead-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f.vmdk"), vec![0x5au8; 8192]).unwrap();
        let spec = bulkhead_disk::tools::CreateSpec::Vmdk(bulkhead_disk::VmdkCreateOptions {
            subformat: bulkhead_disk::VmdkSubformat::TwoGbMaxExtentSparse,
            zeroed_grain: true,
        });
        bulkhead_disk::tools::create(&dir.join("s.vmdk"), 1 << 20, &spec).unwrap();
        dir
    })
}

/// Puts the extents a descriptor may name back as they were made.
#[allow(dead_code)]
pub fn reset_extents() {
    static PRISTINE: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    let files = PRISTINE.get_or_init(|| {
        ["f.vmdk", "s-s001.vmdk"]
            .iter()
            .map(|n| (scratch().join(n), std::fs::read(scratch().join(n)).unwrap()))
            .collect()
    });
    for (path, bytes) in files {
        std::fs::write(path, bytes).unwrap();
    }
}

/// Writes `data` as the file `name` in the scratch folder and opens it read-write.
pub fn open_bytes(name: &str, data: &[u8], format: Format) -> Option<Box<dyn DiskImage>> {
    let path = scratch().join(name);
    std::fs::write(&path, data).unwrap();
    let opts = OpenOptions { read_only: false, format: Some(format), allow_outside_paths: false, ..Default::default() };
    match open(&path, &opts) {
        Ok(img) => Some(img),
        // Read-only formats (streamOptimized) and read-only images: try again for reading.
        Err(_) => open(&path, &OpenOptions { read_only: true, ..opts }).ok(),
    }
}

/// Reads, writes, zeroes, discards and checks at places derived from the input.
pub fn workout(img: &dyn DiskImage, data: &[u8]) {
    let size = img.virtual_size();
    let _ = img.info();
    let _ = img.check();
    if size == 0 {
        return;
    }
    let seed =
        data.iter().take(64).fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut buf = vec![0u8; 70_000];
    for k in 0..4u64 {
        let off = seed.wrapping_mul(k + 1) % size;
        let len = (size - off).min(buf.len() as u64) as usize;
        let _ = img.read_at(&mut buf[..len], off);
        let _ = img.map(off, len as u64);
    }
    let _ = img.read_at(&mut buf[..size.min(4096) as usize], 0);
    if img.is_read_only() {
        return;
    }
    let off = seed % size;
    let len = (size - off).min(3000) as usize;
    let wrote = [
        img.write_at(&buf[..len], off),
        img.write_zeroes(off / 2, (size - off / 2).min(100_000)),
        img.discard(0, size.min(200_000)),
        img.write_at(&[0xab; 512], 0),
        img.read_at(&mut buf[..size.min(1024) as usize], 0),
        img.flush(),
    ];
    let _ = img.check();
    if wrote.iter().all(|r| r.is_ok()) {
        same_as_reopened(img, &[0, off / 2, off]);
    }
}

/// Every update must be in the files when the call that made it returns (the formats' table
/// caches are write-through): a fresh opener of the same files reads what `img` reads.
fn same_as_reopened(img: &dyn DiskImage, offsets: &[u64]) {
    let info = img.info();
    let opts =
        OpenOptions { read_only: true, format: Some(info.format), allow_outside_paths: false, ..Default::default() };
    let Ok(fresh) = open(&info.path, &opts) else { return };
    let size = img.virtual_size().min(fresh.virtual_size());
    let (mut a, mut b) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    for &at in offsets.iter().filter(|&&at| at < size) {
        let n = (size - at).min(a.len() as u64) as usize;
        if let (Ok(()), Ok(())) = (img.read_at(&mut a[..n], at), fresh.read_at(&mut b[..n], at)) {
            if let Some(i) = (0..n).find(|&i| a[i] != b[i]) {
                panic!("byte {} reads {:#x} through the open image but {:#x} after reopening it: an update did not reach the file", at + i as u64, a[i], b[i]);
            }
        }
    }
}
