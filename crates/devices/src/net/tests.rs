//! The receive and transmit handlers on mock queues, with a datagram socket pair standing in
//! for the tap.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::config::features;
use super::device::{RxQueue, TxQueue};
use super::tap::{PacketPort, VNET_HDR_LEN};
use crate::backend::queue::testing::{ledger, memory};
use crate::backend::{Progress, QueueContext, QueueHandler};
use crate::limit::Gate;

/// One end of a datagram pair: what the device sees as its tap.
struct FakeTap {
    sock: UnixDatagram,
    vnet_hdr: bool,
}

impl PacketPort for FakeTap {
    fn read_packet(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.recv(buf)
    }
    fn write_packet(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.sock.send(buf)
    }
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
    fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }
    fn name(&self) -> &str {
        "fake"
    }
}

/// (the device's port, the host's end)
fn tap(vnet_hdr: bool) -> (Arc<FakeTap>, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (Arc::new(FakeTap { sock: a, vnet_hdr }), b)
}

fn buffers(addrs: &[(u64, u32)], writable: bool) -> Vec<RawDescriptor> {
    let flags = if writable { 2 } else { 0 };
    addrs.iter().map(|&(a, l)| RawDescriptor::from(Descriptor::new(a, l, flags, 0))).collect()
}

/// Runs `h` once over `q`; returns its progress.
fn process(mem: &GuestMemoryMmap, q: &mut Queue, h: &mut dyn QueueHandler) -> Progress {
    let mut ledger = ledger();
    let mut ctx = QueueContext::new(q, mem, true, None, &mut ledger);
    h.process(&mut ctx)
}

fn used(mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = mock.used().idx().load();
    (0..n)
        .map(|i| {
            let e = mock.used().ring().ref_at(i as usize).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

#[test]
fn transmit_strips_or_keeps_the_header() {
    for vnet in [false, true] {
        let mem = memory();
        let (port, host) = tap(vnet);
        let mock = MockSplitQueue::new(&mem, 16);
        let packet = [vec![0xee; VNET_HDR_LEN], frame(60)].concat();
        mem.write_slice(&packet, GuestAddress(0x10_0000)).unwrap();
        // A good packet, a runt, and one outside memory.
        let descs = buffers(&[(0x10_0000, 72), (0x10_0000, 20), (0xf000_0000, 72)], false);
        mock.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        let mut h = TxQueue::new(port, Gate::unlimited().unwrap());
        assert_eq!(process(&mem, &mut q, &mut h), Progress::Drained);
        assert_eq!(used(&mock), vec![(0, 0), (1, 0), (2, 0)], "all returned");
        let mut got = [0u8; 200];
        let n = host.recv(&mut got).unwrap();
        let want = if vnet { [vec![0; VNET_HDR_LEN], frame(60)].concat() } else { frame(60) };
        assert_eq!(&got[..n], &want[..], "vnet_hdr={vnet}: header zeroed or stripped");
        assert!(host.recv(&mut got).is_err(), "the bad packets were dropped");
    }
}

#[test]
fn receive_waits_for_buffers_without_losing_the_packet() {
    let mem = memory();
    let (port, host) = tap(false);
    let mock = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mock.create_queue().unwrap();
    let mut h = RxQueue::new(port, 0, Gate::unlimited().unwrap());
    assert_eq!(process(&mem, &mut q, &mut h), Progress::Paused, "no packet");
    host.send(&frame(100)).unwrap();
    assert_eq!(process(&mem, &mut q, &mut h), Progress::Starved, "a packet, no buffer");
    assert!(!h.wants_event(), "stop watching the tap while a packet waits");
    mock.add_desc_chains(&buffers(&[(0x10_0000, 2048)], true), 0).unwrap();
    process(&mem, &mut q, &mut h);
    assert_eq!(used(&mock), vec![(0, 112)]);
    assert!(h.wants_event());
    let mut got = vec![0u8; 112];
    mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(&got[..10], &[0; 10]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[12..], &frame(100)[..]);
}

#[test]
fn receive_merges_buffers() {
    let mem = memory();
    let (port, host) = tap(true);
    let mock = MockSplitQueue::new(&mem, 16);
    let bufs = [(0x10_0000, 1000), (0x20_0000, 1000), (0x30_0000, 1000), (0x40_0000, 1000)];
    mock.add_desc_chains(&buffers(&bufs, true), 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    let mut h = RxQueue::new(port, features::MRG_RXBUF, Gate::unlimited().unwrap());
    host.send(&[vec![0x77; VNET_HDR_LEN], frame(2500)].concat()).unwrap();
    process(&mem, &mut q, &mut h);
    assert_eq!(used(&mock), vec![(0, 1000), (1, 1000), (2, 512)]);
    let mut first = [0u8; 12];
    mem.read_slice(&mut first, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(&first[..10], &[0; 10], "offload fields cleared");
    assert_eq!(u16::from_le_bytes([first[10], first[11]]), 3, "num_buffers");
    let mut tail = vec![0u8; 512];
    mem.read_slice(&mut tail, GuestAddress(0x30_0000)).unwrap();
    assert_eq!(&tail[..], &frame(2500)[1988..]);
}

#[test]
fn receive_without_merging_drops_what_does_not_fit_and_keeps_the_buffer() {
    let mem = memory();
    let (port, host) = tap(false);
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(&buffers(&[(0x10_0000, 500)], true), 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    let mut h = RxQueue::new(port, 0, Gate::unlimited().unwrap());
    host.send(&frame(1000)).unwrap(); // too big for the 500-byte buffer
    host.send(&frame(60)).unwrap();
    process(&mem, &mut q, &mut h);
    assert_eq!(used(&mock), vec![(0, 72)], "the small packet got the buffer");
}

#[test]
fn receive_returns_broken_buffers_empty() {
    let mem = memory();
    let (port, host) = tap(false);
    let mock = MockSplitQueue::new(&mem, 16);
    let descs = [buffers(&[(0xf000_0000, 2048)], true), buffers(&[(0x10_0000, 2048)], true)];
    mock.add_desc_chains(&descs.concat(), 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    let mut h = RxQueue::new(port, features::MRG_RXBUF, Gate::unlimited().unwrap());
    host.send(&frame(80)).unwrap();
    process(&mem, &mut q, &mut h);
    assert_eq!(used(&mock), vec![(0, 0), (1, 92)], "the bad buffer back empty, then the packet");
}

#[test]
fn receive_waits_for_enough_buffers_to_merge_into() {
    let mem = memory();
    let (port, host) = tap(false);
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(&buffers(&[(0x10_0000, 1000)], true), 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    let mut h = RxQueue::new(port, features::MRG_RXBUF, Gate::unlimited().unwrap());
    host.send(&frame(1500)).unwrap();
    assert_eq!(process(&mem, &mut q, &mut h), Progress::Starved, "1000 bytes of room for 1512");
    assert_eq!(used(&mock), vec![], "the buffer was put back");
    mock.add_desc_chains(&buffers(&[(0x20_0000, 1000)], true), 1).unwrap();
    process(&mem, &mut q, &mut h);
    assert_eq!(used(&mock), vec![(0, 1000), (1, 512)]);
}

#[test]
fn transmit_over_its_rate_holds_the_frame_until_the_timer_fires() {
    use crate::limit::spec::{BucketSpec, DeviceLimits, TX};
    use crate::limit::{Limiters, LimitsView};
    let mem = memory();
    let (port, host) = tap(false);
    let mock = MockSplitQueue::new(&mem, 16);
    let packet = [vec![0; VNET_HDR_LEN], frame(60)].concat();
    mem.write_slice(&packet, GuestAddress(0x10_0000)).unwrap();
    let descs = buffers(&[(0x10_0000, 72), (0x10_0000, 72)], false);
    mock.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    // One frame per 50 ms.
    let mut limits = DeviceLimits::default();
    limits.0[TX].ops = Some(BucketSpec { size: 1, one_time_burst: 0, refill_time_ms: 50 });
    let gate = Limiters::new(LimitsView::fixed(&limits)).gate(TX).unwrap();
    let mut h = TxQueue::new(port, gate);
    let mut ledger = ledger();
    let mut pass = |q: &mut Queue, h: &mut TxQueue| {
        let mut ctx = QueueContext::new(q, &mem, true, None, &mut ledger);
        h.process(&mut ctx)
    };
    assert_eq!(pass(&mut q, &mut h), Progress::Paused, "the second frame waits");
    assert_eq!(used(&mock), vec![(0, 0)]);
    let mut got = [0u8; 200];
    assert_eq!(host.recv(&mut got).unwrap(), 60);
    assert!(host.recv(&mut got).is_err(), "not sent yet");
    let fd = h.timer_fd().unwrap();
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "the timer fires");
    crate::limit::gate::clear_timer(fd);
    assert_eq!(pass(&mut q, &mut h), Progress::Drained);
    assert_eq!(used(&mock), vec![(0, 0), (1, 0)], "delayed, not dropped");
    assert_eq!(host.recv(&mut got).unwrap(), 60);
}
