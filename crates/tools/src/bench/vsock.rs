//! `bulkhead bench vsock`: round trips and a stream through rust-vmm's vhost-device-vsock
//! (Firecracker's hybrid vsock on the host side), as Bulkhead's compartment, started by the
//! bench beside Bulkhead's core (unsandboxed), and beside QEMU microvm.
//!
//! The guest connects to the host's port 5000; the device reaches the unix socket
//! `<uds>_5000`, where the bench's echo server (a thread per connection) sends every byte
//! back. Bulkhead has no vsock backend of its own (the project chose vhost-device-vsock), so
//! there is no microkernel-vs-monolithic pair here: the compartment/unsandboxed ratio is the
//! cost of Bulkhead's sandbox around the same program, and compartment/QEMU compares the
//! frontends (Bulkhead's core against QEMU's vhost-user-vsock-device) on the same backend.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use anyhow::Context;

use super::io::{self, Attach, Workload};
use super::outside::{self, Backend, Specs};
use super::IoArgs;

/// The host port the guest connects to.
const PORT: u32 = 5000;
/// The size of a round trip's message.
const MSG: usize = 64;

/// Echoes every byte of `conn` back until it ends.
fn echo(mut conn: UnixStream) {
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// The echo server on `path` (open to the compartment's user), for the bench's lifetime.
fn serve_echo(path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    std::thread::Builder::new().name("vsock-echo".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = std::thread::Builder::new().name("vsock-echo-conn".into()).spawn(|| echo(conn));
        }
    })?;
    Ok(())
}

fn workloads() -> [Workload; 2] {
    let connect = format!("bulkhead.run=vsock bulkhead.vsock_connect={PORT}");
    [
        Workload {
            label: "64-byte echo round trips, one at a time",
            cmdline: format!("{connect} bulkhead.vsock_msg={MSG}"),
            metrics: &["round_trips_s", "p50_us", "p99_us"],
        },
        Workload {
            label: "stream echoed by the host (MiB/s each way)",
            cmdline: connect,
            metrics: &["mib_s"],
        },
    ]
}

/// The three ways to run vhost-device-vsock with its hybrid socket `uds` in `dir`.
fn specs(program: &Path, dir: &Path) -> Specs {
    let uds = dir.join("vsock");
    let socket = dir.join("vhu.sock");
    let mut args: Vec<std::ffi::OsString> = vec!["--guest-cid".into(), "3".into()];
    args.extend(["--socket".into(), socket.clone().into_os_string()]);
    args.extend(["--uds-path".into(), uds.clone().into_os_string()]);
    Specs {
        device: format!(
            "vsock,rw={},exec={} --guest-cid 3 --socket {{socket}} --uds-path {}",
            dir.display(),
            program.display(),
            uds.display()
        ),
        stale: vec![uds.clone()],
        backend: Backend {
            program: program.to_path_buf(),
            args,
            socket,
            stale: vec![uds],
            log: dir.join("vhost-device-vsock.log"),
        },
        vhost_user: "vsock".into(),
        qemu_device: "vhost-user-vsock-device".into(),
    }
}

pub fn run(args: &IoArgs) -> anyhow::Result<i32> {
    if args.outside {
        anyhow::bail!("--outside is for bench blk (every subject here has an outside backend)");
    }
    let program = outside::find_cached(
        "BULKHEAD_VHOST_DEVICE_VSOCK",
        "vhost-device-vsock-0.3.0/bin/vhost-device-vsock",
    )?;
    let dir = std::env::temp_dir().join(format!("bulkhead-bench-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        outside::chown_to_compartment(&dir)?;
        serve_echo(&dir.join(format!("vsock_{PORT}")))?;
        // A run that fails anyway (the guest notifies the device again while its connection
        // request goes unanswered) is run again, and said on stderr.
        let opts = io::Options { retries: 2, ..args.options() };
        let workloads = workloads();
        let samples = io::with_guest(|guest| {
            let subjects = outside::subjects(specs(&program, &dir), guest, opts.with_qemu)?;
            io::measure_subjects(&subjects, &[Attach::Folder(dir.clone())], &workloads, &opts)
        })?;
        io::print_table(
            "bench vsock (vhost-device-vsock 0.3.0, hybrid vsock; Bulkhead has no vsock backend \
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
    fn every_subject_runs_the_same_program_on_the_same_hybrid_socket() {
        let s = specs(Path::new("/c/vhost-device-vsock"), Path::new("/t/d"));
        assert_eq!(
            s.device,
            "vsock,rw=/t/d,exec=/c/vhost-device-vsock --guest-cid 3 --socket {socket} \
             --uds-path /t/d/vsock"
        );
        let args: Vec<_> = s.backend.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            ["--guest-cid", "3", "--socket", "/t/d/vhu.sock", "--uds-path", "/t/d/vsock"]
        );
        assert_eq!(
            (s.vhost_user.as_str(), s.qemu_device.as_str()),
            ("vsock", "vhost-user-vsock-device")
        );
        let w = workloads();
        assert!(w[0].cmdline.ends_with("bulkhead.vsock_connect=5000 bulkhead.vsock_msg=64"));
        assert!(!w[1].cmdline.contains("vsock_msg"));
    }
}
