//! The lock file against the real apt archive: pins the archive no longer has are replaced by
//! the current versions of their packages (and the user is told), a `.deb` that does not match
//! its pin is refused, and `--update-pins` writes a lock file that parses and is checked.
//!
//! Needs apt-get, access to the Debian archive, and root: the builder runs `apt-get update`
//! when a pin is not found (as a fresh machine's lists may predate the pins).

use std::fs;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use bulkhead_linux_guest::apt::{self, AptError};
use bulkhead_linux_guest::lock::{Lock, Pin, Role};
use bulkhead_linux_guest::{build, update_pins, BuildError, BuildOptions, Notice};

const COMMITTED: &str = include_str!("../debian-packages.lock");

/// One test at a time talks to apt: `apt-get update` beside an `apt-get download` would make
/// the download read lists that are being replaced.
fn apt_turn() -> MutexGuard<'static, ()> {
    static APT: Mutex<()> = Mutex::new(());
    APT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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

/// What apt offers now for `role`, found as `--update-pins` finds it.
fn current(role: Role) -> Pin {
    let candidate = |package: &str| apt::candidate(package).unwrap_or_else(|e| panic!("{e}"));
    let mut package = role.source_package().to_string();
    let mut offer = candidate(&package);
    if role == Role::Kernel {
        package = offer.depends.iter().find(|d| d.starts_with("linux-image-")).unwrap().clone();
        offer = candidate(&package);
    }
    Pin { role, package, version: offer.version, sha256: offer.sha256 }
}

#[test]
fn pins_the_archive_no_longer_has_are_replaced_by_their_current_versions() {
    let _apt = apt_turn();
    let dir = tempfile::tempdir().unwrap();
    let gone_sha = "0".repeat(64);
    // busybox-static at a version Debian never had, and a kernel whose ABI is gone (ABI 0
    // never shipped), as the committed kernel pin will be when Debian ships its next ABI.
    let kernel = Lock::parse(COMMITTED).unwrap().get(Role::Kernel).clone();
    let lock = with_busybox("1:0.0.1-bulkhead-gone", &gone_sha)
        .replace(&kernel.package, "linux-image-6.1.0-0-cloud-amd64")
        .replace(&kernel.version, "6.1.0-0")
        .replace(&kernel.sha256, &gone_sha);
    let mut opts = options(dir.path(), &lock);
    // The user's cache: the current kernel's .deb is likely there already.
    opts.cache_dir = None;
    let guest = build(&opts).unwrap_or_else(|e| panic!("{e}"));

    // Both pins replaced by what apt offers now, busybox first (it is fetched first), after a
    // refresh of the lists.
    let pinned = Lock::parse(&lock).unwrap();
    let now = [current(Role::Busybox), current(Role::Kernel)];
    let expected: Vec<Notice> = now
        .iter()
        .map(|used| Notice::Fallback {
            pinned: pinned.get(used.role).clone(),
            used: used.clone(),
            not_refreshed: None,
        })
        .collect();
    assert_eq!(guest.notices, expected);

    // The line the user reads, and what the guest is made of.
    let says = format!(
        "the pinned busybox-static 1:0.0.1-bulkhead-gone is gone from the archive; building \
         from busybox-static {} (checked against apt's signed index); refresh the lock with \
         `bulkhead image build --update-pins`",
        now[0].version
    );
    assert_eq!(guest.notices[0].to_string(), says);
    let manifest = fs::read_to_string(guest.kernel.with_file_name("guest.txt")).unwrap();
    for used in &now {
        let entry = format!("package {} {} {}", used.package, used.version, used.sha256);
        assert!(manifest.contains(&entry), "{entry:?} not in {manifest}");
    }

    // The next build reuses this one, and says again what it is built from.
    let again = build(&opts).unwrap();
    assert_eq!((&again.kernel, &again.initrd), (&guest.kernel, &guest.initrd));
    assert_eq!(again.notices, expected);
    let data = dir.path().join("data/linux-guest");
    let records = fs::read_dir(&data).unwrap().filter_map(Result::ok);
    let records = records.filter(|e| e.file_name().to_string_lossy().ends_with(".fallback"));
    assert_eq!(records.count(), 1, "one fallback record in {data:?}");
}

#[test]
fn a_deb_that_does_not_match_its_pin_is_refused() {
    let _apt = apt_turn();
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
    let _apt = apt_turn();
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
