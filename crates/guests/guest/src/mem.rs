//! Reading guest-physical memory, abstracted so the parsers can be tested on
//! the host against a byte buffer.

/// Read access to guest-physical memory.
pub trait PhysMem {
    /// Fills `buf` from `addr`; false if any byte is outside readable memory.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    fn read_u8(&self, addr: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        self.read(addr, &mut b).then_some(b[0])
    }
    fn read_u16(&self, addr: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b).then(|| u16::from_le_bytes(b))
    }
    fn read_u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b).then(|| u32::from_le_bytes(b))
    }
    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// The guest's own memory: the first 4 GiB are identity-mapped.
#[cfg(bulkhead_guest)]
pub struct Identity;

#[cfg(bulkhead_guest)]
impl PhysMem for Identity {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = addr.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > 1 << 32 {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: the page tables identity-map the first 4 GiB, readable
            // from ring 3; the range was checked to lie below 4 GiB. Reads of
            // unbacked addresses return all-ones (MMIO), never fault.
            *b = unsafe { core::ptr::read_volatile((addr + i as u64) as *const u8) };
        }
        true
    }
}

/// A byte buffer placed at a guest-physical base address, for tests.
#[cfg(test)]
pub struct Buffer {
    pub base: u64,
    pub bytes: Vec<u8>,
}

#[cfg(test)]
impl Buffer {
    pub fn new(base: u64, size: usize) -> Self {
        Buffer { base, bytes: vec![0; size] }
    }
    pub fn put(&mut self, addr: u64, data: &[u8]) {
        let at = (addr - self.base) as usize;
        self.bytes[at..at + data.len()].copy_from_slice(data);
    }
}

#[cfg(test)]
impl PhysMem for Buffer {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(at) = addr.checked_sub(self.base) else {
            return false;
        };
        let at = at as usize;
        match self.bytes.get(at..at + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}
