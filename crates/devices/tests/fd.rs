//! `--fd N`: how the core starts a compartment, with one end of a socket pair inherited. The
//! process serves that one frontend and exits: 0 when it disconnects, 3 when it breaks the
//! protocol, 1 when the fd is not a socket. (One test per binary: the inherited fd must not leak
//! into processes that other tests start at the same time.)

mod harness;

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{w, Driver, GuestMem, Setup};

/// Starts `bulkhead-device rng --fd N` with `fd` inherited.
fn start_with_fd(fd: RawFd) -> Child {
    // SAFETY: clearing FD_CLOEXEC on an fd this test owns, so that the child inherits it.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    Command::new(env!("CARGO_BIN_EXE_bulkhead-device"))
        .args(["rng", "--fd", &fd.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("exited, not killed by a signal");
        }
        assert!(Instant::now() < deadline, "the backend did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_inherited_socket_is_served_until_the_frontend_leaves() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = start_with_fd(theirs.as_raw_fd());
    drop(theirs);
    let mut d = Driver::ready(ours, Arc::new(GuestMem::new()), &Setup::default());
    let buf = d.alloc(256);
    assert_eq!(d.roundtrip(0, &[w(buf, 256)]), 256);
    drop(d);
    assert_eq!(wait_exit(&mut child), 0, "a clean disconnect");

    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let mut child = start_with_fd(theirs.as_raw_fd());
    drop(theirs);
    ours.write_all(&[9, 9, 9, 9, 1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!(wait_exit(&mut child), 3, "garbage: the protocol-error exit code");

    let null = std::fs::File::open("/dev/null").unwrap();
    let mut child = start_with_fd(null.as_raw_fd());
    assert_eq!(wait_exit(&mut child), 1, "not a socket");
}
