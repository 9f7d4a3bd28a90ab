//! The virtio-console, end to end: the built-in guest's `console` workload writes numbered lines
//! and a stream of the pattern and checks that they come back; the test is the host side that
//! echoes them — a client of the console's unix socket (in both modes, and across kills of the
//! console's compartment), a program on its pty, the VMM's own stdin and stdout — and checks
//! what the guest wrote.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::compartments::{compartments, jitter, wait_compartment, wait_compartment_other};
use common::{require_kvm, Running, TempDir};

const T: Duration = Duration::from_secs(120);

/// The guest's line `i` (`crates/guests/guest/src/work/console.rs`), seed 1.
fn line(i: u64) -> String {
    format!("console {i} {:016x}\n", common::splitmix64(1 ^ i))
}

/// What a guest writes with `bulkhead.count=lines bulkhead.bytes=bytes` when nothing is lost.
fn expected(lines: u64, bytes: usize) -> Vec<u8> {
    let mut out: Vec<u8> = (0..lines).flat_map(|i| line(i).into_bytes()).collect();
    out.extend(common::pattern(1, bytes));
    out
}

/// An echoing client of the console's socket: connects once (waiting up to 10 s for the core
/// to listen), writes back every byte it reads until the connection ends, and returns them all;
/// `seen` counts them as they come.
fn echo_client(socket: PathBuf, seen: Arc<AtomicUsize>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut stream = loop {
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(10) => {
                    panic!("cannot connect to {}: {e}", socket.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => {
                    stream.write_all(&buf[..n]).expect("echo");
                    got.extend_from_slice(&buf[..n]);
                    seen.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => panic!("reading the console failed: {e}"),
            }
        }
    })
}

/// Boots the guest with a console on a socket in `mode`, echoes what it writes, and checks both
/// sides: the guest got back exactly what it sent, the client exactly what the guest wrote.
fn socket_echo(mode: &str) {
    require_kvm();
    let dir = TempDir::new(&format!("console-{mode}"));
    let socket = dir.0.join("console.sock");
    let seen = Arc::new(AtomicUsize::new(0));
    let client = echo_client(socket.clone(), seen);
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--mode", mode, "--console", &format!("socket={}", socket.display())]);
    cmd.args(["--cmdline", "bulkhead.run=console bulkhead.count=16 bulkhead.bytes=256K"]);
    let r = Running::start(&mut cmd).wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.assert_check("console");
    assert_eq!((check["lines"].as_str(), check["resent"].as_str()), ("16", "0"), "{check:?}");
    assert_eq!(check["bytes"], "262144");
    let got = client.join().expect("the client");
    assert!(got == expected(16, 256 << 10), "the client did not get what the guest wrote");
    assert!(!socket.exists(), "the console's socket is removed when the VM ends");
}

#[test]
fn a_console_compartment_echoes_through_a_unix_socket() {
    socket_echo("microkernel");
}

#[test]
fn in_monolithic_mode_the_console_echoes_through_a_unix_socket() {
    socket_echo("monolithic");
}

/// The numbers of the guest's lines in `got`; every line must be one the guest sends, whole.
fn line_numbers(got: &[u8]) -> Vec<u64> {
    let text = std::str::from_utf8(got).expect("the guest writes text");
    assert!(text.ends_with('\n'), "the last line is whole: {:?}", text.rsplit('\n').next());
    text.lines()
        .map(|l| {
            let i: u64 = l.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
            assert_eq!(format!("{l}\n"), line(i), "not a line the guest sends");
            i
        })
        .collect()
}

/// Kills the console's compartment three times while the guest exchanges lines with a client of
/// its socket: the supervisor starts a new one each time, the client's connection outlives
/// them all (the core keeps it and hands it over), and lines keep coming after the last.
#[test]
fn a_killed_console_compartment_comes_back_and_keeps_its_client() {
    require_kvm();
    let dir = TempDir::new("console-kill");
    let socket = dir.0.join("console.sock");
    let seen = Arc::new(AtomicUsize::new(0));
    let client = echo_client(socket.clone(), seen.clone());
    let mut cmd = common::bulkhead();
    cmd.args(["run", "--console", &format!("socket={}", socket.display())]);
    cmd.args(["--cmdline", "bulkhead.run=console bulkhead.seconds=4 bulkhead.bytes=0"]);
    let mut vm = Running::start(&mut cmd);
    let core = vm.id();
    let mut rng = 0x5eed_u64 ^ u64::from(core);
    let mut pid = wait_compartment(core, "console");
    for _ in 0..3 {
        std::thread::sleep(jitter(&mut rng, 200, 500));
        assert!(vm.is_running(), "the VM ended during the kills");
        // SAFETY: killing a compartment this test's VMM started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        pid = wait_compartment_other(core, "console", Some(pid));
    }
    let after_kills = seen.load(Ordering::Relaxed);
    assert!(vm.is_running(), "the guest's 4 s outlast the kills");
    assert_eq!(compartments(core, "console"), vec![pid]);
    let r = vm.wait(T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.assert_check("console");
    assert_eq!(common::sigkills_seen(&r.stderr, "console0"), 3, "{}", r.stderr);
    let got = client.join().expect("the client");
    assert!(got.len() > after_kills, "lines still came after the last kill");
    // Every line the guest saw echoed reached the client, in order; a line may come twice (a
    // transmit buffer the killed compartment had taken is written again), or be lost with it
    // and sent again by the guest.
    let numbers = line_numbers(&got);
    let lines: u64 = check["lines"].parse().unwrap();
    assert!(lines > 0, "{check:?}");
    let mut next = 0;
    for &i in &numbers {
        assert!(i <= next, "line {i} came before line {next}");
        next = next.max(i + 1);
    }
    assert!(next >= lines, "the client got lines up to {next}, the guest saw {lines} echoed");
}

/// Reads `child`'s stderr up to the line that names the console's pty (byte by byte, so that
/// the rest stays for [`common::wait`]).
fn pty_path(child: &mut Child) -> PathBuf {
    let stderr = child.stderr.as_mut().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stderr.read(&mut byte).unwrap() == 0 {
            panic!("the VMM ended without naming its pty: {}", String::from_utf8_lossy(&line));
        }
        if byte[0] != b'\n' {
            line.push(byte[0]);
            continue;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        if let Some((_, path)) = text.split_once("console0 is on pty ") {
            return PathBuf::from(path.trim());
        }
        line.clear();
    }
}

/// Echoes everything read on `pty` until it fails (the VMM ended: it held the master side).
fn echo_pty(pty: &Path) -> JoinHandle<()> {
    let mut terminal = std::fs::OpenOptions::new().read(true).write(true).open(pty).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = terminal.read(&mut buf) {
            if terminal.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_console_on_a_pty_echoes_through_the_terminal_it_names() {
    require_kvm();
    let mut child = common::bulkhead()
        .args(["run", "--console", "pty"])
        .args(["--cmdline", "bulkhead.run=console bulkhead.count=16 bulkhead.bytes=64K"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _kill = common::KillOnDrop(child.id());
    let pty = pty_path(&mut child);
    assert!(pty.starts_with("/dev/pts"), "{}", pty.display());
    let _echo = echo_pty(&pty);
    let r = common::wait(child, T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.assert_check("console");
    assert_eq!((check["lines"].as_str(), check["bytes"].as_str()), ("16", "65536"), "{check:?}");
}

/// `--console stdio`: the guest's console shares the VMM's stdout with the serial console
/// (each writes whole lines), and reads the VMM's stdin; the test echoes the console's lines.
#[test]
fn a_console_on_stdio_writes_to_stdout_and_reads_stdin() {
    require_kvm();
    let mut child = common::bulkhead()
        .args(["run", "--mode", "monolithic", "--console", "stdio"])
        .args(["--cmdline", "bulkhead.run=console bulkhead.count=16 bulkhead.bytes=0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _kill = common::KillOnDrop(child.id());
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut serial, mut console) = (String::new(), String::new());
    for l in stdout.lines() {
        let l = l.unwrap() + "\n";
        if l.starts_with("console ") {
            stdin.write_all(l.as_bytes()).unwrap();
            console.push_str(&l);
        } else {
            serial.push_str(&l);
        }
    }
    let r = common::wait(child, T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = common::Run { stdout: serial, ..r };
    let check = r.assert_check("console");
    assert_eq!((check["lines"].as_str(), check["resent"].as_str()), ("16", "0"), "{check:?}");
    assert_eq!(console.as_bytes(), expected(16, 0), "the guest's lines, once each, in order");
}
