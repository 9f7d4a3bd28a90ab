//! The Linux guest for Bulkhead's tests, and QEMU as the peer to run it against.
//!
//! **Building** ([`build`], `bulkhead image build`): Debian's `linux-image-cloud-amd64` kernel
//! and an initramfs holding `busybox-static`, the virtio modules and a test init, made offline
//! from Debian packages pinned by checksum in `debian-packages.lock`. The result is cached per
//! user and reused while the inputs are unchanged. When Debian's archive no longer has a pinned
//! version, the guest is built from the current version of the same package, checked against
//! apt's signed index, and [`LinuxGuest::notices`] says so. This guest is for hosts with
//! hardware virtualization, or for QEMU's TCG; a Linux kernel does not run under KVM-PVM.
//!
//! **The init** (`src/init.sh`) reads `bulkhead.test=…` from the kernel command line, runs the
//! named checks (`cpus`, `mem`, `rng`, `blk`, `net`, `stress-blk`), prints `BH …` report lines
//! on the serial console ([`report`]) and powers off.
//!
//! **Running** ([`qemu`]): a test helper that boots the guest under QEMU 7.2 (installed by
//! `scripts/install-qemu.sh`) with virtio or vhost-user devices, and collects the report;
//! [`storage_daemon`] runs `qemu-storage-daemon` as an independent vhost-user-blk backend.
//!
//! ```no_run
//! use bulkhead_linux_guest::{build, qemu::{Device, Qemu, VmSpec}, BuildOptions};
//! let guest = build(&BuildOptions::default())?;
//! let spec = VmSpec::new(&guest, "rng").device(Device::VirtioRng);
//! let run = Qemu::find()?.run(&spec)?;
//! run.assert_ok(&["rng"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::PathBuf;

pub mod apt;
pub mod cli;
pub mod cpio;
pub mod dirs;
mod image;
pub mod initramfs;
pub mod kernel;
pub mod lock;
pub mod modules;
pub mod qemu;
pub mod report;
mod resolve;
pub mod storage_daemon;

pub use image::{
    build, cached, cached_with, update_pins, BuildError, BuildOptions, PinUpdate, CMDLINE_HINT,
};
pub use resolve::Notice;

/// A built guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxGuest {
    /// The kernel: Debian's bzImage (it also carries a PVH entry note in its ELF).
    pub kernel: PathBuf,
    /// The initramfs: an uncompressed newc cpio.
    pub initrd: PathBuf,
    /// The kernel command line the guest expects; add `bulkhead.test=…` and friends.
    pub cmdline_hint: String,
    /// What the user should be told about this build: pins that Debian's archive no longer
    /// has, and what the guest is built from instead. Empty when it is built from the lock.
    pub notices: Vec<Notice>,
}
