//! The entropy device.

use std::os::fd::RawFd;

use vm_memory::GuestMemoryMmap;

use super::config::RngConfig;
use crate::backend::chain::Chain;
use crate::backend::{Limited, QueueHandler, RequestHandler};
use crate::limit::{spec::MAIN, Limiters, LimitsView};
use crate::{Device, DeviceError, DeviceKind};

/// Most bytes one request gets; a larger buffer is filled this far.
pub const MAX_BYTES_PER_REQUEST: usize = 64 << 10;

/// A virtio-rng device.
pub struct RngDevice {
    limiters: Limiters,
}

impl RngDevice {
    /// Opens the device (nothing to open: `getrandom(2)` needs no file), with `cfg`'s rate
    /// limits for good unless given a page ([`RngDevice::with_limits`]).
    pub fn open(cfg: &RngConfig) -> Result<RngDevice, DeviceError> {
        Ok(RngDevice { limiters: Limiters::new(LimitsView::fixed(&cfg.limits)) })
    }

    /// The device with the rate limits of `view`.
    pub fn with_limits(self, view: LimitsView) -> RngDevice {
        RngDevice { limiters: Limiters::new(view) }
    }
}

impl Device for RngDevice {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Rng
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn features(&self) -> u64 {
        0
    }

    fn config(&self) -> Vec<u8> {
        Vec::new()
    }

    fn files(&self) -> Vec<RawFd> {
        Vec::new()
    }

    fn queue_handler(
        &self,
        _queue: usize,
        _acked_features: u64,
    ) -> Result<Box<dyn QueueHandler>, DeviceError> {
        Ok(Box::new(Limited::new(RngQueue::default(), self.limiters.gate(MAIN)?)))
    }
}

/// The request handler: random bytes into every writable buffer.
#[derive(Default)]
pub struct RngQueue {
    buf: Vec<u8>,
}

impl RequestHandler for RngQueue {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: &Chain) -> u32 {
        if chain.error.is_some() {
            log::debug!("skipping a malformed chain at {}: {:?}", chain.head, chain.error);
            return 0;
        }
        let mut writer = chain.writer();
        let n = (writer.remaining() as usize).min(MAX_BYTES_PER_REQUEST);
        self.buf.resize(n, 0);
        if fill_random(&mut self.buf).is_err() || !writer.write_all(mem, &self.buf) {
            return 0;
        }
        n as u32
    }

    fn cost(&self, _mem: &GuestMemoryMmap, chain: &Chain) -> u64 {
        chain.writable_len().min(MAX_BYTES_PER_REQUEST as u64)
    }
}

/// Fills `buf` from `getrandom(2)`.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::queue::testing::{desc, memory, run_one};
    use crate::backend::Requests;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn fills_writable_buffers() {
        let mem = memory();
        let mut h = Requests(RngQueue::default());
        let descs = [desc(0x10_0000, 100, true), desc(0x20_0000, 28, true)];
        assert_eq!(run_one(&mem, &mut h, &descs), Some(128));
        let mut got = [0u8; 100];
        mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        let distinct: std::collections::HashSet<u8> = got.iter().copied().collect();
        assert!(distinct.len() > 20, "100 random bytes with {} distinct values", distinct.len());
    }

    #[test]
    fn caps_and_skips() {
        let mem = memory();
        let mut h = Requests(RngQueue::default());
        let big = [desc(0x10_0000, 1 << 20, true)];
        assert_eq!(run_one(&mem, &mut h, &big), Some(MAX_BYTES_PER_REQUEST as u32));
        // Readable only: nothing to fill.
        assert_eq!(run_one(&mem, &mut h, &[desc(0x10_0000, 64, false)]), Some(0));
        // Out of memory: skipped, returned empty, the handler goes on.
        assert_eq!(run_one(&mem, &mut h, &[desc(0xffff_0000, 64, true)]), Some(0));
    }

    #[test]
    fn parses_no_options() {
        assert!("".parse::<RngConfig>().is_ok());
        assert!("rate=5".parse::<RngConfig>().is_err());
        let c: RngConfig = "bw=1K@100".parse().unwrap();
        assert_eq!(c.to_string(), ",bw=1024@100");
        assert_eq!(c.to_string().parse::<RngConfig>().unwrap(), c);
    }
}
