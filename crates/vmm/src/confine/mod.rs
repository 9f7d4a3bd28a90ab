//! The core confines itself: each of its threads, once started, installs the
//! seccomp allow-list of its class and gives up its capabilities (bounding set
//! included; no_new_privs set). Filters are per thread (no TSYNC), so a vCPU
//! thread is held to what `KVM_RUN` and the exits need, not to what the
//! supervisor needs.
//!
//! Thread classes ([`ThreadClass`]) and their lists are in [`lists`]:
//! - `vcpu`: `KVM_RUN`, exits to the core's devices, the vhost-user frontend
//!   at DRIVER_OK;
//! - `event-loop` (the main thread): console input, signals, the supervisor
//!   (watchdog, reaping and killing compartments, reconnecting them), the
//!   VM's shutdown;
//! - `api`: the management socket (`bulkhead ctl`), including restarts and
//!   upgrades it asks the supervisor for;
//! - `launcher`: the one thread that may start processes (see [`launcher`]);
//! - `device-blk|net|rng` (monolithic mode): a device's threads inside the
//!   core, under the device's own compartment list.
//!
//! A call outside a list raises `SIGSYS`; the handler prints the thread's
//! class and the call's name and number, and the core exits with status 159
//! (`bulkhead_sandbox::thread`). `--core-seccomp log` lets such calls
//! through and logs them to the kernel's audit log instead (to find what a
//! new code path needs); `off` installs nothing.

pub mod launcher;
pub mod lists;
pub mod status;
pub mod updater;

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use bulkhead_sandbox::seccomp::{DenyAction, RuleAction, SyscallRule};
use bulkhead_sandbox::thread::confine_this_thread;

pub use lists::ThreadClass;

/// A job for the launcher.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// `--core-seccomp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CoreSeccomp {
    /// Every thread of the core under its class's allow-list; a violation stops the core.
    On,
    /// The same lists, but a call outside them is allowed and logged by the kernel (audit).
    Log,
    /// No filter on the core's threads (capabilities are still dropped).
    Off,
}

static SETTING: OnceLock<CoreSeccomp> = OnceLock::new();

/// A thread of this process that confined itself.
#[derive(Clone, Debug)]
pub struct Confined {
    /// Its thread ID.
    pub tid: i32,
    /// Its class.
    pub class: ThreadClass,
    /// System calls its filter allows (`None` when no filter was installed).
    pub allowed: Option<usize>,
}

static CONFINED: Mutex<Vec<Confined>> = Mutex::new(Vec::new());

/// Chooses how the core's threads are confined; call once, before any thread starts.
pub fn configure(setting: CoreSeccomp) {
    let _ = SETTING.set(setting);
}

fn setting() -> CoreSeccomp {
    SETTING.get().copied().unwrap_or(CoreSeccomp::Off)
}

/// The threads that have confined themselves so far.
pub fn confined() -> Vec<Confined> {
    CONFINED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Confines the calling thread as `class`: drops its capabilities (all of
/// them; the launcher keeps what a compartment needs to enter its sandbox)
/// and installs the class's filter.
pub fn confine(class: ThreadClass) -> Result<(), String> {
    let unchecked = class == ThreadClass::Launcher && lists::outside_unchecked();
    let deny = match setting() {
        CoreSeccomp::On | CoreSeccomp::Log if unchecked => {
            eprintln!(
                "bulkhead: the launcher thread runs without a seccomp filter: an outside \
                 backend runs with seccomp=log or off, and its program inherits the launcher's \
                 filter"
            );
            let caps = bulkhead_sandbox::caps::keep_only(class.keep_caps());
            caps.map_err(|e| format!("cannot drop the {class} thread's capabilities: {e}"))?;
            record(class, None);
            return Ok(());
        }
        CoreSeccomp::On => DenyAction::Trap,
        CoreSeccomp::Log => DenyAction::Log,
        CoreSeccomp::Off => {
            // Capabilities still go; no filter, so no_new_privs by hand.
            let keep = class.keep_caps();
            let caps = if keep == 0 {
                bulkhead_sandbox::caps::drop_all()
            } else {
                bulkhead_sandbox::caps::keep_only(keep)
            };
            caps.map_err(|e| format!("cannot drop the {class} thread's capabilities: {e}"))?;
            record(class, None);
            return Ok(());
        }
    };
    let rules = class.rules();
    let done =
        confine_this_thread(class.label(), &rules, deny, class.keep_caps()).map_err(|e| {
            format!(
                "cannot confine the {class} thread: {}",
                bulkhead_sandbox::report::with_causes(&e)
            )
        })?;
    let allowed = allowed_in(&rules);
    debug_assert_eq!(done.allowed_syscalls, allowed + refused_in(&rules));
    log::debug!(
        "{class} thread confined: {allowed} system calls, otherwise {}, caps {}",
        done.deny.label(),
        done.caps
    );
    record(class, Some(allowed));
    Ok(())
}

pub(crate) fn record(class: ThreadClass, allowed: Option<usize>) {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    CONFINED.lock().unwrap_or_else(|p| p.into_inner()).push(Confined { tid, class, allowed });
}

/// The number of distinct system calls the filter of `class` lets run
/// (calls it answers with an errno, such as a device's `openat`, are not
/// counted).
pub fn allowed_count(class: ThreadClass) -> usize {
    allowed_in(&class.rules())
}

/// Distinct system calls with an allowing rule.
pub fn allowed_in(rules: &[SyscallRule]) -> usize {
    let names: BTreeSet<&str> =
        rules.iter().filter(|r| r.action() == RuleAction::Allow).map(|r| r.name()).collect();
    names.len()
}

/// Distinct system calls that only an errno rule names.
fn refused_in(rules: &[SyscallRule]) -> usize {
    let allowed: BTreeSet<&str> =
        rules.iter().filter(|r| r.action() == RuleAction::Allow).map(|r| r.name()).collect();
    let refused: BTreeSet<&str> = rules
        .iter()
        .filter(|r| r.action() != RuleAction::Allow && !allowed.contains(r.name()))
        .map(|r| r.name())
        .collect();
    refused.len()
}

/// Sets up the hook the core calls on each vCPU thread, on its event loop and on each
/// device's supervisor thread to confine it. (The launcher is the main thread:
/// [`launcher::run_beside`].)
pub fn setup(config: &mut bulkhead_core::VmConfig) {
    config.confine = Some(std::sync::Arc::new(|thread| {
        confine(match thread {
            bulkhead_core::config::CoreThread::Vcpu => ThreadClass::Vcpu,
            bulkhead_core::config::CoreThread::EventLoop => ThreadClass::EventLoop,
            bulkhead_core::config::CoreThread::Supervisor => ThreadClass::Supervisor,
        })
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_devices::DeviceKind;
    use bulkhead_sandbox::seccomp;

    #[test]
    fn counts_are_those_of_the_filters_built() {
        for class in ThreadClass::ALL {
            let rules = class.rules();
            let filter = seccomp::compile(&rules, DenyAction::Trap).unwrap();
            assert_eq!(
                filter.allowed_syscalls(),
                allowed_count(class) + refused_in(&rules),
                "{class}"
            );
        }
        // A device's threads in monolithic mode get its compartment's list.
        let blk = ThreadClass::Device(DeviceKind::Blk).rules();
        assert_eq!(refused_in(&blk), 2, "open and openat fail with EACCES");
    }

    #[test]
    fn no_exposed_class_may_start_a_process() {
        for class in
            [ThreadClass::Vcpu, ThreadClass::EventLoop, ThreadClass::Supervisor, ThreadClass::Api]
        {
            let names: Vec<String> = class.rules().iter().map(|r| r.name().to_string()).collect();
            for never in ["execve", "execveat", "clone", "clone3", "fork", "vfork", "ptrace"] {
                assert!(!names.iter().any(|n| n == never), "{class} allows {never}");
            }
        }
        let launcher: Vec<String> =
            ThreadClass::Launcher.rules().iter().map(|r| r.name().to_string()).collect();
        assert!(launcher.iter().any(|n| n == "clone3") && launcher.iter().any(|n| n == "execve"));
    }
}
