//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2), driven
//! from ring 3 with plain 32-bit loads and stores (each one an MMIO exit to
//! the VMM, except QueueNotify, which Bulkhead and QEMU back with an
//! ioeventfd).
//!
//! Device initialisation (section 3.1.1), as [`Transport::init`] and
//! [`Transport::setup_queue`] do it:
//! 1. reset: write 0 to Status and wait until it reads 0;
//! 2. set ACKNOWLEDGE, then DRIVER;
//! 3. read DeviceFeatures (two 32-bit words, selected by DeviceFeaturesSel),
//!    require VIRTIO_F_VERSION_1, write the subset the driver uses to
//!    DriverFeatures, set FEATURES_OK and read it back (the device clears
//!    it if it refuses the subset);
//! 4. per queue: select it (QueueSel), check QueueReady is 0, read
//!    QueueNumMax, write QueueNum and the three areas' addresses, set
//!    QueueReady;
//! 5. set DRIVER_OK.
//!
//! On any failure the driver sets FAILED and reports.

use crate::arch::rdtsc;
use crate::bump::Bump;
use crate::time;

use super::ring::{Layout, SplitRing, MAX_QUEUE};
use super::{status, F_VERSION_1};

const MAGIC: u32 = 0x7472_6976; // "virt"
const R_MAGIC: u64 = 0x000;
const R_VERSION: u64 = 0x004;
const R_DEVICE_ID: u64 = 0x008;
const R_VENDOR_ID: u64 = 0x00c;
const R_DEVICE_FEATURES: u64 = 0x010;
const R_DEVICE_FEATURES_SEL: u64 = 0x014;
const R_DRIVER_FEATURES: u64 = 0x020;
const R_DRIVER_FEATURES_SEL: u64 = 0x024;
const R_QUEUE_SEL: u64 = 0x030;
const R_QUEUE_NUM_MAX: u64 = 0x034;
const R_QUEUE_NUM: u64 = 0x038;
const R_QUEUE_READY: u64 = 0x044;
const R_QUEUE_NOTIFY: u64 = 0x050;
const R_INTERRUPT_STATUS: u64 = 0x060;
const R_INTERRUPT_ACK: u64 = 0x064;
const R_STATUS: u64 = 0x070;
const R_QUEUE_DESC: u64 = 0x080;
const R_QUEUE_DRIVER: u64 = 0x090;
const R_QUEUE_DEVICE: u64 = 0x0a0;
const R_CONFIG_GENERATION: u64 = 0x0fc;
const R_CONFIG: u64 = 0x100;

/// Why a device could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// No virtio-mmio magic value at the address.
    NoDevice,
    /// A transport version other than 2 (1 is the legacy interface).
    Version(u32),
    /// The reset did not complete.
    ResetTimeout,
    /// The device does not offer VIRTIO_F_VERSION_1.
    NoVersion1,
    /// The device cleared FEATURES_OK: it refused the features.
    FeaturesRefused,
    /// A queue the driver needs is absent or already live.
    Queue(u16),
    /// Not enough memory for the queues and buffers.
    NoMemory,
    /// The device offers something the driver cannot use (explained).
    Unsupported(&'static str),
    /// The guest has no driver for this device type.
    NoDriver,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NoDevice => write!(f, "no virtio-mmio device answers there"),
            InitError::Version(v) => {
                write!(f, "transport version {v}, only version 2 is supported")
            }
            InitError::ResetTimeout => write!(f, "the device did not finish its reset"),
            InitError::NoVersion1 => write!(f, "the device does not offer VIRTIO_F_VERSION_1"),
            InitError::FeaturesRefused => write!(f, "the device refused the negotiated features"),
            InitError::Queue(q) => write!(f, "queue {q} is missing or already in use"),
            InitError::NoMemory => write!(f, "out of guest memory for queues and buffers"),
            InitError::Unsupported(why) => write!(f, "{why}"),
            InitError::NoDriver => write!(f, "the guest has no driver for this device type"),
        }
    }
}

/// What the `hammer` workload does to a device, over and over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hammer {
    /// Read its configuration space.
    Read,
    /// Reset it and bring it back to DRIVER_OK.
    Reinit,
}

/// One virtio-mmio transport's register window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    base: u64,
}

impl Transport {
    /// The transport at `base` if it answers with the magic value and
    /// version 2; `Ok(None)` if no device sits behind it (device ID 0).
    pub fn probe(base: u64) -> Result<Option<Transport>, InitError> {
        if base & 3 != 0 || base >= (1 << 32) - 0x200 {
            return Err(InitError::NoDevice);
        }
        let t = Transport { base };
        if t.read(R_MAGIC) != MAGIC {
            return Err(InitError::NoDevice);
        }
        match t.read(R_VERSION) {
            2 => Ok((t.device_id() != 0).then_some(t)),
            v => Err(InitError::Version(v)),
        }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    fn read(&self, reg: u64) -> u32 {
        // SAFETY: `base` was checked to lie below 4 GiB, which is
        // identity-mapped for ring 3; a read of a device register has no
        // effect on memory the program owns (it exits to the VMM).
        unsafe { core::ptr::read_volatile((self.base + reg) as *const u32) }
    }

    fn write(&self, reg: u64, value: u32) {
        // SAFETY: as in `read`; the write goes to the device, not to memory.
        unsafe { core::ptr::write_volatile((self.base + reg) as *mut u32, value) }
    }

    pub fn device_id(&self) -> u32 {
        self.read(R_DEVICE_ID)
    }

    pub fn vendor_id(&self) -> u32 {
        self.read(R_VENDOR_ID)
    }

    pub fn status(&self) -> u32 {
        self.read(R_STATUS)
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        self.write(R_DEVICE_FEATURES_SEL, 0);
        let low = self.read(R_DEVICE_FEATURES);
        self.write(R_DEVICE_FEATURES_SEL, 1);
        let high = self.read(R_DEVICE_FEATURES);
        (u64::from(high) << 32) | u64::from(low)
    }

    /// Resets the device and waits (up to 100 ms) for the reset to finish.
    pub fn reset(&self) -> Result<(), InitError> {
        self.write(R_STATUS, 0);
        let deadline = time::deadline_ms(100);
        while self.status() != 0 {
            if time::passed(deadline) {
                return Err(InitError::ResetTimeout);
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Steps 1-3 of the module docs: returns the features agreed, the
    /// device's offer intersected with `wanted` plus VIRTIO_F_VERSION_1.
    pub fn init(&self, wanted: u64) -> Result<u64, InitError> {
        self.reset()?;
        self.write(R_STATUS, status::ACKNOWLEDGE);
        self.write(R_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.fail();
            return Err(InitError::NoVersion1);
        }
        let agreed = offered & (wanted | F_VERSION_1);
        self.write(R_DRIVER_FEATURES_SEL, 0);
        self.write(R_DRIVER_FEATURES, agreed as u32);
        self.write(R_DRIVER_FEATURES_SEL, 1);
        self.write(R_DRIVER_FEATURES, (agreed >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write(R_STATUS, s);
        if self.status() & status::FEATURES_OK == 0 {
            self.fail();
            return Err(InitError::FeaturesRefused);
        }
        Ok(agreed)
    }

    /// One round of `how`, for the `hammer` workload: read the whole configuration space
    /// word by word, or take the device through a reset and back to DRIVER_OK with no queue
    /// (the VMM then hands the device to its backend again: several messages each round).
    pub fn hammer(&self, how: Hammer) {
        match how {
            Hammer::Read => {
                for word in 0..16 {
                    core::hint::black_box(self.read(R_CONFIG + 4 * word));
                }
            }
            Hammer::Reinit => {
                if self.init(0).is_ok() {
                    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
                    self.write(R_STATUS, s | status::DRIVER_OK);
                }
            }
        }
    }

    /// The largest size queue `index` accepts (0: no such queue).
    pub fn queue_max(&self, index: u16) -> u32 {
        self.write(R_QUEUE_SEL, index.into());
        self.read(R_QUEUE_NUM_MAX)
    }

    /// Step 4 for queue `index`: at most `want` entries (the largest power
    /// of two the device allows), memory from `bump`.
    pub fn setup_queue(
        &self,
        index: u16,
        want: u16,
        bump: &mut Bump,
    ) -> Result<SplitRing, InitError> {
        let max = self.queue_max(index);
        if max == 0 || self.read(R_QUEUE_READY) != 0 {
            return Err(InitError::Queue(index));
        }
        let limit = max.min(u32::from(want)).min(MAX_QUEUE as u32);
        let size = 1u16 << (31 - limit.leading_zeros()); // largest power of two <= limit
        let base = bump.alloc(Layout::bytes(size), 4096).ok_or(InitError::NoMemory)?;
        let layout = Layout::at(base, size);
        // SAFETY: the bump allocator hands out each range once, in RAM below
        // 4 GiB (identity-mapped, writable from ring 3), page-aligned and
        // sized by `Layout::bytes`; only this ring and the device use it.
        let ring = unsafe { SplitRing::new(layout, size) }.ok_or(InitError::Queue(index))?;
        self.write(R_QUEUE_NUM, size.into());
        for (reg, addr) in [
            (R_QUEUE_DESC, layout.desc),
            (R_QUEUE_DRIVER, layout.avail),
            (R_QUEUE_DEVICE, layout.used),
        ] {
            self.write(reg, addr as u32);
            self.write(reg + 4, (addr >> 32) as u32);
        }
        self.write(R_QUEUE_READY, 1);
        Ok(ring)
    }

    /// Step 5: the driver is ready.
    pub fn driver_ok(&self) {
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        self.write(R_STATUS, s);
    }

    /// Tells the device the driver gave up on it.
    pub fn fail(&self) {
        self.write(R_STATUS, self.status() | status::FAILED);
    }

    /// Whether the device asks to be reset (it hit an error it cannot
    /// recover from by itself).
    pub fn needs_reset(&self) -> bool {
        self.status() & status::DEVICE_NEEDS_RESET != 0
    }

    /// Tells the device that queue `index` has new buffers.
    pub fn notify(&self, index: u16) {
        self.write(R_QUEUE_NOTIFY, index.into());
    }

    /// Acknowledges both interrupt causes (used buffer, configuration
    /// change) without reading InterruptStatus, which vhost-user devices
    /// may not keep: QEMU's devices hold their line up until acknowledged
    /// (see `queue`'s docs for when the driver does this).
    pub fn ack_interrupts(&self) {
        self.write(R_INTERRUPT_ACK, 3);
    }

    /// InterruptStatus: bit 0 a used buffer, bit 1 a configuration change.
    pub fn interrupt_status(&self) -> u32 {
        self.read(R_INTERRUPT_STATUS)
    }

    /// Acknowledges the interrupt causes in `bits`.
    pub fn ack(&self, bits: u32) {
        self.write(R_INTERRUPT_ACK, bits);
    }

    /// ConfigGeneration: it moves whenever the device changes its configuration space.
    pub fn config_generation(&self) -> u32 {
        self.read(R_CONFIG_GENERATION)
    }

    /// A 32-bit field of the device's configuration space.
    pub fn config_u32(&self, offset: u64) -> u32 {
        self.read(R_CONFIG + offset)
    }

    /// A 64-bit configuration field, read as two halves under one
    /// configuration generation (retried if the device changed it between).
    pub fn config_u64(&self, offset: u64) -> u64 {
        let start = rdtsc();
        loop {
            let generation = self.read(R_CONFIG_GENERATION);
            let low = self.config_u32(offset);
            let high = self.config_u32(offset + 4);
            if self.read(R_CONFIG_GENERATION) == generation || rdtsc() - start > 1 << 32 {
                return (u64::from(high) << 32) | u64::from(low);
            }
        }
    }
}
