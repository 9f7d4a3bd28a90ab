//! The server through a real socket: every request, bad clients, the socket's life.

mod common;

use bulkhead_api::protocol::{Payload, Reply, Request, MAX_REQUEST_BYTES};
use bulkhead_api::server::{Server, ServerError};
use bulkhead_api::DeviceChange;
use bulkhead_ctl::client::{request_at, ClientError};
use common::{in_dir, sample_status, socket_dir, FakeVm};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

fn start(path: &Path) -> (Server, Arc<FakeVm>) {
    let vm = Arc::new(FakeVm::default());
    let server = Server::start_at(path, vm.clone()).unwrap();
    (server, vm)
}

/// Sends raw bytes (then, with `close`, shuts the write side) and reads whatever comes back.
fn raw(path: &Path, bytes: &[u8], close: bool) -> String {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    // A refused request may be closed on before all of it is written.
    let _ = stream.write_all(bytes);
    if close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8(reply).unwrap()
}

/// The message of an error reply.
fn error_message(reply: &str) -> String {
    match Reply::parse(reply.as_bytes()) {
        Ok(Reply::Error { message }) => message,
        other => panic!("expected an error reply, got {other:?} from {reply:?}"),
    }
}

fn assert_serves(path: &Path) {
    let reply = request_at(path, &Request::Status, TIMEOUT).unwrap();
    assert_eq!(reply, Reply::Ok { result: Payload::Status(sample_status()) });
}

#[test]
fn every_request_round_trips() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    let (_server, vm) = start(&path);

    assert_serves(&path);
    let reply = request_at(&path, &Request::DeviceRestart { id: "blk0".into() }, TIMEOUT);
    let change =
        DeviceChange { id: "blk0".into(), old_pid: Some(100), new_pid: Some(101), took_ms: 12.5 };
    assert_eq!(reply.unwrap(), Reply::Ok { result: Payload::DeviceChange(change.clone()) });

    let upgrade = Request::DeviceUpgrade { id: "blk0".into(), binary: "/bin/true".into() };
    let reply = request_at(&path, &upgrade, TIMEOUT).unwrap();
    assert_eq!(reply, Reply::Ok { result: Payload::DeviceChange(change) });

    let reply = request_at(&path, &Request::DeviceRestart { id: "blk9".into() }, TIMEOUT);
    assert_eq!(reply.unwrap(), Reply::error("no device named blk9; this VM has blk0, rng0"));

    let reply = request_at(&path, &Request::CtrlAltDel, TIMEOUT).unwrap();
    let Reply::Ok { result: Payload::KeysPressed(pressed) } = reply else { panic!("{reply:?}") };
    assert_eq!((pressed.keys.as_str(), pressed.queued), ("ctrl-alt-del", true));

    // The VM gets the binary with its links resolved.
    let real = std::fs::canonicalize("/bin/true").unwrap();
    let upgrade = format!("upgrade blk0 {}", real.display());
    let expected = ["status", "restart blk0", &upgrade, "restart blk9", "ctrl-alt-del"];
    assert_eq!(vm.calls(), expected);
}

#[test]
fn the_socket_is_private_and_removed_on_drop() {
    let dir = socket_dir();
    let path = in_dir(&dir, "sub/vm0.sock");
    let (server, _vm) = start(&path);
    assert_eq!(server.path(), path);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let folder = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(folder.permissions().mode() & 0o777, 0o700);
    let lock = PathBuf::from(format!("{}.lock", path.display()));
    assert!(lock.exists());
    drop(server);
    assert!(!path.exists(), "the socket is left behind");
    assert!(!lock.exists(), "the lock file is left behind");
    let err = request_at(&path, &Request::Status, TIMEOUT).unwrap_err();
    assert!(matches!(err, ClientError::NoSocket { .. }), "{err}");
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    // What a VM that was killed leaves: a socket file nobody listens on.
    drop(UnixListener::bind(&path).unwrap());
    let err = request_at(&path, &Request::Status, TIMEOUT).unwrap_err();
    assert!(matches!(err, ClientError::Stale { .. }), "{err}");
    assert!(bulkhead_ctl::describe(&err).starts_with("nobody answers on"));
    let (_server, _vm) = start(&path);
    assert_serves(&path);
}

#[test]
fn a_live_name_is_not_taken() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    let (_server, _vm) = start(&path);
    let second = Server::start_at(&path, Arc::new(FakeVm::default()));
    let message = second.err().expect("a second server started").to_string();
    assert!(message.starts_with("a VM is already running with the control socket"), "{message}");
    assert_serves(&path);

    // Someone else's live socket (no lock file): the connect test finds it.
    let other = in_dir(&dir, "other.sock");
    let _listener = UnixListener::bind(&other).unwrap();
    let refused = Server::start_at(&other, Arc::new(FakeVm::default()));
    assert!(matches!(refused, Err(ServerError::AlreadyRunning { .. })));
    assert!(other.exists());
}

#[test]
fn what_is_not_a_socket_is_left_alone() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    std::fs::write(&path, b"precious").unwrap();
    let refused = Server::start_at(&path, Arc::new(FakeVm::default()));
    assert!(matches!(refused, Err(ServerError::NotASocket { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn bad_requests_get_error_replies_and_the_server_goes_on() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    let (_server, vm) = start(&path);
    let cases: &[(&[u8], bool, &str)] = &[
        (b"garbage\n", false, "malformed"),
        (b"\x00\x01\x02\xff\n", false, "malformed"),
        (b"{\"version\":1,", true, "EOF while parsing"),
        (b"{\"version\":2,\"request\":\"status\"}\n", false, "version 2 is not spoken"),
        (b"{\"version\":1,\"request\":\"shutdown\"}\n", false, "unknown variant `shutdown`"),
        (b"{\"version\":1,\"request\":\"status\",\"all\":1}\n", false, "unknown field `all`"),
        (b"\n", false, "empty"),
    ];
    for (bytes, close, expected) in cases {
        let message = error_message(&raw(&path, bytes, *close));
        assert!(message.contains(expected), "{bytes:?}: {message:?}");
        assert_serves(&path);
    }
    assert_eq!(vm.calls().len(), cases.len(), "bad requests reached the VM");
}

#[test]
fn only_the_first_line_is_read() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    let (_server, vm) = start(&path);
    let two = b"{\"version\":1,\"request\":\"status\"}\n{\"version\":1,\"request\":\"device_restart\",\"id\":\"blk0\"}\n";
    let reply = raw(&path, two, true);
    assert_eq!(reply.lines().count(), 1);
    assert!(matches!(Reply::parse(reply.as_bytes()), Ok(Reply::Ok { .. })));
    assert_eq!(vm.calls(), ["status"]);
}

#[test]
fn oversized_requests_are_refused() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    let (_server, _vm) = start(&path);
    for size in [MAX_REQUEST_BYTES + 1, 4 << 20] {
        let mut big = br#"{"version":1,"request":"device_restart","id":""#.to_vec();
        big.resize(size, b'a');
        let message = error_message(&raw(&path, &big, false));
        assert_eq!(
            message,
            format!("the request is larger than {MAX_REQUEST_BYTES} bytes; refused")
        );
        assert_serves(&path);
    }
}

#[test]
fn a_silent_or_stalled_client_does_not_stop_the_server() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    let (_server, vm) = start(&path);
    // Connects and leaves without a word: no reply, nothing asked of the VM.
    assert_eq!(raw(&path, b"", true), "");
    assert_serves(&path);

    // Half a request, then nothing: answered after the deadline.
    let started = Instant::now();
    let message = error_message(&raw(&path, b"{\"version\":1,\"req", false));
    assert!(message.starts_with("no complete request within 5 s"), "{message}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(8), "{waited:?}");
    assert_serves(&path);
    assert_eq!(vm.calls(), ["status", "status"]);
}

#[test]
fn a_panic_in_the_vm_is_an_error_reply() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    let (_server, _vm) = start(&path);
    let reply = request_at(&path, &Request::DeviceRestart { id: "boom".into() }, TIMEOUT);
    let message = reply.unwrap().into_result().unwrap_err();
    assert!(message.starts_with("the VM failed while answering"), "{message}");
    assert_serves(&path);
}

#[test]
fn unsafe_upgrade_binaries_never_reach_the_vm() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    let (_server, vm) = start(&path);
    let writable = in_dir(&dir, "writable");
    std::fs::write(&writable, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cases: &[(&str, &str)] = &[
        ("bulkhead", "the binary path bulkhead is not absolute"),
        ("/nonexistent/bulkhead", "cannot find the binary /nonexistent/bulkhead"),
        ("/etc/passwd", "/etc/passwd is not executable (mode 644)"),
        ("/etc", "/etc is not a regular file"),
        (writable.to_str().unwrap(), "(mode 777); `chmod go-w` it"),
    ];
    for (binary, expected) in cases {
        let upgrade = Request::DeviceUpgrade { id: "blk0".into(), binary: binary.into() };
        let message = request_at(&path, &upgrade, TIMEOUT).unwrap().into_result().unwrap_err();
        assert!(message.starts_with("upgrade refused: "), "{message}");
        assert!(message.contains(expected), "{binary}: {message}");
    }
    assert!(vm.calls().is_empty(), "{:?}", vm.calls());
}

#[test]
fn several_clients_at_once_are_all_served() {
    let dir = socket_dir();
    let path = in_dir(&dir, "vm0.sock");
    let (_server, vm) = start(&path);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..10 {
                    assert_serves(&path);
                }
            });
        }
    });
    assert_eq!(vm.calls().len(), 80);
}
