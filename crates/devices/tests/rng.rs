//! virtio-rng through the vhost-user protocol, as a process.

mod harness;

use std::collections::HashSet;
use std::sync::Arc;

use harness::{w, Driver, GuestMem, Process, Setup};
use vm_memory::{Bytes, GuestAddress};

#[test]
fn process_fills_buffers_with_random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(&["rng"], &dir.path().join("rng.sock"));
    let mut d = Driver::ready(p.connect(), Arc::new(GuestMem::new()), &Setup::default());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let a = d.alloc(4096);
        let b = d.alloc(4096);
        assert_eq!(d.roundtrip(0, &[w(a, 1000), w(b, 3096)]), 4096);
        let mut bytes = vec![0u8; 4096];
        d.mem().read_slice(&mut bytes[..1000], GuestAddress(a)).unwrap();
        d.mem().read_slice(&mut bytes[1000..], GuestAddress(b)).unwrap();
        let distinct: HashSet<u8> = bytes.iter().copied().collect();
        assert!(distinct.len() > 200, "4096 random bytes take {} values", distinct.len());
        seen.push(bytes);
    }
    assert_ne!(seen[0], seen[1], "two requests got the same bytes");
}
