//! Fuzz target: a byte buffer opened as a vmdk stream image, then read, written and checked.
#![no_main]

#[path = "common.rs"]
mod common;

use bulkhead_disk::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(img) = common::open_bytes("image-vmdk_stream", data, Format::Vmdk) {
        common::workout(img.as_ref(), data);
    }
});
