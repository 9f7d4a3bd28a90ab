//! Shared by the vhost-user and virtio-mmio fuzz targets: real backends on threads, the input's
//! chunk format, and the recording proxy that makes their seed corpora from a real session.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};

use bulkhead_core::memory::GuestRam;
use bulkhead_core::virtio::frontend::{Connection, QueueConfig, Setup};
use bulkhead_core::virtio::DeviceKind as CoreKind;
use bulkhead_core::virtio::DeviceShape;
use bulkhead_devices::net::config::Mac;
use bulkhead_devices::net::tap::PacketPort;
use bulkhead_devices::{Device, DeviceKind, ServeEnd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The three devices, as the backends and the core name them.
pub const KINDS: [(DeviceKind, CoreKind); 3] = [
    (DeviceKind::Rng, CoreKind::RNG),
    (DeviceKind::Blk, CoreKind::BLOCK),
    (DeviceKind::Net, CoreKind::NET),
];

/// A tap stand-in that never has a packet and drops what it is given; its fd (for the worker's
/// epoll) never becomes readable.
pub struct NullPort(EventFd);

impl PacketPort for NullPort {
    fn read_packet(&self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn write_packet(&self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    fn has_vnet_hdr(&self) -> bool {
        true
    }
    fn name(&self) -> &str {
        "null"
    }
}

/// A scratch file name in memory where possible.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("bulkhead-fuzz-{name}-{}", std::process::id()))
}

/// The device of `kind`, made once per process (blk over a 1 MiB raw image).
pub fn device(kind: DeviceKind) -> Arc<dyn Device> {
    static DEVICES: OnceLock<Vec<Arc<dyn Device>>> = OnceLock::new();
    let all = DEVICES.get_or_init(|| {
        let path = scratch("blk.raw");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let opts = bulkhead_disk::OpenOptions {
            read_only: false,
            format: Some(bulkhead_disk::Format::Raw),
            ..Default::default()
        };
        let disk = bulkhead_disk::open(&path, &opts).unwrap();
        let _ = std::fs::remove_file(&path);
        let blk = bulkhead_devices::blk::device::BlkDevice::new(Arc::from(disk), false, 1, "fuzz");
        let net = bulkhead_devices::net::NetDevice::new(
            NullPort(EventFd::new(0).unwrap()),
            Mac([0x52, 0x54, 0, 1, 2, 3]),
        );
        let rng = bulkhead_devices::rng::device::RngDevice::open(&Default::default()).unwrap();
        vec![Arc::new(rng), Arc::new(blk), Arc::new(net)]
    });
    let i = KINDS.iter().position(|(k, _)| *k == kind).unwrap();
    all[i].clone()
}

/// 16 MiB of guest RAM (a memfd), made once per process.
pub fn ram() -> Arc<GuestRam> {
    static RAM: OnceLock<Arc<GuestRam>> = OnceLock::new();
    RAM.get_or_init(|| Arc::new(GuestRam::new(16 << 20).unwrap())).clone()
}

/// A backend serving `kind` on a thread; join it for how its connection ended.
pub fn spawn_backend(kind: DeviceKind) -> (UnixStream, std::thread::JoinHandle<ServeEnd>) {
    let (front, back) = UnixStream::pair().unwrap();
    let dev = device(kind);
    let stop = Arc::new(EventFd::new(0).unwrap());
    let t = std::thread::spawn(move || bulkhead_devices::serve(dev, back, stop).unwrap());
    (front, t)
}

/// One chunk of a stream: bytes and how many of the files go with them.
#[derive(Clone, Debug, Default)]
pub struct Chunk {
    /// 0–3 files.
    pub files: u8,
    /// The first file is a memory file (else an eventfd).
    pub memory_first: bool,
    pub bytes: Vec<u8>,
}

/// Splits an input into chunks: `[control][len: u16 le][len bytes]…`; control bits 0–1 are the
/// number of files, bit 2 puts the memory file first.
pub fn parse_chunks(mut data: &[u8], max: usize) -> Vec<Chunk> {
    let mut out = Vec::new();
    while data.len() >= 3 && out.len() < max {
        let ctl = data[0];
        let len = usize::from(u16::from_le_bytes([data[1], data[2]])).min(data.len() - 3);
        out.push(Chunk {
            files: ctl & 3,
            memory_first: ctl & 4 != 0,
            bytes: data[3..3 + len].to_vec(),
        });
        data = &data[3 + len..];
    }
    out
}

/// The inverse of [`parse_chunks`].
pub fn encode_chunks(chunks: &[Chunk]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        for piece in c.bytes.chunks(u16::MAX as usize) {
            out.push(c.files | if c.memory_first { 4 } else { 0 });
            out.extend_from_slice(&(piece.len() as u16).to_le_bytes());
            out.extend_from_slice(piece);
        }
    }
    out
}

/// Files to attach: the guest RAM memfd and two eventfds.
pub struct Files {
    pub memory: RawFd,
    pub events: [EventFd; 2],
}

impl Files {
    pub fn new() -> Files {
        Files {
            memory: ram().file.as_raw_fd(),
            events: [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
        }
    }

    fn pick(&self, c: &Chunk) -> Vec<RawFd> {
        let e = [self.events[0].as_raw_fd(), self.events[1].as_raw_fd()];
        let order =
            if c.memory_first { [self.memory, e[0], e[1]] } else { [e[0], e[1], self.memory] };
        order[..usize::from(c.files)].to_vec()
    }
}

/// Sends the chunks on `sock`; stops at the first error (the peer is gone, or too many files
/// are in flight).
pub fn send_chunks(sock: &UnixStream, chunks: &[Chunk], files: &Files) {
    for c in chunks {
        if c.bytes.is_empty() {
            continue;
        }
        if sock.send_with_fds(&[&c.bytes[..]], &files.pick(c)).is_err() {
            return;
        }
    }
}

/// The queues as a driver set them up (fixed addresses in the 16 MiB of RAM).
pub fn queues(kind: CoreKind) -> Vec<QueueConfig> {
    (0..kind.queues())
        .map(|i| {
            let base = 0x10_0000 + 0x1_0000 * i as u64;
            QueueConfig {
                size: 256,
                ready: true,
                desc: base,
                driver: base + 0x1000,
                device: base + 0x2000,
            }
        })
        .collect()
}

/// What the core does with a connection over a device's life: connect, start the queues (with
/// an inflight region when the backend keeps one), write the configuration space, reset.
/// Every step may fail; none may panic.
pub fn core_session(conn: UnixStream, kind: CoreKind) {
    let Ok(mut c) = Connection::connect(conn, &DeviceShape::of(kind)) else { return };
    assert_eq!(c.config.len(), kind.config_size() as usize, "the configuration space's size");
    let kicks: Vec<EventFd> = (0..kind.queues()).map(|_| EventFd::new(0).unwrap()).collect();
    let call = EventFd::new(0).unwrap();
    let inflight = if c.keeps_inflight() { c.new_inflight(kind.queues()).ok() } else { None };
    let acked = c.features & (bulkhead_core::virtio::VIRTIO_F_VERSION_1 | 0xff_ffff);
    let q = queues(kind);
    let setup = Setup {
        ram: ram(),
        acked: Some(acked),
        queues: q.clone(),
        inflight: inflight.map(Arc::new),
    };
    let _ = c.activate(&setup, &kicks, &call);
    if kind.config_size() > 0 {
        let _ = c.write_config(0, &[0]);
    }
    let _ = c.reset(&q);
}

/// Records a real session between the core's frontend and a real backend of `kind`, through a
/// proxy: returns what went each way (frontend → backend, backend → frontend) as chunks.
pub fn record_session(kind: usize) -> (Vec<Chunk>, Vec<Chunk>) {
    let (dev_kind, core_kind) = KINDS[kind];
    let (to_backend, backend) = spawn_backend(dev_kind);
    let (core_end, proxy_end) = UnixStream::pair().unwrap();
    let forward = |from: UnixStream, to: UnixStream, log: Arc<Mutex<Vec<Chunk>>>| {
        std::thread::spawn(move || loop {
            let mut buf = vec![0u8; 1 << 16];
            let mut fds = [0 as RawFd; 8];
            let mut iov = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }];
            // SAFETY: the iovec points at `buf`, which outlives the call; received fds are ours.
            let Ok((n, nfds)) = (unsafe { from.recv_with_fds(&mut iov, &mut fds) }) else { break };
            if n == 0 {
                let _ = to.shutdown(std::net::Shutdown::Write);
                break;
            }
            let fds = &fds[..nfds];
            // SAFETY: fstat on fds we just received.
            let memory_first = fds.first().is_some_and(|&fd| unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG
            });
            log.lock().unwrap().push(Chunk {
                files: nfds as u8,
                memory_first,
                bytes: buf[..n].to_vec(),
            });
            let ok = to.send_with_fds(&[&buf[..n]], fds).is_ok();
            for &fd in fds {
                // SAFETY: we own the received fds and have passed them on.
                unsafe { libc::close(fd) };
            }
            if !ok {
                break;
            }
        })
    };
    let (up, down) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let a = forward(proxy_end.try_clone().unwrap(), to_backend.try_clone().unwrap(), up.clone());
    let b = forward(to_backend, proxy_end, down.clone());
    core_session(core_end, core_kind);
    a.join().unwrap();
    b.join().unwrap();
    backend.join().unwrap();
    let up = up.lock().unwrap().clone();
    let down = down.lock().unwrap().clone();
    (up, down)
}

/// With `BULKHEAD_FUZZ_SEEDS=DIR` set, writes `make(kind)` for each device kind to
/// `DIR/<name>-<kind>` and exits (how the seed corpora were made).
pub fn write_seeds(name: &str, make: impl Fn(usize) -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("BULKHEAD_FUZZ_SEEDS") else { return };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (k, _)) in KINDS.iter().enumerate() {
        for (j, seed) in make(i).into_iter().enumerate() {
            std::fs::write(dir.join(format!("{name}-{k}-{j}")), seed).unwrap();
        }
    }
    std::process::exit(0);
}

/// With `BULKHEAD_FUZZ_LOG=1`, the crates' log lines go to stderr (to debug a finding).
pub fn init_log() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            eprintln!("{} {}: {}", r.level(), r.target(), r.args());
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if std::env::var_os("BULKHEAD_FUZZ_LOG").is_some() && log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}
