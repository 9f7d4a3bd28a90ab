//! What kind of KVM this host offers, and opening it with errors that say
//! what to do.

use std::path::Path;

use kvm_ioctls::Kvm;

/// The kind of virtualization behind `/dev/kvm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// VT-x or AMD-V: any guest, Linux included, boots.
    Hardware,
    /// KVM-PVM: guest ring 0 runs in an instruction emulator; stock Linux
    /// kernels do not boot, the built-in guest does.
    Pvm,
    /// Something else (no module information readable).
    Unknown,
}

impl HostKind {
    /// Detects the host kind from the loaded KVM modules and CPU flags.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/"))
    }

    fn detect_in(root: &Path) -> Self {
        let module = |name: &str| root.join("sys/module").join(name).exists();
        if module("kvm_pvm") {
            return HostKind::Pvm;
        }
        if module("kvm_intel") || module("kvm_amd") {
            return HostKind::Hardware;
        }
        let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        let has_flag = |flag: &str| {
            cpuinfo
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == flag))
        };
        if has_flag("vmx") || has_flag("svm") {
            HostKind::Hardware
        } else {
            HostKind::Unknown
        }
    }

    /// Whether a stock Linux kernel can boot on this host.
    pub fn runs_linux(self) -> bool {
        self != HostKind::Pvm
    }

    pub fn describe(self) -> &'static str {
        match self {
            HostKind::Hardware => "hardware virtualization (VT-x/AMD-V)",
            HostKind::Pvm => "KVM-PVM (no hardware virtualization)",
            HostKind::Unknown => "unknown KVM",
        }
    }
}

/// Why `/dev/kvm` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("/dev/kvm does not exist: load the kvm module (kvm_intel or kvm_amd) or enable virtualization in the firmware")]
    Missing,
    #[error("no permission to open /dev/kvm: run as root or add your user to the group that owns /dev/kvm (often 'kvm')")]
    Permission,
    #[error("cannot open /dev/kvm")]
    Other(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm speaks KVM API version {0}; Bulkhead needs version 12")]
    ApiVersion(i32),
}

/// Opens `/dev/kvm`.
pub fn open_kvm() -> Result<Kvm, OpenError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => OpenError::Missing,
        libc::EACCES | libc::EPERM => OpenError::Permission,
        _ => OpenError::Other(e),
    })?;
    match kvm.get_api_version() {
        12 => Ok(kvm),
        v => Err(OpenError::ApiVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_from_modules_and_flags() {
        let dir = std::env::temp_dir().join(format!("bulkhead-host-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sys/module/kvm_pvm")).unwrap();
        assert_eq!(HostKind::detect_in(&dir), HostKind::Pvm);
        std::fs::remove_dir_all(dir.join("sys/module/kvm_pvm")).unwrap();
        std::fs::create_dir_all(dir.join("proc")).unwrap();
        std::fs::write(dir.join("proc/cpuinfo"), "flags\t: fpu vmx sse\n").unwrap();
        assert_eq!(HostKind::detect_in(&dir), HostKind::Hardware);
        std::fs::write(dir.join("proc/cpuinfo"), "flags\t: fpu sse\n").unwrap();
        assert_eq!(HostKind::detect_in(&dir), HostKind::Unknown);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!HostKind::Pvm.runs_linux() && HostKind::Hardware.runs_linux());
    }
}
