//! A VM's state out of its process: pausing and resuming a running VM ([`Machine`]), writing
//! its complete state to a folder, and reading one back to restore ([`Snapshot`]).
//!
//! Pausing parks every vCPU out of `KVM_RUN` (each finishes the exit it made first) and stops
//! every device's queues over vhost-user (`GET_VRING_BASE`: the request in progress finishes,
//! nothing more is written to guest memory). The compartments keep running. Resuming starts
//! the queues where they stood, with an interrupt, and lets the vCPUs go.
//!
//! A snapshot is taken paused: each vCPU saves its own state ([`cpu`]), the core adds the VM
//! clock, the I/O APIC, the serial port and every transport (with the inflight region of the
//! devices that keep one), and the folder gets three files ([`format`]). Restoring starts a
//! new core the same way a boot does — the same devices, each backend started and connected —
//! but fills guest memory from the snapshot instead of loading a kernel, hands each backend
//! its device where it stood (as a restart does: the used index as base, the saved inflight
//! region resubmitted), and sets each vCPU's state before it first runs.

pub mod cpu;
pub mod format;
pub mod handover;
pub mod hex;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use crate::exit::{ExitLatch, VmExit};
use crate::irq::ioapic::{IoApic, IoApicState};
use crate::legacy::serial::{SerialConsole, SerialSaved};
use crate::memory::GuestRam;
use crate::supervisor::SupervisorHandle;
use crate::vcpu::{Gate, VcpuThread};
use crate::virtio::mmio::TransportState;

pub use format::{Snapshot, SnapshotError, Written};

/// How long the vCPUs have to park once kicked, and to save their state.
const PARK_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything of the VM but its memory: what `machine.json` holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineState {
    pub vcpus: Vec<cpu::VcpuState>,
    /// kvmclock's reading, in nanoseconds (`KVM_GET_CLOCK`).
    pub clock_ns: u64,
    pub ioapic: IoApicState,
    pub serial: SerialSaved,
    /// Each virtio device's transport, in the order they are attached.
    pub devices: Vec<TransportState>,
}

/// An error and its causes, on one line.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What pausing took.
#[derive(Clone, Copy, Debug)]
pub struct Paused {
    /// Whether the VM was already paused (nothing was done).
    pub already: bool,
    pub took: Duration,
}

/// The running VM's hands for pausing, resuming and snapshots (the management API holds one).
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Inner>,
}

struct Inner {
    vm: Arc<VmFd>,
    ram: Arc<GuestRam>,
    gate: Arc<Gate>,
    threads: Mutex<Vec<VcpuThread>>,
    ioapic: Arc<Mutex<IoApic>>,
    serial: Arc<Mutex<SerialConsole>>,
    supervisor: SupervisorHandle,
    /// What the VMM asked to be kept with a snapshot (how to start the VM again).
    recipe: Option<String>,
    cpus: u8,
    /// Ends the VM's run for a handover.
    exit: ExitLatch,
    /// What the last core update cost the guest, when this core took the VM over.
    resumed: Mutex<Option<handover::Resumed>>,
    /// One pause, resume, snapshot or handover at a time.
    op: Mutex<()>,
}

/// What [`Machine::new`] is built from: the VM's parts as `vm::run` holds them.
pub struct Parts {
    pub vm: Arc<VmFd>,
    pub ram: Arc<GuestRam>,
    pub gate: Arc<Gate>,
    pub ioapic: Arc<Mutex<IoApic>>,
    pub serial: Arc<Mutex<SerialConsole>>,
    pub supervisor: SupervisorHandle,
    pub recipe: Option<String>,
    pub cpus: u8,
    pub exit: ExitLatch,
}

impl Machine {
    pub fn new(parts: Parts) -> Machine {
        let Parts { vm, ram, gate, ioapic, serial, supervisor, recipe, cpus, exit } = parts;
        let inner = Inner {
            vm,
            ram,
            gate,
            threads: Mutex::new(Vec::new()),
            ioapic,
            serial,
            supervisor,
            recipe,
            cpus,
            exit,
            resumed: Mutex::new(None),
            op: Mutex::new(()),
        };
        Machine { inner: Arc::new(inner) }
    }

    /// The vCPU threads, once started (kicked for a pause).
    pub(crate) fn set_threads(&self, threads: Vec<VcpuThread>) {
        *self.inner.threads.lock().unwrap_or_else(|p| p.into_inner()) = threads;
    }

    /// Takes the vCPU threads back to stop them (the VM is ending); a pause asked for later
    /// fails instead of kicking threads that are gone.
    pub(crate) fn take_threads(&self) -> Vec<VcpuThread> {
        // Parked vCPUs must see the stop flag: they wake on their tick, or here.
        self.inner.gate.resume();
        std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn op(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner.op.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_paused(&self) -> bool {
        self.inner.gate.paused()
    }

    /// Pauses the VM: vCPUs parked, every device's queues stopped.
    pub fn pause(&self) -> Result<Paused, String> {
        let _op = self.op();
        self.pause_locked()
    }

    fn pause_locked(&self) -> Result<Paused, String> {
        let start = Instant::now();
        let inner = &self.inner;
        if inner.gate.paused() {
            return Ok(Paused { already: true, took: Duration::ZERO });
        }
        inner.gate.pause();
        let count = usize::from(inner.cpus);
        let parked = {
            let threads = inner.threads.lock().unwrap_or_else(|p| p.into_inner());
            if threads.len() != count {
                inner.gate.resume();
                return Err("the VM is not running".into());
            }
            // A kick that lands before a vCPU enters KVM_RUN is lost: kick until all park.
            let deadline = start + PARK_TIMEOUT;
            loop {
                threads.iter().for_each(VcpuThread::kick);
                if inner.gate.wait_parked(count, Duration::from_millis(1)) {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
            }
        };
        if !parked {
            inner.gate.resume();
            return Err(format!("the vCPUs did not stop within {PARK_TIMEOUT:?}"));
        }
        if let Err(e) = inner.supervisor.freeze_all() {
            let _ = inner.supervisor.thaw_all();
            inner.gate.resume();
            return Err(format!("cannot pause the devices: {e}; the VM runs on"));
        }
        Ok(Paused { already: false, took: start.elapsed() })
    }

    /// Resumes a paused VM: the devices' queues start where they stood, the vCPUs run on.
    /// Returns whether it was paused.
    pub fn resume(&self) -> Result<bool, String> {
        let _op = self.op();
        self.resume_locked()
    }

    fn resume_locked(&self) -> Result<bool, String> {
        let inner = &self.inner;
        if !inner.gate.paused() {
            return Ok(false);
        }
        // A device that cannot start again is its supervisor's to restart; the VM runs on.
        let thawed = inner.supervisor.thaw_all();
        inner.gate.resume();
        thawed.map(|()| true).map_err(|e| format!("resumed, but {e}"))
    }

    /// Writes the VM's state and memory to `dir` (created if missing; a snapshot there is
    /// replaced). A running VM is paused for it and resumed after; a paused one stays paused.
    pub fn snapshot(&self, dir: &Path) -> Result<Written, String> {
        let _op = self.op();
        let start = Instant::now();
        let paused = self.pause_locked()?;
        let taken = self.take_state();
        let written = taken.and_then(|machine| {
            let inner = &self.inner;
            format::write(dir, &machine, &inner.ram, inner.recipe.as_deref())
                .map_err(|e| with_causes(&e))
        });
        let resumed = if paused.already { Ok(false) } else { self.resume_locked() };
        let mut written = written?;
        resumed?;
        written.paused = paused.took;
        written.took = start.elapsed();
        Ok(written)
    }

    /// Pauses the VM, takes its state and leaves it with the memory's file for the VMM
    /// ([`handover::take`]), and ends the VM's run with [`VmExit::HandOver`]: the VMM
    /// executes the new core, which resumes the guest. Returns how long pausing took. A VM
    /// that cannot be handed over runs on.
    pub fn hand_over(&self) -> Result<Duration, String> {
        let _op = self.op();
        let inner = &self.inner;
        if inner.gate.paused() {
            return Err("the VM is paused: resume it, then update its core".into());
        }
        let paused = self.pause_locked()?;
        let paused_at_ns = handover::monotonic_ns();
        let machine = match self.take_state() {
            Ok(machine) => machine,
            Err(e) => {
                let _ = self.resume_locked();
                return Err(format!("cannot take the VM's state ({e}); the VM runs on"));
            }
        };
        // Taken last: a backend let go of is not watched by this core any more.
        let kept = inner.supervisor.keep_all();
        handover::leave(handover::Handoff {
            kept,
            machine,
            memory: inner.ram.file.clone(),
            memory_bytes: inner.ram.size,
            recipe: inner.recipe.clone(),
            paused_at_ns,
        });
        inner.exit.request(VmExit::HandOver);
        if inner.exit.get() != Some(VmExit::HandOver) {
            // The VM ended for another reason first: nothing is handed over.
            drop(handover::take());
            return Err("the VM is ending; its core is not updated".into());
        }
        Ok(paused.took)
    }

    /// Records what this core's takeover cost the guest (see [`Self::resumed`]).
    pub(crate) fn set_resumed(&self, resumed: handover::Resumed) {
        *self.inner.resumed.lock().unwrap_or_else(|p| p.into_inner()) = Some(resumed);
    }

    /// What the core update that started this core cost the guest; `None` for a core that
    /// booted or restored the VM.
    pub fn resumed(&self) -> Option<handover::Resumed> {
        *self.inner.resumed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of every part but memory, the VM paused.
    fn take_state(&self) -> Result<MachineState, String> {
        let inner = &self.inner;
        let vcpus = inner.gate.save_all(PARK_TIMEOUT)?;
        let clock = inner.vm.get_clock().map_err(|e| format!("cannot read the VM clock: {e}"))?;
        let ioapic = inner.ioapic.lock().unwrap_or_else(|p| p.into_inner()).state();
        let serial = inner.serial.lock().unwrap_or_else(|p| p.into_inner()).state();
        let devices = inner.supervisor.transport_states()?;
        Ok(MachineState { vcpus, clock_ns: clock.clock, ioapic, serial, devices })
    }
}
