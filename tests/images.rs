//! Disk images as users name and share them: paths relative to where `bulkhead run` was started,
//! in both modes; a compartment that cannot open its image says why; and image locking — two VMs
//! on one image, Bulkhead beside QEMU's storage daemon and tools, both ways, readers sharing, the
//! lock held without a gap across compartment kills and an upgrade.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::compartments::{wait_compartment, wait_compartment_other};
use common::{require_kvm, Run, Running, TempDir};

const T: Duration = Duration::from_secs(120);
const MODES: [&str; 2] = ["microkernel", "monolithic"];

/// `bulkhead ARGS` run in the folder `cwd`.
fn bulkhead_in(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = common::bulkhead();
    cmd.current_dir(cwd).args(args);
    cmd
}

fn run_in(cwd: &Path, args: &[&str]) -> Run {
    Running::start(&mut bulkhead_in(cwd, args)).wait(T)
}

/// A VM that holds `disk` (blk-stress over it for `seconds`), started in `cwd`.
fn holding(cwd: &Path, disk: &str, seconds: u32) -> Running {
    let cmdline = format!("bulkhead.run=blk-stress bulkhead.seconds={seconds} bulkhead.seed=3");
    let vm = Running::start(&mut bulkhead_in(cwd, &["run", "--disk", disk, "--cmdline", &cmdline]));
    // The image is locked once the compartment serves (or, in a monolithic core, once its
    // device thread opened it: the guest's first line comes after).
    wait_compartment(vm.id(), "blk");
    vm
}

/// Asserts that blk-stress ran to its end with every pass verified, and that the image (of
/// `size` bytes, any format) holds its last pass.
fn assert_unharmed(r: &Run, image: &Path, size: usize) {
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.assert_check("blk-stress");
    let rounds: u64 = check["rounds"].parse().unwrap();
    assert!(rounds >= 1, "{}", r.stdout);
    let disk = bulkhead_disk::open(image, &Default::default()).unwrap();
    let mut bytes = vec![0u8; size];
    bulkhead_disk::DiskImage::read_at(disk.as_ref(), &mut bytes, 0).unwrap();
    assert!(bytes == common::pattern(3 + rounds - 1, size), "the image holds the last pass");
}

/// Whether this process could open `image` for writing now (as another VM would).
fn writable_by_another(image: &Path) -> Result<(), String> {
    let opts = bulkhead_disk::OpenOptions { format: None, ..Default::default() };
    bulkhead_disk::open(image, &opts).map(drop).map_err(|e| e.to_string())
}

fn qemu(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program} is needed for these tests (qemu-utils; scripts/install-deps.sh): {e}")
    })
}

#[test]
fn relative_paths_mean_the_folder_run_was_started_in_in_both_modes() {
    require_kvm();
    for mode in MODES {
        let dir = TempDir::new(&format!("relative-{mode}"));
        let size = 1usize << 20;
        dir.file("d.raw", &vec![0u8; size]);
        let cmdline = "bulkhead.run=blk-verify bulkhead.seed=5";
        let r = run_in(&dir.0, &["run", "--mode", mode, "--disk", "d.raw", "--cmdline", cmdline]);
        assert_eq!(r.code, 0, "{mode}: {}", r.stderr);
        r.assert_check("blk-verify");
        let bytes = std::fs::read(dir.0.join("d.raw")).unwrap();
        assert!(bytes == common::pattern(5, size), "{mode}: the guest's pattern is in ./d.raw");

        // A qcow2 image whose backing file is named relative to it, both in a subfolder.
        std::fs::create_dir(dir.0.join("images")).unwrap();
        let base = dir.file("images/base.raw", &common::pattern(9, size));
        let overlay = dir.0.join("images/top.qcow2");
        let out = Command::new("qemu-img")
            .current_dir(dir.0.join("images"))
            .args(["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "top.qcow2"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let cmdline = "bulkhead.run=blk-read-verify bulkhead.seed=9";
        let disk = "images/top.qcow2,format=qcow2,readonly";
        let r = run_in(&dir.0, &["run", "--mode", mode, "--disk", disk, "--cmdline", cmdline]);
        assert_eq!(r.code, 0, "{mode}: {}", r.stderr);
        r.assert_check("blk-read-verify");
        assert!(overlay.exists() && base.exists());
    }
}

#[test]
fn a_missing_image_is_named_in_both_modes() {
    require_kvm();
    for mode in MODES {
        let dir = TempDir::new(&format!("missing-{mode}"));
        let r = run_in(&dir.0, &["run", "--mode", mode, "--disk", "nope.raw"]);
        assert_eq!(r.code, 1, "{mode}: {}", r.stderr);
        let want =
            format!("cannot open {}: No such file or directory", dir.0.join("nope.raw").display());
        assert!(r.stderr.contains(&want), "{mode}: {}", r.stderr);
        assert!(
            !r.stderr.contains("vhost-user"),
            "{mode}: the compartment's own reason: {}",
            r.stderr
        );
        // One line: the compartment does not print it a second time.
        assert_eq!(r.stderr.matches("nope.raw").count(), 1, "{mode}: {}", r.stderr);
    }
}

#[test]
fn a_second_vm_on_an_image_is_refused_and_the_first_is_unharmed() {
    require_kvm();
    for mode in MODES {
        let dir = TempDir::new(&format!("two-{mode}"));
        let size = 2usize << 20;
        let image = dir.file("disk.raw", &vec![0u8; size]);
        let cmdline = "bulkhead.run=blk-stress bulkhead.seconds=3 bulkhead.seed=3";
        let first = Running::start(&mut bulkhead_in(
            &dir.0,
            &["run", "--mode", mode, "--disk", "disk.raw,format=raw", "--cmdline", cmdline],
        ));
        wait_locked(&image);
        for other_mode in MODES {
            let args = ["run", "--mode", other_mode, "--disk", "disk.raw", "--cmdline", cmdline];
            let second = run_in(&dir.0, &args);
            assert_eq!(second.code, 1, "{mode} then {other_mode}: {}", second.stderr);
            let want = format!("{} is in use by another process", image.display());
            assert!(second.stderr.contains(&want), "{}", second.stderr);
            assert!(!second.stdout.contains("BH "), "the second guest never ran");
        }
        assert_unharmed(&first.wait(T), &image, size);
    }
}

/// Waits until a process holds a lock on `image` (its first user has it open), watching
/// `/proc/locks` so as not to take a lock of its own that a starting VM could run into.
fn wait_locked(image: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(image).unwrap().ino();
    let start = Instant::now();
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let held = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let of_image = f.get(5).and_then(|d| d.rsplit(':').next()) == Some(&ino.to_string());
            l.contains("OFDLCK") && of_image
        });
        if held {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{} never got locked", image.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn read_only_users_share_an_image_and_keep_writers_out() {
    require_kvm();
    let dir = TempDir::new("readers");
    let size = 1usize << 20;
    let image = dir.file("disk.raw", &common::pattern(11, size));
    // Each reader verifies the image, then holds it until the test is done with it.
    let cmdline = "bulkhead.run=blk-read-verify bulkhead.seed=11 bulkhead.hold_ms=6000";
    let disk = "disk.raw,format=raw,readonly";
    let mut readers: Vec<Running> = (0..2)
        .map(|_| {
            let args = ["run", "--disk", disk, "--cmdline", cmdline];
            Running::start(&mut bulkhead_in(&dir.0, &args))
        })
        .collect();
    wait_locked(&image);
    let io = qemu("qemu-io", &["-r", "-f", "raw", "-c", "read -P 0 0 0", image.to_str().unwrap()]);
    assert!(io.status.success(), "a QEMU reader shares: {}", String::from_utf8_lossy(&io.stderr));
    let writer = run_in(&dir.0, &["run", "--disk", "disk.raw,format=raw"]);
    assert_eq!(writer.code, 1, "{}", writer.stderr);
    assert!(writer.stderr.contains("in use by another process"), "{}", writer.stderr);
    for reader in &mut readers {
        assert!(reader.is_running(), "a reader ended before the writer was tried");
    }
    for reader in readers {
        let r = reader.wait(T);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.assert_check("blk-read-verify");
    }
}

/// `qemu-storage-daemon` exporting `image` (format `format`) as a writable vhost-user-blk.
struct StorageDaemon(std::process::Child);

impl StorageDaemon {
    fn start(image: &Path, format: &str, socket: &Path) -> std::process::Child {
        let file = format!("driver=file,node-name=file,filename={}", image.display());
        let node = format!("driver={format},node-name=disk,file=file");
        let export = format!(
            "type=vhost-user-blk,id=e,node-name=disk,writable=on,addr.type=unix,addr.path={}",
            socket.display()
        );
        Command::new("qemu-storage-daemon")
            .args(["--blockdev", &file, "--blockdev", &node, "--export", &export])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-storage-daemon is needed for these tests (qemu-utils)")
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn qemus_storage_daemon_and_tools_and_bulkhead_see_each_others_use() {
    require_kvm();
    for format in ["raw", "qcow2"] {
        let dir = TempDir::new(&format!("qemu-{format}"));
        let image = dir.0.join(format!("disk.{format}"));
        let out = qemu("qemu-img", &["create", "-q", "-f", format, image.to_str().unwrap(), "2M"]);
        assert!(out.status.success());
        let disk = format!("disk.{format},format={format}");

        // QEMU holds it: Bulkhead refuses, as a writer and as a reader.
        let socket = dir.0.join("qsd.sock");
        let daemon = StorageDaemon(StorageDaemon::start(&image, format, &socket));
        wait_locked(&image);
        for extra in ["", ",readonly"] {
            let r = run_in(&dir.0, &["run", "--disk", &format!("{disk}{extra}")]);
            assert_eq!(r.code, 1, "{format}{extra}: {}", r.stderr);
            assert!(r.stderr.contains("in use by another process"), "{}", r.stderr);
        }
        let info = common::run(&["disk", "info", image.to_str().unwrap()], T);
        assert_eq!(info.code, 1, "{}", info.stderr);
        let shared = common::run(&["disk", "info", "-U", image.to_str().unwrap()], T);
        assert_eq!(shared.code, 0, "-U reads what another writes: {}", shared.stderr);
        drop(daemon);
        let mut io = Command::new("qemu-io")
            .args(["-f", format, "-c", "sleep 60000", image.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-io is needed for these tests (qemu-utils)");
        wait_locked(&image);
        let r = run_in(&dir.0, &["run", "--disk", &disk]);
        let _ = io.kill();
        let _ = io.wait();
        assert_eq!(r.code, 1, "qemu-io writes it: {}", r.stderr);
        assert!(r.stderr.contains("in use by another process"), "{}", r.stderr);

        // Bulkhead holds it: the daemon, qemu-io and (for qcow2) qemu-img refuse.
        let mut vm = holding(&dir.0, &disk, 8);
        let mut daemon = StorageDaemon::start(&image, format, &socket);
        let status = daemon.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "qemu-storage-daemon started on an image Bulkhead writes");
        assert!(stderr.contains("lock"), "{stderr}");
        let io = qemu("qemu-io", &["-f", format, "-c", "write 0 512", image.to_str().unwrap()]);
        assert!(!io.status.success(), "qemu-io wrote to an image Bulkhead writes");
        assert!(String::from_utf8_lossy(&io.stderr).contains("lock"));
        if format == "qcow2" {
            let info = qemu("qemu-img", &["info", image.to_str().unwrap()]);
            assert!(!info.status.success(), "qemu-img info sees the image in use");
            let info = qemu("qemu-img", &["info", "-U", image.to_str().unwrap()]);
            assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
        }
        assert!(vm.is_running(), "the VM ended before QEMU's tools were tried");
        assert_unharmed(&vm.wait(T), &image, 2 << 20);
    }
}

#[test]
fn the_disk_tools_lock_as_readers_and_writers() {
    require_kvm();
    let dir = TempDir::new("tools");
    let image = dir.file("disk.raw", &vec![0u8; 2 << 20]);
    let mut vm = holding(&dir.0, "disk.raw,format=raw", 8);
    let path = image.to_str().unwrap();
    for args in [
        vec!["disk", "info", path],
        vec!["disk", "check", path],
        vec!["disk", "compare", path, path],
        vec!["disk", "convert", path, "copy.qcow2", "--format", "qcow2"],
    ] {
        let mut cmd = bulkhead_in(&dir.0, &args);
        let r = Running::start(&mut cmd).wait(T);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("in use by another process"), "{args:?}: {}", r.stderr);
    }
    // With -U they read it; convert never writes over an image in use.
    let copy = run_in(&dir.0, &["disk", "convert", "-U", path, "copy.qcow2", "--format", "qcow2"]);
    assert_eq!(copy.code, 0, "{}", copy.stderr);
    let other = dir.file("other.raw", &[7u8; 4096]);
    let over =
        run_in(&dir.0, &["disk", "convert", other.to_str().unwrap(), path, "--format", "raw"]);
    assert_eq!(over.code, 1, "{}", over.stderr);
    assert!(over.stderr.contains("in use by another process"), "{}", over.stderr);
    assert!(vm.is_running(), "the VM ended before the tools were tried");
    assert_unharmed(&vm.wait(T), &image, 2 << 20);
}

#[test]
fn locking_off_lets_a_second_user_in() {
    require_kvm();
    let dir = TempDir::new("locking-off");
    let size = 2usize << 20;
    let image = dir.file("disk.raw", &vec![0u8; size]);
    let mut vm = holding(&dir.0, "disk.raw,format=raw", 8);
    let args = ["run", "--disk", "disk.raw,format=raw,readonly,locking=off"];
    let r = run_in(&dir.0, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(vm.is_running(), "the VM ended before the second one ran");
    assert_unharmed(&vm.wait(T), &image, size);
}

#[test]
fn the_lock_holds_without_a_gap_across_fifty_kills_and_an_upgrade() {
    require_kvm();
    let dir = TempDir::new("lock-kills");
    let run_dir = dir.0.join("run");
    let new_binary = dir.0.join("bulkhead-new");
    std::fs::copy(env!("CARGO_BIN_EXE_bulkhead"), &new_binary).unwrap();
    let image = dir.file("disk.qcow2", &[]);
    let out = qemu("qemu-img", &["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "2M"]);
    assert!(out.status.success());
    let cmdline = "bulkhead.run=blk-stress bulkhead.seconds=600 bulkhead.seed=3";
    let mut cmd =
        bulkhead_in(&dir.0, &["run", "--name", "locked", "--disk", "disk.qcow2,format=qcow2"]);
    cmd.env("BULKHEAD_RUN_DIR", &run_dir).args(["--cmdline", cmdline]);
    let mut vm = Running::start(&mut cmd);
    let core = vm.id();
    let mut pid = wait_compartment(core, "blk");
    for _ in 0..50 {
        assert!(vm.is_running(), "the VM ended during the kills");
        // SAFETY: killing a compartment this test's VMM started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Dead, and no successor yet: the image must still be taken.
        let refused = writable_by_another(&image).expect_err("the image was free after a kill");
        assert!(refused.contains("in use by another process"), "{refused}");
        pid = wait_compartment_other(core, "blk", Some(pid));
        assert!(writable_by_another(&image).is_err(), "the successor holds it");
    }
    // Run in the image's folder: the new binary is named relative to it, as a user would.
    let ctl = |args: &[&str]| {
        let mut ctl = common::bulkhead();
        ctl.current_dir(&dir.0).env("BULKHEAD_RUN_DIR", &run_dir);
        ctl.arg("ctl").args(args).output().unwrap()
    };
    let asked = Instant::now();
    let up = loop {
        let args = ["locked", "device", "upgrade", "blk0", "--binary", "bulkhead-new"];
        let up = ctl(&args);
        if up.status.success() || asked.elapsed() > Duration::from_secs(10) {
            break up;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let upgraded = wait_compartment_other(core, "blk", Some(pid));
    let exe = std::fs::read_link(format!("/proc/{upgraded}/exe")).unwrap();
    assert_eq!(exe, new_binary.canonicalize().unwrap());
    assert!(writable_by_another(&image).is_err(), "the upgraded compartment holds it");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling the VMM this test started.
    unsafe { libc::kill(core as i32, libc::SIGTERM) };
    let r = vm.wait(T);
    assert_eq!(r.code, 143, "{}", r.stderr);
    assert!(!r.stdout.contains("status=fail"), "{}", r.stdout);
    assert_eq!(common::sigkills_seen(&r.stderr, "blk0"), 50, "{}", r.stderr);
    // Free once the VM is gone, and consistent.
    writable_by_another(&image).unwrap();
    // A compartment killed while it allocated may leak a cluster (exit status 3), never more.
    let check = qemu("qemu-img", &["check", image.to_str().unwrap()]);
    let code = check.status.code();
    assert!(matches!(code, Some(0 | 3)), "{code:?}: {}", String::from_utf8_lossy(&check.stdout));
}

/// A compartment runs as an unprivileged user and asks the core for its files: the core opens
/// the image and what lies beneath its folder, nothing else — not even through a link in that
/// folder, where the compartment cannot look (a folder only root may read).
#[test]
fn an_image_reaches_no_file_outside_its_folder_through_a_link() {
    require_kvm();
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("outside");
    let folder = dir.0.join("private");
    std::fs::create_dir(&folder).unwrap();
    let secret = dir.file("secret.raw", &[7u8; 4096]);
    std::os::unix::fs::symlink(&secret, folder.join("base.raw")).unwrap();
    let out = Command::new("qemu-img")
        .current_dir(&folder)
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "-u",
            "top.qcow2",
            "1M",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700)).unwrap();
    let r = run_in(&folder, &["run", "--disk", "top.qcow2,format=qcow2"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let want =
        format!("{} leads outside the folder of the image", folder.join("base.raw").display());
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    // The same chain without the link is served.
    std::fs::remove_file(folder.join("base.raw")).unwrap();
    std::fs::copy(&secret, folder.join("base.raw")).unwrap();
    let r = run_in(&folder, &["run", "--disk", "top.qcow2,format=qcow2,readonly"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_check("virtio");
}
