//! The outside peer: QEMU (`qemu-system-x86_64 -M microvm -accel kvm`)
//! booting the same built-in guest, as a command line to run side by side.

use std::path::{Path, PathBuf};
use std::process::Command;

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
