//! The control socket of a running VM: [`Server`] and the [`ControlTarget`] it serves.
//!
//! The core starts one [`Server`] per VM. It owns the socket file from start to drop:
//!
//! 1. **Name.** The VM's name is checked ([`crate::paths::check_name`]) and turned into the
//!    socket path; the run folder is created (0700) or checked.
//! 2. **Claim.** A lock file beside the socket (`NAME.sock.lock`, `flock`ed for the server's
//!    life) makes two VMs starting under one name at the same instant see each other. Then, if
//!    a socket is already there, the server connects to it: if it answers, a live VM owns the
//!    name and the server refuses to start; if not, it is what a crashed VM left behind and is
//!    removed. Anything else at that path (a file, a folder) is left alone and refused.
//! 3. **Bind.** The socket is created and set to mode 0600 (owned by the VM's user, the
//!    process's effective uid); its parent folder is not writable by others.
//! 4. **Serve.** A thread named `bulkhead-api` accepts connections one at a time and speaks
//!    [`crate::protocol`] on each. The peer's credentials come from the kernel (`SO_PEERCRED`):
//!    only the VM's user and root are served; anyone else who gets through the file permissions
//!    gets an error reply, and the refusal is logged. A panic in the target is caught and
//!    answered with an error reply.
//! 5. **Stop.** Dropping the [`Server`] wakes the thread, waits for the request in progress to
//!    finish, and removes the socket (if it is still the one it created) and the lock file.

use crate::binary::check_binary;
use crate::limits::{LimitsChange, RateLimits};
use crate::paths::{self, PathError};
use crate::peer;
use crate::protocol::{NewImage, Payload, Reply, Request, MAX_REQUEST_BYTES, REQUEST_DEADLINE};
use crate::status::{
    CoreUpdateStarted, DeviceChange, DiskReplaced, KeysPressed, RunState, SnapshotWritten, VmStatus,
};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the server waits for a client to take its reply.
const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// What the API asks of the VM. The core implements it; every call comes from the server's
/// thread, one at a time.
pub trait ControlTarget: Send + Sync {
    /// The VM and each of its devices, as of now.
    fn status(&self) -> VmStatus;
    /// Replaces the backend of device `id` by a new one running the same binary. The error is
    /// a sentence for the user (`no device named blk9; this VM has blk0, rng0`).
    fn restart_device(&self, id: &str) -> Result<DeviceChange, String>;
    /// Replaces the backend of device `id` by one running `binary`, which the server has
    /// checked ([`crate::binary::check_binary`]): absolute, symbolic links resolved, safe.
    fn upgrade_device(&self, id: &str, binary: &Path) -> Result<DeviceChange, String>;
    /// Serves disk `id` from the image `image` (its path absolute, which the server checked)
    /// while the guest runs. A VM that cannot says so.
    fn replace_disk(&self, id: &str, image: &NewImage) -> Result<DiskReplaced, String> {
        let _ = image;
        Err(format!("{id}: this VM cannot replace a disk's image"))
    }
    /// Changes the rate limits of device `id` (absent buckets stay as they are) and says the
    /// limits now in force. The error is a sentence for the user.
    fn set_device_limits(&self, id: &str, limits: &RateLimits) -> Result<LimitsChange, String> {
        let _ = limits;
        Err(format!("this VMM cannot change rate limits (asked for {id})"))
    }
    /// Presses and releases Ctrl-Alt-Del on the VM's keyboard, without waiting for the guest.
    /// The error is a sentence for the user.
    fn ctrl_alt_del(&self) -> Result<KeysPressed, String> {
        Err("this VM has no keyboard to press Ctrl-Alt-Del on".into())
    }
    /// Pauses the VM (`changed` false if it was paused already).
    fn pause(&self) -> Result<RunState, String> {
        Err("this VM cannot be paused".into())
    }
    /// Resumes a paused VM.
    fn resume(&self) -> Result<RunState, String> {
        Err("this VM cannot be paused".into())
    }
    /// Writes a snapshot of the VM to `dir` (absolute, which the server checked).
    fn snapshot(&self, dir: &Path) -> Result<SnapshotWritten, String> {
        let _ = dir;
        Err("this VM cannot be snapshotted".into())
    }
    /// Hands the VM to the core binary `binary` (checked by the server as for an upgrade).
    fn update_core(&self, binary: &Path) -> Result<CoreUpdateStarted, String> {
        let _ = binary;
        Err("this VM's core cannot be updated".into())
    }
    /// Called on the serving thread before it accepts its first connection (the core
    /// installs the thread's seccomp filter here). An error leaves the socket unserved.
    fn serving_thread_started(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The name or the run folder cannot be used.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A live VM answers on the socket.
    #[error(
        "a VM is already running with the control socket {}; choose another name, or stop \
         that VM first (`bulkhead ctl list` shows the running VMs)", path.display()
    )]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// Something other than a socket is at the socket's path.
    #[error("{} exists and is not a socket; remove it or choose another name", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A file system operation on the socket or its lock failed.
    #[error("cannot set up the control socket {}", path.display())]
    Io {
        /// The socket or lock file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The serving thread could not be started.
    #[error("cannot start the control socket's thread")]
    Thread(#[source] io::Error),
}

/// A VM's control socket, served on a thread of its own until dropped.
pub struct Server {
    path: PathBuf,
    /// The socket file's device and inode, to remove only our own on drop.
    identity: (u64, u64),
    lock: Lock,
    waker: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `target` on the control socket of the VM `name` in [`paths::run_dir`].
    pub fn start(name: &str, target: Arc<dyn ControlTarget>) -> Result<Server, ServerError> {
        let path = paths::socket_path(name)?;
        Server::start_at(&path, target)
    }

    /// Serves `target` on the socket `path` (for a path the user chose; tests).
    pub fn start_at(path: &Path, target: Arc<dyn ControlTarget>) -> Result<Server, ServerError> {
        paths::check_socket_path(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            paths::prepare_dir(dir)?;
        }
        let lock = Lock::acquire(path)?;
        remove_stale(path)?;
        let io_err = |source| ServerError::Io { path: path.to_path_buf(), source };
        let listener = UnixListener::bind(path).map_err(io_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        let meta = fs::symlink_metadata(path).map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        let (waker, wakee) = UnixStream::pair().map_err(io_err)?;
        let context = Context { target, vm_uid: paths::euid() };
        let thread = std::thread::Builder::new()
            .name("bulkhead-api".into())
            .spawn(move || {
                if let Err(e) = context.target.serving_thread_started() {
                    eprintln!("bulkhead: the control socket is not served: {e}");
                    return;
                }
                // Only the target's calls could panic, and those are caught one by one; this
                // is the last line of defence: the VM runs on without its control socket.
                if catch_unwind(AssertUnwindSafe(|| serve(&listener, &wakee, &context))).is_err() {
                    log::error!("the control socket's thread panicked; the VM runs on without it");
                }
            })
            .map_err(ServerError::Thread)?;
        log::info!("control socket at {}", path.display());
        Ok(Server {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
            lock,
            waker,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The serving thread polls the other end; a byte (or the error) wakes it.
        let _ = self.waker.write_all(&[0]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                let _ = fs::remove_file(&self.path);
            }
            _ => log::warn!("{} is no longer this VM's socket; left in place", self.path.display()),
        }
        self.lock.release();
    }
}

/// Removes a socket no VM answers on; refuses a live one, or anything that is not a socket.
fn remove_stale(path: &Path) -> Result<(), ServerError> {
    let io_err = |source| ServerError::Io { path: path.to_path_buf(), source };
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket { path: path.to_path_buf() });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::AlreadyRunning { path: path.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing the stale control socket {}", path.display());
            fs::remove_file(path).map_err(io_err)
        }
        Err(e) => Err(io_err(e)),
    }
}

/// An exclusive `flock` on `SOCKET.lock`, held for the server's life.
struct Lock {
    path: PathBuf,
    file: Option<File>,
}

impl Lock {
    fn acquire(socket: &Path) -> Result<Lock, ServerError> {
        let mut name = socket.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let io_err = |source| ServerError::Io { path: path.clone(), source };
        loop {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io_err)?;
            // SAFETY: flock on a descriptor we own; it touches no memory.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Err(ServerError::AlreadyRunning { path: socket.to_path_buf() });
                }
                return Err(io_err(e));
            }
            // A server that was stopping may have removed the file between our open and our
            // lock: then we hold a lock on a file nobody else will see. Try again.
            let held = file.metadata().map_err(io_err)?;
            match fs::symlink_metadata(&path) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                    return Ok(Lock { path, file: Some(file) })
                }
                _ => continue,
            }
        }
    }

    /// Removes the lock file, then unlocks it (closing it), in that order: whoever opens the
    /// path next creates a new file.
    fn release(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
            self.file = None;
        }
    }
}

/// What the serving thread needs.
struct Context {
    target: Arc<dyn ControlTarget>,
    /// The VM's user: the one (besides root) it serves, and who may own an upgrade's binary.
    vm_uid: u32,
}

/// The serving thread: accepts connections until `wakee` becomes readable.
fn serve(listener: &UnixListener, wakee: &UnixStream, context: &Context) {
    loop {
        match wait_readable(listener, wakee) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::error!("the control socket stopped: poll failed: {e}");
                return;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => handle(stream, context),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                // Out of file descriptors, typically: wait rather than spin.
                log::warn!("control socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Waits until a connection is pending (`true`) or `wakee` is readable (`false`).
fn wait_readable(listener: &UnixListener, wakee: &UnixStream) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: wakee.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd structures for the length given, and
        // both descriptors stay open for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n >= 0 {
            return Ok(fds[1].revents == 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One connection: at most one request, one reply.
fn handle(stream: UnixStream, context: &Context) {
    let Some(reply) = converse(&stream, context) else { return };
    let mut stream = stream;
    let sent = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(REPLY_DEADLINE)))
        .and_then(|()| stream.write_all(&reply.encode()));
    if let Err(e) = sent {
        log::debug!("control socket: the client did not take its reply: {e}");
    }
}

/// Checks the peer, reads and answers its request; `None` when it sent nothing at all.
fn converse(stream: &UnixStream, context: &Context) -> Option<Reply> {
    let peer = match peer::credentials(stream) {
        Ok(peer) => peer,
        Err(e) => return Some(Reply::error(format!("cannot tell who you are ({e}); refused"))),
    };
    if !peer::allowed(peer.uid, context.vm_uid) {
        log::warn!(
            "control socket: refused uid {} (pid {}): only uid {} and root may control this VM",
            peer.uid,
            peer.pid,
            context.vm_uid
        );
        return Some(Reply::error(format!(
            "uid {} may not control this VM; only its user (uid {}) and root may",
            peer.uid, context.vm_uid
        )));
    }
    let line = match read_request(stream) {
        Ok(line) if line.is_empty() => return None,
        Ok(line) => line,
        Err(message) => return Some(Reply::error(message)),
    };
    match Request::parse(&line) {
        Ok(request) => {
            log::info!("control socket: uid {} (pid {}) asks {request:?}", peer.uid, peer.pid);
            Some(answer(request, context))
        }
        Err(e) => Some(Reply::error(format!("{e}"))),
    }
}

/// Reads up to the first newline or the end of the stream, within the size and time limits.
fn read_request(stream: &UnixStream) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut reader = stream;
    stream.set_nonblocking(false).map_err(|e| format!("cannot read the request: {e}"))?;
    let timed_out = || {
        format!(
            "no complete request within {} s; send one JSON object and a newline",
            REQUEST_DEADLINE.as_secs()
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left)).map_err(|e| format!("cannot read: {e}"))?;
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(timed_out())
            }
            Err(e) => return Err(format!("cannot read the request: {e}")),
        };
        if n == 0 {
            return Ok(line);
        }
        let newline = chunk[..n].iter().position(|&b| b == b'\n');
        line.extend_from_slice(&chunk[..newline.map_or(n, |i| i + 1)]);
        if line.len() > MAX_REQUEST_BYTES {
            return Err(format!("the request is larger than {MAX_REQUEST_BYTES} bytes; refused"));
        }
        if newline.is_some() {
            return Ok(line);
        }
    }
}

/// Carries out a parsed request.
fn answer(request: Request, context: &Context) -> Reply {
    let target = &*context.target;
    let outcome = catch_unwind(AssertUnwindSafe(|| match request {
        Request::Status => Ok(Payload::Status(target.status())),
        Request::DeviceRestart { id } => target.restart_device(&id).map(Payload::DeviceChange),
        Request::DeviceUpgrade { id, binary } => match check_binary(&binary, context.vm_uid) {
            Ok(binary) => target.upgrade_device(&id, &binary).map(Payload::DeviceChange),
            Err(e) => Err(format!("upgrade refused: {e}")),
        },
        Request::DiskReplace { id, path, format, read_only } => {
            if path.is_absolute() {
                let image = NewImage { path, format, read_only };
                target.replace_disk(&id, &image).map(Payload::DiskReplaced)
            } else {
                Err(format!(
                    "{} is not an absolute path; give the new image's absolute path",
                    path.display()
                ))
            }
        }
        Request::DeviceLimits { id, limits } => {
            target.set_device_limits(&id, &limits).map(Payload::LimitsChange)
        }
        Request::CtrlAltDel => target.ctrl_alt_del().map(Payload::KeysPressed),
        Request::Pause => target.pause().map(Payload::RunState),
        Request::Resume => target.resume().map(Payload::RunState),
        Request::UpdateCore { binary } => match check_binary(&binary, context.vm_uid) {
            Ok(binary) => target.update_core(&binary).map(Payload::CoreUpdateStarted),
            Err(e) => Err(format!("core update refused: {e}")),
        },
        Request::Snapshot { to } => {
            if to.is_absolute() {
                target.snapshot(&to).map(Payload::SnapshotWritten)
            } else {
                Err(format!(
                    "{} is not an absolute path; give the snapshot folder's absolute path",
                    to.display()
                ))
            }
        }
    }));
    match outcome {
        Ok(Ok(result)) => Reply::Ok { result },
        Ok(Err(message)) => Reply::Error { message },
        Err(_) => {
            log::error!("control socket: the VM panicked while answering a request");
            Reply::error(
                "the VM failed while answering (a bug: see its log); nothing more is known",
            )
        }
    }
}
