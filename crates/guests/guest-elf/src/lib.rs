//! The built-in guest as bytes: a PVH-bootable ELF built from `crates/guests/guest`
//! by this crate's build script.
//!
//! The core boots it when no kernel is given; tests and benchmarks write it
//! to a file to boot it under other VMMs.

/// The built-in guest's ELF image.
pub static GUEST_ELF: &[u8] = include_bytes!(env!("BULKHEAD_GUEST_ELF"));

#[cfg(test)]
mod tests {
    use super::GUEST_ELF;

    #[test]
    fn is_an_x86_64_executable_with_a_pvh_note() {
        assert_eq!(&GUEST_ELF[..4], b"\x7fELF");
        assert_eq!(GUEST_ELF[4], 2, "64-bit class");
        assert_eq!(u16::from_le_bytes([GUEST_ELF[18], GUEST_ELF[19]]), 62, "x86-64");
        let has = |needle: &[u8]| GUEST_ELF.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"Xen\0"), "PVH note name");
        assert!(has(b"Bulkhead\0"), "Bulkhead note name");
    }
}
