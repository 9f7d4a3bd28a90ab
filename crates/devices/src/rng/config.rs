//! What the user asks of an entropy device: nothing yet.

use std::str::FromStr;

use crate::DeviceError;

/// An entropy device. It takes no options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RngConfig {}

impl FromStr for RngConfig {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match crate::options(s).next() {
            None => Ok(RngConfig {}),
            Some((key, _)) => {
                Err(DeviceError::Config(format!("the rng device takes no options (got {key:?})")))
            }
        }
    }
}
