//! A compartment's side of vhost-user: garbage messages from the frontend (with file
//! descriptors attached where the input says) into a real backend's `serve`. It must end the
//! connection cleanly (the frontend closed it, or broke the protocol) — never panic, never hang
//! — and the device must then serve a well-behaved frontend.
//!
//! Input: byte 0 the device (0 rng, 1 blk, 2 net), then chunks (see `vhost.rs`), each sent with
//! one `sendmsg`. Seeds: real sessions of the core's frontend (`BULKHEAD_FUZZ_SEEDS=DIR`).
#![no_main]

#[path = "vhost.rs"]
mod vhost_common;

use std::io::Read;
use std::os::unix::net::UnixStream;

use bulkhead_devices::ServeEnd;
use libfuzzer_sys::fuzz_target;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;
use vhost_common::*;

/// A well-behaved frontend's first steps, to see that the device still serves.
fn still_serves(kind: usize) {
    let (front, backend) = spawn_backend(KINDS[kind].0);
    front.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut f = Frontend::from_stream(front, KINDS[kind].1.queues() as u64);
    f.set_owner().unwrap();
    let features = f.get_features().expect("GET_FEATURES after a hostile session");
    assert!(features & (1 << 32) != 0, "VERSION_1 offered");
    f.get_protocol_features().expect("GET_PROTOCOL_FEATURES after a hostile session");
    drop(f);
    assert_eq!(backend.join().unwrap(), ServeEnd::Disconnected);
}

fuzz_target!(
    init: {
        init_log();
        write_seeds("session", |kind| {
            let (up, _) = record_session(kind);
            let mut seed = vec![kind as u8];
            seed.extend(encode_chunks(&up));
            vec![seed]
        });
    },
    |data: &[u8]| {
        let Some((&k, rest)) = data.split_first() else { return };
        let kind = usize::from(k) % KINDS.len();
        let chunks = parse_chunks(rest, 64);
        let (front, backend) = spawn_backend(KINDS[kind].0);
        // Replies are read and dropped, so that the backend never blocks on a full socket.
        let mut reader = front.try_clone().unwrap();
        let drain = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while reader.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        let files = Files::new();
        send_chunks(&front, &chunks, &files);
        front.shutdown(std::net::Shutdown::Write).unwrap();
        let end = backend.join().expect("the backend's message thread panicked");
        assert!(
            matches!(end, ServeEnd::Disconnected | ServeEnd::ProtocolError(_)),
            "the backend ended with {end:?}"
        );
        drop(front);
        drain.join().unwrap();
        still_serves(kind);
        let _: Option<UnixStream> = None;
    }
);
