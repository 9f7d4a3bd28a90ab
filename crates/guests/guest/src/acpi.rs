//! Just enough ACPI to count the CPUs and find the I/O APICs (MADT), to find
//! virtio-mmio devices described in the DSDT, and to power off or reset the
//! machine (FADT: the hardware-reduced sleep control register or the PM1a
//! control block, the reset register, and `\_S5` from the DSDT).
//!
//! Virtio-mmio devices in the DSDT: QEMU's `-M microvm` (with ACPI, its
//! default) describes each transport that has a device as
//! `Device (VRnn) { Name (_HID, "LNRO0005") ... Name (_CRS, ResourceTemplate
//! () { Memory32Fixed (ReadWrite, base, size) Interrupt (...) { gsi } }) }`
//! and does not add `virtio_mmio.device=` to the command line. Rather than
//! interpret AML, [`find_virtio_mmio`] looks for the `LNRO0005` string and
//! takes the first Memory32Fixed descriptor and the Extended Interrupt
//! descriptor that follow it; a wrong guess is caught when the guest reads
//! the transport's magic value.

use crate::cmdline::{VirtioMmio, MAX_VIRTIO};
use crate::mem::PhysMem;

/// The most CPUs read from the MADT.
pub const MAX_APICS: usize = 256;
/// The most I/O APICs read from the MADT.
pub const MAX_IOAPICS: usize = 8;

/// One I/O APIC: its registers' address and the first GSI its pins carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

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
    pub ioapics: [IoApic; MAX_IOAPICS],
    pub ioapic_count: usize,
    /// Virtio-mmio transports the DSDT describes.
    pub virtio: [VirtioMmio; MAX_VIRTIO],
    pub virtio_count: usize,
}

impl Acpi {
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.apic_count]
    }

    pub fn ioapics(&self) -> &[IoApic] {
        &self.ioapics[..self.ioapic_count]
    }

    pub fn virtio(&self) -> &[VirtioMmio] {
        &self.virtio[..self.virtio_count]
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
    let mut acpi = Acpi {
        rsdp,
        fadt: None,
        apic_ids: [0; MAX_APICS],
        apic_count: 0,
        ioapics: [IoApic::default(); MAX_IOAPICS],
        ioapic_count: 0,
        virtio: [VirtioMmio::default(); MAX_VIRTIO],
        virtio_count: 0,
    };
    for i in 0..(u64::from(len) - 36) / entry_size {
        let at = root + 36 + i * entry_size;
        let addr = if entry_size == 8 { mem.read_u64(at)? } else { u64::from(mem.read_u32(at)?) };
        if let Some(len) = table(mem, addr, b"FACP") {
            acpi.fadt = parse_fadt(mem, addr, len);
            if let Some(dsdt) = dsdt_address(mem, addr, len) {
                if let Some(dsdt_len) = table(mem, dsdt, b"DSDT") {
                    let body = (dsdt + 36, u64::from(dsdt_len) - 36);
                    acpi.virtio_count = find_virtio_mmio(mem, body.0, body.1, &mut acpi.virtio);
                }
            }
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
    if let Some(dsdt) = dsdt_address(mem, at, len) {
        if let Some(dsdt_len) = table(mem, dsdt, b"DSDT") {
            fadt.s5_sleep_type = find_s5(mem, dsdt + 36, u64::from(dsdt_len) - 36);
        }
    }
    Some(fadt)
}

/// The DSDT's address from the FADT at `at`: X_DSDT if present, else DSDT.
fn dsdt_address(mem: &dyn PhysMem, at: u64, len: u32) -> Option<u64> {
    match mem.read_u64(at + 140) {
        Some(x) if len >= 148 && x != 0 => Some(x),
        _ => mem.read_u32(at + 40).map(u64::from),
    }
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
        // Type 1: I/O APIC (id, reserved, address, GSI base).
        if kind == 1 && size >= 12 && acpi.ioapic_count < MAX_IOAPICS {
            if let (Some(id), Some(address), Some(gsi_base)) =
                (mem.read_u8(p + 2), mem.read_u32(p + 4), mem.read_u32(p + 8))
            {
                acpi.ioapics[acpi.ioapic_count] = IoApic { id, address, gsi_base };
                acpi.ioapic_count += 1;
            }
        }
        p += u64::from(size);
    }
}

/// Finds virtio-mmio devices (`_HID "LNRO0005"`) in the AML at `at`, `len`
/// bytes long (see the module docs); returns how many were stored in `out`.
pub fn find_virtio_mmio(mem: &dyn PhysMem, at: u64, len: u64, out: &mut [VirtioMmio]) -> usize {
    const HID: &[u8; 8] = b"LNRO0005";
    const WINDOW: u64 = 128; // where the _CRS must start after the _HID
    let mut n = 0;
    let mut window = [0u8; 8];
    let mut i = 0;
    while i + 8 <= len && n < out.len() {
        if !mem.read(at + i, &mut window) || &window != HID {
            i += 1;
            continue;
        }
        let search_end = (i + 8 + WINDOW).min(len);
        let found = (i + 8..search_end).find_map(|j| resources_at(mem, at + j, at + len));
        if let Some(dev) = found {
            out[n] = dev;
            n += 1;
        }
        i += 8;
    }
    n
}

/// A Memory32Fixed descriptor (0x86, length 9) directly followed by an
/// Extended Interrupt descriptor (0x89) with at least one interrupt, both
/// before `end`.
fn resources_at(mem: &dyn PhysMem, at: u64, end: u64) -> Option<VirtioMmio> {
    if at + 12 + 9 > end {
        return None;
    }
    let mut head = [0u8; 3];
    if !mem.read(at, &mut head) || head != [0x86, 0x09, 0x00] {
        return None;
    }
    let (base, size) = (mem.read_u32(at + 4)?, mem.read_u32(at + 8)?);
    let irq_at = at + 12;
    let mut irq_head = [0u8; 5];
    if !mem.read(irq_at, &mut irq_head) || irq_head[0] != 0x89 || irq_head[4] == 0 {
        return None;
    }
    if u16::from_le_bytes([irq_head[1], irq_head[2]]) < 6 {
        return None;
    }
    let irq = mem.read_u32(irq_at + 5)?;
    Some(VirtioMmio { base: base.into(), size: size.into(), irq })
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
        header(&mut mem, 0xe3000, b"APIC", 44 + 8 * 3 + 16 + 2 * 12);
        mem.put(0xe302c, &[0, 8, 0, 0, 1, 0, 0, 0]);
        mem.put(0xe3034, &[0, 8, 1, 1, 1, 0, 0, 0]);
        mem.put(0xe303c, &[0, 8, 2, 7, 0, 0, 0, 0]); // disabled
        mem.put(0xe3044, &[9, 16, 0, 0, 0x00, 0x01, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0]);
        mem.put(0xe3054, &[1, 12, 2, 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0, 0]);
        mem.put(0xe3060, &[1, 12, 3, 0, 0x00, 0x00, 0xc1, 0xfe, 24, 0, 0, 0]);
        fix_checksum(&mut mem, 0xe3000, 44 + 64, 0xe3009);
        let mut aml = vec![b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00];
        aml.extend_from_slice(&virtio_device_aml(0xfeb0_0e00, 31));
        aml.extend_from_slice(&virtio_device_aml(0xfeb0_0c00, 30));
        header(&mut mem, 0xe4000, b"DSDT", 36 + aml.len() as u32 + 4);
        mem.put(0xe4024 + 4, &aml);
        fix_checksum(&mut mem, 0xe4000, 36 + aml.len() + 4, 0xe4009);
        mem
    }

    /// The AML QEMU's microvm writes for one virtio-mmio transport.
    fn virtio_device_aml(base: u32, irq: u32) -> Vec<u8> {
        let mut crs = vec![0x86, 0x09, 0x00, 0x01];
        crs.extend_from_slice(&base.to_le_bytes());
        crs.extend_from_slice(&512u32.to_le_bytes());
        crs.extend_from_slice(&[0x89, 0x06, 0x00, 0x09, 0x01]);
        crs.extend_from_slice(&irq.to_le_bytes());
        crs.extend_from_slice(&[0x79, 0x00]);
        let mut body = b"VR00\x08_HID\x0dLNRO0005\x00\x08_UID\x00\x08_CCA\x01".to_vec();
        body.extend_from_slice(&[0x08, b'_', b'C', b'R', b'S', 0x11, crs.len() as u8 + 3, 0x0a]);
        body.push(crs.len() as u8);
        body.extend_from_slice(&crs);
        let mut dev = vec![0x5b, 0x82, body.len() as u8 + 1];
        dev.extend_from_slice(&body);
        dev
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
        assert_eq!(
            acpi.ioapics(),
            &[
                IoApic { id: 2, address: 0xfec0_0000, gsi_base: 0 },
                IoApic { id: 3, address: 0xfec1_0000, gsi_base: 24 }
            ]
        );
        assert_eq!(
            acpi.virtio(),
            &[
                VirtioMmio { base: 0xfeb0_0e00, size: 512, irq: 31 },
                VirtioMmio { base: 0xfeb0_0c00, size: 512, irq: 30 }
            ]
        );
    }

    #[test]
    fn virtio_scan_ignores_a_hid_without_resources() {
        let mut mem = Buffer::new(0, 0x1000);
        mem.put(0x10, b"LNRO0005\0\x08_CRS\x11\x05\x0a\x02\x79\x00");
        let aml = virtio_device_aml(0xd000_0000, 5);
        mem.put(0x200, &aml);
        let mut out = [VirtioMmio::default(); 4];
        assert_eq!(find_virtio_mmio(&mem, 0, 0x1000, &mut out), 1);
        assert_eq!(out[0], VirtioMmio { base: 0xd000_0000, size: 512, irq: 5 });
        // A table cut inside the resources finds nothing and does not read past it.
        assert_eq!(find_virtio_mmio(&mem, 0x200, aml.len() as u64 - 6, &mut out), 0);
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
