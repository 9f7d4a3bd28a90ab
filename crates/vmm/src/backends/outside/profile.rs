//! An outside backend's profile: what its program may do inside its compartment beyond what
//! every outside backend gets (the system's program and library folders, read-only; its
//! socket's folder; the paths the user names with `ro=` and `rw=`).
//!
//! A profile is a JSON file:
//!
//! ```json
//! { "about": "…", "network": false, "read": ["/etc/qemu"], "syscalls": ["read", "…"] }
//! ```
//!
//! `syscalls` is the program's seccomp allow-list (a call outside it kills the program);
//! `read` lists more paths it may read (missing ones are skipped); `network` keeps the host's
//! network namespace. Bulkhead has one built in for each backend it is tested with
//! (`profiles/*.json`, chosen by the program's file name); `profile=FILE` names another, and
//! `seccomp=log` runs a program with its calls outside the profile allowed and named, to
//! derive one.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A profile, as read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// What it is for (shown nowhere; for the reader of the file).
    #[serde(default)]
    pub about: String,
    /// Whether the program keeps the host's network.
    #[serde(default)]
    pub network: bool,
    /// More paths it may read.
    #[serde(default)]
    pub read: Vec<PathBuf>,
    /// Its seccomp allow-list.
    pub syscalls: Vec<String>,
}

/// The built-in profiles: (program file name, profile).
const BUILT_IN: &[(&str, &str)] = &[
    ("qemu-storage-daemon", include_str!("profiles/qemu-storage-daemon.json")),
    ("vhost-device-vsock", include_str!("profiles/vhost-device-vsock.json")),
    ("virtiofsd", include_str!("profiles/virtiofsd.json")),
];

/// The names of the built-in profiles.
pub fn built_in_names() -> impl Iterator<Item = &'static str> {
    BUILT_IN.iter().map(|(name, _)| *name)
}

impl Profile {
    /// Parses a profile's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> anyhow::Result<Profile> {
        let profile: Profile = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("the profile {source} is not valid: {e}"))?;
        for name in &profile.syscalls {
            if bulkhead_sandbox::seccomp::syscall_number(name).is_none() {
                anyhow::bail!(
                    "the profile {source} names `{name}`, which is no x86-64 system call"
                );
            }
        }
        if let Some(path) = profile.read.iter().find(|p| !p.is_absolute()) {
            anyhow::bail!("the profile {source} lists {}, which is not absolute", path.display());
        }
        Ok(profile)
    }

    /// The built-in profile named `name`.
    pub fn built_in(name: &str) -> Option<Profile> {
        let (_, text) = BUILT_IN.iter().find(|(n, _)| *n == name)?;
        Some(Profile::parse(text, name).expect("the built-in profiles are valid"))
    }

    /// `profile=`: a built-in profile's name, or a file.
    pub fn load(spec: &str) -> anyhow::Result<Profile> {
        if let Some(profile) = Profile::built_in(spec) {
            return Ok(profile);
        }
        let path = Path::new(spec);
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "profile={spec}: no built-in profile ({}) and no such file: {e}",
                built_in_names().collect::<Vec<_>>().join(", ")
            )
        })?;
        Profile::parse(&text, &path.display().to_string())
    }

    /// The profile for `program` when none is named: the built-in one of its file name.
    pub fn for_program(program: &Path) -> Option<Profile> {
        Profile::built_in(program.file_name()?.to_str()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_profiles_parse() {
        for name in built_in_names() {
            let profile = Profile::built_in(name).unwrap();
            assert!(profile.syscalls.len() > 20, "{name}");
        }
        let wrapper = Path::new("/home/u/.cache/bulkhead/qemu-7.2/bin/virtiofsd");
        assert!(Profile::for_program(wrapper).is_some());
        assert!(Profile::for_program(Path::new("/usr/bin/true")).is_none());
    }

    #[test]
    fn bad_profiles_are_refused_clearly() {
        let e = Profile::parse(r#"{"syscalls": ["read", "frobnicate"]}"#, "p.json").unwrap_err();
        assert!(e.to_string().contains("`frobnicate`"), "{e}");
        let e = Profile::parse(r#"{"syscalls": [], "colour": 1}"#, "p.json").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Profile::parse(r#"{"syscalls": [], "read": ["etc"]}"#, "p.json").unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
        let e = Profile::load("/nonexistent/profile.json").unwrap_err();
        assert!(e.to_string().contains("no built-in profile"), "{e}");
    }
}
