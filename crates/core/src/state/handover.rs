//! Handing the running VM to a new core binary in the same process (`bulkhead ctl VM
//! update-core`): the core's half.
//!
//! The VM is paused and its state taken as for a snapshot ([`super::MachineState`]), but
//! memory stays where it is: the memfd is handed over, not written. [`super::Machine::hand_over`]
//! leaves that here, with the backends that go on under the next core, and ends the VM's run
//! with [`crate::VmExit::HandOver`]; the VMM takes it ([`take`]), lets the rest end (the vCPU
//! threads, the KVM VM, the backends not kept), and executes the new binary in this process,
//! which gets the state back as a [`Takeover`] and resumes the VM the way a restore does, on
//! the same memory.

use std::fs::File;
use std::sync::{Arc, Mutex};

use super::MachineState;

/// What a handover leaves for the VMM: the paused VM's state and its memory's file.
pub struct Handoff {
    pub machine: MachineState,
    /// The guest memory's memfd.
    pub memory: Arc<File>,
    pub memory_bytes: u64,
    /// The VM's recipe (how the VMM starts it), as given in its configuration.
    pub recipe: Option<String>,
    /// When the vCPUs had stopped, on the monotonic clock ([`monotonic_ns`]).
    pub paused_at_ns: u64,
    /// The backends that go on under the next core, by device name.
    pub kept: Vec<(String, crate::virtio::Kept)>,
}

/// What a new core resumes the VM from: the state and the memory its predecessor handed over.
pub struct Takeover {
    pub machine: MachineState,
    pub memory: File,
    /// When the predecessor's vCPUs had stopped ([`monotonic_ns`]), to measure the pause.
    pub paused_at_ns: u64,
}

static PENDING: Mutex<Option<Handoff>> = Mutex::new(None);

/// Leaves `handoff` for the VMM ([`take`]).
pub(crate) fn leave(handoff: Handoff) {
    *PENDING.lock().unwrap_or_else(|p| p.into_inner()) = Some(handoff);
}

/// What [`super::Machine::hand_over`] left, once the VM's run has ended with
/// [`crate::VmExit::HandOver`].
pub fn take() -> Option<Handoff> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in both binaries of a handover.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What the VM's last core update cost the guest, as the new core measured it.
#[derive(Clone, Copy, Debug)]
pub struct Resumed {
    /// From the predecessor's vCPUs stopped to this core's vCPU threads started.
    pub pause: std::time::Duration,
}
