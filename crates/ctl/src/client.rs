//! The client side: finding a VM's control socket, sending one request, reading the reply.

use bulkhead_api::paths::{self, PathError};
use bulkhead_api::protocol::{ProtocolError, Reply, Request, MAX_REPLY_BYTES};
use bulkhead_api::status::VmStatus;
use bulkhead_api::Payload;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a client may take to send its request.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `list` waits for each VM's status.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The VM name is not valid.
    #[error(transparent)]
    Name(#[from] PathError),
    /// No socket of that name in the run folder.
    #[error(
        "no VM named {name} is running (looked in {}); `bulkhead ctl list` shows those that \
         are{hint}", dir.display()
    )]
    NoSuchVm {
        /// The name.
        name: String,
        /// The run folder.
        dir: PathBuf,
        /// More advice, starting with "; ", or nothing.
        hint: String,
    },
    /// The path given does not exist.
    #[error("there is no control socket at {}; `bulkhead ctl list` shows the running VMs", path.display())]
    NoSocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket is there but nobody listens: the VM ended without removing it.
    #[error(
        "nobody answers on {}: the VM that made it has ended (a new VM of that name replaces \
         it); `bulkhead ctl list` shows the running VMs", path.display()
    )]
    Stale {
        /// The socket.
        path: PathBuf,
    },
    /// The file permissions keep this user out.
    #[error(
        "you (uid {uid}) may not connect to {}; run as the VM's user or as root", path.display()
    )]
    Denied {
        /// The socket.
        path: PathBuf,
        /// This process's effective uid.
        uid: u32,
    },
    /// Connecting, sending or receiving failed otherwise.
    #[error("cannot talk to the VM at {}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// No reply in time.
    #[error(
        "the VM at {} did not answer within {} s; it may be busy or hung",
        path.display(), timeout.as_secs()
    )]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The VM hung up without a reply.
    #[error("the VM at {} closed the connection without replying", path.display())]
    NoReply {
        /// The socket.
        path: PathBuf,
    },
    /// The reply cannot be read.
    #[error("the VM at {} sent a reply this client cannot read", path.display())]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ProtocolError,
    },
}

/// Sends `request` to the VM `vm` — a name (looked up in [`paths::run_dir`]) or, if it
/// contains a `/`, a socket path — and returns its reply (which may be an error reply).
pub fn request(vm: &str, request: &Request) -> Result<Reply, ClientError> {
    request_at(&resolve(vm)?, request, reply_timeout(request))
}

/// How long a client waits for the reply to `request`.
pub fn reply_timeout(request: &Request) -> Duration {
    match request {
        Request::Status => Duration::from_secs(10),
        Request::DeviceRestart { .. }
        | Request::DeviceUpgrade { .. }
        | Request::DiskReplace { .. } => Duration::from_secs(60),
        Request::DeviceLimits { .. } | Request::CtrlAltDel => Duration::from_secs(10),
        Request::Pause | Request::Resume => Duration::from_secs(30),
        // The binary is read and checked; the VM paused and its state taken.
        Request::UpdateCore { .. } => Duration::from_secs(30),
        // Guest memory goes to disk: a few GiB at the disk's speed.
        Request::Snapshot { .. } => Duration::from_secs(600),
    }
}

/// The socket of `vm`: a path if it contains a `/`, else the name's socket in the run folder,
/// which must exist.
pub fn resolve(vm: &str) -> Result<PathBuf, ClientError> {
    if vm.contains('/') {
        return Ok(PathBuf::from(vm));
    }
    let dir = paths::run_dir();
    let path = paths::socket_path_in(&dir, vm)?;
    if path.symlink_metadata().is_ok() {
        return Ok(path);
    }
    let mut hint = String::new();
    let root_dir = Path::new("/run/bulkhead");
    let root_socket = root_dir.join(format!("{vm}.sock"));
    if dir != root_dir {
        match root_socket.symlink_metadata() {
            Ok(_) => hint = format!("; {} exists: root's VM? use sudo", root_socket.display()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                hint = format!("; root's VMs are in {}: use sudo for those", root_dir.display())
            }
            Err(_) => {}
        }
    }
    if hint.is_empty() && Path::new(vm).symlink_metadata().is_ok() {
        hint = format!("; for the socket {vm} in this folder, write ./{vm}");
    }
    Err(ClientError::NoSuchVm { name: vm.to_string(), dir, hint })
}

/// Sends `request` to the socket `path`, waiting at most `timeout` for the reply.
pub fn request_at(path: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let io_err = |source| ClientError::Io { path: path.to_path_buf(), source };
    let mut stream = UnixStream::connect(path).map_err(|e| connect_error(path, e))?;
    stream.set_write_timeout(Some(SEND_TIMEOUT)).map_err(io_err)?;
    let deadline = Instant::now() + timeout;
    // A server that refuses us replies without reading: then the write may fail while the
    // reply waits to be read, so read in any case.
    let sent = stream.write_all(&request.encode());
    let line = match read_line(&mut stream, deadline) {
        Ok(line) if line.is_empty() => {
            return Err(match sent {
                Err(e) => io_err(e),
                Ok(()) => ClientError::NoReply { path: path.to_path_buf() },
            });
        }
        Ok(line) => line,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            return Err(ClientError::Timeout { path: path.to_path_buf(), timeout });
        }
        Err(e) => return Err(io_err(e)),
    };
    Reply::parse(&line).map_err(|source| ClientError::BadReply { path: path.to_path_buf(), source })
}

/// Reads up to a newline or the end of the stream, until `deadline`, at most
/// [`MAX_REPLY_BYTES`] (more is cut off, and then fails to parse).
fn read_line(stream: &mut UnixStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The server closed with our request unread (a refusal): what it sent comes first.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !line.is_empty() => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(line);
        }
        let newline = chunk[..n].iter().position(|&b| b == b'\n');
        line.extend_from_slice(&chunk[..newline.map_or(n, |i| i + 1)]);
        if newline.is_some() || line.len() > MAX_REPLY_BYTES {
            return Ok(line);
        }
    }
}

/// A connect error in the user's terms.
fn connect_error(path: &Path, e: io::Error) -> ClientError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket { path },
        io::ErrorKind::ConnectionRefused => ClientError::Stale { path },
        io::ErrorKind::PermissionDenied => ClientError::Denied { path, uid: paths::euid() },
        _ => ClientError::Io { path, source: e },
    }
}

/// A control socket found by [`list`], and what asking it for its status gave: the status, or
/// why there is none, in words that do not repeat the socket's path.
#[derive(Debug)]
pub struct ListedVm {
    /// The socket.
    pub socket: PathBuf,
    /// The VM's status, or why there is none (a sentence).
    pub status: Result<VmStatus, String>,
}

/// Asks every control socket in [`paths::run_dir`] for its status, all at once; sorted by
/// socket name. A missing run folder means no VMs.
pub fn list() -> Result<Vec<ListedVm>, ClientError> {
    list_in(&paths::run_dir())
}

/// [`list`] for the run folder `dir`.
pub fn list_in(dir: &Path) -> Result<Vec<ListedVm>, ClientError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ClientError::Io { path: dir.to_path_buf(), source: e }),
    };
    let mut sockets: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sock"))
        .collect();
    sockets.sort();
    let ask = |socket: &Path| match request_at(socket, &Request::Status, LIST_TIMEOUT) {
        Ok(Reply::Ok { result: Payload::Status(status) }) => Ok(status),
        Ok(Reply::Ok { .. }) => Err("it answered a status request with something else".into()),
        Ok(Reply::Error { message }) => Err(message),
        Err(ClientError::Stale { .. }) => {
            Err("nobody answers: the VM that made it has ended".into())
        }
        Err(ClientError::Timeout { timeout, .. }) => {
            Err(format!("no answer within {} s: the VM may be busy or hung", timeout.as_secs()))
        }
        Err(e) => Err(crate::describe(&e)),
    };
    Ok(std::thread::scope(|scope| {
        let asked: Vec<_> =
            sockets.iter().map(|socket| (socket, scope.spawn(|| ask(socket)))).collect();
        asked
            .into_iter()
            .map(|(socket, handle)| ListedVm {
                socket: socket.clone(),
                status: handle.join().unwrap_or_else(|_| Err("the query panicked".into())),
            })
            .collect()
    }))
}
