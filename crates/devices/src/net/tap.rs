//! The tap device: opened by name, or adopted from an inherited file descriptor.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::DeviceError;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// Bytes of the virtio-net header (VERSION_1).
pub const VNET_HDR_LEN: usize = 12;

#[repr(C)]
#[derive(Default)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap device, non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    vnet_hdr: bool,
    name: String,
}

impl Tap {
    /// Attaches to (or creates, with the privilege to) the tap interface `name`, with virtio-net
    /// headers on.
    pub fn open(name: &str) -> Result<Tap, DeviceError> {
        let err = |source| DeviceError::Tap { name: name.into(), source };
        if name.is_empty() || name.len() >= 16 {
            return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(err)?;
        let mut req = IfReq { flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, ..Default::default() };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an `ifreq`, which `IfReq` lays out (40 bytes).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Tap::adopt(file, name.to_string())
    }

    /// Adopts an inherited tap file descriptor (the caller hands over ownership of `fd`).
    pub fn from_fd(fd: RawFd) -> Result<Tap, DeviceError> {
        let name = format!("fd {fd}");
        let mut req = IfReq::default();
        // SAFETY: TUNGETIFF writes an `ifreq` into `req`; on a non-tap fd it fails, harmlessly.
        let rc = unsafe { libc::ioctl(fd, TUNGETIFF as _, &mut req) };
        if rc < 0 {
            let source = std::io::Error::last_os_error();
            return Err(DeviceError::Tap { name, source });
        }
        // SAFETY: the caller owns `fd` and gives it to us; it is a tap (TUNGETIFF succeeded).
        let file = unsafe { File::from_raw_fd(fd) };
        set_nonblocking(&file).map_err(|source| DeviceError::Tap { name: name.clone(), source })?;
        Tap::adopt(file, name)
    }

    fn adopt(file: File, name: String) -> Result<Tap, DeviceError> {
        let mut req = IfReq::default();
        // SAFETY: TUNGETIFF writes an `ifreq` into `req`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNGETIFF as _, &mut req) };
        if rc < 0 {
            return Err(DeviceError::Tap { name, source: std::io::Error::last_os_error() });
        }
        let vnet_hdr = req.flags & IFF_VNET_HDR != 0;
        if vnet_hdr {
            let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &size) };
            if rc < 0 {
                return Err(DeviceError::Tap { name, source: std::io::Error::last_os_error() });
            }
        }
        let ifname = String::from_utf8_lossy(&req.name).trim_end_matches('\0').to_string();
        let name = if ifname.is_empty() { name } else { ifname };
        Ok(Tap { file, vnet_hdr, name })
    }

    /// Whether frames cross with a virtio-net header.
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file descriptor.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Where packets go and come from: the tap, or a stand-in in tests. Reads are non-blocking.
pub trait PacketPort: Send + Sync {
    /// Reads one packet (with the header if [`PacketPort::has_vnet_hdr`]).
    fn read_packet(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one packet (with the header if [`PacketPort::has_vnet_hdr`]).
    fn write_packet(&self, buf: &[u8]) -> std::io::Result<usize>;
    /// The file descriptor that becomes readable when a packet waits.
    fn fd(&self) -> RawFd;
    /// Whether packets carry a 12-byte virtio-net header.
    fn has_vnet_hdr(&self) -> bool;
    /// A name for messages.
    fn name(&self) -> &str;
}

impl PacketPort for Tap {
    fn read_packet(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    fn write_packet(&self, buf: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(buf)
    }

    fn fd(&self) -> RawFd {
        Tap::fd(self)
    }

    fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    fn name(&self) -> &str {
        &self.name
    }
}

fn set_nonblocking(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on an fd we own, with the flags it had plus O_NONBLOCK.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
