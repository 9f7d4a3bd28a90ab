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
    open(path, &OpenOptions { read_only: true, format, allow_outside_paths: false })
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

pub fn open_rw(path: &Path, format: Format) -> Box<dyn DiskImage> {
    open(path, &OpenOptions { read_only: false, format: Some(format), allow_outside_paths: false })
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
