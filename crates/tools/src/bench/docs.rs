//! `bulkhead bench update-docs`: re-measures the tables of `docs/BENCHMARKS.md` in one sitting.
//!
//! Each generated part of the document sits between two markers that name the command that
//! makes it:
//!
//! ```text
//! <!-- bench: boot --runs 20 -->
//! …what `bulkhead bench boot --runs 20` printed: its host line and tables…
//! <!-- end bench -->
//! ```
//!
//! The command runs each marked benchmark in turn, in the order of the document, and puts
//! what it printed between its markers; the prose around them is the authors'. The file is
//! written after each benchmark, so a sitting cut short keeps what it measured.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

const START: &str = "<!-- bench: ";
const START_END: &str = " -->";
const END: &str = "<!-- end bench -->";

/// One marked part: the benchmark's arguments, and where its output goes in the text (the
/// lines between the markers).
#[derive(Debug, PartialEq, Eq)]
struct Block {
    args: Vec<String>,
    /// Byte range of the generated text: from the start marker's line end to the end marker.
    body: std::ops::Range<usize>,
}

/// The marked parts of `text`, in order.
fn blocks(text: &str) -> anyhow::Result<Vec<Block>> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = text[at..].find(START) {
        let start = at + offset;
        // A marker starts its line; prose may quote one.
        if start > 0 && !text[..start].ends_with('\n') {
            at = start + START.len();
            continue;
        }
        let line_end = text[start..].find('\n').map_or(text.len(), |n| start + n);
        let line = &text[start..line_end];
        let Some(command) = line[START.len()..].strip_suffix(START_END) else {
            bail!("a bench marker that does not end its line with `-->`: {line}");
        };
        let args: Vec<String> = command.split_whitespace().map(String::from).collect();
        if args.is_empty() || args[0] == "update-docs" {
            bail!("a bench marker names no benchmark to run: {line}");
        }
        let body_start = (line_end + 1).min(text.len());
        let Some(end) = text[body_start..].find(END).map(|n| body_start + n) else {
            bail!("the bench marker `{command}` has no `{END}` after it");
        };
        if text[body_start..end].contains(&format!("\n{START}"))
            || text[body_start..end].starts_with(START)
        {
            bail!("the bench marker `{command}` has another marker before its `{END}`");
        }
        found.push(Block { args, body: body_start..end });
        at = end + END.len();
    }
    Ok(found)
}

/// `text` with the body of its `index`-th block replaced by `output`.
fn replaced(text: &str, index: usize, output: &str) -> anyhow::Result<String> {
    let block = blocks(text)?.into_iter().nth(index).context("the block went away")?;
    let mut body = output.trim_end().to_string();
    body.push('\n');
    Ok(format!("{}{body}{}", &text[..block.body.start], &text[block.body.end..]))
}

pub struct Options {
    pub file: PathBuf,
    /// Only the blocks whose command contains this.
    pub only: Option<String>,
    /// List the blocks and what they would run, and stop.
    pub list: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<i32> {
    let read = |file: &Path| {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    };
    let text = read(&opts.file)?;
    let chosen: Vec<(usize, Vec<String>)> = blocks(&text)?
        .into_iter()
        .map(|b| b.args)
        .enumerate()
        .filter(|(_, args)| opts.only.as_ref().is_none_or(|o| args.join(" ").contains(o.as_str())))
        .collect();
    if chosen.is_empty() {
        bail!("no bench marker in {} matches", opts.file.display());
    }
    let exe = std::env::current_exe().context("cannot find the bulkhead binary")?;
    for (n, (index, args)) in chosen.iter().enumerate() {
        let label = format!("[{}/{}] bulkhead bench {}", n + 1, chosen.len(), args.join(" "));
        if opts.list {
            println!("{label}");
            continue;
        }
        eprintln!("bench update-docs: {label}");
        let start = Instant::now();
        let out = Command::new(&exe)
            .arg("bench")
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {label}"))?;
        if !out.status.success() {
            bail!(
                "{label} failed ({}); {} keeps what was measured before it",
                out.status,
                opts.file.display()
            );
        }
        let output = String::from_utf8(out.stdout).context("the benchmark printed non-UTF-8")?;
        // Read again: the file may have been edited by hand meanwhile.
        let text = replaced(&read(&opts.file)?, *index, &output)?;
        std::fs::write(&opts.file, text)
            .with_context(|| format!("cannot write {}", opts.file.display()))?;
        eprintln!("bench update-docs: {label}: done in {:.0} s", start.elapsed().as_secs_f64());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Title\n\nProse quoting `<!-- bench: ARGS -->`.\n\n<!-- bench: boot --runs 20 -->\nold table\n<!-- end bench -->\n\nMore prose.\n<!-- bench: recovery --kills 100 --standby -->\n<!-- end bench -->\nEnd.\n";

    #[test]
    fn the_marked_parts_and_their_commands_are_found() {
        let found = blocks(DOC).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].args, ["boot", "--runs", "20"]);
        assert_eq!(&DOC[found[0].body.clone()], "old table\n");
        assert_eq!(found[1].args, ["recovery", "--kills", "100", "--standby"]);
        assert_eq!(&DOC[found[1].body.clone()], "");
    }

    #[test]
    fn only_the_body_is_replaced_and_the_prose_kept() {
        let once = replaced(DOC, 0, "Host: x\n\n| a |\n\n").unwrap();
        assert!(
            once.contains("<!-- bench: boot --runs 20 -->\nHost: x\n\n| a |\n<!-- end bench -->")
        );
        let twice = replaced(&once, 1, "new").unwrap();
        assert!(twice.contains("--standby -->\nnew\n<!-- end bench -->\nEnd.\n"));
        assert!(twice.starts_with("# Title\n\nProse quoting `<!-- bench: ARGS -->`.\n\n"));
        assert!(twice.contains("\n\nMore prose.\n"));
        // Replacing again gives the same document.
        assert_eq!(replaced(&twice, 1, "new").unwrap(), twice);
    }

    #[test]
    fn a_marker_without_its_end_or_its_command_is_refused() {
        for bad in [
            "<!-- bench: boot -->\nno end\n",
            "<!-- bench:  -->\n<!-- end bench -->\n",
            "<!-- bench: boot\n<!-- end bench -->\n",
            "<!-- bench: boot -->\n<!-- bench: net -->\n<!-- end bench -->\n",
            "<!-- bench: update-docs -->\n<!-- end bench -->\n",
        ] {
            assert!(blocks(bad).is_err(), "{bad:?} was taken");
        }
    }
}
