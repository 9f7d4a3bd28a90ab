//! The allow-list of each class of the core's threads.
//!
//! Gathered with `strace -ff` of the core (`scripts/core-syscalls.sh`): every
//! thread's calls after its filter was installed, over boots in both modes,
//! compartment restarts and upgrades through `bulkhead ctl`, status
//! requests, a watchdog kill, Ctrl-C, power-off, reboot, `--verbose` and a
//! net device on a tap; and for the launcher, what its compartments call
//! from `clone3` to entering their own sandbox.

use std::fmt;
use std::sync::OnceLock;

use bulkhead_devices::DeviceKind;
use bulkhead_sandbox::seccomp::{self, ArgCondition, ArgOp, RuleAction, SyscallRule};

use crate::backends::device_rules;

/// A class of the core's threads: each has one allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadClass {
    /// A vCPU thread.
    Vcpu,
    /// The main thread: the event loop (signals, console input, the VM's end).
    EventLoop,
    /// A device's supervisor thread: watches its backend and restarts it.
    Supervisor,
    /// The management API's thread.
    Api,
    /// The thread that starts compartments.
    Launcher,
    /// A device's threads in monolithic mode.
    Device(DeviceKind),
}

impl ThreadClass {
    /// Every class, in report order.
    pub const ALL: [ThreadClass; 9] = [
        ThreadClass::Vcpu,
        ThreadClass::EventLoop,
        ThreadClass::Supervisor,
        ThreadClass::Api,
        ThreadClass::Launcher,
        ThreadClass::Device(DeviceKind::Blk),
        ThreadClass::Device(DeviceKind::Net),
        ThreadClass::Device(DeviceKind::Rng),
        ThreadClass::Device(DeviceKind::Console),
    ];

    /// The name reports use.
    pub fn label(self) -> &'static str {
        match self {
            ThreadClass::Vcpu => "vcpu",
            ThreadClass::EventLoop => "event-loop",
            ThreadClass::Supervisor => "supervisor",
            ThreadClass::Api => "api",
            ThreadClass::Launcher => "launcher",
            ThreadClass::Device(DeviceKind::Blk) => "device-blk",
            ThreadClass::Device(DeviceKind::Net) => "device-net",
            ThreadClass::Device(DeviceKind::Rng) => "device-rng",
            ThreadClass::Device(DeviceKind::Console) => "device-console",
        }
    }

    /// The class of a thread of this process, from its name (`comm`) and
    /// whether it is the main thread.
    pub fn of_thread(name: &str, main: bool) -> Option<ThreadClass> {
        if main {
            return Some(ThreadClass::EventLoop);
        }
        if name.starts_with("vcpu") {
            return Some(ThreadClass::Vcpu);
        }
        if name == "bulkhead-api" {
            return Some(ThreadClass::Api);
        }
        // The alarm only shuts sockets down: the event loop's list covers it.
        if name == "bulkhead-alarm" {
            return Some(ThreadClass::EventLoop);
        }
        if name.starts_with("sup-") {
            return Some(ThreadClass::Supervisor);
        }
        let kind = name.strip_prefix("bh-")?;
        DeviceKind::ALL.into_iter().find(|k| kind.starts_with(k.name())).map(ThreadClass::Device)
    }

    /// Capabilities the class keeps (a bit per capability): none, except
    /// the launcher's, which its compartments need until they drop them.
    pub fn keep_caps(self) -> u64 {
        match self {
            ThreadClass::Launcher => {
                let caps = LAUNCHER_CAPS.iter().fold(0, |m, &c| m | 1 << c);
                // A user namespace that maps the host's root needs CAP_SETFCAP of its writer.
                if OUTSIDE.get().is_some() {
                    caps | 1 << OUTSIDE_LAUNCHER_CAP
                } else {
                    caps
                }
            }
            _ => 0,
        }
    }

    /// The class's allow-list.
    pub fn rules(self) -> Vec<SyscallRule> {
        let mut list = common();
        match self {
            ThreadClass::Vcpu => list.extend(vcpu()),
            ThreadClass::EventLoop => list.extend(event_loop()),
            ThreadClass::Supervisor => list.extend(supervisor()),
            ThreadClass::Api => list.extend(api()),
            ThreadClass::Launcher => {
                list.extend(seccomp::rules(LAUNCHER));
                list.extend(seccomp::rules(COMPARTMENT_START));
                // The compartments' own filters stack on this one: what they
                // allow must pass it too (their errno rules are theirs only).
                for kind in DeviceKind::ALL {
                    let allowed =
                        device(kind).into_iter().filter(|r| r.action() == RuleAction::Allow);
                    list.extend(allowed);
                }
                // So do the outside backends' launchers and their programs' profiles.
                if let Some(OutsidePrograms::Profiles(calls)) = OUTSIDE.get() {
                    list.extend(seccomp::rules(OUTSIDE_START));
                    list.extend(calls.iter().map(|name| SyscallRule::allow(name)));
                }
            }
            ThreadClass::Device(kind) => return device(kind),
        }
        list
    }
}

impl fmt::Display for ThreadClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The capabilities the launcher keeps, for what it does on its side of a
/// compartment's start: writing the ID maps of the compartment's user
/// namespace, whose root is another user of the host (`CAP_SETUID`,
/// `CAP_SETGID`); opening the image a compartment serves, which another user
/// may own (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`: the broker); and
/// removing the VM's cgroups from a v1 hierarchy's read-only root
/// (`CAP_DAC_OVERRIDE`). Nothing else: the compartment creates its namespaces,
/// its empty root and its Landlock ruleset, and drops its bounding set, with
/// the capabilities root has in its own user namespace, not the core's.
const LAUNCHER_CAPS: [u32; 4] = [
    1, // CAP_DAC_OVERRIDE
    2, // CAP_DAC_READ_SEARCH
    7, // CAP_SETUID
    6, // CAP_SETGID
];

/// What the launcher keeps more when the VM has outside backends: their compartments' user
/// namespaces map the host's root (see `bulkhead_compartment::outside`), and since Linux 5.12
/// writing a map that holds the parent's root needs `CAP_SETFCAP`.
const OUTSIDE_LAUNCHER_CAP: u32 = 31; // CAP_SETFCAP

/// A device's own list in monolithic mode: the same as its compartment's
/// (opening a file fails with EACCES, as there).
pub fn device(kind: DeviceKind) -> Vec<SyscallRule> {
    let mut list = device_rules(&bulkhead_devices::sandbox::spec_for(kind, Vec::new()));
    // In the core, the violation message names the thread.
    list.push(bulkhead_sandbox::thread::thread_name_rule());
    list
}

/// `openat` for reading only (the supervisor and the API read `/proc`).
fn read_only_open() -> Vec<SyscallRule> {
    let writes = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
    vec![SyscallRule::allow("openat").when(ArgCondition::new(2, ArgOp::MaskedEq(writes), 0))]
}

/// `ioctl` with one of `requests` only.
fn ioctls(requests: &[u64]) -> Vec<SyscallRule> {
    requests
        .iter()
        .map(|&r| SyscallRule::allow("ioctl").when(ArgCondition::low32(1, ArgOp::Eq, r)))
        .collect()
}

/// Every class: the baseline (memory, futexes, signals' return, reading and
/// writing the descriptors it holds, ending), time and random numbers.
fn common() -> Vec<SyscallRule> {
    let mut list = seccomp::baseline();
    list.extend(seccomp::rules(&["clock_gettime", "clock_nanosleep", "nanosleep", "getrandom"]));
    // The violation message names the thread.
    list.push(bulkhead_sandbox::thread::thread_name_rule());
    list
}

/// KVM ioctl request numbers, derived as linux/kvm.h defines them: direction,
/// KVMIO, number and the size of the argument's struct.
mod kvm {
    use kvm_bindings::{
        kvm_clock_data, kvm_debugregs, kvm_irq_routing, kvm_irqfd, kvm_lapic_state, kvm_mp_state,
        kvm_msrs, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
    };
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    // A vCPU's state, saved by its own thread for a snapshot.
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    // The VM's clock, read by the API's thread for a snapshot.
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
    ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
}

/// A vCPU thread: `KVM_RUN`; the I/O APIC's routes and irqfds when the guest
/// programs it; registers for a crash report; the vhost-user frontend's
/// messages when a driver starts or resets a device.
fn vcpu() -> Vec<SyscallRule> {
    use kvm::*;
    let mut list = ioctls(&[
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_IRQFD(),
        KVM_SET_GSI_ROUTING(),
        KVM_GET_MSRS(),
        KVM_GET_LAPIC(),
        KVM_GET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_GET_DEBUGREGS(),
        KVM_GET_XSAVE(),
        KVM_GET_XCRS(),
    ]);
    list.extend(seccomp::rules(&["sendmsg", "recvmsg", "recvfrom", "poll"]));
    list
}

/// A device's supervisor thread: its own epoll (the backend's socket and
/// pidfd, its wake-up eventfd), connecting a new compartment (a socket
/// pair, the start-up socket, the vhost-user messages), reading its `/proc`
/// status, killing it (pidfd) and reaping it, and at the VM's end stopping
/// it (a monolithic device's threads too).
const SUPERVISOR: &[&str] = &[
    "epoll_wait",
    "epoll_pwait",
    "socketpair",
    "sendmsg",
    "recvmsg",
    "recvfrom",
    "sendto",
    "setsockopt",
    "getsockopt",
    "epoll_ctl",
    "poll",
    "eventfd2",
    "fcntl",
    "pidfd_send_signal",
    "kill",
    "wait4",
    "waitid",
    "readlink",
    "statx",
    "newfstatat",
    "fstat",
    "getdents64",
    "lseek",
    // a reaped compartment's cgroup
    "rmdir",
    // a backend's socket attached while the VM ends (`Shared::set_socket` in the core's
    // supervisor), so that nothing stays blocked on it
    "shutdown",
];

/// [`SUPERVISOR`], and reconnecting to an external backend (`--vhost-user`):
/// unix sockets only.
fn supervisor() -> Vec<SyscallRule> {
    let mut list = seccomp::rules(SUPERVISOR);
    list.push(SyscallRule::allow("socket").arg_eq(0, libc::AF_UNIX as u64));
    list.push(SyscallRule::allow("connect"));
    list.extend(ioctls(&[libc::FIONBIO]));
    list.extend(read_only_open());
    list
}

/// The main thread: the event loop (epoll, console input, signals) and the
/// VM's end (kicking vCPU threads out of `KVM_RUN`, stopping the devices'
/// supervisors and the API, removing the control socket).
fn event_loop() -> Vec<SyscallRule> {
    // sendto: waking the API's accept loop at the end; statx: reading a file's size; shutdown:
    // the backends' sockets at the end (see `Supervisor::interrupt`).
    seccomp::rules(&[
        "epoll_wait",
        "epoll_pwait",
        "tgkill",
        "unlink",
        "sendto",
        "statx",
        "shutdown",
    ])
}

/// The management API: one connection at a time (poll, accept, peer
/// credentials), status (read from `/proc`), and restarts and upgrades
/// asked of the devices' supervisors.
fn api() -> Vec<SyscallRule> {
    let mut list = seccomp::rules(&[
        "accept4",
        "poll",
        "getsockopt",
        "setsockopt",
        "sendto",
        "recvfrom",
        "getdents64",
        "statx",
        "newfstatat",
        "fstat",
        "readlink",
        // pausing: kicking the vCPUs out of KVM_RUN
        "tgkill",
        // a snapshot: its folder and files, guest memory and inflight regions read from
        // their memfds (the files may go anywhere the VM's user says: `openat` for writing)
        "mkdir",
        "openat",
        "pread64",
        "pwrite64",
        "lseek",
        "ftruncate",
        "fsync",
        "rename",
        "unlink",
    ]);
    list.extend(ioctls(&[libc::FIONBIO, kvm::KVM_GET_CLOCK()]));
    list
}

/// The launcher itself: a child by `clone3` (`clone` where it is missing),
/// the pipes that report its start, `/dev/null` for its standard streams,
/// reaping a child that failed before `execve`; a cgroup for it.
const LAUNCHER: &[&str] = &[
    "clone3",
    "clone",
    "pipe2",
    "openat",
    // the broker: files a compartment names, resolved beneath its image's folder
    "openat2",
    "statx",
    "newfstatat",
    "fstat",
    "prlimit64",
    "wait4",
    "waitid",
    "kill",
    "mkdir",
    // the VM's cgroups, when it ends
    "rmdir",
    "rt_sigaction",
];

/// A compartment from `clone3` to its own filter (it inherits the
/// launcher's): the child's steps before `execve`, the program's start
/// (loader, glibc, Rust runtime), opening what it serves, and every layer of
/// `bulkhead_compartment::enter` (namespaces' root, Landlock, rlimits, identity,
/// capabilities, seccomp).
const COMPARTMENT_START: &[&str] = &[
    // child before execve
    "dup2",
    "close_range",
    "setsid",
    "prctl",
    "rt_sigaction",
    "execve",
    // loader and runtime
    "arch_prctl",
    "set_tid_address",
    "set_robust_list",
    "rseq",
    "access",
    "pread64",
    "sched_getaffinity",
    "poll",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    // opening the image, the tap's checks
    "openat",
    "lseek",
    "ioctl",
    "fcntl",
    "statfs",
    "fstatfs",
    "flock",
    "getdents64",
    "readlink",
    "eventfd2",
    "getsockopt",
    // the sandbox: empty root, limits, identity, capabilities, Landlock, seccomp
    "mount",
    "umount2",
    "pivot_root",
    "chdir",
    "fchdir",
    "mkdir",
    "prlimit64",
    "setrlimit",
    "getrlimit",
    "setgroups",
    "setresuid",
    "setresgid",
    "capget",
    "capset",
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
    "seccomp",
];

/// An outside backend's launcher (`bulkhead_compartment::outside`) beyond a compartment's
/// start: the links of its program's root, the program's process, output pipe and seccomp
/// listener, connecting to its socket and handing the connection over, reaping.
const OUTSIDE_START: &[&str] = &[
    "symlink",
    "symlinkat",
    "socketpair",
    "socket",
    "connect",
    "sendmsg",
    "recvmsg",
    "ppoll",
    "wait4",
    "kill",
    "clock_nanosleep",
    "nanosleep",
];

/// What the programs of this VM's outside backends may call: their compartments' filters
/// stack on the launcher thread's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutsidePrograms {
    /// Every one runs under its profile: the union of their allow-lists.
    Profiles(Vec<String>),
    /// One runs with its calls unchecked (`seccomp=log` or `off`): no list can hold them, so
    /// the launcher thread runs without a filter.
    Unchecked,
}

static OUTSIDE: OnceLock<OutsidePrograms> = OnceLock::new();

/// Sets what the outside backends' programs may call; once, before the launcher starts.
pub fn allow_outside_programs(programs: OutsidePrograms) {
    let _ = OUTSIDE.set(programs);
}

/// Whether the launcher thread must run without a filter (see [`OutsidePrograms::Unchecked`]).
pub fn outside_unchecked() -> bool {
    OUTSIDE.get() == Some(&OutsidePrograms::Unchecked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_list_compiles() {
        for class in ThreadClass::ALL {
            let n = super::super::allowed_count(class);
            assert!(n > 10, "{class}: {n}");
        }
        let vcpu = super::super::allowed_count(ThreadClass::Vcpu);
        let launcher = super::super::allowed_count(ThreadClass::Launcher);
        assert!(vcpu < launcher);
    }

    #[test]
    fn kvm_ioctl_numbers_are_those_of_linux_kvm_h() {
        assert_eq!(kvm::KVM_RUN(), 0xae80);
        assert_eq!(kvm::KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(kvm::KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(kvm::KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(kvm::KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(kvm::KVM_GET_MSRS(), 0xc008_ae88);
        assert_eq!(kvm::KVM_GET_LAPIC(), 0x8400_ae8e);
        assert_eq!(kvm::KVM_GET_MP_STATE(), 0x8004_ae98);
        assert_eq!(kvm::KVM_GET_VCPU_EVENTS(), 0x8040_ae9f);
        assert_eq!(kvm::KVM_GET_DEBUGREGS(), 0x8080_aea1);
        assert_eq!(kvm::KVM_GET_XSAVE(), 0x9000_aea4);
        assert_eq!(kvm::KVM_GET_XCRS(), 0x8188_aea6);
        assert_eq!(kvm::KVM_GET_CLOCK(), 0x8030_ae7c);
    }

    #[test]
    fn threads_are_classified_by_name() {
        assert_eq!(ThreadClass::of_thread("bulkhead", true), Some(ThreadClass::EventLoop));
        assert_eq!(ThreadClass::of_thread("vcpu3", false), Some(ThreadClass::Vcpu));
        assert_eq!(ThreadClass::of_thread("bulkhead-api", false), Some(ThreadClass::Api));
        assert_eq!(
            ThreadClass::of_thread("bh-blk-q0", false),
            Some(ThreadClass::Device(DeviceKind::Blk))
        );
        assert_eq!(
            ThreadClass::of_thread("bh-rng0", false),
            Some(ThreadClass::Device(DeviceKind::Rng))
        );
        assert_eq!(
            ThreadClass::of_thread("bh-console-q1", false),
            Some(ThreadClass::Device(DeviceKind::Console))
        );
        assert_eq!(ThreadClass::of_thread("other", false), None);
    }
}
