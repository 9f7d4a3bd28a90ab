//! Core updates' side of the core's confinement: the launcher thread executes a new core
//! binary in this process (`bulkhead ctl VM update-core`, see [`crate::update`]).
//!
//! A binary executed in place starts under the seccomp filter and the capabilities of the
//! thread that executed it, and it must then set a whole VM up again: KVM, memory, cgroups,
//! compartments, the management socket — every call of every class of the core's threads,
//! and what they do before they confine themselves. No allow-list of one class would do. And
//! it must be the launcher that executes it: a compartment dies with the thread that started
//! it (`PR_SET_PDEATHSIG` follows that thread), and only the thread that calls `execve`
//! lives on in the new program, so only the launcher's compartments can be kept running.
//!
//! So with `--core-update on` (the default) the launcher keeps the capabilities the core
//! started with and, instead of its allow-list, installs a deny-list: the calls no part of the
//! core ever makes and that would most help an attacker (debugging other processes, loading
//! kernel code or BPF, keys, the clock, swap, rebooting) fail with `EPERM`. The executed core
//! inherits that filter and stacks its own threads' allow-lists on it, as at any start; a core
//! that took a VM over does not install it again (one layer, however many updates). The cost:
//! an attacker who already runs code in the core and gets the launcher to run it is held by
//! the deny-list only, where `--core-update off` holds the launcher to its allow-list.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

use super::CoreSeccomp;

/// Whether the launcher may execute a new core (`--core-update on`).
static UPDATABLE: AtomicBool = AtomicBool::new(false);

/// What the launcher's filter refuses (with `EPERM`) when it may execute a new core: calls the
/// core never makes.
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
    "quotactl",
    "syslog",
    "vhangup",
    "uselib",
    "lookup_dcookie",
];

/// Confines the launcher thread for core updates: the deny-list (unless this core inherited it
/// from the one that handed the VM over), every capability kept. Called on the launcher.
pub fn confine_launcher(setting: CoreSeccomp, inherited: bool) -> Result<(), String> {
    // An outside backend's program run with seccomp=log or off inherits the launcher's filter:
    // it gets none, as with the allow-list (see `super::confine`).
    let unchecked = super::lists::outside_unchecked();
    if matches!(setting, CoreSeccomp::On | CoreSeccomp::Log) && !inherited && !unchecked {
        bulkhead_sandbox::seccomp::install_deny_list_this_thread(DENIED, libc::EPERM)
            .map_err(|e| format!("cannot confine the launcher thread for core updates: {e}"))?;
    }
    UPDATABLE.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether this core can execute a new one (its launcher was confined for it).
pub fn started() -> bool {
    UPDATABLE.load(Ordering::SeqCst)
}

/// Executes `program` (a path, or a descriptor of the file to run) in this process with
/// `args` and this process's environment, on the launcher thread (on the calling thread when
/// none was started: a new core handing the VM back early). Returns only if the kernel refused.
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
    super::launcher::call(move || exec.run())
}

/// What [`execute`] runs.
#[derive(Clone, Debug)]
pub enum Program {
    Path(std::path::PathBuf),
    /// An open descriptor of the binary (the running core's own, kept from its start).
    Fd(i32),
}

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
