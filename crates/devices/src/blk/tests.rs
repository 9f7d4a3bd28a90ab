//! Request parsing and execution on mock queues, over a raw image in a temporary file.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::config::{MAX_RANGES, MAX_REQUEST_BYTES};
use super::device::{BlkDevice, BlkQueue};
use super::request::{status, types};
use crate::backend::queue::testing::{desc, memory, run_one};
use crate::backend::Requests;
use crate::Device;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x80_0000;
const DISK: u64 = 1 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    dev: BlkDevice,
    mem: GuestMemoryMmap,
}

fn fixture(read_only: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    std::fs::write(&path, vec![0xaa; DISK as usize]).unwrap();
    let opts = bulkhead_disk::OpenOptions {
        read_only,
        format: Some(bulkhead_disk::Format::Raw),
        ..Default::default()
    };
    let disk = bulkhead_disk::open(&path, &opts).unwrap();
    let dev = BlkDevice::new(Arc::from(disk), read_only, 1, "serial-0123456789abcdefXYZ");
    Fixture { _dir: dir, path, dev, mem: memory() }
}

impl Fixture {
    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Runs one request; returns (used length, status byte).
    fn run(&self, descs: &[virtio_queue::desc::RawDescriptor]) -> (Option<u32>, u8) {
        let mut h = Requests(BlkQueue::new(&self.dev));
        let used = run_one(&self.mem, &mut h, descs);
        (used, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn io(&self, kind: u32, sector: u64, len: u32) -> (Option<u32>, u8) {
        self.header(kind, sector);
        let data_writable = kind == types::IN || kind == types::GET_ID;
        self.run(&[desc(HDR, 16, false), desc(DATA, len, data_writable), desc(STATUS, 1, true)])
    }
}

#[test]
fn write_flush_read_back() {
    let f = fixture(false);
    f.mem.write_slice(&[0x5a; 4096], GuestAddress(DATA)).unwrap();
    assert_eq!(f.io(types::OUT, 8, 4096), (Some(1), status::OK));
    f.header(types::FLUSH, 0);
    assert_eq!(f.run(&[desc(HDR, 16, false), desc(STATUS, 1, true)]), (Some(1), status::OK));
    f.mem.write_slice(&[0; 4096], GuestAddress(DATA)).unwrap();
    assert_eq!(f.io(types::IN, 8, 4096), (Some(4097), status::OK));
    let mut got = [0u8; 4096];
    f.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, [0x5a; 4096]);
    let file = std::fs::read(&f.path).unwrap();
    assert_eq!(&file[4096..8192], &[0x5a; 4096][..], "the image holds the write");
    assert_eq!(&file[..4096], &[0xaa; 4096][..], "and nothing else changed");
}

#[test]
fn read_only_refuses_writes_discards_and_zeroing() {
    let f = fixture(true);
    assert_ne!(f.dev.features() & super::config::features::RO, 0);
    assert_eq!(f.io(types::OUT, 0, 512), (Some(1), status::IOERR));
    assert_eq!(f.io(types::DISCARD, 0, 16), (Some(1), status::IOERR));
    assert_eq!(f.io(types::WRITE_ZEROES, 0, 16), (Some(1), status::IOERR));
    assert_eq!(f.io(types::IN, 0, 512), (Some(513), status::OK));
    assert_eq!(std::fs::read(&f.path).unwrap(), vec![0xaa; DISK as usize]);
}

#[test]
fn out_of_range_and_misaligned_requests_fail() {
    let f = fixture(false);
    let last = DISK / 512 - 1;
    assert_eq!(f.io(types::IN, last, 512).1, status::OK);
    assert_eq!(f.io(types::IN, last, 1024), (Some(1), status::IOERR), "crosses the end");
    assert_eq!(f.io(types::OUT, last + 1, 512).1, status::IOERR);
    assert_eq!(f.io(types::IN, u64::MAX / 2, 512).1, status::IOERR, "offset overflows");
    assert_eq!(f.io(types::IN, 0, 100), (Some(1), status::IOERR), "not whole sectors");
    assert_eq!(f.io(99, 0, 512), (Some(1), status::UNSUPP));
}

#[test]
fn oversized_requests_fail() {
    let f = fixture(false);
    let len = (MAX_REQUEST_BYTES + 512) as u32;
    assert_eq!(f.io(types::IN, 0, len), (Some(1), status::IOERR));
    assert_eq!(f.io(types::OUT, 0, len), (Some(1), status::IOERR));
}

#[test]
fn malformed_chains_get_ioerr_or_are_returned() {
    let f = fixture(false);
    f.header(types::IN, 0);
    // Header too short.
    assert_eq!(f.run(&[desc(HDR, 8, false), desc(STATUS, 1, true)]), (Some(1), status::IOERR));
    // No status byte: returned untouched.
    assert_eq!(f.run(&[desc(HDR, 16, false)]).0, Some(0));
    // Zero-length status descriptor: no status byte either.
    assert_eq!(f.run(&[desc(HDR, 16, false), desc(STATUS, 0, true)]).0, Some(0));
    // Data outside guest memory.
    let far = desc(0xf000_0000, 512, true);
    assert_eq!(
        f.run(&[desc(HDR, 16, false), far, desc(STATUS, 1, true)]),
        (Some(1), status::IOERR)
    );
    // Readable after writable.
    let wrong = [desc(HDR, 16, false), desc(DATA, 512, true), desc(DATA, 16, false)];
    assert_eq!(f.run(&wrong).0, Some(1), "IOERR in the last writable byte seen");
    assert_eq!(f.mem.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(), status::IOERR);
    // A zero-length read is fine.
    f.header(types::IN, 0);
    assert_eq!(f.run(&[desc(HDR, 16, false), desc(STATUS, 1, true)]), (Some(1), status::OK));
}

#[test]
fn get_id_discard_and_write_zeroes() {
    let f = fixture(false);
    assert_eq!(f.io(types::GET_ID, 0, 20), (Some(21), status::OK));
    let mut id = [0u8; 20];
    f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"serial-0123456789abc");
    assert_eq!(f.io(types::GET_ID, 0, 8), (Some(9), status::OK), "a short buffer gets a prefix");
    // Zero 8 sectors at sector 2, then discard sector 100 (advisory).
    let range = |sector: u64, n: u32, flags: u32| {
        f.mem.write_obj(sector, GuestAddress(DATA)).unwrap();
        f.mem.write_obj(n, GuestAddress(DATA + 8)).unwrap();
        f.mem.write_obj(flags, GuestAddress(DATA + 12)).unwrap();
    };
    range(2, 8, 1);
    assert_eq!(f.io(types::WRITE_ZEROES, 0, 16), (Some(1), status::OK));
    let file = std::fs::read(&f.path).unwrap();
    assert!(file[1024..5120].iter().all(|&b| b == 0));
    assert_eq!(file[5120], 0xaa);
    range(100, 1, 0);
    assert_eq!(f.io(types::DISCARD, 0, 16).1, status::OK);
    range(100, 1, 1);
    assert_eq!(f.io(types::DISCARD, 0, 16).1, status::UNSUPP, "unmap flag on discard");
    range(100, 1, 4);
    assert_eq!(f.io(types::WRITE_ZEROES, 0, 16).1, status::UNSUPP, "reserved flag");
    range(DISK / 512, 1, 0);
    assert_eq!(f.io(types::WRITE_ZEROES, 0, 16).1, status::IOERR, "past the end");
    assert_eq!(f.io(types::DISCARD, 0, 15).1, status::IOERR, "not whole ranges");
    let too_many = 16 * (MAX_RANGES + 1);
    assert_eq!(f.io(types::DISCARD, 0, too_many).1, status::IOERR);
}

#[test]
fn config_and_features() {
    let f = fixture(false);
    let c = f.dev.config();
    assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), DISK / 512);
    assert_eq!(f.dev.features() & super::config::features::RO, 0);
    assert_eq!(f.dev.num_queues(), 1);
    assert!(!f.dev.files().is_empty());
}

/// A small xorshift generator: reproducible pseudo-random input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_descriptor_tables_never_panic() {
    use crate::backend::{QueueContext, QueueHandler};
    use virtio_queue::{Queue, QueueT};
    let f = fixture(false);
    let mut h = Requests(BlkQueue::new(&f.dev));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (desc, avail, used) = (0x1000u64, 0x2000u64, 0x3000u64);
    for round in 0..3000 {
        // 16 descriptors: addresses near the buffers, inside or past memory; random lengths,
        // flags (NEXT, WRITE, INDIRECT) and next indices.
        for i in 0..16u64 {
            let r = rng.next();
            let addr = match r % 4 {
                0 => HDR + (r >> 8) % 0x1000,
                1 => DATA + (r >> 8) % (8 << 20),
                2 => (16 << 20) - (r >> 8) % 0x100,
                _ => rng.next(),
            };
            let len = match rng.next() % 4 {
                0 => 16,
                1 => 1,
                2 => (rng.next() % (5 << 20)) as u32,
                _ => rng.next() as u32,
            };
            let at = GuestAddress(desc + 16 * i);
            f.mem.write_obj(addr, at).unwrap();
            f.mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
            f.mem.write_obj((rng.next() % 8) as u16, GuestAddress(at.0 + 12)).unwrap();
            f.mem.write_obj((rng.next() % 20) as u16, GuestAddress(at.0 + 14)).unwrap();
        }
        // Plausible request headers where some descriptors point.
        f.header((rng.next() % 16) as u32, rng.next() % 4096);
        for slot in 0..16u64 {
            f.mem.write_obj((rng.next() % 18) as u16, GuestAddress(avail + 4 + 2 * slot)).unwrap();
        }
        f.mem.write_obj((rng.next() % 20) as u16, GuestAddress(avail + 2)).unwrap();
        let mut q = Queue::new(16).unwrap();
        q.set_size(16);
        q.set_ready(true);
        q.try_set_desc_table_address(GuestAddress(desc)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
        q.try_set_used_ring_address(GuestAddress(used)).unwrap();
        let mut ledger = crate::backend::queue::testing::ledger();
        let mut ctx = QueueContext::new(&mut q, &f.mem, round % 2 == 0, None, &mut ledger);
        h.process(&mut ctx);
        assert!(q.next_avail() <= 20, "round {round}");
    }
}
