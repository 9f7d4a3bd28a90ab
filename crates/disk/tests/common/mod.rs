//! Helpers shared by the integration tests: qemu-img/qemu-io runners, a seeded PRNG, readers.
#![allow(dead_code)]

use bulkhead_disk::{open, DiskImage, Format, OpenOptions};
use std::path::Path;
use std::process::Command;

/// Runs a QEMU tool and returns its stdout; panics with a clear message when the tool is missing
/// (these tests must not pass silently without it) or fails.
pub fn run_tool(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} is required by this test but cannot be run ({e}); install qemu-utils")
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn qemu_img(args: &[&str]) -> String {
    run_tool("qemu-img", args)
}

pub fn qemu_io(args: &[&str]) -> String {
    run_tool("qemu-io", args)
}

/// `qemu-img check` on an image: panics unless it reports no errors and no leaks.
pub fn assert_qemu_check_clean(path: &Path, format: &str) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", "-f", format, path.to_str().unwrap()])
        .output()
        .expect("qemu-img is required by this test; install qemu-utils");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check {} failed: {text}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in ["corruptions", "leaks", "check-errors"] {
        let n = json.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        assert_eq!(n, 0, "qemu-img check {} reports {key}: {text}", path.display());
    }
}

/// `qemu-img compare` of an image against a raw file: panics unless equal.
pub fn assert_qemu_compare(raw: &Path, image: &Path, format: &str) {
    qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        format,
        raw.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
}

/// A small seeded PRNG (xorshift64*), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub fn open_ro(path: &Path, format: Option<Format>) -> Box<dyn DiskImage> {
    open(
        path,
        &OpenOptions { read_only: true, format, allow_outside_paths: false, ..Default::default() },
    )
    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

pub fn open_rw(path: &Path, format: Format) -> Box<dyn DiskImage> {
    open(
        path,
        &OpenOptions {
            read_only: false,
            format: Some(format),
            allow_outside_paths: false,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// Reads the whole disk in pieces of odd sizes, so that reads straddle clusters.
pub fn read_all(img: &dyn DiskImage) -> Vec<u8> {
    let size = img.virtual_size() as usize;
    let mut out = vec![0u8; size];
    let mut pos = 0;
    let mut step = 1;
    while pos < size {
        let n = (100_003 * step % 300_007 + 1).min(size - pos);
        img.read_at(&mut out[pos..pos + n], pos as u64).unwrap();
        pos += n;
        step += 1;
    }
    out
}

/// Position of the first differing byte, for readable failures.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// A raw reference disk: random data in some ranges, zeros (holes) elsewhere.
pub fn make_reference(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = vec![0u8; size];
    for _ in 0..24 {
        let len = rng.below(200_000) as usize + 1;
        let off = rng.below((size - len) as u64) as usize;
        rng.fill(&mut data[off..off + len]);
    }
    // Compressible runs too (for the compressed formats).
    for i in (0..size).step_by(700_001) {
        let end = (i + 70_000).min(size);
        data[i..end].fill((i % 251) as u8 + 1);
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Sizes that end inside a grain (64 KiB), for the VMDK tail-grain tests: the last grain of the
/// disk covers only its tail.
pub const ODD_SIZES: [(&str, u64); 7] = [
    ("1M+1536", (1 << 20) + 1536),
    ("64K-512", (64 << 10) - 512),
    ("512", 512),
    ("1M+1000", (1 << 20) + 1000),
    ("3M+320K+512", (3 << 20) + (320 << 10) + 512),
    ("32M-512", (32 << 20) - 512),
    ("32M+512", (32 << 20) + 512),
];

/// A sparse raw disk of `size` bytes with data in its first 4 KiB and its last 1,536 bytes
/// (fewer when the disk is smaller); returns its content.
pub fn make_tail_reference(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = vec![0u8; size as usize];
    let head = data.len().min(4096);
    rng.fill(&mut data[..head]);
    let tail = data.len() - data.len().min(1536);
    rng.fill(&mut data[tail..]);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &data[..head], 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &data[tail..], tail as u64).unwrap();
    data
}

/// Asserts that the whole disk reads as `expected`, zero-padded to the disk's size.
pub fn assert_content(img: &dyn DiskImage, expected: &[u8], what: &str) {
    let mut want = expected.to_vec();
    want.resize(img.virtual_size() as usize, 0);
    let got = read_all(img);
    if got != want {
        panic!("{what} differs from the reference at byte {:?}", first_diff(&got, &want));
    }
}

fn le32_at(b: &[u8], at: u64) -> u64 {
    u64::from(u32::from_le_bytes(b[at as usize..at as usize + 4].try_into().unwrap()))
}

fn le64_at(b: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

/// Byte offset of grain `gi`'s grain table entry in a streamOptimized file (the directory
/// named in the header, or in the footer when the header says "at end").
pub fn stream_gte_offset(file: &[u8], gi: u64) -> u64 {
    let mut gd = le64_at(file, 56);
    if gd == u64::MAX {
        gd = le64_at(file, file.len() as u64 - 1024 + 56);
    }
    let gtes = le32_at(file, 44);
    let table = le32_at(file, gd * 512 + gi / gtes * 4);
    assert_ne!(table, 0, "grain {gi} has no grain table");
    table * 512 + gi % gtes * 4
}

/// Number of bytes grain `gi` of a streamOptimized file decompresses to.
pub fn stream_grain_len(path: &Path, gi: u64) -> usize {
    let file = std::fs::read(path).unwrap();
    let marker = le32_at(&file, stream_gte_offset(&file, gi)) * 512;
    assert_ne!(marker, 0, "grain {gi} of {} is not allocated", path.display());
    let size = le32_at(&file, marker + 8) as usize;
    let start = marker as usize + 12;
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::ZlibDecoder::new(&file[start..start + size]),
        &mut out,
    )
    .unwrap();
    out.len()
}

/// Points grain `gi` of a streamOptimized file at a new grain appended to the file: a marker
/// and `packed` as its compressed data.
pub fn replace_stream_grain(path: &Path, gi: u64, packed: &[u8]) {
    let mut file = std::fs::read(path).unwrap();
    assert_ne!(le64_at(&file, 56), u64::MAX, "appending would move the footer");
    let entry = stream_gte_offset(&file, gi) as usize;
    file.resize(file.len().div_ceil(512) * 512, 0);
    let sector = (file.len() / 512) as u32;
    file.extend_from_slice(&(gi * 128).to_le_bytes());
    file.extend_from_slice(&(packed.len() as u32).to_le_bytes());
    file.extend_from_slice(packed);
    file.resize(file.len().div_ceil(512) * 512, 0);
    file[entry..entry + 4].copy_from_slice(&sector.to_le_bytes());
    std::fs::write(path, file).unwrap();
}

/// `data` compressed as a zlib stream, as VMDK grains are.
pub fn zlib(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, data).unwrap();
    enc.finish().unwrap()
}
