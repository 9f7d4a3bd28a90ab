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

#[test]
fn interrupts_follow_the_driver_s_used_event() {
    use std::os::fd::AsRawFd;
    use std::time::Duration;
    let dev = bulkhead_devices::open(&bulkhead_devices::DeviceConfig::Rng(Default::default()));
    let (_backend, stream) = harness::InThread::start(dev.unwrap());
    let mut d = Driver::ready(stream, Arc::new(GuestMem::new()), &Setup::default());
    assert_ne!(d.features & (1 << 29), 0, "VIRTIO_RING_F_EVENT_IDX negotiated");
    let buf = d.alloc(64);
    let guest = d.guest.clone();
    let q = d.q(0);
    q.submit(&guest.mem, &[w(buf, 64)]);
    assert!(harness::wait_readable(q.call.as_raw_fd(), Duration::from_secs(5)), "interrupted");
    q.wait_used(&guest.mem, 1, Duration::from_secs(5));
    let _ = q.call.read();
    // used_event set 5 entries ahead: one completion must not interrupt.
    let head = q.chain(&guest.mem, &[w(buf, 64)]);
    q.publish(&guest.mem, head);
    let used_event = GuestAddress(q.avail + 4 + 2 * u64::from(q.size));
    guest.mem.write_obj(q.used_idx(&guest.mem) + 5, used_event).unwrap();
    q.kick.write(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while q.used_idx(&guest.mem) != 2 {
        assert!(std::time::Instant::now() < deadline, "not served");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!harness::wait_readable(q.call.as_raw_fd(), Duration::from_millis(100)));
}
