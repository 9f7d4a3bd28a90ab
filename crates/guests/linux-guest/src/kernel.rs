//! The test kernel: Linux 6.1 built from Debian's `linux-source-6.1` for booting through
//! Bulkhead's own core, on any KVM host, KVM-PVM included.
//!
//! Debian's cloud kernel (the [`crate::build`] guest) does not get past its first instructions
//! on a KVM-PVM host, whose guest ring 0 runs in an instruction emulator. This kernel does, up
//! to `/init`: it is `make allnoconfig` plus `test-kernel/bulkhead.config` (the virtio-mmio
//! drivers, ACPI, ext4, the 8250 console, netconsole, and nothing that the emulator cannot run
//! or runs for a minute), with the two-line changes of `test-kernel/pvm.patch` (no `int3`
//! self-test, no `fwait`: the two ring-0 instructions the emulator cannot do). Boot its ELF
//! `vmlinux` through the PVH entry with [`CMDLINE`]; a bzImage would spend two minutes in the
//! emulator decompressing itself. On hosts with VT-x/AMD-V the same kernel runs on to user space.
//!
//! [`build`] (`bulkhead image kernel`) takes the source package pinned in
//! `test-kernel/source.lock` (checked against its SHA-256, or, once Debian's archive has moved
//! on, the current version checked against apt's signed index, as the guest does: see
//! `resolve`), unpacks it, applies the patch, configures, checks that every option of the
//! fragment took, runs `make vmlinux` (about 7 minutes on 2 cores), and publishes
//! `<data>/test-kernel/<hash of the inputs>/vmlinux`. A build of the same inputs is reused
//! without any apt call.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::apt;
use crate::image::{find_prefixed, io_err, publish, BuildError, BuildOptions};
use crate::lock::{parse_line, Pin, Role};
use crate::resolve::{Apt, Notice, Resolver};

/// The configuration fragment applied to `make allnoconfig`.
pub const CONFIG: &str = include_str!("../test-kernel/bulkhead.config");

/// The changes to the source (`patch -p1`).
pub const PATCH: &str = include_str!("../test-kernel/pvm.patch");

/// The pinned source package.
const SOURCE_LOCK: &str = include_str!("../test-kernel/source.lock");

/// Bumped whenever the builder changes what it writes for the same inputs.
const FORMAT: &str = "bulkhead-test-kernel format 1";

/// The kernel command line the test kernel needs on a KVM-PVM host (harmless elsewhere): no
/// XSAVE and none of the instructions the emulator lacks, no KASLR, no PCI probing (the
/// devices are virtio-mmio, found through ACPI), and a panic resets the machine through the
/// keyboard controller. Add `root=`, `init=` and the like.
pub const CMDLINE: &str = "console=ttyS0 earlyprintk=serial noxsave \
    clearcpuid=popcnt,cx16,rdrand,rdseed,fsgsbase,smap,smep,umip,pku,rdpid,xsave \
    nokaslr pci=off panic=-1 reboot=k";

const VMLINUX: &str = "vmlinux";
const KCONFIG: &str = "config";
const MANIFEST: &str = "kernel.txt";

/// A built test kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestKernel {
    /// The uncompressed ELF kernel, with its PVH entry note.
    pub vmlinux: PathBuf,
    /// The `.config` it was built with.
    pub config: PathBuf,
    /// The kernel release (`make kernelrelease`).
    pub release: String,
    /// What the user should be told: the pinned source is gone and another version was used.
    pub notices: Vec<Notice>,
}

/// The pinned source package.
pub fn source_pin() -> Pin {
    let line = SOURCE_LOCK
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .expect("test-kernel/source.lock pins one package");
    let pin = parse_line(line).expect("test-kernel/source.lock is well formed");
    assert_eq!(pin.role, Role::KernelSource, "test-kernel/source.lock pins the kernel source");
    pin
}

/// The test kernel of the pinned inputs, if it is built; builds nothing, calls no apt.
pub fn cached(opts: &BuildOptions) -> Option<TestKernel> {
    let data = data_dir(opts).ok()?;
    cached_in(&data, &source_pin())
}

/// Builds the test kernel, or returns the cached build of the same inputs.
pub fn build(opts: &BuildOptions) -> Result<TestKernel, BuildError> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(BuildError::Arch(std::env::consts::ARCH));
    }
    let data = data_dir(opts)?;
    let cache = match &opts.cache_dir {
        Some(d) => d.clone(),
        None => crate::dirs::cache_dir()?,
    };
    let pinned = source_pin();
    if !opts.force {
        if let Some(kernel) = cached_in(&data, &pinned) {
            return Ok(kernel);
        }
    }
    check_tools()?;
    let mut resolver = Resolver::new(Apt { cache: &cache });
    let (used, deb) = resolver.resolve(&pinned)?;
    let out = data.join(key(&used));
    if opts.force || complete(&out).is_none() {
        compile(&data, &deb, &used, &out, opts.force)?;
    }
    if used != pinned && resolver.refresh_error().is_none() {
        let record = fallback_record(&data, &pinned);
        let text =
            format!("{} {} {} {}\n", used.role.as_str(), used.package, used.version, used.sha256);
        fs::write(&record, text).map_err(|e| io_err(&record, e))?;
    }
    let mut kernel = complete(&out).ok_or_else(|| {
        io_err(&out, std::io::Error::other("the finished test kernel build is incomplete"))
    })?;
    kernel.notices = resolver.notices;
    Ok(kernel)
}

fn data_dir(opts: &BuildOptions) -> Result<PathBuf, BuildError> {
    Ok(match &opts.data_dir {
        Some(d) => d.clone(),
        None => crate::dirs::data_dir()?,
    }
    .join("test-kernel"))
}

/// The complete build of `pinned`, or of the version an earlier build used in its place.
fn cached_in(data: &Path, pinned: &Pin) -> Option<TestKernel> {
    if let Some(kernel) = complete(&data.join(key(pinned))) {
        return Some(kernel);
    }
    let text = fs::read_to_string(fallback_record(data, pinned)).ok()?;
    let used = parse_line(text.trim()).ok()?;
    let mut kernel = complete(&data.join(key(&used)))?;
    kernel.notices = vec![Notice::Fallback { pinned: pinned.clone(), used, not_refreshed: None }];
    Some(kernel)
}

/// Where a build records the source version it used instead of a gone pin.
fn fallback_record(data: &Path, pinned: &Pin) -> PathBuf {
    data.join(format!("{}.fallback", key(pinned)))
}

/// The name of a build: a hash of everything that goes into it.
fn key(source: &Pin) -> String {
    let mut h = Sha256::new();
    let pin = format!("{} {} {}", source.package, source.version, source.sha256);
    for part in [FORMAT, &pin, CONFIG, PATCH] {
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    apt::hex(&h.finalize()[..8])
}

/// The kernel in `dir`, if the build there is complete.
fn complete(dir: &Path) -> Option<TestKernel> {
    let manifest = fs::read_to_string(dir.join(MANIFEST)).ok()?;
    let release = manifest.lines().find_map(|l| l.strip_prefix("kernel_release "))?.to_string();
    let kernel = TestKernel {
        vmlinux: dir.join(VMLINUX),
        config: dir.join(KCONFIG),
        release,
        notices: Vec::new(),
    };
    (kernel.vmlinux.is_file() && kernel.config.is_file()).then_some(kernel)
}

/// What building a kernel needs beyond a C toolchain, and the Debian package of each.
const TOOLS: [(&str, &str); 6] = [
    ("make", "make"),
    ("gcc", "gcc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("patch", "patch"),
];

/// The header objtool is built against.
const LIBELF_HEADER: &str = "/usr/include/gelf.h";

fn check_tools() -> Result<(), BuildError> {
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
    };
    let mut missing: Vec<&str> =
        TOOLS.iter().filter(|(tool, _)| !on_path(tool)).map(|&(_, package)| package).collect();
    if !Path::new(LIBELF_HEADER).exists() {
        missing.push("libelf-dev");
    }
    match missing.is_empty() {
        true => Ok(()),
        false => Err(BuildError::KernelTools(missing.join(" "))),
    }
}

/// Unpacks, patches, configures and builds the kernel of `deb` into `out` (replacing a build
/// there with `replace`).
fn compile(
    data: &Path,
    deb: &Path,
    source: &Pin,
    out: &Path,
    replace: bool,
) -> Result<(), BuildError> {
    let name = out.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let staging = data.join(format!(".staging-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result = compile_in(&staging, deb, source)
        .and_then(|built| publish(&built, out, replace, |d| complete(d).is_some()));
    if result.is_err() {
        // Keep the log for the error message, drop the 1.5 GB tree.
        let log = staging.join("build.log");
        let kept = data.join(format!("{name}.build.log"));
        let _ = fs::rename(&log, &kept);
    }
    let _ = fs::remove_dir_all(&staging);
    result
}

fn compile_in(staging: &Path, deb: &Path, source: &Pin) -> Result<PathBuf, BuildError> {
    let package = staging.join("package");
    apt::unpack(deb, &package)?;
    let not_source = || BuildError::NotKernelSource(source.package.clone());
    let tarball = find_prefixed(&package.join("usr/src"), "linux-source-", ".tar.xz")
        .ok_or_else(not_source)?;
    let log_path = staging.join("build.log");
    let log = fs::File::create(&log_path).map_err(|e| io_err(&log_path, e))?;
    let step = |what: &'static str, cmd: &mut Command| -> Result<(), BuildError> {
        let out = log.try_clone().map_err(|e| io_err(&log_path, e))?;
        let err = log.try_clone().map_err(|e| io_err(&log_path, e))?;
        let status = cmd
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| io_err(Path::new(cmd.get_program()), e))?;
        match status.success() {
            true => Ok(()),
            false => Err(BuildError::KernelBuild {
                step: what,
                log: log_path.clone(),
                tail: tail(&log_path, 15),
            }),
        }
    };
    step(
        "unpack the source",
        Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(staging),
    )?;
    let src = fs::read_dir(staging)
        .map_err(|e| io_err(staging, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("linux-source-"))
        })
        .ok_or_else(not_source)?;
    let patch = staging.join("pvm.patch");
    fs::write(&patch, PATCH).map_err(|e| io_err(&patch, e))?;
    step(
        "apply test-kernel/pvm.patch",
        Command::new("patch")
            .args(["-p1", "--forward", "--batch", "-d"])
            .arg(&src)
            .arg("-i")
            .arg(&patch),
    )?;
    let fragment = staging.join("bulkhead.config");
    fs::write(&fragment, CONFIG).map_err(|e| io_err(&fragment, e))?;
    let make = || {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(&src)
            .env("KBUILD_BUILD_USER", "bulkhead")
            .env("KBUILD_BUILD_HOST", "bulkhead");
        cmd
    };
    let mut allnoconfig = make();
    allnoconfig.arg("allnoconfig").arg(format!("KCONFIG_ALLCONFIG={}", fragment.display()));
    step("configure (make allnoconfig with test-kernel/bulkhead.config)", &mut allnoconfig)?;
    let config_path = src.join(".config");
    let config = fs::read_to_string(&config_path).map_err(|e| io_err(&config_path, e))?;
    let ignored = options_not_taken(CONFIG, &config);
    if !ignored.is_empty() {
        return Err(BuildError::KernelConfig(ignored.join(", ")));
    }
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    step("compile (make vmlinux)", make().arg(format!("-j{jobs}")).arg("vmlinux"))?;
    let release = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&src)
        .arg("kernelrelease")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| source.version.clone());
    let built = staging.join("out");
    fs::create_dir_all(&built).map_err(|e| io_err(&built, e))?;
    let vmlinux = src.join("vmlinux");
    fs::copy(&vmlinux, built.join(VMLINUX)).map_err(|e| io_err(&vmlinux, e))?;
    fs::copy(&config_path, built.join(KCONFIG)).map_err(|e| io_err(&config_path, e))?;
    let manifest = format!(
        "# {FORMAT}\nkernel_release {release}\npackage {} {} {}\n",
        source.package, source.version, source.sha256
    );
    let path = built.join(MANIFEST);
    fs::write(&path, manifest).map_err(|e| io_err(&path, e))?;
    Ok(built)
}

/// The options of `fragment` that `config` (a `.config`) does not have as the fragment says:
/// a `CONFIG_X=y` missing (a dependency is off), or a `# CONFIG_X is not set` that is set.
pub fn options_not_taken(fragment: &str, config: &str) -> Vec<String> {
    let mut ignored = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(off) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
            if config.lines().any(|l| l.starts_with(&format!("{off}="))) {
                ignored.push(format!("{off} (wanted off)"));
            }
        } else if line.starts_with("CONFIG_") && !config.lines().any(|l| l.trim() == line) {
            ignored.push(line.to_string());
        }
    }
    ignored
}

/// The last `n` lines of a log.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_lock_pins_linux_source() {
        let pin = source_pin();
        assert_eq!(pin.package, "linux-source-6.1");
        assert_eq!(pin.sha256.len(), 64);
    }

    #[test]
    fn key_follows_the_source() {
        let pin = source_pin();
        assert_eq!(key(&pin), key(&source_pin()), "the key is deterministic");
        let other = Pin { version: "6.1.999-1".into(), ..pin.clone() };
        assert_ne!(key(&pin), key(&other));
    }

    #[test]
    fn an_option_that_did_not_take_is_named() {
        let fragment = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n# comment\n";
        let good = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n";
        assert!(options_not_taken(fragment, good).is_empty());
        let bad = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n";
        assert_eq!(options_not_taken(fragment, bad), ["CONFIG_B=y", "CONFIG_C (wanted off)"]);
        // A prefix of another option's name is not that option.
        assert_eq!(options_not_taken("CONFIG_A=y", "CONFIG_AB=y"), ["CONFIG_A=y"]);
    }

    #[test]
    fn a_build_is_complete_with_its_manifest_kernel_and_config() {
        let dir = tempfile::tempdir().unwrap();
        assert!(complete(dir.path()).is_none());
        fs::write(dir.path().join(VMLINUX), b"x").unwrap();
        fs::write(dir.path().join(KCONFIG), b"x").unwrap();
        assert!(complete(dir.path()).is_none(), "complete without its manifest");
        fs::write(dir.path().join(MANIFEST), "# f\nkernel_release 6.1.192\n").unwrap();
        assert_eq!(complete(dir.path()).unwrap().release, "6.1.192");
    }

    #[test]
    fn a_fallback_build_is_found_through_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let pinned = source_pin();
        assert!(cached_in(dir.path(), &pinned).is_none());
        let used = Pin { version: "6.1.999-1".into(), ..pinned.clone() };
        let out = dir.path().join(key(&used));
        fs::create_dir_all(&out).unwrap();
        for name in [VMLINUX, KCONFIG] {
            fs::write(out.join(name), b"x").unwrap();
        }
        fs::write(out.join(MANIFEST), "kernel_release 6.1.999\n").unwrap();
        assert!(cached_in(dir.path(), &pinned).is_none(), "found without a record");
        let line = format!("kernel-source {} {} {}\n", used.package, used.version, used.sha256);
        fs::write(fallback_record(dir.path(), &pinned), line).unwrap();
        let kernel = cached_in(dir.path(), &pinned).unwrap();
        assert_eq!(kernel.vmlinux, out.join(VMLINUX));
        assert_eq!(kernel.notices, [Notice::Fallback { pinned, used, not_refreshed: None }]);
    }
}
