//! What the user asks of a console: where its host side is.
//!
//! `socket=PATH`, `pty` and `stdio` name a host side to open (by the core, which then hands the
//! descriptors to the compartment; or by `bulkhead device console` run by hand). `listen-fd=N`,
//! `pty-fd=N` and `stdio-fds=IN:OUT` name descriptors a compartment inherited from its core.

use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::host::HostEnds;
use crate::DeviceError;

/// Where the console's host side is.
#[derive(Clone, Debug)]
pub enum ConsoleHost {
    /// A unix socket listening at this path: one client at a time is the console.
    Socket(PathBuf),
    /// A new pseudo-terminal (its name is told when it is opened).
    Pty,
    /// This process's standard input and output.
    Stdio,
    /// Host ends this process opened already (the core's): the device uses duplicates.
    Open(Arc<HostEnds>),
    /// Descriptors this process inherited (a compartment's): the device owns them.
    Inherited(Inherited),
}

/// Host-side descriptors a compartment inherited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inherited {
    /// A listening unix socket.
    Listener(RawFd),
    /// A pseudo-terminal's master side.
    Pty(RawFd),
    /// An input and an output (the core's standard input and output).
    Stdio {
        /// Read from.
        input: RawFd,
        /// Written to.
        output: RawFd,
    },
}

impl PartialEq for ConsoleHost {
    fn eq(&self, other: &ConsoleHost) -> bool {
        match (self, other) {
            (ConsoleHost::Socket(a), ConsoleHost::Socket(b)) => a == b,
            (ConsoleHost::Pty, ConsoleHost::Pty) | (ConsoleHost::Stdio, ConsoleHost::Stdio) => true,
            (ConsoleHost::Open(a), ConsoleHost::Open(b)) => Arc::ptr_eq(a, b),
            (ConsoleHost::Inherited(a), ConsoleHost::Inherited(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for ConsoleHost {}

/// A console device: its host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Where the bytes go and come from.
    pub host: ConsoleHost,
}

const USE: &str = "use socket=PATH, pty or stdio";

impl FromStr for ConsoleHost {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let mut host = None;
        for (key, value) in crate::options(s) {
            let fd = |v: &str| match v.parse::<RawFd>() {
                Ok(fd) if fd >= 0 => Ok(fd),
                _ => Err(DeviceError::Config(format!("{key}={v}: not a file descriptor"))),
            };
            let next = match (key, value) {
                ("socket", "") => {
                    return Err(DeviceError::Config("socket= needs a path: socket=PATH".into()))
                }
                ("socket", path) => ConsoleHost::Socket(path.into()),
                ("pty", "") => ConsoleHost::Pty,
                ("stdio", "") => ConsoleHost::Stdio,
                ("listen-fd", v) => ConsoleHost::Inherited(Inherited::Listener(fd(v)?)),
                ("pty-fd", v) => ConsoleHost::Inherited(Inherited::Pty(fd(v)?)),
                ("stdio-fds", v) => {
                    let (i, o) = v.split_once(':').ok_or_else(|| {
                        DeviceError::Config(format!("stdio-fds={v}: give two descriptors, IN:OUT"))
                    })?;
                    ConsoleHost::Inherited(Inherited::Stdio { input: fd(i)?, output: fd(o)? })
                }
                _ => {
                    return Err(DeviceError::Config(format!(
                        "unknown console option {:?}; {USE}",
                        if value.is_empty() { key.to_string() } else { format!("{key}={value}") }
                    )))
                }
            };
            if host.replace(next).is_some() {
                return Err(DeviceError::Config(format!(
                    "a console has one host side: {s:?} names several; {USE}"
                )));
            }
        }
        host.ok_or_else(|| DeviceError::Config(format!("a console needs its host side: {USE}")))
    }
}

impl FromStr for ConsoleConfig {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        Ok(ConsoleConfig { host: s.parse()? })
    }
}

/// The spelling [`ConsoleHost::from_str`] reads back (`Open` has none: it is shown as what it
/// is, for messages).
impl fmt::Display for ConsoleHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleHost::Socket(path) => write!(f, "socket={}", path.display()),
            ConsoleHost::Pty => f.write_str("pty"),
            ConsoleHost::Stdio => f.write_str("stdio"),
            ConsoleHost::Open(ends) => write!(f, "{}", ends.describe()),
            ConsoleHost::Inherited(Inherited::Listener(fd)) => write!(f, "listen-fd={fd}"),
            ConsoleHost::Inherited(Inherited::Pty(fd)) => write!(f, "pty-fd={fd}"),
            ConsoleHost::Inherited(Inherited::Stdio { input, output }) => {
                write!(f, "stdio-fds={input}:{output}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_host_side_and_reads_back_its_spelling() {
        for text in
            ["socket=/run/c.sock", "pty", "stdio", "listen-fd=4", "pty-fd=4", "stdio-fds=4:6"]
        {
            let host: ConsoleHost = text.parse().unwrap();
            assert_eq!(host.to_string(), text);
        }
        assert_eq!(
            "stdio-fds=4:6".parse::<ConsoleHost>().unwrap(),
            ConsoleHost::Inherited(Inherited::Stdio { input: 4, output: 6 })
        );
    }

    #[test]
    fn refuses_what_is_not_one_host_side() {
        for (bad, says) in [
            ("", "needs its host side"),
            ("socket=", "needs a path"),
            ("tcp=1234", "unknown console option \"tcp=1234\"; use socket=PATH, pty or stdio"),
            ("pty=1", "unknown console option"),
            ("pty,stdio", "names several"),
            ("listen-fd=-1", "not a file descriptor"),
            ("stdio-fds=4", "IN:OUT"),
        ] {
            let e = bad.parse::<ConsoleHost>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
