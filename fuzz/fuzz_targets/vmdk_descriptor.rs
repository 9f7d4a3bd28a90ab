//! Fuzz target: a byte buffer as a VMDK text descriptor, in a folder holding a flat extent
//! `f.vmdk` and a sparse extent `s-s001.vmdk` (both restored before each run) that it may name.
#![no_main]

#[path = "common.rs"]
mod common;

use bulkhead_disk::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Writes of the previous run must not change what this one sees.
    common::reset_extents();
    if let Some(img) = common::open_bytes("desc.vmdk", data, Format::Vmdk) {
        common::workout(img.as_ref(), data);
    }
});
