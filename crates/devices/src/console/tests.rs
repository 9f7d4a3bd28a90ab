//! The receive and transmit handlers on mock queues, with real sockets, pipes and ptys as the
//! host side.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::config::{ConsoleConfig, ConsoleHost, Inherited};
use super::device::{ConsoleDevice, RxQueue, TxQueue, MAX_BYTES_PER_BUFFER};
use super::host::HostEnds;
use super::port::{Port, OUTPUT_MAX};
use crate::backend::queue::testing::{ledger, memory};
use crate::backend::{Progress, QueueContext, QueueHandler};
use crate::Device;

fn chains(addrs: &[(u64, u32)], writable: bool) -> Vec<RawDescriptor> {
    let flags = if writable { 2 } else { 0 };
    addrs.iter().map(|&(a, l)| RawDescriptor::from(Descriptor::new(a, l, flags, 0))).collect()
}

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

/// Whether `fd` is readable within `ms`.
fn readable(fd: &impl AsRawFd, ms: i32) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes one pollfd that lives for the call.
    unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
}

/// Reads exactly `n` bytes from a client within a second.
fn read_n(client: &mut UnixStream, n: usize) -> Vec<u8> {
    client.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut got = vec![0u8; n];
    client.read_exact(&mut got).unwrap();
    got
}

/// A console on a socket in `dir`: the device, the socket's path.
fn on_socket(dir: &Path) -> (ConsoleDevice, std::path::PathBuf) {
    let path = dir.join("console.sock");
    let cfg = ConsoleConfig { host: ConsoleHost::Socket(path.clone()) };
    (ConsoleDevice::open(&cfg, None).unwrap(), path)
}

/// Has the guest transmit `bytes` (one buffer) through `tx`.
fn transmit(mem: &GuestMemoryMmap, tx: &mut TxQueue, bytes: &[u8]) {
    let mock = MockSplitQueue::new(mem, 16);
    mem.write_slice(bytes, GuestAddress(0x10_0000)).unwrap();
    mock.add_desc_chains(&chains(&[(0x10_0000, bytes.len() as u32)], false), 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    assert_eq!(process(mem, &mut q, tx), Progress::Drained);
    assert_eq!(used(&mock), vec![(0, 0)], "every transmit buffer comes back at once");
}

#[test]
fn guest_output_waits_for_a_client_and_reaches_it_when_it_connects() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, path) = on_socket(dir.path());
    let port = port_of(&dev);
    let mem = memory();
    let mut tx = TxQueue::new(port.clone());
    transmit(&mem, &mut tx, b"booting\n");
    let mut client = UnixStream::connect(&path).unwrap();
    assert!(readable(&port.epoll_fd_owned(), 1000), "the receive worker wakes for the client");
    let mock = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mock.create_queue().unwrap();
    let mut rx = RxQueue::new(port.clone());
    assert_eq!(process(&mem, &mut q, &mut rx), Progress::Paused, "accepted; nothing typed yet");
    assert_eq!(read_n(&mut client, 8), b"booting\n", "what waited");
    transmit(&mem, &mut tx, b"login: ");
    assert_eq!(read_n(&mut client, 7), b"login: ", "then straight through");
    assert_eq!(dev.handover().len(), 1, "the client is kept for a successor");
}

/// The port behind a device (through its queue handlers' shared state).
fn port_of(dev: &ConsoleDevice) -> Arc<Port> {
    dev.port()
}

impl Port {
    /// A duplicate of the epoll set's descriptor, to poll in tests.
    fn epoll_fd_owned(&self) -> OwnedFd {
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor of the open epoll set.
        unsafe { OwnedFd::from_raw_fd(libc::fcntl(self.epoll_fd(), libc::F_DUPFD_CLOEXEC, 0)) }
    }
}

#[test]
fn host_input_fills_the_guests_buffers_and_waits_when_there_are_none() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, path) = on_socket(dir.path());
    let port = port_of(&dev);
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mock.create_queue().unwrap();
    let mut rx = RxQueue::new(port.clone());
    let mut client = UnixStream::connect(&path).unwrap();
    process(&mem, &mut q, &mut rx);
    client.write_all(b"hello, guest\n").unwrap();
    assert!(readable(&port.epoll_fd_owned(), 1000), "input wakes the receive worker");
    assert_eq!(process(&mem, &mut q, &mut rx), Progress::Starved, "input, and no buffer");
    assert!(!readable(&port.epoll_fd_owned(), 50), "the input is not watched meanwhile");
    // A bad buffer (outside memory), then two small ones: the line is split across them.
    let descs =
        [chains(&[(0xf000_0000, 64)], true), chains(&[(0x10_0000, 8), (0x20_0000, 64)], true)];
    mock.add_desc_chains(&descs.concat(), 0).unwrap();
    assert_eq!(process(&mem, &mut q, &mut rx), Progress::Paused);
    assert_eq!(used(&mock), vec![(0, 0), (1, 8), (2, 5)]);
    let mut got = [0u8; 13];
    mem.read_slice(&mut got[..8], GuestAddress(0x10_0000)).unwrap();
    mem.read_slice(&mut got[8..], GuestAddress(0x20_0000)).unwrap();
    assert_eq!(&got, b"hello, guest\n");
}

#[test]
fn a_client_that_leaves_makes_room_for_the_next_and_unsent_output_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, path) = on_socket(dir.path());
    let port = port_of(&dev);
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mock.create_queue().unwrap();
    let mut rx = RxQueue::new(port.clone());
    let first = UnixStream::connect(&path).unwrap();
    process(&mem, &mut q, &mut rx);
    let mut second = UnixStream::connect(&path).unwrap();
    assert!(dev.handover().len() == 1);
    drop(first);
    assert!(readable(&port.epoll_fd_owned(), 1000), "the hang-up wakes the worker");
    process(&mem, &mut q, &mut rx);
    assert!(dev.handover().is_empty(), "the first is gone");
    let mut tx = TxQueue::new(port.clone());
    transmit(&mem, &mut tx, b"for whoever comes");
    process(&mem, &mut q, &mut rx);
    assert_eq!(read_n(&mut second, 17), b"for whoever comes", "the second was accepted");
}

#[test]
fn a_client_that_only_stops_typing_still_gets_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, path) = on_socket(dir.path());
    let port = port_of(&dev);
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(&chains(&[(0x10_0000, 64)], true), 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    let mut rx = RxQueue::new(port.clone());
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"last words").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    for _ in 0..3 {
        process(&mem, &mut q, &mut rx);
    }
    assert_eq!(used(&mock), vec![(0, 10)], "what it typed before reached the guest");
    assert!(!readable(&port.epoll_fd_owned(), 50), "its end of input is not a busy loop");
    let mut tx = TxQueue::new(port.clone());
    transmit(&mem, &mut tx, b"reply");
    assert_eq!(read_n(&mut client, 5), b"reply");
    drop(client);
    assert!(readable(&port.epoll_fd_owned(), 1000), "its hang-up is seen");
    process(&mem, &mut q, &mut rx);
    assert!(dev.handover().is_empty(), "then it is dropped");
}

#[test]
fn unread_output_is_bounded_and_the_newest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, path) = on_socket(dir.path());
    let port = port_of(&dev);
    let mem = memory();
    let mut tx = TxQueue::new(port.clone());
    let chunk: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..(OUTPUT_MAX / 4096 + 4) {
        transmit(&mem, &mut tx, &chunk);
    }
    transmit(&mem, &mut tx, b"THE END");
    assert_eq!(dev.dropped(), 4 * 4096 + 7);
    let mut client = UnixStream::connect(&path).unwrap();
    client.set_nonblocking(true).unwrap();
    let mut rx = RxQueue::new(port.clone());
    let mock = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mock.create_queue().unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..1000 {
        process(&mem, &mut q, &mut rx);
        match client.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        }
        if got.len() >= OUTPUT_MAX {
            break;
        }
    }
    assert_eq!(got.len(), OUTPUT_MAX);
    assert!(got.ends_with(b"THE END"), "the newest bytes were kept");
}

#[test]
fn a_huge_or_broken_transmit_buffer_is_returned_and_capped() {
    let dir = tempfile::tempdir().unwrap();
    let (dev, path) = on_socket(dir.path());
    let port = port_of(&dev);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let mock = MockSplitQueue::new(&mem, 16);
    // A readable buffer larger than the cap, one outside memory, one writable only.
    let descs = [
        chains(&[(0x10_0000, (MAX_BYTES_PER_BUFFER + 4096) as u32)], false),
        chains(&[(0xf000_0000, 16)], false),
        chains(&[(0x10_0000, 16)], true),
    ];
    mock.add_desc_chains(&descs.concat(), 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    let mut tx = TxQueue::new(port.clone());
    assert_eq!(process(&mem, &mut q, &mut tx), Progress::Drained);
    assert_eq!(used(&mock), vec![(0, 0), (1, 0), (2, 0)]);
    assert_eq!(dev.dropped(), MAX_BYTES_PER_BUFFER - OUTPUT_MAX as u64, "capped, then bounded");
    drop(path);
}

#[test]
fn stdio_like_ends_are_polled_and_an_input_epoll_refuses_is_no_input() {
    let (input_r, mut input_w) = pipe();
    let (output_r, output_w) = pipe();
    let ends = HostEnds::Stdio { input: input_r, output: output_w };
    let port = Arc::new(Port::new(ends, None).unwrap());
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(&chains(&[(0x10_0000, 64)], true), 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    let mut rx = RxQueue::new(port.clone());
    input_w.write_all(b"typed").unwrap();
    process(&mem, &mut q, &mut rx);
    assert_eq!(used(&mock), vec![(0, 5)]);
    let mut tx = TxQueue::new(port.clone());
    transmit(&mem, &mut tx, b"printed");
    let mut got = [0u8; 7];
    (&output_r).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"printed");
    drop(input_w);
    assert!(readable(&port.epoll_fd_owned(), 1000), "the end of input wakes the worker");
    process(&mem, &mut q, &mut rx);
    assert!(!readable(&port.epoll_fd_owned(), 50), "and is then no more watched");

    // /dev/null as input: epoll refuses it; no input, no busy loop.
    let null = std::fs::File::open("/dev/null").unwrap();
    let (_r, w) = pipe();
    let port = Arc::new(Port::new(HostEnds::Stdio { input: null, output: w }, None).unwrap());
    let mut rx = RxQueue::new(port.clone());
    let mut q: Queue = MockSplitQueue::new(&mem, 16).create_queue().unwrap();
    assert_eq!(process(&mem, &mut q, &mut rx), Progress::Paused);
    assert!(!readable(&port.epoll_fd_owned(), 50));
}

#[test]
fn a_handed_over_client_is_the_console_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let core_ends = Arc::new(HostEnds::listen(&path).unwrap());
    let mut client = UnixStream::connect(&path).unwrap();
    // The predecessor accepted it; the core kept it and hands it over.
    let HostEnds::Listener { listener, .. } = &*core_ends else { unreachable!() };
    let (accepted, _) = listener.accept().unwrap();
    let kept = std::fs::File::from(OwnedFd::from(accepted));
    let cfg = ConsoleConfig { host: ConsoleHost::Open(core_ends.clone()) };
    let dev = ConsoleDevice::open(&cfg, Some(kept)).unwrap();
    assert_eq!(dev.handover().len(), 1);
    let mem = memory();
    let mut tx = TxQueue::new(dev.port());
    transmit(&mem, &mut tx, b"still here");
    assert_eq!(read_n(&mut client, 10), b"still here");
    let (input, output) = pipe();
    let stdio = Arc::new(HostEnds::Stdio { input, output });
    let e = ConsoleDevice::open(
        &ConsoleConfig { host: ConsoleHost::Open(stdio) },
        Some(tempfile::tempfile().unwrap()),
    );
    assert!(e.is_err(), "only a socket's console has a client");
    let e = HostEnds::adopt(Inherited::Listener(dev.files()[0])).map(drop);
    assert!(e.is_err(), "an epoll set is no listener");
}

#[test]
fn a_pty_console_crosses_bytes_both_ways() {
    let ends = Arc::new(HostEnds::pty().unwrap());
    let HostEnds::Pty { path: Some(path), .. } = &*ends else { unreachable!() };
    let mut user = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let dev = ConsoleDevice::open(&ConsoleConfig { host: ConsoleHost::Open(ends.clone()) }, None)
        .unwrap();
    let mem = memory();
    let mut tx = TxQueue::new(dev.port());
    transmit(&mem, &mut tx, b"guest\n");
    let mut got = [0u8; 6];
    user.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"guest\n");
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(&chains(&[(0x10_0000, 64)], true), 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    let mut rx = RxQueue::new(dev.port());
    user.write_all(b"host").unwrap();
    assert!(readable(&dev.port().epoll_fd_owned(), 1000));
    process(&mem, &mut q, &mut rx);
    assert_eq!(used(&mock), vec![(0, 4)]);
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both were just created and belong to nobody else.
    unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) }
}
