//! Backends Bulkhead did not write, attached with `--vhost-user`: QEMU's storage daemon as the
//! block device's backend, killed and started again under a running guest, costs the guest a
//! pause and nothing else.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_kvm, Running, TempDir};

const T: Duration = Duration::from_secs(180);

/// A daemon killed when dropped (a failing test leaves none behind).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `qemu-storage-daemon` exporting the raw `image` as a writable vhost-user-blk on `socket`,
/// once it listens.
fn storage_daemon(image: &Path, socket: &Path) -> Daemon {
    let _ = std::fs::remove_file(socket);
    let blockdev = format!("driver=file,node-name=disk,filename={}", image.display());
    let export = format!(
        "type=vhost-user-blk,id=e,node-name=disk,writable=on,addr.type=unix,addr.path={}",
        socket.display()
    );
    let mut child = Command::new("qemu-storage-daemon")
        .args(["--blockdev", &blockdev, "--export", &export])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-storage-daemon is needed for these tests (qemu-utils)");
    let start = Instant::now();
    while !socket.exists() {
        assert!(child.try_wait().unwrap().is_none(), "qemu-storage-daemon ended at once");
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "qemu-storage-daemon never listened");
        std::thread::sleep(Duration::from_millis(5));
    }
    Daemon(child)
}

/// How many times the VM's device 0 was restarted, once it is running again (its API socket
/// `api`); waits up to 10 s.
fn restarts_once_running(api: &Path) -> u64 {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(10), "the device did not run again");
        std::thread::sleep(Duration::from_millis(10));
        let Ok(mut stream) = UnixStream::connect(api) else { continue };
        stream.write_all(b"{\"version\":1,\"request\":\"status\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        let device = &reply["result"]["status"]["devices"][0];
        if device["state"] == "running" {
            return device["restarts"].as_u64().unwrap();
        }
    }
}

/// The daemon is SIGKILLed 20 times at random moments of blk-stress (one request at a time,
/// each write pass verified by a read pass) and started again on the same socket. The daemon
/// offers no inflight region, so Bulkhead replays from the used index and must kick the new
/// daemon for the request the old one took with it: without that kick the guest's request was
/// never served ("the device did not answer before the deadline").
#[test]
fn qemu_storage_daemon_killed_twenty_times_costs_the_guest_a_pause() {
    require_kvm();
    const KILLS: usize = 20;
    let dir = TempDir::new("qsd-kills");
    let size = 4 << 20;
    let image = dir.file("disk.raw", &vec![0u8; size]);
    let socket = dir.0.join("blk.sock");
    let mut daemon = storage_daemon(&image, &socket);
    let spec = format!("blk,socket={}", socket.display());
    let run_dir = dir.0.join("run");
    let mut cmd = common::bulkhead();
    cmd.env("BULKHEAD_RUN_DIR", &run_dir);
    cmd.args(["run", "--name", "qsd", "--vhost-user", &spec, "--cmdline"]);
    cmd.arg("bulkhead.run=blk-stress bulkhead.seconds=15 bulkhead.seed=3");
    let mut vm = Running::start(&mut cmd);
    let mut rng = std::process::id() as u64;
    let api = run_dir.join("qsd.sock");
    for kill in 0..KILLS {
        // Each kill hits a daemon Bulkhead is connected to, at a random moment of its service.
        assert_eq!(restarts_once_running(&api), kill as u64);
        rng = common::splitmix64(rng);
        std::thread::sleep(Duration::from_millis(50 + rng % 300));
        assert!(vm.is_running(), "the VM ended after {kill} kills");
        drop(daemon);
        daemon = storage_daemon(&image, &socket);
    }
    assert!(vm.is_running(), "the VM ended before the last kill was served");
    let r = vm.wait(T);
    drop(daemon);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.assert_check("blk-stress");
    assert_eq!(r.stderr.matches("blk0 restarted").count(), KILLS, "{}", r.stderr);
    let rounds: u64 = check["rounds"].parse().unwrap();
    let bytes = std::fs::read(&image).unwrap();
    assert!(bytes == common::pattern(3 + rounds - 1, size), "the image holds the last pass");
}
