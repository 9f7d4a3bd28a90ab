//! Bulkhead's sandbox: the one helper that isolates a compartment.
//!
//! Every device backend runs as a *compartment*, a process of its own that
//! the core starts and that then locks itself in. The sandbox has two halves,
//! in two crates so that what runs in the core is one crate: this one (the
//! core's half, and what both halves share: the [`Policy`], the seccomp
//! compiler, capabilities, reports) and `bulkhead-compartment` (the
//! compartment's half):
//!
//! - **In the core**, [`spawn`] starts the compartment program in new mount,
//!   PID, IPC, UTS, network and cgroup namespaces (and optionally a user
//!   namespace), with only the file descriptors it is given, a parent-death
//!   signal, and (when its [`Policy`] has cgroup limits) inside a cgroup of its
//!   own before its program runs. It returns a [`Compartment`] handle: host
//!   PID, pidfd, and the [`Report`] of what it applied.
//! - **In the compartment**, after it has opened the files it serves,
//!   `bulkhead_compartment::enter` sets no_new_privs, replaces the root by
//!   an empty read-only tmpfs holding only its files, sets resource limits,
//!   drops every capability, restricts the filesystem with Landlock and
//!   installs a seccomp allow-list on every thread. It returns the
//!   [`Report`] of every layer.
//!
//! Every layer is reported: applied, off by policy, or not applied with the
//! reason — a layer the host cannot give is never silently dropped, and
//! [`Enforcement::Required`] turns any such layer into an error. From outside,
//! [`ProcStatus::read`] checks what the kernel says of a compartment
//! (`Seccomp: 2`, `NoNewPrivs: 1`, `CapEff: 0`, its namespaces).
//!
//! The core confines its own threads with the same allow-lists, one class
//! of thread at a time ([`thread::confine_this_thread`]).
//!
//! [`cgroup`] manages cgroups on v1 and v2 for compartments, VMs and vCPU
//! threads.
//!
//! System-call names map to x86-64 numbers; the crate builds on x86-64 Linux only.

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("bulkhead-sandbox supports x86-64 Linux only");

pub mod caps;
pub mod cgroup;
pub mod policy;
pub mod report;
pub mod rlimits;
pub mod seccomp;
pub mod spawn;
pub mod status;
mod syscall_table;
pub mod thread;

pub use cgroup::{Cgroup, CgroupLimits, CpuQuota};
pub use policy::{Access, Enforcement, IdMap, Namespaces, PathRule, Policy, PolicyBuilder};
pub use report::{LayerName, LayerState, Namespace, Report};
pub use rlimits::Rlimits;
pub use seccomp::{ArgCondition, ArgOp, DenyAction, SyscallRule};
pub use spawn::{spawn, Command, Compartment, SpawnError};
pub use status::ProcStatus;
pub use thread::{confine_this_thread, ThreadConfinement};
