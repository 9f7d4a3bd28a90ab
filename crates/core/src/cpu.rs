//! x86-64 vCPU state at power-on: CPUID, MSRs, FPU, local APIC, and the
//! registers each boot protocol expects.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::BootEntry;
use crate::layout;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read the CPUID features KVM supports")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot set vCPU {0}'s {1}")]
    Set(u8, &'static str, #[source] kvm_ioctls::Error),
    #[error("cannot write the boot GDT into guest memory")]
    Gdt(#[source] vm_memory::GuestMemoryError),
}

/// The CPUID table KVM supports, read once per VM, with the host's processor name where KVM
/// leaves it out.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuError> {
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuError::SupportedCpuid)?;
    Ok(match host_brand() {
        Some(brand) => with_brand(&cpuid, &brand),
        None => cpuid,
    })
}

/// The extended leaves that hold the processor's name (48 bytes of ASCII).
const BRAND_LEAVES: [u32; 3] = [0x8000_0002, 0x8000_0003, 0x8000_0004];

/// The host's processor name registers, leaf by leaf (EAX, EBX, ECX, EDX), if it has one.
fn host_brand() -> Option<[[u32; 4]; 3]> {
    use std::arch::x86_64::__cpuid;
    if __cpuid(0x8000_0000).eax < BRAND_LEAVES[2] {
        return None;
    }
    let brand = BRAND_LEAVES.map(|leaf| {
        let r = __cpuid(leaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    });
    (brand != [[0; 4]; 3]).then_some(brand)
}

/// `cpuid` with the processor name `brand` in the leaves KVM left empty or out. (KVM-PVM
/// leaves them out: Linux then calls the CPU "AMD 19/11" where QEMU, which fills them from
/// the host, says "AMD EPYC", and so does the host's /proc/cpuinfo.)
fn with_brand(cpuid: &CpuId, brand: &[[u32; 4]; 3]) -> CpuId {
    let mut entries = cpuid.as_slice().to_vec();
    let named = entries
        .iter()
        .any(|e| BRAND_LEAVES.contains(&e.function) && (e.eax | e.ebx | e.ecx | e.edx) != 0);
    let ext_max = entries.iter().find(|e| e.function == 0x8000_0000).map_or(0, |e| e.eax);
    if named || ext_max < BRAND_LEAVES[2] {
        return cpuid.clone();
    }
    entries.retain(|e| !BRAND_LEAVES.contains(&e.function));
    for (&function, regs) in BRAND_LEAVES.iter().zip(brand) {
        let [eax, ebx, ecx, edx] = *regs;
        entries.push(kvm_bindings::kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        });
    }
    CpuId::from_entries(&entries).expect("CPUID table within KVM's size limit")
}

/// The hypervisor timing leaf (TSC and APIC bus rates in kHz), as QEMU and
/// VMware publish it: lets guests skip calibrating the TSC.
const TIMING_LEAF: u32 = 0x4000_0010;

/// Tailors the supported CPUID table to vCPU `id` of `count`.
pub fn cpuid_for(base: &CpuId, id: u8, count: u8, tsc_khz: Option<u32>) -> CpuId {
    let mut entries: Vec<_> = base.as_slice().to_vec();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical processor
                }
            }
            0xb | 0x1f => e.edx = u32::from(id),
            0x4000_0000 if tsc_khz.is_some() => e.eax = e.eax.max(TIMING_LEAF),
            _ => {}
        }
    }
    if let Some(khz) = tsc_khz {
        entries.retain(|e| e.function != TIMING_LEAF);
        entries.push(kvm_bindings::kvm_cpuid_entry2 {
            function: TIMING_LEAF,
            eax: khz,
            ebx: 1_000_000, // the local APIC timer runs at 1 GHz under KVM
            ..Default::default()
        });
    }
    CpuId::from_entries(&entries).expect("CPUID table within KVM's size limit")
}

/// AMD's hardware configuration register; bit 24, TscFreqSel, says the TSC counts at the P0
/// frequency, which Linux checks on AMD CPUs that advertise an invariant TSC (and prints
/// `[Firmware Bug]: TSC doesn't count with P0 frequency!` when it is clear).
const MSR_K7_HWCR: u32 = 0xc001_0015;
const HWCR_TSC_FREQ_SEL: u64 = 1 << 24;

/// Whether `cpuid` describes an AMD CPU with an invariant TSC (leaf 0x8000_0007, EDX bit 8).
fn amd_invariant_tsc(cpuid: &CpuId) -> bool {
    let leaf = |f| cpuid.as_slice().iter().find(|e| e.function == f && e.index == 0);
    let amd =
        leaf(0).is_some_and(|e| (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163));
    amd && leaf(0x8000_0007).is_some_and(|e| e.edx & (1 << 8) != 0)
}

/// `cpuid` without the invariant-TSC bit.
fn without_invariant_tsc(cpuid: &CpuId) -> CpuId {
    let mut entries = cpuid.as_slice().to_vec();
    for e in entries.iter_mut().filter(|e| e.function == 0x8000_0007) {
        e.edx &= !(1 << 8);
    }
    CpuId::from_entries(&entries).expect("the same number of entries")
}

/// On an AMD CPU with an invariant TSC, sets HWCR.TscFreqSel as AMD's firmware does. A KVM that
/// does not let it be set (before Linux 6.6) gets the invariant-TSC bit taken out of the CPUID
/// instead: a guest then calibrates rather than being told a contradiction.
fn set_tsc_freq_sel(vcpu: &VcpuFd, id: u8, cpuid: &CpuId) -> Result<(), CpuError> {
    if !amd_invariant_tsc(cpuid) {
        return Ok(());
    }
    let mut hwcr =
        Msrs::from_entries(&[kvm_msr_entry { index: MSR_K7_HWCR, ..Default::default() }])
            .expect("one MSR");
    let read = vcpu.get_msrs(&mut hwcr).unwrap_or(0);
    let old = if read == 1 { hwcr.as_slice()[0].data } else { 0 };
    let new = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_K7_HWCR,
        data: old | HWCR_TSC_FREQ_SEL,
        ..Default::default()
    }])
    .expect("one MSR");
    if vcpu.set_msrs(&new).unwrap_or(0) != 1 {
        let cpuid = without_invariant_tsc(cpuid);
        vcpu.set_cpuid2(&cpuid).map_err(|e| CpuError::Set(id, "CPUID", e))?;
    }
    Ok(())
}

/// MSRs with values a booting kernel expects.
fn boot_msrs() -> Msrs {
    let msr = |index, data| kvm_msr_entry { index, data, ..Default::default() };
    Msrs::from_entries(&[
        msr(0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        msr(0x2ff, (1 << 11) | 6), // MTRR default type: enabled, write-back
        msr(0x174, 0),             // SYSENTER_CS
        msr(0x175, 0),             // SYSENTER_ESP
        msr(0x176, 0),             // SYSENTER_EIP
    ])
    .expect("a handful of MSRs")
}

/// Sets everything but the registers: CPUID, MSRs, FPU and local APIC.
pub fn configure(vcpu: &VcpuFd, id: u8, cpuid: &CpuId) -> Result<(), CpuError> {
    vcpu.set_cpuid2(cpuid).map_err(|e| CpuError::Set(id, "CPUID", e))?;
    vcpu.set_msrs(&boot_msrs()).map_err(|e| CpuError::Set(id, "MSRs", e))?;
    set_tsc_freq_sel(vcpu, id, cpuid)?;
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(|e| CpuError::Set(id, "FPU", e))?;
    set_lint(vcpu).map_err(|e| CpuError::Set(id, "local APIC", e))
}

/// LINT0 as ExtINT (the 8259's output) and LINT1 as NMI, as firmware leaves them.
fn set_lint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    let mut lapic = vcpu.get_lapic()?;
    let mut put = |offset: usize, mode: u32| {
        let bytes = &mut lapic.regs[offset..offset + 4];
        let old =
            u32::from_le_bytes([bytes[0] as u8, bytes[1] as u8, bytes[2] as u8, bytes[3] as u8]);
        let new = (old & !0x700) | (mode << 8);
        for (b, n) in bytes.iter_mut().zip(new.to_le_bytes()) {
            *b = n as i8;
        }
    };
    put(LVT_LINT0, 0x7);
    put(LVT_LINT1, 0x4);
    vcpu.set_lapic(&lapic)
}

/// A flat segment from a GDT descriptor, as KVM wants it.
fn segment(descriptor: u64, selector: u16) -> kvm_segment {
    let field = |shift: u64, bits: u64| ((descriptor >> shift) & ((1 << bits) - 1)) as u8;
    let base = ((descriptor >> 16) & 0xff_ffff) | ((descriptor >> 32) & 0xff00_0000);
    let limit_raw = (descriptor & 0xffff) | ((descriptor >> 32) & 0xf_0000);
    let granularity = field(55, 1);
    let limit = if granularity == 1 { (limit_raw << 12) | 0xfff } else { limit_raw };
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: field(40, 4),
        present: field(47, 1),
        dpl: field(45, 2),
        db: field(54, 1),
        s: field(44, 1),
        l: field(53, 1),
        g: granularity,
        avl: field(52, 1),
        unusable: u8::from(field(47, 1) == 0),
        padding: 0,
    }
}

const GDT_CODE32: u64 = 0x00cf_9b00_0000_ffff;
const GDT_CODE64: u64 = 0x00af_9b00_0000_ffff;
const GDT_DATA: u64 = 0x00cf_9300_0000_ffff;
const GDT_TSS: u64 = 0x0080_8b00_0000_ffff;

/// Sets the boot vCPU's registers for `entry`.
pub fn set_boot_registers(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: BootEntry,
) -> Result<(), CpuError> {
    let code = match entry {
        BootEntry::Pvh { .. } => GDT_CODE32,
        BootEntry::Linux64 { .. } => GDT_CODE64,
    };
    let gdt = [0, code, GDT_DATA, GDT_TSS];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(layout::BOOT_GDT + 8 * i as u64)).map_err(CpuError::Gdt)?;
    }
    let mut sregs: kvm_sregs =
        vcpu.get_sregs().map_err(|e| CpuError::Set(0, "special registers", e))?;
    sregs.gdt.base = layout::BOOT_GDT;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = segment(code, 0x08);
    let data = segment(GDT_DATA, 0x10);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(GDT_TSS, 0x18);
    let mut regs = kvm_regs { rflags: 0x2, ..Default::default() };
    match entry {
        BootEntry::Pvh { entry, start_info } => {
            sregs.cr0 = 0x11; // PE | ET
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
        BootEntry::Linux64 { entry, boot_params } => {
            sregs.cr0 = 0x8000_0033; // PG | NE | ET | MP | PE
            sregs.cr3 = layout::BOOT_PML4;
            sregs.cr4 = 0x20; // PAE
            sregs.efer = 0x500; // LME | LMA
            regs.rip = entry;
            regs.rsi = boot_params;
            regs.rsp = layout::BOOT_STACK;
            regs.rbp = layout::BOOT_STACK;
        }
    }
    vcpu.set_sregs(&sregs).map_err(|e| CpuError::Set(0, "special registers", e))?;
    vcpu.set_regs(&regs).map_err(|e| CpuError::Set(0, "registers", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_from_descriptors() {
        let cs = segment(GDT_CODE64, 0x08);
        assert_eq!((cs.l, cs.db, cs.type_, cs.present, cs.limit), (1, 0, 0xb, 1, 0xffff_ffff));
        let cs32 = segment(GDT_CODE32, 0x08);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let tr = segment(GDT_TSS, 0x18);
        assert_eq!((tr.type_, tr.s, tr.g, tr.limit), (0xb, 0, 1, 0x0fff_ffff));
        assert_eq!(segment(0, 0).unusable, 1);
    }

    #[test]
    fn an_amd_invariant_tsc_is_recognised_and_can_be_taken_out() {
        let vendor = |ebx, edx, ecx| kvm_bindings::kvm_cpuid_entry2 {
            function: 0,
            eax: 0x8000_0008,
            ebx,
            edx,
            ecx,
            ..Default::default()
        };
        let amd = vendor(0x6874_7541, 0x6974_6e65, 0x444d_4163); // AuthenticAMD
        let intel = vendor(0x756e_6547, 0x4965_6e69, 0x6c65_746e); // GenuineIntel
        let power = kvm_bindings::kvm_cpuid_entry2 {
            function: 0x8000_0007,
            edx: (1 << 8) | 1,
            ..Default::default()
        };
        let table = |v| CpuId::from_entries(&[v, power]).unwrap();
        assert!(amd_invariant_tsc(&table(amd)));
        assert!(!amd_invariant_tsc(&table(intel)));
        let stripped = without_invariant_tsc(&table(amd));
        assert!(!amd_invariant_tsc(&stripped));
        let leaf = stripped.as_slice().iter().find(|e| e.function == 0x8000_0007).unwrap();
        assert_eq!(leaf.edx, 1, "only the invariant-TSC bit goes");
    }

    #[test]
    fn the_host_processor_name_fills_leaves_kvm_left_empty() {
        let leaf =
            |function, eax| kvm_bindings::kvm_cpuid_entry2 { function, eax, ..Default::default() };
        let brand = [*b"AMD EPYC    ", [0; 12], [0; 12]]
            .map(|b| [0, 4, 8].map(|i| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])))
            .map(|[a, b, c]| [a, b, c, 0]);
        let empty =
            CpuId::from_entries(&[leaf(0x8000_0000, 0x8000_0008), leaf(0x8000_0002, 0)]).unwrap();
        let named = with_brand(&empty, &brand);
        let got = named.as_slice().iter().find(|e| e.function == 0x8000_0002).unwrap();
        assert_eq!(got.eax.to_le_bytes(), *b"AMD ");
        assert_eq!(named.as_slice().iter().filter(|e| e.function == 0x8000_0002).count(), 1);
        assert_eq!(named.as_slice().iter().filter(|e| e.function == 0x8000_0004).count(), 1);
        // A name KVM gives is kept, and a table whose extended range stops short gets none.
        let kvm_named = with_brand(&named, &[[1; 4]; 3]);
        assert_eq!(kvm_named.as_slice(), named.as_slice());
        let short = CpuId::from_entries(&[leaf(0x8000_0000, 0x8000_0001)]).unwrap();
        assert_eq!(with_brand(&short, &brand).as_slice(), short.as_slice());
    }

    #[test]
    fn cpuid_names_each_vcpu() {
        let base = CpuId::from_entries(&[
            kvm_bindings::kvm_cpuid_entry2 { function: 1, ebx: 0xff00_0800, ..Default::default() },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0x4000_0000,
                eax: 0x4000_0001,
                ..Default::default()
            },
        ])
        .unwrap();
        let c = cpuid_for(&base, 3, 4, Some(2_000_000));
        let leaf = |f| c.as_slice().iter().find(|e| e.function == f).copied().unwrap();
        assert_eq!(leaf(1).ebx >> 24, 3);
        assert_eq!((leaf(1).ebx >> 16) & 0xff, 4);
        assert_eq!(leaf(1).ebx & 0xffff, 0x0800);
        assert_ne!(leaf(1).ecx & (1 << 31), 0);
        assert_eq!(leaf(0x4000_0000).eax, TIMING_LEAF);
        assert_eq!(leaf(TIMING_LEAF).eax, 2_000_000);
    }
}
