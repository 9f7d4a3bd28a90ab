//! The initramfs: busybox, the virtio modules, and the test init.
//!
//! Layout (an uncompressed newc cpio; the kernel unpacks it as its root file system):
//!
//! ```text
//! /init                          the test init (init.sh), run as PID 1
//! /bin/busybox, /bin/sh          busybox-static; the init links the other applets itself
//! /dev/console                   so that PID 1 has a console before devtmpfs is mounted
//! /lib/modules/<release>/kernel/…   the modules, at their paths in the kernel package
//! /etc/bulkhead/modules          those paths in load order, dependencies first
//! /proc /sys /tmp                mount points
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::cpio::{CpioError, CpioWriter};
use crate::modules::{ModuleTree, ModulesError, OPTIONAL, REQUIRED};

/// The test init, embedded in the crate.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Why the initramfs could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A file to put in the archive could not be read, or the archive not written.
    #[error("could not use {path} for the initramfs")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The module set could not be worked out.
    #[error("could not pick the guest's kernel modules")]
    Modules(#[from] ModulesError),
    /// The archive could not be written.
    #[error("could not write the initramfs archive")]
    Cpio(#[from] CpioError),
}

/// The inputs: busybox and the kernel's module tree, both unpacked from their packages.
pub struct Inputs<'a> {
    /// The `busybox` binary from `busybox-static`.
    pub busybox: &'a Path,
    /// `lib/modules/<release>` of the unpacked kernel package.
    pub modules_root: &'a Path,
    /// The kernel release (`6.1.0-56-cloud-amd64`).
    pub release: &'a str,
}

/// Writes the initramfs to `dest`; returns the modules it holds, in load order.
pub fn write(inputs: &Inputs<'_>, dest: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
    let tree = ModuleTree::scan(inputs.modules_root)?;
    let order = tree.load_order(REQUIRED, OPTIONAL)?;
    let file = fs::File::create(dest).map_err(io_at(dest))?;
    let mut cpio = CpioWriter::new(std::io::BufWriter::new(file));
    let dirs = ["bin", "dev", "etc", "etc/bulkhead", "lib", "lib/modules", "proc", "sys", "tmp"];
    for dir in dirs {
        cpio.dir(dir, 0o755)?;
    }
    cpio.char_dev("dev/console", 0o600, 5, 1)?;
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    cpio.file("bin/busybox", 0o755, &read(inputs.busybox)?)?;
    cpio.symlink("bin/sh", "busybox")?;
    let base = format!("lib/modules/{}", inputs.release);
    let mut made = vec!["lib".to_string(), "lib/modules".to_string()];
    let mut list = String::new();
    for rel in &order {
        let rel_str = rel.to_string_lossy();
        add_parents(&mut cpio, &mut made, &format!("{base}/{rel_str}"))?;
        let data = read(&inputs.modules_root.join(rel))?;
        cpio.file(&format!("{base}/{rel_str}"), 0o644, &data)?;
        list.push_str(&rel_str);
        list.push('\n');
    }
    cpio.file("etc/bulkhead/modules", 0o644, list.as_bytes())?;
    cpio.finish()?;
    Ok(order)
}

/// Adds each missing parent folder of `path`, once.
fn add_parents<W: std::io::Write>(
    cpio: &mut CpioWriter<W>,
    made: &mut Vec<String>,
    path: &str,
) -> Result<(), InitramfsError> {
    let mut prefix = String::new();
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        if !made.contains(&prefix) {
            cpio.dir(&prefix, 0o755)?;
            made.push(prefix.clone());
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    fs::read(path).map_err(io_at(path))
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::tests::read_all;

    #[test]
    fn init_script_documents_its_protocol() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh\n"));
        for needle in ["bulkhead.test=", "BH ready", "BH check", "BH done", "poweroff -f"] {
            assert!(INIT_SCRIPT.contains(needle), "init.sh lacks {needle}");
        }
    }

    #[test]
    fn parents_are_added_once_and_in_order() {
        let mut cpio = CpioWriter::new(Vec::new());
        let mut made = vec!["lib".to_string(), "lib/modules".to_string()];
        add_parents(&mut cpio, &mut made, "lib/modules/6.1/kernel/a/x.ko").unwrap();
        add_parents(&mut cpio, &mut made, "lib/modules/6.1/kernel/b/y.ko").unwrap();
        let names: Vec<String> =
            read_all(&cpio.finish().unwrap()).into_iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/a",
                "lib/modules/6.1/kernel/b"
            ]
        );
    }
}
