//! virtio-blk through the vhost-user protocol: a test frontend drives `serve` on a thread
//! (monolithic mode) and `bulkhead-device blk` as a process (compartment mode).

mod harness;

use std::sync::Arc;
use std::time::Duration;

use bulkhead_devices::{BlkConfig, DeviceConfig, ServeEnd};
use bulkhead_disk::tools::CreateSpec;
use harness::{r, raw_image, w, Driver, GuestMem, InThread, Process, Setup};
use vhost::vhost_user::VhostUserFrontend;
use vm_memory::{Bytes, GuestAddress};

const MIB: usize = 1 << 20;
const OUT: u32 = 1;
const IN: u32 = 0;
const FLUSH: u32 = 4;
const OK: u8 = 0;
const IOERR: u8 = 1;

fn open_blk(cfg: &str) -> Arc<dyn bulkhead_devices::Device> {
    let cfg: BlkConfig = cfg.parse().unwrap();
    bulkhead_devices::open(&DeviceConfig::Blk(cfg)).unwrap()
}

/// Writes a request header; returns (header address, status address).
fn request(d: &mut Driver, kind: u32, sector: u64) -> (u64, u64) {
    let hdr = d.alloc(16);
    let status = d.alloc(1);
    d.mem().write_obj(kind, GuestAddress(hdr)).unwrap();
    d.mem().write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
    d.mem().write_obj(sector, GuestAddress(hdr + 8)).unwrap();
    d.mem().write_obj(0xffu8, GuestAddress(status)).unwrap();
    (hdr, status)
}

fn status(d: &Driver, at: u64) -> u8 {
    d.mem().read_obj(GuestAddress(at)).unwrap()
}

/// Writes `data` at `sector`, returns the status.
fn write(d: &mut Driver, sector: u64, data: &[u8]) -> u8 {
    let (hdr, st) = request(d, OUT, sector);
    let buf = d.alloc(data.len() as u64);
    d.mem().write_slice(data, GuestAddress(buf)).unwrap();
    assert_eq!(d.roundtrip(0, &[r(hdr, 16), r(buf, data.len() as u32), w(st, 1)]), 1);
    status(d, st)
}

/// Reads `len` bytes at `sector`; (status, data).
fn read(d: &mut Driver, sector: u64, len: usize) -> (u8, Vec<u8>) {
    let (hdr, st) = request(d, IN, sector);
    let buf = d.alloc(len as u64);
    d.mem().write_slice(&vec![0xee; len], GuestAddress(buf)).unwrap();
    let used = d.roundtrip(0, &[r(hdr, 16), w(buf, len as u32), w(st, 1)]);
    let mut data = vec![0; len];
    d.mem().read_slice(&mut data, GuestAddress(buf)).unwrap();
    let s = status(d, st);
    if s == OK {
        assert_eq!(used as usize, len + 1);
    }
    (s, data)
}

fn flush(d: &mut Driver) -> u8 {
    let (hdr, st) = request(d, FLUSH, 0);
    d.roundtrip(0, &[r(hdr, 16), w(st, 1)]);
    status(d, st)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn in_thread_write_flush_read_back_reaches_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = raw_image(dir.path(), "disk.raw", 8 * MIB, 0);
    let dev = open_blk(&format!("{},format=raw", image.display()));
    let (backend, stream) = InThread::start(dev);
    let mut d = Driver::ready(stream, Arc::new(GuestMem::new()), &Setup::default());
    let config = d.frontend_config(0, 60);
    assert_eq!(u64::from_le_bytes(config[..8].try_into().unwrap()), (8 * MIB / 512) as u64);
    let data = pattern(64 * 1024, 7);
    assert_eq!(write(&mut d, 2048, &data), OK);
    assert_eq!(flush(&mut d), OK);
    assert!(read(&mut d, 2048, data.len()) == (OK, data.clone()), "read back");
    let file = std::fs::read(&image).unwrap();
    assert_eq!(&file[MIB..MIB + data.len()], &data[..], "the image file holds the write");
    drop(d);
    assert_eq!(backend.join(), ServeEnd::Disconnected, "a clean disconnect ends serve");
}

#[test]
fn process_serves_qcow2_and_survives_hostile_requests() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.qcow2");
    let spec = CreateSpec::Qcow2(Default::default());
    bulkhead_disk::tools::create(&image, 4 * MIB as u64, &spec).unwrap();
    let sock = dir.path().join("blk.sock");
    let disk = format!("{},format=qcow2", image.display());
    let mut p = Process::start(&["blk", "--disk", &disk], &sock);
    let guest = Arc::new(GuestMem::new());
    let mut d = Driver::ready(p.connect(), guest.clone(), &Setup::default());
    let data = pattern(8192, 3);
    assert_eq!(write(&mut d, 16, &data), OK);
    // Beyond the disk, oversized, zero-length, misaligned: errors, and the queue goes on.
    assert_eq!(read(&mut d, (4 * MIB / 512) as u64, 512).0, IOERR, "past the end");
    assert_eq!(read(&mut d, (4 * MIB / 512) as u64 - 1, 1024).0, IOERR, "crosses the end");
    assert_eq!(write(&mut d, 0, &vec![1; 4 * MIB + 512]), IOERR, "larger than 4 MiB");
    assert_eq!(read(&mut d, 0, 100).0, IOERR, "not whole sectors");
    let (hdr, st) = request(&mut d, IN, 0);
    let zero = d.alloc(1);
    assert_eq!(d.roundtrip(0, &[r(hdr, 16), w(zero, 0), w(st, 1)]), 1, "zero-length data");
    assert_eq!(status(&d, st), OK);
    hostile_chains(&mut d);
    assert!(read(&mut d, 16, data.len()) == (OK, data.clone()), "the queue still works");
    assert!(p.alive());
    drop(d);
    // The next frontend sees the data (through the qcow2 metadata in the file).
    let mut d = Driver::ready(p.connect(), guest, &Setup::default());
    assert!(read(&mut d, 16, data.len()) == (OK, data), "the next frontend reads it back");
    drop(d);
    assert!(p.alive());
    let check = bulkhead_disk::open(&image, &shared_read()).unwrap().check().unwrap();
    assert!(check.is_clean(), "{check:?}");
}

/// Loops, out-of-range addresses and indices, wrong direction, an avail index from nowhere.
fn hostile_chains(d: &mut Driver) {
    let guest = d.guest.clone();
    let mem = &guest.mem;
    let (hdr, st) = request(d, IN, 0);
    let q = d.q(0);
    // A loop: descriptor 200 → 201 → 200.
    q.write_desc(mem, 200, hdr, 16, 1, 201);
    q.write_desc(mem, 201, st, 1, 1 | 2, 200);
    q.publish(mem, 200);
    q.kick.write(1).unwrap();
    let used = q.wait_used(mem, 1, Duration::from_secs(5));
    assert_eq!(used[0].0, 200, "a looping chain is returned");
    // Out of range: an index past the table, a buffer past memory.
    q.write_desc(mem, 202, hdr, 16, 1, 60000);
    q.publish(mem, 202);
    q.write_desc(mem, 203, hdr, 16, 1, 204);
    q.write_desc(mem, 204, 1 << 40, 4096, 1 | 2, 205);
    q.write_desc(mem, 205, st, 1, 2, 0);
    q.publish(mem, 203);
    // Wrong direction: readable after writable.
    q.write_desc(mem, 206, st, 1, 1 | 2, 207);
    q.write_desc(mem, 207, hdr, 16, 0, 0);
    q.publish(mem, 206);
    // A head outside the table: it cannot go to the used ring, and must not stop the queue.
    q.publish(mem, 9999);
    q.kick.write(1).unwrap();
    let used = q.wait_used(mem, 3, Duration::from_secs(5));
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), vec![202, 203, 206]);
    assert_eq!(status(d, st), IOERR, "the buffer past memory made an IOERR");
}

#[test]
fn read_only_disk_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let image = raw_image(dir.path(), "ro.raw", MIB, 0x11);
    let dev = open_blk(&format!("{},readonly,format=raw", image.display()));
    let (_backend, stream) = InThread::start(dev);
    let mut d = Driver::ready(stream, Arc::new(GuestMem::new()), &Setup::default());
    assert_ne!(d.features & (1 << 5), 0, "VIRTIO_BLK_F_RO negotiated");
    assert_eq!(write(&mut d, 0, &[0; 512]), IOERR);
    assert_eq!(read(&mut d, 0, 512), (OK, vec![0x11; 512]));
    assert_eq!(std::fs::read(&image).unwrap(), vec![0x11; MIB]);
}

#[test]
fn vmdk_image_in_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.vmdk");
    let spec = CreateSpec::Vmdk(Default::default());
    bulkhead_disk::tools::create(&image, 2 * MIB as u64, &spec).unwrap();
    let sock = dir.path().join("vmdk.sock");
    let disk = format!("{},format=vmdk", image.display());
    let _p = Process::start(&["blk", "--disk", &disk], &sock);
    let mut d = Driver::ready(_p.connect(), Arc::new(GuestMem::new()), &Setup::default());
    let data = pattern(128 * 1024, 9);
    assert_eq!(write(&mut d, 100, &data), OK);
    assert_eq!(flush(&mut d), OK);
    assert!(read(&mut d, 100, data.len()) == (OK, data.clone()), "read back");
    let disk = bulkhead_disk::open(&image, &shared_read()).unwrap();
    let mut back = vec![0; data.len()];
    disk.read_at(&mut back, 100 * 512).unwrap();
    assert!(back == data, "the VMDK file holds the write");
}

#[test]
fn two_queues_serve_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = raw_image(dir.path(), "mq.raw", MIB, 0);
    let dev = open_blk(&format!("{},format=raw,queues=2", image.display()));
    assert_eq!(dev.num_queues(), 2);
    let (_backend, stream) = InThread::start(dev);
    let setup = Setup { queues: 2, ..Setup::default() };
    let mut d = Driver::ready(stream, Arc::new(GuestMem::new()), &setup);
    assert_eq!(d.frontend.get_queue_num().unwrap(), 2);
    for (queue, sector, byte) in [(0, 0u64, 0xa1u8), (1, 8, 0xb2)] {
        let (hdr, st) = request(&mut d, OUT, sector);
        let buf = d.alloc(4096);
        d.mem().write_slice(&[byte; 4096], GuestAddress(buf)).unwrap();
        assert_eq!(d.roundtrip(queue, &[r(hdr, 16), r(buf, 4096), w(st, 1)]), 1);
        assert_eq!(status(&d, st), OK);
    }
    let file = std::fs::read(&image).unwrap();
    assert!(file[..4096].iter().all(|&b| b == 0xa1) && file[4096..8192].iter().all(|&b| b == 0xb2));
}

/// Median time of `n` sequential 4 KiB reads through `d`.
fn median_read_latency(d: &mut Driver, n: usize) -> Duration {
    let (hdr, st) = request(d, IN, 0);
    let buf = d.alloc(4096);
    let guest = d.guest.clone();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = std::time::Instant::now();
        let q = d.q(0);
        q.submit(&guest.mem, &[r(hdr, 16), w(buf, 4096), w(st, 1)]);
        q.wait_used(&guest.mem, 1, Duration::from_secs(5));
        times.push(start.elapsed());
    }
    assert_eq!(status(d, st), OK);
    times.sort();
    times[n / 2]
}

#[test]
#[ignore = "a measurement: cargo test --release -p bulkhead-devices --test blk -- --ignored --nocapture"]
fn measure_read_latency_in_thread_and_in_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let image = raw_image(dir.path(), "lat.raw", MIB, 0);
    let disk = format!("{},format=raw", image.display());
    let (_backend, stream) = InThread::start(open_blk(&disk));
    let mut d = Driver::ready(stream, Arc::new(GuestMem::new()), &Setup::default());
    let thread = median_read_latency(&mut d, 2000);
    let p = Process::start(&["blk", "--disk", &disk], &dir.path().join("lat.sock"));
    let mut d = Driver::ready(p.connect(), Arc::new(GuestMem::new()), &Setup::default());
    let process = median_read_latency(&mut d, 2000);
    eprintln!(
        "4 KiB read, kick to used, median of 2000: in-thread {thread:?}, process {process:?}"
    );
}

/// Reading an image its backend (still running) holds for writing: the locks would refuse
/// it, so read as `qemu-img -U` does.
fn shared_read() -> bulkhead_disk::OpenOptions {
    bulkhead_disk::OpenOptions {
        locking: bulkhead_disk::Locking::ForceShare,
        read_only: true,
        ..Default::default()
    }
}
