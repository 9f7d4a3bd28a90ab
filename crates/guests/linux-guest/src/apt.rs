//! Fetching and unpacking Debian packages with the host's own tools, without installing them.
//!
//! * `apt-cache show --no-all-versions PKG` gives the candidate version, its dependencies and
//!   the `.deb`'s SHA-256 from the host's apt lists (the archive's signed index);
//!   `--update-pins`, and a build whose pin is gone from the archive, use those.
//! * `apt-get download PKG=VERSION` fetches one exact `.deb` into a folder of ours; apt checks it
//!   against the archive's signed index, and we check it again against the pinned SHA-256.
//! * `apt-get update` refreshes the host's apt lists (as root) when they do not know a pin.
//! * `dpkg-deb -x` unpacks a `.deb` into a folder.
//!
//! Downloads are kept in `<cache>/debs/` under their pinned checksum, written under a temporary
//! name and renamed, so concurrent builds and interrupted downloads never leave a bad file.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::lock::Pin;

/// Why a package could not be fetched or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// A tool is missing.
    #[error("`{0}` was not found: the Linux guest is built from Debian packages, so build it on a Debian or Ubuntu host")]
    NoTool(&'static str),
    /// The apt lists do not know the package at all.
    #[error("apt does not know the package {package}; run `apt-get update` as root and try again")]
    UnknownPackage {
        /// The package.
        package: String,
    },
    /// The apt lists do not know the pinned version.
    #[error("the pinned version {version} of {package} is no longer in the apt archive; run `bulkhead image build --update-pins` to pin the versions the archive has now, then commit crates/guests/linux-guest/debian-packages.lock")]
    PinnedVersionGone {
        /// The package.
        package: String,
        /// The pinned version.
        version: String,
    },
    /// The apt lists name the version, but the archive no longer serves its file (HTTP 404):
    /// the lists are older than the archive.
    #[error("the apt lists name {package} {version}, but the archive no longer serves it: the lists are out of date; run `apt-get update` as root and try again")]
    NotServed {
        /// The package.
        package: String,
        /// The version.
        version: String,
    },
    /// `apt-get update` failed (it needs root).
    #[error("the apt lists are older than the pins and could not be refreshed (`apt-get update`: {stderr}); run `sudo apt-get update`, then try again")]
    ListsNotRefreshed {
        /// What `apt-get update` printed on standard error.
        stderr: String,
    },
    /// A tool ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// The downloaded `.deb` is not the pinned one.
    #[error("{package} {version} downloaded with SHA-256 {actual}, but the lock file pins {expected}; if the archive really changed this package, refresh the pins with `bulkhead image build --update-pins` and review the change")]
    ChecksumMismatch {
        /// The package.
        package: String,
        /// The version.
        version: String,
        /// The pinned checksum.
        expected: String,
        /// The checksum of what was downloaded.
        actual: String,
    },
    /// The candidate record from `apt-cache show` lacks a field.
    #[error("apt-cache has no usable {field} for {package}; run `apt-get update` and try again")]
    NoField {
        /// The package.
        package: String,
        /// The field.
        field: &'static str,
    },
    /// A file or folder of ours could not be used.
    #[error("could not use {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

impl AptError {
    /// Whether the error says that the archive, as the apt lists know it, lacks the package or
    /// version: refreshing the lists, or taking the current version, may help.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            AptError::UnknownPackage { .. }
                | AptError::PinnedVersionGone { .. }
                | AptError::NotServed { .. }
        )
    }
}

/// The candidate version of a package, its first-choice dependencies and its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The version apt would install.
    pub version: String,
    /// Package names from `Depends:`, the first of each set of alternatives.
    pub depends: Vec<String>,
    /// The SHA-256 of the `.deb` as the archive's signed index gives it.
    pub sha256: String,
}

/// Asks apt for the version of `package` it would install now.
pub fn candidate(package: &str) -> Result<Candidate, AptError> {
    let out = run(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.trim().is_empty() {
        return Err(AptError::UnknownPackage { package: package.into() });
    }
    parse_candidate(package, &text)
}

fn parse_candidate(package: &str, record: &str) -> Result<Candidate, AptError> {
    let field = |name: &str| {
        record.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
    };
    let missing = |field| AptError::NoField { package: package.into(), field };
    let version = field("Version").ok_or_else(|| missing("Version"))?;
    let sha256 = field("SHA256").ok_or_else(|| missing("SHA256"))?;
    let depends = field("Depends")
        .unwrap_or("")
        .split(',')
        .filter_map(|alts| alts.split('|').next()?.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    Ok(Candidate { version: version.into(), depends, sha256: sha256.to_ascii_lowercase() })
}

/// The `.deb` for `pin`, from the cache or downloaded, checked against the pinned SHA-256.
pub fn fetch(pin: &Pin, cache: &Path) -> Result<PathBuf, AptError> {
    let debs = cache.join("debs");
    let name = format!("{}_{}.deb", pin.package, pin.version.replace(':', "%3a"));
    let dest = debs.join(&name);
    if dest.exists() && sha256_file(&dest)? == pin.sha256 {
        return Ok(dest);
    }
    let (tmp_dir, deb) = download(&pin.package, &pin.version, &debs)?;
    let actual = sha256_file(&deb)?;
    if actual != pin.sha256 {
        let _ = fs::remove_dir_all(&tmp_dir);
        return Err(AptError::ChecksumMismatch {
            package: pin.package.clone(),
            version: pin.version.clone(),
            expected: pin.sha256.clone(),
            actual,
        });
    }
    fs::rename(&deb, &dest).map_err(io_at(&dest))?;
    let _ = fs::remove_dir_all(&tmp_dir);
    Ok(dest)
}

/// `apt-get download package=version` into a fresh folder under `debs`; returns both.
fn download(package: &str, version: &str, debs: &Path) -> Result<(PathBuf, PathBuf), AptError> {
    let tmp_dir = debs.join(format!(".download-{}-{package}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp_dir);
    fs::create_dir_all(&tmp_dir).map_err(io_at(&tmp_dir))?;
    let spec = format!("{package}={version}");
    let mut cmd = Command::new("apt-get");
    // As root, apt would drop to the `_apt` user, who cannot write into our folder.
    cmd.args(["-q", "-o", "APT::Sandbox::User=root", "download", &spec]).current_dir(&tmp_dir);
    let out = run(&mut cmd)?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&tmp_dir);
        return Err(download_error(package, version, &out));
    }
    let deb = fs::read_dir(&tmp_dir)
        .map_err(io_at(&tmp_dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| AptError::Failed {
            command: format!("apt-get download {spec}"),
            stderr: "it reported success but left no .deb file".into(),
        })?;
    Ok((tmp_dir, deb))
}

fn download_error(package: &str, version: &str, out: &Output) -> AptError {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let (package, version) = (package.to_string(), version.to_string());
    if stderr.contains("Unable to locate package") {
        AptError::UnknownPackage { package }
    } else if stderr.contains("was not found") || stderr.contains("Can't select") {
        AptError::PinnedVersionGone { package, version }
    } else if stderr.contains("Failed to fetch") && stderr.contains(" 404 ") {
        AptError::NotServed { package, version }
    } else {
        AptError::Failed { command: format!("apt-get download {package}={version}"), stderr }
    }
}

/// How long [`refresh_lists`] waits for another apt that holds the lists' lock.
const LOCK_WAIT: Duration = Duration::from_secs(300);

/// Refreshes the host's apt lists: `apt-get update`, which needs root. While another apt holds
/// the lists' lock (a concurrent build, say), waits for it, for up to five minutes.
pub fn refresh_lists() -> Result<(), AptError> {
    let started = Instant::now();
    loop {
        let out = run(Command::new("apt-get").args(["-q", "update"]))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = error_lines(&String::from_utf8_lossy(&out.stderr));
        if !stderr.contains("Could not get lock") || started.elapsed() > LOCK_WAIT {
            return Err(AptError::ListsNotRefreshed { stderr });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The `E:` lines of what apt printed, on one line (all of it when it printed none).
fn error_lines(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix("E: ")).collect();
    match errors.is_empty() {
        true => stderr.trim().to_string(),
        false => errors.join("; "),
    }
}

/// Unpacks the files of `deb` under `dest` (`dpkg-deb -x`).
pub fn unpack(deb: &Path, dest: &Path) -> Result<(), AptError> {
    fs::create_dir_all(dest).map_err(io_at(dest))?;
    let out = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))?;
    if !out.status.success() {
        return Err(AptError::Failed {
            command: format!("dpkg-deb -x {}", deb.display()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The SHA-256 of a file, lowercase hexadecimal.
pub fn sha256_file(path: &Path) -> Result<String, AptError> {
    let mut file = fs::File::open(path).map_err(io_at(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(cmd: &mut Command) -> Result<Output, AptError> {
    let tool = match cmd.get_program().to_str() {
        Some("apt-get") => "apt-get",
        Some("apt-cache") => "apt-cache",
        _ => "dpkg-deb",
    };
    cmd.env("LC_ALL", "C").output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AptError::NoTool(tool),
        _ => AptError::Io { path: PathBuf::from(tool), source: e },
    })
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> AptError + '_ {
    move |source| AptError::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_record_is_parsed() {
        let record = "Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+2)\n\
                      Version: 6.1.192-2\nInstalled-Size: 13\nSHA256: ABCD\n\
                      Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2), foo | bar (>= 1)\n";
        let c = parse_candidate("linux-image-cloud-amd64", record).unwrap();
        assert_eq!(c.version, "6.1.192-2");
        assert_eq!(c.depends, ["linux-image-6.1.0-56-cloud-amd64", "foo"]);
        assert_eq!(c.sha256, "abcd");
        assert!(matches!(
            parse_candidate("x", "Package: x\nVersion: 1\n"),
            Err(AptError::NoField { .. })
        ));
    }

    #[test]
    fn download_errors_are_told_apart() {
        let output = |stderr: &str| Output {
            status: std::process::ExitStatus::default(),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        };
        let gone = download_error(
            "busybox-static",
            "1:0.1",
            &output("E: Version '1:0.1' for 'busybox-static' was not found"),
        );
        assert!(gone.to_string().contains("--update-pins"), "{gone}");
        let unknown = download_error("nope", "1", &output("E: Unable to locate package nope"));
        assert!(matches!(unknown, AptError::UnknownPackage { .. }));
        // Lists older than the archive: they name a file the archive dropped.
        let dropped = output(
            "E: Failed to fetch http://deb.debian.org/debian-security/pool/updates/main/l/\
             linux-signed-amd64/linux-image-6.1.0-48-cloud-amd64_6.1.172-1_amd64.deb  \
             404  Not Found [IP: 151.101.2.132 80]",
        );
        let stale = download_error("linux-image-6.1.0-48-cloud-amd64", "6.1.172-1", &dropped);
        assert!(matches!(stale, AptError::NotServed { .. }), "{stale:?}");
        assert!(gone.is_gone() && unknown.is_gone() && stale.is_gone());
        // A network failure is no reason to build something else.
        let offline = output(
            "E: Failed to fetch http://deb.debian.org/debian/pool/main/b/busybox/x.deb  \
             Temporary failure resolving 'deb.debian.org'",
        );
        let offline = download_error("busybox-static", "1:1.35.0-4+deb12u1+b1", &offline);
        assert!(matches!(offline, AptError::Failed { .. }) && !offline.is_gone(), "{offline:?}");
    }

    #[test]
    fn apt_errors_are_kept_on_one_line() {
        let stderr = "Reading package lists...\nE: Could not open lock file /var/lib/apt/lists/lock \
                      - open (13: Permission denied)\nE: Unable to lock directory /var/lib/apt/lists/\n";
        assert_eq!(
            error_lines(stderr),
            "Could not open lock file /var/lib/apt/lists/lock - open (13: Permission denied); \
             Unable to lock directory /var/lib/apt/lists/"
        );
        assert_eq!(error_lines(" something else \n"), "something else");
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
