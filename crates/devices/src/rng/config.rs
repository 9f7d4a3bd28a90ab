//! What the user asks of an entropy device: its rate limits, `bw=1M@1000,ops=100@1000`.

use std::str::FromStr;

use crate::limit::{DeviceLimits, Keys};
use crate::DeviceError;

/// An entropy device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RngConfig {
    /// Rate limits at start: bytes of entropy, and requests.
    pub limits: DeviceLimits,
}

impl FromStr for RngConfig {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let mut cfg = RngConfig::default();
        for (key, value) in crate::options(s) {
            if !cfg.limits.set_option(Keys::ONE, key, value)? {
                return Err(DeviceError::Config(format!(
                    "unknown rng option {key:?}; the rng takes {}",
                    Keys::ONE.describe()
                )));
            }
        }
        Ok(cfg)
    }
}

/// The option list [`RngConfig::from_str`] reads back.
impl std::fmt::Display for RngConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.limits.write_options(Keys::ONE, f)
    }
}
