pub static GUEST_ELF: &[u8] = &[];
