//! What the user asks of a block device, and the virtio-blk configuration space it offers.

use std::path::PathBuf;
use std::str::FromStr;

use bulkhead_disk::{Format, Locking};

use crate::limit::{DeviceLimits, Keys};
use crate::DeviceError;

/// Sector size of the virtio-blk protocol.
pub const SECTOR: u64 = 512;
/// Largest read or write one request may carry; larger ones fail with `IOERR`. Advertised as
/// `seg_max * size_max`.
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;
/// Most data segments per request (`seg_max`).
pub const SEG_MAX: u32 = 128;
/// Largest data segment (`size_max`).
pub const SIZE_MAX: u32 = (MAX_REQUEST_BYTES / SEG_MAX as u64) as u32;
/// Most ranges in one discard or write-zeroes request.
pub const MAX_RANGES: u32 = 16;
/// Largest range of one discard or write-zeroes segment, in sectors (1 GiB).
pub const MAX_RANGE_SECTORS: u32 = 1 << 21;
/// Most queues a block device may have.
pub const MAX_QUEUES: u16 = 16;

/// Feature bits (virtio 1.2, 5.2.3).
pub mod features {
    /// `size_max` is valid.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The disk is read-only.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// FLUSH requests.
    pub const FLUSH: u64 = 1 << 9;
    /// `num_queues` is valid.
    pub const MQ: u64 = 1 << 12;
    /// DISCARD requests.
    pub const DISCARD: u64 = 1 << 13;
    /// WRITE_ZEROES requests.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// A block device: `path=disk.qcow2,readonly,format=qcow2,queues=2,serial=ID,locking=off`, and
/// rate limits `bw=10M@1000,ops=500@100+1000` (a bare first word is the path:
/// `disk.qcow2,readonly`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    /// The image.
    pub path: PathBuf,
    /// Serve it read-only (`VIRTIO_BLK_F_RO`; the image is opened read-only too).
    pub read_only: bool,
    /// Its format; probed from the content when `None` (name it for images a guest writes).
    pub format: Option<Format>,
    /// Number of virtqueues (1 by default).
    pub queues: u16,
    /// The ID `GET_ID` returns (20 bytes at most); the file name by default.
    pub serial: Option<String>,
    /// Whether the image's files are locked against other processes' conflicting use
    /// (`locking=on`, the default, or `off`, as QEMU's `file.locking=off`).
    pub locking: Locking,
    /// Rate limits at start (one limiter: bandwidth and operations, every queue together).
    pub limits: DeviceLimits,
}

impl BlkConfig {
    /// A writable disk at `path`, format probed, one queue.
    pub fn new(path: impl Into<PathBuf>) -> BlkConfig {
        BlkConfig {
            path: path.into(),
            read_only: false,
            format: None,
            queues: 1,
            serial: None,
            locking: Locking::On,
            limits: DeviceLimits::default(),
        }
    }
}

impl FromStr for BlkConfig {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let mut cfg = BlkConfig::new("");
        for (i, (key, value)) in crate::options(s).enumerate() {
            match (key, value) {
                ("path", v) => cfg.path = v.into(),
                ("readonly" | "ro", "" | "on" | "true") => cfg.read_only = true,
                ("readonly" | "ro", "off" | "false") => cfg.read_only = false,
                ("format", v) => cfg.format = Some(v.parse().map_err(config_error)?),
                ("queues", v) => cfg.queues = parse_queues(v)?,
                ("serial", v) if v.len() <= 20 => cfg.serial = Some(v.into()),
                ("locking", "on") => cfg.locking = Locking::On,
                ("locking", "off") => cfg.locking = Locking::Off,
                (path, "") if i == 0 => cfg.path = path.into(),
                (key, v) if cfg.limits.set_option(Keys::ONE, key, v)? => {}
                _ => {
                    return Err(DeviceError::Config(format!(
                        "unknown disk option {key}={value:?}; use path=FILE, readonly, \
                         format=raw|qcow2|vmdk, queues=N, serial=ID (20 bytes at most), \
                         locking=on|off, {}",
                        Keys::ONE.describe()
                    )))
                }
            }
        }
        if cfg.path.as_os_str().is_empty() {
            return Err(DeviceError::Config("a disk needs path=FILE".into()));
        }

        Ok(cfg)
    }
}

/// The option list [`BlkConfig::from_str`] reads back (how the core describes a disk to its
/// compartment).
impl std::fmt::Display for BlkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "path={}", self.path.display())?;
        if self.read_only {
            f.write_str(",readonly")?;
        }
        if let Some(format) = self.format {
            write!(f, ",format={format}")?;
        }
        write!(f, ",queues={}", self.queues)?;
        if let Some(serial) = &self.serial {
            write!(f, ",serial={serial}")?;
        }
        if self.locking == Locking::Off {
            f.write_str(",locking=off")?;
        }
        self.limits.write_options(Keys::ONE, f)
    }
}

/// A running disk's new image (`bulkhead ctl VM device replace-disk`): the image, its format
/// (probed when not named) and, if given, whether it is read-only — which must be what the disk
/// already is: the driver negotiated `VIRTIO_BLK_F_RO` when it started, and features do not
/// change under a running driver (Firecracker's `PATCH /drives` keeps a drive's `is_read_only`
/// too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSwap {
    pub path: PathBuf,
    pub format: Option<Format>,
    pub read_only: Option<bool>,
}

impl DiskSwap {
    /// The image at `path`, of `format` (`raw`, `qcow2`, `vmdk`; probed when `None`).
    pub fn new(
        path: PathBuf,
        format: Option<&str>,
        read_only: Option<bool>,
    ) -> Result<DiskSwap, DeviceError> {
        let format = format.map(str::parse).transpose().map_err(config_error)?;
        Ok(DiskSwap { path, format, read_only })
    }

    /// The configuration of the disk `current` with this image: its queues, serial and locking
    /// kept, the format named here (probed when not), read-only as before.
    pub fn apply(&self, current: &BlkConfig) -> Result<BlkConfig, DeviceError> {
        if !self.path.is_absolute() {
            return Err(DeviceError::Config(format!(
                "{} is not an absolute path; the client makes it absolute",
                self.path.display()
            )));
        }
        if let Some(read_only) = self.read_only.filter(|&ro| ro != current.read_only) {
            let (is, asked) = match read_only {
                true => ("writable", "read-only"),
                false => ("read-only", "writable"),
            };
            return Err(DeviceError::Config(format!(
                "the disk is {is} and a new image cannot make it {asked}: the guest's driver \
                 agreed on that when it started; leave `readonly` out to keep it"
            )));
        }
        Ok(BlkConfig { path: self.path.clone(), format: self.format, ..current.clone() })
    }
}

/// The disk configuration that `change` (a [`DiskSwap`], handed through the core unread) asks
/// of the device `name`, now configured as `current`; or, in a sentence, why it cannot be.
pub fn swapped(
    name: &str,
    current: &crate::DeviceConfig,
    change: Box<dyn std::any::Any + Send>,
) -> Result<BlkConfig, String> {
    let crate::DeviceConfig::Blk(current) = current else {
        return Err(format!(
            "{name} is a {} device: only a disk's image can be replaced",
            current.kind()
        ));
    };
    let swap = change
        .downcast::<DiskSwap>()
        .map_err(|_| format!("{name}: the change asked for is not a disk's new image"))?;
    swap.apply(current).map_err(|e| format!("{name}: {e}"))
}

/// The capacity, in bytes, that a virtio-blk configuration space (of [`config_space`]'s
/// layout) gives; `None` when it is too short to hold one.
pub fn capacity_bytes(config: &[u8]) -> Option<u64> {
    let sectors = u64::from_le_bytes(config.get(..8)?.try_into().ok()?);
    Some(sectors.saturating_mul(SECTOR))
}

fn config_error(e: bulkhead_disk::DiskError) -> DeviceError {
    DeviceError::Config(e.to_string())
}

fn parse_queues(v: &str) -> Result<u16, DeviceError> {
    match v.parse::<u16>() {
        Ok(n) if (1..=MAX_QUEUES).contains(&n) => Ok(n),
        _ => Err(DeviceError::Config(format!("queues={v}: use 1 to {MAX_QUEUES}"))),
    }
}

/// The virtio-blk configuration space (`struct virtio_blk_config`, up to the write-zeroes
/// fields: 60 bytes).
pub fn config_space(capacity_sectors: u64, queues: u16) -> Vec<u8> {
    let mut c = Vec::with_capacity(60);
    c.extend_from_slice(&capacity_sectors.to_le_bytes()); // 0 capacity
    c.extend_from_slice(&SIZE_MAX.to_le_bytes()); // 8 size_max
    c.extend_from_slice(&SEG_MAX.to_le_bytes()); // 12 seg_max
    c.extend_from_slice(&[0; 4]); // 16 geometry
    c.extend_from_slice(&(SECTOR as u32).to_le_bytes()); // 20 blk_size
    c.extend_from_slice(&[0; 8]); // 24 topology
    c.extend_from_slice(&[0, 0]); // 32 writeback, unused
    c.extend_from_slice(&queues.to_le_bytes()); // 34 num_queues
    c.extend_from_slice(&MAX_RANGE_SECTORS.to_le_bytes()); // 36 max_discard_sectors
    c.extend_from_slice(&MAX_RANGES.to_le_bytes()); // 40 max_discard_seg
    c.extend_from_slice(&1u32.to_le_bytes()); // 44 discard_sector_alignment
    c.extend_from_slice(&MAX_RANGE_SECTORS.to_le_bytes()); // 48 max_write_zeroes_sectors
    c.extend_from_slice(&MAX_RANGES.to_le_bytes()); // 52 max_write_zeroes_seg
    c.extend_from_slice(&[1, 0, 0, 0]); // 56 write_zeroes_may_unmap, unused
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let c: BlkConfig = "disk.qcow2,readonly,format=qcow2".parse().unwrap();
        assert_eq!(c.path, PathBuf::from("disk.qcow2"));
        assert!(c.read_only);
        assert_eq!(c.format, Some(Format::Qcow2));
        assert_eq!(c.queues, 1);
        let c = "path=/a,b,queues=4,serial=disk0".parse::<BlkConfig>();
        assert!(c.is_err(), "a bare word after the first is unknown");
        let c: BlkConfig = "path=/a,queues=4,serial=disk0,ro=off".parse().unwrap();
        assert_eq!((c.queues, c.serial.as_deref(), c.read_only), (4, Some("disk0"), false));
        for bad in ["", "readonly", "a,format=vhd", "a,queues=0", "a,queues=99", "a,frob=1"] {
            let err = bad.parse::<BlkConfig>().unwrap_err().to_string();
            assert!(!err.is_empty(), "{bad}");
        }
        let err = "a,frob=1".parse::<BlkConfig>().unwrap_err().to_string();
        assert!(err.contains("use path=FILE"), "{err}");
        let c: BlkConfig = "a,locking=off".parse().unwrap();
        assert_eq!(c.locking, Locking::Off);
        assert!("a,locking=maybe".parse::<BlkConfig>().is_err());
        let c: BlkConfig = "a,bw=4K@10,ops=none".parse().unwrap();
        assert_eq!(c.limits.0[0].bandwidth.unwrap().size, 4096);
        assert!(c.limits.0[0].ops.is_none());
        let err = "a,ops=fast".parse::<BlkConfig>().unwrap_err().to_string();
        assert!(err.contains("ops=fast") && err.contains("SIZE@MS[+BURST]"), "{err}");
    }

    #[test]
    fn a_swap_keeps_the_disk_but_its_image_and_format() {
        let current: BlkConfig =
            "/a.raw,format=raw,queues=2,serial=disk0,locking=off".parse().unwrap();
        let swap =
            DiskSwap { path: "/b.qcow2".into(), format: Some(Format::Qcow2), read_only: None };
        let new = swap.apply(&current).unwrap();
        assert_eq!(new.path, PathBuf::from("/b.qcow2"));
        assert_eq!(new.format, Some(Format::Qcow2));
        assert_eq!(
            (new.queues, new.serial.as_deref(), new.locking),
            (2, Some("disk0"), Locking::Off)
        );
        let probed = DiskSwap { format: None, read_only: Some(false), ..swap.clone() };
        assert_eq!(probed.apply(&current).unwrap().format, None, "probed when not named");
        let ro = DiskSwap { read_only: Some(true), ..swap.clone() };
        let err = ro.apply(&current).unwrap_err().to_string();
        assert!(err.contains("is writable and a new image cannot make it read-only"), "{err}");
        let relative = DiskSwap { path: "b.qcow2".into(), ..swap };
        assert!(relative.apply(&current).unwrap_err().to_string().contains("absolute"));
    }

    #[test]
    fn the_capacity_is_the_first_field_in_sectors() {
        assert_eq!(capacity_bytes(&config_space(2048, 1)), Some(2048 * 512));
        assert_eq!(capacity_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn what_it_writes_reads_back_the_same() {
        for spec in [
            "/d.raw",
            "/d.qcow2,readonly,format=qcow2,queues=2,serial=x,locking=off",
            "/d.raw,bw=10M@1000+1M,ops=100@100",
        ] {
            let c: BlkConfig = spec.parse().unwrap();
            assert_eq!(c.to_string().parse::<BlkConfig>().unwrap(), c, "{spec}");
        }
    }

    #[test]
    fn config_space_layout() {
        let c = config_space(2048, 2);
        assert_eq!(c.len(), 60);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(c[52..56].try_into().unwrap()), MAX_RANGES);
        assert_eq!(c[56], 1);
        assert_eq!(u64::from(SEG_MAX) * u64::from(SIZE_MAX), MAX_REQUEST_BYTES);
    }
}
