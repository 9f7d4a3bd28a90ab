//! Booting the built-in guest under QEMU's `-M microvm` with QEMU's own
//! virtio-mmio devices, and reading its `BH` report lines.
//!
//! QEMU is the 7.2 that `scripts/install-qemu.sh` unpacks (or
//! `$BULKHEAD_QEMU`); a missing QEMU or `/dev/kvm` fails the test with
//! what to do. Network tests make a network namespace of their own with a
//! bridge holding the host's side (10.0.2.1/24) and one tap per guest, run
//! QEMU inside it with `ip netns exec`, and delete it afterwards; nothing
//! outside the namespace is touched.

#![allow(dead_code)] // each test file uses its own part of this module

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The QEMU to run: `$BULKHEAD_QEMU`, else the wrapper `install-qemu.sh`
/// writes in the cache directory. Panics with instructions if absent.
pub fn qemu() -> PathBuf {
    if let Some(path) = std::env::var_os("BULKHEAD_QEMU").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "BULKHEAD_QEMU={} is not a file", path.display());
        return path;
    }
    let cache = match (std::env::var_os("BULKHEAD_CACHE_DIR"), std::env::var_os("XDG_CACHE_HOME")) {
        (Some(dir), _) if !dir.is_empty() => PathBuf::from(dir),
        (_, Some(xdg)) if Path::new(&xdg).is_absolute() => Path::new(&xdg).join("bulkhead"),
        _ => Path::new(&std::env::var_os("HOME").expect("HOME is not set")).join(".cache/bulkhead"),
    };
    let wrapper = cache.join("qemu-7.2/bin/qemu-system-x86_64");
    assert!(
        wrapper.is_file(),
        "QEMU 7.2 was not found at {}: these tests boot the guest under QEMU's microvm. \
         Run scripts/install-qemu.sh (or set BULKHEAD_QEMU to a qemu-system-x86_64).",
        wrapper.display()
    );
    assert!(Path::new("/dev/kvm").exists(), "/dev/kvm is missing: these tests run QEMU with KVM");
    wrapper
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bh-guest-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The built-in guest written to a file once per test process, in Cargo's
/// scratch directory for tests (written under a private name, then renamed,
/// so concurrent test processes never see half a file).
pub fn guest_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("bulkhead-guest.elf");
        let partial = dir.join(format!("bulkhead-guest.elf.{}", std::process::id()));
        std::fs::write(&partial, bulkhead_guest_elf::GUEST_ELF).expect("write the guest ELF");
        std::fs::rename(&partial, &path).expect("move the guest ELF into place");
        path
    })
}

/// One QEMU microvm run of the guest.
pub struct Vm {
    pub append: String,
    pub args: Vec<String>,
    pub acpi: bool,
    pub cpus: u32,
    pub netns: Option<String>,
    pub timeout: Duration,
}

impl Vm {
    pub fn new(append: &str) -> Vm {
        Vm {
            append: append.to_string(),
            args: Vec::new(),
            acpi: true,
            cpus: 1,
            netns: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Adds QEMU arguments, split at spaces.
    pub fn arg(mut self, args: &str) -> Vm {
        self.args.extend(args.split_whitespace().map(String::from));
        self
    }

    pub fn disk(self, file: &Path, extra: &str) -> Vm {
        let id = format!("d{}", self.args.len());
        self.arg(&format!(
            "-drive id={id},file={},format=raw,if=none{extra} -device virtio-blk-device,drive={id}",
            file.display()
        ))
    }

    pub fn rng(self) -> Vm {
        self.arg("-device virtio-rng-device")
    }

    pub fn tap(self, tap: &str, mac: &str) -> Vm {
        self.arg(&format!(
            "-netdev tap,id=n{tap},ifname={tap},script=no,downscript=no \
             -device virtio-net-device,netdev=n{tap},mac={mac}"
        ))
    }

    fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(qemu());
                c
            }
            None => Command::new(qemu()),
        };
        let machine = if self.acpi {
            "microvm,memory-backend=mem".to_string()
        } else {
            // Without ACPI QEMU lists the devices on the command line; the
            // guest powers off through isa-debug-exit.
            "microvm,memory-backend=mem,acpi=off".to_string()
        };
        cmd.args(["-M", &machine, "-accel", "kvm", "-cpu", "host,-arch-capabilities,+invtsc"])
            .args(["-smp", &self.cpus.to_string(), "-m", "256M"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
            ])
            .args(["-global", "virtio-mmio.force-legacy=false"]);
        if !self.acpi {
            cmd.args(["-device", "isa-debug-exit,iobase=0xf4"]);
        }
        cmd.args(&self.args).arg("-kernel").arg(guest_elf()).args(["-append", &self.append]);
        cmd
    }

    /// Starts QEMU; see [`Running::wait`].
    pub fn start(&self) -> Running {
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start QEMU: {e}"));
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Running { child, out, err, start: Instant::now(), timeout: self.timeout }
    }

    /// Boots the guest and waits for it to power off.
    pub fn run(&self) -> Run {
        self.start().wait()
    }
}

/// A QEMU that has not been waited for.
pub struct Running {
    child: Child,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
    start: Instant,
    timeout: Duration,
}

impl Running {
    /// Waits for QEMU to exit (killing it after the timeout).
    pub fn wait(mut self) -> Run {
        let timed_out = loop {
            if self.child.try_wait().expect("wait for QEMU").is_some() {
                break false;
            }
            if self.start.elapsed() > self.timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break true;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let console = self.out.join().unwrap_or_default();
        let stderr = self.err.join().unwrap_or_default();
        Run { console, stderr, timed_out, elapsed: self.start.elapsed() }
    }
}

/// What a run printed.
pub struct Run {
    pub console: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// One `BH` line's `key=value` pairs (`text=` runs to the end of the line).
pub type Fields = HashMap<String, String>;

pub fn parse_line(line: &str) -> Option<(String, Fields)> {
    let rest = line.strip_prefix("BH ")?;
    let (event, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut fields = Fields::new();
    while !rest.is_empty() {
        if let Some(text) = rest.strip_prefix("text=") {
            fields.insert("text".into(), text.to_string());
            break;
        }
        let (pair, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Some((k, v)) = pair.split_once('=') {
            fields.insert(k.to_string(), v.to_string());
        }
        rest = tail;
    }
    Some((event.to_string(), fields))
}

impl Run {
    fn explain(&self) -> String {
        format!(
            "--- guest console ({:.1} s{}) ---\n{}--- QEMU stderr ---\n{}--- end ---",
            self.elapsed.as_secs_f64(),
            if self.timed_out { ", killed after the timeout" } else { "" },
            self.console,
            self.stderr
        )
    }

    /// Every `BH <event>` line's fields.
    pub fn events(&self, event: &str) -> Vec<Fields> {
        self.console
            .lines()
            .filter_map(|l| parse_line(l.trim_end()))
            .filter(|(e, _)| e == event)
            .map(|(_, f)| f)
            .collect()
    }

    /// The one `BH check name=<name>` line (the `n`-th if several).
    pub fn check_nth(&self, name: &str, n: usize) -> Fields {
        let all: Vec<Fields> = self
            .events("check")
            .into_iter()
            .filter(|f| f.get("name").is_some_and(|v| v == name))
            .collect();
        all.get(n)
            .cloned()
            .unwrap_or_else(|| panic!("no check {name} number {n}\n{}", self.explain()))
    }

    pub fn check(&self, name: &str) -> Fields {
        self.check_nth(name, 0)
    }

    /// The check, which must have passed.
    pub fn ok(&self, name: &str) -> Fields {
        self.ok_nth(name, 0)
    }

    pub fn ok_nth(&self, name: &str, n: usize) -> Fields {
        let f = self.check_nth(name, n);
        assert_eq!(f["status"], "ok", "check {name} failed\n{}", self.explain());
        f
    }

    /// The `n`-th `BH result workload=<workload>` line.
    pub fn result(&self, workload: &str, n: usize) -> Fields {
        let all: Vec<Fields> = self
            .events("result")
            .into_iter()
            .filter(|f| f.get("workload").is_some_and(|v| v == workload))
            .collect();
        all.get(n)
            .cloned()
            .unwrap_or_else(|| panic!("no result for {workload}\n{}", self.explain()))
    }

    /// The guest reached `BH done status=<status>` and QEMU exited by itself.
    pub fn assert_done(&self, status: &str) {
        let done = self.events("done");
        assert!(!self.timed_out, "the guest did not power off\n{}", self.explain());
        assert_eq!(done.len(), 1, "one done line expected\n{}", self.explain());
        assert_eq!(done[0]["status"], status, "{}", self.explain());
    }

    /// A numeric field of `f`, which must parse.
    pub fn num(&self, f: &Fields, key: &str) -> f64 {
        f.get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number {key} in {f:?}\n{}", self.explain()))
    }
}

/// A network namespace with a bridge (the host side, 10.0.2.1/24) and
/// `taps` tap devices on it, deleted when dropped.
pub struct NetNs {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("could not run `ip` (iproute2), which the network tests need: {e}")
    });
    assert!(
        out.status.success(),
        "`ip {}` failed: {} (the network tests need root or CAP_NET_ADMIN and /dev/net/tun)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl NetNs {
    pub fn new(taps: usize) -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name =
            format!("bhguest-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", n, "addr", "add", "10.0.2.1/24", "dev", "br0"]);
        for i in 0..taps {
            let tap = format!("tap{i}");
            ip(&["-n", n, "tuntap", "add", "dev", &tap, "mode", "tap"]);
            ip(&["-n", n, "link", "set", &tap, "master", "br0"]);
            ip(&["-n", n, "link", "set", &tap, "up"]);
        }
        ip(&["-n", n, "link", "set", "br0", "up"]);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes the bridge and taps inside it.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// SplitMix64, written out again here so the disk pattern is checked
/// against an independent copy of its definition (`crates/guests/guest/src/pattern.rs`).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern's bytes for `len` bytes from disk offset 0.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    for w in 0..len.div_ceil(8) {
        out.extend_from_slice(&splitmix64(seed ^ w as u64).to_le_bytes());
    }
    out.truncate(len);
    out
}
