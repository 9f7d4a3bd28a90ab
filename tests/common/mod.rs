//! Running the `bulkhead` binary in integration tests and reading the
//! built-in guest's `BH` report lines.

#![allow(dead_code)]

pub mod compartments;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `cmd` with stdin closed and stdout and stderr piped.
pub fn start(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// A VMM a test started (stdin closed, stdout and stderr piped). If the test
/// fails while it runs, it is killed and what it printed is shown with the
/// failure.
pub struct Running {
    child: Option<Child>,
}

impl Running {
    pub fn start(cmd: &mut Command) -> Running {
        Running { child: Some(start(cmd)) }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().expect("running").try_wait().unwrap().is_none()
    }

    /// Waits for it to end, killing it after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Run {
        wait(self.child.take().expect("running"), timeout)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            let (mut stdout, mut stderr) = (String::new(), String::new());
            if let Some(mut out) = child.stdout.take() {
                let _ = out.read_to_string(&mut stdout);
            }
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            eprintln!("--- the VM's output ---\n{stdout}--- its errors ---\n{stderr}---");
        }
    }
}

/// Kills a VMM left running when a test fails half-way.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: signalling the VMM this test started.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// How many of `device`'s backends the core saw die by SIGKILL, from its stderr: each was
/// restarted, or died during its own hand-over (a kill right after a compartment entered its
/// sandbox can land before the core has handed the device to it; the core then starts another).
pub fn sigkills_seen(stderr: &str, device: &str) -> usize {
    let restarted = format!("{device} restarted (killed by signal 9");
    let in_handover = format!(
        "{device}: restart failed: the new backend killed by signal 9 during the hand-over"
    );
    stderr.matches(&restarted).count() + stderr.matches(&in_handover).count()
}

/// The binary under test.
pub fn bulkhead() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
}

/// Fails the test with a clear message if this machine cannot run VMs.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!(
            "/dev/kvm cannot be opened ({e}): these tests boot real VMs and need KVM. \
             Run them on a Linux host with KVM enabled, as a user who may open /dev/kvm."
        );
    }
}

/// A finished run: exit code, stdout (the guest console) and stderr.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The `BH` lines, each as (event, key=value map).
    pub fn events(&self) -> Vec<(String, HashMap<String, String>)> {
        self.stdout.lines().filter_map(parse_line).collect()
    }

    /// The first event named `name` (with `name=` when given as `check:memory`).
    pub fn event(&self, name: &str) -> HashMap<String, String> {
        let (event, check) = name.split_once(':').unwrap_or((name, ""));
        self.events()
            .into_iter()
            .find(|(e, kv)| {
                e == event
                    && (check.is_empty() || kv.get("name").map(String::as_str) == Some(check))
            })
            .map(|(_, kv)| kv)
            .unwrap_or_else(|| {
                panic!(
                    "no '{name}' line in the guest output:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    /// Asserts that `check:N` passed.
    pub fn assert_check(&self, name: &str) -> HashMap<String, String> {
        let kv = self.event(&format!("check:{name}"));
        assert_eq!(
            kv.get("status").map(String::as_str),
            Some("ok"),
            "check {name} failed: {kv:?}\n{}",
            self.stdout
        );
        kv
    }
}

/// Parses `BH event k=v k=v text=free text`.
pub fn parse_line(line: &str) -> Option<(String, HashMap<String, String>)> {
    let rest = line.strip_prefix("BH ")?;
    let mut words = rest.splitn(2, ' ');
    let event = words.next()?.to_string();
    let mut kv = HashMap::new();
    let mut tail = words.next().unwrap_or("");
    while !tail.is_empty() {
        if let Some(text) = tail.strip_prefix("text=") {
            kv.insert("text".into(), text.to_string());
            break;
        }
        let (word, next) = tail.split_once(' ').unwrap_or((tail, ""));
        if let Some((k, v)) = word.split_once('=') {
            kv.insert(k.to_string(), v.to_string());
        }
        tail = next;
    }
    Some((event, kv))
}

/// Runs `bulkhead` with `args`, killing it after `timeout`.
pub fn run(args: &[&str], timeout: Duration) -> Run {
    let child = bulkhead()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bulkhead");
    wait(child, timeout)
}

/// Waits for a started child, killing it after `timeout`.
pub fn wait(mut child: Child, timeout: Duration) -> Run {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bulkhead") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bulkhead did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).unwrap();
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).unwrap();
    }
    Run { code: status.code().unwrap_or(-1), stdout, stderr }
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "bulkhead-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// FNV-1a 64, as the built-in guest computes it over an initrd.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Whether this host's KVM is KVM-PVM (no hardware virtualization).
pub fn host_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// SplitMix64: the built-in guest's disk pattern, written out again so it is
/// checked against an independent copy (`crates/guests/guest/src/pattern.rs`).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The guest's pattern for the first `len` bytes of a disk.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    for w in 0..len.div_ceil(8) {
        out.extend_from_slice(&splitmix64(seed ^ w as u64).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip` (iproute2), which the network tests need: {e}")
    });
    assert!(
        out.status.success(),
        "`ip {}` failed: {} (network tests need root and /dev/net/tun)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// `bulkhead ctl ARGS` against the VMs of the run folder `run_dir`.
pub fn ctl(run_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    bulkhead().env("BULKHEAD_RUN_DIR", run_dir).arg("ctl").args(args).output().unwrap()
}

/// The lines of `out` (a child's stdout, say) as they arrive, read on a thread of their own.
pub fn lines_of(out: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// An echo server on the unix socket `listener` binds: it echoes one connection, and the
/// thread's value is how many bytes it echoed.
pub fn echo_once(listener: std::os::unix::net::UnixListener) -> std::thread::JoinHandle<usize> {
    use std::io::Write;
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let (mut echoed, mut chunk) = (0, [0u8; 65536]);
        loop {
            let n = conn.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                return echoed;
            }
            conn.write_all(&chunk[..n]).unwrap();
            echoed += n;
        }
    })
}

/// A network namespace holding one tap, `tap0`, with 10.0.2.1/24 (the
/// guest's peer); deleted, with the tap, when dropped. Nothing outside the
/// namespace is touched.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name =
            format!("bh-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ip(&["-n", n, "addr", "add", "10.0.2.1/24", "dev", "tap0"]);
        ip(&["-n", n, "link", "set", "tap0", "up"]);
        ns
    }

    /// Sends one UDP datagram from `from` (an address of the namespace) to
    /// `to`, from inside the namespace (a thread of this process that joins it).
    pub fn send_udp(&self, from: &str, to: &str, payload: &[u8]) {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.name);
        let (from, to, payload) = (from.to_string(), to.to_string(), payload.to_vec());
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on an open namespace file; it changes only this
            // thread's network namespace, and the thread ends after the send.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let socket = std::net::UdpSocket::bind((from.as_str(), 0)).unwrap();
            socket.send_to(&payload, &to).unwrap();
        })
        .join()
        .unwrap();
    }

    /// `bulkhead` run inside the namespace.
    pub fn bulkhead(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_bulkhead")]);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs a prepared command, killing it after `timeout`.
pub fn run_command(mut cmd: Command, timeout: Duration) -> Run {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bulkhead");
    wait(child, timeout)
}

/// rust-vmm's vhost-device-vsock, as `scripts/install-deps.sh` installs it:
/// `$BULKHEAD_VHOST_DEVICE_VSOCK`, else `cargo install`'s copy in Bulkhead's cache folder.
pub fn vhost_device_vsock() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("BULKHEAD_VHOST_DEVICE_VSOCK").filter(|v| !v.is_empty()) {
        return path.into();
    }
    let program = bulkhead_linux_guest::dirs::cache_dir()
        .expect("a cache folder")
        .join("vhost-device-vsock-0.3.0/bin/vhost-device-vsock");
    assert!(
        program.is_file(),
        "vhost-device-vsock is needed for these tests: run scripts/install-deps.sh (or set \
         BULKHEAD_VHOST_DEVICE_VSOCK), looked for {}",
        program.display()
    );
    program
}
