//! Images the crate creates and writes pass `qemu-img check` and `qemu-img compare` against
//! the expected raw content; the crate's tools work on them.

mod common;

use bulkhead_disk::tools::{self, CreateSpec};
use bulkhead_disk::{
    DiskImage, Format, OpenOptions, Qcow2CreateOptions, Qcow2Version, VmdkCreateOptions,
    VmdkSubformat,
};
use common::*;
use std::path::Path;

/// Not a multiple of any cluster or grain size.
const SIZE: u64 = 5 * 1024 * 1024 + 3 * 512;

/// Random writes, overwrites, partial-cluster writes, discards and zeroings, mirrored in `model`.
fn exercise(img: &dyn DiskImage, model: &mut [u8], seed: u64, ops: usize) {
    let mut rng = Rng(seed);
    let size = model.len() as u64;
    for i in 0..ops {
        let len = match rng.below(4) {
            0 => rng.below(600) + 1,
            1 => rng.below(70_000) + 1,
            2 => 65536,
            _ => rng.below(300_000) + 1,
        }
        .min(size);
        let off = rng.below(size - len + 1);
        let range = off as usize..(off + len) as usize;
        match rng.below(10) {
            0 => {
                img.write_zeroes(off, len).unwrap();
                model[range].fill(0);
            }
            1 => {
                let before = model[range.clone()].to_vec();
                img.discard(off, len).unwrap();
                let mut after = vec![0u8; len as usize];
                img.read_at(&mut after, off).unwrap();
                for (j, (&a, &b)) in after.iter().zip(&before).enumerate() {
                    assert!(
                        a == b || a == 0,
                        "op {i}: discard made byte {} neither old nor zero",
                        off as usize + j
                    );
                }
                model[range].copy_from_slice(&after);
            }
            _ => {
                let mut data = vec![0u8; len as usize];
                rng.fill(&mut data);
                img.write_at(&data, off).unwrap();
                model[range].copy_from_slice(&data);
            }
        }
        if i % 16 == 0 {
            img.flush().unwrap();
        }
    }
    let got = read_all(img);
    assert_eq!(first_diff(&got, model), None, "read-back differs from the model");
}

fn create_and_exercise(path: &Path, spec: &CreateSpec, seed: u64) -> Vec<u8> {
    tools::create(path, SIZE, spec).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    {
        let img = open_rw(path, spec.format());
        exercise(img.as_ref(), &mut model, seed, 120);
        img.flush().unwrap();
    }
    // A fresh open sees the same.
    let again = read_all(open_ro(path, Some(spec.format())).as_ref());
    assert_eq!(first_diff(&again, &model[..again.len()]), None, "{} after reopen", path.display());
    model
}

fn qcow2(version: Qcow2Version, cluster_size: u64) -> CreateSpec {
    CreateSpec::Qcow2(Qcow2CreateOptions { version, cluster_size, ..Default::default() })
}

fn vmdk(subformat: VmdkSubformat, zeroed_grain: bool) -> CreateSpec {
    CreateSpec::Vmdk(VmdkCreateOptions { subformat, zeroed_grain })
}

#[test]
fn qcow2_written_by_the_crate_passes_qemu_check_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("v3.qcow2", qcow2(Qcow2Version::V3, 65536)),
        ("v2.qcow2", qcow2(Qcow2Version::V2, 65536)),
        ("c4k.qcow2", qcow2(Qcow2Version::V3, 4096)),
        ("c512.qcow2", qcow2(Qcow2Version::V3, 512)),
        ("c2m.qcow2", qcow2(Qcow2Version::V2, 2 << 20)),
    ];
    for (seed, (name, spec)) in cases.iter().enumerate() {
        let path = dir.path().join(name);
        let model = create_and_exercise(&path, spec, seed as u64 + 10);
        let raw = dir.path().join(format!("{name}.raw"));
        std::fs::write(&raw, &model).unwrap();
        assert_qemu_check_clean(&path, "qcow2");
        assert_qemu_compare(&raw, &path, "qcow2");
        let own = open_ro(&path, None).check().unwrap();
        assert!(own.is_clean(), "{name}: {own:?}");
    }
}

#[test]
fn qcow2_refcount_table_grows() {
    // 512-byte clusters: one refcount table cluster covers only 8 MiB of file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grow.qcow2");
    let size = 24u64 << 20;
    tools::create(&path, size, &qcow2(Qcow2Version::V3, 512)).unwrap();
    let mut model = vec![0u8; size as usize];
    {
        let img = open_rw(&path, Format::Qcow2);
        let mut rng = Rng(99);
        for chunk in 0..20u64 {
            let mut data = vec![0u8; 1 << 20];
            rng.fill(&mut data);
            img.write_at(&data, chunk << 20).unwrap();
            model[(chunk << 20) as usize..((chunk + 1) << 20) as usize].copy_from_slice(&data);
        }
        img.discard(3 << 20, 2 << 20).unwrap();
        model[(3 << 20)..(5 << 20)].fill(0);
        img.write_at(&[7u8; 4096], 4 << 20).unwrap();
        model[(4 << 20)..(4 << 20) + 4096].fill(7);
        img.flush().unwrap();
    }
    let raw = dir.path().join("grow.raw");
    std::fs::write(&raw, &model).unwrap();
    assert_qemu_check_clean(&path, "qcow2");
    assert_qemu_compare(&raw, &path, "qcow2");
    let info = qemu_img(&["info", "--output=json", path.to_str().unwrap()]);
    assert!(info.contains("\"cluster-size\": 512"), "{info}");
}

#[test]
fn qcow2_overlay_on_qemu_made_images() {
    let dir = tempfile::tempdir().unwrap();
    let base_raw = dir.path().join("base.raw");
    let mut model = make_reference(&base_raw, SIZE as usize, 5);
    // A compressed base: writes over compressed clusters must merge and free them.
    let comp = dir.path().join("comp.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        base_raw.to_str().unwrap(),
        comp.to_str().unwrap(),
    ]);
    {
        let img = open_rw(&comp, Format::Qcow2);
        exercise(img.as_ref(), &mut model.clone(), 6, 60);
    }
    assert_qemu_check_clean(&comp, "qcow2");

    for (name, version) in [("top3.qcow2", Qcow2Version::V3), ("top2.qcow2", Qcow2Version::V2)] {
        let top = dir.path().join(name);
        let spec = CreateSpec::Qcow2(Qcow2CreateOptions {
            version,
            backing_file: Some("base.raw".into()),
            backing_format: Some(Format::Raw),
            ..Default::default()
        });
        tools::create(&top, SIZE, &spec).unwrap();
        let img = open_rw(&top, Format::Qcow2);
        exercise(img.as_ref(), &mut model, 7, 100);
        drop(img);
        let raw = dir.path().join(format!("{name}.raw"));
        std::fs::write(&raw, &model).unwrap();
        assert_qemu_check_clean(&top, "qcow2");
        assert_qemu_compare(&raw, &top, "qcow2");
        let backing = qemu_img(&["info", "--output=json", top.to_str().unwrap()]);
        assert!(backing.contains("\"backing-filename\": \"base.raw\""), "{backing}");
        // Reset the model to the base for the next overlay.
        model = std::fs::read(&base_raw).unwrap();
    }
}

#[test]
fn vmdk_written_by_the_crate_passes_qemu_check_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("ms.vmdk", vmdk(VmdkSubformat::MonolithicSparse, false)),
        ("mz.vmdk", vmdk(VmdkSubformat::MonolithicSparse, true)),
        ("mf.vmdk", vmdk(VmdkSubformat::MonolithicFlat, false)),
        ("ts.vmdk", vmdk(VmdkSubformat::TwoGbMaxExtentSparse, false)),
        ("tf.vmdk", vmdk(VmdkSubformat::TwoGbMaxExtentFlat, false)),
    ];
    for (seed, (name, spec)) in cases.iter().enumerate() {
        let path = dir.path().join(name);
        let model = create_and_exercise(&path, spec, seed as u64 + 20);
        let raw = dir.path().join(format!("{name}.raw"));
        std::fs::write(&raw, &model).unwrap();
        assert_qemu_check_clean(&path, "vmdk");
        assert_qemu_compare(&raw, &path, "vmdk");
        assert!(open_ro(&path, None).check().unwrap().is_clean(), "{name}");
    }
}

#[test]
fn split_vmdk_written_across_extents() {
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = (4 << 30) + 4096 * 3;
    let boundary: u64 = 2 << 30;
    for sub in [VmdkSubformat::TwoGbMaxExtentSparse, VmdkSubformat::TwoGbMaxExtentFlat] {
        let path = dir.path().join(format!("{}.vmdk", sub.name()));
        tools::create(&path, size, &vmdk(sub, false)).unwrap();
        let img = open_rw(&path, Format::Vmdk);
        assert_eq!(img.info().extents.len(), 3);
        img.write_at(&[0xc3; 10000], boundary - 5000).unwrap();
        img.write_at(&[0x42; 700], size - 700).unwrap();
        img.flush().unwrap();
        drop(img);
        assert_qemu_check_clean(&path, "vmdk");
        let p = path.to_str().unwrap();
        let at = format!("read -P 0xc3 {} 10000", boundary - 5000);
        let end = format!("read -P 0x42 {} 700", size - 700);
        let zero = format!("read -P 0 {} 4096", boundary + 5000);
        let out = qemu_io(&["-f", "vmdk", "-c", &at, "-c", &end, "-c", &zero, p]);
        assert!(!out.contains("Pattern verification failed"), "{out}");
    }
}

#[test]
fn convert_between_all_formats_keeps_content_and_holes() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ref.raw");
    let data = make_reference(&raw, SIZE as usize, 8);
    let opts = OpenOptions::default();
    let targets = [
        ("a.qcow2", qcow2(Qcow2Version::V3, 65536), "qcow2"),
        ("b.qcow2", qcow2(Qcow2Version::V2, 4096), "qcow2"),
        ("c.vmdk", vmdk(VmdkSubformat::MonolithicSparse, false), "vmdk"),
        ("d.vmdk", vmdk(VmdkSubformat::TwoGbMaxExtentFlat, false), "vmdk"),
        ("e.vmdk", vmdk(VmdkSubformat::StreamOptimized, false), "vmdk"),
        ("f.vmdk", vmdk(VmdkSubformat::MonolithicFlat, false), "vmdk"),
        ("g.raw", CreateSpec::Raw, "raw"),
    ];
    let mut previous = raw.clone();
    for (name, spec, fmt) in &targets {
        let out = dir.path().join(name);
        let mut calls = 0;
        tools::convert(&previous, &opts, &out, spec, &mut |_, _| calls += 1).unwrap();
        assert!(calls > 0);
        assert_qemu_compare(&raw, &out, fmt);
        if *fmt != "raw" {
            assert_qemu_check_clean(&out, fmt);
        }
        assert_eq!(tools::compare(&raw, &out, &opts).unwrap(), None, "{name}");
        previous = out;
    }
    // Holes stay holes: the raw output takes less room than its size.
    let raw_out = dir.path().join("g.raw");
    let info = tools::info(&raw_out, &opts).unwrap();
    assert!(
        info.allocated_bytes < SIZE,
        "raw output is not sparse: {} bytes",
        info.allocated_bytes
    );
    // And compare finds a difference where there is one.
    let mut changed = data.clone();
    changed[1_234_567] ^= 1;
    let other = dir.path().join("other.raw");
    std::fs::write(&other, &changed).unwrap();
    assert_eq!(tools::compare(&raw, &other, &opts).unwrap(), Some(1_234_567));
    assert_eq!(
        tools::compare(&dir.path().join("a.qcow2"), &other, &opts).unwrap(),
        Some(1_234_567)
    );
}

const WRITABLE_VMDK: [VmdkSubformat; 4] = [
    VmdkSubformat::MonolithicSparse,
    VmdkSubformat::MonolithicFlat,
    VmdkSubformat::TwoGbMaxExtentSparse,
    VmdkSubformat::TwoGbMaxExtentFlat,
];

/// Disks whose size ends inside a grain (some inside a sector: they are rounded up), created by
/// the crate in every writable subformat with data written in their last bytes, pass
/// `qemu-img check` and `qemu-img compare`.
#[test]
fn vmdk_odd_sizes_created_by_the_crate_pass_qemu() {
    let dir = tempfile::tempdir().unwrap();
    for (seed, (label, size)) in ODD_SIZES.into_iter().enumerate() {
        let raw = dir.path().join(format!("{label}.raw"));
        let data = make_tail_reference(&raw, size, 60 + seed as u64);
        for sub in WRITABLE_VMDK {
            let path = dir.path().join(format!("{label}-{}.vmdk", sub.name()));
            tools::create(&path, size, &vmdk(sub, false)).unwrap();
            let img = open_rw(&path, Format::Vmdk);
            assert_eq!(img.virtual_size(), size.div_ceil(512) * 512, "{label} {}", sub.name());
            let (head, tail) = (data.len().min(4096), data.len() - data.len().min(1536));
            img.write_at(&data[..head], 0).unwrap();
            img.write_at(&data[tail..], tail as u64).unwrap();
            img.flush().unwrap();
            drop(img);
            assert_qemu_check_clean(&path, "vmdk");
            assert_qemu_compare(&raw, &path, "vmdk");
        }
    }
}

/// The same sizes converted from a raw file into every subformat pass `qemu-img check` and
/// `qemu-img compare` and read back identical. A streamOptimized disk's last grain holds only
/// the disk's tail, as QEMU writes it.
#[test]
fn vmdk_odd_sizes_converted_by_the_crate_pass_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let opts = OpenOptions::default();
    for (seed, (label, size)) in ODD_SIZES.into_iter().enumerate() {
        let raw = dir.path().join(format!("{label}.raw"));
        let data = make_tail_reference(&raw, size, 70 + seed as u64);
        for sub in WRITABLE_VMDK.into_iter().chain([VmdkSubformat::StreamOptimized]) {
            let path = dir.path().join(format!("{label}-{}.vmdk", sub.name()));
            tools::convert(&raw, &opts, &path, &vmdk(sub, false), &mut |_, _| {}).unwrap();
            assert_qemu_check_clean(&path, "vmdk");
            assert_qemu_compare(&raw, &path, "vmdk");
            assert_content(
                open_ro(&path, None).as_ref(),
                &data,
                &format!("{label} {}", sub.name()),
            );
        }
        let stream = dir.path().join(format!("{label}-streamOptimized.vmdk"));
        let sectors = size.div_ceil(512) * 512;
        let last = (sectors - 1) / 65536;
        let tail = (sectors - last * 65536) as usize;
        assert_eq!(stream_grain_len(&stream, last), tail, "{label}: the last grain");
    }
}
