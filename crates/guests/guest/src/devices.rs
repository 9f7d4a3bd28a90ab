//! The guest's virtio devices: where they are, and their drivers, brought
//! up on first use and kept for the workloads that follow.
//!
//! Discovery: every `virtio_mmio.device=<size>@<base>:<gsi>` on the command
//! line (Bulkhead's way, and QEMU microvm's with `acpi=off`), then every
//! transport the DSDT describes (QEMU microvm's way with ACPI) at an address
//! not already listed. Each is probed for the magic value, version 2 and a
//! device ID; transports with no device behind them are skipped.
//!
//! Interrupts (`bulkhead.irq=1`): device `i` gets vector `0x50 + i` on the
//! bootstrap processor, through the I/O APIC the MADT names for its GSI, and
//! the periodic wake-up timer is started.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::acpi::{Acpi, IoApic, MAX_IOAPICS};
use crate::bump::Bump;
use crate::cmdline::{Cmdline, VirtioMmio, MAX_VIRTIO};
use crate::virtio::blk::Blk;
use crate::virtio::console::Console;
use crate::virtio::fs::Fs;
use crate::virtio::mmio::{InitError, Transport};
use crate::virtio::net::Net;
use crate::virtio::queue::Completion;
use crate::virtio::rng::Rng;
use crate::virtio::vsock::Vsock;
use crate::virtio::{ID_BLOCK, ID_CONSOLE, ID_FS, ID_NET, ID_RNG, ID_VSOCK};
use crate::{arch, irq};

/// The first vector given to device interrupts.
const VECTOR_BASE: u8 = 0x50;

/// Where a device was described.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Cmdline,
    Acpi,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Cmdline => "cmdline",
            Source::Acpi => "acpi",
        }
    }
}

/// One described transport and what probing it found.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    pub mmio: VirtioMmio,
    pub source: Source,
    pub probe: Result<Option<Transport>, InitError>,
    /// The device ID (0 if none answered).
    pub id: u32,
}

/// A device's driver, once started. (The variants differ in size; they live
/// in the static device table and are never moved, so boxing would gain
/// nothing, and there is no allocator to box with.)
#[allow(clippy::large_enum_variant)]
pub enum Driver {
    NotStarted,
    Failed(InitError),
    Blk(Blk),
    Net(Net),
    Console(Console),
    Rng(Rng),
    Fs(Fs),
    Vsock(Vsock),
}

/// Why a workload has no device.
#[derive(Clone, Copy, Debug)]
pub enum DevError {
    /// No device of this kind with this index.
    Missing(&'static str, usize),
    /// The driver could not start the device.
    Init(InitError),
    /// No I/O APIC has the device's GSI.
    NoRoute(u32),
}

impl core::fmt::Display for DevError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DevError::Missing(kind, i) => write!(f, "no virtio-{kind} device number {i}"),
            DevError::Init(e) => write!(f, "{e}"),
            DevError::NoRoute(gsi) => write!(f, "no I/O APIC has GSI {gsi}"),
        }
    }
}

impl From<InitError> for DevError {
    fn from(e: InitError) -> Self {
        DevError::Init(e)
    }
}

/// Every device and the memory their queues come from.
pub struct Devices {
    found: [Option<Found>; MAX_VIRTIO],
    drivers: [Driver; MAX_VIRTIO],
    count: usize,
    /// Descriptions that did not parse.
    pub unparsed: usize,
    bump: Bump,
    ioapics: [IoApic; MAX_IOAPICS],
    ioapic_count: usize,
    irq: bool,
}

impl Devices {
    const EMPTY: Devices = Devices {
        found: [None; MAX_VIRTIO],
        drivers: [const { Driver::NotStarted }; MAX_VIRTIO],
        count: 0,
        unparsed: 0,
        bump: Bump::new(0, 0),
        ioapics: [IoApic { id: 0, address: 0, gsi_base: 0 }; MAX_IOAPICS],
        ioapic_count: 0,
        irq: false,
    };

    /// Finds the devices (see the module docs); call once.
    pub fn discover(
        cmdline: &Cmdline,
        acpi: Option<&Acpi>,
        bump: Bump,
        irq: bool,
    ) -> &'static mut Devices {
        let d = store();
        d.bump = bump;
        d.irq = irq;
        let (listed, n, bad) = cmdline.virtio_mmio();
        d.unparsed = bad;
        let from_acpi = acpi.map(|a| a.virtio()).unwrap_or(&[]);
        let all = listed[..n]
            .iter()
            .map(|m| (*m, Source::Cmdline))
            .chain(from_acpi.iter().map(|m| (*m, Source::Acpi)));
        for (mmio, source) in all {
            if d.count == MAX_VIRTIO || d.found().any(|f| f.mmio.base == mmio.base) {
                continue;
            }
            let probe = Transport::probe(mmio.base);
            let id = match probe {
                Ok(Some(t)) => t.device_id(),
                _ => 0,
            };
            d.found[d.count] = Some(Found { mmio, source, probe, id });
            d.count += 1;
        }
        if let Some(a) = acpi {
            d.ioapic_count = a.ioapics().len();
            d.ioapics[..d.ioapic_count].copy_from_slice(a.ioapics());
        }
        d
    }

    /// The described transports, in order.
    pub fn found(&self) -> impl Iterator<Item = &Found> + '_ {
        self.found[..self.count].iter().flatten()
    }

    /// Index of the `n`-th device with `id`.
    fn nth(&self, id: u32, n: usize) -> Option<usize> {
        (0..self.count)
            .filter(|&i| matches!(self.found[i], Some(Found { probe: Ok(Some(_)), id: found, .. }) if found == id))
            .nth(n)
    }

    /// Starts device `i`'s driver if it has not been started.
    pub fn start(&mut self, i: usize) -> Result<&mut Driver, DevError> {
        let Some(Found { probe: Ok(Some(t)), mmio, id, .. }) = self.found.get(i).copied().flatten()
        else {
            return Err(DevError::Missing("mmio", i));
        };
        if matches!(self.drivers[i], Driver::NotStarted) {
            if ![ID_BLOCK, ID_NET, ID_CONSOLE, ID_RNG, ID_FS, ID_VSOCK].contains(&id) {
                self.drivers[i] = Driver::Failed(InitError::NoDriver);
                return Err(DevError::Init(InitError::NoDriver));
            }
            let completion = self.completion(i, mmio.irq)?;
            let bump = &mut self.bump;
            self.drivers[i] = match id {
                ID_BLOCK => Blk::new(t, completion, bump).map(Driver::Blk),
                ID_NET => Net::new(t, completion, bump).map(Driver::Net),
                ID_CONSOLE => Console::new(t, completion, bump).map(Driver::Console),
                ID_FS => Fs::new(t, completion, bump).map(Driver::Fs),
                ID_VSOCK => Vsock::new(t, completion, bump).map(Driver::Vsock),
                _ => Rng::new(t, completion, bump).map(Driver::Rng),
            }
            .unwrap_or_else(Driver::Failed);
        }
        match &mut self.drivers[i] {
            Driver::Failed(e) => Err(DevError::Init(*e)),
            d => Ok(d),
        }
    }

    fn completion(&mut self, i: usize, gsi: u32) -> Result<Completion, DevError> {
        if !self.irq {
            return Ok(Completion::Poll);
        }
        let vector = VECTOR_BASE + i as u8;
        if !irq::route_gsi(&self.ioapics[..self.ioapic_count], gsi, vector, arch::apic_id()) {
            return Err(DevError::NoRoute(gsi));
        }
        irq::wake_start();
        Ok(Completion::Irq(vector))
    }

    /// The `n`-th virtio-blk device, started.
    pub fn blk(&mut self, n: usize) -> Result<(&mut Blk, &mut Bump), DevError> {
        let i = self.nth(ID_BLOCK, n).ok_or(DevError::Missing("blk", n))?;
        self.start(i)?;
        match &mut self.drivers[i] {
            Driver::Blk(b) => Ok((b, &mut self.bump)),
            _ => Err(DevError::Missing("blk", n)),
        }
    }

    /// The first virtio-net device, started.
    pub fn net(&mut self) -> Result<&mut Net, DevError> {
        let i = self.nth(ID_NET, 0).ok_or(DevError::Missing("net", 0))?;
        match self.start(i)? {
            Driver::Net(n) => Ok(n),
            _ => Err(DevError::Missing("net", 0)),
        }
    }

    /// The first virtio-console device, started.
    pub fn console(&mut self) -> Result<&mut Console, DevError> {
        let i = self.nth(ID_CONSOLE, 0).ok_or(DevError::Missing("console", 0))?;
        match self.start(i)? {
            Driver::Console(c) => Ok(c),
            _ => Err(DevError::Missing("console", 0)),
        }
    }

    /// The first virtio-fs device, started.
    pub fn fs(&mut self) -> Result<&mut Fs, DevError> {
        let i = self.nth(ID_FS, 0).ok_or(DevError::Missing("fs", 0))?;
        match self.start(i)? {
            Driver::Fs(f) => Ok(f),
            _ => Err(DevError::Missing("fs", 0)),
        }
    }

    /// The first virtio-vsock device, started.
    pub fn vsock(&mut self) -> Result<&mut Vsock, DevError> {
        let i = self.nth(ID_VSOCK, 0).ok_or(DevError::Missing("vsock", 0))?;
        match self.start(i)? {
            Driver::Vsock(v) => Ok(v),
            _ => Err(DevError::Missing("vsock", 0)),
        }
    }

    /// The first virtio-rng device, started.
    pub fn rng(&mut self) -> Result<&mut Rng, DevError> {
        let i = self.nth(ID_RNG, 0).ok_or(DevError::Missing("rng", 0))?;
        match self.start(i)? {
            Driver::Rng(r) => Ok(r),
            _ => Err(DevError::Missing("rng", 0)),
        }
    }
}

/// The one `Devices`, in static memory (the drivers' bookkeeping is tens of
/// KiB, too much for the 64 KiB ring-3 stack), handed out once.
struct Store {
    taken: AtomicBool,
    devices: UnsafeCell<Devices>,
}

// SAFETY: `devices` is reached only through `store`, which hands out its
// one mutable reference once (guarded by `taken`).
unsafe impl Sync for Store {}

static STORE: Store =
    Store { taken: AtomicBool::new(false), devices: UnsafeCell::new(Devices::EMPTY) };

fn store() -> &'static mut Devices {
    if STORE.taken.swap(true, Ordering::AcqRel) {
        crate::bh!("done status=fail text=the device table was taken twice");
        crate::power::poweroff();
    }
    // SAFETY: `taken` was false, so no other reference to the value exists,
    // and none will be made: this is the only place that creates one.
    unsafe { &mut *STORE.devices.get() }
}
