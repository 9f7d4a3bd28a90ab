//! Building the guest: pinned packages in, kernel and initramfs out, cached by their inputs.
//!
//! 1. Read the lock file (refreshing it first with `--update-pins`).
//! 2. Name the build after a hash of everything that goes into it: the pins, the init script,
//!    the module list and this builder's format version. If `<data>/linux-guest/<hash>/` is
//!    complete, that is the answer: no apt call, no download, no unpacking. The same holds
//!    when `<data>/linux-guest/<hash>.fallback` names the pins an earlier build used instead
//!    of gone ones and their build is complete.
//! 3. Otherwise resolve each pin to a `.deb` (cached in `<cache>/debs/`; the `resolve` module:
//!    the pinned version checked against the lock's SHA-256, or, once the archive has moved
//!    on, the current version checked against apt's signed index). The pins actually used name
//!    the build; when they differ from the lock, the `.fallback` record above is written.
//! 4. Unpack both, write the initramfs, copy the bzImage, and rename the finished folder into
//!    place, so a reader never sees half a build and concurrent builders do not clash.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::apt::{self, AptError};
use crate::dirs::{self, DirsError};
use crate::initramfs::{self, InitramfsError, INIT_SCRIPT};
use crate::lock::{Lock, LockError, Pin, Role};
use crate::modules::{OPTIONAL, REQUIRED};
use crate::resolve::{Apt, Notice, Resolver};
use crate::LinuxGuest;

/// Bumped whenever the builder changes what it writes for the same inputs.
const FORMAT: &str = "bulkhead-linux-guest format 1";

/// The lock file as committed, for binaries run away from the source tree.
const EMBEDDED_LOCK: &str = include_str!("../debian-packages.lock");

/// The committed lock file, where the source tree is present.
const SOURCE_LOCK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/debian-packages.lock");

/// The kernel command line the guest expects, before the test's own `bulkhead.*` arguments.
pub const CMDLINE_HINT: &str = "console=ttyS0 panic=-1 quiet";

/// The order in which a build fetches its packages, and tells of fallbacks: the small package
/// first, so that a bad checksum shows before the large download.
const FETCH_ORDER: [Role; 2] = [Role::Busybox, Role::Kernel];

const MANIFEST: &str = "guest.txt";
const KERNEL: &str = "vmlinuz";
const INITRD: &str = "initramfs.cpio";

/// How to build.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Pin the versions the apt archive has now, rewriting the lock file, then build.
    pub update_pins: bool,
    /// Rebuild even if a build of the same inputs is cached.
    pub force: bool,
    /// The lock file; by default the committed one when the source tree is present, else
    /// `<data>/linux-guest/debian-packages.lock` if it exists, else the copy built into this
    /// program.
    pub lock_file: Option<PathBuf>,
    /// Overrides [`dirs::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// Overrides [`dirs::cache_dir`].
    pub cache_dir: Option<PathBuf>,
}

/// Why the guest could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No data or cache directory could be chosen.
    #[error(transparent)]
    Dirs(#[from] DirsError),
    /// The lock file is malformed.
    #[error("the lock file {path} is not valid")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What is wrong with it.
        source: LockError,
    },
    /// A package could not be resolved, fetched, verified or unpacked.
    #[error(transparent)]
    Apt(#[from] AptError),
    /// The initramfs could not be written.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// The kernel package does not look like a Debian kernel.
    #[error("the package {0} has no boot/vmlinuz-* and lib/modules/<release>; pin a Debian linux-image package")]
    NotAKernel(String),
    /// The busybox package has no busybox binary.
    #[error("the package {0} has no bin/busybox; pin Debian's busybox-static")]
    NoBusybox(String),
    /// The kernel-source package has no `usr/src/linux-source-*.tar.xz`.
    #[error("the package {0} has no usr/src/linux-source-*.tar.xz; pin Debian's linux-source-6.1")]
    NotKernelSource(String),
    /// Tools the test kernel's build needs are missing.
    #[error("building the test kernel needs more tools: run `apt-get install {0}` (scripts/install-deps.sh does)")]
    KernelTools(String),
    /// An option of `test-kernel/bulkhead.config` did not take (a dependency is off).
    #[error("the test kernel's configuration did not take these options of test-kernel/bulkhead.config: {0}; enable what they depend on in the fragment")]
    KernelConfig(String),
    /// A step of the test kernel's build failed.
    #[error(
        "the test kernel's build failed at: {step} (full log: {log}); its last lines:\n{tail}"
    )]
    KernelBuild {
        /// What was being done.
        step: &'static str,
        /// The build log, kept beside the builds.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// The guest is an x86-64 guest.
    #[error("the Linux guest is built for x86-64 hosts only; this host is {0}")]
    Arch(&'static str),
    /// A file or folder of ours could not be used.
    #[error("could not use {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Where things live for one set of options.
struct Paths {
    data: PathBuf,
    cache: PathBuf,
    lock: PathBuf,
}

impl Paths {
    fn new(opts: &BuildOptions) -> Result<Paths, BuildError> {
        let data = match &opts.data_dir {
            Some(d) => d.clone(),
            None => dirs::data_dir()?,
        }
        .join("linux-guest");
        let cache = match &opts.cache_dir {
            Some(d) => d.clone(),
            None => dirs::cache_dir()?,
        };
        let lock = match &opts.lock_file {
            Some(path) => path.clone(),
            None if Path::new(SOURCE_LOCK).exists() => PathBuf::from(SOURCE_LOCK),
            None => data.join("debian-packages.lock"),
        };
        Ok(Paths { data, cache, lock })
    }

    fn read_lock(&self) -> Result<Lock, BuildError> {
        let text = match fs::read_to_string(&self.lock) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => EMBEDDED_LOCK.to_string(),
            Err(source) => return Err(io_err(&self.lock, source)),
        };
        Lock::parse(&text).map_err(|source| BuildError::Lock { path: self.lock.clone(), source })
    }

    fn output(&self, lock: &Lock) -> PathBuf {
        self.data.join(input_key(lock))
    }

    /// Where a build of `lock` records the pins it used instead of gone ones.
    fn fallback_record(&self, lock: &Lock) -> PathBuf {
        self.data.join(format!("{}.fallback", input_key(lock)))
    }

    /// The complete build of `lock`, or of the pins an earlier build used in its place.
    fn cached(&self, lock: &Lock) -> Option<LinuxGuest> {
        if let Some(guest) = complete(&self.output(lock)) {
            return Some(guest);
        }
        let text = fs::read_to_string(self.fallback_record(lock)).ok()?;
        let used = Lock::parse(&text).ok()?;
        let mut guest = complete(&self.output(&used))?;
        guest.notices = fallbacks(lock, &used);
        Some(guest)
    }

    /// Records that the build of `lock` used the pins `used`.
    fn record_fallback(&self, lock: &Lock, used: &Lock) -> Result<(), BuildError> {
        let path = self.fallback_record(lock);
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let text = format!(
            "# `bulkhead image build` of {} found pinned versions gone from the archive\n\
             # and built from these instead (`bulkhead image build --force` resolves again).\n{}",
            self.lock.display(),
            used.render()
        );
        fs::write(&tmp, text).map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))
    }
}

/// A [`Notice::Fallback`] for each pin of `lock` that `used` replaces.
fn fallbacks(lock: &Lock, used: &Lock) -> Vec<Notice> {
    FETCH_ORDER
        .iter()
        .filter(|&&role| lock.get(role) != used.get(role))
        .map(|&role| Notice::Fallback {
            pinned: lock.get(role).clone(),
            used: used.get(role).clone(),
            not_refreshed: None,
        })
        .collect()
}

/// What `--update-pins` changed.
#[derive(Debug)]
pub struct PinUpdate {
    /// The lock file written.
    pub path: PathBuf,
    /// The pins before.
    pub old: Lock,
    /// The pins now.
    pub new: Lock,
    /// What the user should be told (the apt lists could not be refreshed).
    pub notices: Vec<Notice>,
}

/// Builds the guest, or returns the cached build of the same inputs.
pub fn build(opts: &BuildOptions) -> Result<LinuxGuest, BuildError> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(BuildError::Arch(std::env::consts::ARCH));
    }
    if opts.update_pins {
        update_pins(opts)?;
    }
    let paths = Paths::new(opts)?;
    let lock = paths.read_lock()?;
    if !opts.force {
        if let Some(guest) = paths.cached(&lock) {
            return Ok(guest);
        }
    }
    let mut resolver = Resolver::new(Apt { cache: &paths.cache });
    // FETCH_ORDER: the small package first.
    let busybox = resolver.resolve(lock.get(Role::Busybox))?;
    let kernel = resolver.resolve(lock.get(Role::Kernel))?;
    let used = Lock::new(vec![kernel.0.clone(), busybox.0.clone()])
        .map_err(|source| BuildError::Lock { path: paths.lock.clone(), source })?;
    let out = paths.output(&used);
    if opts.force || complete(&out).is_none() {
        build_into(&paths, &out, kernel, busybox, opts.force)?;
    }
    // Remembered for the next build, unless it came from lists that could not be refreshed:
    // once they are, the pinned version may turn out to be there.
    if !fallbacks(&lock, &used).is_empty() && resolver.refresh_error().is_none() {
        paths.record_fallback(&lock, &used)?;
    }
    let mut guest = complete(&out)
        .ok_or_else(|| io_err(&out, std::io::Error::other("the finished build is incomplete")))?;
    guest.notices = resolver.notices;
    Ok(guest)
}

/// The cached build of the current pins, if there is one; builds nothing.
pub fn cached() -> Option<LinuxGuest> {
    cached_with(&BuildOptions::default())
}

/// [`cached`] with explicit options (their `lock_file`, `data_dir`).
pub fn cached_with(opts: &BuildOptions) -> Option<LinuxGuest> {
    let paths = Paths::new(opts).ok()?;
    let lock = paths.read_lock().ok()?;
    paths.cached(&lock)
}

/// Pins the versions the apt archive has now and rewrites the lock file. Refreshes the apt
/// lists first (`apt-get update`, as root; as another user, the notices say so).
pub fn update_pins(opts: &BuildOptions) -> Result<PinUpdate, BuildError> {
    let paths = Paths::new(opts)?;
    let old = paths.read_lock()?;
    let mut resolver = Resolver::new(Apt { cache: &paths.cache });
    resolver.refresh_once();
    let notices: Vec<Notice> = resolver
        .refresh_error()
        .map(|stderr| Notice::ListsNotRefreshed { stderr: stderr.into() })
        .into_iter()
        .collect();
    let mut pins = Vec::new();
    for role in Role::ALL {
        let pin = resolver.current_pin(role)?;
        // Checks that the archive serves what its index says, and warms the cache.
        apt::fetch(&pin, &paths.cache)?;
        pins.push(pin);
    }
    let new =
        Lock::new(pins).map_err(|source| BuildError::Lock { path: paths.lock.clone(), source })?;
    if let Some(parent) = paths.lock.parent() {
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    fs::write(&paths.lock, new.render()).map_err(|e| io_err(&paths.lock, e))?;
    Ok(PinUpdate { path: paths.lock, old, new, notices })
}

/// The name of a build: a hash of everything that goes into it.
fn input_key(lock: &Lock) -> String {
    let mut h = Sha256::new();
    for part in [FORMAT, &lock.render(), INIT_SCRIPT, &REQUIRED.join(","), &OPTIONAL.join(",")] {
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    apt::hex(&h.finalize()[..8])
}

/// The guest in `dir`, if the build there is complete.
fn complete(dir: &Path) -> Option<LinuxGuest> {
    let guest = LinuxGuest {
        kernel: dir.join(KERNEL),
        initrd: dir.join(INITRD),
        cmdline_hint: CMDLINE_HINT.into(),
        notices: Vec::new(),
    };
    let done = dir.join(MANIFEST).is_file() && guest.kernel.is_file() && guest.initrd.is_file();
    done.then_some(guest)
}

/// Builds the guest from the fetched `.deb` of each pin into `out`.
fn build_into(
    paths: &Paths,
    out: &Path,
    kernel: (Pin, PathBuf),
    busybox: (Pin, PathBuf),
    replace: bool,
) -> Result<(), BuildError> {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let staging = paths.data.join(format!(".staging-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = assemble(&staging, (&kernel.1, &kernel.0), (&busybox.1, &busybox.0));
    let result = result
        .and_then(|()| publish(&staging.join("out"), out, replace, |d| complete(d).is_some()));
    let _ = fs::remove_dir_all(&staging);
    result
}

/// Unpacks both packages under `staging` and writes the finished build to `staging/out`.
fn assemble(
    staging: &Path,
    kernel: (&Path, &Pin),
    busybox: (&Path, &Pin),
) -> Result<(), BuildError> {
    let kernel_root = staging.join("kernel");
    let busybox_root = staging.join("busybox");
    let out = staging.join("out");
    apt::unpack(kernel.0, &kernel_root)?;
    apt::unpack(busybox.0, &busybox_root)?;
    fs::create_dir_all(&out).map_err(|e| io_err(&out, e))?;

    let not_a_kernel = || BuildError::NotAKernel(kernel.1.package.clone());
    let vmlinuz =
        find_prefixed(&kernel_root.join("boot"), "vmlinuz-", "").ok_or_else(not_a_kernel)?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or_else(not_a_kernel)?
        .to_string();
    let modules_root = kernel_root.join("lib/modules").join(&release);
    if !modules_root.is_dir() {
        return Err(not_a_kernel());
    }
    let busybox_bin = busybox_root.join("bin/busybox");
    if !busybox_bin.is_file() {
        return Err(BuildError::NoBusybox(busybox.1.package.clone()));
    }

    let inputs =
        initramfs::Inputs { busybox: &busybox_bin, modules_root: &modules_root, release: &release };
    let modules = initramfs::write(&inputs, &out.join(INITRD))?;
    fs::copy(&vmlinuz, out.join(KERNEL)).map_err(|e| io_err(&vmlinuz, e))?;
    let manifest = manifest(&release, &[kernel.1, busybox.1], &modules);
    let path = out.join(MANIFEST);
    fs::write(&path, manifest).map_err(|e| io_err(&path, e))
}

fn manifest(release: &str, pins: &[&Pin], modules: &[PathBuf]) -> String {
    let mut text = format!("# {FORMAT}\nkernel_release {release}\n");
    for pin in pins {
        text += &format!("package {} {} {}\n", pin.package, pin.version, pin.sha256);
    }
    for module in modules {
        text += &format!("module {}\n", module.display());
    }
    text
}

/// Moves a finished build into place. A complete build of the same inputs already there (from a
/// concurrent builder) is kept unless `replace`; `complete` says whether a folder holds one.
pub(crate) fn publish(
    built: &Path,
    out: &Path,
    replace: bool,
    complete: impl Fn(&Path) -> bool,
) -> Result<(), BuildError> {
    if out.exists() {
        if !replace && complete(out) {
            return Ok(());
        }
        fs::remove_dir_all(out).map_err(|e| io_err(out, e))?;
    }
    match fs::rename(built, out) {
        Ok(()) => Ok(()),
        // Another builder of the same inputs finished first.
        Err(_) if complete(out) => Ok(()),
        Err(e) => Err(io_err(out, e)),
    }
}

/// The last, in name order, of the entries of `dir` named `prefix…suffix`.
pub(crate) fn find_prefixed(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found.pop()
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> BuildError {
    BuildError::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> Lock {
        Lock::parse(EMBEDDED_LOCK).unwrap()
    }

    #[test]
    fn key_follows_every_input() {
        let base = lock();
        let key = input_key(&base);
        assert_eq!(key.len(), 16);
        assert_eq!(key, input_key(&lock()), "the key is deterministic");
        let mut text = base.render();
        text = text.replace(&base.get(Role::Busybox).version, "1:9.9-9");
        assert_ne!(key, input_key(&Lock::parse(&text).unwrap()));
    }

    #[test]
    fn cache_hit_needs_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("k");
        fs::create_dir_all(&out).unwrap();
        for (i, name) in [KERNEL, INITRD, MANIFEST].iter().enumerate() {
            assert!(complete(&out).is_none(), "complete with {i} files");
            fs::write(out.join(name), b"x").unwrap();
        }
        let guest = complete(&out).unwrap();
        assert_eq!(guest.kernel, out.join(KERNEL));
        assert_eq!(guest.cmdline_hint, CMDLINE_HINT);
    }

    #[test]
    fn cached_finds_a_published_build_without_building() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BuildOptions {
            data_dir: Some(dir.path().join("data")),
            cache_dir: Some(dir.path().join("cache")),
            lock_file: Some(dir.path().join("none.lock")),
            ..BuildOptions::default()
        };
        assert!(cached_with(&opts).is_none());
        let built = dir.path().join("built");
        fs::create_dir_all(&built).unwrap();
        for name in [KERNEL, INITRD, MANIFEST] {
            fs::write(built.join(name), b"x").unwrap();
        }
        let out = Paths::new(&opts).unwrap().output(&lock());
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        publish(&built, &out, false, |d| complete(d).is_some()).unwrap();
        assert_eq!(cached_with(&opts).unwrap().initrd, out.join(INITRD));
    }

    #[test]
    fn a_fallback_build_is_reused_through_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BuildOptions {
            data_dir: Some(dir.path().join("data")),
            lock_file: Some(dir.path().join("none.lock")),
            ..BuildOptions::default()
        };
        let paths = Paths::new(&opts).unwrap();
        let pinned = lock();
        let text = pinned.render().replace(&pinned.get(Role::Busybox).version, "1:9.9-9");
        let used = Lock::parse(&text).unwrap();
        // The build of the pins used, named after them.
        let out = paths.output(&used);
        assert_ne!(out, paths.output(&pinned));
        let built = dir.path().join("built");
        fs::create_dir_all(&built).unwrap();
        for name in [KERNEL, INITRD, MANIFEST] {
            fs::write(built.join(name), b"x").unwrap();
        }
        fs::create_dir_all(&paths.data).unwrap();
        publish(&built, &out, false, |d| complete(d).is_some()).unwrap();
        assert!(cached_with(&opts).is_none(), "found without a record");

        paths.record_fallback(&pinned, &used).unwrap();
        let guest = cached_with(&opts).unwrap();
        assert_eq!(guest.initrd, out.join(INITRD));
        let (pinned, used) = (pinned.get(Role::Busybox).clone(), used.get(Role::Busybox).clone());
        assert_eq!(guest.notices, [Notice::Fallback { pinned, used, not_refreshed: None }]);
    }
}
