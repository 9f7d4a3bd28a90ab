//! The lock file against the real apt archive: stale pins and bad checksums are refused with
//! a way out, and `--update-pins` writes a lock file that parses and is checked.
//!
//! Needs apt-get with up-to-date lists (`apt-get update`) and access to the Debian archive.

use std::fs;
use std::path::Path;

use bulkhead_linux_guest::apt::AptError;
use bulkhead_linux_guest::lock::{Lock, Role};
use bulkhead_linux_guest::{build, update_pins, BuildError, BuildOptions};

const COMMITTED: &str = include_str!("../debian-packages.lock");

fn options(dir: &Path, lock: &str) -> BuildOptions {
    let lock_file = dir.join("test.lock");
    fs::write(&lock_file, lock).unwrap();
    BuildOptions {
        lock_file: Some(lock_file),
        data_dir: Some(dir.join("data")),
        cache_dir: Some(dir.join("cache")),
        ..BuildOptions::default()
    }
}

fn with_busybox(version: &str, sha256: &str) -> String {
    let lock = Lock::parse(COMMITTED).unwrap();
    let pin = lock.get(Role::Busybox);
    COMMITTED.replace(&pin.version, version).replace(&pin.sha256, sha256)
}

#[test]
fn a_pin_the_archive_no_longer_has_says_how_to_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let sha = "0".repeat(64);
    let opts = options(dir.path(), &with_busybox("1:0.0.1-bulkhead-gone", &sha));
    let err = build(&opts).unwrap_err();
    assert!(
        matches!(&err, BuildError::Apt(AptError::PinnedVersionGone { package, .. }) if package == "busybox-static"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("bulkhead image build --update-pins"), "{text}");
    assert!(text.contains("no longer in the apt archive"), "{text}");
}

#[test]
fn a_deb_that_does_not_match_its_pin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = Lock::parse(COMMITTED).unwrap().get(Role::Busybox).clone();
    let wrong = "0".repeat(64);
    let opts = options(dir.path(), &with_busybox(&pinned.version, &wrong));
    match build(&opts) {
        Err(BuildError::Apt(AptError::ChecksumMismatch { expected, actual, .. })) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, pinned.sha256, "the archive's busybox-static changed");
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    let debs = dir.path().join("cache/debs");
    let kept: Vec<_> = fs::read_dir(&debs).unwrap().collect();
    assert!(kept.is_empty(), "a refused download was kept in {debs:?}");
}

#[test]
fn update_pins_writes_a_lock_file_that_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), COMMITTED);
    // The user's cache: the kernel .deb is likely there already, which spares a download.
    opts.cache_dir = None;
    let update = update_pins(&opts).unwrap_or_else(|e| panic!("{e}"));
    let written = fs::read_to_string(opts.lock_file.as_ref().unwrap()).unwrap();
    assert_eq!(Lock::parse(&written).unwrap(), update.new);
    assert_eq!(update.old, Lock::parse(COMMITTED).unwrap());
    let kernel = update.new.get(Role::Kernel);
    assert!(
        kernel.package.starts_with("linux-image-") && kernel.package.ends_with("-cloud-amd64"),
        "{kernel:?}"
    );
    assert_eq!(update.new.get(Role::Busybox).package, "busybox-static");
}
