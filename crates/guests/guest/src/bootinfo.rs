//! The PVH boot information (`struct hvm_start_info`, Xen's
//! `arch/x86/include/public/hvm/start_info.h`): memory map, command line,
//! modules (the initrd) and the ACPI RSDP address.

use crate::mem::PhysMem;

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Memory map entry type for usable RAM.
pub const E820_RAM: u32 = 1;
/// The most memory-map entries and modules kept.
pub const MAX_MEMMAP: usize = 64;
pub const MAX_MODULES: usize = 8;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRegion {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Module {
    pub addr: u64,
    pub size: u64,
}

/// What the VMM told the guest at boot.
#[derive(Debug)]
pub struct BootInfo {
    pub addr: u64,
    pub version: u32,
    pub memmap_addr: u64,
    pub modlist_addr: u64,
    pub cmdline_addr: u64,
    pub cmdline_len: usize,
    pub rsdp: u64,
    pub memmap: [MemRegion; MAX_MEMMAP],
    pub memmap_len: usize,
    pub modules: [Module; MAX_MODULES],
    pub modules_len: usize,
}

/// Why the boot information could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum BootInfoError {
    Unreadable,
    BadMagic(u32),
    TooManyEntries,
}

impl BootInfo {
    /// Parses the start_info structure at `addr`.
    pub fn parse(mem: &dyn PhysMem, addr: u64) -> Result<Self, BootInfoError> {
        let r32 = |off: u64| mem.read_u32(addr + off).ok_or(BootInfoError::Unreadable);
        let r64 = |off: u64| mem.read_u64(addr + off).ok_or(BootInfoError::Unreadable);
        let magic = r32(0)?;
        if magic != START_INFO_MAGIC {
            return Err(BootInfoError::BadMagic(magic));
        }
        let mut info = BootInfo {
            addr,
            version: r32(4)?,
            memmap_addr: 0,
            modlist_addr: 0,
            cmdline_addr: r64(24)?,
            cmdline_len: 0,
            rsdp: r64(32)?,
            memmap: [MemRegion::default(); MAX_MEMMAP],
            memmap_len: 0,
            modules: [Module::default(); MAX_MODULES],
            modules_len: 0,
        };
        info.cmdline_len = c_string_len(mem, info.cmdline_addr, 65536);
        let (nr_modules, modlist) = (r32(12)? as usize, r64(16)?);
        info.modlist_addr = modlist;
        if nr_modules > MAX_MODULES {
            return Err(BootInfoError::TooManyEntries);
        }
        for i in 0..nr_modules {
            let at = modlist + 32 * i as u64;
            let m = Module {
                addr: mem.read_u64(at).ok_or(BootInfoError::Unreadable)?,
                size: mem.read_u64(at + 8).ok_or(BootInfoError::Unreadable)?,
            };
            info.modules[i] = m;
        }
        info.modules_len = nr_modules;
        if info.version >= 1 {
            info.parse_memmap(mem, r64(40)?, r32(48)? as usize)?;
        }
        Ok(info)
    }

    fn parse_memmap(&mut self, mem: &dyn PhysMem, at: u64, n: usize) -> Result<(), BootInfoError> {
        self.memmap_addr = at;
        if n > MAX_MEMMAP {
            return Err(BootInfoError::TooManyEntries);
        }
        for i in 0..n {
            let e = at + 24 * i as u64;
            self.memmap[i] = MemRegion {
                addr: mem.read_u64(e).ok_or(BootInfoError::Unreadable)?,
                size: mem.read_u64(e + 8).ok_or(BootInfoError::Unreadable)?,
                kind: mem.read_u32(e + 16).ok_or(BootInfoError::Unreadable)?,
            };
        }
        self.memmap_len = n;
        Ok(())
    }

    pub fn memmap(&self) -> &[MemRegion] {
        &self.memmap[..self.memmap_len]
    }

    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.modules_len]
    }

    /// Total usable RAM in the memory map.
    pub fn ram_bytes(&self) -> u64 {
        self.memmap().iter().filter(|r| r.kind == E820_RAM).map(|r| r.size).sum()
    }

    /// Whether `[addr, addr + len)` overlaps any structure the VMM handed
    /// over (start_info, memory map, module list, command line).
    pub fn overlaps_boot_data(&self, addr: u64, len: u64) -> bool {
        let overlaps = |start: u64, size: u64| start < addr + len && addr < start + size;
        overlaps(self.addr, 56)
            || overlaps(self.memmap_addr, 24 * self.memmap_len as u64)
            || overlaps(self.modlist_addr, 32 * self.modules_len as u64)
            || overlaps(self.cmdline_addr, self.cmdline_len as u64 + 1)
    }

    /// Whether `[addr, addr + len)` lies inside one RAM region.
    pub fn is_ram(&self, addr: u64, len: u64) -> bool {
        self.memmap().iter().any(|r| {
            r.kind == E820_RAM && addr >= r.addr && addr.saturating_add(len) <= r.addr + r.size
        })
    }
}

/// Length of the NUL-terminated string at `addr`, at most `max`.
pub fn c_string_len(mem: &dyn PhysMem, addr: u64, max: usize) -> usize {
    if addr == 0 {
        return 0;
    }
    (0..max).find(|&i| mem.read_u8(addr + i as u64).is_none_or(|b| b == 0)).unwrap_or(max)
}

/// FNV-1a, 64-bit: a checksum the host can recompute to verify a module.
pub fn fnv1a64(mem: &dyn PhysMem, addr: u64, len: u64) -> Option<u64> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunk = [0u8; 512];
    let mut done = 0;
    while done < len {
        let n = core::cmp::min(chunk.len() as u64, len - done) as usize;
        if !mem.read(addr + done, &mut chunk[..n]) {
            return None;
        }
        for &b in &chunk[..n] {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        done += n as u64;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Buffer;

    fn start_info(mem: &mut Buffer) {
        mem.put(0x1000, &START_INFO_MAGIC.to_le_bytes());
        mem.put(0x1004, &1u32.to_le_bytes());
        mem.put(0x100c, &1u32.to_le_bytes()); // one module
        mem.put(0x1010, &0x1100u64.to_le_bytes());
        mem.put(0x1018, &0x2000u64.to_le_bytes());
        mem.put(0x1020, &0xe0000u64.to_le_bytes());
        mem.put(0x1028, &0x1200u64.to_le_bytes());
        mem.put(0x1030, &2u32.to_le_bytes());
        mem.put(0x1100, &0x3000u64.to_le_bytes());
        mem.put(0x1108, &4u64.to_le_bytes());
        for (i, (a, s, t)) in [(0u64, 0x9fc00u64, 1u32), (0x100000, 0x700000, 1)].iter().enumerate()
        {
            let e = 0x1200 + 24 * i as u64;
            mem.put(e, &a.to_le_bytes());
            mem.put(e + 8, &s.to_le_bytes());
            mem.put(e + 16, &t.to_le_bytes());
        }
        mem.put(0x2000, b"console=ttyS0 bulkhead.run=selftest\0");
        mem.put(0x3000, b"abcd");
    }

    #[test]
    fn parses_a_start_info() {
        let mut mem = Buffer::new(0, 0x4000);
        start_info(&mut mem);
        let info = BootInfo::parse(&mem, 0x1000).unwrap();
        assert_eq!(info.cmdline_len, 35);
        assert_eq!(info.rsdp, 0xe0000);
        assert_eq!(info.memmap().len(), 2);
        assert_eq!(info.ram_bytes(), 0x9fc00 + 0x700000);
        assert_eq!(info.modules(), &[Module { addr: 0x3000, size: 4 }]);
        assert!(info.is_ram(0x8000, 0x1000));
        assert!(!info.is_ram(0x9f000, 0x1000));
        // The published FNV-1a test vector for "foobar".
        mem.put(0x3000, b"foobar");
        assert_eq!(fnv1a64(&mem, 0x3000, 6), Some(0x8594_4171_f739_67e8));
    }

    #[test]
    fn refuses_a_bad_magic_and_oversized_tables() {
        let mut mem = Buffer::new(0, 0x4000);
        start_info(&mut mem);
        mem.put(0x1030, &1000u32.to_le_bytes());
        assert_eq!(BootInfo::parse(&mem, 0x1000).unwrap_err(), BootInfoError::TooManyEntries);
        mem.put(0x1000, &0u32.to_le_bytes());
        assert_eq!(BootInfo::parse(&mem, 0x1000).unwrap_err(), BootInfoError::BadMagic(0));
        assert_eq!(BootInfo::parse(&mem, 0x3ffe).unwrap_err(), BootInfoError::Unreadable);
    }
}
