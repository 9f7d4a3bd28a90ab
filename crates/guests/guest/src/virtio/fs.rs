//! The virtio file system device (virtio 1.2, section 5.11): a minimal FUSE client, enough to
//! show a host folder served end to end — INIT, LOOKUP, GETATTR, OPEN, CREATE, READ, WRITE,
//! RELEASE on the first request queue (the high-priority queue is set up and left empty).
//!
//! Each request is one chain: the FUSE input (header and arguments) in a device-readable
//! buffer, then a device-writable buffer for the output (header and reply); one request at a
//! time.

use crate::bump::Bump;

use super::mmio::{InitError, Transport};
use super::queue::{Completion, IoError, Queue};
use super::ring::Buf;

/// FUSE opcodes (Linux's `include/uapi/linux/fuse.h`).
const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const RELEASE: u32 = 18;
const INIT: u32 = 26;
const CREATE: u32 = 35;

/// The protocol version the client speaks: 7.31, with the 64-byte `fuse_init_in` of later
/// versions (a server reads what it knows of it).
const MAJOR: u32 = 7;
const MINOR: u32 = 31;
/// The root directory's node ID.
pub const ROOT: u64 = 1;

const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// The device-readable buffer (header and arguments; a WRITE's data).
const IN_BYTES: u32 = 4096 + 128;
/// The device-writable buffer (header and reply; a READ's data).
const OUT_BYTES: u32 = 4096 + 256;
/// The most a READ or WRITE moves at once.
pub const IO_MAX: u32 = 4096;
/// The longest reply other than a READ's (an entry and an open handle: CREATE's, 144 bytes).
const REPLY_MAX: u32 = 256;
/// The longest virtio-fs tag.
pub const TAG_MAX: usize = 36;

/// Why a file system request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsError {
    Io(IoError),
    /// The server answered with this (positive) errno.
    Errno(i32),
    /// The reply was shorter than its header says, or of another request.
    BadReply,
    /// A name or data too long for one request.
    TooLong,
}

impl From<IoError> for FsError {
    fn from(e: IoError) -> FsError {
        FsError::Io(e)
    }
}

impl core::fmt::Display for FsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FsError::Io(e) => write!(f, "{e}"),
            FsError::Errno(n) => write!(f, "the server answered errno {n}"),
            FsError::BadReply => write!(f, "the server's reply is malformed"),
            FsError::TooLong => write!(f, "the name or data does not fit one request"),
        }
    }
}

/// A file's node and size, from LOOKUP or CREATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub node: u64,
    pub size: u64,
}

pub struct Fs {
    transport: Transport,
    _hiprio: Queue,
    requests: Queue,
    in_buf: u64,
    out_buf: u64,
    unique: u64,
    tag: [u8; TAG_MAX],
    /// The server's largest WRITE, from INIT.
    max_write: u32,
}

/// `name` with its terminating NUL, in `buf`.
fn c_name<'a>(name: &[u8], buf: &'a mut [u8; 256]) -> Result<&'a [u8], FsError> {
    if name.is_empty() || name.len() >= buf.len() || name.contains(&0) {
        return Err(FsError::TooLong);
    }
    buf[..name.len()].copy_from_slice(name);
    buf[name.len()] = 0;
    Ok(&buf[..=name.len()])
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from(u32_at(buf, at)) | (u64::from(u32_at(buf, at + 4)) << 32)
}

impl Fs {
    /// Starts the device (both queues) and says hello (FUSE_INIT).
    pub fn new(
        transport: Transport,
        completion: Completion,
        bump: &mut Bump,
    ) -> Result<Fs, InitError> {
        transport.init(0)?;
        let hiprio = transport.setup_queue(0, 8, bump)?;
        let requests = transport.setup_queue(1, 8, bump)?;
        let in_buf = bump.alloc(IN_BYTES.into(), 4096).ok_or(InitError::NoMemory)?;
        let out_buf = bump.alloc(OUT_BYTES.into(), 4096).ok_or(InitError::NoMemory)?;
        let mut tag = [0u8; TAG_MAX];
        for (word, chunk) in tag.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&transport.config_u32(4 * word as u64).to_le_bytes());
        }
        transport.driver_ok();
        Ok(Fs {
            transport,
            _hiprio: Queue::new(hiprio, transport, 0, completion),
            requests: Queue::new(requests, transport, 1, completion),
            in_buf,
            out_buf,
            unique: 0,
            tag,
            max_write: IO_MAX,
        })
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The tag the device names itself by (configuration space), up to its first NUL.
    pub fn tag(&self) -> &[u8] {
        let end = self.tag.iter().position(|&b| b == 0).unwrap_or(TAG_MAX);
        &self.tag[..end]
    }

    /// The input and output buffers.
    fn buffers(&mut self) -> (&mut [u8], &mut [u8]) {
        // SAFETY: both are this driver's own allocations of IN_BYTES and OUT_BYTES from the
        // bump allocator, disjoint, and no request is outstanding while they are borrowed.
        unsafe {
            (
                core::slice::from_raw_parts_mut(self.in_buf as *mut u8, IN_BYTES as usize),
                core::slice::from_raw_parts_mut(self.out_buf as *mut u8, OUT_BYTES as usize),
            )
        }
    }

    /// One request: `opcode` on `node` with the arguments `args` then `data` (a name, or a
    /// WRITE's bytes); returns the reply's length (its bytes are at the start of the output
    /// buffer, after the header). The reply may be up to `reply_max` bytes long: the output
    /// buffer offered is the header and that, no longer, as Linux's client sizes it (the Rust
    /// virtiofsd fills a READ's whole buffer, whatever size the request asked for).
    fn call(
        &mut self,
        opcode: u32,
        node: u64,
        args: &[u8],
        data: &[u8],
        reply_max: u32,
        deadline: u64,
    ) -> Result<usize, FsError> {
        let out_len = OUT_HEADER as u32 + reply_max.min(OUT_BYTES - OUT_HEADER as u32);
        let len = IN_HEADER + args.len() + data.len();
        if len > IN_BYTES as usize {
            return Err(FsError::TooLong);
        }
        self.unique += 2;
        let unique = self.unique;
        let (input, output) = self.buffers();
        input[..IN_HEADER].fill(0);
        put(input, 0, &(len as u32).to_le_bytes());
        put(input, 4, &opcode.to_le_bytes());
        put(input, 8, &unique.to_le_bytes());
        put(input, 16, &node.to_le_bytes());
        put(input, IN_HEADER, args);
        put(input, IN_HEADER + args.len(), data);
        output[..OUT_HEADER].fill(0);
        let bufs = [
            Buf { addr: self.in_buf, len: len as u32, writable: false },
            Buf { addr: self.out_buf, len: out_len, writable: true },
        ];
        self.requests.push(&bufs)?;
        self.requests.kick();
        let used = loop {
            match self.requests.pop() {
                Some(used) => break used?,
                None => self.requests.wait(deadline)?,
            }
        };
        let (_, output) = self.buffers();
        let written = (used.len as usize).min(out_len as usize);
        if written < OUT_HEADER {
            return Err(FsError::BadReply);
        }
        let reply_len = u32_at(output, 0) as usize;
        let error = u32_at(output, 4) as i32;
        if u64_at(output, 8) != unique || reply_len > written || reply_len < OUT_HEADER {
            return Err(FsError::BadReply);
        }
        if error != 0 {
            return Err(FsError::Errno(-error));
        }
        Ok(reply_len - OUT_HEADER)
    }

    /// The reply's bytes after the output header.
    fn reply(&mut self, len: usize) -> &[u8] {
        let (_, output) = self.buffers();
        &output[OUT_HEADER..OUT_HEADER + len]
    }

    /// FUSE_INIT: agrees on the protocol; returns the server's (major, minor).
    pub fn init(&mut self, deadline: u64) -> Result<(u32, u32), FsError> {
        let mut args = [0u8; 64];
        put(&mut args, 0, &MAJOR.to_le_bytes());
        put(&mut args, 4, &MINOR.to_le_bytes());
        let n = self.call(INIT, 0, &args, &[], REPLY_MAX, deadline)?;
        let reply = self.reply(n);
        if n < 24 {
            return Err(FsError::BadReply);
        }
        let (major, minor, max_write) = (u32_at(reply, 0), u32_at(reply, 4), u32_at(reply, 20));
        if max_write != 0 {
            self.max_write = max_write.min(IO_MAX);
        }
        Ok((major, minor))
    }

    /// The entry out of a LOOKUP or CREATE reply (`fuse_entry_out`: node at 0, the
    /// attributes' size at 40 + 8).
    fn entry(reply: &[u8]) -> Result<Entry, FsError> {
        if reply.len() < 128 {
            return Err(FsError::BadReply);
        }
        Ok(Entry { node: u64_at(reply, 0), size: u64_at(reply, 48) })
    }

    /// FUSE_LOOKUP of `name` in directory `parent`.
    pub fn lookup(&mut self, parent: u64, name: &[u8], deadline: u64) -> Result<Entry, FsError> {
        let mut buf = [0u8; 256];
        let name = c_name(name, &mut buf)?;
        let n = self.call(LOOKUP, parent, &[], name, REPLY_MAX, deadline)?;
        Fs::entry(self.reply(n))
    }

    /// FUSE_GETATTR: the file's size now.
    pub fn size(&mut self, node: u64, deadline: u64) -> Result<u64, FsError> {
        let n = self.call(GETATTR, node, &[0u8; 16], &[], REPLY_MAX, deadline)?;
        // fuse_attr_out: valid (8), valid_nsec and a pad (8), then the attributes (size at 8).
        if n < 104 {
            return Err(FsError::BadReply);
        }
        Ok(u64_at(self.reply(n), 16 + 8))
    }

    /// FUSE_OPEN with `flags` (`O_RDONLY` 0, `O_WRONLY` 1, `O_RDWR` 2); returns the handle.
    pub fn open(&mut self, node: u64, flags: u32, deadline: u64) -> Result<u64, FsError> {
        let mut args = [0u8; 8];
        put(&mut args, 0, &flags.to_le_bytes());
        let n = self.call(OPEN, node, &args, &[], REPLY_MAX, deadline)?;
        if n < 16 {
            return Err(FsError::BadReply);
        }
        Ok(u64_at(self.reply(n), 0))
    }

    /// FUSE_CREATE of `name` in `parent` (mode 0644, write-only, truncated): the new file's
    /// entry and handle.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        deadline: u64,
    ) -> Result<(Entry, u64), FsError> {
        const O_WRONLY_CREAT_TRUNC: u32 = 0o1 | 0o100 | 0o1000;
        let mut args = [0u8; 16];
        put(&mut args, 0, &O_WRONLY_CREAT_TRUNC.to_le_bytes());
        put(&mut args, 4, &0o100644u32.to_le_bytes());
        let mut buf = [0u8; 256];
        let name = c_name(name, &mut buf)?;
        let n = self.call(CREATE, parent, &args, name, REPLY_MAX, deadline)?;
        let reply = self.reply(n);
        if n < 128 + 16 {
            return Err(FsError::BadReply);
        }
        Ok((Fs::entry(reply)?, u64_at(reply, 128)))
    }

    /// FUSE_READ through handle `fh` of `node` of up to `out.len()` bytes (at most
    /// [`IO_MAX`]) at `offset`; returns how many. The node goes in the header as Linux's
    /// client puts it: a server may check the handle against it (the Rust virtiofsd does).
    pub fn read(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        out: &mut [u8],
        deadline: u64,
    ) -> Result<usize, FsError> {
        let size = out.len().min(IO_MAX as usize) as u32;
        let mut args = [0u8; 40];
        put(&mut args, 0, &fh.to_le_bytes());
        put(&mut args, 8, &offset.to_le_bytes());
        put(&mut args, 16, &size.to_le_bytes());
        let n = self.call(READ, node, &args, &[], size, deadline)?.min(size as usize);
        out[..n].copy_from_slice(&self.reply(n)[..n]);
        Ok(n)
    }

    /// FUSE_WRITE through handle `fh` of `node` of `data` (at most the server's largest
    /// write) at `offset`; returns how many bytes the server took.
    pub fn write(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        deadline: u64,
    ) -> Result<usize, FsError> {
        let data = &data[..data.len().min(self.max_write as usize)];
        let mut args = [0u8; 40];
        put(&mut args, 0, &fh.to_le_bytes());
        put(&mut args, 8, &offset.to_le_bytes());
        put(&mut args, 16, &(data.len() as u32).to_le_bytes());
        let n = self.call(WRITE, node, &args, data, REPLY_MAX, deadline)?;
        if n < 8 {
            return Err(FsError::BadReply);
        }
        Ok(u32_at(self.reply(n), 0) as usize)
    }

    /// FUSE_RELEASE of handle `fh` of `node`.
    pub fn release(&mut self, node: u64, fh: u64, deadline: u64) -> Result<(), FsError> {
        let mut args = [0u8; 24];
        put(&mut args, 0, &fh.to_le_bytes());
        self.call(RELEASE, node, &args, &[], REPLY_MAX, deadline).map(drop)
    }
}
