//! Power control: the ACPI hardware-reduced sleep control, sleep status
//! and reset registers the FADT names. (The i8042's reset line, which Linux
//! uses with `reboot=k` or when ACPI reset fails, is in [`super::i8042`].)

use crate::bus::BusDevice;
use crate::exit::{ExitLatch, VmExit};
use crate::layout::ports;

/// SLP_EN and the SLP_TYP field of the sleep control register.
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// The ACPI registers at [`ports::ACPI_SLEEP_CONTROL`]..+3.
pub struct AcpiPower {
    exit: ExitLatch,
    s5_sleep_type: u8,
}

impl AcpiPower {
    pub fn new(exit: ExitLatch, s5_sleep_type: u8) -> Self {
        AcpiPower { exit, s5_sleep_type }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset + u64::from(ports::ACPI_SLEEP_CONTROL) {
            p if p == u64::from(ports::ACPI_SLEEP_CONTROL) => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if value & SLP_EN != 0 && sleep_type == self.s5_sleep_type {
                    self.exit.request(VmExit::PowerOff);
                }
            }
            p if p == u64::from(ports::ACPI_RESET) && value == ports::ACPI_RESET_VALUE => {
                self.exit.request(VmExit::Reboot);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_reset_reboots() {
        let exit = ExitLatch::new().unwrap();
        let mut acpi = AcpiPower::new(exit.clone(), 5);
        acpi.write(0, &[5 << 2]); // SLP_TYP without SLP_EN: nothing
        assert!(!exit.is_set());
        acpi.write(0, &[(5 << 2) | SLP_EN]);
        assert_eq!(exit.get(), Some(VmExit::PowerOff));

        let exit = ExitLatch::new().unwrap();
        AcpiPower::new(exit.clone(), 5).write(2, &[ports::ACPI_RESET_VALUE]);
        assert_eq!(exit.get(), Some(VmExit::Reboot));
    }
}
