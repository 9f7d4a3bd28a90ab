//! Who is on the other end of a unix socket, as the kernel says (`SO_PEERCRED`).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// The credentials of the process that connected (as they were when it connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Its process ID (in the server's PID namespace; 0 if it is in none the server sees).
    pub pid: i32,
    /// Its effective user ID.
    pub uid: u32,
    /// Its effective group ID.
    pub gid: u32,
}

/// The credentials of `stream`'s peer.
pub fn credentials(stream: &UnixStream) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size of `cred`, which
    // is what SO_PEERCRED fills in; the descriptor is open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("the kernel returned a short SO_PEERCRED"));
    }
    Ok(PeerCredentials { pid: cred.pid, uid: cred.uid, gid: cred.gid })
}

/// Whether a peer running as `peer_uid` may control a VM run by `vm_uid`: the same user, or
/// root.
pub fn allowed(peer_uid: u32, vm_uid: u32) -> bool {
    peer_uid == vm_uid || peer_uid == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_user_and_root_only() {
        assert!(allowed(1000, 1000));
        assert!(allowed(0, 1000));
        assert!(allowed(0, 0));
        assert!(!allowed(1001, 1000));
        assert!(!allowed(65534, 0));
        assert!(!allowed(1000, 0));
    }

    #[test]
    fn credentials_of_a_socket_pair_are_our_own() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = credentials(&a).unwrap();
        assert_eq!(cred.pid as u32, std::process::id());
        assert_eq!(cred.uid, crate::paths::euid());
        // SAFETY: getegid has no preconditions and cannot fail.
        assert_eq!(cred.gid, unsafe { libc::getegid() });
    }
}
