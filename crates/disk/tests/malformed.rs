//! Malformed images are refused with a clear error naming the file, never a panic, never a huge
//! allocation, never a write to metadata, never a file outside the image's folder.

mod common;

use bulkhead_disk::tools::{self, CreateSpec};
use bulkhead_disk::{
    open, DiskError, Format, OpenOptions, Qcow2CreateOptions, VmdkCreateOptions, VmdkSubformat,
};
use common::*;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn opts(read_only: bool) -> OpenOptions {
    OpenOptions { read_only, format: None, allow_outside_paths: false, ..Default::default() }
}

/// Opens `path` expecting failure; checks the message names `names` and contains `word`.
fn refused(path: &Path, read_only: bool, names: &Path, word: &str) -> DiskError {
    let err = match open(path, &opts(read_only)) {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => e,
    };
    let msg = err.to_string();
    let name = names.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "message does not name {name}: {msg}");
    assert!(msg.contains(word), "message lacks {word:?}: {msg}");
    err
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

fn be64(path: &Path, at: u64) -> u64 {
    let data = std::fs::read(path).unwrap();
    u64::from_be_bytes(data[at as usize..at as usize + 8].try_into().unwrap())
}

/// A qemu-made qcow2 with data in its first cluster, copied fresh for each case.
fn qcow2_case(dir: &Path, name: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&["create", "-q", "-f", "qcow2", s(&p), size]);
    qemu_io(&["-f", "qcow2", "-c", "write -P 1 0 64k", s(&p)]);
    p
}

#[test]
fn qcow2_bad_headers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = qcow2_case(d, "trunc.qcow2", "1M");
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..50]).unwrap();
    refused(&p, true, &p, "truncated");

    let cases: Vec<(&str, u64, Vec<u8>, &str)> = vec![
        ("bits.qcow2", 20, 40u32.to_be_bytes().to_vec(), "cluster_bits"),
        ("bits0.qcow2", 20, 0u32.to_be_bytes().to_vec(), "cluster_bits"),
        ("size.qcow2", 24, u64::MAX.to_be_bytes().to_vec(), "L1 table"),
        ("l1past.qcow2", 40, (1u64 << 40).to_be_bytes().to_vec(), "past the end"),
        ("l1odd.qcow2", 40, 1000u64.to_be_bytes().to_vec(), "multiple of the cluster size"),
        ("rtpast.qcow2", 48, (1u64 << 40).to_be_bytes().to_vec(), "past the end"),
        ("rtnone.qcow2", 56, 0u32.to_be_bytes().to_vec(), "refcount table"),
        ("crypt.qcow2", 32, 1u32.to_be_bytes().to_vec(), "encryption"),
        ("feature.qcow2", 72, (1u64 << 40).to_be_bytes().to_vec(), "incompatible"),
        ("version.qcow2", 4, 4u32.to_be_bytes().to_vec(), "version 4"),
        ("order.qcow2", 96, 7u32.to_be_bytes().to_vec(), "refcount order"),
        ("hlen.qcow2", 100, 100_000u32.to_be_bytes().to_vec(), "header length"),
        ("bname.qcow2", 8, 65530u64.to_be_bytes().to_vec(), "backing file name"),
    ];
    for (name, at, bytes, word) in cases {
        let p = qcow2_case(d, name, "1M");
        if name == "bname.qcow2" {
            patch(&p, 16, &100u32.to_be_bytes());
        }
        patch(&p, at, &bytes);
        refused(&p, true, &p, word);
    }
    // An L1 table of 2^30 entries (8 GiB of memory) is refused before it is allocated.
    let p = qcow2_case(d, "hugel1.qcow2", "1M");
    patch(&p, 24, &(1u64 << 59).to_be_bytes());
    patch(&p, 36, &0x7fff_ffffu32.to_be_bytes());
    refused(&p, true, &p, "32 MiB");
}

#[test]
fn qcow2_bad_tables() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // L2 table past the end of the file.
    let p = qcow2_case(d, "l2past.qcow2", "1M");
    let l1 = be64(&p, 40);
    patch(&p, l1, &((1u64 << 40) | (1 << 63)).to_be_bytes());
    refused(&p, true, &p, "past the end");
    // L2 table on top of the refcount table.
    let p = qcow2_case(d, "l2overlap.qcow2", "1M");
    let (l1, rt) = (be64(&p, 40), be64(&p, 48));
    patch(&p, l1, &(rt | (1 << 63)).to_be_bytes());
    refused(&p, true, &p, "overlaps");
    // Two L1 entries naming one L2 table.
    let p = qcow2_case(d, "l2twice.qcow2", "2G");
    qemu_io(&["-f", "qcow2", "-c", "write -P 2 600M 4k", s(&p)]);
    let l1 = be64(&p, 40);
    let first = be64(&p, l1);
    patch(&p, l1 + 8, &first.to_be_bytes());
    refused(&p, true, &p, "two L1 entries");
    // An L2 table that is also a refcount block (checked when opened for writing).
    let p = qcow2_case(d, "l2rb.qcow2", "1M");
    let (l1, rt) = (be64(&p, 40), be64(&p, 48));
    let block = be64(&p, rt);
    patch(&p, l1, &(block | (1 << 63)).to_be_bytes());
    refused(&p, false, &p, "both an L2 table and a refcount block");
    // A refcount block past the end (checked when opened for writing).
    let p = qcow2_case(d, "rbpast.qcow2", "1M");
    let rt = be64(&p, 48);
    patch(&p, rt, &(1u64 << 40).to_be_bytes());
    refused(&p, false, &p, "refcount block");
    // A data cluster that points at the L1 table: writes refused, the L1 table left alone.
    let p = qcow2_case(d, "data-on-l1.qcow2", "1M");
    let (l1, l2) = (be64(&p, 40), be64(&p, be64(&p, 40)) & 0x00ff_ffff_ffff_fe00);
    patch(&p, l2, &(l1 | (1 << 63)).to_be_bytes());
    let img = open(&p, &opts(false)).unwrap();
    let err = img.write_at(&[0xff; 512], 0).unwrap_err().to_string();
    assert!(err.contains("overlaps metadata") && err.contains("data-on-l1.qcow2"), "{err}");
    assert_eq!(be64(&p, l1) & 0x00ff_ffff_ffff_fe00, l2);
    // A compressed cluster with garbage: an error, no panic.
    let raw = d.join("r.raw");
    std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
    let p = d.join("badzip.qcow2");
    qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", s(&raw), s(&p)]);
    let len = std::fs::metadata(&p).unwrap().len();
    let mut data = std::fs::read(&p).unwrap();
    for b in &mut data[(len as usize - 4096)..] {
        *b = 0xaa;
    }
    std::fs::write(&p, data).unwrap();
    let img = open(&p, &opts(true)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let err = img.read_at(&mut buf, 0).unwrap_err().to_string();
    assert!(err.contains("compressed cluster") && err.contains("badzip.qcow2"), "{err}");
}

#[test]
fn backing_chains_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = d.join("a.qcow2");
    let b = d.join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&b), "1M"]);
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", s(&a)]);
    qemu_img(&["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", s(&b)]);
    assert!(matches!(refused(&a, true, &a, "loops"), DiskError::BackingLoop { .. }));
    let selfloop = d.join("self.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&selfloop), "1M"]);
    qemu_img(&["rebase", "-u", "-b", "self.qcow2", "-F", "qcow2", s(&selfloop)]);
    refused(&selfloop, true, &selfloop, "loops");

    // Missing backing file.
    let orphan = d.join("orphan.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "gone.qcow2",
        "-F",
        "qcow2",
        s(&orphan),
        "1M",
    ]);
    refused(&orphan, true, Path::new("gone.qcow2"), "cannot open");

    // Outside the folder: `..`, an absolute path, a symbolic link; allowed only on request.
    std::fs::create_dir(d.join("in")).unwrap();
    let base = d.join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "1M"]);
    let up = d.join("in/up.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2", s(&up)]);
    assert!(matches!(refused(&up, true, &up, "outside"), DiskError::OutsidePath { .. }));
    let allowed = OpenOptions {
        read_only: true,
        format: None,
        allow_outside_paths: true,
        ..Default::default()
    };
    assert!(open(&up, &allowed).is_ok());
    let abs = d.join("in/abs.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", s(&base), "-F", "qcow2", s(&abs)]);
    refused(&abs, true, &abs, "outside");
    std::os::unix::fs::symlink(&base, d.join("in/link.qcow2")).unwrap();
    let via = d.join("in/via.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "link.qcow2", "-F", "qcow2", s(&via)]);
    refused(&via, true, &via, "outside");

    // A chain longer than the limit.
    let spec = |backing: Option<String>| {
        CreateSpec::Qcow2(Qcow2CreateOptions {
            backing_file: backing,
            backing_format: Some(Format::Qcow2),
            ..Default::default()
        })
    };
    tools::create(&d.join("c0.qcow2"), 1 << 20, &spec(None)).unwrap();
    for i in 1..=bulkhead_disk::MAX_CHAIN_LENGTH + 1 {
        tools::create(
            &d.join(format!("c{i}.qcow2")),
            1 << 20,
            &spec(Some(format!("c{}.qcow2", i - 1))),
        )
        .unwrap();
    }
    let top = d.join(format!("c{}.qcow2", bulkhead_disk::MAX_CHAIN_LENGTH + 1));
    assert!(matches!(open(&top, &opts(true)), Err(DiskError::ChainTooLong { .. })));
}

fn vmdk_case(dir: &Path, name: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&["create", "-q", "-f", "vmdk", s(&p), size]);
    qemu_io(&["-f", "vmdk", "-c", "write -P 3 0 64k", s(&p)]);
    p
}

fn le32(path: &Path, at: u64) -> u32 {
    let data = std::fs::read(path).unwrap();
    u32::from_le_bytes(data[at as usize..at as usize + 4].try_into().unwrap())
}

#[test]
fn vmdk_bad_sparse_headers_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = d.join("trunc.vmdk");
    std::fs::write(&p, b"KDMV\x01\0\0\0").unwrap();
    refused(&p, true, &p, "truncated");
    let cases: Vec<(&str, u64, Vec<u8>, &str)> = vec![
        ("grain.vmdk", 20, 3u64.to_le_bytes().to_vec(), "grain size"),
        ("bigrain.vmdk", 20, (1u64 << 30).to_le_bytes().to_vec(), "grain size"),
        ("cap.vmdk", 12, u64::MAX.to_le_bytes().to_vec(), "grain directory"),
        ("gtes.vmdk", 44, 0u32.to_le_bytes().to_vec(), "grain tables"),
        ("gdpast.vmdk", 56, (1u64 << 30).to_le_bytes().to_vec(), "past the end"),
        ("version.vmdk", 4, 7u32.to_le_bytes().to_vec(), "version 7"),
    ];
    for (name, at, bytes, word) in cases {
        let p = vmdk_case(d, name, "1M");
        patch(&p, at, &bytes);
        refused(&p, true, &p, word);
    }
    // Grain table past the end; two directory entries naming one table; table over the header.
    let p = vmdk_case(d, "gtpast.vmdk", "64M");
    let gd = u64::from(le32(&p, 56)) * 512;
    patch(&p, gd, &(1u32 << 30).to_le_bytes());
    refused(&p, true, &p, "past the end");
    let p = vmdk_case(d, "gttwice.vmdk", "64M");
    let first = le32(&p, gd);
    patch(&p, gd + 4, &first.to_le_bytes());
    refused(&p, true, &p, "named twice");
    let p = vmdk_case(d, "gthead.vmdk", "64M");
    patch(&p, gd, &0u32.to_le_bytes());
    patch(&p, gd, &1u32.to_le_bytes());
    refused(&p, true, &p, "overlaps");
    // A grain that points at the grain directory: writes refused, the directory left alone.
    let p = vmdk_case(d, "grain-on-gd.vmdk", "1M");
    let gd = u64::from(le32(&p, 56));
    let gt = u64::from(le32(&p, gd * 512)) * 512;
    patch(&p, gt, &(gd as u32).to_le_bytes());
    let img = open(&p, &opts(false)).unwrap();
    let err = img.write_at(&[0xff; 512], 0).unwrap_err().to_string();
    assert!(err.contains("overlaps metadata"), "{err}");
    assert_eq!(u64::from(le32(&p, gt)), gd);
    // A streamOptimized file without its footer.
    let raw = d.join("r.raw");
    std::fs::write(&raw, vec![5u8; 1 << 20]).unwrap();
    let p = d.join("nofooter.vmdk");
    let stream = CreateSpec::Vmdk(VmdkCreateOptions {
        subformat: VmdkSubformat::StreamOptimized,
        zeroed_grain: false,
    });
    tools::convert(&raw, &opts(true), &p, &stream, &mut |_, _| {}).unwrap();
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..data.len() - 1536]).unwrap();
    refused(&p, true, &p, "VMDK");
    // A streamOptimized grain whose data is garbage: an error on read, no panic.
    let p = d.join("badgrain.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        s(&raw),
        s(&p),
    ]);
    patch(&p, 65536 + 20, &[0xee; 64]);
    let img = open(&p, &opts(true)).unwrap();
    let mut buf = vec![0u8; 65536];
    let err = img.read_at(&mut buf, 0).unwrap_err().to_string();
    assert!(err.contains("badgrain.vmdk"), "{err}");
}

fn descriptor(dir: &Path, name: &str, extents: &str) -> PathBuf {
    let p = dir.join(name);
    let text = format!("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n{extents}\n");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn vmdk_bad_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("x-flat.vmdk"), vec![0u8; 4096]).unwrap();
    let p = descriptor(d, "missing.vmdk", "RW 8 FLAT \"nowhere-flat.vmdk\" 0");
    refused(&p, true, &p, "does not exist");
    let p = descriptor(d, "up.vmdk", "RW 8 FLAT \"../x-flat.vmdk\" 0");
    refused(&p, true, &p, "outside");
    let p = descriptor(d, "abs.vmdk", "RW 8 FLAT \"/etc/passwd\" 0");
    refused(&p, true, &p, "outside");
    let p = descriptor(d, "twice.vmdk", "RW 8 FLAT \"x-flat.vmdk\" 0\nRW 8 FLAT \"x-flat.vmdk\" 0");
    refused(&p, true, &p, "twice");
    let p = descriptor(d, "itself.vmdk", "RW 8 FLAT \"itself.vmdk\" 0");
    refused(&p, true, &p, "twice");
    let p = descriptor(d, "overflow.vmdk", &"RW 35184372088832 FLAT \"x-flat.vmdk\" 0\n".repeat(2));
    refused(&p, true, &p, "add up");
    let p = descriptor(d, "noext.vmdk", "");
    refused(&p, true, &p, "no extents");
    let p = descriptor(d, "kind.vmdk", "RW 8 VMFSSPARSE \"x-flat.vmdk\"");
    refused(&p, true, &p, "not supported");
    let p = d.join("huge.vmdk");
    std::fs::write(&p, format!("# Disk DescriptorFile\n{}", "#".repeat(2 << 20))).unwrap();
    refused(&p, true, &p, "1 MiB");
    // A sparse extent smaller than the descriptor says.
    tools::create(
        &d.join("small.vmdk"),
        1 << 20,
        &CreateSpec::Vmdk(VmdkCreateOptions {
            subformat: VmdkSubformat::TwoGbMaxExtentSparse,
            zeroed_grain: false,
        }),
    )
    .unwrap();
    let p = descriptor(d, "bigger.vmdk", "RW 99999 SPARSE \"small-s001.vmdk\"");
    refused(&p, true, &p, "holds");
    // A good descriptor still opens, and a read-only extent refuses writes.
    let p = descriptor(d, "good.vmdk", "RDONLY 8 FLAT \"x-flat.vmdk\" 0\nRW 8 ZERO");
    let img = open(&p, &opts(false)).unwrap();
    assert_eq!(img.virtual_size(), 8192);
    assert!(matches!(img.write_at(&[1], 0), Err(DiskError::ReadOnly { .. })));
    assert!(matches!(img.read_at(&mut [0u8; 2], 8191), Err(DiskError::OutOfRange { .. })));
}

/// Reads `len` bytes at `offset` of `path`, expecting a corruption error that names the file
/// and contains `word`.
fn read_refused(path: &Path, offset: u64, len: usize, word: &str) {
    let img = open(path, &opts(true)).unwrap();
    let mut buf = vec![0u8; len];
    let err = img.read_at(&mut buf, offset).unwrap_err();
    assert!(matches!(err, DiskError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "message does not name {name}: {msg}");
    assert!(msg.contains(word), "message lacks {word:?}: {msg}");
}

/// A compressed grain may be shorter than a grain only when it is the disk's last grain and
/// holds exactly the bytes left to the disk's end; any other length is corruption, reported
/// when the grain is read, and the other grains still read.
#[test]
fn vmdk_stream_grain_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 1 MiB + 1,536 bytes: grain 0 is whole, grain 16 (the last) holds 1,536 bytes.
    let size: u64 = (1 << 20) + 1536;
    let raw = d.join("r.raw");
    let data = make_tail_reference(&raw, size, 80);
    let stream = |name: &str| {
        let p = d.join(name);
        let o = "subformat=streamOptimized";
        qemu_img(&["convert", "-q", "-f", "raw", "-O", "vmdk", "-o", o, s(&raw), s(&p)]);
        p
    };
    let tail = &data[1 << 20..];
    let cases: Vec<(&str, u64, Vec<u8>, &str)> = vec![
        // The last grain, shorter or longer than the disk's tail but not a whole grain.
        ("short-tail.vmdk", 16, zlib(&tail[..1024]), "1024 bytes, not 65536 (a grain) or 1536"),
        ("long-tail.vmdk", 16, zlib(&[7u8; 2048]), "2048 bytes, not 65536 (a grain) or 1536"),
        // A grain that is not the last may not be short.
        ("short-first.vmdk", 0, zlib(&data[..1536]), "1536 bytes, not 65536 (a grain)"),
        ("empty-first.vmdk", 0, zlib(&[]), "0 bytes, not 65536 (a grain)"),
        // More than a grain.
        ("over.vmdk", 16, zlib(&[1u8; 65536 + 512]), "more than 65536 bytes"),
        // A stream cut off: an error even though what it holds would be the right length.
        ("cut.vmdk", 16, zlib(tail)[..20].to_vec(), "cannot be read"),
    ];
    for (name, gi, packed, word) in cases {
        let p = stream(name);
        replace_stream_grain(&p, gi, &packed);
        let at = gi * 65536;
        let len = (size - at).min(65536);
        read_refused(&p, at, len as usize, word);
        // A read of one byte of it too.
        read_refused(&p, at + len - 1, 1, word);
        let img = open(&p, &opts(true)).unwrap();
        let other = if gi == 0 { 1 << 20 } else { 0 };
        let mut buf = vec![0u8; 1536];
        img.read_at(&mut buf, other).unwrap();
        assert!(buf[..] == data[other as usize..other as usize + 1536], "{name}: other grain");
    }
}
