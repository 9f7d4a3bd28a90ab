//! Picks the kernel modules the guest needs and the order to load them in.
//!
//! Debian's kernel package ships no `modules.dep` (its post-install script runs `depmod`), so
//! the dependencies are read where `depmod` reads them: the `depends=` string in each module's
//! `.modinfo` ELF section. Module names use `_` where file names may use `-` (`virtio-rng.ko`
//! is the module `virtio_rng`). Modules listed in `modules.builtin` are part of the kernel and
//! need no loading.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Why the module set could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// The module tree could not be read.
    #[error("could not read the kernel modules under {path}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A module needed by the guest is neither built in nor shipped.
    #[error("the kernel has no module {0}; the guest needs it (is the pinned kernel a Debian cloud kernel?)")]
    Missing(String),
    /// A module file is not an ELF object with a readable `.modinfo` section.
    #[error("the module {0} is not a 64-bit little-endian ELF object with a .modinfo section (compressed modules are not supported)")]
    BadModule(PathBuf),
    /// Dependencies loop back on themselves.
    #[error("the kernel modules' dependencies form a cycle through {0}")]
    Cycle(String),
}

/// Modules the guest cannot do without.
pub const REQUIRED: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
];

/// Modules loaded when the kernel has them.
pub const OPTIONAL: &[&str] = &[
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "net_failover",
    "failover",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "virtiofs",
];

/// The loadable modules of one kernel: name → path relative to `lib/modules/<release>`.
pub struct ModuleTree {
    root: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: HashSet<String>,
}

impl ModuleTree {
    /// Scans `lib/modules/<release>` (the folder holding `kernel/` and `modules.builtin`).
    pub fn scan(root: &Path) -> Result<ModuleTree, ModulesError> {
        let mut files = BTreeMap::new();
        walk(root, Path::new("kernel"), &mut files)?;
        let builtin_path = root.join("modules.builtin");
        let builtin = match fs::read_to_string(&builtin_path) {
            Ok(text) => text.lines().filter_map(module_name).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashSet::new(),
            Err(source) => return Err(ModulesError::Read { path: builtin_path, source }),
        };
        Ok(ModuleTree { root: root.to_path_buf(), files, builtin })
    }

    /// The modules to load, each after its dependencies, as paths relative to the root.
    pub fn load_order(
        &self,
        required: &[&str],
        optional: &[&str],
    ) -> Result<Vec<PathBuf>, ModulesError> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let wanted = required.iter().map(|m| (m, true)).chain(optional.iter().map(|m| (m, false)));
        for (name, needed) in wanted {
            let name = name.replace('-', "_");
            if self.builtin.contains(&name) || (!needed && !self.files.contains_key(&name)) {
                continue;
            }
            self.visit(&name, &mut Vec::new(), &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        path: &mut Vec<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), ModulesError> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(ModulesError::Cycle(name.into()));
        }
        let rel = self.files.get(name).ok_or_else(|| ModulesError::Missing(name.into()))?;
        let full = self.root.join(rel);
        let bytes =
            fs::read(&full).map_err(|source| ModulesError::Read { path: full.clone(), source })?;
        let deps = depends(&bytes).ok_or(ModulesError::BadModule(full))?;
        path.push(name.into());
        for dep in deps {
            self.visit(&dep, path, done, order)?;
        }
        path.pop();
        done.insert(name.into());
        order.push(rel.clone());
        Ok(())
    }
}

fn walk(
    root: &Path,
    rel: &Path,
    files: &mut BTreeMap<String, PathBuf>,
) -> Result<(), ModulesError> {
    let dir = root.join(rel);
    let read_err = |source| ModulesError::Read { path: dir.clone(), source };
    for entry in fs::read_dir(&dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let rel = rel.join(entry.file_name());
        if entry.file_type().map_err(read_err)?.is_dir() {
            walk(root, &rel, files)?;
        } else if let Some(name) = rel.to_str().and_then(module_name) {
            files.insert(name, rel);
        }
    }
    Ok(())
}

/// `kernel/drivers/char/hw_random/virtio-rng.ko` → `virtio_rng`.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.strip_suffix(".ko")?;
    Some(stem.replace('-', "_"))
}

/// The module names in the `depends=` entry of a module's `.modinfo` section.
fn depends(elf: &[u8]) -> Option<Vec<String>> {
    let modinfo = elf_section(elf, ".modinfo")?;
    let list = modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .unwrap_or_default();
    let list = std::str::from_utf8(list).ok()?;
    Some(list.split(',').filter(|s| !s.is_empty()).map(|s| s.replace('-', "_")).collect())
}

/// The bytes of the named section of a 64-bit little-endian ELF file.
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |off: usize| Some(u16::from_le_bytes(elf.get(off..off + 2)?.try_into().ok()?));
    let u32_at = |off: usize| Some(u32::from_le_bytes(elf.get(off..off + 4)?.try_into().ok()?));
    let u64_at = |off: usize| Some(u64::from_le_bytes(elf.get(off..off + 8)?.try_into().ok()?));
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let section = |i: usize| -> Option<(usize, &'a [u8])> {
        let hdr = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32_at(hdr)? as usize;
        let offset = usize::try_from(u64_at(hdr + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(hdr + 0x20)?).ok()?;
        Some((name, elf.get(offset..offset.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let (name_off, data) = section(i)?;
        let name = names.get(name_off..)?.split(|&b| b == 0).next()?;
        (name == wanted.as_bytes()).then_some(data)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object: a null section, `.modinfo` and `.shstrtab`.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let shoff = elf.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        let headers = [
            (0u32, 0usize, 0usize),
            (1, modinfo_off, modinfo.len()),
            (10, strtab_off, shstrtab.len()),
        ];
        for (name, off, size) in headers {
            let mut sh = [0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&sh);
        }
        elf
    }

    #[test]
    fn reads_depends_from_modinfo() {
        let elf = fake_module(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0");
        assert_eq!(depends(&elf).unwrap(), ["virtio", "virtio_ring"]);
        let none = fake_module(b"depends=\0name=virtio_ring\0");
        assert!(depends(&none).unwrap().is_empty());
        assert!(depends(b"not an elf at all").is_none());
    }

    fn tree(mods: &[(&str, &str)], builtin: &str) -> (tempfile::TempDir, ModuleTree) {
        let dir = tempfile::tempdir().unwrap();
        for (path, deps) in mods {
            let full = dir.path().join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            let info = format!("depends={deps}\0");
            fs::write(full, fake_module(info.as_bytes())).unwrap();
        }
        fs::write(dir.path().join("modules.builtin"), builtin).unwrap();
        let tree = ModuleTree::scan(dir.path()).unwrap();
        (dir, tree)
    }

    #[test]
    fn orders_dependencies_first_and_skips_builtins() {
        let (_dir, tree) = tree(
            &[
                ("kernel/d/virtio_ring.ko", ""),
                ("kernel/d/virtio.ko", "virtio_ring"),
                ("kernel/d/virtio_pci.ko", "virtio_ring,virtio,virtio-pci-modern-dev"),
                ("kernel/d/virtio_pci_modern_dev.ko", ""),
                ("kernel/c/virtio-rng.ko", "virtio,virtio_ring"),
                ("kernel/x/unused.ko", ""),
            ],
            "kernel/b/crc32c.ko\n",
        );
        let order = tree
            .load_order(&["virtio_rng", "virtio_pci", "crc32c"], &["absent", "virtio"])
            .unwrap();
        let order: Vec<_> = order.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            order,
            [
                "kernel/d/virtio_ring.ko",
                "kernel/d/virtio.ko",
                "kernel/c/virtio-rng.ko",
                "kernel/d/virtio_pci_modern_dev.ko",
                "kernel/d/virtio_pci.ko",
            ]
        );
    }

    #[test]
    fn missing_required_module_and_cycles_are_errors() {
        let (_dir, tree) = tree(&[("kernel/a.ko", "b"), ("kernel/b.ko", "a")], "");
        assert!(matches!(
            tree.load_order(&["nope"], &[]),
            Err(ModulesError::Missing(m)) if m == "nope"
        ));
        assert!(matches!(tree.load_order(&["a"], &[]), Err(ModulesError::Cycle(_))));
    }
}
