//! `bulkhead bench fs`: sequential reads and writes of 4 KiB, one request at a time, through
//! the built-in guest's FUSE client against the Rust virtiofsd, as Bulkhead's compartment,
//! started by the bench beside Bulkhead's core (unsandboxed), and beside QEMU microvm.
//!
//! The share holds a file of `SIZE` filled with data, which the reads go through from its
//! start again and again; the writes go to another file, from its start again after `SIZE`.
//! Every subject runs virtiofsd with the same options (`--sandbox=none --seccomp=none`: in
//! the compartment, Bulkhead's sandbox is the one that confines it). Bulkhead has no
//! virtio-fs backend of its own, so there is no microkernel-vs-monolithic pair here.

use std::path::Path;

use super::io::{self, Attach, Workload};
use super::outside::{self, Backend, Specs};
use super::IoArgs;

/// The tag the guest finds the share by.
const TAG: &str = "bench";
/// The size of the file read, and where writes start again.
const SIZE: u64 = 64 << 20;

fn workloads() -> [Workload; 2] {
    let w = |label, mode: &str, file: &str| Workload {
        label,
        cmdline: format!(
            "bulkhead.run=fs bulkhead.fs_bench={mode} bulkhead.fs_file={file} bulkhead.bytes={SIZE}"
        ),
        metrics: &["mib_s", "p50_us", "p99_us"],
    };
    [
        w("4 KiB sequential read, one at a time", "read", "read.bin"),
        w("4 KiB sequential write, one at a time", "write", "written.bin"),
    ]
}

/// The three ways to run `virtiofsd` on the folder `share`, its sockets in `dir`.
fn specs(program: &Path, dir: &Path, share: &Path) -> Specs {
    let socket = dir.join("virtiofsd.sock");
    let args = [
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={}", share.display()),
        "--sandbox=none".into(),
        "--seccomp=none".into(),
    ];
    Specs {
        device: format!(
            "fs,tag={TAG},rw={0},exec={1} --socket-path={{socket}} --shared-dir={0} \
             --sandbox=none --seccomp=none",
            share.display(),
            program.display()
        ),
        stale: Vec::new(),
        backend: Backend {
            program: program.to_path_buf(),
            args: args.into_iter().map(Into::into).collect(),
            socket,
            stale: Vec::new(),
            log: dir.join("virtiofsd.log"),
        },
        vhost_user: format!("fs,tag={TAG}"),
        qemu_device: format!("vhost-user-fs-device,tag={TAG}"),
    }
}

/// The share: a folder of the compartment's user holding `read.bin`, `SIZE` of data.
fn make_share(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let share = dir.join("share");
    std::fs::create_dir_all(&share)?;
    let image = io::filled_image(&share, SIZE)?;
    let file = share.join("read.bin");
    std::fs::rename(image, &file)?;
    outside::chown_to_compartment(&share)?;
    outside::chown_to_compartment(&file)?;
    Ok(share)
}

pub fn run(args: &IoArgs) -> anyhow::Result<i32> {
    if args.outside {
        anyhow::bail!("--outside is for bench blk (every subject here has an outside backend)");
    }
    let program =
        outside::find_cached("BULKHEAD_RUST_VIRTIOFSD", "virtiofsd-1.14.0/bin/virtiofsd")?;
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        let share = make_share(&dir)?;
        // As in bench vsock, a failed run is run again (said on stderr).
        let opts = io::Options { retries: 2, ..args.options() };
        let workloads = workloads();
        let samples = io::with_guest(|guest| {
            let subjects = outside::subjects(specs(&program, &dir, &share), guest, opts.with_qemu)?;
            io::measure_subjects(&subjects, &[Attach::Folder(share.clone())], &workloads, &opts)
        })?;
        io::print_table(
            "bench fs (Rust virtiofsd 1.14.0, 64 MiB file; Bulkhead has no virtio-fs backend \
             of its own, so no microkernel/monolithic pair)",
            &samples,
            &workloads,
            &opts,
            &outside::ratios(&samples),
        );
        Ok(0)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_runs_virtiofsd_with_the_same_options() {
        let s = specs(Path::new("/c/virtiofsd"), Path::new("/t"), Path::new("/t/share"));
        assert_eq!(
            s.device,
            "fs,tag=bench,rw=/t/share,exec=/c/virtiofsd --socket-path={socket} \
             --shared-dir=/t/share --sandbox=none --seccomp=none"
        );
        let args: Vec<_> = s.backend.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--socket-path=/t/virtiofsd.sock",
                "--shared-dir=/t/share",
                "--sandbox=none",
                "--seccomp=none"
            ]
        );
        assert_eq!(s.vhost_user, "fs,tag=bench");
        assert_eq!(s.qemu_device, "vhost-user-fs-device,tag=bench");
        assert!(workloads()[1]
            .cmdline
            .contains("bulkhead.fs_bench=write bulkhead.fs_file=written.bin"));
    }
}
