//! The few legacy devices the core emulates itself: the serial console,
//! the power registers, the i8042 keyboard controller (its reset line, and a
//! keyboard the host presses Ctrl-Alt-Del on) and, when asked for, the boot
//! timer. (Everything else a guest uses is a virtio device.)

pub mod boot_timer;
pub mod i8042;
pub mod power;
pub mod serial;
