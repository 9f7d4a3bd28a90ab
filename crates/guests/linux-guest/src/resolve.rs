//! From the lock's pins to `.deb` files, whatever day it is.
//!
//! Debian's archive moves on. A fresh machine's apt lists may predate the pins; the security
//! archive keeps only the current version of each package; and a kernel package carries its
//! ABI in its name (`linux-image-6.1.0-56-cloud-amd64`), so a pinned kernel disappears whole
//! when the next ABI ships. For each pin, [`Resolver::resolve`]:
//!
//! 1. takes the cached `.deb` of the pinned checksum, or `apt-get download`s the pinned version
//!    and checks it against the lock's SHA-256;
//! 2. if apt does not know the package or the version, or the archive no longer serves its
//!    file: runs `apt-get update` (at most once per build; it needs root) and tries 1 again;
//! 3. if it is still gone, takes the current version of the same package: apt's candidate for
//!    the pinned package or, when the archive has no package of that name any more, the one the
//!    role's source package names now ([`Role::source_package`]: for the kernel, the
//!    meta-package that depends on the current kernel). That `.deb` is checked against the
//!    SHA-256 of apt's signed index, and a [`Notice::Fallback`] says what happened and how to
//!    refresh the lock. (When `apt-get update` failed, typically for want of root, the
//!    fallback is the newest version the host's old lists know, and the notice says to run
//!    `sudo apt-get update` instead.)
//!
//! A `.deb` that does not match the checksum pinned for its own version is refused, never
//! replaced: that is a changed file, not a moved archive. Nothing here runs when a build of
//! the same inputs is cached (see `image`).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::apt::{self, AptError, Candidate};
use crate::image::BuildError;
use crate::lock::{Pin, Role};

/// What the resolver needs from apt; the unit tests answer it from canned records.
pub(crate) trait Archive {
    /// The candidate record of `package` in the apt lists.
    fn candidate(&self, package: &str) -> Result<Candidate, AptError>;
    /// The `.deb` of `pin`, checked against `pin.sha256`.
    fn fetch(&self, pin: &Pin) -> Result<PathBuf, AptError>;
    /// Refreshes the apt lists.
    fn refresh(&self) -> Result<(), AptError>;
}

/// The host's apt, downloading into `<cache>/debs/`.
pub(crate) struct Apt<'a> {
    /// The cache directory.
    pub cache: &'a Path,
}

impl Archive for Apt<'_> {
    fn candidate(&self, package: &str) -> Result<Candidate, AptError> {
        apt::candidate(package)
    }

    fn fetch(&self, pin: &Pin) -> Result<PathBuf, AptError> {
        apt::fetch(pin, self.cache)
    }

    fn refresh(&self) -> Result<(), AptError> {
        apt::refresh_lists()
    }
}

/// Something a user should know about a build that succeeded: one line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The archive no longer has a pinned version; the guest is built from `used`, the current
    /// version of the same package, checked against apt's signed index.
    Fallback {
        /// The pin in the lock file.
        pinned: Pin,
        /// What the guest is built from instead.
        used: Pin,
        /// `None` when the apt lists were refreshed first. Otherwise why `apt-get update`
        /// failed (typically: not root): then `used` is only the newest version that the
        /// host's old lists know, and the pinned one may still be in the archive.
        not_refreshed: Option<String>,
    },
    /// `apt-get update` failed (typically: not root), so what the apt lists offer may be older
    /// than the archive.
    ListsNotRefreshed {
        /// What `apt-get update` said.
        stderr: String,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Fallback { pinned, used, not_refreshed: None } => write!(
                f,
                "the pinned {} {} is gone from the archive; building from {} {} (checked \
                 against apt's signed index); refresh the lock with `bulkhead image build \
                 --update-pins`",
                pinned.package, pinned.version, used.package, used.version
            ),
            Notice::Fallback { pinned, used, not_refreshed: Some(why) } => write!(
                f,
                "the apt lists lack the pinned {} {} and could not be refreshed ({why}); \
                 building from {} {}, the newest they know (checked against apt's signed \
                 index); run `sudo apt-get update` and build again",
                pinned.package, pinned.version, used.package, used.version
            ),
            Notice::ListsNotRefreshed { stderr } => write!(
                f,
                "the apt lists could not be refreshed ({stderr}), so what they offer may be \
                 older than the archive; run `sudo apt-get update` for the current versions"
            ),
        }
    }
}

/// Resolves the pins of one build, refreshing the apt lists at most once.
pub(crate) struct Resolver<A> {
    archive: A,
    /// `None` until `apt-get update` was tried; then its outcome (the error text on failure).
    refreshed: Option<Result<(), String>>,
    /// What the user should be told.
    pub notices: Vec<Notice>,
}

impl<A: Archive> Resolver<A> {
    pub(crate) fn new(archive: A) -> Resolver<A> {
        Resolver { archive, refreshed: None, notices: Vec::new() }
    }

    /// The `.deb` for `pin` and the pin it matches: `pin` itself or, when the archive no longer
    /// has it, the current version of the same package (see the module documentation).
    pub(crate) fn resolve(&mut self, pin: &Pin) -> Result<(Pin, PathBuf), BuildError> {
        let gone = match self.archive.fetch(pin) {
            Ok(deb) => return Ok((pin.clone(), deb)),
            Err(e) if e.is_gone() => e,
            Err(e) => return Err(e.into()),
        };
        if self.refresh_once() {
            match self.archive.fetch(pin) {
                Ok(deb) => return Ok((pin.clone(), deb)),
                Err(e) if e.is_gone() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let used = match self.current_version(pin) {
            Ok(used) => used,
            Err(BuildError::Apt(e)) if e.is_gone() => return Err(self.unrefreshed_or(e).into()),
            Err(e) => return Err(e),
        };
        if used == *pin {
            // The lists offer the pinned version, but the archive does not serve it.
            return Err(self.unrefreshed_or(gone).into());
        }
        let deb = self.archive.fetch(&used).map_err(|e| match e.is_gone() {
            true => self.unrefreshed_or(e),
            false => e,
        })?;
        let not_refreshed = self.refresh_error().map(str::to_owned);
        self.notices.push(Notice::Fallback {
            pinned: pin.clone(),
            used: used.clone(),
            not_refreshed,
        });
        Ok((used, deb))
    }

    /// The concrete package, version and checksum apt offers now for `role`, found from the
    /// role's source package.
    pub(crate) fn current_pin(&self, role: Role) -> Result<Pin, BuildError> {
        let source = role.source_package();
        let mut package = source.to_string();
        let mut candidate = self.archive.candidate(source)?;
        if role == Role::Kernel {
            package = candidate
                .depends
                .iter()
                .find(|d| d.starts_with("linux-image-"))
                .ok_or_else(|| BuildError::NotAKernel(source.into()))?
                .clone();
            candidate = self.archive.candidate(&package)?;
        }
        Ok(Pin { role, package, version: candidate.version, sha256: candidate.sha256 })
    }

    /// Runs `apt-get update` unless this build already tried; whether it ran and succeeded now.
    pub(crate) fn refresh_once(&mut self) -> bool {
        if self.refreshed.is_some() {
            return false;
        }
        let outcome = self.archive.refresh().map_err(|e| match e {
            AptError::ListsNotRefreshed { stderr } => stderr,
            other => other.to_string(),
        });
        let ran = outcome.is_ok();
        self.refreshed = Some(outcome);
        ran
    }

    /// Why `apt-get update` failed, if this build tried it and it failed.
    pub(crate) fn refresh_error(&self) -> Option<&str> {
        match &self.refreshed {
            Some(Err(stderr)) => Some(stderr),
            _ => None,
        }
    }

    /// The current version of `pin`'s package: apt's candidate for that package, or, when apt
    /// knows no package of that name, what the role's source package names now.
    fn current_version(&self, pin: &Pin) -> Result<Pin, BuildError> {
        match self.archive.candidate(&pin.package) {
            Ok(c) => Ok(Pin { version: c.version, sha256: c.sha256, ..pin.clone() }),
            Err(AptError::UnknownPackage { .. }) => self.current_pin(pin.role),
            Err(e) => Err(e.into()),
        }
    }

    /// `error`, or, when refreshing the lists failed, the error that says how to refresh them.
    fn unrefreshed_or(&self, error: AptError) -> AptError {
        match self.refresh_error() {
            Some(stderr) => AptError::ListsNotRefreshed { stderr: stderr.into() },
            None => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    const OLD: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const NEW: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const META: &str = "3333333333333333333333333333333333333333333333333333333333333333";

    /// One package version as apt's lists describe it.
    #[derive(Clone)]
    struct Record {
        package: &'static str,
        version: &'static str,
        sha256: &'static str,
        depends: &'static str,
        /// The archive still serves the file (false: a 404 for lists older than the archive).
        served: bool,
    }

    fn record(package: &'static str, version: &'static str, sha256: &'static str) -> Record {
        Record { package, version, sha256, depends: "", served: true }
    }

    /// An archive answering from canned records: `lists` now, `updated` after `apt-get update`.
    struct Fake {
        lists: RefCell<Vec<Record>>,
        updated: Vec<Record>,
        /// What `apt-get update` says when it fails.
        update_fails: Option<&'static str>,
        log: RefCell<Vec<String>>,
    }

    impl Fake {
        fn new(lists: Vec<Record>, updated: Vec<Record>) -> Fake {
            Fake {
                lists: RefCell::new(lists),
                updated,
                update_fails: None,
                log: RefCell::default(),
            }
        }

        fn log(&self) -> Vec<String> {
            self.log.borrow().clone()
        }
    }

    impl Archive for &Fake {
        fn candidate(&self, package: &str) -> Result<Candidate, AptError> {
            self.log.borrow_mut().push(format!("candidate {package}"));
            let lists = self.lists.borrow();
            // The last record of a package is its candidate.
            let r = lists.iter().rev().find(|r| r.package == package);
            let r = r.ok_or_else(|| AptError::UnknownPackage { package: package.into() })?;
            let depends = r.depends.split_whitespace().map(str::to_owned).collect();
            Ok(Candidate { version: r.version.into(), depends, sha256: r.sha256.into() })
        }

        fn fetch(&self, pin: &Pin) -> Result<PathBuf, AptError> {
            self.log.borrow_mut().push(format!("fetch {}={}", pin.package, pin.version));
            let lists = self.lists.borrow();
            let (package, version) = (pin.package.clone(), pin.version.clone());
            if !lists.iter().any(|r| r.package == package) {
                return Err(AptError::UnknownPackage { package });
            }
            let r = lists.iter().find(|r| r.package == package && r.version == version);
            let r = r.ok_or(AptError::PinnedVersionGone { package, version })?;
            if !r.served {
                let (package, version) = (pin.package.clone(), pin.version.clone());
                return Err(AptError::NotServed { package, version });
            }
            if r.sha256 != pin.sha256 {
                return Err(AptError::ChecksumMismatch {
                    package: pin.package.clone(),
                    version: pin.version.clone(),
                    expected: pin.sha256.clone(),
                    actual: r.sha256.into(),
                });
            }
            Ok(PathBuf::from(format!("/debs/{}_{}.deb", pin.package, pin.version)))
        }

        fn refresh(&self) -> Result<(), AptError> {
            self.log.borrow_mut().push("update".into());
            if let Some(stderr) = self.update_fails {
                return Err(AptError::ListsNotRefreshed { stderr: stderr.into() });
            }
            *self.lists.borrow_mut() = self.updated.clone();
            Ok(())
        }
    }

    fn pin(role: Role, package: &str, version: &str, sha256: &str) -> Pin {
        Pin { role, package: package.into(), version: version.into(), sha256: sha256.into() }
    }

    fn busybox(version: &str, sha256: &str) -> Pin {
        pin(Role::Busybox, "busybox-static", version, sha256)
    }

    /// Today's kernels: the meta-package names ABI 57; ABI 56 is gone.
    fn kernels_now() -> Vec<Record> {
        vec![
            Record { depends: "linux-image-6.1.0-57-cloud-amd64", ..meta() },
            record("linux-image-6.1.0-57-cloud-amd64", "6.1.200-1", NEW),
        ]
    }

    fn meta() -> Record {
        record("linux-image-cloud-amd64", "6.1.200-1", META)
    }

    #[test]
    fn a_served_pin_is_fetched_without_anything_else() {
        let fake = Fake::new(vec![record("busybox-static", "1:1.35", OLD)], Vec::new());
        let mut resolver = Resolver::new(&fake);
        let (used, deb) = resolver.resolve(&busybox("1:1.35", OLD)).unwrap();
        assert_eq!(used, busybox("1:1.35", OLD));
        assert_eq!(deb, PathBuf::from("/debs/busybox-static_1:1.35.deb"));
        assert_eq!(fake.log(), ["fetch busybox-static=1:1.35"]);
        assert!(resolver.notices.is_empty());
    }

    #[test]
    fn lists_older_than_the_pin_are_refreshed_and_the_pin_is_used() {
        let pinned = pin(Role::Kernel, "linux-image-6.1.0-57-cloud-amd64", "6.1.200-1", NEW);
        let fake = Fake::new(vec![meta()], kernels_now());
        let mut resolver = Resolver::new(&fake);
        let (used, _) = resolver.resolve(&pinned).unwrap();
        assert_eq!(used, pinned);
        assert_eq!(
            fake.log(),
            [
                "fetch linux-image-6.1.0-57-cloud-amd64=6.1.200-1",
                "update",
                "fetch linux-image-6.1.0-57-cloud-amd64=6.1.200-1"
            ]
        );
        assert!(resolver.notices.is_empty());
    }

    #[test]
    fn lists_that_name_a_file_the_archive_dropped_are_refreshed() {
        let stale = Record { served: false, ..record("busybox-static", "1:1.35", OLD) };
        let fake = Fake::new(vec![stale], vec![record("busybox-static", "1:1.35", OLD)]);
        let mut resolver = Resolver::new(&fake);
        assert_eq!(resolver.resolve(&busybox("1:1.35", OLD)).unwrap().0, busybox("1:1.35", OLD));
        assert_eq!(fake.log().iter().filter(|l| *l == "update").count(), 1);
    }

    #[test]
    fn a_gone_version_falls_back_to_the_current_version_of_the_same_package() {
        let now = vec![record("busybox-static", "1:1.36", NEW)];
        let fake = Fake::new(now.clone(), now);
        let mut resolver = Resolver::new(&fake);
        let pinned = busybox("1:1.35", OLD);
        let (used, deb) = resolver.resolve(&pinned).unwrap();
        // The fallback is checked against the checksum of apt's index, not the lock's.
        assert_eq!(used, busybox("1:1.36", NEW));
        assert_eq!(deb, PathBuf::from("/debs/busybox-static_1:1.36.deb"));
        assert_eq!(
            fake.log(),
            [
                "fetch busybox-static=1:1.35",
                "update",
                "fetch busybox-static=1:1.35",
                "candidate busybox-static",
                "fetch busybox-static=1:1.36"
            ]
        );
        assert_eq!(resolver.notices, [Notice::Fallback { pinned, used, not_refreshed: None }]);
    }

    #[test]
    fn a_gone_kernel_abi_falls_back_through_the_meta_package() {
        let fake = Fake::new(kernels_now(), kernels_now());
        let mut resolver = Resolver::new(&fake);
        let pinned = pin(Role::Kernel, "linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", OLD);
        let (used, _) = resolver.resolve(&pinned).unwrap();
        assert_eq!(used, pin(Role::Kernel, "linux-image-6.1.0-57-cloud-amd64", "6.1.200-1", NEW));
        assert_eq!(
            fake.log()[3..],
            [
                "candidate linux-image-6.1.0-56-cloud-amd64",
                "candidate linux-image-cloud-amd64",
                "candidate linux-image-6.1.0-57-cloud-amd64",
                "fetch linux-image-6.1.0-57-cloud-amd64=6.1.200-1"
            ]
        );
        let line = resolver.notices[0].to_string();
        assert_eq!(
            line,
            "the pinned linux-image-6.1.0-56-cloud-amd64 6.1.192-2 is gone from the archive; \
             building from linux-image-6.1.0-57-cloud-amd64 6.1.200-1 (checked against apt's \
             signed index); refresh the lock with `bulkhead image build --update-pins`"
        );
    }

    #[test]
    fn a_kernel_abi_still_listed_at_another_version_keeps_its_package() {
        let mut now = kernels_now();
        now.push(record("linux-image-6.1.0-56-cloud-amd64", "6.1.192-3", NEW));
        let fake = Fake::new(now.clone(), now);
        let mut resolver = Resolver::new(&fake);
        let pinned = pin(Role::Kernel, "linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", OLD);
        let (used, _) = resolver.resolve(&pinned).unwrap();
        assert_eq!(used, pin(Role::Kernel, "linux-image-6.1.0-56-cloud-amd64", "6.1.192-3", NEW));
    }

    #[test]
    fn the_lists_are_refreshed_once_per_build() {
        let mut now = kernels_now();
        now.push(record("busybox-static", "1:1.36", NEW));
        let fake = Fake::new(now.clone(), now);
        let mut resolver = Resolver::new(&fake);
        resolver.resolve(&busybox("1:1.35", OLD)).unwrap();
        let kernel = pin(Role::Kernel, "linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", OLD);
        resolver.resolve(&kernel).unwrap();
        assert_eq!(fake.log().iter().filter(|l| *l == "update").count(), 1);
        assert_eq!(resolver.notices.len(), 2);
    }

    #[test]
    fn a_changed_file_of_the_pinned_version_is_refused_not_replaced() {
        let now = vec![record("busybox-static", "1:1.35", NEW)];
        let fake = Fake::new(now.clone(), now);
        let mut resolver = Resolver::new(&fake);
        let err = resolver.resolve(&busybox("1:1.35", OLD)).unwrap_err();
        assert!(matches!(err, BuildError::Apt(AptError::ChecksumMismatch { .. })), "{err:?}");
        assert_eq!(fake.log(), ["fetch busybox-static=1:1.35"]);
    }

    #[test]
    fn without_root_the_lists_at_hand_still_give_a_fallback_and_a_notice() {
        let now = vec![record("busybox-static", "1:1.36", NEW)];
        let mut fake = Fake::new(now, Vec::new());
        fake.update_fails = Some("Could not open lock file /var/lib/apt/lists/lock");
        let mut resolver = Resolver::new(&fake);
        let (used, _) = resolver.resolve(&busybox("1:1.35", OLD)).unwrap();
        assert_eq!(used.version, "1:1.36");
        let not_refreshed = Some("Could not open lock file /var/lib/apt/lists/lock".to_string());
        let pinned = busybox("1:1.35", OLD);
        assert_eq!(resolver.notices, [Notice::Fallback { pinned, used, not_refreshed }]);
        assert_eq!(
            resolver.notices[0].to_string(),
            "the apt lists lack the pinned busybox-static 1:1.35 and could not be refreshed \
             (Could not open lock file /var/lib/apt/lists/lock); building from busybox-static \
             1:1.36, the newest they know (checked against apt's signed index); run `sudo \
             apt-get update` and build again"
        );
    }

    #[test]
    fn without_root_and_without_a_fallback_the_error_says_to_refresh_as_root() {
        // Lists from before ABI 57, whose kernel the archive has dropped since.
        let old_kernel = "linux-image-6.1.0-48-cloud-amd64";
        let lists = vec![
            Record { depends: old_kernel, ..record("linux-image-cloud-amd64", "6.1.172-1", META) },
            Record { served: false, ..record(old_kernel, "6.1.172-1", OLD) },
        ];
        let mut fake = Fake::new(lists, kernels_now());
        fake.update_fails = Some("Could not open lock file /var/lib/apt/lists/lock");
        let mut resolver = Resolver::new(&fake);
        let kernel = pin(Role::Kernel, "linux-image-6.1.0-57-cloud-amd64", "6.1.200-1", NEW);
        let err = resolver.resolve(&kernel).unwrap_err();
        assert!(matches!(err, BuildError::Apt(AptError::ListsNotRefreshed { .. })), "{err:?}");
        assert!(err.to_string().contains("sudo apt-get update"), "{err}");
        // A listed version the archive no longer serves, and no newer one: the same advice.
        let stale = Record { served: false, ..record("busybox-static", "1:1.35", OLD) };
        let mut fake = Fake::new(vec![stale], Vec::new());
        fake.update_fails = Some("Permission denied");
        let err = Resolver::new(&fake).resolve(&busybox("1:1.35", OLD)).unwrap_err();
        assert!(matches!(err, BuildError::Apt(AptError::ListsNotRefreshed { .. })), "{err:?}");
    }

    #[test]
    fn a_package_gone_for_good_is_an_error_not_a_loop() {
        let fake = Fake::new(Vec::new(), Vec::new());
        let err = Resolver::new(&fake).resolve(&busybox("1:1.35", OLD)).unwrap_err();
        assert!(matches!(err, BuildError::Apt(AptError::UnknownPackage { .. })), "{err:?}");
        assert_eq!(fake.log().iter().filter(|l| *l == "update").count(), 1);
    }
}
