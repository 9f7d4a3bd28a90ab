//! The kernel command line: `bulkhead.*` options and virtio-mmio devices
//! described the way Linux reads them (`virtio_mmio.device=<size>@<base>:<irq>[:<id>]`).

/// The most virtio-mmio devices the guest keeps track of.
pub const MAX_VIRTIO: usize = 16;

/// One `virtio_mmio.device=` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioMmio {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// A parsed command line, borrowing from the original text.
pub struct Cmdline<'a> {
    text: &'a str,
}

impl<'a> Cmdline<'a> {
    pub fn new(text: &'a str) -> Self {
        Cmdline { text }
    }

    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The value of the last `key=value` option with this key.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.text
            .split_ascii_whitespace()
            .filter_map(|word| word.split_once('='))
            .rfind(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// A numeric option, decimal or 0x-prefixed hex.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(parse_u64)
    }

    /// Whether a bare flag or `flag=...` is present.
    pub fn has(&self, key: &str) -> bool {
        self.text
            .split_ascii_whitespace()
            .any(|w| w == key || w.split_once('=').is_some_and(|(k, _)| k == key))
    }

    /// The virtio-mmio devices named on the command line, in order; entries
    /// that do not parse are skipped and counted in the second value.
    pub fn virtio_mmio(&self) -> ([VirtioMmio; MAX_VIRTIO], usize, usize) {
        let mut out = [VirtioMmio::default(); MAX_VIRTIO];
        let (mut n, mut bad) = (0, 0);
        let entries = self
            .text
            .split_ascii_whitespace()
            .filter_map(|w| w.strip_prefix("virtio_mmio.device="));
        for entry in entries {
            match parse_virtio_mmio(entry) {
                Some(dev) if n < MAX_VIRTIO => {
                    out[n] = dev;
                    n += 1;
                }
                _ => bad += 1,
            }
        }
        (out, n, bad)
    }
}

/// Parses `<size>@<base>:<irq>[:<id>]`, size with an optional K/M/G suffix.
pub fn parse_virtio_mmio(entry: &str) -> Option<VirtioMmio> {
    let (size, rest) = entry.split_once('@')?;
    let (base, rest) = rest.split_once(':')?;
    let irq = rest.split(':').next()?;
    Some(VirtioMmio {
        size: parse_size(size)?,
        base: parse_u64(base)?,
        irq: u32::try_from(parse_u64(irq)?).ok()?,
    })
}

/// A size with an optional K, M or G suffix (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_u64(digits)?.checked_mul(1 << shift)
}

/// Decimal or 0x-prefixed hexadecimal.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_options_and_devices() {
        let c = Cmdline::new(
            "console=ttyS0 bulkhead.run=blk virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6:1 virtio_mmio.device=junk bulkhead.n=0x10 quiet",
        );
        assert_eq!(c.get("bulkhead.run"), Some("blk"));
        assert_eq!(c.get_u64("bulkhead.n"), Some(16));
        assert!(c.has("quiet") && !c.has("loud"));
        let (devs, n, bad) = c.virtio_mmio();
        assert_eq!((n, bad), (2, 1));
        assert_eq!(devs[0], VirtioMmio { base: 0xd000_0000, size: 4096, irq: 5 });
        assert_eq!(devs[1].irq, 6);
    }

    #[test]
    fn sizes_and_numbers() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("0x1000"), Some(4096));
        assert_eq!(parse_size("99999999999G"), None);
        assert_eq!(parse_u64("0xzz"), None);
    }
}
