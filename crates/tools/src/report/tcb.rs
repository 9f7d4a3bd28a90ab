//! `bulkhead report tcb`: how big the trusted core is.
//!
//! **Lines of code.** Every `.rs` file of the tree is put in one part, by
//! what runs it ([`PARTS`], first match wins):
//! - *core*: runs in the core process in microkernel mode — the `core`
//!   crate, the API's server side, the sandbox's spawning side (clone3,
//!   cgroups, reading `/proc`, confining the core's threads), and the
//!   binary's `run` path (wiring, backends, supervisor glue, confinement);
//! - *shared*: linked into both the core and the compartments and run by
//!   both (the sandbox's policy, reports and seccomp compiler);
//! - *compartment*: runs only in a compartment in microkernel mode — the
//!   device backends, the disk image formats, entering the sandbox;
//! - *monolithic glue*: runs in the core in monolithic mode only;
//! - *tools and tests*: `bulkhead ctl`'s client, benchmarks, the guests,
//!   image building, `bulkhead disk`, tests (unit-test files `tests.rs`
//!   included), fuzz targets, this report.
//!
//! The trusted core is *core + shared* in microkernel mode; in monolithic
//! mode the compartments' code and the glue join it.
//!
//! **System calls** are counted from the lists the code installs
//! (`bulkhead_vmm::confine::lists`), distinct calls a filter lets run.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bulkhead_devices::DeviceKind;
use bulkhead_sandbox::seccomp::RuleAction;

use super::loc;
use bulkhead_vmm::confine::{allowed_count, ThreadClass};

/// Marker comments around the report in a Markdown file.
pub const BEGIN: &str = "<!-- tcb-report:begin: `bulkhead report tcb --update docs/ARCHITECTURE.md` rewrites what follows -->";
pub const END: &str = "<!-- tcb-report:end -->";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Core,
    Shared,
    Compartment,
    MonolithicGlue,
    Tools,
}

impl Part {
    const ALL: [Part; 5] =
        [Part::Core, Part::Shared, Part::Compartment, Part::MonolithicGlue, Part::Tools];

    fn name(self) -> &'static str {
        match self {
            Part::Core => "core",
            Part::Shared => "shared (core and compartments)",
            Part::Compartment => "compartments",
            Part::MonolithicGlue => "monolithic glue",
            Part::Tools => "tools and tests",
        }
    }
}

/// Path prefixes and their part; the first match wins; the rest are tools.
const PARTS: &[(&str, Part)] = &[
    ("crates/core/src/", Part::Core),
    ("crates/api/src/", Part::Core),
    ("crates/sandbox/src/spawn/", Part::Core),
    ("crates/sandbox/src/cgroup/", Part::Core),
    ("crates/sandbox/src/status.rs", Part::Core),
    ("crates/sandbox/src/caps.rs", Part::Core),
    ("crates/sandbox/src/thread.rs", Part::Core),
    ("crates/sandbox/src/", Part::Shared),
    ("crates/compartment/src/", Part::Compartment),
    ("crates/devices/src/", Part::Compartment),
    ("crates/disk/src/", Part::Compartment),
    ("crates/monolithic/src/", Part::MonolithicGlue),
    ("crates/vmm/src/", Part::Core),
    // The rest of the binary is its `run` path: parsing the command line into configurations
    // (a new file is counted in the core until it is placed otherwise).
    ("src/", Part::Core),
];

fn part_of(path: &str) -> Part {
    // A module file of unit tests (`#[cfg(test)] mod tests;`) runs in no VM.
    if path.ends_with("/tests.rs") {
        return Part::Tools;
    }
    PARTS.iter().find(|(prefix, _)| path.starts_with(prefix)).map_or(Part::Tools, |&(_, p)| p)
}

/// The report, as Markdown.
pub fn report(root: &Path) -> anyhow::Result<String> {
    if !root.join("crates/core/src/lib.rs").is_file() {
        bail!(
            "{} is not Bulkhead's source tree (no crates/core/src/lib.rs): give --root",
            root.display()
        );
    }
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    let mut lines = [0usize; 5];
    let mut counts = [0usize; 5];
    for (rel, path) in &files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let i = Part::ALL.iter().position(|&p| p == part_of(rel)).expect("a part");
        lines[i] += loc::count(&text);
        counts[i] += 1;
    }
    let mut out = String::new();
    let _ = writeln!(out, "Lines of Rust (non-blank, non-comment, unit-test modules left out):\n");
    let _ = writeln!(out, "| part | files | lines |");
    let _ = writeln!(out, "|---|---:|---:|");
    for (i, part) in Part::ALL.iter().enumerate() {
        let _ = writeln!(out, "| {} | {} | {} |", part.name(), counts[i], lines[i]);
    }
    let micro = lines[0] + lines[1];
    let mono = micro + lines[2] + lines[3];
    let _ = writeln!(out, "| **trusted core, microkernel mode** (core + shared) | | **{micro}** |");
    let _ = writeln!(
        out,
        "| **trusted core, monolithic mode** (+ compartments' code, glue) | | **{mono}** |"
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
    let kinds = [DeviceKind::Blk, DeviceKind::Net, DeviceKind::Rng];
    let dash = "—".to_string();
    for class in [ThreadClass::Vcpu, ThreadClass::EventLoop, ThreadClass::Api] {
        let n = allowed_count(class).to_string();
        let _ = writeln!(out, "| core | {class} | {n} | {n} |");
    }
    let _ =
        writeln!(out, "| core | launcher | {} | {dash} |", allowed_count(ThreadClass::Launcher));
    for kind in kinds {
        let n = allowed_count(ThreadClass::Device(kind));
        let _ = writeln!(out, "| core | device-{kind} | {dash} | {n} |");
    }
    let common = [ThreadClass::Vcpu, ThreadClass::EventLoop, ThreadClass::Api];
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
    fn files_go_to_their_parts() {
        assert_eq!(part_of("crates/core/src/vm.rs"), Part::Core);
        assert_eq!(part_of("crates/api/src/server.rs"), Part::Core);
        assert_eq!(part_of("crates/ctl/src/client.rs"), Part::Tools);
        assert_eq!(part_of("crates/sandbox/src/spawn/clone.rs"), Part::Core);
        assert_eq!(part_of("crates/sandbox/src/seccomp.rs"), Part::Shared);
        assert_eq!(part_of("crates/compartment/src/enter.rs"), Part::Compartment);
        assert_eq!(part_of("crates/devices/src/blk/device.rs"), Part::Compartment);
        assert_eq!(part_of("crates/tools/src/disk.rs"), Part::Tools);
        assert_eq!(part_of("crates/monolithic/src/lib.rs"), Part::MonolithicGlue);
        assert_eq!(part_of("crates/tools/src/bench/io.rs"), Part::Tools);
        assert_eq!(part_of("crates/vmm/src/confine/lists.rs"), Part::Core);
        assert_eq!(part_of("src/cli/run.rs"), Part::Core);
        assert_eq!(part_of("tests/boot.rs"), Part::Tools);
        assert_eq!(part_of("crates/devices/src/blk/tests.rs"), Part::Tools);
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
