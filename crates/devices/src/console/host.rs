//! The console's host side, opened: a listening unix socket, a pseudo-terminal, or standard
//! input and output.
//!
//! The core opens it (it runs in the host's namespaces and may create files; a compartment may
//! not) and keeps it for the VM's life, so that a restarted compartment serves the same socket
//! or terminal: a compartment only ever gets duplicates of these descriptors.
//!
//! - **socket**: bound at the path and listening; a stale socket file (nothing listens on it)
//!   is replaced, any other file, or a socket another process listens on, is refused. Mode 0600:
//!   whoever connects types into the guest.
//! - **pty**: a new pseudo-terminal in raw mode (no echo, no line editing: bytes cross as they
//!   are). Its other side stays open here, so that a terminal program may come and go without
//!   the master side ever reading as hung up, and bytes written while none is attached wait in
//!   the terminal's buffer (a few KiB) for the next.
//! - **stdio**: duplicates of standard input and output. They share their open file
//!   descriptions with this process and its parent shell, so they are never made non-blocking.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::config::{ConsoleHost, Inherited};
use crate::DeviceError;

/// The console's host side, open.
#[derive(Debug)]
pub enum HostEnds {
    /// A listening unix socket, and its path (none when inherited).
    Listener {
        /// The socket.
        listener: UnixListener,
        /// Where it listens.
        path: Option<PathBuf>,
    },
    /// A pseudo-terminal.
    Pty {
        /// The master side, which the device reads and writes.
        master: File,
        /// The terminal side, kept open by whoever opened the pair (none when inherited).
        terminal: Option<File>,
        /// The terminal's name (`/dev/pts/N`; none when inherited).
        path: Option<PathBuf>,
    },
    /// An input and an output shared with other processes (standard input and output).
    Stdio {
        /// Read from.
        input: File,
        /// Written to.
        output: File,
    },
}

fn host_error(what: String) -> impl FnOnce(io::Error) -> DeviceError {
    move |source| DeviceError::Host { what, source }
}

impl HostEnds {
    /// Opens the host side `host` names; inherited descriptors are adopted, ends already open
    /// are duplicated.
    pub fn open(host: &ConsoleHost) -> Result<HostEnds, DeviceError> {
        match host {
            ConsoleHost::Socket(path) => HostEnds::listen(path),
            ConsoleHost::Pty => HostEnds::pty(),
            ConsoleHost::Stdio => HostEnds::stdio(),
            ConsoleHost::Open(ends) => {
                ends.try_clone().map_err(host_error("cannot duplicate the console's ends".into()))
            }
            ConsoleHost::Inherited(fds) => HostEnds::adopt(*fds),
        }
    }

    /// Listens on `path` (see the module documentation for what is replaced and refused).
    pub fn listen(path: &Path) -> Result<HostEnds, DeviceError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(DeviceError::Config(format!(
                    "{} exists and is not a socket; choose another path",
                    path.display()
                )))
            }
            Ok(_) if UnixStream::connect(path).is_ok() => {
                return Err(DeviceError::Config(format!(
                    "{} is in use: another process listens on it; choose another path",
                    path.display()
                )))
            }
            Ok(_) => std::fs::remove_file(path)
                .map_err(host_error(format!("cannot remove the stale {}", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(host_error(format!("cannot look at {}", path.display()))(e)),
        }
        let listener = UnixListener::bind(path)
            .map_err(host_error(format!("cannot listen on {}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(host_error(format!("cannot make {} private", path.display())))?;
        listener
            .set_nonblocking(true)
            .map_err(host_error("cannot make the console's socket non-blocking".into()))?;
        Ok(HostEnds::Listener { listener, path: Some(path.to_path_buf()) })
    }

    /// A new pseudo-terminal pair, in raw mode.
    pub fn pty() -> Result<HostEnds, DeviceError> {
        let err = |what: &str| host_error(format!("cannot {what} a pseudo-terminal"));
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: posix_openpt returns a new descriptor, or -1.
        let fd = unsafe { libc::posix_openpt(flags) };
        if fd < 0 {
            return Err(err("open")(io::Error::last_os_error()));
        }
        // SAFETY: a descriptor just opened, owned by nobody else.
        let master = unsafe { File::from_raw_fd(fd) };
        // SAFETY: grantpt and unlockpt take the master's descriptor, which is open.
        if unsafe { libc::grantpt(fd) } != 0 || unsafe { libc::unlockpt(fd) } != 0 {
            return Err(err("unlock")(io::Error::last_os_error()));
        }
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes a NUL-terminated name of at most `name.len()` bytes.
        let rc = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
        if rc != 0 {
            return Err(err("name")(io::Error::from_raw_os_error(rc)));
        }
        // SAFETY: ptsname_r succeeded: `name` holds a NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let terminal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(err("open the terminal side of"))?;
        make_raw(&terminal).map_err(err("set raw mode on"))?;
        Ok(HostEnds::Pty { master, terminal: Some(terminal), path: Some(path) })
    }

    /// Duplicates of this process's standard input and output.
    pub fn stdio() -> Result<HostEnds, DeviceError> {
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map(File::from)
                .map_err(host_error("cannot duplicate standard input and output".into()))
        };
        Ok(HostEnds::Stdio { input: dup(io::stdin().as_fd())?, output: dup(io::stdout().as_fd())? })
    }

    /// Takes over descriptors this process inherited for its console (each is checked to be
    /// open, and a listener to be a listening socket, a pty a terminal).
    pub fn adopt(fds: Inherited) -> Result<HostEnds, DeviceError> {
        let owned = |fd: RawFd| -> Result<OwnedFd, DeviceError> {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(DeviceError::Config(format!("descriptor {fd} is not open")));
            }
            // SAFETY: an open descriptor inherited for this device, which takes it over.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        match fds {
            Inherited::Listener(fd) => {
                if !is_listening(fd) {
                    return Err(DeviceError::Config(format!(
                        "descriptor {fd} is not a listening unix socket"
                    )));
                }
                let listener = UnixListener::from(owned(fd)?);
                listener
                    .set_nonblocking(true)
                    .map_err(host_error("cannot make the console's socket non-blocking".into()))?;
                Ok(HostEnds::Listener { listener, path: None })
            }
            Inherited::Pty(fd) => {
                // SAFETY: isatty only asks the descriptor's terminal settings.
                if unsafe { libc::isatty(fd) } != 1 {
                    return Err(DeviceError::Config(format!("descriptor {fd} is not a terminal")));
                }
                Ok(HostEnds::Pty { master: File::from(owned(fd)?), terminal: None, path: None })
            }
            Inherited::Stdio { input, output } => {
                Ok(HostEnds::Stdio { input: owned(input)?.into(), output: owned(output)?.into() })
            }
        }
    }

    /// Duplicates of the descriptors a device uses (not a pty's terminal side).
    pub fn try_clone(&self) -> io::Result<HostEnds> {
        Ok(match self {
            HostEnds::Listener { listener, path } => {
                HostEnds::Listener { listener: listener.try_clone()?, path: path.clone() }
            }
            HostEnds::Pty { master, path, .. } => {
                HostEnds::Pty { master: master.try_clone()?, terminal: None, path: path.clone() }
            }
            HostEnds::Stdio { input, output } => {
                HostEnds::Stdio { input: input.try_clone()?, output: output.try_clone()? }
            }
        })
    }

    /// The descriptors a compartment is given, at `first` (and `second`, stdio's output), and
    /// how it names them (`listen-fd=4`, …).
    pub fn hand_to(
        &self,
        first: RawFd,
        second: RawFd,
    ) -> (Vec<(BorrowedFd<'_>, RawFd)>, Inherited) {
        match self {
            HostEnds::Listener { listener, .. } => {
                (vec![(listener.as_fd(), first)], Inherited::Listener(first))
            }
            HostEnds::Pty { master, .. } => (vec![(master.as_fd(), first)], Inherited::Pty(first)),
            HostEnds::Stdio { input, output } => (
                vec![(input.as_fd(), first), (output.as_fd(), second)],
                Inherited::Stdio { input: first, output: second },
            ),
        }
    }

    /// Every descriptor held.
    pub fn fds(&self) -> Vec<RawFd> {
        match self {
            HostEnds::Listener { listener, .. } => vec![listener.as_raw_fd()],
            HostEnds::Pty { master, terminal, .. } => {
                std::iter::once(master).chain(terminal).map(AsRawFd::as_raw_fd).collect()
            }
            HostEnds::Stdio { input, output } => vec![input.as_raw_fd(), output.as_raw_fd()],
        }
    }

    /// Where it is, in words: `unix socket /run/c.sock`, `pty /dev/pts/3`, `stdin/stdout`.
    pub fn describe(&self) -> String {
        let shown = |p: &Option<PathBuf>| p.as_ref().map(|p| format!(" {}", p.display()));
        match self {
            HostEnds::Listener { path, .. } => {
                format!("unix socket{}", shown(path).unwrap_or_default())
            }
            HostEnds::Pty { path, .. } => format!("pty{}", shown(path).unwrap_or_default()),
            HostEnds::Stdio { .. } => "stdin/stdout".into(),
        }
    }

    /// The socket's path, for the core to remove when the VM ends.
    pub fn socket_path(&self) -> Option<&Path> {
        match self {
            HostEnds::Listener { path, .. } => path.as_deref(),
            _ => None,
        }
    }
}

/// Whether `fd` is a unix stream socket that listens.
fn is_listening(fd: RawFd) -> bool {
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `listening`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && listening == 1 && crate::startup::socket_type(fd) == Some(libc::SOCK_STREAM)
}

/// Raw mode: bytes cross the terminal unchanged, none is echoed back.
fn make_raw(terminal: &File) -> io::Result<()> {
    let fd = terminal.as_raw_fd();
    // SAFETY: `termios` is a plain C struct for which all zeroes is valid.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills `t` for an open terminal.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: cfmakeraw only changes the struct's fields.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: tcsetattr reads `t`, which lives for the call.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_socket_replaces_a_stale_one_and_refuses_a_live_one_or_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let first = HostEnds::listen(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = HostEnds::listen(&path).unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        drop(first);
        HostEnds::listen(&path).expect("a stale socket is replaced");
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let e = HostEnds::listen(&file).unwrap_err().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    #[test]
    fn a_pty_is_raw_and_its_name_opens_the_other_side() {
        let ends = HostEnds::pty().unwrap();
        let HostEnds::Pty { master, path: Some(path), .. } = &ends else { panic!("{ends:?}") };
        assert!(ends.describe().starts_with("pty /dev/pts/"), "{}", ends.describe());
        let mut user = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        (&*master).write_all(b"a\rb\n").unwrap();
        let mut got = [0u8; 4];
        user.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"a\rb\n", "raw: no translation");
        user.write_all(b"typed").unwrap();
        let mut got = [0u8; 5];
        (&*master).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"typed");
    }

    #[test]
    fn inherited_descriptors_are_checked() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let e = HostEnds::adopt(Inherited::Listener(fd)).unwrap_err().to_string();
        assert!(e.contains("not a listening unix socket"), "{e}");
        let e = HostEnds::adopt(Inherited::Pty(fd)).unwrap_err().to_string();
        assert!(e.contains("not a terminal"), "{e}");
        let e = HostEnds::adopt(Inherited::Pty(100_000)).unwrap_err().to_string();
        assert!(e.contains("not a terminal") || e.contains("not open"), "{e}");
    }
}
