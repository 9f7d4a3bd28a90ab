//! The outside peers, booting the same built-in guest, as command lines to run side by side:
//! QEMU (`qemu-system-x86_64 -M microvm -accel kvm`), and the microVM monitors a user names
//! with `bench boot --peer PATH` — Firecracker and Cloud Hypervisor.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Where QEMU is looked for, in order: `$BULKHEAD_QEMU`, the copy
/// `scripts/install-qemu.sh` unpacks into the cache, then `$PATH`.
pub fn find_qemu() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BULKHEAD_QEMU") {
        return Some(PathBuf::from(path));
    }
    if let Some(cached) = cache_dir().map(|c| c.join("qemu-7.2/bin/qemu-system-x86_64")) {
        if cached.exists() {
            return Some(cached);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|p| p.join("qemu-system-x86_64")).find(|p| p.exists())
    })
}

/// Bulkhead's cache folder, where the install scripts put QEMU and the outside backends:
/// `$BULKHEAD_CACHE_DIR`, `$XDG_CACHE_HOME/bulkhead`, or `~/.cache/bulkhead`.
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("BULKHEAD_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("bulkhead")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bulkhead")))
}

/// QEMU's microvm booting `guest` (a PVH ELF) with memory in a memfd, as
/// Bulkhead's is, its serial console on stdout, and exit on power-off.
pub fn microvm(qemu: &Path, guest: &Path, cpus: u8, memory_mib: u64, cmdline: &str) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(["-M", "microvm,memory-backend=mem", "-accel", "kvm"])
        .args(["-cpu", "host,-arch-capabilities,+invtsc"])
        .args(["-smp", &cpus.to_string(), "-m", &format!("{memory_mib}M")])
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={memory_mib}M"))
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio", "-device", "isa-debug-exit"])
        .arg("-kernel")
        .arg(guest)
        .args(["-append", cmdline]);
    cmd
}

/// The microVM monitors `bench boot --peer` knows how to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    Firecracker,
    CloudHypervisor,
}

/// A peer VMM binary, and what it said of itself.
#[derive(Clone, Debug)]
pub struct Peer {
    pub kind: PeerKind,
    pub path: PathBuf,
    /// Its name and version, as `--version` printed them (`Firecracker v1.16.1`).
    pub version: String,
}

impl Peer {
    /// Runs `path --version` and tells which VMM it is.
    pub fn identify(path: &Path) -> anyhow::Result<Peer> {
        let out = Command::new(path)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {} --version", path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().next().unwrap_or("").trim().to_string();
        let Some(kind) = Self::kind_of(&first) else {
            bail!(
                "{} is neither Firecracker nor Cloud Hypervisor (its --version said {first:?})",
                path.display()
            );
        };
        let version = match kind {
            PeerKind::Firecracker => first,
            PeerKind::CloudHypervisor => first.replacen("cloud-hypervisor", "Cloud Hypervisor", 1),
        };
        Ok(Peer { kind, path: path.to_path_buf(), version })
    }

    /// Which VMM printed `version` as the first line of its `--version`.
    fn kind_of(version: &str) -> Option<PeerKind> {
        if version.starts_with("Firecracker v") {
            Some(PeerKind::Firecracker)
        } else if version.starts_with("cloud-hypervisor v") {
            Some(PeerKind::CloudHypervisor)
        } else {
            None
        }
    }

    /// The peer booting `guest` (a PVH ELF) on one vCPU with `memory_mib` of RAM and the guest
    /// command line `cmdline`, its serial port on stdout, ending when the guest powers off.
    /// Firecracker reads its configuration from a file, written into `dir`.
    pub fn command(
        &self,
        guest: &Path,
        memory_mib: u64,
        cmdline: &str,
        dir: &Path,
    ) -> anyhow::Result<Command> {
        let mut cmd = Command::new(&self.path);
        match self.kind {
            PeerKind::Firecracker => {
                let config = serde_json::json!({
                    "boot-source": { "kernel_image_path": guest, "boot_args": cmdline },
                    "drives": [],
                    "machine-config": { "vcpu_count": 1, "mem_size_mib": memory_mib },
                });
                let file = dir.join(format!("firecracker-{:016x}.json", hash(cmdline)));
                // Written once per command line, at the warm-up boot, before any timed one.
                if !file.exists() {
                    std::fs::write(&file, config.to_string())
                        .with_context(|| format!("cannot write {}", file.display()))?;
                }
                // Its log goes to stdout by default, where it would cut the guest's lines.
                let log = dir.join("firecracker.log");
                if !log.exists() {
                    std::fs::write(&log, "")
                        .with_context(|| format!("cannot write {}", log.display()))?;
                }
                cmd.args(["--no-api", "--config-file"]).arg(file).arg("--log-path").arg(log);
            }
            PeerKind::CloudHypervisor => {
                cmd.arg("--kernel")
                    .arg(guest)
                    .args(["--cmdline", cmdline, "--cpus", "boot=1"])
                    .args(["--memory", &format!("size={memory_mib}M")])
                    .args(["--serial", "tty", "--console", "off"]);
            }
        }
        Ok(cmd)
    }
}

fn hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_and_cloud_hypervisor_are_told_apart_by_their_version() {
        assert_eq!(Peer::kind_of("Firecracker v1.16.1"), Some(PeerKind::Firecracker));
        assert_eq!(Peer::kind_of("cloud-hypervisor v53.0"), Some(PeerKind::CloudHypervisor));
        assert_eq!(Peer::kind_of("QEMU emulator version 7.2.19"), None);
    }
}
