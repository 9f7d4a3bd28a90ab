//! What a compartment runs besides its device's code: its entry, `bulkhead
//! device` ([`device::run`]: open the device, enter the sandbox, serve), and
//! the compartment's half of Bulkhead's sandbox, entering it.
//!
//! A compartment, started by the core with `bulkhead_sandbox::spawn` in new
//! namespaces, opens the files it serves and then calls [`enter`] with its
//! `bulkhead_sandbox::Policy`: no_new_privs, an empty read-only root holding
//! only its files (`root.rs`), resource limits ([`rlimits`]), no capability,
//! Landlock ([`landlock_rules`]) and seccomp on every thread. It returns the
//! report of every layer.
//!
//! This code runs only in compartments, never in the core: the core's half
//! of the sandbox (spawning, cgroups, confining its own threads) and what both
//! halves share are `bulkhead_sandbox`.

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("bulkhead-compartment supports x86-64 Linux only");

pub mod device;
mod enter;
pub mod landlock_rules;
pub mod outside;
pub mod rlimits;
mod root;

pub use enter::{enter, enter_before_exec, EnterError};
pub use root::Extras;
