//! Records the commit the tools were built from, for the host line of `bulkhead bench`
//! (`BULKHEAD_COMMIT`: `git describe --always --dirty`, or `unknown` outside a git checkout).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    let commit = git(&["describe", "--always", "--dirty", "--abbrev=12"]);
    println!("cargo:rustc-env=BULKHEAD_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
    // Built again when HEAD moves (a commit, a checkout) or the index changes (a file staged,
    // which may make the tree dirty or clean).
    for (what, file) in [("--git-dir", "HEAD"), ("--git-dir", "index"), ("--git-common-dir", "")] {
        let Some(dir) = git(&["rev-parse", what]) else { continue };
        let path = PathBuf::from(dir).join(file);
        if file.is_empty() {
            if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
                println!("cargo:rerun-if-changed={}", path.join(head).display());
            }
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
