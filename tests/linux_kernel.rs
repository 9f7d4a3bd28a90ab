//! A real Linux kernel through Bulkhead's own core: the test kernel (Linux 6.1 from Debian's
//! `linux-source-6.1`, built once by `bulkhead image kernel`; crates/guests/linux-guest) booted
//! with virtio-mmio devices that it finds through ACPI, served by compartments (and by threads
//! in monolithic mode), and QEMU 7.2 booting the same kernel as the reference.
//!
//! On a KVM-PVM host (no VT-x/AMD-V) the kernel's ring 0 runs in KVM's instruction emulator:
//! a boot takes a minute or more, and user space cannot run, so these tests pass `--force`
//! and read everything from the kernel's own log up to `Run /init` (its first system call then
//! fails and the kernel panics and resets the machine: exit code 3). Where KVM is
//! hardware-backed they boot without `--force` and the root file system's `/init` (a small
//! static program made here) prints its line on the console before it exits.
//!
//! Each boot puts several devices and checks into one run: about 70 s of emulation here.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bulkhead_linux_guest::kernel::{self, TestKernel};
use common::{lines_of, NetNs, TempDir};

/// How long one boot may take: 70–170 s on an idle 2-core KVM-PVM host (170 with all seven
/// devices), counted once it may start ([`ONE_BOOT_AT_A_TIME`]).
const BOOT_LIMIT: Duration = Duration::from_secs(600);

/// Kernel boots run one at a time, whichever test asks. On a KVM-PVM host a guest kernel runs
/// in the host's instruction emulator, and boots side by side slow each other far more than
/// their share of the cores: one boot that takes 170 s alone took over 8 minutes beside the
/// other tests' three (the CI failure of 2026-12-07, both tests past the limit).
static ONE_BOOT_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What `/init` prints where it can run (hosts with hardware virtualization).
const INIT_LINE: &str = "BH linux-init pid=1 ok";

/// The block `/hello` holds before and after its journalled change is replayed.
const BEFORE: u8 = b'A';
const AFTER: u8 = b'B';

/// The guest's address and its peer's (the tap in the namespace) for `ip=` and netconsole.
const GUEST_IP: &str = "10.0.2.15";
const PEER_IP: &str = "10.0.2.1";
const NETCONSOLE_PORT: u16 = 6666;
const MAC: &str = "52:54:00:12:34:56";

fn test_kernel() -> TestKernel {
    kernel::build(&Default::default()).unwrap_or_else(|e| {
        panic!("cannot build the test kernel (scripts/install-deps.sh runs `bulkhead image kernel`): {e:#}")
    })
}

/// `--force` where this host cannot run Linux at full speed (KVM-PVM), nothing elsewhere.
fn force() -> Vec<&'static str> {
    match common::host_is_pvm() {
        true => vec!["--force"],
        false => vec![],
    }
}

/// The kernel command line: the test kernel's, the root, and the log lines the checks read
/// (`initcall_debug`: each driver's probe result; `apic=verbose`: each interrupt's routing).
fn cmdline(extra: &str) -> String {
    format!(
        "{} initcall_debug apic=verbose ignore_loglevel root=/dev/vda rw rootfstype=ext4 \
         init=/init {extra}",
        kernel::CMDLINE
    )
}

/// A static x86-64 Linux program that writes [`INIT_LINE`] to its standard output and exits.
fn init_program() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const CODE: u64 = 64 + 56; // after the ELF header and one program header
    let msg = format!("{INIT_LINE}\n").into_bytes();
    let mut code = Vec::new();
    code.extend([0xb8, 1, 0, 0, 0]); // mov eax, 1 (write)
    code.extend([0xbf, 1, 0, 0, 0]); // mov edi, 1
    code.extend([0x48, 0x8d, 0x35]); // lea rsi, [rip + 16]: the message, after the code
    code.extend(16i32.to_le_bytes());
    code.push(0xba); // mov edx, len
    code.extend((msg.len() as u32).to_le_bytes());
    code.extend([0x0f, 0x05]); // syscall
    code.extend([0xb8, 60, 0, 0, 0]); // mov eax, 60 (exit)
    code.extend([0x31, 0xff]); // xor edi, edi
    code.extend([0x0f, 0x05]); // syscall
    assert_eq!(code.len(), 17 + 16);
    code.extend(&msg);
    let size = CODE + code.len() as u64;
    let mut elf = Vec::new();
    elf.extend(b"\x7fELF\x02\x01\x01");
    elf.extend([0; 9]);
    elf.extend(2u16.to_le_bytes()); // executable
    elf.extend(0x3eu16.to_le_bytes()); // x86-64
    elf.extend(1u32.to_le_bytes());
    elf.extend((BASE + CODE).to_le_bytes()); // entry
    elf.extend(64u64.to_le_bytes()); // program headers
    elf.extend(0u64.to_le_bytes()); // no section headers
    elf.extend(0u32.to_le_bytes());
    for half in [64u16, 56, 1, 64, 0, 0] {
        elf.extend(half.to_le_bytes());
    }
    elf.extend(1u32.to_le_bytes()); // PT_LOAD
    elf.extend(5u32.to_le_bytes()); // read, execute
    for word in [0, BASE, BASE, size, size, 0x1000] {
        elf.extend(word.to_le_bytes());
    }
    elf.extend(code);
    elf
}

fn tool(program: &str, args: &[&str]) -> std::process::Output {
    let out =
        Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A raw ext4 image of `mib` MiB holding `/init`, `/dev` and `/hello` (a block of
/// [`BEFORE`]), with a journal transaction not yet replayed that turns `/hello` into
/// [`AFTER`]: the file system needs recovery, and only a mount that replays its journal (and
/// writes the block back through the disk) changes the file.
fn dirty_ext4(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let tree = dir.join(format!("{name}-tree"));
    std::fs::create_dir_all(tree.join("dev")).unwrap();
    std::fs::write(tree.join("init"), init_program()).unwrap();
    std::fs::set_permissions(tree.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(tree.join("hello"), [BEFORE; 4096]).unwrap();
    let raw = dir.join(format!("{name}.raw"));
    let raw_s = raw.to_str().unwrap();
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-L",
            name,
            "-d",
            tree.to_str().unwrap(),
            raw_s,
            &format!("{mib}M"),
        ],
    );
    let out = tool("debugfs", &["-R", "bmap /hello 0", raw_s]);
    let block = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(block.parse::<u64>().is_ok(), "bmap said {block:?}");
    let payload = dir.join(format!("{name}-block"));
    std::fs::write(&payload, [AFTER; 4096]).unwrap();
    let script = dir.join(format!("{name}-journal"));
    std::fs::write(&script, format!("jo\njw -b {block} {}\njc\n", payload.display())).unwrap();
    tool("debugfs", &["-w", "-f", script.to_str().unwrap(), raw_s]);
    assert!(needs_recovery(&raw), "debugfs left {name} clean");
    raw
}

fn needs_recovery(raw: &Path) -> bool {
    let out = tool("dumpe2fs", &["-h", raw.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout).contains("needs_recovery")
}

/// `raw` converted by qemu-img: `qcow2`, or `vmdk` split in 2 GB extents (a descriptor and its
/// extent files).
fn convert(raw: &Path, format: &str) -> PathBuf {
    let (ext, options) = match format {
        "qcow2" => ("qcow2", vec![]),
        "vmdk" => ("vmdk", vec!["-o", "subformat=twoGbMaxExtentSparse"]),
        other => panic!("no format {other}"),
    };
    let out = raw.with_extension(ext);
    let mut args = vec!["convert", "-f", "raw", "-O", format];
    args.extend(options);
    args.extend([raw.to_str().unwrap(), out.to_str().unwrap()]);
    tool("qemu-img", &args);
    std::fs::remove_file(raw).unwrap();
    out
}

/// After the VM: `/hello` in the image holds the replayed block, read straight from the disk
/// (debugfs does not replay a journal: only the kernel's replay, written through the disk's
/// backend, put it there), and the file system the kernel left by its reset is consistent
/// (`e2fsck -fy` on a copy replays what the kernel journalled since and finds nothing to fix).
fn assert_replayed(image: &Path) {
    let raw = image.with_extension("check.raw");
    tool("qemu-img", &["convert", "-O", "raw", image.to_str().unwrap(), raw.to_str().unwrap()]);
    let out = tool("debugfs", &["-R", "cat /hello", raw.to_str().unwrap()]);
    assert_eq!(out.stdout, [AFTER; 4096], "{}: /hello is not the replayed block", image.display());
    let fsck = Command::new("e2fsck").args(["-fy", raw.to_str().unwrap()]).output().unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}: e2fsck -fy found something to fix:\n{}",
        image.display(),
        String::from_utf8_lossy(&fsck.stdout)
    );
    std::fs::remove_file(raw).unwrap();
}

/// One boot: the console lines as they come, what the VMM printed, how it ended.
struct Boot {
    log: Vec<String>,
    stderr: String,
    code: i32,
}

impl Boot {
    /// Runs `cmd` until it ends, handing each console line to `on_line` as it comes.
    fn run(mut cmd: Command, mut on_line: impl FnMut(&str, u32)) -> Boot {
        let _alone = ONE_BOOT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the VMM");
        let pid = child.id();
        let lines = lines_of(child.stdout.take().unwrap());
        let errors = lines_of(child.stderr.take().unwrap());
        let deadline = Instant::now() + BOOT_LIMIT;
        let mut log = Vec::new();
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    on_line(&line, pid);
                    log.push(line);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr: Vec<String> = errors.try_iter().collect();
                    panic!(
                        "the kernel did not finish within {BOOT_LIMIT:?}; its log:\n{}\nthe VMM's errors:\n{}",
                        log.join("\n"),
                        stderr.join("\n")
                    );
                }
            }
        }
        let code = child.wait().unwrap().code().unwrap_or(-1);
        let stderr = collect(&errors);
        Boot { log, stderr, code }
    }

    /// The log without timestamps, as one text.
    fn text(&self) -> String {
        self.log.iter().map(|l| untimed(l)).collect::<Vec<_>>().join("\n")
    }

    fn has(&self, wanted: &str) -> bool {
        self.log.iter().any(|l| l.contains(wanted))
    }

    fn assert_has(&self, wanted: &str) {
        assert!(self.has(wanted), "no {wanted:?} in the kernel's log:\n{}", self.dump());
    }

    fn dump(&self) -> String {
        format!("{}\n--- the VMM's errors ---\n{}", self.log.join("\n"), self.stderr)
    }

    /// The log up to `Run /init`: what the kernel said while it set the machine up.
    fn boot_lines(&self) -> &[String] {
        let end = self.log.iter().position(|l| l.contains("Run /init")).unwrap_or(self.log.len());
        &self.log[..end]
    }

    /// The checks every boot passes: the kernel reached `/init` (and ran it where it can),
    /// each device was found through ACPI and probed, and the kernel complained of nothing.
    fn assert_booted(&self, devices: usize) {
        self.assert_has("Run /init as init process");
        if !common::host_is_pvm() {
            self.assert_has(INIT_LINE);
        }
        // The panic after /init ends and `reboot=k`: the keyboard controller resets.
        assert_eq!(self.code, 3, "{}", self.dump());
        let probes = |prefix: &str| {
            self.boot_lines()
                .iter()
                .filter(|l| {
                    l.contains(&format!("probe of {prefix}")) && l.contains("returned 0 after")
                })
                .count()
        };
        assert_eq!(
            probes("LNRO0005:"),
            devices,
            "virtio-mmio devices found through ACPI:\n{}",
            self.dump()
        );
        assert_eq!(probes("virtio"), devices, "virtio drivers bound:\n{}", self.dump());
        let complaints: Vec<&String> = self
            .boot_lines()
            .iter()
            .filter(|l| !l.contains("] calling ") && !l.contains("] initcall "))
            .filter(|l| {
                let lower = l.to_lowercase();
                ["Firmware Bug", "WARNING:", "BUG:", "Oops", "Call Trace"]
                    .iter()
                    .any(|w| l.contains(w))
                    || ["nobody cared", "timed out", "timeout", "failed", "spurious"]
                        .iter()
                        .any(|w| lower.contains(w))
                    || (l.contains("probe of ") && !l.contains("returned 0 after"))
            })
            .collect();
        assert!(complaints.is_empty(), "the kernel complained: {complaints:#?}\n{}", self.dump());
    }

    /// Each device the VMM names in its `-v` lines (`blk0 at 0xd0000000 irq 5: …`) had its
    /// interrupt routed by the kernel as the ACPI tables describe it: an I/O APIC pin, edge
    /// triggered, active high.
    fn assert_interrupts_routed(&self) {
        let pins: Vec<(String, u32)> = self
            .stderr
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("bulkhead: ")?;
                let (name, rest) = rest.split_once(" at 0x")?;
                let irq = rest.split_once(" irq ")?.1.split(':').next()?.parse().ok()?;
                Some((name.to_string(), irq))
            })
            .collect();
        assert!(!pins.is_empty(), "the VMM named no device:\n{}", self.stderr);
        for (name, pin) in pins {
            let routed = format!("Preconfigured routing entry (0-{pin} -> IRQ ");
            let line =
                self.boot_lines().iter().find(|l| l.contains(&routed)).unwrap_or_else(|| {
                    panic!("{name}'s pin {pin} was never routed:\n{}", self.dump())
                });
            assert!(line.ends_with("Level:0 ActiveLow:0)"), "{name}: {line}");
        }
    }

    /// The capacity line of a disk, in 512-byte sectors.
    fn assert_disk(&self, vd: &str, mib: u64) {
        self.assert_has(&format!("[{vd}] {} 512-byte logical blocks", mib * 2048));
    }

    /// The root file system was mounted read-write with its journal replayed.
    fn assert_root_replayed(&self) {
        self.assert_has("EXT4-fs (vda): recovery complete");
        self.assert_has("EXT4-fs (vda): mounted filesystem");
        let mounted = self.log.iter().find(|l| l.contains("VFS: Mounted root")).cloned();
        let mounted = mounted.unwrap_or_else(|| panic!("no root mounted:\n{}", self.dump()));
        assert!(mounted.contains("(ext4 filesystem) on device"), "{mounted}");
    }
}

fn collect(lines: &Receiver<String>) -> String {
    lines.iter().collect::<Vec<_>>().join("\n")
}

/// A log line without its `[   12.345678] ` timestamp.
fn untimed(line: &str) -> &str {
    match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        Some((_, rest)) => rest,
        None => line,
    }
}

/// What a boot says of its devices and its root, with nothing that varies between runs or
/// VMMs (times, the numbers of the ACPI and virtio devices, which follow each VMM's order):
/// the lines to compare with QEMU's, sorted.
fn device_lines(boot: &Boot) -> Vec<String> {
    let keep = ["virtio_blk", "EXT4-fs (vda)", "VFS: Mounted root", "Run /init"];
    let mut lines: Vec<String> = boot
        .log
        .iter()
        .map(|l| untimed(l))
        .filter(|l| !l.starts_with("calling ") && !l.starts_with("initcall "))
        .filter(|l| {
            keep.iter().any(|k| l.contains(k))
                || (["probe of LNRO0005:", "probe of virtio"].iter().any(|p| l.starts_with(p))
                    && l.contains("returned 0 after"))
        })
        .map(|l| numberless(l.split(" after ").next().unwrap_or(l)))
        .collect();
    lines.sort();
    lines
}

/// `line` with the number after each `LNRO0005:` (hexadecimal) and `virtio` replaced by `*`.
fn numberless(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    loop {
        let found = [("LNRO0005:", 16), ("virtio", 10)]
            .into_iter()
            .filter_map(|(p, radix)| rest.find(p).map(|i| (i + p.len(), radix)))
            .min();
        let Some((end, radix)) = found else { break };
        out.push_str(&rest[..end]);
        rest = &rest[end..];
        let number = rest.len() - rest.trim_start_matches(|c: char| c.is_digit(radix)).len();
        if number > 0 {
            out.push('*');
            rest = &rest[number..];
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn device_numbers_are_left_out_of_the_compared_lines() {
    assert_eq!(numberless("probe of LNRO0005:1f returned 0"), "probe of LNRO0005:* returned 0");
    assert_eq!(
        numberless("virtio_blk virtio12: [vda] 8 512-byte"),
        "virtio_blk virtio*: [vda] 8 512-byte"
    );
}

/// Datagrams sent to `PEER_IP:NETCONSOLE_PORT` in the namespace, gathered on a thread that
/// joins it, until the returned sender is dropped.
fn netconsole_listener(
    ns: &NetNs,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<String>) {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{}", ns.name);
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on an open namespace file; it changes only this thread's network
        // namespace, and the thread ends after the listening.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let socket = std::net::UdpSocket::bind((PEER_IP, NETCONSOLE_PORT)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        ready_tx.send(()).unwrap();
        let mut text = String::new();
        let mut buf = [0u8; 2048];
        while let Err(std::sync::mpsc::TryRecvError::Empty) = stopped.try_recv() {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                if from.ip().to_string() == GUEST_IP {
                    text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        }
        text
    });
    ready.recv().unwrap();
    (stop, handle)
}

/// From the namespace, a UDP datagram to a closed port of the guest: its kernel answers with
/// an ICMP port-unreachable, which the connected socket reports as refused. Both directions
/// of the guest's network device, ARP included, with no user space in the guest.
fn guest_answers(ns: &NetNs) -> bool {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: as in `netconsole_listener`: this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        let socket = std::net::UdpSocket::bind((PEER_IP, 0)).unwrap();
        socket.connect((GUEST_IP, 9)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 16];
        for _ in 0..20 {
            let _ = socket.send(b"anyone there?");
            if let Err(e) = socket.recv(&mut buf) {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    return true;
                }
            }
        }
        false
    })
    .join()
    .unwrap()
}

fn status(run_dir: &Path, name: &str) -> serde_json::Value {
    let out = common::ctl(run_dir, &[name, "status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn device<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["devices"].as_array().unwrap().iter().find(|d| d["id"] == id).unwrap()
}

#[test]
fn the_init_program_runs_on_this_host() {
    let dir = TempDir::new("linux-init");
    let path = dir.file("init", &init_program());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&path).output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{INIT_LINE}\n"));
}

/// The whole machine at once, in microkernel mode: a dirty ext4 root on a raw image, a qcow2
/// and a split VMDK disk, a network device on a tap, the rng, a virtio console and vsock
/// (rust-vmm's vhost-device-vsock), each in its compartment; Linux finds all seven through ACPI, routes their interrupts, replays the root's
/// journal through the block compartment, configures the network and logs over it, and takes
/// its entropy from the rng.
#[test]
fn linux_finds_every_device_through_acpi_and_mounts_a_dirty_root_from_a_compartment() {
    common::require_kvm();
    let kernel = test_kernel();
    let dir = TempDir::new("linux-all");
    let root = dirty_ext4(&dir.0, "root", 64);
    let second = convert(&dirty_ext4(&dir.0, "second", 32), "qcow2");
    let third = convert(&dirty_ext4(&dir.0, "third", 48), "vmdk");
    let ns = NetNs::new("linux");
    let (stop, netconsole) = netconsole_listener(&ns);
    let run_dir = TempDir::new("linux-all-run");
    let console = dir.0.join("hvc0.sock");
    // rust-vmm's vhost-device-vsock as a compartment (a backend Bulkhead did not write), its
    // host side in a folder it may write.
    let vsock_host = dir.0.join("vsock");
    std::fs::create_dir(&vsock_host).unwrap();
    std::os::unix::fs::chown(&vsock_host, Some(65534), Some(65534)).unwrap();
    let vsock = format!(
        "vsock,rw={0},exec={1} --guest-cid 3 --socket {{socket}} --uds-path {0}/vsock",
        vsock_host.display(),
        common::vhost_device_vsock().display()
    );
    let extra = format!(
        "ip={GUEST_IP}::{PEER_IP}:255.255.255.0::eth0:off \
         netconsole=6665@{GUEST_IP}/eth0,{NETCONSOLE_PORT}@{PEER_IP}/"
    );
    let mut cmd = ns.bulkhead();
    cmd.env("BULKHEAD_RUN_DIR", &run_dir.0)
        .args(["run", "-v", "--name", "linux"])
        .args(force())
        .args(["--kernel", kernel.vmlinux.to_str().unwrap(), "--cmdline", &cmdline(&extra)])
        .args(["--disk", root.to_str().unwrap()])
        .arg("--disk")
        .arg(format!("{},format=qcow2", second.display()))
        .arg("--disk")
        .arg(format!("{},format=vmdk", third.display()))
        .args(["--net", &format!("tap=tap0,mac={MAC}"), "--rng"])
        .arg("--console")
        .arg(format!("socket={}", console.display()))
        .args(["--device", &vsock]);
    let mut rng_requests = None;
    let mut answered = None;
    let boot = Boot::run(cmd, |line, _| {
        // Between the network's configuration and the root's mount, while the kernel runs.
        if line.contains("IP-Config: Complete") && answered.is_none() {
            answered = Some(guest_answers(&ns));
        }
        if line.contains("EXT4-fs (vda): mounted filesystem") && rng_requests.is_none() {
            rng_requests = device(&status(&run_dir.0, "linux"), "rng0")["requests"].as_u64();
        }
    });
    drop(stop);
    let logged = netconsole.join().unwrap();

    boot.assert_booted(7);
    boot.assert_interrupts_routed();
    boot.assert_disk("vda", 64);
    boot.assert_disk("vdb", 32);
    boot.assert_disk("vdc", 48);
    boot.assert_root_replayed();
    assert_replayed(&root);
    // The other two disks were not mounted: their journals wait, their images are unchanged.
    for image in [&second, &third] {
        let raw = image.with_extension("check.raw");
        tool("qemu-img", &["convert", "-O", "raw", image.to_str().unwrap(), raw.to_str().unwrap()]);
        assert!(needs_recovery(&raw), "{}", image.display());
        let out = tool("debugfs", &["-R", "cat /hello", raw.to_str().unwrap()]);
        assert_eq!(out.stdout, [BEFORE; 4096], "{}", image.display());
    }
    // The network device, its address and its MAC; datagrams both ways.
    boot.assert_has(&format!("device=eth0, hwaddr={MAC}, ipaddr={GUEST_IP}"));
    assert_eq!(answered, Some(true), "the guest never answered from {GUEST_IP}:\n{}", boot.dump());
    assert!(logged.contains("EXT4-fs (vda): mounted filesystem"), "netconsole carried: {logged:?}");
    // The rng is the kernel's current hardware rng: it reads it as it registers it, and
    // seeds its own generator from it.
    boot.assert_has("random: crng init done");
    assert!(rng_requests.unwrap_or(0) > 0, "the rng compartment served {rng_requests:?}");
    boot.assert_has("NET: Registered PF_VSOCK protocol family");
}

/// The same kernel under QEMU 7.2 (`-M microvm`, ACPI, KVM, its own virtio-mmio devices) and
/// under Bulkhead in both modes (a qcow2 root served by a compartment; a raw root served by the
/// same device code on the core's threads), side by side: the same devices found, the same
/// lines about them and the root.
#[test]
fn linux_says_the_same_of_its_devices_under_qemu_and_under_bulkhead_in_both_modes() {
    common::require_kvm();
    let kernel = test_kernel();
    let qemu = bulkhead_linux_guest::qemu::Qemu::find()
        .expect("QEMU 7.2 is installed by scripts/install-qemu.sh")
        .binary()
        .to_path_buf();
    let dir = TempDir::new("linux-qemu");
    let qemu_root = dirty_ext4(&dir.0, "qemu", 64);
    let micro_root = convert(&dirty_ext4(&dir.0, "micro", 64), "qcow2");
    let mono_root = dirty_ext4(&dir.0, "mono", 64);

    let bulkhead = |mode: &str, disk: String| {
        let mut cmd = common::bulkhead();
        cmd.args(["run", "-v", "--mode", mode])
            .args(force())
            .args(["--kernel", kernel.vmlinux.to_str().unwrap(), "--cmdline", &cmdline("")])
            .args(["--disk", &disk, "--rng"]);
        cmd
    };
    let micro = bulkhead("microkernel", format!("{},format=qcow2", micro_root.display()));
    let mono = bulkhead("monolithic", mono_root.display().to_string());
    let mut theirs = Command::new(&qemu);
    theirs
        .args(["-M", "microvm,acpi=on", "-accel", "kvm", "-cpu", "host,-arch-capabilities"])
        .args(["-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic"])
        .args(["-serial", "stdio", "-no-reboot"])
        .args(["-kernel", kernel.vmlinux.to_str().unwrap(), "-append", &cmdline("")])
        .arg("-drive")
        .arg(format!("id=root,file={},format=raw,if=none", qemu_root.display()))
        .args(["-device", "virtio-blk-device,drive=root", "-device", "virtio-rng-device"]);
    // QEMU's microvm has no keyboard controller to reset through: its kernel panics and then
    // spins in `reboot=k`. Its log is complete by the panic.
    let theirs = std::thread::spawn(move || {
        Boot::run(theirs, |line, pid| {
            if line.contains("Kernel panic - not syncing") {
                // SAFETY: kill(2) on the QEMU this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        })
    });
    let micro = std::thread::spawn(move || Boot::run(micro, |_, _| {}));
    let mono = Boot::run(mono, |_, _| {});
    let (micro, theirs) = (micro.join().unwrap(), theirs.join().unwrap());

    theirs.assert_has("Run /init as init process");
    assert_replayed(&qemu_root);
    let reference = device_lines(&theirs);
    assert_eq!(reference.len(), 10, "{reference:#?}\n{}", theirs.text());
    for (ours, root) in [(&micro, &micro_root), (&mono, &mono_root)] {
        ours.assert_booted(2);
        ours.assert_interrupts_routed();
        ours.assert_disk("vda", 64);
        ours.assert_root_replayed();
        assert_replayed(root);
        assert_eq!(
            device_lines(ours),
            reference,
            "Bulkhead's lines, then QEMU's\n{}\n--- QEMU's log ---\n{}",
            ours.dump(),
            theirs.text()
        );
    }
    assert!(micro.stderr.contains("blk0 at 0xd0000000 irq 5: compartment pid"), "{}", micro.stderr);
    assert!(
        mono.stderr.contains("blk0 at 0xd0000000 irq 5: thread in the core"),
        "{}",
        mono.stderr
    );
}

/// The block compartment killed as the kernel starts to mount its root from a split VMDK: the
/// supervisor starts another, the mount goes on, the journal is replayed, nothing is lost.
#[test]
fn killing_the_block_compartment_while_linux_mounts_its_root_loses_nothing() {
    common::require_kvm();
    let kernel = test_kernel();
    let dir = TempDir::new("linux-kill");
    let root = convert(&dirty_ext4(&dir.0, "root", 64), "vmdk");
    let mut cmd = common::bulkhead();
    cmd.args(["run", "-v"])
        .args(force())
        .args(["--kernel", kernel.vmlinux.to_str().unwrap(), "--cmdline", &cmdline("")])
        .arg("--disk")
        .arg(format!("{},format=vmdk", root.display()));
    let mut killed = None;
    let boot = Boot::run(cmd, |line, core| {
        // The last initcall; the kernel mounts its root next.
        if line.contains("initcall ip_auto_config") && killed.is_none() {
            let [pid] = common::compartments::compartments(core, "blk")[..] else {
                panic!("not one blk compartment")
            };
            // SAFETY: kill(2) on a child of the VMM this test started.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
            killed = Some(pid);
        }
    });
    assert!(killed.is_some(), "never reached the mount:\n{}", boot.dump());
    assert_eq!(common::sigkills_seen(&boot.stderr, "blk0"), 1, "{}", boot.dump());
    boot.assert_booted(1);
    boot.assert_disk("vda", 64);
    boot.assert_root_replayed();
    assert_replayed(&root);
}
