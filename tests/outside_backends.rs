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

/// QEMU 7.2's virtiofsd, as `scripts/install-qemu.sh` installs it: `$BULKHEAD_VIRTIOFSD`, else
/// the wrapper in Bulkhead's cache folder.
fn virtiofsd() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("BULKHEAD_VIRTIOFSD").filter(|v| !v.is_empty()) {
        return path.into();
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let cache = std::env::var_os("BULKHEAD_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(std::path::PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|p| p.join("bulkhead"))
        })
        .or_else(|| home.map(|h| h.join(".cache/bulkhead")))
        .expect("HOME is set");
    let wrapper = cache.join("qemu-7.2/bin/virtiofsd");
    assert!(
        wrapper.is_file(),
        "virtiofsd is needed for these tests: run scripts/install-qemu.sh (or set \
         BULKHEAD_VIRTIOFSD), looked for {}",
        wrapper.display()
    );
    wrapper
}

/// virtiofsd sharing `folder` on `socket`, once it listens. It serves one frontend and exits
/// when that one disconnects.
fn start_virtiofsd(folder: &Path, socket: &Path) -> Daemon {
    let _ = std::fs::remove_file(socket);
    let mut child = Command::new(virtiofsd())
        .arg(format!("--socket-path={}", socket.display()))
        .args(["-o", &format!("source={}", folder.display()), "-o", "cache=none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start virtiofsd");
    let start = Instant::now();
    while !socket.exists() {
        assert!(child.try_wait().unwrap().is_none(), "virtiofsd ended at once");
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Daemon(child)
}

/// A host folder through QEMU's virtiofsd, a backend Bulkhead did not write and whose device
/// type Bulkhead has no backend of its own for: the guest's FUSE client mounts the tag the
/// user gave, reads a file the host put there (its hash checked here) and writes one the host
/// then reads (the disk pattern, checked here), in both modes (the core's part does not
/// depend on the mode; the VMM's wiring does).
#[test]
fn virtiofsd_serves_a_host_folder_to_the_guest() {
    require_kvm();
    for mode in ["microkernel", "monolithic"] {
        let dir = TempDir::new(&format!("virtiofs-{mode}"));
        let share = dir.0.join("share");
        std::fs::create_dir(&share).unwrap();
        let hello = b"written by the host, read by the guest\n".repeat(300);
        std::fs::write(share.join("hello.txt"), &hello).unwrap();
        let socket = dir.0.join("fs.sock");
        let daemon = start_virtiofsd(&share, &socket);
        let spec = format!("fs,socket={},tag=hostshare", socket.display());
        let mut cmd = common::bulkhead();
        cmd.args(["run", "--mode", mode, "--vhost-user", &spec, "--cmdline"]);
        cmd.arg(
            "bulkhead.run=fs bulkhead.fs_read=hello.txt bulkhead.fs_write=from-guest.bin \
             bulkhead.bytes=20000 bulkhead.seed=7",
        );
        let r = Running::start(&mut cmd).wait(T);
        drop(daemon);
        assert_eq!(r.code, 0, "{mode}: {}", r.stderr);
        let check = r.assert_check("fs");
        assert_eq!(check["tag"], "hostshare");
        assert_eq!(check["read_bytes"], hello.len().to_string());
        assert_eq!(check["read_fnv"], format!("{:#018x}", common::fnv1a64(&hello)));
        let written = std::fs::read(share.join("from-guest.bin")).unwrap();
        assert!(
            written == common::pattern(7, 20000),
            "{mode}: the host reads what the guest wrote"
        );
    }
}

/// What a user can get wrong about an outside backend is said before anything starts.
#[test]
fn a_bad_vhost_user_device_is_refused_clearly() {
    for (spec, says) in [
        ("floppy,socket=x.sock", "unknown device type \"floppy\""),
        ("99,socket=x.sock", "unknown device type \"99\""),
        ("fs,tag=share", "give the socket as socket=PATH"),
        ("vsock,socket=x.sock,queues=0", "queues must be a number from 1 to 64"),
        ("blk,socket=x.sock,tag=share", "unknown option \"tag=share\""),
        ("fs,socket=x.sock,tag=a-tag-longer-than-thirty-six-bytes-for-sure", "1 to 36 bytes"),
    ] {
        let r = common::run(&["run", "--vhost-user", spec], T);
        assert_eq!(r.code, 1, "{spec}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{spec}: {}", r.stderr);
    }
    // A socket with nothing behind it names the socket.
    let dir = TempDir::new("no-backend");
    let spec = format!("vsock,socket={}", dir.0.join("absent.sock").display());
    let r = common::run(&["run", "--vhost-user", &spec], T);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("absent.sock"), "{}", r.stderr);
}
