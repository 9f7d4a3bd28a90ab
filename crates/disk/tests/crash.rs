//! A child process writing to a qcow2 and to a sparse VMDK is SIGKILLed mid-stream. Every
//! write it flushed before the kill must read back intact, the image must have no corruption
//! (leaks at most), and the crate must reopen it for writing.

mod common;

use bulkhead_disk::tools::{self, CreateSpec};
use bulkhead_disk::{Format, Qcow2CreateOptions, VmdkCreateOptions, VmdkSubformat};
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const SIZE: u64 = 64 << 20;
const BLOCK: u64 = 4096;
const SEED: u64 = 0x5eed;
/// The parent kills the child once it has seen this many writes flushed.
const KILL_AFTER: u64 = 300;

/// Block written by write number `i`, a permutation so no block is written twice.
fn order() -> Vec<u64> {
    let n = SIZE / BLOCK;
    let mut v: Vec<u64> = (0..n).collect();
    let mut rng = Rng(SEED);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

fn pattern(i: u64) -> Vec<u8> {
    (0..BLOCK / 8).flat_map(|w| ((i << 32) | w).to_le_bytes()).collect()
}

/// The child: writes blocks and reports each flush on stdout. Does nothing in a normal run.
#[test]
fn crash_child() {
    let (Ok(path), Ok(format)) =
        (std::env::var("BULKHEAD_CRASH_IMAGE"), std::env::var("BULKHEAD_CRASH_FORMAT"))
    else {
        return;
    };
    let format: Format = format.parse().unwrap();
    let img = open_rw(Path::new(&path), format);
    let mut out = std::io::stdout();
    for (i, &b) in order().iter().enumerate() {
        img.write_at(&pattern(i as u64), b * BLOCK).unwrap();
        if i % 8 == 7 {
            img.flush().unwrap();
            writeln!(out, "FLUSHED {i}").unwrap();
            out.flush().unwrap();
        }
    }
    writeln!(out, "DONE").unwrap();
}

/// Runs the child on `path`, kills it mid-stream, returns the last write known flushed.
fn run_and_kill(path: &Path, format: Format) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("BULKHEAD_CRASH_IMAGE", path)
        .env("BULKHEAD_CRASH_FORMAT", format.name())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut flushed = None;
    let reader = BufReader::new(child.stdout.take().unwrap());
    for line in reader.lines() {
        let line = line.unwrap();
        assert_ne!(line, "DONE", "the child finished before it was killed");
        if let Some(n) = line.strip_prefix("FLUSHED ") {
            let n: u64 = n.parse().unwrap();
            flushed = Some(n);
            if n >= KILL_AFTER {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was not killed");
    flushed.expect("the child flushed nothing")
}

fn verify(path: &Path, format: Format, flushed: u64) {
    let img = open_rw(path, format);
    let order = order();
    let mut buf = vec![0u8; BLOCK as usize];
    for i in 0..=flushed {
        img.read_at(&mut buf, order[i as usize] * BLOCK).unwrap();
        assert!(
            buf == pattern(i),
            "flushed write {i} (block {}) did not survive",
            order[i as usize]
        );
    }
    // The reopened image takes writes again.
    img.write_at(&[9u8; 5000], 12345).unwrap();
    img.flush().unwrap();
}

/// qemu-img check without repair: leaks are allowed after a kill, corruption is not.
fn assert_no_corruption(path: &Path, format: &str) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", "-f", format, path.to_str().unwrap()])
        .output()
        .expect("qemu-img is required by this test; install qemu-utils");
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("qemu-img check said: {text}"));
    assert_eq!(json.get("corruptions").and_then(|v| v.as_u64()).unwrap_or(0), 0, "{text}");
}

#[test]
fn qcow2_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.qcow2");
    tools::create(&path, SIZE, &CreateSpec::Qcow2(Qcow2CreateOptions::default())).unwrap();
    let flushed = run_and_kill(&path, Format::Qcow2);
    assert_no_corruption(&path, "qcow2");
    let report = open_ro(&path, None).check().unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    qemu_img(&["check", "-r", "all", "-f", "qcow2", path.to_str().unwrap()]);
    assert_qemu_check_clean(&path, "qcow2");
    verify(&path, Format::Qcow2, flushed);
    assert_qemu_check_clean(&path, "qcow2");
}

#[test]
fn sparse_vmdk_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [VmdkSubformat::MonolithicSparse, VmdkSubformat::TwoGbMaxExtentSparse] {
        let path = dir.path().join(format!("crash-{}.vmdk", sub.name()));
        tools::create(
            &path,
            SIZE,
            &CreateSpec::Vmdk(VmdkCreateOptions { subformat: sub, zeroed_grain: false }),
        )
        .unwrap();
        let flushed = run_and_kill(&path, Format::Vmdk);
        assert_no_corruption(&path, "vmdk");
        let report = open_ro(&path, None).check().unwrap();
        assert!(report.errors.is_empty(), "{report:?}");
        verify(&path, Format::Vmdk, flushed);
        assert_qemu_check_clean(&path, "vmdk");
    }
}
