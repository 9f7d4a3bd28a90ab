//! What the user asks of a network device, and the virtio-net configuration space.

use std::fmt;
use std::str::FromStr;

use crate::limit::{DeviceLimits, Keys};
use crate::DeviceError;

/// Feature bits (virtio 1.2, 5.1.3).
pub mod features {
    /// The configuration space holds the MAC.
    pub const MAC: u64 = 1 << 5;
    /// Receive buffers may be merged (`num_buffers`).
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// The configuration space holds the link status.
    pub const STATUS: u64 = 1 << 16;
}

/// Link is up (`status` field).
pub const LINK_UP: u16 = 1;

/// Where the tap comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// An interface name: opened (or created) with `/dev/net/tun`.
    Name(String),
    /// An inherited, already opened tap file descriptor.
    Fd(i32),
}

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random locally administered unicast address, `52:54:00:xx:xx:xx`.
    pub fn random() -> Mac {
        let mut tail = [0u8; 3];
        let _ = crate::rng::device::fill_random(&mut tail);
        Mac([0x52, 0x54, 0x00, tail[0], tail[1], tail[2]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl FromStr for Mac {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let bad =
            || DeviceError::Config(format!("{s:?} is not a MAC address like 52:54:00:12:34:56"));
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() || mac[0] & 1 != 0 {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

/// A network device: `tap=NAME` or `tap-fd=N`, `mac=52:54:00:12:34:56`, and rate limits
/// `rx-bw=…,rx-ops=…,tx-bw=…,tx-ops=…` (rx: what the guest receives).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap.
    pub tap: TapSource,
    /// The guest's MAC; random (`52:54:00:…`) when `None`.
    pub mac: Option<Mac>,
    /// Rate limits at start: [`crate::limit::spec::RX`] and [`crate::limit::spec::TX`].
    pub limits: DeviceLimits,
}

impl FromStr for NetConfig {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let mut tap = None;
        let mut mac = None;
        let mut limits = DeviceLimits::default();
        for (key, value) in crate::options(s) {
            match key {
                "tap" if !value.is_empty() => tap = Some(TapSource::Name(value.into())),
                "tap-fd" => match value.parse() {
                    Ok(fd) if fd >= 0 => tap = Some(TapSource::Fd(fd)),
                    _ => return Err(DeviceError::Config(format!("tap-fd={value}: not an fd"))),
                },
                "mac" => mac = Some(value.parse()?),
                _ if limits.set_option(Keys::NET, key, value)? => {}
                _ => {
                    return Err(DeviceError::Config(format!(
                        "unknown net option {key:?}; use tap=NAME or tap-fd=N, mac=MAC, {}",
                        Keys::NET.describe()
                    )))
                }
            }
        }
        let tap = tap
            .ok_or_else(|| DeviceError::Config("a net device needs tap=NAME or tap-fd=N".into()))?;
        Ok(NetConfig { tap, mac, limits })
    }
}

/// The configuration space: `mac`, `status`, `max_virtqueue_pairs`.
pub fn config_space(mac: Mac) -> Vec<u8> {
    let mut c = mac.0.to_vec();
    c.extend_from_slice(&LINK_UP.to_le_bytes());
    c.extend_from_slice(&1u16.to_le_bytes());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let c: NetConfig = "tap=bh0,mac=52:54:00:ab:cd:ef".parse().unwrap();
        assert_eq!(c.tap, TapSource::Name("bh0".into()));
        assert_eq!(c.mac.unwrap().to_string(), "52:54:00:ab:cd:ef");
        assert_eq!("tap-fd=7".parse::<NetConfig>().unwrap().tap, TapSource::Fd(7));
        let c: NetConfig = "tap=a,rx-bw=1M@100,tx-ops=10@10".parse().unwrap();
        assert_eq!(c.limits.0[crate::limit::spec::RX].bandwidth.unwrap().size, 1 << 20);
        assert_eq!(c.limits.0[crate::limit::spec::TX].ops.unwrap().size, 10);
        assert!("tap=a,bw=1M@100".parse::<NetConfig>().is_err(), "net's keys are rx-/tx-");
        for bad in [
            "",
            "mac=52:54:00:ab:cd:ef",
            "tap=a,mac=01:00:00:00:00:00",
            "tap=a,mac=1:2",
            "tap-fd=-1",
            "tap=a,x=1",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad}");
        }
        let m = Mac::random();
        assert_eq!(&m.0[..3], &[0x52, 0x54, 0x00]);
        assert_eq!(config_space(m).len(), 10);
    }
}
