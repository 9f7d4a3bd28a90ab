//! The injected faults (`BULKHEAD_FAULT`, `src/fault.rs`) against the test frontend: a
//! `bulkhead-device blk` process fails in the middle of its second request; a fresh process,
//! handed the same inflight region, completes that request exactly once and the image holds the
//! right bytes. For `hang` the process stays alive, answers messages, and leaves the request
//! incomplete until it is killed (as the supervisor will).

mod harness;

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use harness::{region_u8, write_request, Driver, GuestMem, Process, Setup};
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress};

const QUEUE_SIZE: u16 = 256;
const EXIT_CODE: i32 = 42;
const SECOND: u64 = 64; // the sector the second request writes

/// How the first backend ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Abort,
    Exit,
    /// It stays alive with the request incomplete; the test kills it.
    Hangs,
}

/// Whether the used entry of the failed request was published by the first backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Published {
    No,
    Yes,
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits for the first backend to end as `end` says (killing it if it hangs).
fn ends(first: &mut Process, d: &mut Driver, end: End, log: &Path) {
    match end {
        End::Hangs => {
            std::thread::sleep(Duration::from_millis(500));
            assert!(first.alive(), "a hung backend stays alive: {}", log_of(log));
            assert_eq!(d.queues[0].used_idx(&d.guest.mem), 1, "the request stays incomplete");
            assert!(d.frontend.get_features().is_ok(), "the message thread still answers");
            assert!(d.frontend.get_protocol_features().is_ok());
            first.kill(); // what the supervisor does to a hung compartment
        }
        End::Abort | End::Exit => {
            let status = first.wait_exit(Duration::from_secs(10)).expect("the backend dies");
            let want_signal = (end == End::Abort).then_some(libc::SIGABRT);
            assert_eq!(status.signal(), want_signal, "{status:?}: {}", log_of(log));
            if end == End::Exit {
                assert_eq!(status.code(), Some(EXIT_CODE));
            }
        }
    }
}

/// The scenario: `action:after=1` kills (or hangs) the first backend in its second request.
fn fails_then_resumes(action: &str, end: End, published: Published, says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let image = harness::raw_image(dir.path(), "disk.raw", 1 << 20, 0);
    let sock = dir.path().join("blk.sock");
    let disk = format!("{},format=raw", image.display());
    let args = ["blk", "--disk", disk.as_str()];
    let guest = Arc::new(GuestMem::new());
    let log = dir.path().join("first.log");
    let knob = format!("{action}:after=1");
    let mut first = Process::start_logged(&args, &[("BULKHEAD_FAULT", &knob)], &sock, &log);

    let mut d = Driver::connect(first.connect(), guest.clone(), &Setup::default());
    let ask = VhostUserInflight::new(0, 0, 1, QUEUE_SIZE);
    let (info, region) = d.frontend.get_inflight_fd(&ask).unwrap();
    d.frontend.set_inflight_fd(&info, region.as_raw_fd()).unwrap();
    d.start(0);
    let (bufs, _) = write_request(&mut d, 0, &[0x11; 512]);
    assert_eq!(d.roundtrip(0, &bufs), 1, "the first request is served");
    let data = vec![0x5a; 4096];
    let (bufs, st) = write_request(&mut d, SECOND, &data);
    let head = d.q(0).submit(&guest.mem, &bufs);

    ends(&mut first, &mut d, end, &log);
    let text = log_of(&log);
    assert!(text.contains("fault injection armed"), "{text}");
    assert!(text.contains(says), "the backend's stderr lacks {says:?}:\n{text}");
    let used_now = d.q(0).used_idx(&guest.mem);
    let want_used = if published == Published::Yes { 2 } else { 1 };
    assert_eq!(used_now, want_used, "used entries when the first backend ended");
    let desc = 16 + 16 * u64::from(head);
    assert_eq!(region_u8(&region, desc), 1, "the request is still marked in flight");

    // A fresh backend (no fault), handed the same region; QEMU sends the used index as the base.
    let log2 = dir.path().join("second.log");
    let second = Process::start_logged(&args, &[("BULKHEAD_LOG", "info")], &sock, &log2);
    let setup = Setup { keep_rings: true, ..Setup::default() };
    let mut d = Driver::connect(second.connect(), guest.clone(), &setup);
    d.frontend.set_inflight_fd(&info, region.as_raw_fd()).unwrap();
    let seen = if published == Published::Yes { 1 } else { used_now };
    d.q(0).set_seen(seen);
    d.start(used_now);
    // Even when the used entry was published before the crash: the guest may never have been
    // told.
    assert!(
        harness::wait_readable(d.q(0).call.as_raw_fd(), Duration::from_secs(5)),
        "the successor interrupts the guest"
    );
    let used = d.q(0).wait_used(&guest.mem, 1, Duration::from_secs(10));
    assert_eq!(used, vec![(u32::from(head), 1)], "the request, once");
    d.q(0).assert_idle(&guest.mem, Duration::from_millis(200));
    assert_eq!(d.q(0).used_idx(&guest.mem), 2, "completed exactly once");
    assert_eq!(d.mem().read_obj::<u8>(GuestAddress(st)).unwrap(), 0, "status OK");
    assert_eq!(region_u8(&region, desc), 0, "no longer in flight");
    let resubmitted = log_of(&log2).contains("resubmitting 1 requests");
    assert_eq!(resubmitted, published == Published::No, "{}", log_of(&log2));
    let file = std::fs::read(&image).unwrap();
    assert!(file[..512].iter().all(|&b| b == 0x11), "the first request's bytes");
    let at = SECOND as usize * 512;
    assert_eq!(&file[at..at + 4096], &data[..], "the second request's bytes");
    assert!(file[at + 4096..].iter().all(|&b| b == 0), "nothing else written");

    // The queue goes on.
    let (bufs, st) = write_request(&mut d, 200, &[0x22; 512]);
    assert_eq!(d.roundtrip(0, &bufs), 1);
    assert_eq!(d.mem().read_obj::<u8>(GuestAddress(st)).unwrap(), 0);
}

#[test]
fn panic_in_a_worker_aborts_the_process_and_the_request_is_resubmitted() {
    fails_then_resumes("panic", End::Abort, Published::No, "panicked at");
}

#[test]
fn exit_mid_request_and_the_request_is_resubmitted() {
    fails_then_resumes("exit", End::Exit, Published::No, "exiting with status 42");
}

#[test]
fn corrupt_state_is_detected_and_aborts_before_publishing() {
    fails_then_resumes("corrupt", End::Abort, Published::No, "state is inconsistent");
}

#[test]
fn hang_keeps_the_process_alive_with_the_request_incomplete() {
    fails_then_resumes("hang", End::Hangs, Published::No, "the worker hangs");
}

#[test]
fn exit_before_the_used_entry_and_the_request_is_resubmitted() {
    fails_then_resumes("exit-before-used", End::Exit, Published::No, "returning chain");
}

#[test]
fn exit_after_the_used_entry_and_the_request_is_not_resubmitted() {
    fails_then_resumes("exit-after-used", End::Exit, Published::Yes, "returning chain");
}

#[test]
fn a_bad_or_foreign_knob_changes_nothing() {
    for (knob, says) in [
        ("explode:after=1", "ignored: the action must be one of"),
        ("panic:after=two", "ignored: after=\"two\": not a number"),
        ("panic:after=0:device=rng", "armed: panic:after=0:device=rng"),
        ("panic:after=0:queue=1", "armed: panic:after=0:queue=1"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let image = harness::raw_image(dir.path(), "disk.raw", 1 << 20, 0);
        let disk = format!("{},format=raw", image.display());
        let log = dir.path().join("log");
        let sock = dir.path().join("blk.sock");
        let mut p = Process::start_logged(
            &["blk", "--disk", &disk],
            &[("BULKHEAD_FAULT", knob)],
            &sock,
            &log,
        );
        let mut d = Driver::ready(p.connect(), Arc::new(GuestMem::new()), &Setup::default());
        for sector in 0..3 {
            let (bufs, st) = write_request(&mut d, sector, &[0x33; 512]);
            assert_eq!(d.roundtrip(0, &bufs), 1, "{knob}");
            assert_eq!(d.mem().read_obj::<u8>(GuestAddress(st)).unwrap(), 0);
        }
        assert!(p.alive(), "{knob}");
        let text = log_of(&log);
        assert!(text.contains(says), "{knob}: {text}");
    }
}

/// A release build has none of the injector (no code, no strings), unless asked for with the
/// `fault-injection` feature. Slow (release builds in a target folder of their own), so run by
/// hand: `cargo test -p bulkhead-devices --test faults -- --ignored`.
#[test]
#[ignore]
fn a_release_build_has_no_fault_injector() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = root.join("target/fault-check");
    let build = |features: &[&str]| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--release", "--locked", "-p", "bulkhead-devices"])
            .args(["--bin", "bulkhead-device"])
            .args(features)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(target.join("release/bulkhead-device")).unwrap()
    };
    let has = |bin: &[u8], text: &str| bin.windows(text.len()).any(|w| w == text.as_bytes());
    let plain = build(&[]);
    assert!(has(&plain, "state is inconsistent"), "the consistency check stays");
    for text in ["BULKHEAD_FAULT", "injected fault", "fault injection armed"] {
        assert!(!has(&plain, text), "a release build contains {text:?}");
    }
    let with = build(&["--features", "fault-injection"]);
    assert!(has(&with, "BULKHEAD_FAULT"), "the feature brings it back");
}
