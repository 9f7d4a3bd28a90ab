//! `bulkhead disk`'s exit codes, against images QEMU's tools wrote or check.

use std::path::Path;
use std::process::Command;

use bulkhead_disk::{open, DiskImage, Format, OpenOptions};
use bulkhead_tools::disk::{run, DiskCommand};

fn qemu(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required by this test (install qemu-utils): {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn qemu_io(args: &[&str]) {
    qemu("qemu-io", args)
}

fn qemu_img(args: &[&str]) {
    qemu("qemu-img", args)
}

fn open_rw(path: &Path, format: Format) -> Box<dyn DiskImage> {
    let options = OpenOptions { read_only: false, format: Some(format), ..Default::default() };
    open(path, &options).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

#[test]
fn cli_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.vmdk");
    let create = DiskCommand::Create {
        file: a.clone(),
        size: Some("1M".into()),
        format: "qcow2".into(),
        subformat: None,
        backing: None,
        backing_format: None,
        cluster_size: None,
    };
    assert_eq!(run(create).unwrap(), 0);
    let convert = DiskCommand::Convert {
        input: a.clone(),
        output: b.clone(),
        format: "vmdk".into(),
        subformat: Some("monolithicSparse".into()),
        allow_outside_paths: false,
        force_share: false,
    };
    assert_eq!(run(convert).unwrap(), 0);
    assert_eq!(
        run(DiskCommand::Compare { a: a.clone(), b: b.clone(), force_share: false }).unwrap(),
        0
    );
    assert_eq!(
        run(DiskCommand::Check {
            file: a.clone(),
            json: true,
            allow_outside_paths: false,
            force_share: false
        })
        .unwrap(),
        0
    );
    assert_eq!(
        run(DiskCommand::Info {
            file: b.clone(),
            json: true,
            allow_outside_paths: false,
            force_share: false
        })
        .unwrap(),
        0
    );
    open_rw(&b, Format::Vmdk).write_at(&[1], 5).unwrap();
    assert_eq!(run(DiskCommand::Compare { a: a.clone(), b, force_share: false }).unwrap(), 1);
    // A leaked cluster makes check exit 1: bump the refcount of a free cluster by hand.
    qemu_io(&["-f", "qcow2", "-c", "write 0 64k", a.to_str().unwrap()]);
    let leak = dir.path().join("leak.qcow2");
    qemu_img(&["create", "-f", "qcow2", leak.to_str().unwrap(), "1M"]);
    let mut bytes = std::fs::read(&leak).unwrap();
    // The refcount block is cluster 2 (64 KiB clusters); cluster 9 gets refcount 1.
    bytes[2 * 65536 + 9 * 2 + 1] = 1;
    std::fs::write(&leak, &bytes).unwrap();
    assert_eq!(
        run(DiskCommand::Check {
            file: leak,
            json: false,
            allow_outside_paths: false,
            force_share: false
        })
        .unwrap(),
        1
    );
}
