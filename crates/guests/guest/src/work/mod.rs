//! The device workloads `bulkhead.run=` names (comma-separated, run in
//! order): `blk-verify`, `blk-read-verify`, `blk-ro`, `blk-swap`, `blk-bench`, `blk-rate`, `rng`,
//! `net-ping`, `net-bench`, `console`, `fs`, `vsock`, `probe`, `storm`, `hammer`, `hammer-done`, `mem-touch`.
//! Their options are in [`crate::options`] (`fs`'s and `vsock`'s in their modules).
//!
//! Each prints one `BH check name=<workload> status=ok|fail ...` line
//! (failures end with `text=<why>`), and the benchmarks a `BH result
//! workload=<workload> ...` line with their figures. Latencies are measured
//! on the TSC from submission to completion and kept in a fixed histogram.

mod bench;
mod blk;
mod console;
mod fs;
mod interfere;
mod net;
mod rng;
mod vsock;

use core::fmt;

use crate::acpi::Acpi;
use crate::bootinfo::BootInfo;
use crate::bump::{self, Bump};
use crate::cmdline::Cmdline;
use crate::devices::{DevError, Devices};
use crate::options::{Common, OptError};
use crate::virtio::mmio::InitError;
use crate::virtio::queue::IoError;
use crate::{arch, bh};

/// Counts checks and failures for the `done` line.
#[derive(Default)]
pub struct Checks {
    pub run: u32,
    pub failed: u32,
}

impl Checks {
    pub fn record(&mut self, ok: bool) -> &'static str {
        self.run += 1;
        if ok {
            "ok"
        } else {
            self.failed += 1;
            "fail"
        }
    }
}

/// What the workloads share: the command line, the checks, the devices
/// (found on first use, so that the boot benchmark does not pay for it).
pub struct Ctx<'a> {
    pub cmdline: &'a Cmdline<'a>,
    pub checks: &'a mut Checks,
    boot: &'a BootInfo,
    acpi: Option<&'a Acpi>,
    devices: Option<&'static mut Devices>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        cmdline: &'a Cmdline<'a>,
        checks: &'a mut Checks,
        boot: &'a BootInfo,
        acpi: Option<&'a Acpi>,
    ) -> Self {
        Ctx { cmdline, checks, boot, acpi, devices: None }
    }

    /// The devices, found on the first call.
    pub fn devices(&mut self) -> &mut Devices {
        let (cmdline, boot, acpi) = (self.cmdline, self.boot, self.acpi);
        self.devices.get_or_insert_with(|| {
            let irq = Common::parse(cmdline).is_ok_and(|c| c.irq);
            let avoid = bump::boot_data(boot);
            let (start, end) =
                bump::arena(boot.memmap(), arch::image_end(), &avoid).unwrap_or((0, 0));
            bh!("memory arena={:#x}-{:#x} bytes={}", start, end, end - start);
            Devices::discover(cmdline, acpi, Bump::new(start, end), irq)
        })
    }

    /// The free RAM above the guest image and boot data: (start, end).
    pub fn arena(&self) -> (u64, u64) {
        let avoid = bump::boot_data(self.boot);
        bump::arena(self.boot.memmap(), arch::image_end(), &avoid).unwrap_or((0, 0))
    }

    /// Starts the application processors (they run `smp::ap_main`);
    /// returns how many came online.
    pub fn start_aps(&self) -> Result<usize, &'static str> {
        let acpi = self.acpi.ok_or("no ACPI tables")?;
        Ok(crate::smp::start_aps(self.boot, acpi.apic_ids())?.online)
    }

    pub fn common(&self) -> Result<Common, Fail> {
        Ok(Common::parse(self.cmdline)?)
    }
}

/// Why a workload failed.
#[derive(Clone, Copy, Debug)]
pub enum Fail {
    Opt(OptError),
    Dev(DevError),
    Io(IoError),
    Init(InitError),
    /// A request finished with an error status.
    Status {
        op: &'static str,
        offset: u64,
        status: u8,
    },
    /// Data read back differs from the pattern.
    Mismatch {
        offset: u64,
        want: u64,
        got: u64,
    },
    Fs(crate::virtio::fs::FsError),
    Text(&'static str),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Opt(e) => write!(f, "{e}"),
            Fail::Dev(e) => write!(f, "{e}"),
            Fail::Io(e) => write!(f, "{e}"),
            Fail::Init(e) => write!(f, "{e}"),
            Fail::Status { op, offset, status } => write!(
                f,
                "the {op} at byte {offset} failed with status {status} ({})",
                crate::virtio::blk_spec::status_name(*status)
            ),
            Fail::Mismatch { offset, want, got } => {
                write!(f, "the word at byte {offset} is {got:#018x}, the pattern has {want:#018x}")
            }
            Fail::Fs(e) => write!(f, "{e}"),
            Fail::Text(t) => write!(f, "{t}"),
        }
    }
}

impl From<OptError> for Fail {
    fn from(e: OptError) -> Self {
        Fail::Opt(e)
    }
}
impl From<DevError> for Fail {
    fn from(e: DevError) -> Self {
        Fail::Dev(e)
    }
}
impl From<IoError> for Fail {
    fn from(e: IoError) -> Self {
        Fail::Io(e)
    }
}
impl From<InitError> for Fail {
    fn from(e: InitError) -> Self {
        Fail::Init(e)
    }
}

/// Runs workload `name`; false if there is no such workload.
pub fn run(name: &str, ctx: &mut Ctx) -> bool {
    let result = match name {
        "blk-verify" => blk::verify(ctx, true),
        "blk-stress" => blk::stress(ctx),
        "blk-read-verify" => blk::verify(ctx, false),
        "blk-ro" => blk::read_only(ctx),
        "blk-swap" => blk::swap(ctx),
        "blk-bench" => bench::run(ctx),
        "blk-rate" => bench::rate(ctx),
        "rng" => rng::run(ctx),
        "console" => console::run(ctx),
        "fs" => fs::run(ctx),
        "vsock" => vsock::run(ctx),
        "net-ping" => net::ping(ctx),
        "net-bench" => net::bench(ctx),
        "probe" => interfere::probe(ctx),
        "storm" => interfere::storm(ctx),
        "hammer" => interfere::hammer(ctx),
        "hammer-done" => interfere::hammer_done(ctx),
        "mem-touch" => interfere::mem_touch(ctx),
        _ => return false,
    };
    if let Err(e) = result {
        bh!("check name={} status={} text={}", name, ctx.checks.record(false), e);
    }
    true
}
