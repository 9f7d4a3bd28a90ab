//! Descriptor-chain handling of every device (blk, rng, net receive, net transmit), through the
//! queue worker's own code (`VringState::serve`, without its thread): a guest memory whose
//! descriptor table, rings and buffers the input lays out, an optional inflight region the input
//! fills (a previous, compromised backend's record), then the device serves what the input makes
//! available, one chain at a time or all at once. Checked after each step:
//!
//! * no panic (a panic in a worker is a crash: the ledger check must never fire on guest input);
//! * the device wrote guest memory only inside the used ring and the device-writable buffers of
//!   chains the guest offered (every byte elsewhere is unchanged) — except in a step where such a
//!   buffer overlaps a descriptor table, which is served but not checked;
//! * every new used entry names a descriptor inside the table and a length no larger than the
//!   chain's device-writable bytes;
//! * no more completions than chains offered;
//! * afterwards, a well-formed request on the same queue is served correctly.
//!
//! Input: byte 0 device (0 blk, 1 rng, 2 net rx, 3 net tx), byte 1 flags (1 indirect, 2 event
//! idx, 4 mergeable rx buffers, 8 inflight region, 16 read-only disk, 32 the available index as
//! the input wrote it, in one step), byte 2 queue size (2^(b % 9)), bytes 3-4 the queue's start
//! index, byte 5 chains to offer (steps, up to 16), byte 6 packets waiting on the tap (net rx), then guest
//! memory from address 0 (the descriptor table at 0, the available ring at 0x1000, the used ring
//! at 0x2000; a second region at 0x20000; the inflight region's bytes follow the first 64 KiB).

#![no_main]

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use bulkhead_devices::backend::chain::{self, Table};
use bulkhead_devices::backend::inflight::InflightRegion;
use bulkhead_devices::backend::vring::Vring;
use bulkhead_devices::backend::{QueueHandler, Requests};
use bulkhead_devices::blk::device::{BlkDevice, BlkQueue};
use bulkhead_devices::net::device::{RxQueue, TxQueue};
use bulkhead_devices::net::tap::PacketPort;
use bulkhead_devices::rng::device::RngQueue;
use bulkhead_devices::limit::Gate;
use bulkhead_devices::DeviceKind;
use bulkhead_disk::DiskImage;
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

const RAM0: u64 = 0;
const RAM0_LEN: usize = 0x10000;
const RAM1: u64 = 0x20000;
const RAM1_LEN: usize = 0x10000;
const DESC: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const DISK_BYTES: usize = 64 << 10;
const HEADER: usize = 7;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Blk,
    Rng,
    NetRx,
    NetTx,
}

/// A tap stand-in: packets to receive, packets sent.
#[derive(Default)]
struct Port {
    rx: Mutex<VecDeque<Vec<u8>>>,
    tx: Mutex<Vec<Vec<u8>>>,
}

impl PacketPort for Port {
    fn read_packet(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(p) = self.rx.lock().unwrap().pop_front() else {
            return Err(std::io::ErrorKind::WouldBlock.into());
        };
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        Ok(n)
    }
    fn write_packet(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx.lock().unwrap().push(buf.to_vec());
        Ok(buf.len())
    }
    fn fd(&self) -> RawFd {
        -1
    }
    fn has_vnet_hdr(&self) -> bool {
        true
    }
    fn name(&self) -> &str {
        "fuzz"
    }
}

fn disk() -> Arc<dyn DiskImage> {
    static DISK: OnceLock<Arc<dyn DiskImage>> = OnceLock::new();
    DISK.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm".into()
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!("bulkhead-fuzz-vq-{}.raw", std::process::id()));
        let bytes: Vec<u8> = (0..DISK_BYTES).map(|i| (i * 7 + i / 512) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        let opts = bulkhead_disk::OpenOptions {
            read_only: false,
            format: Some(bulkhead_disk::Format::Raw),
            ..Default::default()
        };
        let img = bulkhead_disk::open(&path, &opts).unwrap();
        let _ = std::fs::remove_file(&path);
        Arc::from(img)
    })
    .clone()
}

fn read_all(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut v = vec![0u8; RAM0_LEN + RAM1_LEN];
    mem.read_slice(&mut v[..RAM0_LEN], GuestAddress(RAM0)).unwrap();
    mem.read_slice(&mut v[RAM0_LEN..], GuestAddress(RAM1)).unwrap();
    v
}

/// Offset in `read_all`'s snapshot of guest address `a`.
fn snap_offset(a: u64) -> Option<usize> {
    if a < RAM0 + RAM0_LEN as u64 {
        Some((a - RAM0) as usize)
    } else if (RAM1..RAM1 + RAM1_LEN as u64).contains(&a) {
        Some(RAM0_LEN + (a - RAM1) as usize)
    } else {
        None
    }
}

/// Marks the device-writable bytes of every chain a head of the table starts; returns each
/// head's device-writable length.
fn mark_writable(mem: &GuestMemoryMmap, table: Table, allowed: &mut [bool]) -> Vec<u64> {
    (0..table.size)
        .map(|head| {
            let c = chain::walk(mem, table, head);
            for seg in c.segments.iter().filter(|s| s.writable) {
                let start = snap_offset(seg.addr.0);
                let end = snap_offset(seg.addr.0 + u64::from(seg.len) - 1);
                if let (Some(a), Some(b)) = (start, end) {
                    if b >= a && b - a + 1 == seg.len as usize {
                        allowed[a..=b].iter_mut().for_each(|x| *x = true);
                        continue;
                    }
                }
                for a in seg.addr.0..seg.addr.0 + u64::from(seg.len) {
                    if let Some(i) = snap_offset(a) {
                        allowed[i] = true;
                    }
                }
            }
            c.writable_len()
        })
        .collect()
}

struct Setup {
    kind: Kind,
    size: u16,
    table: Table,
    mem: GuestMemoryMmap,
    port: Arc<Port>,
    disk: Arc<dyn DiskImage>,
}

fn handler(s: &Setup, flags: u8) -> Box<dyn QueueHandler> {
    match s.kind {
        Kind::Blk => {
            let dev = BlkDevice::new(s.disk.clone(), flags & 16 != 0, 1, "fuzz");
            Box::new(Requests(BlkQueue::new(&dev)))
        }
        Kind::Rng => Box::new(Requests(RngQueue::default())),
        Kind::NetRx => {
            let f =
                if flags & 4 != 0 { bulkhead_devices::net::config::features::MRG_RXBUF } else { 0 };
            Box::new(RxQueue::new(s.port.clone(), f, Gate::unlimited().unwrap()))
        }
        Kind::NetTx => Box::new(TxQueue::new(s.port.clone(), Gate::unlimited().unwrap())),
    }
}

/// Offsets (in `read_all`'s snapshot) of the descriptor table and of the indirect tables its
/// entries name.
fn descriptor_bytes(mem: &GuestMemoryMmap, table: Table) -> impl Iterator<Item = usize> {
    let mut ranges = vec![(table.addr.0, 16 * u64::from(table.size))];
    for i in 0..u64::from(table.size) {
        let at = table.addr.unchecked_add(16 * i);
        let addr: u64 = mem.read_obj(at).unwrap_or(0);
        let len: u32 = mem.read_obj(at.unchecked_add(8)).unwrap_or(0);
        let flags: u16 = mem.read_obj(at.unchecked_add(12)).unwrap_or(0);
        if flags & 4 != 0 {
            ranges.push((addr, u64::from(len)));
        }
    }
    // Each range, clipped to the two regions.
    let regions = [(RAM0, RAM0_LEN as u64, 0usize), (RAM1, RAM1_LEN as u64, RAM0_LEN)];
    ranges.into_iter().flat_map(move |(a, n)| {
        let end = a.saturating_add(n);
        regions.into_iter().flat_map(move |(base, len, at)| {
            let (lo, hi) = (a.max(base), end.min(base + len));
            (lo..hi.max(lo)).map(move |x| at + (x - base) as usize)
        })
    })
}

fn used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

/// One step: serve, then check what changed.
fn step(
    s: &Setup,
    vring: &Vring,
    h: &mut dyn QueueHandler,
    offered: &mut u64,
    completed: &mut u64,
) {
    let before = read_all(&s.mem);
    let used_before = used_idx(&s.mem);
    let used_ring =
        snap_offset(USED).unwrap()..snap_offset(USED).unwrap() + 6 + 8 * usize::from(s.size);
    let mut buffers = vec![false; before.len()];
    let room_before = mark_writable(&s.mem, s.table, &mut buffers);
    // A device-writable buffer over a descriptor table lets the device change chains while it
    // serves them (a status byte written into the next chain's address): what it may write is
    // then not knowable from the states before and after. Such steps are only run, not checked.
    let tables_writable = descriptor_bytes(&s.mem, s.table).any(|i| buffers[i]);
    let stop = AtomicBool::new(false);
    vring.lock().serve(&s.mem, h, &stop);
    // A write into the descriptor table may change what later chains name: allow the union.
    let room_after = mark_writable(&s.mem, s.table, &mut buffers);
    let after = read_all(&s.mem);
    // Page by page (a slice comparison is one memcmp), then byte by byte where they differ.
    if tables_writable {
        return;
    }
    for page in (0..before.len()).step_by(4096) {
        let r = page..(page + 4096).min(before.len());
        if before[r.clone()] == after[r.clone()] {
            continue;
        }
        for i in r.filter(|&i| before[i] != after[i]) {
            assert!(
                buffers[i] || used_ring.contains(&i),
                "the device wrote byte {i:#x} outside its buffers and the used ring"
            );
        }
    }
    // Used entries: only when no buffer overlaps the used ring (else the guest made it garbage).
    if used_ring.clone().any(|i| buffers[i]) {
        return;
    }
    let used_after = used_idx(&s.mem);
    let n = used_after.wrapping_sub(used_before);
    *completed += u64::from(n);
    assert!(*completed <= *offered, "{completed} completions for {offered} chains offered");
    for k in 0..n {
        let slot = u64::from(used_before.wrapping_add(k) % s.size);
        let at = GuestAddress(USED + 4 + 8 * slot);
        let id: u32 = s.mem.read_obj(at).unwrap();
        let len: u32 = s.mem.read_obj(at.unchecked_add(4)).unwrap();
        assert!(id < u32::from(s.size), "used id {id} outside a table of {}", s.size);
        let room = room_before[id as usize].max(room_after[id as usize]);
        assert!(u64::from(len) <= room, "used len {len} for a chain with {room} writable bytes");
    }
}

fn put_desc(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = GuestAddress(DESC + 16 * u64::from(i));
    mem.write_obj(addr, at).unwrap();
    mem.write_obj(len, at.unchecked_add(8)).unwrap();
    mem.write_obj(flags, at.unchecked_add(12)).unwrap();
    mem.write_obj(next, at.unchecked_add(14)).unwrap();
}

/// Offers one well-formed request and checks that it is served.
fn well_formed(s: &Setup, vring: &Vring, h: &mut dyn QueueHandler, read_only: bool) {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    let mem = &s.mem;
    let buf = RAM1 + 0x1000;
    let next_avail = vring.lock().queue.next_avail();
    let expect: Box<dyn Fn(&Setup, u32)> = match s.kind {
        Kind::Blk if s.size >= 3 => {
            // A read of sector 1 into 512 bytes, then the status byte.
            mem.write_slice(&[0u8; 8], GuestAddress(buf)).unwrap();
            mem.write_obj(1u64, GuestAddress(buf + 8)).unwrap();
            put_desc(mem, 0, buf, 16, NEXT, 1);
            put_desc(mem, 1, buf + 0x100, 512, NEXT | WRITE, 2);
            put_desc(mem, 2, buf + 0x400, 1, WRITE, 0);
            Box::new(|s: &Setup, len| {
                assert_eq!(len, 513, "a well-formed read completed with length {len}");
                let mut got = [0u8; 512];
                s.mem.read_slice(&mut got, GuestAddress(RAM1 + 0x1100)).unwrap();
                let mut want = [0u8; 512];
                s.disk.read_at(&mut want, 512).unwrap();
                assert!(got == want, "a well-formed read returned other bytes than the disk's");
                let st: u8 = s.mem.read_obj(GuestAddress(RAM1 + 0x1400)).unwrap();
                assert_eq!(st, 0, "a well-formed read failed");
            })
        }
        Kind::Blk => {
            // A flush: header and status byte.
            mem.write_obj(4u32, GuestAddress(buf)).unwrap();
            put_desc(mem, 0, buf, 16, NEXT, if s.size >= 2 { 1 } else { 0 });
            if s.size < 2 {
                return;
            }
            put_desc(mem, 1, buf + 0x400, 1, WRITE, 0);
            let _ = read_only;
            Box::new(|s: &Setup, len| {
                assert_eq!(len, 1);
                let st: u8 = s.mem.read_obj(GuestAddress(RAM1 + 0x1400)).unwrap();
                assert_eq!(st, 0, "a well-formed flush failed");
            })
        }
        Kind::Rng => {
            put_desc(mem, 0, buf, 64, WRITE, 0);
            Box::new(|_, len| assert_eq!(len, 64, "a well-formed rng request got {len} bytes"))
        }
        Kind::NetRx => {
            s.port.rx.lock().unwrap().push_back(vec![0x42; 12 + 60]);
            put_desc(mem, 0, buf, 0x8000, WRITE, 0);
            Box::new(|_, len| {
                assert!((12 + 14..=0x8000).contains(&len), "a packet of {len} bytes was received")
            })
        }
        Kind::NetTx => {
            s.port.tx.lock().unwrap().clear();
            mem.write_slice(&[0x17; 12 + 60], GuestAddress(buf)).unwrap();
            put_desc(mem, 0, buf, 12 + 60, 0, 0);
            Box::new(|s: &Setup, len| {
                assert_eq!(len, 0);
                let sent = s.port.tx.lock().unwrap();
                assert!(sent.iter().any(|p| p.len() == 72), "a well-formed packet was not sent");
            })
        }
    };
    // Chains the device still holds (net rx) come first; give room for a packet in them too.
    let slot = u64::from(next_avail % s.size);
    mem.write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * slot)).unwrap();
    mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
    mem.write_obj(next_avail.wrapping_add(1), GuestAddress(AVAIL + 2)).unwrap();
    let used0 = used_idx(mem);
    let stop = AtomicBool::new(false);
    {
        let mut st = vring.lock();
        st.enabled = true;
    }
    vring.lock().serve(mem, h, &stop);
    let used1 = used_idx(mem);
    assert_ne!(used0, used1, "a well-formed request was not served");
    let last = u64::from(used1.wrapping_sub(1) % s.size);
    let at = GuestAddress(USED + 4 + 8 * last);
    let id: u32 = mem.read_obj(at).unwrap();
    let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
    assert_eq!(id, 0, "the well-formed request's head is 0");
    expect(s, len);
}

/// Bytes of a one-queue inflight region.
fn inflight_region_size(size: u16) -> usize {
    bulkhead_devices::backend::inflight::queue_region_size(size)
}

/// Well-formed inputs for each device: the seed corpus (`BULKHEAD_FUZZ_SEEDS=DIR`).
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    struct Image(Vec<u8>);
    impl Image {
        fn put(&mut self, at: usize, bytes: &[u8]) {
            if self.0.len() < at + bytes.len() {
                self.0.resize(at + bytes.len(), 0);
            }
            self.0[at..at + bytes.len()].copy_from_slice(bytes);
        }
        fn desc(&mut self, table: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
            let mut d = addr.to_le_bytes().to_vec();
            d.extend(len.to_le_bytes());
            d.extend(flags.to_le_bytes());
            d.extend(next.to_le_bytes());
            self.put(table + 16 * i, &d);
        }
        fn avail(&mut self, heads: &[u16]) {
            for (k, h) in heads.iter().enumerate() {
                self.put(AVAIL as usize + 4 + 2 * k, &h.to_le_bytes());
            }
            self.put(USED as usize + 6 + 8 * 16, &[0]);
        }
    }
    let header =
        |dev: u8, flags: u8, steps: u8, packets: u8| vec![dev, flags, 4, 0, 0, steps, packets];
    let mut out = Vec::new();
    // blk: a read, a write, a flush, GET_ID, a discard; then an indirect read.
    let mut m = Image(Vec::new());
    let blk_req = |m: &mut Image, at: usize, kind: u32, sector: u64| {
        m.put(at, &kind.to_le_bytes());
        m.put(at + 8, &sector.to_le_bytes());
    };
    blk_req(&mut m, 0x4000, 0, 1);
    m.desc(0, 0, 0x4000, 16, NEXT, 1);
    m.desc(0, 1, 0x4100, 1024, NEXT | WRITE, 2);
    m.desc(0, 2, 0x4500, 1, WRITE, 0);
    blk_req(&mut m, 0x4600, 1, 4);
    m.desc(0, 3, 0x4600, 16, NEXT, 4);
    m.desc(0, 4, 0x4700, 512, NEXT, 5);
    m.desc(0, 5, 0x4900, 1, WRITE, 0);
    blk_req(&mut m, 0x4a00, 4, 0);
    m.desc(0, 6, 0x4a00, 16, NEXT, 7);
    m.desc(0, 7, 0x4b00, 1, WRITE, 0);
    blk_req(&mut m, 0x4c00, 8, 0);
    m.desc(0, 8, 0x4c00, 16, NEXT, 9);
    m.desc(0, 9, 0x4d00, 20, NEXT | WRITE, 10);
    m.desc(0, 10, 0x4d20, 1, WRITE, 0);
    blk_req(&mut m, 0x4e00, 11, 0);
    m.put(0x4e10, &[8, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]);
    m.desc(0, 11, 0x4e00, 32, NEXT, 12);
    m.desc(0, 12, 0x4f00, 1, WRITE, 0);
    blk_req(&mut m, 0x5000, 0, 2);
    m.desc(0, 13, 0x5100, 48, INDIRECT, 0);
    m.desc(0x5100, 0, 0x5000, 16, NEXT, 1);
    m.desc(0x5100, 1, 0x5200, 512, NEXT | WRITE, 2);
    m.desc(0x5100, 2, 0x5400, 1, WRITE, 0);
    m.avail(&[0, 3, 6, 8, 11, 13]);
    let mut seed = header(0, 1 | 2, 6, 0);
    seed.extend(&m.0);
    out.push(("blk", seed));
    // blk with an inflight region recording heads 3 and 0 in flight (counters 1, 2).
    let mut region = vec![0u8; inflight_region_size(16)];
    region[8..10].copy_from_slice(&1u16.to_le_bytes());
    region[10..12].copy_from_slice(&16u16.to_le_bytes());
    for (head, counter) in [(3usize, 1u64), (0, 2)] {
        region[16 + 16 * head] = 1;
        region[16 + 16 * head + 8..16 + 16 * head + 16].copy_from_slice(&counter.to_le_bytes());
    }
    let mut seed = header(0, 1 | 8, 4, 0);
    seed.extend(&region);
    seed.extend(&m.0);
    out.push(("blk-inflight", seed));
    // rng: two buffers, one of them in the second region.
    let mut m = Image(Vec::new());
    m.desc(0, 0, 0x4000, 64, WRITE, 0);
    m.desc(0, 1, RAM1 + 0x100, 32, WRITE | NEXT, 2);
    m.desc(0, 2, RAM1 + 0x200, 32, WRITE, 0);
    m.avail(&[0, 1]);
    let mut seed = header(1, 2, 2, 0);
    seed.extend(&m.0);
    out.push(("rng", seed));
    // net rx: two packets waiting, four 1526-byte buffers, mergeable.
    let mut m = Image(Vec::new());
    for i in 0..4u16 {
        m.desc(0, usize::from(i), 0x4000 + 0x800 * u64::from(i), 1526, WRITE, 0);
    }
    m.avail(&[0, 1, 2, 3]);
    let mut seed = header(2, 4 | 2, 4, 2);
    seed.extend(&m.0);
    out.push(("net-rx", seed));
    // net tx: two frames, header and frame in one buffer and in two.
    let mut m = Image(Vec::new());
    m.put(0x4000, &[0u8; 12]);
    m.put(0x400c, &[0xff; 60]);
    m.desc(0, 0, 0x4000, 72, 0, 0);
    m.desc(0, 1, 0x4000, 12, NEXT, 2);
    m.desc(0, 2, 0x400c, 60, 0, 0);
    m.avail(&[0, 1]);
    let mut seed = header(3, 0, 2, 0);
    seed.extend(&m.0);
    out.push(("net-tx", seed));
    out
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("BULKHEAD_FUZZ_SEEDS") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, seed) in seeds() {
                std::fs::write(dir.join(name), seed).unwrap();
            }
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let kind = [Kind::Blk, Kind::Rng, Kind::NetRx, Kind::NetTx][usize::from(data[0] % 4)];
    let flags = data[1];
    let size = 1u16 << (data[2] % 9);
    let base = u16::from_le_bytes([data[3], data[4]]);
    let steps = data[5];
    let packets = data[6];
    let mut image = &data[HEADER..];
    let mut inflight_bytes: &[u8] = &[];
    if flags & 8 != 0 {
        let n = image.len().min(inflight_region_size(size));
        (inflight_bytes, image) = image.split_at(n);
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM0), RAM0_LEN), (GuestAddress(RAM1), RAM1_LEN)])
        .unwrap();
    let n0 = image.len().min(RAM0_LEN);
    mem.write_slice(&image[..n0], GuestAddress(RAM0)).unwrap();
    let rest = &image[n0..];
    let n1 = rest.len().min(RAM1_LEN);
    mem.write_slice(&rest[..n1], GuestAddress(RAM1)).unwrap();

    let port = Arc::new(Port::default());
    for k in 0..packets % 5 {
        let len = 12 + (usize::from(k) * 997 + usize::from(packets) * 31) % 2000;
        port.rx.lock().unwrap().push_back(vec![k; len]);
    }
    let devkind = match kind {
        Kind::Blk => DeviceKind::Blk,
        Kind::Rng => DeviceKind::Rng,
        _ => DeviceKind::Net,
    };
    let index = if kind == Kind::NetTx { 1 } else { 0 };
    let mut vring = Vring::new(devkind, index, 1024);
    {
        let mut st = vring.lock();
        assert!(st.queue.try_set_size(size).is_ok());
        st.queue.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
        st.queue.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        st.queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        st.queue.set_next_avail(base);
        st.queue.set_event_idx(flags & 2 != 0);
        st.indirect = flags & 1 != 0;
        st.enabled = true;
    }
    let inflight = if flags & 8 != 0 && matches!(kind, Kind::Blk | Kind::Rng) {
        let region = InflightRegion::create(1, size).unwrap();
        let n = inflight_bytes.len().min(region.size() as usize);
        region.file().write_all_at(&inflight_bytes[..n], 0).unwrap();
        Some(Arc::new(region))
    } else {
        None
    };
    let atomic = GuestMemoryAtomic::new(mem.clone());
    if vring.prepare(&atomic, inflight).is_err() {
        return;
    }
    let table = Table { addr: GuestAddress(DESC), size, indirect: flags & 1 != 0 };
    let s = Setup { kind, size, table, mem, port, disk: disk() };
    let mut h = handler(&s, flags);
    let resubmits = u64::from(size); // at most one per descriptor
    let (mut offered, mut completed) = (resubmits, 0u64);
    if flags & 32 != 0 {
        // The available index as the input wrote it (maybe far ahead, or behind).
        let avail: u16 = s.mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
        let next = vring.lock().queue.next_avail();
        offered += u64::from(avail.wrapping_sub(next).min(size));
        step(&s, &vring, &mut *h, &mut offered, &mut completed);
    } else {
        let next = vring.lock().queue.next_avail();
        for k in 1..=u16::from(steps % 17) {
            s.mem.write_obj(next.wrapping_add(k), GuestAddress(AVAIL + 2)).unwrap();
            offered += 1;
            step(&s, &vring, &mut *h, &mut offered, &mut completed);
        }
    }
    let read_only = flags & 16 != 0;
    well_formed(&s, &vring, &mut *h, read_only);
    drop(vring);
});
