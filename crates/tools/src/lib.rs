//! Bulkhead's tools, mounted by the binary as subcommands and never run by a
//! VM's core or its compartments:
//! - [`mod@bench`]: `bulkhead bench …`, measurements side by side;
//! - [`report`]: `bulkhead report tcb`, the trusted core's size;
//! - [`disk`]: `bulkhead disk …`, the disk image tools;
//! - [`guest`]: `bulkhead guest write`, the built-in guest as a file.

pub mod bench;
pub mod disk;
pub mod guest;
pub mod report;
