//! Helpers shared by the tests: the channel to a compartment, errno names,
//! the probe's configuration (built the same way on both sides).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_sandbox::{
    spawn, Command, Compartment, DenyAction, IdMap, Namespaces, Policy, Rlimits,
};

/// A connected pair of unix stream sockets (the compartment gets one as fd 3).
pub fn socket_pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().expect("socketpair")
}

/// What a compartment wrote on its channel: `key=value` lines up to `end`.
pub struct Answers {
    pub map: BTreeMap<String, String>,
}

impl Answers {
    /// Reads lines until `end` or end of file.
    pub fn read(stream: &UnixStream) -> Answers {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut map = BTreeMap::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if line == "end" {
                break;
            }
            if let Some((key, value)) = line.split_once('=') {
                map.insert(key.to_string(), value.to_string());
            }
        }
        Answers { map }
    }

    pub fn get(&self, key: &str) -> &str {
        self.map
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no `{key}` in {:#?}", self.map))
    }
}

/// Lets a compartment that waits on its channel finish.
pub fn release(stream: &mut UnixStream) {
    let _ = stream.write_all(b"x");
}

/// Errno names for the outcomes the tests look at.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EACCES => "EACCES",
        libc::EROFS => "EROFS",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::ENOSYS => "ENOSYS",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EBADF => "EBADF",
        libc::EINVAL => "EINVAL",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// `ok` or the errno's name.
pub fn outcome<T>(result: std::io::Result<T>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.raw_os_error().map(errno_name).unwrap_or_else(|| e.to_string()),
    }
}

/// `ok` for a libc call returning >= 0, else the errno's name.
pub fn libc_outcome(rc: i64) -> String {
    outcome(if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) })
}

/// How the probe compartment is configured; `args` and `parse` carry it
/// through the command line so both sides build the same policy.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub kill: bool,
    pub ro: PathBuf,
    pub rw: PathBuf,
    pub unlisted: PathBuf,
    pub port: u16,
    pub core: i32,
    pub empty_root: bool,
    pub net_ns: bool,
    pub tcp: bool,
    pub user_ns: bool,
    pub thread_before: bool,
    pub required: bool,
}

impl Probe {
    pub fn args(&self) -> Vec<String> {
        let b = |v: bool| if v { "1" } else { "0" };
        vec![
            format!("kill={}", b(self.kill)),
            format!("ro={}", self.ro.display()),
            format!("rw={}", self.rw.display()),
            format!("unlisted={}", self.unlisted.display()),
            format!("port={}", self.port),
            format!("core={}", self.core),
            format!("root={}", b(self.empty_root)),
            format!("net={}", b(self.net_ns)),
            format!("tcp={}", b(self.tcp)),
            format!("userns={}", b(self.user_ns)),
            format!("thread_before={}", b(self.thread_before)),
            format!("required={}", b(self.required)),
        ]
    }

    pub fn parse(args: &[String]) -> Probe {
        let map: BTreeMap<&str, &str> = args.iter().filter_map(|a| a.split_once('=')).collect();
        let flag = |k: &str| map.get(k) == Some(&"1");
        Probe {
            kill: flag("kill"),
            ro: map["ro"].into(),
            rw: map["rw"].into(),
            unlisted: map["unlisted"].into(),
            port: map["port"].parse().unwrap(),
            core: map["core"].parse().unwrap(),
            empty_root: flag("root"),
            net_ns: flag("net"),
            tcp: flag("tcp"),
            user_ns: flag("userns"),
            thread_before: flag("thread_before"),
            required: flag("required"),
        }
    }

    /// The probe's policy: the two files, and what its checks need.
    pub fn policy(&self) -> Policy {
        let deny = if self.kill { DenyAction::KillProcess } else { DenyAction::Errno(libc::EPERM) };
        let mut namespaces = Namespaces { net: self.net_ns, ..Namespaces::default() };
        if self.user_ns {
            namespaces.user = Some(IdMap::root_as(65534, 65534));
        }
        let enforcement = if self.required {
            bulkhead_sandbox::Enforcement::Required
        } else {
            bulkhead_sandbox::Enforcement::BestEffort
        };
        Policy::builder("probe")
            .namespaces(namespaces)
            .read_only(&self.ro)
            .read_write(&self.rw)
            .allow_syscalls(PROBE_SYSCALLS)
            .deny_action(deny)
            .empty_root(self.empty_root)
            .landlock_tcp(self.tcp)
            .enforcement(enforcement)
            .build()
            .expect("the probe policy builds")
    }
}

/// What the probe's checks call, beyond the runtime list; `uname`, `unshare`
/// and `prctl(PR_CAP_AMBIENT…)` are deliberately missing. (Rust's `UnixStream`
/// writes with `sendto` and reads with `recvfrom`.)
pub const PROBE_SYSCALLS: &[&str] = &[
    "sendto",
    "recvfrom",
    "openat",
    "open",
    "fstat",
    "newfstatat",
    "statx",
    "lseek",
    "socket",
    "connect",
    "kill",
    "capget",
    "capset",
    "getppid",
    "getuid",
    "mkdir",
    "mkdirat",
    "pread64",
    "sched_yield",
];

/// Spawns this test binary as `role` with `args`, giving it `channel` as fd 3.
pub fn spawn_role(
    role: &str,
    args: &[String],
    policy: &Policy,
    channel: &UnixStream,
) -> Compartment {
    let command =
        Command::current_exe().unwrap().arg("--role").arg(role).args(args).fd(channel.as_fd(), 3);
    spawn(&command, policy).unwrap_or_else(|e| panic!("spawning {role}: {e}"))
}

/// A policy with the sandbox's namespaces and nothing else (for roles that do not enter).
pub fn plain_policy(name: &str) -> bulkhead_sandbox::PolicyBuilder {
    Policy::builder(name).rlimits(Rlimits::none())
}

/// The compartment's channel, fd 3, in a role.
pub fn channel() -> UnixStream {
    // SAFETY: spawn gave this process fd 3, a unix stream socket, and nothing else owns it.
    UnixStream::from(unsafe { OwnedFd::from_raw_fd(3) })
}

/// Writes `key=value` on the channel.
pub fn say(channel: &mut UnixStream, key: &str, value: impl std::fmt::Display) {
    writeln!(channel, "{key}={value}").unwrap();
}

/// Waits for the test to release the compartment.
pub fn wait_release(channel: &mut UnixStream) {
    let mut byte = [0u8];
    let _ = channel.read(&mut byte);
}
