//! Finding the cgroup hierarchies: which controller is on cgroup v1 (one
//! mount per hierarchy, controllers named in the mount options) and which on
//! the unified v2 hierarchy, and where the calling process sits in each
//! (`/proc/self/cgroup`).

use std::path::{Path, PathBuf};

use super::{CgroupError, Controller, Version};

/// One mounted hierarchy and where the calling process sits in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// v1 or v2.
    pub version: Version,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The calling process's cgroup directory in it: new cgroups go below.
    pub base: PathBuf,
    /// The controllers this hierarchy offers (for v2: those in `base/cgroup.controllers`).
    pub controllers: Vec<Controller>,
}

/// Every usable hierarchy of this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hierarchies {
    list: Vec<Hierarchy>,
}

impl Hierarchies {
    /// Reads `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub fn detect() -> Result<Hierarchies, CgroupError> {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map_err(|source| CgroupError::Io { path: PathBuf::from(path), source })
        };
        let mountinfo = read("/proc/self/mountinfo")?;
        let membership = read("/proc/self/cgroup")?;
        Ok(Hierarchies::parse(&mountinfo, &membership, |dir| {
            std::fs::read_to_string(dir.join("cgroup.controllers")).ok()
        }))
    }

    /// Builds the list from the text of `/proc/self/mountinfo` and
    /// `/proc/self/cgroup`; `v2_controllers` reads a v2 directory's
    /// `cgroup.controllers`.
    pub fn parse(
        mountinfo: &str,
        membership: &str,
        v2_controllers: impl Fn(&Path) -> Option<String>,
    ) -> Hierarchies {
        let mut list: Vec<Hierarchy> = Vec::new();
        for line in mountinfo.lines() {
            let Some(mount) = MountLine::parse(line) else { continue };
            let hierarchy = match mount.fstype {
                "cgroup" => {
                    let controllers: Vec<Controller> =
                        mount.options.split(',').filter_map(Controller::from_name).collect();
                    if controllers.is_empty() {
                        continue;
                    }
                    let Some(path) = own_path_v1(membership, &controllers) else { continue };
                    let Some(base) = below_mount(&mount, path) else { continue };
                    Hierarchy { version: Version::V1, mount: mount.point, base, controllers }
                }
                "cgroup2" => {
                    let Some(path) = own_path_v2(membership) else { continue };
                    let Some(base) = below_mount(&mount, path) else { continue };
                    let controllers = v2_controllers(&base)
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter_map(Controller::from_name)
                        .collect();
                    Hierarchy { version: Version::V2, mount: mount.point, base, controllers }
                }
                _ => continue,
            };
            // A hierarchy mounted twice is used through its first mount.
            if !list.iter().any(|h| h.version == hierarchy.version && h.base == hierarchy.base) {
                list.push(hierarchy);
            }
        }
        Hierarchies { list }
    }

    /// A list given directly (tests, or a core that knows better).
    pub fn from_list(list: Vec<Hierarchy>) -> Hierarchies {
        Hierarchies { list }
    }

    /// The hierarchy offering `controller`: v1 first (a controller bound to a
    /// v1 hierarchy is not available on v2).
    pub fn for_controller(&self, controller: Controller) -> Option<&Hierarchy> {
        let offers = |h: &&Hierarchy| h.controllers.contains(&controller);
        let v1 = self.list.iter().filter(|h| h.version == Version::V1).find(offers);
        v1.or_else(|| self.list.iter().filter(|h| h.version == Version::V2).find(offers))
    }

    /// The unified (v2) hierarchy, whatever controllers it offers.
    pub fn unified(&self) -> Option<&Hierarchy> {
        self.list.iter().find(|h| h.version == Version::V2)
    }

    /// Every hierarchy found.
    pub fn list(&self) -> &[Hierarchy] {
        &self.list
    }

    /// These hierarchies seen from above `inner`: where the calling process sits in
    /// `…/inner` (a core that took its VM over sits in the VM's `core` cgroup), the base is
    /// what is above `inner`; elsewhere it is unchanged. Returns whether any base changed.
    pub fn above(&mut self, inner: &Path) -> bool {
        let mut changed = false;
        for h in &mut self.list {
            if let Some(outer) =
                h.base.to_str().and_then(|b| b.strip_suffix(inner.to_str().unwrap_or("\0")))
            {
                if let Some(outer) = outer.strip_suffix('/') {
                    h.base = PathBuf::from(outer);
                    changed = true;
                }
            }
        }
        changed
    }
}

struct MountLine<'a> {
    root: String,
    point: PathBuf,
    fstype: &'a str,
    options: &'a str,
}

impl<'a> MountLine<'a> {
    /// `id parent maj:min root point opts [optional…] - fstype source superopts`
    fn parse(line: &'a str) -> Option<MountLine<'a>> {
        let (left, right) = line.split_once(" - ")?;
        let mut left = left.split(' ');
        let root = unescape(left.nth(3)?);
        let point = PathBuf::from(unescape(left.next()?));
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let options = right.nth(1)?;
        Some(MountLine { root, point, fstype, options })
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of cgroup `path` (as `/proc/self/cgroup` gives it) under `mount`.
fn below_mount(mount: &MountLine<'_>, path: &str) -> Option<PathBuf> {
    let relative = if mount.root == "/" {
        path
    } else {
        let rest = path.strip_prefix(mount.root.as_str())?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        rest
    };
    Some(mount.point.join(relative.trim_start_matches('/')))
}

/// This process's path in the v1 hierarchy that has `controllers`.
fn own_path_v1<'a>(membership: &'a str, controllers: &[Controller]) -> Option<&'a str> {
    membership.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, names, path) = (fields.next()?, fields.next()?, fields.next()?);
        let listed: Vec<Controller> = names.split(',').filter_map(Controller::from_name).collect();
        (!listed.is_empty() && controllers.iter().all(|c| listed.contains(c))).then_some(path)
    })
}

/// This process's path in the unified hierarchy (`0::/path`).
fn own_path_v2(membership: &str) -> Option<&str> {
    membership.lines().find_map(|line| line.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const MEMBERSHIP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/faf8
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn finds_this_hosts_layout() {
        let found = Hierarchies::parse(MOUNTINFO, MEMBERSHIP, |dir| {
            assert_eq!(dir, Path::new("/sys/fs/cgroup/unified"));
            Some("hugetlb\n".into())
        });
        let memory = found.for_controller(Controller::Memory).unwrap();
        assert_eq!(memory.version, Version::V1);
        assert_eq!(memory.base, Path::new("/sys/fs/cgroup/memory/process_api/faf8"));
        let cpu = found.for_controller(Controller::Cpu).unwrap();
        assert_eq!(cpu.base, Path::new("/sys/fs/cgroup/cpu"));
        assert!(found.for_controller(Controller::Cpuset).is_none());
        let unified = found.unified().unwrap();
        assert_eq!(unified.controllers, vec![Controller::Hugetlb]);
        assert_eq!(found.for_controller(Controller::Hugetlb), Some(unified));
        assert_eq!(found.list().len(), 5);
    }

    #[test]
    fn finds_a_pure_v2_host() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let found = Hierarchies::parse(mountinfo, "0::/user.slice/session-1.scope\n", |_| {
            Some("cpuset cpu io memory pids".into())
        });
        let memory = found.for_controller(Controller::Memory).unwrap();
        assert_eq!(memory.version, Version::V2);
        assert_eq!(memory.base, Path::new("/sys/fs/cgroup/user.slice/session-1.scope"));
        assert_eq!(memory.controllers.len(), 4);
    }

    #[test]
    fn a_core_that_took_its_vm_over_sees_the_cgroups_above_its_own() {
        let membership =
            "4:memory:/process_api/faf8/bulkhead-web-77/core\n1:cpu:/bulkhead-web-77/core\n";
        let mut found = Hierarchies::parse(MOUNTINFO, membership, |_| None);
        assert!(found.above(Path::new("bulkhead-web-77/core")));
        let memory = found.for_controller(Controller::Memory).unwrap();
        assert_eq!(memory.base, Path::new("/sys/fs/cgroup/memory/process_api/faf8"));
        assert_eq!(
            found.for_controller(Controller::Cpu).unwrap().base,
            Path::new("/sys/fs/cgroup/cpu")
        );
        // Another VM's name, or a core that booted its VM: nothing changes.
        let mut other = Hierarchies::parse(MOUNTINFO, membership, |_| None);
        assert!(!other.above(Path::new("bulkhead-db-77/core")));
        let mut fresh = Hierarchies::parse(MOUNTINFO, MEMBERSHIP, |_| None);
        assert!(!fresh.above(Path::new("bulkhead-web-77/core")));
        assert_eq!(fresh, Hierarchies::parse(MOUNTINFO, MEMBERSHIP, |_| None));
    }

    #[test]
    fn mount_roots_and_escapes() {
        let mountinfo =
            "30 23 0:26 /lxc/c1 /sys/fs/cgroup/my\\040mem rw - cgroup cgroup rw,memory\n";
        let found = Hierarchies::parse(mountinfo, "4:memory:/lxc/c1/inner\n", |_| None);
        let memory = found.for_controller(Controller::Memory).unwrap();
        assert_eq!(memory.base, Path::new("/sys/fs/cgroup/my mem/inner"));
        // A process outside the mounted subtree cannot use it.
        let found = Hierarchies::parse(mountinfo, "4:memory:/other\n", |_| None);
        assert!(found.for_controller(Controller::Memory).is_none());
    }
}
