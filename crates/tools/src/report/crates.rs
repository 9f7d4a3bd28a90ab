//! The crates of the source tree and what runs each, as its `Cargo.toml`
//! says:
//!
//! ```toml
//! [package.metadata.bulkhead]
//! tcb = "core"        # or "compartment", "monolithic", "tool"
//! ```
//!
//! A `.rs` file belongs to the crate whose folder holds it (the innermost);
//! the files in the crate's `src/` are that crate's code, and everything else
//! (`tests/`, `examples/`, `build.rs`, fuzz targets) and unit-test module
//! files (`tests.rs`) are tests and tools.

use std::path::Path;

use anyhow::{bail, Context};

/// What runs a crate's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The core process, in both modes: the trusted core.
    Core,
    /// Compartments in microkernel mode; in monolithic mode, the core.
    Compartment,
    /// The core, in monolithic mode only.
    MonolithicGlue,
    /// No VM: tools, guests, tests.
    Tools,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Core, Part::Compartment, Part::MonolithicGlue, Part::Tools];

    /// The part's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Part::Core => "core",
            Part::Compartment => "compartments",
            Part::MonolithicGlue => "monolithic glue",
            Part::Tools => "tools and tests",
        }
    }

    /// The part a manifest's `tcb` names.
    fn from_manifest(value: &str) -> Option<Part> {
        match value {
            "core" => Some(Part::Core),
            "compartment" => Some(Part::Compartment),
            "monolithic" => Some(Part::MonolithicGlue),
            "tool" => Some(Part::Tools),
            _ => None,
        }
    }
}

/// One crate of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crate {
    /// Its package name.
    pub name: String,
    /// Its folder, relative to the tree's root (`""` for the root package).
    pub dir: String,
    /// What runs it; `None` when its manifest does not say.
    pub part: Option<Part>,
}

impl Crate {
    /// Whether the file `rel` (relative to the root) is this crate's own code.
    fn owns_code(&self, rel: &str) -> bool {
        let src =
            if self.dir.is_empty() { "src/".to_string() } else { format!("{}/src/", self.dir) };
        rel.starts_with(&src) && !rel.ends_with("/tests.rs")
    }

    fn holds(&self, rel: &str) -> bool {
        self.dir.is_empty() || rel.starts_with(&format!("{}/", self.dir))
    }
}

/// The crate a manifest describes (`None` for a workspace-only manifest).
pub fn parse_manifest(text: &str, dir: &str) -> anyhow::Result<Option<Crate>> {
    let (mut section, mut name, mut tcb) = ("", None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = value.split('#').next().unwrap_or("").trim().trim_matches('"');
        match (section, key.trim()) {
            ("[package]", "name") => name = Some(value.to_string()),
            ("[package.metadata.bulkhead]", "tcb") => tcb = Some(value.to_string()),
            _ => {}
        }
    }
    let Some(name) = name else { return Ok(None) };
    let part = match tcb.as_deref().map(|v| (v, Part::from_manifest(v))) {
        None => None,
        Some((_, Some(part))) => Some(part),
        Some((v, None)) => {
            bail!("{name}: tcb = \"{v}\" names no part: use core, compartment, monolithic or tool")
        }
    };
    Ok(Some(Crate { name, dir: dir.to_string(), part }))
}

/// Every crate under `root`, from the `Cargo.toml` files (build outputs and
/// hidden folders skipped).
pub fn find(root: &Path) -> anyhow::Result<Vec<Crate>> {
    let mut crates = Vec::new();
    find_in(root, root, &mut crates)?;
    Ok(crates)
}

fn find_in(root: &Path, dir: &Path, out: &mut Vec<Crate>) -> anyhow::Result<()> {
    let manifest = dir.join("Cargo.toml");
    if manifest.is_file() {
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        let rel = dir.strip_prefix(root).unwrap_or(dir).to_string_lossy().to_string();
        out.extend(parse_manifest(&text, &rel)?);
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.file_type()?.is_dir() && !name.starts_with('.') && name != "target" {
            find_in(root, &entry.path(), out)?;
        }
    }
    Ok(())
}

/// Where the file `rel` counts: its crate (the innermost that holds it) and
/// the part, the crate's for its own code and tools for the rest.
pub fn place<'a>(crates: &'a [Crate], rel: &str) -> anyhow::Result<(Option<&'a Crate>, Part)> {
    let owner = crates.iter().filter(|c| c.holds(rel)).max_by_key(|c| c.dir.len());
    match owner {
        Some(c) if c.owns_code(rel) => match c.part {
            Some(part) => Ok((Some(c), part)),
            None => bail!(
                "the crate {} does not say what runs its code: add to {}Cargo.toml\n\
                 [package.metadata.bulkhead]\ntcb = \"core\"  # or compartment, monolithic, tool",
                c.name,
                if c.dir.is_empty() { String::new() } else { format!("{}/", c.dir) }
            ),
        },
        _ => Ok((None, Part::Tools)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_say_what_runs_a_crate() {
        let text = "[package]\nname = \"bulkhead-x\"\n\n[package.metadata.bulkhead]\n\
                    tcb = \"compartment\" # runs in compartments\n[dependencies]\nname = \"no\"\n";
        let c = parse_manifest(text, "crates/x").unwrap().unwrap();
        assert_eq!((c.name.as_str(), c.part), ("bulkhead-x", Some(Part::Compartment)));
        let silent = parse_manifest("[package]\nname = \"y\"\n", "y").unwrap().unwrap();
        assert_eq!(silent.part, None);
        assert!(parse_manifest("[workspace]\nmembers = []\n", "").unwrap().is_none());
        let bad = "[package]\nname = \"z\"\n[package.metadata.bulkhead]\ntcb = \"trusted\"\n";
        assert!(parse_manifest(bad, "z").is_err());
    }

    #[test]
    fn files_count_in_their_crates_part() {
        let c = |name: &str, dir: &str, part| Crate { name: name.into(), dir: dir.into(), part };
        let crates = [
            c("bulkhead", "", Some(Part::Core)),
            c("bulkhead-devices", "crates/devices", Some(Part::Compartment)),
            c("bulkhead-guest", "crates/guests/guest", Some(Part::Tools)),
            c("fuzz", "fuzz", None),
        ];
        let part = |rel: &str| place(&crates, rel).unwrap().1;
        assert_eq!(part("src/main.rs"), Part::Core);
        assert_eq!(part("tests/boot.rs"), Part::Tools);
        assert_eq!(part("crates/devices/src/blk/device.rs"), Part::Compartment);
        assert_eq!(part("crates/devices/src/blk/tests.rs"), Part::Tools);
        assert_eq!(part("crates/devices/tests/blk.rs"), Part::Tools);
        assert_eq!(part("crates/guests/guest/src/lib.rs"), Part::Tools);
        assert_eq!(part("fuzz/fuzz_targets/mmio.rs"), Part::Tools);
        assert_eq!(place(&crates, "src/main.rs").unwrap().0.unwrap().name, "bulkhead");
        let silent = [c("bulkhead-new", "crates/new", None)];
        assert!(place(&silent, "crates/new/src/lib.rs").is_err());
    }
}
