//! Images made by qemu-img / qemu-io, in every format and subformat, read back byte-identical
//! through the crate.

mod common;

use bulkhead_disk::{Format, Mapping};
use common::*;
use std::path::Path;

/// Not a multiple of 64 KiB clusters or grains, nor of 4 KiB.
const SIZE: usize = 3 * 1024 * 1024 + 7 * 512;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn assert_reads_as(path: &Path, format: Option<Format>, expected: &[u8]) {
    let img = open_ro(path, format);
    assert_eq!(img.virtual_size() as usize, expected.len(), "size of {}", path.display());
    let got = read_all(img.as_ref());
    if let Some(at) = first_diff(&got, expected) {
        panic!("{} differs from the reference at byte {at}", path.display());
    }
    // map() must never call a range with data "zero".
    let mut pos = 0;
    while pos < img.virtual_size() {
        let (state, run) = img.map(pos, img.virtual_size() - pos).unwrap();
        assert!(run > 0);
        if state == Mapping::Zero {
            assert!(
                expected[pos as usize..(pos + run) as usize].iter().all(|&b| b == 0),
                "{}: map says zero at {pos}",
                path.display()
            );
        }
        pos += run;
    }
}

#[test]
fn qcow2_every_variant_reads_identical() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ref.raw");
    let data = make_reference(&raw, SIZE, 1);
    let variants: &[(&str, &[&str])] = &[
        ("v2.qcow2", &["-o", "compat=0.10"]),
        ("v3.qcow2", &["-o", "compat=1.1"]),
        ("c512.qcow2", &["-o", "cluster_size=512"]),
        ("c2m.qcow2", &["-o", "cluster_size=2M"]),
        ("r1.qcow2", &["-o", "refcount_bits=1"]),
        ("r64.qcow2", &["-o", "refcount_bits=64"]),
        ("zlib.qcow2", &["-c"]),
        ("zlib-v2.qcow2", &["-c", "-o", "compat=0.10"]),
        ("zstd.qcow2", &["-c", "-o", "compression_type=zstd"]),
        ("zlib4k.qcow2", &["-c", "-o", "cluster_size=4096"]),
    ];
    for (name, opts) in variants {
        let img = dir.path().join(name);
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[s(&raw), s(&img)]);
        qemu_img(&args);
        assert_reads_as(&img, None, &data);
        assert!(open_ro(&img, None).check().unwrap().is_clean(), "{name}: own check not clean");
    }
}

#[test]
fn qcow2_zero_clusters_and_backing_chains() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ref.raw");
    let mut data = make_reference(&raw, SIZE, 2);
    let base = dir.path().join("base.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&base)]);
    // Zero clusters (whole and partial) over data.
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -z 65536 196608",
        "-c",
        "write -z 1000000 5000",
        s(&base),
    ]);
    data[65536..65536 + 196608].fill(0);
    data[1_000_000..1_005_000].fill(0);
    assert_reads_as(&base, None, &data);

    // A chain of three: base <- mid (v2) <- top, each with its own writes.
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&mid),
    ]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 0x5a 70000 100000", s(&mid)]);
    data[70000..170000].fill(0x5a);
    qemu_img(&["create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", s(&top)]);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0xa5 150000 30000",
        "-c",
        "write -z 2097152 65536",
        s(&top),
    ]);
    data[150000..180000].fill(0xa5);
    data[2097152..2097152 + 65536].fill(0);
    assert_reads_as(&top, None, &data);

    // A raw backing file, and a shorter backing file (the rest reads as zeros).
    let small = dir.path().join("small.raw");
    std::fs::write(&small, &data[..1 << 20]).unwrap();
    let over = dir.path().join("over-raw.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "small.raw",
        "-F",
        "raw",
        s(&over),
        &SIZE.to_string(),
    ]);
    let mut expected = data[..1 << 20].to_vec();
    expected.resize(SIZE, 0);
    assert_reads_as(&over, None, &expected);

    // A VMDK backing file.
    let vmdk = dir.path().join("base.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", s(&raw), s(&vmdk)]);
    let over_vmdk = dir.path().join("over-vmdk.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-b", "base.vmdk", "-F", "vmdk", s(&over_vmdk)]);
    let reference = std::fs::read(&raw).unwrap();
    assert_reads_as(&over_vmdk, None, &reference);
    let info = open_ro(&top, None).info();
    assert_eq!(info.backing.as_ref().unwrap().backing.as_ref().unwrap().format, Format::Qcow2);
}

#[test]
fn vmdk_every_subformat_reads_identical() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("ref.raw");
    let data = make_reference(&raw, SIZE, 3);
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ] {
        let img = dir.path().join(format!("{sub}.vmdk"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            s(&raw),
            s(&img),
        ]);
        assert_reads_as(&img, None, &data);
        let info = open_ro(&img, None).info();
        assert_eq!(info.subformat.as_deref(), Some(sub));
        assert!(open_ro(&img, None).check().unwrap().is_clean(), "{sub}: own check not clean");
    }
    // Zero grains (GTE 1), written by qemu-io on an image made with zeroed_grain.
    let mut data = data;
    let zg = dir.path().join("zeroed.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", "zeroed_grain=on", s(&raw), s(&zg)]);
    qemu_io(&["-f", "vmdk", "-c", "write -z 131072 262144", s(&zg)]);
    data[131072..131072 + 262144].fill(0);
    assert_reads_as(&zg, Some(Format::Vmdk), &data);
}

#[test]
fn split_vmdk_larger_than_one_extent() {
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = 5 << 30;
    let boundary: u64 = 2 << 30;
    for sub in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let img = dir.path().join(format!("big-{sub}.vmdk"));
        qemu_img(&[
            "create",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            s(&img),
            &size.to_string(),
        ]);
        let across = format!("write -P 0x3c {} 8192", boundary - 4096);
        let second = format!("write -P 0x77 {} 1000", 2 * boundary + 12345);
        let last = format!("write -P 0x11 {} 512", size - 512);
        qemu_io(&["-f", "vmdk", "-c", &across, "-c", &second, "-c", &last, s(&img)]);
        let d = open_ro(&img, None);
        assert_eq!(d.virtual_size(), size);
        assert_eq!(d.info().extents.len(), 3);
        let mut buf = vec![0u8; 12288];
        d.read_at(&mut buf, boundary - 6144).unwrap();
        assert!(buf[..2048].iter().all(|&b| b == 0));
        assert!(buf[2048..10240].iter().all(|&b| b == 0x3c));
        assert!(buf[10240..].iter().all(|&b| b == 0));
        let mut b2 = vec![0u8; 1002];
        d.read_at(&mut b2, 2 * boundary + 12344).unwrap();
        assert_eq!((b2[0], b2[1], b2[1000], b2[1001]), (0, 0x77, 0x77, 0));
        let mut b3 = vec![0u8; 513];
        d.read_at(&mut b3, size - 513).unwrap();
        assert_eq!((b3[0], b3[1], b3[512]), (0, 0x11, 0x11));
    }
}

const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

/// Disks whose size is not a multiple of the grain, some not of the sector either (qemu-img
/// rounds those up to a sector), with data in their last bytes: every subformat reads identical
/// and passes the crate's check. streamOptimized's last grain holds only the disk's tail.
#[test]
fn vmdk_odd_sizes_read_identical() {
    let dir = tempfile::tempdir().unwrap();
    for (seed, (label, size)) in ODD_SIZES.into_iter().enumerate() {
        let raw = dir.path().join(format!("{label}.raw"));
        let data = make_tail_reference(&raw, size, 40 + seed as u64);
        let sectors = size.div_ceil(512) * 512;
        for sub in SUBFORMATS {
            let img = dir.path().join(format!("{label}-{sub}.vmdk"));
            let o = format!("subformat={sub}");
            qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", &o, s(&raw), s(&img)]);
            let what = format!("{label} {sub}");
            let disk = open_ro(&img, None);
            assert_eq!(disk.virtual_size(), sectors, "{what}");
            assert_content(disk.as_ref(), &data, &what);
            assert!(disk.check().unwrap().is_clean(), "{what}: own check not clean");
        }
        let last = (sectors - 1) / 65536;
        let stream = dir.path().join(format!("{label}-streamOptimized.vmdk"));
        let tail = (sectors - last * 65536) as usize;
        assert_eq!(stream_grain_len(&stream, last), tail, "{label}: qemu's last grain");
        // `bulkhead disk convert` of it (the report).
        let back = dir.path().join(format!("{label}-back.raw"));
        let opts = bulkhead_disk::OpenOptions::default();
        let spec = bulkhead_disk::tools::CreateSpec::Raw;
        bulkhead_disk::tools::convert(&stream, &opts, &back, &spec, &mut |_, _| {}).unwrap();
        let mut want = data;
        want.resize(sectors as usize, 0);
        assert!(std::fs::read(&back).unwrap() == want, "{label}: converted back to raw");
    }
}

/// A streamOptimized disk whose last grain is compressed whole (zeros past the disk's end), as
/// other writers may make it, reads the same as QEMU's short last grain.
#[test]
fn vmdk_stream_full_length_last_grain_reads_identical() {
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = (1 << 20) + 1536;
    let raw = dir.path().join("ref.raw");
    let data = make_tail_reference(&raw, size, 50);
    let img = dir.path().join("full-tail.vmdk");
    let o = "subformat=streamOptimized";
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", o, s(&raw), s(&img)]);
    let mut grain = data[1 << 20..].to_vec();
    grain.resize(65536, 0);
    replace_stream_grain(&img, 16, &zlib(&grain));
    assert_eq!(stream_grain_len(&img, 16), 65536);
    assert_content(open_ro(&img, None).as_ref(), &data, "full-length last grain");
    qemu_img(&["compare", "-f", "raw", "-F", "vmdk", s(&raw), s(&img)]);
}
