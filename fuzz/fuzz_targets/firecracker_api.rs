//! Fuzz target: a byte buffer as what a client writes on `bulkhead firecracker`'s API socket —
//! HTTP/1.1 requests, one after another on one connection — each request read, answered by a
//! microVM whose launch starts nothing. Reading and answering must never panic; every answer is
//! 200, 204 or 400, a 400 carries a fault message, and the answer encodes to bytes that say
//! their own length. `/logger` and `/metrics` are left out: they create files at the path given.
#![no_main]

use std::io::{Cursor, Read, Write};

use bulkhead_firecracker::api::Microvm;
use bulkhead_firecracker::http::{encode, Connection, ReadError};
use libfuzzer_sys::fuzz_target;

/// Reads come from the input; writes (100 Continue) are dropped.
struct Pipe(Cursor<Vec<u8>>);

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut vm = Microvm::new("fuzz".into(), Box::new(|_| Ok(())));
    let mut conn = Connection::new(Pipe(Cursor::new(data.to_vec())));
    loop {
        let request = match conn.read_request() {
            Ok(r) => r,
            Err(ReadError::Refused(r)) => {
                assert_eq!(r.status, 400);
                assert!(r.fault_message().is_some());
                return;
            }
            Err(_) => return,
        };
        if request.path.starts_with("/logger") || request.path.starts_with("/metrics") {
            continue;
        }
        let response = vm.handle(&request.method, &request.path, &request.body);
        assert!(matches!(response.status, 200 | 204 | 400), "{response:?}");
        assert_eq!(response.status == 400, response.fault_message().is_some(), "{response:?}");
        let bytes = encode(&response, request.close);
        let body = response.body.map(|b| b.to_string()).unwrap_or_default();
        assert!(bytes.ends_with(body.as_bytes()));
        let head = format!("Content-Length: {}\r\n\r\n", body.len());
        assert!(bytes.windows(head.len()).any(|w| w == head.as_bytes()));
    }
});
