//! Where Bulkhead keeps what it builds and what it downloads, per user.
//!
//! | what                          | first of                                                              |
//! |-------------------------------|-----------------------------------------------------------------------|
//! | data (built guests)           | `$BULKHEAD_DATA_DIR`, `$XDG_DATA_HOME/bulkhead`, `~/.local/share/bulkhead` |
//! | cache (downloads, QEMU 7.2)   | `$BULKHEAD_CACHE_DIR`, `$XDG_CACHE_HOME/bulkhead`, `~/.cache/bulkhead`     |
//!
//! As the XDG base-directory specification asks, an empty or relative `XDG_*` value is ignored.
//! `scripts/install-qemu.sh` follows the same rule for the cache directory.

use std::ffi::OsString;
use std::path::PathBuf;

/// Why a per-user directory could not be chosen.
#[derive(Debug, thiserror::Error)]
pub enum DirsError {
    /// Neither the Bulkhead variable, the XDG variable nor `HOME` is set.
    #[error("cannot choose the {what} directory: HOME is not set; set {var} to a directory")]
    NoHome {
        /// "data" or "cache".
        what: &'static str,
        /// The Bulkhead variable that overrides the choice.
        var: &'static str,
    },
}

/// The directory for built guests.
pub fn data_dir() -> Result<PathBuf, DirsError> {
    choose("data", "BULKHEAD_DATA_DIR", "XDG_DATA_HOME", ".local/share", &|name| {
        std::env::var_os(name)
    })
}

/// The directory for downloads and unpacked tools.
pub fn cache_dir() -> Result<PathBuf, DirsError> {
    choose("cache", "BULKHEAD_CACHE_DIR", "XDG_CACHE_HOME", ".cache", &|name| {
        std::env::var_os(name)
    })
}

fn choose(
    what: &'static str,
    own_var: &'static str,
    xdg_var: &str,
    home_rel: &str,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, DirsError> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(own_var) {
        return Ok(dir);
    }
    if let Some(dir) = set(xdg_var).filter(|d| d.is_absolute()) {
        return Ok(dir.join("bulkhead"));
    }
    match set("HOME") {
        Some(home) => Ok(home.join(home_rel).join("bulkhead")),
        None => Err(DirsError::NoHome { what, var: own_var }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(vars: &[(&str, &str)]) -> Result<PathBuf, DirsError> {
        let owned: Vec<(String, String)> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env =
            move |name: &str| owned.iter().find(|(k, _)| k == name).map(|(_, v)| OsString::from(v));
        choose("data", "BULKHEAD_DATA_DIR", "XDG_DATA_HOME", ".local/share", &env)
    }

    #[test]
    fn own_variable_wins() {
        let dir =
            pick(&[("BULKHEAD_DATA_DIR", "/x/y"), ("XDG_DATA_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(dir.unwrap(), PathBuf::from("/x/y"));
    }

    #[test]
    fn xdg_then_home() {
        let xdg = pick(&[("XDG_DATA_HOME", "/xdg"), ("HOME", "/home/u")]).unwrap();
        assert_eq!(xdg, PathBuf::from("/xdg/bulkhead"));
        let home = pick(&[("HOME", "/home/u")]).unwrap();
        assert_eq!(home, PathBuf::from("/home/u/.local/share/bulkhead"));
    }

    #[test]
    fn empty_or_relative_values_are_ignored() {
        let dir = pick(&[
            ("BULKHEAD_DATA_DIR", ""),
            ("XDG_DATA_HOME", "relative/dir"),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(dir.unwrap(), PathBuf::from("/home/u/.local/share/bulkhead"));
    }

    #[test]
    fn no_home_says_which_variable_to_set() {
        let err = pick(&[]).unwrap_err().to_string();
        assert!(err.contains("BULKHEAD_DATA_DIR"), "{err}");
    }
}
