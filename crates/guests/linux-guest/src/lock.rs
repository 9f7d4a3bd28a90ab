//! The lock file: which Debian packages, at which versions and checksums, the guest is built
//! from.
//!
//! A text file, one package a line, `#` starts a comment:
//!
//! ```text
//! # role     package                            version                  sha256 of the .deb
//! kernel     linux-image-6.1.0-56-cloud-amd64   6.1.192-2                0123…
//! busybox    busybox-static                     1:1.35.0-4+deb12u1+b1    4567…
//! ```
//!
//! The *role* says what the package is for; the package name is the concrete one (the kernel's
//! name carries its ABI, so `linux-image-cloud-amd64`, the meta-package that follows the newest
//! kernel, is resolved when the pins are refreshed).

use std::fmt::Write as _;

/// Why a lock file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A line does not have four fields or a field is malformed.
    #[error("line {line} of the lock file is malformed ({why}); restore it from git or refresh it with `bulkhead image build --update-pins`")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// A role is pinned twice or not at all.
    #[error("the lock file must pin each of kernel and busybox exactly once ({0}); refresh it with `bulkhead image build --update-pins`")]
    Roles(String),
}

/// What a pinned package is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Debian's cloud kernel: the bzImage and its modules.
    Kernel,
    /// `busybox-static`: the initramfs's only program.
    Busybox,
    /// `linux-source-6.1`: the source of the test kernel (`test-kernel/source.lock`, not
    /// the guest's lock).
    KernelSource,
}

impl Role {
    /// Every role of the guest's lock, in lock-file order.
    pub const ALL: [Role; 2] = [Role::Kernel, Role::Busybox];

    /// The name used in the lock file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Kernel => "kernel",
            Role::Busybox => "busybox",
            Role::KernelSource => "kernel-source",
        }
    }

    /// The package whose newest version `--update-pins` pins: for the kernel a meta-package
    /// whose dependency names the concrete kernel package.
    pub fn source_package(self) -> &'static str {
        match self {
            Role::Kernel => "linux-image-cloud-amd64",
            Role::Busybox => "busybox-static",
            Role::KernelSource => "linux-source-6.1",
        }
    }
}

/// One pinned package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// What the package is for.
    pub role: Role,
    /// The Debian package name.
    pub package: String,
    /// The exact Debian version, epoch included.
    pub version: String,
    /// The SHA-256 of the `.deb`, lowercase hexadecimal.
    pub sha256: String,
}

/// A complete set of pins, one per role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pins: Vec<Pin>,
}

const HEADER: &str = "\
# Debian packages the Bulkhead Linux guest is built from, pinned by the SHA-256 of each .deb.
# Checked on every build. Refresh with `bulkhead image build --update-pins`, then commit.
# role     package                              version                     sha256
";

impl Lock {
    /// Builds a lock from one pin per role.
    pub fn new(pins: Vec<Pin>) -> Result<Lock, LockError> {
        for role in Role::ALL {
            let count = pins.iter().filter(|p| p.role == role).count();
            if count != 1 {
                return Err(LockError::Roles(format!("{} is pinned {count} times", role.as_str())));
            }
        }
        if let Some(other) = pins.iter().find(|p| !Role::ALL.contains(&p.role)) {
            return Err(LockError::Roles(format!(
                "{} is not a role of this lock",
                other.role.as_str()
            )));
        }
        Ok(Lock { pins })
    }

    /// Reads a lock file's text.
    pub fn parse(text: &str) -> Result<Lock, LockError> {
        let mut pins = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            pins.push(parse_line(line).map_err(|why| LockError::Malformed { line: i + 1, why })?);
        }
        Lock::new(pins)
    }

    /// The lock file's text, as [`Lock::parse`] reads it.
    pub fn render(&self) -> String {
        let mut out = String::from(HEADER);
        for role in Role::ALL {
            let p = self.get(role);
            let _ = writeln!(
                out,
                "{:<10} {:<36} {:<27} {}",
                role.as_str(),
                p.package,
                p.version,
                p.sha256
            );
        }
        out
    }

    /// The pin for `role`.
    pub fn get(&self, role: Role) -> &Pin {
        // `Lock::new` checked that every role is pinned exactly once.
        self.pins.iter().find(|p| p.role == role).expect("every role is pinned")
    }
}

/// One pin from a line of a lock file (comment already removed).
pub(crate) fn parse_line(line: &str) -> Result<Pin, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [role, package, version, sha256] = fields[..] else {
        return Err(format!("expected 4 fields, found {}", fields.len()));
    };
    let role = match role {
        "kernel" => Role::Kernel,
        "busybox" => Role::Busybox,
        "kernel-source" => Role::KernelSource,
        other => return Err(format!("unknown role {other:?}")),
    };
    let hex = sha256.len() == 64
        && sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return Err("the checksum is not 64 lowercase hexadecimal digits".into());
    }
    Ok(Pin { role, package: package.into(), version: version.into(), sha256: sha256.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA_B: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn sample() -> String {
        format!(
            "# comment\n\nkernel linux-image-6.1.0-56-cloud-amd64 6.1.192-2 {SHA_A}\n\
             busybox busybox-static 1:1.35.0-4+deb12u1+b1 {SHA_B}  # trailing\n"
        )
    }

    #[test]
    fn parses_and_round_trips() {
        let lock = Lock::parse(&sample()).unwrap();
        let kernel = lock.get(Role::Kernel);
        assert_eq!(kernel.package, "linux-image-6.1.0-56-cloud-amd64");
        assert_eq!(kernel.version, "6.1.192-2");
        assert_eq!(lock.get(Role::Busybox).version, "1:1.35.0-4+deb12u1+b1");
        assert_eq!(Lock::parse(&lock.render()).unwrap(), lock);
    }

    #[test]
    fn the_committed_lock_file_parses() {
        let lock = Lock::parse(include_str!("../debian-packages.lock")).unwrap();
        assert!(lock.get(Role::Kernel).package.starts_with("linux-image-"));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let bad = sample().replace(SHA_B, "xyz");
        let err = Lock::parse(&bad).unwrap_err();
        assert!(matches!(err, LockError::Malformed { line: 4, .. }), "{err}");
        let short = "kernel linux-image 1.0\n";
        assert!(matches!(Lock::parse(short), Err(LockError::Malformed { line: 1, .. })));
    }

    #[test]
    fn each_role_exactly_once() {
        let missing = format!("kernel k 1 {SHA_A}\n");
        assert!(matches!(Lock::parse(&missing), Err(LockError::Roles(_))));
        let twice = format!("{}kernel k 2 {SHA_A}\n", sample());
        assert!(matches!(Lock::parse(&twice), Err(LockError::Roles(_))));
    }
}
