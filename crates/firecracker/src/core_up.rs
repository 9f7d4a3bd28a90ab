//! Waiting for the core to be up, for `InstanceStart`'s answer. The core serves its control
//! socket once the VM is built and its devices started; the front watches the run folder
//! for that socket with inotify, so that it answers as soon as the socket is there (polling
//! the path cost up to a poll interval, 5 ms, on every start) and sees a socket that came
//! and went already (a guest that powers off within milliseconds takes its core, and the
//! socket, with it). Where the folder cannot be watched, the path is looked at every 5 ms.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long the core may take to be up before `InstanceStart` is answered anyway.
const PATIENCE: Duration = Duration::from_secs(10);
/// How often the core's end (or, unwatched, the socket) is looked for.
const POLL: Duration = Duration::from_millis(5);

/// What became of a core just started.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its control socket appeared: the VM runs (or ran).
    Up,
    /// It ended before its socket appeared.
    Ended(ExitStatus),
    /// Neither within [`PATIENCE`].
    Slow,
}

/// An inotify watch on the run folder for one socket's name.
pub struct SocketWatch {
    fd: OwnedFd,
    name: OsString,
}

impl SocketWatch {
    /// Watches the folder of `socket` (creating it as the core would, 0700) for `socket`
    /// being created; `None` where it cannot.
    pub fn new(socket: &Path) -> Option<SocketWatch> {
        let (dir, name) = (socket.parent()?, socket.file_name()?);
        bulkhead_api::paths::prepare_dir(dir).ok()?;
        // SAFETY: inotify_init1 takes flags only; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a new descriptor this function owns from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mask = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ONLYDIR;
        // SAFETY: a valid inotify descriptor and a NUL-terminated path; checked.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
        (wd >= 0).then(|| SocketWatch { fd, name: name.to_os_string() })
    }

    /// Whether the socket was created since the last call, waiting up to `timeout`.
    fn created(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        let mut seen = false;
        loop {
            // SAFETY: reads into a buffer of the length given.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else { return seen };
            if n == 0 {
                return seen;
            }
            seen |= names(&buf[..n]).any(|name| name == self.name.as_bytes());
        }
    }
}

/// The names of the events in `buf` (struct inotify_event, one after another).
fn names(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < HEADER {
            return None;
        }
        let len = u32::from_ne_bytes(rest[12..16].try_into().ok()?) as usize;
        let name = rest.get(HEADER..HEADER + len)?;
        rest = &rest[HEADER + len..];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some(&name[..end])
    })
}

/// Waits until the core's control socket `socket` is there (seen through `watch` when it
/// could be set up before the core started) or the core ends.
pub fn wait(socket: &Path, watch: Option<&SocketWatch>, core: &mut Child) -> Outcome {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if socket.exists() {
            return Outcome::Up;
        }
        if let Ok(Some(status)) = core.try_wait() {
            // A socket that came and went: the VM ran and ended already.
            let came = watch.is_some_and(|w| w.created(Duration::ZERO));
            return if came { Outcome::Up } else { Outcome::Ended(status) };
        }
        if Instant::now() >= deadline {
            return Outcome::Slow;
        }
        match watch {
            Some(w) if w.created(POLL) => return Outcome::Up,
            Some(_) => {}
            None => std::thread::sleep(POLL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    /// A fresh folder under the temporary one.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bh-core-up-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_socket_that_came_and_went_counts_as_up() {
        let dir = scratch("came");
        let socket = dir.join("run/vm.sock");
        let watch = SocketWatch::new(&socket).expect("an inotify watch");
        let script = format!("touch {0}.lock; touch {0}; rm {0}", socket.display());
        let mut core = Command::new("sh").args(["-c", &script]).spawn().unwrap();
        assert_eq!(wait(&socket, Some(&watch), &mut core), Outcome::Up);
        core.wait().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_core_that_ends_without_its_socket_is_told() {
        let dir = scratch("ended");
        let socket = dir.join("vm.sock");
        let watch = SocketWatch::new(&socket);
        assert!(watch.is_some());
        let mut core = Command::new("sh").args(["-c", "exit 1"]).spawn().unwrap();
        let outcome = wait(&socket, watch.as_ref(), &mut core);
        assert!(matches!(outcome, Outcome::Ended(s) if s.code() == Some(1)), "{outcome:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
