//! Bulkhead's VMM: the wiring of the trusted core around `bulkhead_core`.
//!
//! `bulkhead run` parses its arguments into a [`Config`] and calls [`run`],
//! which sets the VM up the way the core runs it:
//! - [`partition`]: the VM's cgroups, the compartments' limits, vCPU pinning;
//! - [`backends`]: where each device's backend runs — a compartment (a
//!   sandboxed process, microkernel mode) or a thread of the core (monolithic
//!   mode) — and each device's sandbox policy;
//! - [`confine`]: the core confines itself, a seccomp allow-list per thread
//!   class, and the launcher thread that alone starts compartments;
//! - [`control`]: the management API, answered from the core's supervisor;
//! - [`limits`]: each device's limits page, which the API rewrites.
//!
//! All of it runs in the core (the trusted computing base); the device
//! policies of [`backends`] are also what a compartment enters its sandbox
//! with (`bulkhead_compartment`).

pub mod backends;
pub mod confine;
pub mod control;
pub mod limits;
pub mod partition;
pub mod update;

use std::time::Instant;

use anyhow::Context;
use bulkhead_core::virtio::{Backend, ExternalBackend};
use bulkhead_core::VmConfig;

pub use backends::{Mode, Request};
pub use confine::CoreSeccomp;
pub use partition::Limits;

/// A VM to run, its devices and how they are isolated: what `bulkhead run` asks for.
pub struct Config {
    /// The VM itself; [`run`] adds its devices, vCPU placement and hooks.
    pub vm: VmConfig,
    /// The VM's name for `bulkhead ctl`.
    pub name: String,
    /// Where the devices' backends run.
    pub mode: Mode,
    /// The devices asked for.
    pub devices: Vec<Request>,
    /// External vhost-user backends to attach (`--vhost-user`).
    pub external: Vec<ExternalBackend>,
    /// Outside backends' programs to run as compartments (`--device …,exec=`).
    pub outside: Vec<backends::outside::OutsideSpec>,
    /// CPU and memory partitioning.
    pub limits: Limits,
    /// Seccomp on the core's own threads.
    pub core_seccomp: CoreSeccomp,
    /// Keep a standby compartment per blk, net and rng device (microkernel mode).
    pub standby: bool,
    /// Let the launcher execute a new core, so that `ctl VM update-core` can hand the VM over
    /// (see [`confine::updater`]).
    pub core_update: bool,
    /// This core took the VM over from a previous one (`run --takeover`): the launcher's
    /// deny-list is in place already.
    pub taken_over: bool,
    /// The compartments the previous core kept running for this one (a core update).
    pub kept: Vec<backends::KeptState>,
}

/// Runs the VM `config` describes until it ends; the result is the process exit code. The VM
/// runs on a thread of its own; the calling thread, the process's main thread, becomes the
/// launcher ([`confine::launcher::run_beside`]).
pub fn run(config: Config) -> anyhow::Result<i32> {
    confine::configure(config.core_seccomp);
    let updates = config.core_update.then_some((config.core_seccomp, config.taken_over));
    confine::launcher::run_beside(updates, move || run_vm(config))
        .context("cannot start the VM's thread")?
}

fn run_vm(config: Config) -> anyhow::Result<i32> {
    let Config {
        mut vm,
        name,
        mode,
        mut devices,
        external,
        outside,
        limits,
        core_seccomp: _,
        standby,
        core_update: _,
        taken_over: _,
        kept,
    } = config;
    update::open_own_binary();
    let handover_name = name.clone();
    // Before anything else runs, so that a console that cannot be set up stops the start. Its
    // socket goes with the VM, on this thread (the event loop's filter allows unlink).
    let sockets = RemoveOnDrop(backends::open_consoles(&mut devices)?);
    let rate_limits = backends::create_limits_pages(&mut devices)?;
    let compartments = (mode == Mode::Microkernel && !devices.is_empty()) || !outside.is_empty();
    // The partition (cgroups) outlives the VM: it is removed below.
    let partition = partition::Partition::create(&name, limits, compartments, vm.verbose)?;
    vm.placement = Some(partition.clone());
    vm.devices = backends::build(devices, mode, &partition, standby, kept)?;
    if !outside.is_empty() {
        use confine::lists::{allow_outside_programs, OutsidePrograms};
        let unchecked = outside.iter().any(|o| o.seccomp != backends::outside::Seccomp::On);
        allow_outside_programs(if unchecked {
            OutsidePrograms::Unchecked
        } else {
            OutsidePrograms::Profiles(
                outside.iter().flat_map(|o| o.profile.syscalls.iter().cloned()).collect(),
            )
        });
    }
    for spec in outside {
        let backend = backends::outside::OutsideBackend::new(spec, partition.clone())?;
        vm.devices.push(Box::new(backend));
    }
    vm.devices.extend(external.into_iter().map(|e| Box::new(e) as Box<dyn Backend>));
    if mode == Mode::Monolithic {
        bulkhead_monolithic::end_vm_on_device_panic();
    }
    let (cpus, memory_bytes, limits) = (u32::from(vm.cpus), vm.memory, partition.summary());
    vm.on_start = Some(Box::new(move |running| {
        let bulkhead_core::config::Started { supervisor, keyboard, machine } = running;
        let started = Instant::now();
        let vm = control::Vm {
            name,
            cpus,
            memory_bytes,
            started,
            supervisor,
            keyboard,
            limits,
            rate_limits,
            machine,
        };
        match control::start(vm) {
            Ok(server) => Box::new(server),
            Err(e) => {
                eprintln!(
                    "bulkhead: the management API is off: {}",
                    bulkhead_sandbox::report::with_causes(&e)
                );
                Box::new(())
            }
        }
    }));
    confine::setup(&mut vm);
    let verbose = vm.verbose;
    let exit = bulkhead_core::vm::run(vm);
    if let Ok(bulkhead_core::VmExit::HandOver) = exit {
        // The next core takes the VM's cgroups as they are, the core in its own already (a
        // move into a v1 cgroup and out waits for an RCU grace period each): never removed.
        std::mem::forget(partition);
        // Its successor opens its own sockets, on the same paths.
        drop(sockets);
        return Err(update::hand_over(&handover_name, verbose));
    }
    // Removing the VM's cgroups needs capabilities the main thread gave up (a v1 hierarchy's
    // root directory is read-only but for CAP_DAC_OVERRIDE): the launcher thread kept them.
    confine::launcher::call(move || drop(partition));
    let exit = exit.context("cannot run the VM")?;
    if verbose || exit.code() != 0 {
        eprintln!("bulkhead: {} (exit code {})", exit.describe(), exit.code());
    }
    Ok(exit.code())
}

/// Files removed when dropped: a console's socket.
struct RemoveOnDrop(Vec<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
