//! Backends Bulkhead did not write: attached with `--vhost-user` (QEMU's storage daemon as the
//! block device's backend, killed and started again under a running guest, costs the guest a
//! pause and nothing else; virtiofsd; vhost-device-vsock), and started by Bulkhead itself as
//! compartments with `--device …,exec=` (confined, supervised, their failures said clearly).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_linux_guest::storage_daemon::StorageDaemon;
use common::compartments::children;
use common::{require_kvm, Running, TempDir};

const T: Duration = Duration::from_secs(180);

/// A daemon killed when dropped (a failing test leaves none behind).
struct Daemon(Child);

impl Daemon {
    /// Starts `cmd` (stdin and stdout closed, stderr to a file beside `ready`) and waits up to
    /// 10 s for `ready` to exist; a daemon that ends first, or does not make it in time, fails
    /// the test with what it said.
    fn start(mut cmd: Command, ready: &Path) -> Daemon {
        let name = cmd.get_program().to_string_lossy().into_owned();
        let log = ready.with_extension("log");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let start = Instant::now();
        while !ready.exists() {
            let ended = child.try_wait().unwrap().is_some();
            if ended || start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let how = if ended { "ended at once" } else { "did not start in 10 s" };
                panic!("{name} {how}: {said}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Daemon(child)
    }
}

impl Daemon {
    /// SIGKILLs the daemon and reaps it.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `qemu-storage-daemon` exporting the raw `image` as a writable vhost-user-blk on `socket`,
/// once it listens.
fn storage_daemon(image: &Path, socket: &Path) -> StorageDaemon {
    StorageDaemon::vhost_user_blk(image, socket, true)
        .expect("qemu-storage-daemon is needed for these tests (qemu-utils)")
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

/// Bulkhead's cache folder, where the install scripts put QEMU, virtiofsd and
/// vhost-device-vsock.
fn cache_dir() -> std::path::PathBuf {
    bulkhead_linux_guest::dirs::cache_dir().expect("a cache folder")
}

/// QEMU 7.2's virtiofsd, as `scripts/install-qemu.sh` installs it: `$BULKHEAD_VIRTIOFSD`, else
/// the wrapper in Bulkhead's cache folder.
fn virtiofsd() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("BULKHEAD_VIRTIOFSD").filter(|v| !v.is_empty()) {
        return path.into();
    }
    let wrapper = cache_dir().join("qemu-7.2/bin/virtiofsd");
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
    let mut cmd = Command::new(virtiofsd());
    cmd.arg(format!("--socket-path={}", socket.display()));
    cmd.args(["-o", &format!("source={}", folder.display()), "-o", "cache=none"]);
    Daemon::start(cmd, socket)
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

/// vhost-device-vsock for guest CID 3 on `socket`, its host side on `uds` (Firecracker's
/// hybrid vsock: the host connects to `uds` and writes `CONNECT PORT`; a guest connecting to
/// the host's port P reaches `uds_P`), once it listens on both. It removes `socket` as soon as
/// a frontend connects (vhost-user-backend's listener goes with its one connection), so the
/// host side's socket, made first, is what shows it started: a core reconnecting after a
/// restart can take `socket` before this sees it.
fn start_vsock_device(socket: &Path, uds: &Path) -> Daemon {
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_file(uds);
    let mut cmd = Command::new(common::vhost_device_vsock());
    cmd.args(["--guest-cid", "3", "--socket"]).arg(socket).arg("--uds-path").arg(uds);
    Daemon::start(cmd, uds)
}

/// One line from `stream`, read byte by byte (nothing after it is taken); empty on an error.
fn read_line(mut stream: &UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while std::io::Read::read(&mut stream, &mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Waits (up to 10 s) for `path` to exist.
fn wait_path(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "{} never came", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A host connection to the guest's `port` through the hybrid socket `uds`, retried while the
/// device is not there yet, and when its `OK` does not come within a second:
/// vhost-device-vsock drops a connection the host makes before the guest's driver has its
/// queues ("received a backend event before vring initialization").
fn vsock_connect(uds: &Path, port: u32) -> UnixStream {
    let start = Instant::now();
    loop {
        // The device may be going away (a kill): any error means try again.
        if let Ok(mut stream) = UnixStream::connect(uds) {
            stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            if stream.write_all(format!("CONNECT {port}\n").as_bytes()).is_ok()
                && read_line(&stream).starts_with("OK ")
            {
                return stream;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no vsock connection in 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `data` on `stream` and reads the echo back (from a second thread, so that neither
/// side's buffers fill up); the echo, or the error that ended it.
fn echo_round(stream: &UnixStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut reader = stream.try_clone()?;
    let want = data.len();
    let echo = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(want);
        let mut chunk = [0u8; 65536];
        while got.len() < want {
            let n = std::io::Read::read(&mut reader, &mut chunk)?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(got)
    });
    let sent = (&*stream).write_all(data);
    let got = echo.join().unwrap()?;
    sent?;
    if got.len() < want {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(got)
}

/// Bulkhead's core in front of rust-vmm's vsock backend, Firecracker's hybrid vsock on the
/// host side: three host connections to a guest that echoes (100,000 bytes each), then a
/// guest that connects to the host and checks 1 MiB echoed by it.
#[test]
fn vhost_device_vsock_carries_streams_both_ways() {
    require_kvm();
    let dir = TempDir::new("vsock");
    let (socket, uds) = (dir.0.join("vhu.sock"), dir.0.join("vsock"));
    let device = start_vsock_device(&socket, &uds);
    wait_path(&socket);
    let spec = format!("vsock,socket={}", socket.display());
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--vhost-user", &spec, "--cmdline"]);
    cmd.arg(
        "bulkhead.run=vsock bulkhead.vsock_listen=1234 bulkhead.vsock_conns=3 \
         bulkhead.timeout_ms=30000",
    );
    let vm = Running::start(&mut cmd);
    for round in 0..3u64 {
        let stream = vsock_connect(&uds, 1234);
        let data = common::pattern(round, 100_000);
        assert!(echo_round(&stream, &data).unwrap() == data, "connection {round}: the echo");
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let r = vm.wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.assert_check("vsock");
    assert_eq!((check["conns"].as_str(), check["bytes"].as_str()), ("3", "300000"));
    drop(device);

    // The guest connects: the device reaches the host's listener at `uds_5000`.
    let device = start_vsock_device(&socket, &uds);
    wait_path(&socket);
    let listener = std::os::unix::net::UnixListener::bind(dir.0.join("vsock_5000")).unwrap();
    let host = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut echoed = 0;
        let mut chunk = [0u8; 65536];
        loop {
            let n = std::io::Read::read(&mut conn, &mut chunk).unwrap_or(0);
            if n == 0 {
                return echoed;
            }
            conn.write_all(&chunk[..n]).unwrap();
            echoed += n;
        }
    });
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--vhost-user", &spec, "--cmdline"]);
    cmd.arg("bulkhead.run=vsock bulkhead.vsock_connect=5000 bulkhead.bytes=1048576");
    let r = Running::start(&mut cmd).wait(T);
    drop(device);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.assert_check("vsock")["bytes"], "1048576");
    assert_eq!(host.join().unwrap(), 1 << 20);
}

/// Host connections to the guest's echo on port 1234 through `uds`, 200,000 bytes each, until
/// `conns` were echoed whole, with `kills` of the backend by `kill` while every other
/// connection's first half is on its way; after each kill, the core serves again (its API
/// socket `api`) before the host connects again. A connection made right after a restart can
/// be lost: vhost-device-vsock answers `OK` before the core has handed it the queues, and
/// drops the guest's side of it ("received a backend event before vring initialization"); a
/// client times out and connects again, as it would over TCP.
fn echo_across_kills(
    vm: &mut Running,
    uds: &Path,
    api: &Path,
    conns: usize,
    kills: usize,
    mut kill: impl FnMut(),
) {
    let (mut completed, mut killed, mut lost) = (0, 0, 0);
    while completed < conns {
        assert!(vm.is_running(), "the VM ended after {completed} connections");
        let stream = vsock_connect(uds, 1234);
        let data = common::pattern(completed as u64, 200_000);
        if killed < kills && completed % 2 == 1 {
            let sender = stream.try_clone().unwrap();
            let half = data[..100_000].to_vec();
            let writer = std::thread::spawn(move || (&sender).write_all(&half));
            std::thread::sleep(Duration::from_millis(20));
            kill();
            killed += 1;
            let _ = writer.join();
            while restarts_once_running(api) < killed as u64 {
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let Ok(echo) = echo_round(&stream, &data) else {
            lost += 1;
            assert!(lost <= 2 * kills, "{lost} connections lost");
            continue;
        };
        assert!(echo == data, "connection {completed}: the echo");
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        completed += 1;
    }
}

/// The vsock backend SIGKILLed five times, during a connection's transfer, and started again
/// on its socket: Bulkhead reconnects, the connections open at a kill are lost (as a TCP
/// connection is when its peer restarts), and the device does not wedge: eight connections
/// complete, each echoed whole. The guest gives up on a connection silent for 2 s.
#[test]
fn a_killed_vsock_backend_costs_its_open_connections_only() {
    require_kvm();
    const KILLS: usize = 5;
    let dir = TempDir::new("vsock-kills");
    let (socket, uds) = (dir.0.join("vhu.sock"), dir.0.join("vsock"));
    let mut device = start_vsock_device(&socket, &uds);
    wait_path(&socket);
    let spec = format!("vsock,socket={}", socket.display());
    let run_dir = dir.0.join("run");
    let mut cmd = common::bulkhead();
    cmd.env("BULKHEAD_RUN_DIR", &run_dir);
    cmd.args(["run", "--name", "vsk", "--vhost-user", &spec, "--cmdline"]);
    cmd.arg(
        "bulkhead.run=vsock bulkhead.vsock_listen=1234 bulkhead.vsock_conns=8 \
         bulkhead.timeout_ms=30000 bulkhead.vsock_idle_ms=2000",
    );
    let mut vm = Running::start(&mut cmd);
    let api = run_dir.join("vsk.sock");
    echo_across_kills(&mut vm, &uds, &api, 8, KILLS, || {
        device.kill();
        device = start_vsock_device(&socket, &uds);
    });
    let r = vm.wait(T);
    drop(device);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.assert_check("vsock");
    assert_eq!(check["conns"], "8");
    assert_eq!(r.stderr.matches("vsock0 restarted").count(), KILLS, "{}", r.stderr);
}

// Outside backends Bulkhead starts itself (`--device TYPE,…,exec=PROGRAM ARGS…`): each runs in
// a compartment (its own namespaces, an empty root holding only what it is handed, the overflow
// user, no capabilities, its profile's seccomp list) and is started again when it fails.

/// The Rust virtiofsd, as `scripts/install-deps.sh` installs it: `$BULKHEAD_RUST_VIRTIOFSD`,
/// else `cargo install`'s copy in Bulkhead's cache folder.
fn rust_virtiofsd() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("BULKHEAD_RUST_VIRTIOFSD").filter(|v| !v.is_empty()) {
        return path.into();
    }
    let program = cache_dir().join("virtiofsd-1.14.0/bin/virtiofsd");
    assert!(
        program.is_file(),
        "the Rust virtiofsd is needed for these tests: run scripts/install-deps.sh (or set \
         BULKHEAD_RUST_VIRTIOFSD), looked for {}",
        program.display()
    );
    program
}

/// The program of the VM `core`'s outside device `name` (the one child of its launcher,
/// `bulkhead outside --name NAME`), other than `not`, once it runs; waits up to 10 s.
fn outside_program(core: u32, name: &str, not: Option<i32>) -> i32 {
    let start = Instant::now();
    loop {
        let launchers = children(core as i32, |args| {
            args.get(1) == Some(&b"outside".as_slice())
                && args.windows(2).any(|w| w[0] == b"--name" && w[1] == name.as_bytes())
        });
        if let [launcher] = launchers[..] {
            if let [program] = children(launcher, |_| true)[..] {
                if Some(program) != not {
                    return program;
                }
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no {name} program came up in 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the kernel says of `pid` under `key` in `/proc/PID/status`.
fn proc_status(pid: i32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap();
    line[key.len() + 1..].split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The program runs confined: the overflow user, no capability in any set, seccomp filtering
/// (mode 2) with no new privileges, and a mount namespace other than the test's.
fn assert_confined(pid: i32) {
    assert_eq!(proc_status(pid, "Uid"), "65534 65534 65534 65534", "pid {pid}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_status(pid, set), "0000000000000000", "pid {pid}: {set}");
    }
    assert_eq!(proc_status(pid, "Seccomp"), "2", "pid {pid}");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1", "pid {pid}");
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(ns(&pid.to_string()), ns("self"), "pid {pid}: the host's mount namespace");
}

/// Gives a path to the overflow user, as whoever hands files to an outside backend must.
fn chown_to_compartment(path: &Path) {
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
}

/// qemu-storage-daemon started by Bulkhead as a compartment, with its built-in profile: it
/// runs confined, and SIGKILLed five times at random moments of blk-stress it is started again
/// by Bulkhead's supervisor, the guest seeing a pause and no error, the image holding the last
/// pass.
#[test]
fn qemu_storage_daemon_as_a_compartment_comes_back_from_kills() {
    require_kvm();
    const KILLS: usize = 5;
    let dir = TempDir::new("qsd-compartment");
    let size = 4 << 20;
    let image = dir.file("disk.raw", &vec![0u8; size]);
    chown_to_compartment(&image);
    let spec = format!(
        "blk,rw={0},exec=qemu-storage-daemon --blockdev driver=file,node-name=d,filename={0} \
         --export type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={{socket}},\
         writable=on",
        image.display()
    );
    let run_dir = dir.0.join("run");
    let mut cmd = common::bulkhead();
    cmd.env("BULKHEAD_RUN_DIR", &run_dir);
    cmd.args(["run", "--name", "qsdc", "--device", &spec, "--cmdline"]);
    cmd.arg("bulkhead.run=blk-stress bulkhead.seconds=12 bulkhead.seed=5");
    let mut vm = Running::start(&mut cmd);
    let api = run_dir.join("qsdc.sock");
    let mut rng = std::process::id() as u64;
    let mut program = None;
    for kill in 0..KILLS {
        // The supervisor has seen the last kill and serves through a new program.
        while restarts_once_running(&api) < kill as u64 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = outside_program(vm.id(), "blk0", program);
        assert_confined(pid);
        rng = common::splitmix64(rng);
        std::thread::sleep(Duration::from_millis(50 + rng % 300));
        assert!(vm.is_running(), "the VM ended after {kill} kills");
        // SAFETY: killing a program this test's VMM started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        program = Some(pid);
    }
    let r = vm.wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.assert_check("blk-stress");
    assert_eq!(r.stderr.matches("blk0 restarted").count(), KILLS, "{}", r.stderr);
    assert!(r.stderr.contains("qemu-storage-daemon was killed by signal 9"), "{}", r.stderr);
    let rounds: u64 = check["rounds"].parse().unwrap();
    let bytes = std::fs::read(&image).unwrap();
    assert!(bytes == common::pattern(5 + rounds - 1, size), "the image holds the last pass");
}

/// The Rust virtiofsd started by Bulkhead as a compartment, from the folder that holds the
/// share and with relative paths, as a user types it: the guest reads the host's file and
/// writes one the host reads back; the program sees nothing of the host but the share.
#[test]
fn virtiofsd_as_a_compartment_shares_a_folder_by_a_relative_path() {
    require_kvm();
    let dir = TempDir::new("virtiofsd-compartment");
    let share = dir.0.join("share");
    std::fs::create_dir(&share).unwrap();
    let hello = b"read through a sandboxed virtiofsd\n".repeat(200);
    std::fs::write(share.join("hello.txt"), &hello).unwrap();
    chown_to_compartment(&share);
    chown_to_compartment(&share.join("hello.txt"));
    std::fs::write(dir.0.join("secret.txt"), b"not handed").unwrap();
    let spec = format!(
        "fs,tag=docs,rw=share,exec={} --socket-path={{socket}} --shared-dir=share \
         --sandbox=none --seccomp=none",
        rust_virtiofsd().display()
    );
    let mut cmd = common::bulkhead();
    cmd.current_dir(&dir.0);
    cmd.args(["run", "--device", &spec, "--cmdline"]);
    // `probe` first keeps the VM, and virtiofsd, there for 2 s to be looked at: virtiofsd ends
    // with its client, and the fs workload alone can be over before a loaded host lets this
    // test look.
    cmd.arg(
        "bulkhead.run=probe,fs bulkhead.fs_read=hello.txt bulkhead.fs_write=from-guest.bin \
         bulkhead.bytes=30000 bulkhead.seed=9",
    );
    let mut vm = Running::start(&mut cmd);
    let pid = outside_program(vm.id(), "fs0", None);
    assert_confined(pid);
    // Its root holds the share and not the file beside it.
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap());
    assert!(vm.is_running(), "the VM ended before its program could be looked at");
    assert!(inside(&share.join("hello.txt")).exists(), "the share is in the program's root");
    assert!(!inside(&dir.0.join("secret.txt")).exists(), "a file beside the share is not");
    let r = vm.wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.assert_check("fs");
    assert_eq!(check["tag"], "docs");
    assert_eq!(check["read_bytes"], hello.len().to_string());
    assert_eq!(check["read_fnv"], format!("{:#018x}", common::fnv1a64(&hello)));
    let written = std::fs::read(share.join("from-guest.bin")).unwrap();
    assert!(written == common::pattern(9, 30000), "the host reads what the guest wrote");
}

/// vhost-device-vsock started by Bulkhead as a compartment, its hybrid socket in a folder it
/// is handed: host connections reach the guest's echo, and when the program is SIGKILLed (three
/// times, while a connection's bytes are on their way) Bulkhead starts it again and new
/// connections work (the open one is lost, as over TCP).
#[test]
fn vhost_device_vsock_as_a_compartment_comes_back_from_kills() {
    require_kvm();
    const KILLS: usize = 3;
    let dir = TempDir::new("vsock-compartment");
    let host = dir.0.join("host");
    std::fs::create_dir(&host).unwrap();
    chown_to_compartment(&host);
    let uds = host.join("vsock");
    let spec = format!(
        "vsock,rw={0},exec={1} --guest-cid 3 --socket {{socket}} --uds-path {2}",
        host.display(),
        common::vhost_device_vsock().display(),
        uds.display()
    );
    let run_dir = dir.0.join("run");
    let mut cmd = common::bulkhead();
    cmd.env("BULKHEAD_RUN_DIR", &run_dir);
    cmd.args(["run", "--name", "vskc", "--device", &spec, "--cmdline"]);
    cmd.arg(
        "bulkhead.run=vsock bulkhead.vsock_listen=1234 bulkhead.vsock_conns=6 \
         bulkhead.timeout_ms=60000 bulkhead.vsock_idle_ms=2000",
    );
    let mut vm = Running::start(&mut cmd);
    let api = run_dir.join("vskc.sock");
    let (core, mut program) = (vm.id(), None);
    echo_across_kills(&mut vm, &uds, &api, 6, KILLS, || {
        let pid = outside_program(core, "vsock0", program);
        assert_confined(pid);
        // SAFETY: killing a program this test's VMM started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        program = Some(pid);
    });
    let r = vm.wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.assert_check("vsock")["conns"], "6");
    assert_eq!(r.stderr.matches("vsock0 restarted").count(), KILLS, "{}", r.stderr);
}

/// What can go wrong with an outside program is said clearly: before anything starts for a
/// bad spec, and with the program's own words when it fails to start, or how it ended when
/// its seccomp profile stopped it.
#[test]
fn a_bad_outside_backend_is_refused_clearly() {
    for (spec, says) in [
        ("blk,ro=/tmp", "give the backend's program last, as exec=PROGRAM"),
        ("blk,exec=", "exec= names no program"),
        ("blk,exec=no-such-backend-program --socket {socket}", "no such program in $PATH"),
        ("blk,exec=/nonexistent/qsd --socket {socket}", "/nonexistent/qsd"),
        ("blk,exec=qemu-storage-daemon --help", "put {socket} in the program's arguments"),
        ("blk,exec=/bin/cat '{socket}", "unbalanced quotes"),
        ("blk,exec=/bin/cat {socket}", "no seccomp profile for /bin/cat"),
        ("blk,profile=/nonexistent.json,exec=/bin/cat {socket}", "no built-in profile"),
        ("blk,seccomp=sometimes,exec=/bin/cat {socket}", "seccomp is on, log or off"),
        ("blk,colour=red,exec=/bin/cat {socket}", "unknown option \"colour=red\""),
        ("warp,exec=/bin/cat {socket}", "unknown device type \"warp\""),
        (
            "blk,rw=/nonexistent/disk.raw,seccomp=off,exec=/bin/cat {socket}",
            "/nonexistent/disk.raw",
        ),
    ] {
        let r = common::run(&["run", "--device", spec], T);
        assert_eq!(r.code, 1, "{spec}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{spec}: {}", r.stderr);
    }
}

/// A program that fails to start: its own error output is shown, with how it ended; one that
/// makes a call its profile does not list is killed and the message says how to find which.
#[test]
fn an_outside_program_that_fails_says_why() {
    require_kvm();
    let dir = TempDir::new("outside-fails");
    // qemu-storage-daemon refuses an image that is not there, in its own words.
    let spec = format!(
        "blk,exec=qemu-storage-daemon --blockdev driver=file,node-name=d,filename={} \
         --export type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={{socket}}",
        dir.0.join("missing.raw").display()
    );
    let r = common::run(&["run", "--device", &spec], T);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("missing.raw"), "{}", r.stderr);
    assert!(r.stderr.contains("No such file or directory"), "{}", r.stderr);
    assert!(r.stderr.contains("exited with status 1"), "{}", r.stderr);
    // A profile without the calls qemu-storage-daemon makes to listen on its socket.
    let image = dir.file("disk.raw", &vec![0u8; 1 << 20]);
    chown_to_compartment(&image);
    let profile = dir.file("tight.json", br#"{"syscalls": ["read", "write", "exit_group"]}"#);
    let spec = format!(
        "blk,rw={0},profile={1},exec=qemu-storage-daemon --blockdev \
         driver=file,node-name=d,filename={0} --export \
         type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={{socket}}",
        image.display(),
        profile.display()
    );
    let r = common::run(&["run", "--device", &spec], T);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("SIGSYS"), "{}", r.stderr);
    assert!(r.stderr.contains("seccomp=log"), "{}", r.stderr);
}

/// `seccomp=log` runs a program with the calls its profile lacks allowed, and names them: at
/// the first of each, and at the end as a profile's list to paste.
#[test]
fn seccomp_log_names_the_calls_a_profile_lacks() {
    require_kvm();
    let dir = TempDir::new("outside-log");
    let image = dir.file("disk.raw", &vec![0u8; 1 << 20]);
    chown_to_compartment(&image);
    let profile = dir.file("empty.json", br#"{"syscalls": []}"#);
    let spec = format!(
        "blk,rw={0},profile={1},seccomp=log,exec=qemu-storage-daemon --blockdev \
         driver=file,node-name=d,filename={0} --export \
         type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path={{socket}},writable=on",
        image.display(),
        profile.display()
    );
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--device", &spec, "--cmdline"]);
    cmd.arg("bulkhead.run=blk-stress bulkhead.seconds=1 bulkhead.seed=2");
    let r = Running::start(&mut cmd).wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_check("blk-stress");
    assert!(r.stderr.contains("seccomp log: qemu-storage-daemon called pwrite64"), "{}", r.stderr);
    let summary =
        r.stderr.lines().find(|l| l.contains("a profile that allows all it did")).unwrap();
    let list = &summary[summary.find("\"syscalls\": ").unwrap() + 12..];
    let calls: Vec<String> = serde_json::from_str(list).unwrap();
    for call in ["bind", "listen", "accept4", "pread64", "pwrite64", "recvmsg"] {
        assert!(calls.iter().any(|c| c == call), "{call} in {calls:?}");
    }
}
