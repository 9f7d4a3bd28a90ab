//! Several threads writing, reading and discarding through one `&dyn DiskImage` at once, as
//! virtio-blk queue threads do: the result must be what each thread wrote, and the image clean.

mod common;

use bulkhead_disk::tools::{self, CreateSpec};
use bulkhead_disk::{DiskImage, Format, Qcow2CreateOptions, VmdkCreateOptions, VmdkSubformat};
use common::*;
use std::path::Path;

const THREADS: u64 = 4;
/// Each thread owns an interleaved set of 48 KiB slots, so threads share clusters and tables.
const SLOT: u64 = 48 * 1024;
const SLOTS: u64 = 96;

fn hammer(img: &dyn DiskImage) -> Vec<u8> {
    let size = img.virtual_size();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                let mut rng = Rng(t + 1);
                for round in 0..3u8 {
                    for slot in (t..SLOTS).step_by(THREADS as usize) {
                        let data = vec![(t as u8) * 16 + round + 1; SLOT as usize];
                        img.write_at(&data, slot * SLOT).unwrap();
                        let mut back = vec![0u8; SLOT as usize];
                        img.read_at(&mut back, slot * SLOT).unwrap();
                        assert_eq!(back, data, "thread {t} lost its own write to slot {slot}");
                        if rng.below(4) == 0 {
                            img.flush().unwrap();
                        }
                    }
                }
            });
        }
    });
    let mut model = vec![0u8; size as usize];
    for slot in 0..SLOTS {
        let t = slot % THREADS;
        model[(slot * SLOT) as usize..((slot + 1) * SLOT) as usize].fill((t as u8) * 16 + 3);
    }
    model
}

fn run(path: &Path, spec: &CreateSpec, format: &str) {
    tools::create(path, SLOTS * SLOT + 1000, spec).unwrap();
    let fmt: Format = format.parse().unwrap();
    let model = {
        let img = open_rw(path, fmt);
        let model = hammer(img.as_ref());
        img.flush().unwrap();
        assert_eq!(first_diff(&read_all(img.as_ref()), &model), None);
        model
    };
    let raw = path.with_extension("raw");
    std::fs::write(&raw, &model).unwrap();
    assert_qemu_check_clean(path, format);
    assert_qemu_compare(&raw, path, format);
}

#[test]
fn concurrent_writers_on_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let small = CreateSpec::Qcow2(Qcow2CreateOptions { cluster_size: 4096, ..Default::default() });
    run(&dir.path().join("c.qcow2"), &small, "qcow2");
    run(&dir.path().join("d.qcow2"), &CreateSpec::Qcow2(Qcow2CreateOptions::default()), "qcow2");
}

#[test]
fn concurrent_writers_on_vmdk() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [VmdkSubformat::MonolithicSparse, VmdkSubformat::MonolithicFlat] {
        let spec = CreateSpec::Vmdk(VmdkCreateOptions { subformat: sub, zeroed_grain: false });
        run(&dir.path().join(format!("{}.vmdk", sub.name())), &spec, "vmdk");
    }
}
