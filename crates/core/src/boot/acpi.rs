//! ACPI tables for a hardware-reduced x86 machine: RSDP, XSDT, FADT, MADT and
//! a DSDT describing the serial port, the virtio-mmio devices and `\_S5`.
//!
//! Guests find the CPUs in the MADT, power off by writing SLP_TYP|SLP_EN to
//! the FADT's sleep control register and reset through its reset register;
//! both are I/O ports the core emulates (see `legacy::power`).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{self, ports};

const OEM_ID: [u8; 6] = *b"BLKHD ";
const OEM_TABLE: [u8; 8] = *b"BULKHEAD";
/// SLP_TYP the guest writes for S5 (soft off); `\_S5` says so.
pub const S5_SLEEP_TYPE: u8 = 5;

/// A virtio-mmio device window to describe in the DSDT.
#[derive(Clone, Copy, Debug)]
pub struct MmioDevice {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables do not fit in their {0} KiB region")]
    TooLarge(u64),
    #[error("cannot write the ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Writes the tables at [`layout::ACPI_START`]; returns the RSDP address.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    cpus: u8,
    devices: &[MmioDevice],
) -> Result<u64, AcpiError> {
    let rsdp_addr = layout::ACPI_START;
    let mut next = rsdp_addr + 64;
    let mut place = |bytes: &[u8]| -> Result<u64, AcpiError> {
        let at = next;
        if at + bytes.len() as u64 > layout::ACPI_START + layout::ACPI_SIZE {
            return Err(AcpiError::TooLarge(layout::ACPI_SIZE >> 10));
        }
        mem.write_slice(bytes, GuestAddress(at)).map_err(AcpiError::Write)?;
        next = (at + bytes.len() as u64 + 15) & !15;
        Ok(at)
    };
    let dsdt = place(dsdt(devices).as_slice())?;
    let fadt = place(&bytes_of(&fadt(dsdt)))?;
    let madt = place(&bytes_of(&madt(cpus)))?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    let xsdt = place(&bytes_of(&xsdt))?;
    let rsdp = Rsdp::new(OEM_ID, xsdt);
    mem.write_slice(&bytes_of(&rsdp), GuestAddress(rsdp_addr)).map_err(AcpiError::Write)?;
    Ok(rsdp_addr)
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_register(port: u16) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port.into())
}

fn fadt(dsdt: u64) -> acpi_tables::fadt::FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = io_register(ports::ACPI_RESET);
    fadt.reset_value = ports::ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_register(ports::ACPI_SLEEP_CONTROL);
    fadt.sleep_status_reg = io_register(ports::ACPI_SLEEP_STATUS);
    // IA-PC boot architecture flags: an i8042 on ports 0x60/0x64 (bit 1: Linux probes it
    // without PNP then), no VGA (bit 2), no CMOS RTC (bit 5).
    fadt.iapc_boot_arch = ((1u16 << 1) | (1 << 2) | (1 << 5)).into();
    fadt.finalize()
}

fn madt(cpus: u8) -> MADT {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        LocalInterruptController::Address(layout::LAPIC_START as u32),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, layout::IOAPIC_START as u32, 0));
    madt
}

fn dsdt(devices: &[MmioDevice]) -> Sdt {
    let mut body = Vec::new();
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8]))
        .to_aml_bytes(&mut body);
    let com1_io = aml::IO::new(ports::COM1, ports::COM1, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, ports::COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::EISAName::new("PNP0501");
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &com1_hid),
            &aml::Name::new("_UID".into(), &1u8),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut body);
    for (i, dev) in devices.iter().enumerate() {
        body.extend_from_slice(&virtio_device(i, dev));
    }
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    sdt.append_slice(&body);
    sdt
}

/// A virtio-mmio device as Linux's `virtio_mmio` ACPI driver matches it (LNRO0005).
fn virtio_device(index: usize, dev: &MmioDevice) -> Vec<u8> {
    let mem = aml::Memory32Fixed::new(true, dev.base as u32, dev.size as u32);
    let irq = aml::Interrupt::new(true, true, false, false, dev.irq);
    let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
    let path = format!("_SB_.V{index:03X}");
    let uid = index as u32;
    let mut out = Vec::new();
    aml::Device::new(
        path.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend as _;

    fn checksum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn read(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dev = MmioDevice { base: layout::VIRTIO_MMIO_START, size: 0x1000, irq: 5 };
        let rsdp = write_tables(&mem, 4, &[dev]).unwrap();
        let head = read(&mem, rsdp, 36);
        assert_eq!(&head[..8], b"RSD PTR ");
        assert_eq!(checksum(&head[..20]), 0);
        assert_eq!(checksum(&head), 0);
        let xsdt = u64::from_le_bytes(head[24..32].try_into().unwrap());
        let len = mem.read_obj::<u32>(GuestAddress(xsdt + 4)).unwrap() as usize;
        let xsdt_bytes = read(&mem, xsdt, len);
        assert_eq!(checksum(&xsdt_bytes), 0);
        let mut sigs = Vec::new();
        for entry in xsdt_bytes[36..].chunks(8) {
            let at = u64::from_le_bytes(entry.try_into().unwrap());
            let len = mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap() as usize;
            let table = read(&mem, at, len);
            assert_eq!(checksum(&table), 0, "{:?}", &table[..4]);
            sigs.push(table[..4].to_vec());
            if &table[..4] == b"APIC" {
                // 44-byte header, 4 local APICs of 8 bytes, one I/O APIC of 12.
                assert_eq!(len, 44 + 4 * 8 + 12);
            }
            if &table[..4] == b"FACP" {
                let dsdt = u64::from_le_bytes(table[140..148].try_into().unwrap());
                let dlen = mem.read_obj::<u32>(GuestAddress(dsdt + 4)).unwrap() as usize;
                let dsdt = read(&mem, dsdt, dlen);
                assert_eq!(checksum(&dsdt), 0);
                let has = |n: &[u8]| dsdt.windows(n.len()).any(|w| w == n);
                assert!(has(b"_S5_") && has(b"LNRO0005") && has(b"COM1"));
            }
        }
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
        assert!(mem.num_regions() == 1);
    }
}
