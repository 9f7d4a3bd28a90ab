//! Fuzz target: a byte buffer opened as a qcow2 image, then read, written and checked.
#![no_main]

#[path = "common.rs"]
mod common;

use bulkhead_disk::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(img) = common::open_bytes("image-qcow2", data, Format::Qcow2) {
        common::workout(img.as_ref(), data);
    }
});
