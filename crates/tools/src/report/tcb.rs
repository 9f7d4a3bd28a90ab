//! `bulkhead report tcb`: how big the trusted core is.
//!
//! **Lines of code**, by crate: each crate says in its `Cargo.toml` what
//! runs its code (`[package.metadata.bulkhead] tcb`, see [`crates`]):
//! - *core*: the core process, in both modes — the trusted core: the `core`
//!   crate, the VMM's wiring (`vmm`), the management API's server (`api`),
//!   the sandbox's core half and what both halves share (`sandbox`), and the
//!   binary, which parses the command line;
//! - *compartment*: compartments in microkernel mode — the device backends
//!   (`devices`), the disk image formats (`disk`), a compartment's entry and
//!   entering the sandbox (`compartment`); in monolithic mode the core;
//! - *monolithic*: the core, in monolithic mode only (`monolithic`);
//! - *tool*: no VM — `bulkhead ctl`, benchmarks and this report (`tools`),
//!   the guests.
//!
//! Tests, examples, build scripts, fuzz targets and unit-test module files
//! (`tests.rs`) are counted with the tools. The trusted core is the *core*
//! crates in microkernel mode; in monolithic mode the compartments' crates
//! and the glue join it.
//!
//! **System calls** are counted from the lists the code installs
//! (`bulkhead_vmm::confine::lists`), distinct calls a filter lets run.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bulkhead_devices::DeviceKind;
use bulkhead_sandbox::seccomp::RuleAction;

use super::crates::{self, Part};
use super::loc;
use bulkhead_vmm::confine::{allowed_count, ThreadClass};

/// Marker comments around the report in a Markdown file.
pub const BEGIN: &str = "<!-- tcb-report:begin: `bulkhead report tcb --update docs/ARCHITECTURE.md` rewrites what follows -->";
pub const END: &str = "<!-- tcb-report:end -->";

/// Files and lines.
#[derive(Clone, Copy, Default)]
struct Count {
    files: usize,
    lines: usize,
}

impl Count {
    fn add(&mut self, lines: usize) {
        self.files += 1;
        self.lines += lines;
    }
}

/// The report, as Markdown.
pub fn report(root: &Path) -> anyhow::Result<String> {
    if !root.join("crates/core/src/lib.rs").is_file() {
        bail!(
            "{} is not Bulkhead's source tree (no crates/core/src/lib.rs): give --root",
            root.display()
        );
    }
    let crates = crates::find(root)?;
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    let mut by_crate = vec![Count::default(); crates.len()];
    let mut by_part = [Count::default(); 4];
    let mut rest = Count::default();
    for (rel, path) in &files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let lines = loc::count(&text);
        let (owner, part) = crates::place(&crates, rel)?;
        match owner {
            Some(c) => by_crate[crates.iter().position(|x| x == c).expect("listed")].add(lines),
            None => rest.add(lines),
        }
        by_part[Part::ALL.iter().position(|&p| p == part).expect("a part")].add(lines);
    }
    let mut out = String::from(
        "Lines of Rust (non-blank, non-comment, unit-test modules left out) in each crate's \
         `src/`, counted in the part its `Cargo.toml` names (`[package.metadata.bulkhead] tcb`); \
         tests, unit-test files (`tests.rs`), examples, build scripts and fuzz targets count as \
         tools and tests:\n\n",
    );
    let _ = writeln!(out, "| crate | folder | part | files | lines |");
    let _ = writeln!(out, "|---|---|---|---:|---:|");
    let mut order: Vec<usize> = (0..crates.len()).filter(|&i| by_crate[i].files > 0).collect();
    order.sort_by_key(|&i| (crates[i].part, crates[i].dir.clone()));
    for i in order {
        let (c, n) = (&crates[i], by_crate[i]);
        let dir = if c.dir.is_empty() { "src" } else { &c.dir };
        let part = c.part.map_or("", Part::name);
        let _ = writeln!(out, "| `{}` | `{dir}` | {part} | {} | {} |", c.name, n.files, n.lines);
    }
    let _ = writeln!(
        out,
        "| tests, unit-test files, examples, build scripts, fuzz targets | | tools and tests | {} | {} |",
        rest.files, rest.lines
    );
    let _ = writeln!(out, "\n| part | files | lines |");
    let _ = writeln!(out, "|---|---:|---:|");
    for (part, n) in Part::ALL.iter().zip(by_part) {
        let _ = writeln!(out, "| {} | {} | {} |", part.name(), n.files, n.lines);
    }
    let micro = by_part[0].lines;
    let mono = micro + by_part[1].lines + by_part[2].lines;
    let _ = writeln!(out, "| **trusted core, microkernel mode** (core) | | **{micro}** |");
    let _ = writeln!(
        out,
        "| **trusted core, monolithic mode** (+ compartments, glue) | | **{mono}** |"
    );
    out.push('\n');
    out.push_str(&syscalls_table());
    Ok(out)
}

/// Per process and thread class, the system calls allowed, in both modes.
fn syscalls_table() -> String {
    let mut out = String::from(
        "System calls allowed (distinct calls each seccomp filter lets run; a device's \
         `open`/`openat`, refused with EACCES, not counted):\n\n",
    );
    let _ = writeln!(out, "| process | thread class | microkernel | monolithic |");
    let _ = writeln!(out, "|---|---|---:|---:|");
    let kinds = DeviceKind::ALL;
    let dash = "—".to_string();
    for class in
        [ThreadClass::Vcpu, ThreadClass::EventLoop, ThreadClass::Supervisor, ThreadClass::Api]
    {
        let n = allowed_count(class).to_string();
        let _ = writeln!(out, "| core | {class} | {n} | {n} |");
    }
    let _ =
        writeln!(out, "| core | launcher | {} | {dash} |", allowed_count(ThreadClass::Launcher));
    for kind in kinds {
        let n = allowed_count(ThreadClass::Device(kind));
        let _ = writeln!(out, "| core | device-{kind} | {dash} | {n} |");
    }
    let common =
        [ThreadClass::Vcpu, ThreadClass::EventLoop, ThreadClass::Supervisor, ThreadClass::Api];
    let micro: Vec<ThreadClass> = common.into_iter().chain([ThreadClass::Launcher]).collect();
    let mono: Vec<ThreadClass> = common.into_iter().chain(kinds.map(ThreadClass::Device)).collect();
    let _ = writeln!(out, "| core | any thread (union) | {} | {} |", union(&micro), union(&mono));
    for kind in kinds {
        let n = allowed_count(ThreadClass::Device(kind));
        let _ = writeln!(out, "| compartment {kind} | all threads | {n} | {dash} |");
    }
    out
}

/// Distinct calls any of `classes` allows.
fn union(classes: &[ThreadClass]) -> usize {
    let mut names = BTreeSet::new();
    for class in classes {
        for rule in class.rules() {
            if rule.action() == RuleAction::Allow {
                names.insert(rule.name().to_string());
            }
        }
    }
    names.len()
}

/// Every `.rs` file under `dir`, as (path relative to `root`, path); build
/// outputs and hidden folders are skipped.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name.starts_with('.') || name == "target" {
                continue;
            }
            walk(root, &path, out)?;
        } else if kind.is_file() && name.ends_with(".rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().to_string();
            out.push((rel, path));
        }
    }
    Ok(())
}

/// Replaces what lies between the markers in `file` by `report`.
pub fn update(file: &Path, report: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        bail!(
            "{} has no tcb-report markers: add the lines\n{BEGIN}\n{END}\nwhere the report goes",
            file.display()
        );
    };
    if end < begin {
        bail!("{}: the tcb-report end marker comes before the begin marker", file.display());
    }
    let new = format!("{}{BEGIN}\n\n{report}\n{}", &text[..begin], &text[end..]);
    std::fs::write(file, new).with_context(|| format!("cannot write {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trusted_core_is_these_crates() {
        // Each crate says what runs it; this holds the trusted core to the crates that are
        // meant to be in it, so that one cannot slip in or out by its manifest alone.
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        let crates = crates::find(root).unwrap();
        let trusted: BTreeSet<&str> =
            crates.iter().filter(|c| c.part == Some(Part::Core)).map(|c| c.name.as_str()).collect();
        let expected =
            ["bulkhead", "bulkhead-api", "bulkhead-core", "bulkhead-sandbox", "bulkhead-vmm"];
        assert_eq!(trusted, BTreeSet::from(expected));
        for c in &crates {
            let has_code = root.join(&c.dir).join("src").is_dir();
            assert!(!has_code || c.part.is_some(), "{} does not say what runs it", c.name);
        }
    }

    #[test]
    fn the_published_system_call_table_is_current() {
        // Lines of code move with every change; the system-call table must not drift from
        // the lists the code installs.
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/ARCHITECTURE.md");
        let text = std::fs::read_to_string(docs).unwrap();
        assert!(
            text.contains(&syscalls_table()),
            "docs/ARCHITECTURE.md's system-call table is out of date: run \
             `bulkhead report tcb --update docs/ARCHITECTURE.md`"
        );
    }

    #[test]
    fn update_rewrites_between_the_markers() {
        let dir = std::env::temp_dir().join(format!("tcb-update-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.md");
        std::fs::write(&file, format!("# A\n{BEGIN}\nold\n{END}\ntail\n")).unwrap();
        update(&file, "new\n").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text, format!("# A\n{BEGIN}\n\nnew\n\n{END}\ntail\n"));
        std::fs::write(&file, "no markers").unwrap();
        assert!(update(&file, "x").unwrap_err().to_string().contains("markers"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
