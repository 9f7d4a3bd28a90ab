//! A compartment's start, told to the core on a socket of its own (`--startup-fd N`).
//!
//! The core starts a compartment with two sockets: the vhost-user connection and this one, a
//! `SOCK_SEQPACKET` pair (messages keep their boundaries, and a closed end reads as the end).
//! Over it, before a single vhost-user message:
//!
//! 1. the core sends `files`: the files a predecessor of the device opened, attached, so that the
//!    compartment uses them instead of opening their names again (a disk's image files: their
//!    locks must not lapse between two compartments; see `bulkhead_disk::HandedFiles`);
//! 2. the compartment, which runs as an unprivileged user and may not open the files it serves,
//!    asks the core for each other file its device needs: `open` (its name, and whether to
//!    write it); the core answers `opened`, the file attached, or `refused` and why (it opens
//!    only what the device was configured with: see the VMM's broker);
//! 3. the compartment answers once: `ready`, with the files it uses attached, when its device
//!    is open and its sandbox entered (the core keeps them for the next compartment); or
//!    `failed` and why, in words, when it cannot start. The core shows those words as the
//!    reason the device did not start, instead of a broken vhost-user connection;
//! 4. afterwards, a device whose files change while it serves (a console's connected client)
//!    says `uses`, with the files it uses now attached, each time they change; the core reads
//!    what came at each tick of its supervisor (100 ms), keeps the last word's files instead
//!    of those of `ready`, and hands them to the next compartment. The compartment never waits
//!    to say it: its end is non-blocking, and a word that does not fit is dropped (and said).
//!
//! A message is a word and a newline, then, for `files`, `ready`, `uses`, `open` and `opened`,
//! one entry per file (`r` or `w`, for read-only or writable, then its name and a NUL byte;
//! attached, but for `open`), and for `failed` and `refused` the reason. At most [`MAX_FILES`]
//! files travel in one message; a device with more cannot be handed over.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The most files one message carries (the kernel's limit per message is 253).
pub const MAX_FILES: usize = 240;
/// The longest message (file names included).
const MAX_MESSAGE: usize = 256 << 10;
/// The most `uses` messages the core reads at once; more wait for its next look.
pub const MAX_USES_READ: usize = 64;

/// One file handed between the core and a compartment.
#[derive(Debug)]
pub struct StartupFile {
    /// The name the device opened it under.
    pub path: PathBuf,
    /// Opened for writing.
    pub writable: bool,
    /// The file.
    pub file: File,
}

/// What a compartment says while it starts.
#[derive(Debug)]
pub enum Report {
    /// It serves, using these files.
    Ready(Vec<StartupFile>),
    /// It could not start, for this reason.
    Failed(String),
    /// It asks for a file its device needs (answer with [`Startup::opened`] or
    /// [`Startup::refused`]).
    Open {
        /// The file's name.
        path: PathBuf,
        /// For writing too.
        writable: bool,
    },
}

/// One message, as received.
enum Message {
    Files(Vec<StartupFile>),
    Ready(Vec<StartupFile>),
    Uses(Vec<StartupFile>),
    Failed(String),
    Open { path: PathBuf, writable: bool },
    Opened(StartupFile),
    Refused(String),
}

/// Why the start-up exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The socket failed.
    #[error("the start-up socket failed")]
    Io(#[from] io::Error),
    /// The other end closed it without a word (the compartment died).
    #[error("it ended before it said whether it started")]
    Closed,
    /// No word came before the deadline.
    #[error("it did not say whether it started within {0:?}")]
    Timeout(Duration),
    /// The message does not follow the protocol.
    #[error("its start-up message is malformed: {0}")]
    Malformed(String),
    /// Too many files, or too long names.
    #[error("{0} files, or names this long, cannot be handed over (at most {MAX_FILES})")]
    TooMany(usize),
    /// The core would not open a file.
    #[error("{0}")]
    Refused(String),
}

/// One end of the start-up socket.
#[derive(Debug)]
pub struct Startup {
    socket: OwnedFd,
}

impl ScmSocket for Startup {
    fn socket_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Startup {
    /// A connected pair: (the core's end, the compartment's end), both close-on-exec.
    pub fn pair() -> io::Result<(Startup, Startup)> {
        let mut fds = [0; 2];
        let kind = libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC;
        // SAFETY: socketpair writes two new descriptors into the array.
        if unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and belong to nobody else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Startup { socket: a }, Startup { socket: b }))
    }

    /// The compartment's end, inherited as descriptor `fd` (checked to be a seqpacket socket).
    pub fn from_inherited(fd: RawFd) -> io::Result<Startup> {
        if socket_type(fd) != Some(libc::SOCK_SEQPACKET) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--startup-fd {fd} is not a seqpacket socket"),
            ));
        }
        // SAFETY: the descriptor was inherited for this process to own; nothing else uses it.
        Ok(Startup { socket: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Another handle on the same socket.
    pub fn try_clone(&self) -> io::Result<Startup> {
        Ok(Startup { socket: self.socket.try_clone()? })
    }

    /// The socket, for the spawner to pass on.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.socket)
    }

    /// Core: hands the compartment the files a predecessor used.
    pub fn send_files(&self, files: &[StartupFile]) -> Result<(), StartupError> {
        self.send("files", files)
    }

    /// Compartment: the files handed over (before it opens its device).
    pub fn receive_files(&self, within: Duration) -> Result<Vec<StartupFile>, StartupError> {
        match self.receive(within)? {
            Message::Files(files) => Ok(files),
            _ => Err(StartupError::Malformed("another message where files were due".into())),
        }
    }

    /// Compartment: asks the core to open `path` (for writing too if `writable`).
    pub fn request_open(
        &self,
        path: &std::path::Path,
        writable: bool,
        within: Duration,
    ) -> Result<File, StartupError> {
        let mut text = b"open\n".to_vec();
        text.push(if writable { b'w' } else { b'r' });
        text.extend_from_slice(path.as_os_str().as_bytes());
        text.push(0);
        if text.len() > MAX_MESSAGE {
            return Err(StartupError::TooMany(1));
        }
        self.send_raw(&text, &[])?;
        match self.receive(within)? {
            Message::Opened(f) => Ok(f.file),
            Message::Refused(why) => Err(StartupError::Refused(why)),
            _ => Err(StartupError::Malformed("another message where a file was due".into())),
        }
    }

    /// Core: the file asked for (`opened` under `path`).
    pub fn opened(
        &self,
        path: &std::path::Path,
        writable: bool,
        file: &File,
    ) -> Result<(), StartupError> {
        let path = path.to_path_buf();
        let (text, fds) = encode("opened", std::iter::once((&path, writable, file.as_raw_fd())))?;
        self.send_raw(&text, &fds)
    }

    /// Core: the file asked for will not be opened, because of `why`.
    pub fn refused(&self, why: &str) -> Result<(), StartupError> {
        let mut text = b"refused\n".to_vec();
        text.extend_from_slice(why.as_bytes());
        text.truncate(MAX_MESSAGE);
        self.send_raw(&text, &[])
    }

    /// Compartment: it serves, using `files` (name, writable, descriptor).
    pub fn ready<'a>(
        &self,
        files: impl IntoIterator<Item = (&'a std::path::Path, bool, RawFd)>,
    ) -> Result<(), StartupError> {
        // The descriptors are only read by sendmsg, which duplicates them into the message.
        let files: Vec<(PathBuf, bool, RawFd)> =
            files.into_iter().map(|(p, w, fd)| (p.to_path_buf(), w, fd)).collect();
        let (text, fds) = encode("ready", files.iter().map(|(p, w, fd)| (p, *w, *fd)))?;
        self.send_raw(&text, &fds)
    }

    /// Compartment, after `ready`: the files it uses now (see the module documentation). Makes
    /// this end non-blocking: a core that does not read never holds the device up.
    pub fn uses<'a>(
        &self,
        files: impl IntoIterator<Item = (&'a std::path::Path, bool, RawFd)>,
    ) -> Result<(), StartupError> {
        // SAFETY: F_GETFL/F_SETFL on the socket this value owns; only its status flags change.
        unsafe {
            let fd = self.socket.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 && flags & libc::O_NONBLOCK == 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        let files: Vec<(PathBuf, bool, RawFd)> =
            files.into_iter().map(|(p, w, fd)| (p.to_path_buf(), w, fd)).collect();
        let (text, fds) = encode("uses", files.iter().map(|(p, w, fd)| (p, *w, *fd)))?;
        self.send_raw(&text, &fds)
    }

    /// Core: the files of the last `uses` word that came since the last call (at most
    /// [`MAX_USES_READ`] words are read), or `None` if none came. Never waits; other words
    /// and malformed ones are dropped.
    pub fn latest_uses(&self) -> Option<Vec<StartupFile>> {
        let mut latest = None;
        for _ in 0..MAX_USES_READ {
            match self.receive(Duration::ZERO) {
                Ok(Message::Uses(files)) => latest = Some(files),
                Ok(_) | Err(StartupError::Malformed(_) | StartupError::TooMany(_)) => {}
                Err(_) => break,
            }
        }
        latest
    }

    /// Compartment: it cannot start, because of `why`.
    pub fn failed(&self, why: &str) -> Result<(), StartupError> {
        let mut text = b"failed\n".to_vec();
        text.extend_from_slice(why.as_bytes());
        text.truncate(MAX_MESSAGE);
        self.send_raw(&text, &[])
    }

    /// Core: the compartment's next word, waiting at most `within`.
    pub fn report(&self, within: Duration) -> Result<Report, StartupError> {
        match self.receive(within)? {
            Message::Ready(files) => Ok(Report::Ready(files)),
            Message::Failed(why) => Ok(Report::Failed(why)),
            Message::Open { path, writable } => Ok(Report::Open { path, writable }),
            _ => Err(StartupError::Malformed("a core's message from the compartment".into())),
        }
    }

    fn send(&self, word: &str, files: &[StartupFile]) -> Result<(), StartupError> {
        let entries = files.iter().map(|f| (&f.path, f.writable, f.file.as_raw_fd()));
        let (text, fds) = encode(word, entries)?;
        self.send_raw(&text, &fds)
    }

    fn send_raw(&self, text: &[u8], fds: &[RawFd]) -> Result<(), StartupError> {
        let sent = self
            .send_with_fds(&[text], fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if sent != text.len() {
            return Err(StartupError::Malformed(format!("sent {sent} of {} bytes", text.len())));
        }
        Ok(())
    }

    /// The next message.
    fn receive(&self, within: Duration) -> Result<Message, StartupError> {
        self.wait(within)?;
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let mut fds = [-1; MAX_FILES + 1];
        let mut iov = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }];
        // SAFETY: the iovec points at `buf`, which lives for the call and may hold any bytes.
        let (n, nfds) = unsafe { self.recv_with_fds(&mut iov, &mut fds) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: recvmsg gave us these descriptors; each is owned once, here.
        let owned: Vec<OwnedFd> =
            fds[..nfds].iter().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
        for fd in &owned {
            // SAFETY: F_SETFD on a descriptor we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        if n == 0 && nfds == 0 {
            return Err(StartupError::Closed);
        }
        if n > MAX_MESSAGE || nfds > MAX_FILES {
            return Err(StartupError::TooMany(nfds));
        }
        decode(&buf[..n], owned)
    }

    fn wait(&self, within: Duration) -> Result<(), StartupError> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd =
                libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: poll reads and writes one pollfd that lives for the call.
            match unsafe { libc::poll(&mut pfd, 1, ms) } {
                1 => return Ok(()),
                0 => return Err(StartupError::Timeout(within)),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e.into());
                    }
                }
            }
        }
    }
}

/// The type of socket `fd` is (`SOCK_STREAM`, …), or `None` if it is no socket.
pub(crate) fn socket_type(fd: RawFd) -> Option<libc::c_int> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(kind)
}

fn encode<'a>(
    word: &str,
    files: impl Iterator<Item = (&'a PathBuf, bool, RawFd)>,
) -> Result<(Vec<u8>, Vec<RawFd>), StartupError> {
    let mut text = format!("{word}\n").into_bytes();
    let mut fds = Vec::new();
    for (path, writable, fd) in files {
        text.push(if writable { b'w' } else { b'r' });
        text.extend_from_slice(path.as_os_str().as_bytes());
        text.push(0);
        fds.push(fd);
    }
    if fds.len() > MAX_FILES || text.len() > MAX_MESSAGE {
        return Err(StartupError::TooMany(fds.len()));
    }
    Ok((text, fds))
}

fn decode(text: &[u8], fds: Vec<OwnedFd>) -> Result<Message, StartupError> {
    let malformed = |why: &str| StartupError::Malformed(why.to_string());
    let newline = text.iter().position(|&b| b == b'\n').ok_or_else(|| malformed("no word"))?;
    let rest = &text[newline + 1..];
    let word = &text[..newline];
    let words = |rest: &[u8]| String::from_utf8_lossy(rest).into_owned();
    match word {
        b"failed" => return Ok(Message::Failed(words(rest))),
        b"refused" => return Ok(Message::Refused(words(rest))),
        b"files" | b"ready" | b"uses" | b"open" | b"opened" => {}
        other => {
            return Err(malformed(&format!("unknown word {:?}", String::from_utf8_lossy(other))))
        }
    }
    let entries = entries(rest)?;
    let attached = if word == b"open" { 0 } else { entries.len() };
    if fds.len() != attached {
        return Err(malformed(&format!("{} names for {} files", entries.len(), fds.len())));
    }
    if word == b"open" {
        let [(path, writable)] =
            <[_; 1]>::try_from(entries).map_err(|_| malformed("open takes one name"))?;
        return Ok(Message::Open { path, writable });
    }
    let files: Vec<StartupFile> = entries
        .into_iter()
        .zip(fds)
        .map(|((path, writable), fd)| StartupFile { path, writable, file: File::from(fd) })
        .collect();
    Ok(match word {
        b"files" => Message::Files(files),
        b"ready" => Message::Ready(files),
        b"uses" => Message::Uses(files),
        _ => {
            let [file] =
                <[_; 1]>::try_from(files).map_err(|_| malformed("opened takes one file"))?;
            Message::Opened(file)
        }
    })
}

/// The entries of a message: `r` or `w`, a name, NUL.
fn entries(rest: &[u8]) -> Result<Vec<(PathBuf, bool)>, StartupError> {
    let malformed = |why: &str| StartupError::Malformed(why.to_string());
    let entries: Vec<&[u8]> = match rest.strip_suffix(&[0]) {
        Some(body) => body.split(|&b| b == 0).collect(),
        None if rest.is_empty() => Vec::new(),
        None => return Err(malformed("an entry does not end with NUL")),
    };
    entries
        .into_iter()
        .map(|entry| {
            let (writable, name) = match entry.split_first() {
                Some((b'w', name)) => (true, name),
                Some((b'r', name)) => (false, name),
                _ => return Err(malformed("an entry is neither r nor w")),
            };
            if name.is_empty() {
                return Err(malformed("a file has no name"));
            }
            Ok((PathBuf::from(std::ffi::OsStr::from_bytes(name)), writable))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::path::Path;

    #[test]
    fn files_go_and_come_back_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image with spaces\nand a newline");
        std::fs::write(&path, b"data").unwrap();
        let (core, compartment) = Startup::pair().unwrap();
        let file = File::open(&path).unwrap();
        core.send_files(&[StartupFile { path: path.clone(), writable: false, file }]).unwrap();
        let mut got = compartment.receive_files(Duration::from_secs(1)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].path.as_path(), got[0].writable), (path.as_path(), false));
        let mut text = String::new();
        got[0].file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "data");

        let mut writable = tempfile::tempfile().unwrap();
        compartment.ready([(path.as_path(), true, writable.as_raw_fd())]).unwrap();
        let Report::Ready(mut back) = core.report(Duration::from_secs(1)).unwrap() else {
            panic!("not ready")
        };
        back[0].file.write_all(b"xy").unwrap();
        writable.rewind().unwrap();
        let mut text = String::new();
        writable.read_to_string(&mut text).unwrap();
        assert_eq!((text.as_str(), back[0].writable), ("xy", true), "the same open file");
        core.send_files(&[]).unwrap();
        assert!(compartment.receive_files(Duration::from_secs(1)).unwrap().is_empty());
    }

    #[test]
    fn the_core_keeps_the_last_word_of_what_a_compartment_uses() {
        let (core, compartment) = Startup::pair().unwrap();
        assert!(core.latest_uses().is_none(), "nothing said yet");
        let (a, b) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let name = Path::new("console-client");
        compartment.uses([(name, true, a.as_raw_fd())]).unwrap();
        compartment.uses([(name, true, b.as_raw_fd())]).unwrap();
        (&b).write_all(b"second").unwrap();
        let mut last = core.latest_uses().expect("two words");
        assert_eq!((last.len(), last[0].path.as_path(), last[0].writable), (1, name, true));
        let mut text = String::new();
        last[0].file.rewind().unwrap();
        last[0].file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "second", "the last word wins");
        assert!(core.latest_uses().is_none(), "read once");
        compartment.uses([]).unwrap();
        assert!(core.latest_uses().unwrap().is_empty(), "nothing used any more");
        compartment.failed("not a uses word").unwrap();
        drop(compartment);
        assert!(core.latest_uses().is_none(), "other words, and the end, are no word");
    }

    #[test]
    fn a_failure_says_why_and_an_end_or_silence_is_told_apart() {
        let (core, compartment) = Startup::pair().unwrap();
        compartment.failed("cannot open d.raw: No such file or directory").unwrap();
        match core.report(Duration::from_secs(1)).unwrap() {
            Report::Failed(why) => assert_eq!(why, "cannot open d.raw: No such file or directory"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(core.report(Duration::from_millis(20)), Err(StartupError::Timeout(_))));
        drop(compartment);
        assert!(matches!(core.report(Duration::from_secs(1)), Err(StartupError::Closed)));
    }

    #[test]
    fn malformed_messages_are_errors() {
        for text in [&b"hello\n"[..], b"ready", b"ready\nwname", b"ready\nxname\0", b"ready\nw\0"] {
            let (core, compartment) = Startup::pair().unwrap();
            let fd = tempfile::tempfile().unwrap();
            compartment.send_raw(text, &[fd.as_raw_fd()]).unwrap();
            assert!(
                matches!(core.report(Duration::from_secs(1)), Err(StartupError::Malformed(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_compartment_asks_for_a_file_and_gets_it_or_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, b"image").unwrap();
        let (core, compartment) = Startup::pair().unwrap();
        let server = std::thread::spawn(move || {
            for answer in [true, false] {
                let Report::Open { path, writable } = core.report(Duration::from_secs(5)).unwrap()
                else {
                    panic!("no request")
                };
                assert!(writable);
                if answer {
                    core.opened(&path, writable, &File::open(&path).unwrap()).unwrap();
                } else {
                    core.refused(&format!("{} is outside the image's folder", path.display()))
                        .unwrap();
                }
            }
        });
        let mut file = compartment.request_open(&path, true, Duration::from_secs(5)).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "image");
        let refused =
            compartment.request_open(Path::new("/etc/shadow"), true, Duration::from_secs(5));
        match refused {
            Err(StartupError::Refused(why)) => assert!(why.contains("outside"), "{why}"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn only_a_seqpacket_socket_is_taken_as_the_startup_fd() {
        let file = tempfile::tempfile().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        let e = Startup::from_inherited(fd).unwrap_err().to_string();
        assert!(e.contains("not a seqpacket socket"), "{e}");
        // SAFETY: from_inherited refused the descriptor, which is still ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}
