//! Fuzz target: a byte buffer as a line read from a VM's control socket — first as a request
//! (what a server reads from any client it serves), then as a reply (what `bulkhead ctl`
//! reads). Parsing must never panic, and whatever parses must encode to a line that parses
//! back to the same message.
#![no_main]

use bulkhead_api::{Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::parse(data) {
        let line = request.encode();
        assert_eq!(Request::parse(&line).as_ref(), Ok(&request), "{request:?}");
    }
    if let Ok(reply) = Reply::parse(data) {
        let line = reply.encode();
        assert_eq!(Reply::parse(&line).as_ref(), Ok(&reply), "{reply:?}");
    }
});
