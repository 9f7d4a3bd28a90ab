//! One vCPU's state as KVM holds it: read by the vCPU's own thread when it parks
//! ([`save`]), set on a new vCPU before it first runs ([`restore`]).
//!
//! Each part is KVM's own structure, kept as its bytes (the kernel ABI of `linux/kvm.h`,
//! which does not change): general and special registers, the FPU and extended state
//! (`KVM_GET_XSAVE`), XCR0, the local APIC's registers (its timer included), pending events
//! (exceptions, interrupts, NMIs), the run state (running, halted, waiting for INIT/SIPI), the
//! debug registers and every MSR KVM lists and lets read (the TSC, kvmclock's, the syscall
//! and APIC timer MSRs among them).

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A vCPU's complete state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    #[serde(with = "hex_struct")]
    pub regs: kvm_regs,
    #[serde(with = "hex_struct")]
    pub sregs: kvm_sregs,
    #[serde(with = "hex_struct")]
    pub xsave: kvm_xsave,
    /// `None` where KVM has no `KVM_CAP_XCRS`.
    #[serde(with = "hex_struct_opt")]
    pub xcrs: Option<kvm_xcrs>,
    #[serde(with = "hex_struct")]
    pub lapic: kvm_lapic_state,
    #[serde(with = "hex_struct")]
    pub events: kvm_vcpu_events,
    #[serde(with = "hex_struct")]
    pub mp_state: kvm_mp_state,
    #[serde(with = "hex_struct")]
    pub debugregs: kvm_debugregs,
    /// (index, value) of each MSR saved, in the order they are set back.
    pub msrs: Vec<(u32, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CpuStateError {
    #[error("cannot read the vCPU's {0}")]
    Get(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot set the vCPU's {0}")]
    Set(&'static str, #[source] kvm_ioctls::Error),
    #[error("KVM took {set} of the {of} saved MSRs; it refused MSR {msr:#x}")]
    Msr { set: usize, of: usize, msr: u32 },
    #[error("cannot build an MSR list")]
    MsrList,
}

fn get(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuStateError {
    move |e| CpuStateError::Get(what, e)
}

fn set(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuStateError {
    move |e| CpuStateError::Set(what, e)
}

/// Reads `vcpu`'s state; `msrs` are the MSRs KVM lists, of which those it lets read are saved
/// ([`read_msrs`]). The vCPU must be
/// out of `KVM_RUN`, with the exit it last made completed ([`complete_exit`]).
pub fn save(vcpu: &VcpuFd, msrs: &[u32], xcrs: bool) -> Result<VcpuState, CpuStateError> {
    // The order Firecracker and QEMU read in: the run state and events before the registers
    // they may change.
    let mp_state = vcpu.get_mp_state().map_err(get("run state"))?;
    let regs = vcpu.get_regs().map_err(get("registers"))?;
    let sregs = vcpu.get_sregs().map_err(get("special registers"))?;
    let xsave = vcpu.get_xsave().map_err(get("extended state (XSAVE)"))?;
    let xcrs = match xcrs {
        true => Some(vcpu.get_xcrs().map_err(get("XCRs"))?),
        false => None,
    };
    let debugregs = vcpu.get_debug_regs().map_err(get("debug registers"))?;
    let lapic = vcpu.get_lapic().map_err(get("local APIC"))?;
    let msrs = read_msrs(vcpu, msrs)?;
    let events = vcpu.get_vcpu_events().map_err(get("pending events"))?;
    Ok(VcpuState { regs, sregs, xsave, xcrs, lapic, events, mp_state, debugregs, msrs })
}

/// Sets `state` on a vCPU created (and given its CPUID) but not yet run.
pub fn restore(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), CpuStateError> {
    // KVM's order: the run state, registers, the FPU, then the APIC, MSRs (the TSC deadline
    // timer's needs the APIC), and the events last (they may name an interrupt the APIC holds).
    vcpu.set_mp_state(state.mp_state).map_err(set("run state"))?;
    vcpu.set_regs(&state.regs).map_err(set("registers"))?;
    vcpu.set_sregs(&state.sregs).map_err(set("special registers"))?;
    // SAFETY: the extended state area is the one KVM_GET_XSAVE gave, of the fixed
    // 4096-byte `kvm_xsave` layout, which is what KVM_SET_XSAVE reads.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(set("extended state (XSAVE)"))?;
    if let Some(xcrs) = &state.xcrs {
        vcpu.set_xcrs(xcrs).map_err(set("XCRs"))?;
    }
    vcpu.set_debug_regs(&state.debugregs).map_err(set("debug registers"))?;
    vcpu.set_lapic(&state.lapic).map_err(set("local APIC"))?;
    let list = msr_list(state.msrs.iter().copied())?;
    let written = vcpu.set_msrs(&list).map_err(set("MSRs"))?;
    if written < state.msrs.len() {
        let msr = state.msrs[written].0;
        return Err(CpuStateError::Msr { set: written, of: state.msrs.len(), msr });
    }
    vcpu.set_vcpu_events(&state.events).map_err(set("pending events"))?;
    Ok(())
}

/// Finishes the exit `vcpu` last made (an MMIO or port read's data reaches its register only
/// when the vCPU enters again): one `KVM_RUN` that returns at once, as `immediate_exit` makes it.
pub fn complete_exit(vcpu: &mut VcpuFd) {
    vcpu.set_kvm_immediate_exit(1);
    let _ = vcpu.run();
    vcpu.set_kvm_immediate_exit(0);
}

/// The (index, value) of each of the `listed` MSRs this vCPU lets read: KVM reads a list up to
/// the first MSR it refuses, which is left out, and the rest is read again.
fn read_msrs(vcpu: &VcpuFd, listed: &[u32]) -> Result<Vec<(u32, u64)>, CpuStateError> {
    let mut values = Vec::with_capacity(listed.len());
    let mut rest = listed;
    while !rest.is_empty() {
        let mut list = msr_list(rest.iter().map(|&index| (index, 0)))?;
        let read = vcpu.get_msrs(&mut list).map_err(get("MSRs"))?;
        values.extend(list.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // The one at `read` was refused: skip it.
        rest = rest.get(read + 1..).unwrap_or(&[]);
    }
    Ok(values)
}

fn msr_list(entries: impl Iterator<Item = (u32, u64)>) -> Result<Msrs, CpuStateError> {
    let entries: Vec<kvm_msr_entry> =
        entries.map(|(index, data)| kvm_msr_entry { index, data, ..Default::default() }).collect();
    Msrs::from_entries(&entries).map_err(|_| CpuStateError::MsrList)
}

/// A KVM structure as the hex of its bytes, and back, refusing another length.
mod hex_struct {
    use super::*;

    pub fn serialize<T: IntoBytes + Immutable, S: serde::Serializer>(
        value: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::state::hex::encode(value.as_bytes()))
    }

    pub fn deserialize<'de, T: FromBytes, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = crate::state::hex::decode(&text).map_err(serde::de::Error::custom)?;
        T::read_from_bytes(&bytes).map_err(|_| {
            serde::de::Error::custom(format!(
                "{} bytes where {} were expected",
                bytes.len(),
                std::mem::size_of::<T>()
            ))
        })
    }
}

/// [`hex_struct`] for an optional structure (`null` when absent).
mod hex_struct_opt {
    use super::*;

    pub fn serialize<T: IntoBytes + Immutable, S: serde::Serializer>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_some(&crate::state::hex::encode(v.as_bytes())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: FromBytes, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
        let bytes = crate::state::hex::decode(&text).map_err(serde::de::Error::custom)?;
        T::read_from_bytes(&bytes)
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{} bytes: wrong size", bytes.len())))
    }
}
