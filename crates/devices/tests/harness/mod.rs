//! A small vhost-user *frontend* and virtio driver for the device-level tests.
//!
//! Guest memory is a memfd mapped here and handed to the backend in `SET_MEM_TABLE`. Each
//! [`TestQueue`] lays out a split virtqueue in that memory, writes descriptor chains and the
//! available ring as a driver would, kicks the backend's eventfd and waits on the call eventfd
//! for the used ring to move. The frontend side is the `vhost` crate's `Frontend`.
#![allow(dead_code)]

pub mod netns;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bulkhead_devices::{Device, DeviceError, ServeEnd};
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory size.
pub const MEM_SIZE: u64 = 32 << 20;
/// Where the frontend "maps" guest memory (any value: the backend only translates).
pub const USER_BASE: u64 = 0x7f00_0000_0000;
/// Buffers are allocated from here.
pub const BUFFERS: u64 = 1 << 20;

const VERSION_1: u64 = 1 << 32;
const INDIRECT: u64 = 1 << 28;
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// Guest memory in a memfd.
pub struct GuestMem {
    pub file: File,
    pub mem: GuestMemoryMmap,
}

impl GuestMem {
    pub fn new() -> GuestMem {
        let name = std::ffi::CString::new("test-guest").unwrap();
        // SAFETY: valid name; a new fd or -1.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create failed");
        // SAFETY: a new fd we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(MEM_SIZE).unwrap();
        let map =
            MmapRegion::from_file(FileOffset::new(file.try_clone().unwrap(), 0), MEM_SIZE as usize)
                .unwrap();
        let region = GuestRegionMmap::new(map, GuestAddress(0)).unwrap();
        let mem = GuestMemoryMmap::from_regions(vec![region]).unwrap();
        GuestMem { file, mem }
    }

    pub fn region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE,
            userspace_addr: USER_BASE,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        }
    }
}

/// A buffer of one descriptor.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

pub fn r(addr: u64, len: u32) -> Buf {
    Buf { addr, len, writable: false }
}

pub fn w(addr: u64, len: u32) -> Buf {
    Buf { addr, len, writable: true }
}

/// One split virtqueue, driven from the test.
pub struct TestQueue {
    pub index: usize,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub kick: EventFd,
    pub call: EventFd,
    /// VIRTIO_RING_F_EVENT_IDX negotiated: kick only when the device's `avail_event` asks.
    pub event_idx: bool,
    next_desc: u16,
    avail_idx: u16,
    seen_used: u16,
}

impl TestQueue {
    fn new(index: usize, size: u16) -> TestQueue {
        let base = 0x4000 * index as u64 * (u64::from(size) / 256).max(1);
        TestQueue {
            index,
            size,
            desc: base,
            avail: base + 16 * u64::from(size),
            used: base + 16 * u64::from(size) + 0x1000,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
            event_idx: false,
            next_desc: 0,
            avail_idx: 0,
            seen_used: 0,
        }
    }

    pub fn config(&self) -> VringConfigData {
        VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: USER_BASE + self.desc,
            used_ring_addr: USER_BASE + self.used,
            avail_ring_addr: USER_BASE + self.avail,
            log_addr: None,
        }
    }

    /// Writes raw descriptor `i`.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = GuestAddress(self.desc + 16 * u64::from(i));
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Writes a chain of `bufs` into free descriptors and returns its head (not yet available).
    pub fn chain(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (k, b) in bufs.iter().enumerate() {
            let i = (head + k as u16) % self.size;
            let last = k + 1 == bufs.len();
            let flags = if last { 0 } else { 1 } | if b.writable { 2 } else { 0 };
            self.write_desc(mem, i, b.addr, b.len, flags, (i + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        head
    }

    /// VIRTIO_RING_F_EVENT_IDX: asks for an interrupt once the used index passes what we saw.
    fn want_interrupt(&self, mem: &GuestMemoryMmap) {
        let used_event = GuestAddress(self.avail + 4 + 2 * u64::from(self.size));
        mem.write_obj(self.seen_used, used_event).unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes `head` available (without kicking).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        self.want_interrupt(mem);
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Sets the available index directly (for hostile-driver tests).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Adds a chain, makes it available and kicks (if the device wants a kick). Returns its
    /// head.
    pub fn submit(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
        let head = self.chain(mem, bufs);
        let old = self.avail_idx;
        self.publish(mem, head);
        self.kick_if_needed(mem, old);
        head
    }

    /// Kicks unless EVENT_IDX is on and the device's `avail_event` was not passed since `old`.
    pub fn kick_if_needed(&self, mem: &GuestMemoryMmap, old: u16) -> bool {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let event: u16 =
            mem.read_obj(GuestAddress(self.used + 4 + 8 * u64::from(self.size))).unwrap();
        let new = self.avail_idx;
        let needed =
            !self.event_idx || new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old);
        if needed {
            self.kick.write(1).unwrap();
        }
        needed
    }

    /// The driver's available index.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Waits until the used ring holds `n` entries not seen yet; returns them as (id, len).
    pub fn wait_used(
        &mut self,
        mem: &GuestMemoryMmap,
        n: u16,
        timeout: Duration,
    ) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + timeout;
        while self.used_idx(mem).wrapping_sub(self.seen_used) < n {
            if Instant::now() > deadline {
                panic!(
                    "queue {}: {} used entries after {timeout:?}, wanted {n}",
                    self.index,
                    self.used_idx(mem).wrapping_sub(self.seen_used)
                );
            }
            wait_readable(self.call.as_raw_fd(), Duration::from_millis(20));
            let _ = self.call.read();
        }
        self.take_used(mem, n)
    }

    fn take_used(&mut self, mem: &GuestMemoryMmap, n: u16) -> Vec<(u32, u32)> {
        (0..n)
            .map(|_| {
                let slot = u64::from(self.seen_used % self.size);
                let at = self.used + 4 + 8 * slot;
                self.seen_used = self.seen_used.wrapping_add(1);
                (
                    mem.read_obj(GuestAddress(at)).unwrap(),
                    mem.read_obj(GuestAddress(at + 4)).unwrap(),
                )
            })
            .collect()
    }

    /// Asserts that nothing reaches the used ring within `wait`.
    pub fn assert_idle(&self, mem: &GuestMemoryMmap, wait: Duration) {
        std::thread::sleep(wait);
        assert_eq!(self.used_idx(mem), self.seen_used, "queue {} moved", self.index);
    }

    /// Pretends that everything up to `used` was seen (after a reconnection).
    pub fn set_seen(&mut self, used: u16) {
        self.seen_used = used;
    }
}

pub fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) > 0 }
}

/// A frontend with guest memory and queues.
pub struct Driver {
    pub frontend: Frontend,
    pub guest: Arc<GuestMem>,
    pub queues: Vec<TestQueue>,
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
    next_buf: u64,
}

/// How to set a driver up.
#[derive(Clone)]
pub struct Setup {
    pub queues: usize,
    pub queue_size: u16,
    /// Device feature bits to acknowledge (beyond VERSION_1, INDIRECT, PROTOCOL_FEATURES).
    pub device_features: u64,
    /// Use this inflight region (`SET_INFLIGHT_FD`) or, if `Some(None)`, ask for a new one.
    pub inflight: Option<Option<(VhostUserInflight, Arc<File>)>>,
    /// Vring base for every queue.
    pub base: u16,
    /// Keep the rings as they are in memory (a reconnection); else they are zeroed (a reset).
    pub keep_rings: bool,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            queues: 1,
            queue_size: 256,
            device_features: !0,
            inflight: None,
            base: 0,
            keep_rings: false,
        }
    }
}

impl Driver {
    /// The handshake up to the memory table; the queues are then started with [`Driver::start`].
    pub fn connect(stream: UnixStream, guest: Arc<GuestMem>, setup: &Setup) -> Driver {
        let mut frontend = Frontend::from_stream(stream, 16);
        frontend.set_owner().unwrap();
        let offered = frontend.get_features().unwrap();
        let wanted =
            VERSION_1 | INDIRECT | PROTOCOL_FEATURES | (setup.device_features & 0xffff_ffff);
        let features = offered & wanted;
        frontend.set_features(features).unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        frontend.set_protocol_features(protocol).unwrap();
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        frontend.set_mem_table(&[guest.region()]).unwrap();
        let mut queues: Vec<TestQueue> =
            (0..setup.queues).map(|i| TestQueue::new(i, setup.queue_size)).collect();
        for q in &mut queues {
            q.event_idx = features & (1 << 29) != 0;
            if setup.keep_rings {
                q.avail_idx = guest.mem.read_obj(GuestAddress(q.avail + 2)).unwrap();
                q.seen_used = q.used_idx(&guest.mem);
                q.next_desc = q.avail_idx.wrapping_mul(4) % q.size;
            } else {
                let len = (q.used + 4 + 8 * u64::from(q.size) + 2 - q.desc) as usize;
                guest.mem.write_slice(&vec![0; len], GuestAddress(q.desc)).unwrap();
            }
        }
        Driver { frontend, guest, queues, features, protocol, next_buf: BUFFERS }
    }

    /// Sends each queue's setup, kick last, and enables it.
    pub fn start(&mut self, base: u16) {
        for q in &self.queues {
            let f = &mut self.frontend;
            f.set_vring_num(q.index, q.size).unwrap();
            f.set_vring_addr(q.index, &q.config()).unwrap();
            f.set_vring_base(q.index, base).unwrap();
            f.set_vring_call(q.index, &q.call).unwrap();
            f.set_vring_kick(q.index, &q.kick).unwrap();
            f.set_vring_enable(q.index, true).unwrap();
        }
    }

    /// Connects and starts in one go.
    pub fn ready(stream: UnixStream, guest: Arc<GuestMem>, setup: &Setup) -> Driver {
        let mut d = Driver::connect(stream, guest, setup);
        d.start(setup.base);
        d
    }

    /// Closes the connection and keeps the queues (to play with the rings while no backend is
    /// connected).
    pub fn disconnect(self) -> Vec<TestQueue> {
        self.queues
    }

    /// Reads `len` bytes of the device's configuration space at `offset`.
    pub fn frontend_config(&mut self, offset: u32, len: usize) -> Vec<u8> {
        let flags = vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE;
        let (_, data) = self.frontend.get_config(offset, len as u32, flags, &vec![0; len]).unwrap();
        data
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.guest.mem
    }

    /// Allocates a guest buffer (4 KiB aligned).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_buf;
        self.next_buf += len.div_ceil(4096).max(1) * 4096;
        assert!(self.next_buf <= MEM_SIZE, "test guest memory exhausted");
        at
    }

    pub fn q(&mut self, i: usize) -> &mut TestQueue {
        &mut self.queues[i]
    }

    /// Submits a chain on queue `i` and waits for it to be used; returns its used length.
    pub fn roundtrip(&mut self, i: usize, bufs: &[Buf]) -> u32 {
        let guest = self.guest.clone();
        let q = &mut self.queues[i];
        let head = q.submit(&guest.mem, bufs);
        let used = q.wait_used(&guest.mem, 1, Duration::from_secs(10));
        assert_eq!(used[0].0, u32::from(head), "the used entry is for our chain");
        used[0].1
    }
}

/// A backend served on a thread of this process (monolithic mode).
pub struct InThread {
    pub stop: Arc<EventFd>,
    pub thread: Option<JoinHandle<Result<ServeEnd, DeviceError>>>,
}

impl InThread {
    /// Starts `serve` on a thread; returns the frontend's end of the socket pair.
    pub fn start(device: Arc<dyn Device>) -> (InThread, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let s = stop.clone();
        let thread = std::thread::spawn(move || bulkhead_devices::serve(device, theirs, s));
        (InThread { stop, thread: Some(thread) }, ours)
    }

    /// Waits for `serve` to return.
    pub fn join(mut self) -> ServeEnd {
        self.thread.take().unwrap().join().expect("serve panicked").expect("serve failed")
    }
}

/// `bulkhead-device …` as a child process listening on a socket path.
pub struct Process {
    pub child: Child,
    pub socket: PathBuf,
}

impl Process {
    pub fn start(args: &[&str], socket: &Path) -> Process {
        Process::start_in(&[], args, socket)
    }

    /// Starts it under a wrapper command (like `ip netns exec NAME`).
    pub fn start_in(wrapper: &[&str], args: &[&str], socket: &Path) -> Process {
        let bin = env!("CARGO_BIN_EXE_bulkhead-device");
        let socket_arg = socket.to_str().expect("a UTF-8 socket path");
        let args: Vec<&str> = args.iter().copied().chain(["--socket", socket_arg]).collect();
        Process::start_program(wrapper, bin, &args, &[], socket)
    }

    /// `bulkhead-device …` with environment variables `envs`, its standard error going to the
    /// file `log`.
    pub fn start_logged(
        args: &[&str],
        envs: &[(&str, &str)],
        socket: &Path,
        log: &Path,
    ) -> Process {
        let bin = env!("CARGO_BIN_EXE_bulkhead-device");
        let socket_arg = socket.to_str().expect("a UTF-8 socket path");
        let args: Vec<&str> = args.iter().copied().chain(["--socket", socket_arg]).collect();
        let log = File::create(log).unwrap();
        Process::spawn(&[], bin, &args, envs, socket, log.into())
    }

    /// Starts `program` (which must listen on `socket`) under `wrapper`, in its own process
    /// group.
    pub fn start_program(
        wrapper: &[&str],
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        socket: &Path,
    ) -> Process {
        Process::spawn(wrapper, program, args, envs, socket, Stdio::inherit())
    }

    fn spawn(
        wrapper: &[&str],
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        socket: &Path,
        stderr: Stdio,
    ) -> Process {
        use std::os::unix::process::CommandExt;
        let _ = std::fs::remove_file(socket); // a killed predecessor's
                                              // BULKHEAD_TEST_TRACE=DIR runs each backend under `strace -ff` (for the seccomp lists).
        let trace = std::env::var("BULKHEAD_TEST_TRACE").ok().map(|dir| {
            let out = format!("{dir}/{}", args.first().unwrap_or(&"dev"));
            vec!["strace".to_string(), "-ff".into(), "-qq".into(), "-o".into(), out]
        });
        let mut line: Vec<&str> = wrapper.to_vec();
        line.extend(trace.iter().flatten().map(String::as_str));
        line.push(program);
        line.extend_from_slice(args);
        let mut cmd = Command::new(line[0]);
        cmd.args(&line[1..])
            .envs(envs.iter().copied())
            .process_group(0) // its own group: a wrapper (strace) and the backend end together
            .stdin(Stdio::null())
            .stderr(stderr);
        // SAFETY: setrlimit is async-signal-safe and touches only the child. No core files from
        // the backends that the fault tests make abort.
        unsafe {
            cmd.pre_exec(|| {
                let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                Ok(())
            })
        };
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {line:?}: {e}"));
        let p = Process { child, socket: socket.to_path_buf() };
        p.wait_for_socket();
        p
    }

    fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "{} did not appear", self.socket.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Connects to the backend's socket. The socket file appears at `bind`, a moment before
    /// the backend `listen`s: until then a connection is refused, so that is retried.
    pub fn connect(&self) -> UnixStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(stream) => return stream,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    assert!(Instant::now() < deadline, "{}: {e}", self.socket.display());
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("cannot connect to {}: {e}", self.socket.display()),
            }
        }
    }

    /// SIGKILLs the backend (and its wrapper) and waits for it.
    pub fn kill(&mut self) {
        // SAFETY: signalling the process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to end by itself; None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

/// A raw image of `size` bytes filled with `byte`.
pub fn raw_image(dir: &Path, name: &str, size: usize, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![byte; size]).unwrap();
    path
}

/// A virtio-blk OUT request of `data` at `sector` in `d`'s guest memory (status byte preset to
/// 0xff); returns its descriptors and the status byte's address.
pub fn write_request(d: &mut Driver, sector: u64, data: &[u8]) -> (Vec<Buf>, u64) {
    let hdr = d.alloc(16);
    let buf = d.alloc(data.len() as u64);
    let st = d.alloc(1);
    d.mem().write_obj(1u32, GuestAddress(hdr)).unwrap();
    d.mem().write_obj(sector, GuestAddress(hdr + 8)).unwrap();
    d.mem().write_slice(data, GuestAddress(buf)).unwrap();
    d.mem().write_obj(0xffu8, GuestAddress(st)).unwrap();
    (vec![r(hdr, 16), r(buf, data.len() as u32), w(st, 1)], st)
}

/// The byte at `at` of an inflight region's file.
pub fn region_u8(f: &File, at: u64) -> u8 {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0]
}

/// The little-endian u16 at `at` of an inflight region's file.
pub fn region_u16(f: &File, at: u64) -> u16 {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 2];
    f.read_exact_at(&mut b, at).unwrap();
    u16::from_le_bytes(b)
}
