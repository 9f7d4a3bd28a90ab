//! The updater: the one thread of the core that may execute a new core binary in this process
//! (`bulkhead ctl VM update-core`, see [`crate::update`]).
//!
//! A binary executed in place starts under the seccomp filter and the capabilities of the
//! thread that executed it, and it must then set a whole VM up again: KVM, memory, cgroups,
//! compartments, the management socket — every call of every class of the core's threads,
//! and what they do before they confine themselves. No allow-list of one class would do, so
//! this thread, started before any other confines itself, keeps the capabilities the core
//! started with and installs a deny-list instead: the calls no part of the core ever makes
//! and that would most help an attacker (debugging other processes, loading kernel code or
//! BPF, keys, the clock, swap, rebooting) fail with `EPERM`. The executed core inherits that
//! filter and stacks its own threads' allow-lists on it, as at any start; a core that took a
//! VM over does not install it again (one layer, however many updates).
//!
//! The cost, as for the launcher: the updater shares the core's address space and holds a
//! wide filter, so an attacker who already runs code in another thread of the core could make
//! it execute a program. `--core-update off` starts no updater (and refuses updates).

use std::ffi::CString;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

use super::{CoreSeccomp, Job};

/// The updater thread's name.
pub const THREAD_NAME: &str = "bulkhead-update";

/// What the updater's filter refuses (with `EPERM`): calls the core never makes.
pub const DENIED: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    "syslog",
    "vhangup",
    "uselib",
    "lookup_dcookie",
];

static UPDATER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

thread_local! {
    /// Set on the updater thread: its own calls run there at once.
    static ON_UPDATER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Starts the updater thread. `inherited`: this core took a VM over and already runs under
/// the updater's filter (every thread does), so none is installed again.
pub fn start(setting: CoreSeccomp, inherited: bool) -> std::io::Result<()> {
    let tx = super::start_job_thread(THREAD_NAME, move || {
        if matches!(setting, CoreSeccomp::On | CoreSeccomp::Log) && !inherited {
            bulkhead_sandbox::seccomp::install_deny_list_this_thread(DENIED, libc::EPERM)
                .map_err(|e| format!("cannot confine the updater thread: {e}"))?;
        }
        ON_UPDATER.with(|on| on.set(true));
        Ok(())
    })?;
    UPDATER
        .set(Mutex::new(tx))
        .map_err(|_| std::io::Error::other("the updater was already started"))
}

/// Whether an updater runs (`--core-update on`).
pub fn started() -> bool {
    UPDATER.get().is_some()
}

/// Runs `f` on the updater thread and returns its value (an `execve` that worked does not
/// return); `None` when no updater was started.
pub fn call<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let updater = UPDATER.get()?;
    if ON_UPDATER.with(|on| on.get()) {
        return Some(f());
    }
    let (done_tx, done_rx) = mpsc::sync_channel::<R>(1);
    let job: Job = Box::new(move || {
        let _ = done_tx.send(f());
    });
    updater.lock().unwrap_or_else(|p| p.into_inner()).send(job).ok()?;
    done_rx.recv().ok()
}

/// Executes `program` (a path, or a descriptor of the file to run) in this process with
/// `args` and this process's environment, from the updater thread (from the calling thread
/// when none was started: a new core handing the VM back before its threads are confined).
/// Returns only if the kernel refused.
pub fn execute(program: Program, args: Vec<String>) -> std::io::Error {
    let to_c = |s: Vec<u8>| CString::new(s).map_err(|_| std::io::Error::other("a NUL byte"));
    let argv: Result<Vec<CString>, _> = args.into_iter().map(|a| to_c(a.into_bytes())).collect();
    let envp: Result<Vec<CString>, _> = std::env::vars_os()
        .map(|(k, v)| {
            let mut entry = k.into_encoded_bytes();
            entry.push(b'=');
            entry.extend(v.into_encoded_bytes());
            to_c(entry)
        })
        .collect();
    let exec = match (argv, envp) {
        (Ok(argv), Ok(envp)) => Exec { program, argv, envp },
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let on_updater = exec.clone();
    match call(move || on_updater.run()) {
        Some(e) => e,
        None => exec.run(),
    }
}

/// What [`execute`] runs.
#[derive(Clone, Debug)]
pub enum Program {
    Path(std::path::PathBuf),
    /// An open descriptor of the binary (the running core's own, kept from its start).
    Fd(i32),
}

#[derive(Clone)]
struct Exec {
    program: Program,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl Exec {
    fn run(&self) -> std::io::Error {
        let argv: Vec<*const libc::c_char> =
            self.argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let envp: Vec<*const libc::c_char> =
            self.envp.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        // The new program's main thread starts with this thread's signal mask: none blocked.
        // SAFETY: an empty set, filled by sigemptyset before use; the old mask is not asked for.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        }
        match &self.program {
            Program::Path(path) => {
                let Ok(path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
                    return std::io::Error::other("a NUL byte in the binary's path");
                };
                // SAFETY: every pointer is to a NUL-terminated string alive for the call, and
                // both arrays end with a null pointer.
                unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            }
            Program::Fd(fd) => {
                // SAFETY: as above; an empty path with AT_EMPTY_PATH runs the file `fd` names.
                unsafe {
                    libc::syscall(
                        libc::SYS_execveat,
                        *fd,
                        c"".as_ptr(),
                        argv.as_ptr(),
                        envp.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    )
                };
            }
        }
        std::io::Error::last_os_error()
    }
}
