//! The core's side of vhost-user: a compromised compartment answers the core's frontend with
//! garbage (file descriptors attached where the input says). Every step of the device's life
//! (connect, start the queues, write the configuration, reset) must return an error or go on —
//! never panic. A reply that does not come is a timeout, not a hang: the input is all there is,
//! and the socket's other direction is closed after it.
//!
//! Input: byte 0 the device (0 rng, 1 blk, 2 net), then chunks (see `vhost.rs`): the backend's
//! side of the stream. Seeds: real backends' replies to the core (`BULKHEAD_FUZZ_SEEDS=DIR`).
#![no_main]

#[path = "vhost.rs"]
mod vhost_common;

use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use vhost_common::*;

fuzz_target!(
    init: {
        init_log();
        write_seeds("replies", |kind| {
            let (_, down) = record_session(kind);
            let mut seed = vec![kind as u8];
            seed.extend(encode_chunks(&down));
            vec![seed]
        });
    },
    |data: &[u8]| {
        let Some((&k, rest)) = data.split_first() else { return };
        let kind = usize::from(k) % KINDS.len();
        let chunks = parse_chunks(rest, 64);
        let (core, compartment) = UnixStream::pair().unwrap();
        let files = Files::new();
        // Whatever does not fit the socket's buffer is left out (nobody reads yet).
        compartment.set_nonblocking(true).unwrap();
        send_chunks(&compartment, &chunks, &files);
        compartment.shutdown(std::net::Shutdown::Write).unwrap();
        core_session(core, KINDS[kind].1);
        drop(compartment);
    }
);
