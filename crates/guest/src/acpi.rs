//! Just enough ACPI to count the CPUs (MADT) and to power off or reset the
//! machine (FADT: the hardware-reduced sleep control register or the PM1a
//! control block, the reset register, and `\_S5` from the DSDT).

use crate::mem::PhysMem;

/// The most CPUs read from the MADT.
pub const MAX_APICS: usize = 256;

/// A generic address structure: a register in I/O or memory space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gas {
    pub space: u8,
    pub bit_width: u8,
    pub address: u64,
}

impl Gas {
    pub const SYSTEM_MEMORY: u8 = 0;
    pub const SYSTEM_IO: u8 = 1;

    fn read(mem: &dyn PhysMem, at: u64) -> Option<Gas> {
        Some(Gas {
            space: mem.read_u8(at)?,
            bit_width: mem.read_u8(at + 1)?,
            address: mem.read_u64(at + 4)?,
        })
    }

    pub fn is_present(&self) -> bool {
        self.address != 0
    }
}

/// What the guest uses from the FADT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fadt {
    pub hw_reduced: bool,
    pub pm1a_cnt: u32,
    pub sleep_control: Gas,
    pub reset: Option<(Gas, u8)>,
    /// SLP_TYP for S5 from the DSDT's `\_S5` package, if found.
    pub s5_sleep_type: Option<u8>,
}

/// The ACPI tables the guest looked at.
#[derive(Debug)]
pub struct Acpi {
    pub rsdp: u64,
    pub fadt: Option<Fadt>,
    pub apic_ids: [u32; MAX_APICS],
    pub apic_count: usize,
}

impl Acpi {
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.apic_count]
    }
}

/// Scans the BIOS area (0xe0000-0xfffff) for an RSDP with a valid checksum.
pub fn find_rsdp(mem: &dyn PhysMem) -> Option<u64> {
    (0xe_0000u64..0x10_0000).step_by(16).find(|&at| rsdp_valid(mem, at))
}

fn rsdp_valid(mem: &dyn PhysMem, at: u64) -> bool {
    let mut head = [0u8; 20];
    mem.read(at, &mut head) && &head[..8] == b"RSD PTR " && checksum_ok(mem, at, 20)
}

fn checksum_ok(mem: &dyn PhysMem, at: u64, len: u64) -> bool {
    let mut sum = 0u8;
    for i in 0..len {
        match mem.read_u8(at + i) {
            Some(b) => sum = sum.wrapping_add(b),
            None => return false,
        }
    }
    sum == 0
}

/// A system description table's address if its signature and checksum hold.
fn table(mem: &dyn PhysMem, at: u64, signature: &[u8; 4]) -> Option<u32> {
    let mut sig = [0u8; 4];
    if !mem.read(at, &mut sig) || &sig != signature {
        return None;
    }
    let len = mem.read_u32(at + 4)?;
    ((36..=1 << 20).contains(&len) && checksum_ok(mem, at, u64::from(len))).then_some(len)
}

/// Reads the tables reachable from the RSDP at `rsdp`.
pub fn parse(mem: &dyn PhysMem, rsdp: u64) -> Option<Acpi> {
    if !rsdp_valid(mem, rsdp) {
        return None;
    }
    let revision = mem.read_u8(rsdp + 15)?;
    let (root, entry_size, sig) = match mem.read_u64(rsdp + 24) {
        Some(x) if revision >= 2 && x != 0 => (x, 8, b"XSDT"),
        _ => (u64::from(mem.read_u32(rsdp + 16)?), 4, b"RSDT"),
    };
    let len = table(mem, root, sig)?;
    let mut acpi = Acpi { rsdp, fadt: None, apic_ids: [0; MAX_APICS], apic_count: 0 };
    for i in 0..(u64::from(len) - 36) / entry_size {
        let at = root + 36 + i * entry_size;
        let addr = if entry_size == 8 { mem.read_u64(at)? } else { u64::from(mem.read_u32(at)?) };
        if let Some(len) = table(mem, addr, b"FACP") {
            acpi.fadt = parse_fadt(mem, addr, len);
        } else if let Some(len) = table(mem, addr, b"APIC") {
            parse_madt(mem, addr, len, &mut acpi);
        }
    }
    Some(acpi)
}

fn parse_fadt(mem: &dyn PhysMem, at: u64, len: u32) -> Option<Fadt> {
    let flags = mem.read_u32(at + 112)?;
    let mut fadt = Fadt {
        hw_reduced: flags & (1 << 20) != 0,
        pm1a_cnt: mem.read_u32(at + 64)?,
        ..Fadt::default()
    };
    if flags & (1 << 10) != 0 && len >= 129 {
        fadt.reset = Some((Gas::read(mem, at + 116)?, mem.read_u8(at + 128)?));
    }
    if len >= 256 {
        fadt.sleep_control = Gas::read(mem, at + 244)?;
    }
    let dsdt = match mem.read_u64(at + 140) {
        Some(x) if len >= 148 && x != 0 => x,
        _ => u64::from(mem.read_u32(at + 40)?),
    };
    if let Some(dsdt_len) = table(mem, dsdt, b"DSDT") {
        fadt.s5_sleep_type = find_s5(mem, dsdt + 36, u64::from(dsdt_len) - 36);
    }
    Some(fadt)
}

fn parse_madt(mem: &dyn PhysMem, at: u64, len: u32, acpi: &mut Acpi) {
    let end = at + u64::from(len);
    let mut p = at + 44;
    while p + 2 <= end {
        let (Some(kind), Some(size)) = (mem.read_u8(p), mem.read_u8(p + 1)) else {
            return;
        };
        if size < 2 {
            return;
        }
        let id_and_flags = match kind {
            0 if size >= 8 => mem.read_u8(p + 3).map(u32::from).zip(mem.read_u32(p + 4)),
            9 if size >= 16 => mem.read_u32(p + 4).zip(mem.read_u32(p + 8)),
            _ => None,
        };
        // Enabled, or online-capable (bit 1): both are CPUs that can be started.
        if let Some((id, flags)) = id_and_flags {
            if flags & 3 != 0 && acpi.apic_count < MAX_APICS {
                acpi.apic_ids[acpi.apic_count] = id;
                acpi.apic_count += 1;
            }
        }
        p += u64::from(size);
    }
}

/// Finds `Name(_S5, Package() { SLP_TYPa, ... })` in AML and returns SLP_TYPa.
pub fn find_s5(mem: &dyn PhysMem, at: u64, len: u64) -> Option<u8> {
    let mut window = [0u8; 4];
    for i in 0..len.saturating_sub(8) {
        if !mem.read(at + i, &mut window) || &window != b"_S5_" {
            continue;
        }
        let mut p = at + i + 4;
        if mem.read_u8(p)? != 0x12 {
            continue; // not a package
        }
        p += 1;
        let lead = mem.read_u8(p)?;
        p += 1 + u64::from(lead >> 6); // PkgLength: lead byte plus 0-3 more
        p += 1; // NumElements
        return match mem.read_u8(p)? {
            0x00 => Some(0),            // ZeroOp
            0x01 => Some(1),            // OneOp
            0x0a => mem.read_u8(p + 1), // BytePrefix
            b if b < 0x0a => Some(b),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Buffer;

    fn fix_checksum(mem: &mut Buffer, at: u64, len: usize, field: u64) {
        mem.put(field, &[0]);
        let start = (at - mem.base) as usize;
        let sum = mem.bytes[start..start + len].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        mem.put(field, &[0u8.wrapping_sub(sum)]);
    }

    fn header(mem: &mut Buffer, at: u64, sig: &[u8; 4], len: u32) {
        mem.put(at, sig);
        mem.put(at + 4, &len.to_le_bytes());
    }

    /// RSDP at 0xe0000, XSDT at 0xe1000, FADT at 0xe2000, MADT at 0xe3000, DSDT at 0xe4000.
    fn tables() -> Buffer {
        let mut mem = Buffer::new(0xe0000, 0x20000);
        mem.put(0xe0000, b"RSD PTR ");
        mem.put(0xe000f, &[2]);
        mem.put(0xe0018, &0xe1000u64.to_le_bytes());
        fix_checksum(&mut mem, 0xe0000, 20, 0xe0008);
        header(&mut mem, 0xe1000, b"XSDT", 52);
        mem.put(0xe1024, &0xe2000u64.to_le_bytes());
        mem.put(0xe102c, &0xe3000u64.to_le_bytes());
        fix_checksum(&mut mem, 0xe1000, 52, 0xe1009);
        header(&mut mem, 0xe2000, b"FACP", 276);
        mem.put(0xe2000 + 112, &((1u32 << 20) | (1 << 10)).to_le_bytes());
        mem.put(0xe2000 + 116, &[1, 8, 0, 1, 0x02, 0x06, 0, 0, 0, 0, 0, 0]);
        mem.put(0xe2000 + 128, &[0x42]);
        mem.put(0xe2000 + 140, &0xe4000u64.to_le_bytes());
        mem.put(0xe2000 + 244, &[1, 8, 0, 1, 0x00, 0x06, 0, 0, 0, 0, 0, 0]);
        fix_checksum(&mut mem, 0xe2000, 276, 0xe2009);
        header(&mut mem, 0xe3000, b"APIC", 44 + 8 * 3 + 16);
        mem.put(0xe302c, &[0, 8, 0, 0, 1, 0, 0, 0]);
        mem.put(0xe3034, &[0, 8, 1, 1, 1, 0, 0, 0]);
        mem.put(0xe303c, &[0, 8, 2, 7, 0, 0, 0, 0]); // disabled
        mem.put(0xe3044, &[9, 16, 0, 0, 0x00, 0x01, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0]);
        fix_checksum(&mut mem, 0xe3000, 44 + 40, 0xe3009);
        let aml = [b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00];
        header(&mut mem, 0xe4000, b"DSDT", 36 + aml.len() as u32 + 4);
        mem.put(0xe4024 + 4, &aml);
        fix_checksum(&mut mem, 0xe4000, 36 + aml.len() + 4, 0xe4009);
        mem
    }

    #[test]
    fn finds_cpus_and_power_registers() {
        let mem = tables();
        let rsdp = find_rsdp(&mem).unwrap();
        assert_eq!(rsdp, 0xe0000);
        let acpi = parse(&mem, rsdp).unwrap();
        assert_eq!(acpi.apic_ids(), &[0, 1, 0x100]);
        let fadt = acpi.fadt.unwrap();
        assert!(fadt.hw_reduced);
        assert_eq!(fadt.sleep_control.address, 0x600);
        assert_eq!(fadt.reset.unwrap().0.address, 0x602);
        assert_eq!(fadt.reset.unwrap().1, 0x42);
        assert_eq!(fadt.s5_sleep_type, Some(5));
    }

    #[test]
    fn refuses_bad_checksums_and_lengths() {
        let mut mem = tables();
        mem.put(0xe3050, &[0xff]); // corrupt the MADT
        let acpi = parse(&mem, 0xe0000).unwrap();
        assert_eq!(acpi.apic_count, 0);
        mem.put(0xe0001, b"X");
        assert!(parse(&mem, 0xe0000).is_none());
        assert!(find_rsdp(&mem).is_none());
        let mut mem = tables();
        mem.put(0xe3004, &0xffff_ffffu32.to_le_bytes()); // absurd length
        assert_eq!(parse(&mem, 0xe0000).unwrap().apic_count, 0);
    }
}
