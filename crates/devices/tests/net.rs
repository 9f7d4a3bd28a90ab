//! virtio-net through the vhost-user protocol, over a tap in a network namespace made for the
//! test (root needed): the test is the guest, asks the namespace's kernel for 10.0.2.1's MAC
//! with an ARP request on the transmit queue, and gets the reply on the receive queue.

mod harness;

use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_devices::net::config::Mac;
use bulkhead_devices::net::tap::Tap;
use bulkhead_devices::net::NetDevice;
use harness::netns::NetNs;
use harness::{r, w, Driver, GuestMem, InThread, Setup};
use vm_memory::{Bytes, GuestAddress};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const HDR: usize = 12;
const RX: usize = 0;
const TX: usize = 1;

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[10, 0, 2, 15]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 0, 2, 1]);
    f
}

/// Is `frame` an ARP reply from 10.0.2.1 to us?
fn is_arp_reply(frame: &[u8]) -> bool {
    frame.len() >= 42
        && frame[..6] == GUEST_MAC
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[28..32] == [10, 0, 2, 1]
}

/// Offers `n` receive buffers of 2 KiB; returns their addresses.
fn offer_rx(d: &mut Driver, n: usize) -> Vec<u64> {
    let guest = d.guest.clone();
    (0..n)
        .map(|_| {
            let at = d.alloc(2048);
            let q = d.q(RX);
            let head = q.chain(&guest.mem, &[w(at, 2048)]);
            q.publish(&guest.mem, head);
            at
        })
        .collect()
}

fn send(d: &mut Driver, frame: &[u8]) {
    let at = d.alloc((HDR + frame.len()) as u64);
    d.mem().write_slice(&[0; HDR], GuestAddress(at)).unwrap();
    d.mem().write_slice(frame, GuestAddress(at + HDR as u64)).unwrap();
    assert_eq!(d.roundtrip(TX, &[r(at, (HDR + frame.len()) as u32)]), 0);
}

/// Waits for an ARP reply among the received frames; checks each frame's header.
fn wait_arp_reply(d: &mut Driver, bufs: &[u64], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let guest = d.guest.clone();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let used = d.q(RX).wait_used(&guest.mem, 1, left);
        let (id, len) = used[0];
        let at = bufs[id as usize % bufs.len()];
        let mut frame = vec![0u8; len as usize];
        guest.mem.read_slice(&mut frame, GuestAddress(at)).unwrap();
        assert_eq!(u16::from_le_bytes([frame[10], frame[11]]), 1, "num_buffers");
        assert_eq!(&frame[..10], &[0; 10], "no offloads in the header");
        if is_arp_reply(&frame[HDR..]) {
            return;
        }
    }
}

#[test]
fn arp_request_and_reply_through_a_tap_in_a_namespace() {
    let ns = NetNs::new("dev");
    ns.add_tap("bhtap0", "10.0.2.1/24");
    let fd = ns.open_tap("bhtap0");
    let tap = Tap::from_fd(fd.into_raw_fd()).unwrap();
    assert!(tap.has_vnet_hdr());
    let dev = Arc::new(NetDevice::new(tap, Mac(GUEST_MAC)));
    let (_backend, stream) = InThread::start(dev);
    let setup = Setup { queues: 2, ..Setup::default() };
    let mut d = Driver::ready(stream, Arc::new(GuestMem::new()), &setup);
    assert_eq!(&d.frontend_config(0, 6), &GUEST_MAC, "MAC in the configuration space");
    assert_eq!(d.frontend_config(6, 2), vec![1, 0], "link up");

    // No receive buffers yet: the reply waits in the backend, not lost.
    send(&mut d, &arp_request());
    let guest = d.guest.clone();
    d.q(RX).assert_idle(&guest.mem, Duration::from_millis(300));
    let bufs = offer_rx(&mut d, 8);
    d.q(RX).kick.write(1).unwrap();
    wait_arp_reply(&mut d, &bufs, Duration::from_secs(5));

    // With buffers in place, a second request is answered too.
    send(&mut d, &arp_request());
    wait_arp_reply(&mut d, &bufs, Duration::from_secs(5));
}

#[test]
fn a_large_packet_waits_until_enough_buffers_are_added_one_at_a_time() {
    let ns = NetNs::new("mrg");
    ns.add_tap("bhtap1", "10.0.2.1/24");
    ns.exec(&["ip", "neigh", "add", "10.0.2.15", "lladdr", "52:54:00:12:34:56", "dev", "bhtap1"]);
    let fd = ns.open_tap("bhtap1");
    let tap = Tap::from_fd(fd.into_raw_fd()).unwrap();
    let (_backend, stream) = InThread::start(Arc::new(NetDevice::new(tap, Mac(GUEST_MAC))));
    let setup = Setup { queues: 2, ..Setup::default() };
    let mut d = Driver::ready(stream, Arc::new(GuestMem::new()), &setup);
    assert_ne!(d.features & (1 << 15), 0, "MRG_RXBUF");
    assert!(d.queues[RX].event_idx, "kicks follow avail_event");
    let guest = d.guest.clone();
    let bufs: Vec<u64> = (0..3).map(|_| d.alloc(512)).collect();
    let add = |d: &mut Driver, at: u64| {
        let q = d.q(RX);
        q.submit(&guest.mem, &[w(at, 512)]);
    };
    add(&mut d, bufs[0]);
    // A 1242-byte frame (UDP, 1200 bytes of payload) from the namespace to the "guest": 1254
    // bytes with the header.
    ns.run_in(|| {
        let sock = std::net::UdpSocket::bind("10.0.2.1:0").unwrap();
        sock.send_to(&[7; 1200], "10.0.2.15:9").unwrap();
    });
    d.q(RX).assert_idle(&guest.mem, Duration::from_millis(200));
    add(&mut d, bufs[1]);
    d.q(RX).assert_idle(&guest.mem, Duration::from_millis(200));
    add(&mut d, bufs[2]);
    let used = d.q(RX).wait_used(&guest.mem, 3, Duration::from_secs(5));
    assert_eq!(used, vec![(0, 512), (1, 512), (2, 1254 - 1024)]);
    let mut head = [0u8; 26];
    guest.mem.read_slice(&mut head, GuestAddress(bufs[0])).unwrap();
    assert_eq!(u16::from_le_bytes([head[10], head[11]]), 3, "num_buffers");
    assert_eq!(&head[24..26], &[0x08, 0x00], "an IPv4 frame");
}
