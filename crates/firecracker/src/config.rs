//! A microVM's configuration as the API collects it before boot, each resource checked as
//! it is put (with Firecracker's wording where it has one), and its translation into the
//! arguments of `bulkhead run`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::model::{
    BootSource, BulkheadSettings, Drive, Entropy, IoEngine, Logger, MachineConfig,
    MachineConfigUpdate, Metrics, NetworkInterface, RateLimiter, TokenBucket, Vsock,
};
use bulkhead_devices::limit::BucketSpec;

/// What the API has been told.
#[derive(Debug, Default)]
pub struct VmConfig {
    pub machine: MachineConfig,
    pub boot: Option<BootSource>,
    /// In the order they were first put.
    pub drives: Vec<Drive>,
    pub nets: Vec<NetworkInterface>,
    pub vsock: Option<Vsock>,
    pub entropy: Option<Entropy>,
    pub logger: Option<Logger>,
    pub metrics: Option<Metrics>,
    /// `--boot-timer`: passed to the core.
    pub boot_timer: bool,
    /// Bulkhead's own settings (`PUT /bulkhead`).
    pub bulkhead: Option<BulkheadSettings>,
}

/// Refuses a feature Bulkhead does not implement, naming it.
pub fn not_implemented(what: &str) -> String {
    format!("{what} is not implemented in Bulkhead (see docs/FIRECRACKER.md).")
}

/// Checks an id from a path: 1 to 64 of `[A-Za-z0-9_]`, as Firecracker requires.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!("Invalid {what} {id:?}: use 1 to 64 of A-Z, a-z, 0-9 and _."));
    }
    Ok(())
}

/// Bulkhead's device options are comma-separated: a path with a comma cannot be passed.
fn check_path(what: &str, path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err(format!("{what} is empty: give the path of a file on the host."));
    }
    if path.contains(',') {
        return Err(format!(
            "{what} {path:?} has a comma, which Bulkhead's device options cannot carry: \
             rename the file or link to it from a path without one."
        ));
    }
    Ok(())
}

/// Checks that `path` can be opened for reading (and writing): the error names the file.
/// Non-blocking, so that a named pipe given as a kernel or a drive cannot hang the API.
fn check_opens(what: &str, path: &str, write: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map(drop)
        .map_err(|e| format!("{what} {path} cannot be opened: {e}."))
}

impl VmConfig {
    pub fn put_machine(&mut self, m: MachineConfig) -> Result<(), String> {
        if !(1..=32).contains(&m.vcpu_count) {
            return Err(format!("Invalid vCPU count {}: it must be from 1 to 32.", m.vcpu_count));
        }
        if m.mem_size_mib == 0 {
            return Err("Invalid memory size 0 MiB: give mem_size_mib of at least 1.".into());
        }
        if m.smt {
            return Err(not_implemented("smt: true (simultaneous multithreading in the guest)"));
        }
        if m.track_dirty_pages {
            return Err(not_implemented("track_dirty_pages: true (for diff snapshots)"));
        }
        if m.cpu_template.as_deref().is_some_and(|t| t != "None") {
            return Err(not_implemented("cpu_template (CPU templates)"));
        }
        if m.huge_pages.as_deref().is_some_and(|h| h != "None") {
            return Err(not_implemented("huge_pages other than None"));
        }
        self.machine = m;
        Ok(())
    }

    pub fn patch_machine(&mut self, u: MachineConfigUpdate) -> Result<(), String> {
        let mut m = self.machine.clone();
        m.vcpu_count = u.vcpu_count.unwrap_or(m.vcpu_count);
        m.mem_size_mib = u.mem_size_mib.unwrap_or(m.mem_size_mib);
        m.smt = u.smt.unwrap_or(m.smt);
        m.track_dirty_pages = u.track_dirty_pages.unwrap_or(m.track_dirty_pages);
        m.cpu_template = u.cpu_template.or(m.cpu_template);
        m.huge_pages = u.huge_pages.or(m.huge_pages);
        self.put_machine(m)
    }

    pub fn put_boot(&mut self, b: BootSource) -> Result<(), String> {
        check_path("The kernel file", &b.kernel_image_path)?;
        check_opens("The kernel file", &b.kernel_image_path, false)?;
        if let Some(initrd) = &b.initrd_path {
            check_path("The initrd file", initrd)?;
            check_opens("The initrd file", initrd, false)?;
        }
        self.boot = Some(b);
        Ok(())
    }

    pub fn put_drive(&mut self, d: Drive) -> Result<(), String> {
        check_id("drive_id", &d.drive_id)?;
        if let Some(limiter) = &d.rate_limiter {
            check_limiter("rate_limiter", limiter)?;
            if d.socket.is_some() && limits_something(limiter) {
                return Err(VHOST_USER_LIMITS.into());
            }
        }
        if d.io_engine == Some(IoEngine::Async) {
            return Err(not_implemented("io_engine Async (io_uring); use Sync"));
        }
        match (&d.path_on_host, &d.socket) {
            (Some(path), None) => {
                check_path("path_on_host", path)?;
                check_opens("The drive's file", path, !d.is_read_only.unwrap_or(false))?;
            }
            (None, Some(socket)) => check_path("socket", socket)?,
            _ => {
                return Err("A drive needs path_on_host (a virtio-block drive) or socket (a \
                            vhost-user-block drive), not both."
                    .into())
            }
        }
        if d.is_root_device
            && self.drives.iter().any(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err("A root block device already exists!".into());
        }
        match self.drives.iter_mut().find(|o| o.drive_id == d.drive_id) {
            Some(old) => *old = d,
            None => self.drives.push(d),
        }
        Ok(())
    }

    pub fn put_net(&mut self, n: NetworkInterface) -> Result<(), String> {
        check_id("iface_id", &n.iface_id)?;
        for (what, limiter) in
            [("rx_rate_limiter", &n.rx_rate_limiter), ("tx_rate_limiter", &n.tx_rate_limiter)]
        {
            if let Some(limiter) = limiter {
                check_limiter(what, limiter)?;
            }
        }
        if n.mtu.is_some() {
            return Err(not_implemented("A network interface's mtu"));
        }
        check_path("host_dev_name", &n.host_dev_name)?;
        if let Some(mac) = &n.guest_mac {
            let ok = mac.split(':').count() == 6
                && mac.split(':').all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok());
            if !ok {
                return Err(format!("Invalid guest_mac {mac:?}: write it as 06:00:AC:10:00:02."));
            }
        }
        if let Some(other) = self
            .nets
            .iter()
            .find(|o| o.host_dev_name == n.host_dev_name && o.iface_id != n.iface_id)
        {
            return Err(format!(
                "The host device {} is already used by the interface {}.",
                n.host_dev_name, other.iface_id
            ));
        }
        match self.nets.iter_mut().find(|o| o.iface_id == n.iface_id) {
            Some(old) => *old = n,
            None => self.nets.push(n),
        }
        Ok(())
    }

    pub fn put_vsock(&mut self, v: Vsock) -> Result<(), String> {
        if v.guest_cid < 3 {
            return Err(format!(
                "Invalid guest_cid {}: CIDs 0 to 2 are reserved; use 3 or more.",
                v.guest_cid
            ));
        }
        check_path("uds_path", &v.uds_path)?;
        vsock_program()?;
        self.vsock = Some(v);
        Ok(())
    }

    pub fn put_entropy(&mut self, e: Entropy) -> Result<(), String> {
        if let Some(limiter) = &e.rate_limiter {
            check_limiter("rate_limiter", limiter)?;
        }
        self.entropy = Some(e);
        Ok(())
    }

    /// `PUT /bulkhead`: what can be checked before the core starts is checked here (numbers
    /// in range, option values that cannot be mistaken for options); the formats of quotas,
    /// sizes and CPU lists are `bulkhead run`'s and checked by it at `InstanceStart`.
    pub fn put_bulkhead(&mut self, b: BulkheadSettings) -> Result<(), String> {
        for (name, value) in
            [("restart_window_s", b.restart_window_s), ("watchdog_s", b.watchdog_s)]
        {
            if let Some(v) = value {
                let ok = v.is_finite() && (v > 0.0 || (name == "watchdog_s" && v == 0.0));
                if !ok || v > 1e9 {
                    return Err(format!("Invalid {name} {v}: give a number of seconds above 0."));
                }
            }
        }
        if let Some(shares) = b.cpu_shares {
            if !(2..=262_144).contains(&shares) {
                return Err(format!("Invalid cpu_shares {shares}: it must be from 2 to 262144."));
            }
        }
        for (name, value) in bulkhead_strings(&b) {
            if value.is_empty() || value.starts_with('-') || value.chars().any(char::is_whitespace)
            {
                return Err(format!(
                    "Invalid {name} {value:?}: give the value bulkhead run's --{} takes.",
                    name.replace('_', "-")
                ));
            }
        }
        self.bulkhead = Some(b);
        Ok(())
    }

    /// `GET /vm/config`: Firecracker's FullVmConfiguration (and Bulkhead's own section when
    /// it was put).
    pub fn full(&self) -> Value {
        let mut full = self.firecracker_sections();
        if let Some(b) = &self.bulkhead {
            full["bulkhead"] = json!(b);
        }
        full
    }

    fn firecracker_sections(&self) -> Value {
        json!({
            "balloon": null,
            "drives": self.drives,
            "boot-source": self.boot,
            "cpu-config": null,
            "logger": self.logger,
            "machine-config": self.machine,
            "metrics": self.metrics,
            "mmds-config": null,
            "network-interfaces": self.nets,
            "vsock": self.vsock,
            "entropy": self.entropy,
        })
    }

    /// The kernel command line: the boot arguments and, as Firecracker adds it, the root
    /// device (the root drive is attached first, so it is `/dev/vda`). Without boot_args,
    /// Bulkhead's default command line is used and nothing is added.
    fn cmdline(&self, boot: &BootSource) -> Option<String> {
        let mut line = boot.boot_args.clone()?;
        if let Some(root) =
            self.drives.iter().find(|d| d.is_root_device && d.path_on_host.is_some())
        {
            match &root.partuuid {
                Some(uuid) => line.push_str(&format!(" root=PARTUUID={uuid}")),
                None => line.push_str(" root=/dev/vda"),
            }
            line.push_str(if root.is_read_only.unwrap_or(false) { " ro" } else { " rw" });
        }
        Some(line)
    }

    /// The arguments of `bulkhead run` for this configuration, VM named `name`.
    pub fn run_args(&self, name: &str) -> Result<Vec<String>, String> {
        let boot = self
            .boot
            .as_ref()
            .ok_or("Cannot start microvm without kernel configuration: PUT /boot-source first.")?;
        let mut args: Vec<String> = vec!["run".into(), "--name".into(), name.into()];
        args.extend(["--kernel".into(), boot.kernel_image_path.clone()]);
        if let Some(initrd) = &boot.initrd_path {
            args.extend(["--initrd".into(), initrd.clone()]);
        }
        if let Some(line) = self.cmdline(boot) {
            args.extend(["--cmdline".into(), line]);
        }
        args.extend(["--cpus".into(), self.machine.vcpu_count.to_string()]);
        args.extend(["--memory".into(), format!("{}M", self.machine.mem_size_mib)]);
        let (roots, others): (Vec<&Drive>, Vec<&Drive>) =
            self.drives.iter().partition(|d| d.is_root_device);
        for d in roots.into_iter().chain(others) {
            match (&d.path_on_host, &d.socket) {
                (Some(path), _) => {
                    let ro = if d.is_read_only.unwrap_or(false) { ",readonly" } else { "" };
                    let limits = limit_options("", d.rate_limiter.as_ref());
                    args.extend(["--disk".into(), format!("{path},format=raw{ro}{limits}")]);
                }
                (None, Some(socket)) => {
                    args.extend(["--vhost-user".into(), format!("blk,socket={socket}")])
                }
                (None, None) => unreachable!("put_drive requires one"),
            }
        }
        for n in &self.nets {
            let mac = n.guest_mac.as_ref().map(|m| format!(",mac={m}")).unwrap_or_default();
            let rx = limit_options("rx-", n.rx_rate_limiter.as_ref());
            let tx = limit_options("tx-", n.tx_rate_limiter.as_ref());
            args.extend(["--net".into(), format!("tap={}{mac}{rx}{tx}", n.host_dev_name)]);
        }
        if let Some(v) = &self.vsock {
            args.extend(["--device".into(), vsock_device(v)?]);
        }
        if let Some(e) = &self.entropy {
            // `--rng=OPTIONS` takes the limits; a bare `--rng` none.
            match limit_options("", e.rate_limiter.as_ref()).strip_prefix(',') {
                Some(limits) => args.push(format!("--rng={limits}")),
                None => args.push("--rng".into()),
            }
        }
        if self.boot_timer {
            args.push("--boot-timer".into());
        }
        if let Some(b) = &self.bulkhead {
            args.extend(bulkhead_args(b));
        }
        Ok(args)
    }

    /// The core's names of the devices [`Self::run_args`] asks for, each with Firecracker's
    /// name for its metrics: `blk0` → `block_rootfs`, `net0` → `net_eth0`, `vsock0` →
    /// `vsock`, `rng0` → `entropy`. Drives on a file are `--disk`s, named first, in the
    /// order of `run_args`; drives on a vhost-user socket are named after them.
    pub fn metric_keys(&self) -> std::collections::HashMap<String, String> {
        let mut keys = std::collections::HashMap::new();
        for (i, d) in self.drives_in_core_order().into_iter().enumerate() {
            keys.insert(format!("blk{i}"), format!("block_{}", d.drive_id));
        }
        for (i, n) in self.nets.iter().enumerate() {
            keys.insert(format!("net{i}"), format!("net_{}", n.iface_id));
        }
        if self.vsock.is_some() {
            keys.insert("vsock0".into(), "vsock".into());
        }
        if self.entropy.is_some() {
            keys.insert("rng0".into(), "entropy".into());
        }
        keys
    }
}

impl VmConfig {
    /// The drives in the order the core names them `blk0`, `blk1`, …: the root drive first,
    /// drives on a file (`--disk`) before drives on a vhost-user socket.
    fn drives_in_core_order(&self) -> Vec<&Drive> {
        let (roots, others): (Vec<&Drive>, Vec<&Drive>) =
            self.drives.iter().partition(|d| d.is_root_device);
        let ordered: Vec<&Drive> = roots.into_iter().chain(others).collect();
        let (files, sockets): (Vec<&Drive>, Vec<&Drive>) =
            ordered.into_iter().partition(|d| d.path_on_host.is_some());
        files.into_iter().chain(sockets).collect()
    }

    /// The core's name of drive `drive_id` (`blk0`, …), or an error naming the drives.
    pub fn drive_device(&self, drive_id: &str) -> Result<(String, &Drive), String> {
        let drives = self.drives_in_core_order();
        match drives.iter().position(|d| d.drive_id == drive_id) {
            Some(i) => Ok((format!("blk{i}"), drives[i])),
            None => Err(format!(
                "Invalid block device ID {drive_id:?}: this microVM's drives are {}.",
                list(self.drives.iter().map(|d| d.drive_id.as_str()))
            )),
        }
    }

    /// The core's name of interface `iface_id` (`net0`, …), or an error naming the interfaces.
    pub fn net_device(&self, iface_id: &str) -> Result<String, String> {
        match self.nets.iter().position(|n| n.iface_id == iface_id) {
            Some(i) => Ok(format!("net{i}")),
            None => Err(format!(
                "Invalid network interface ID {iface_id:?}: this microVM's interfaces are {}.",
                list(self.nets.iter().map(|n| n.iface_id.as_str()))
            )),
        }
    }
}

/// Names for a message: `a, b` or `none`.
fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Checks a drive's new file (`PATCH /drives`): a path Bulkhead's options can carry, that
/// opens for reading (and writing, unless the drive is read-only).
pub fn check_new_file(path: &str, read_only: bool) -> Result<(), String> {
    check_path("path_on_host", path)?;
    check_opens("The drive's new file", path, !read_only)
}

/// Why a vhost-user drive cannot be limited.
const VHOST_USER_LIMITS: &str = "A drive on a vhost-user socket cannot have a rate_limiter: \
     rate limits are enforced by Bulkhead's own devices, and this drive's backend is another \
     program.";

/// A bucket as Bulkhead's device options write it.
fn spec(b: &TokenBucket) -> BucketSpec {
    BucketSpec {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time_ms: b.refill_time,
    }
}

/// Checks a limiter's buckets against what Bulkhead's devices take.
pub fn check_limiter(what: &str, l: &RateLimiter) -> Result<(), String> {
    for (name, bucket) in [("bandwidth", &l.bandwidth), ("ops", &l.ops)] {
        if let Some(b) = bucket {
            spec(b).check().map_err(|why| format!("Invalid {what}.{name}: {why}."))?;
        }
    }
    Ok(())
}

/// Whether a limiter limits anything (`{}`, or buckets of size or refill time 0, do not).
pub fn limits_something(l: &RateLimiter) -> bool {
    [l.bandwidth, l.ops].iter().flatten().any(|b| !spec(b).is_unlimited())
}

/// The device options of a limiter: `,bw=…,ops=…` (with `prefix` `rx-` or `tx-` for a network
/// interface), only for buckets that limit something; empty for none.
fn limit_options(prefix: &str, limiter: Option<&RateLimiter>) -> String {
    let Some(l) = limiter else { return String::new() };
    let mut out = String::new();
    for (key, bucket) in [("bw", &l.bandwidth), ("ops", &l.ops)] {
        if let Some(b) = bucket.map(|b| spec(&b)).filter(|b| !b.is_unlimited()) {
            out.push_str(&format!(",{prefix}{key}={b}"));
        }
    }
    out
}

/// A limiter as the management API's `device_limits` takes it: a bucket present is set (or,
/// of size or refill time 0, removed), a bucket absent left as it is — Firecracker's PATCH.
pub fn api_buckets(
    l: &RateLimiter,
) -> (Option<Option<bulkhead_api::TokenBucket>>, Option<Option<bulkhead_api::TokenBucket>>) {
    let api = |b: &Option<TokenBucket>| {
        b.map(|b| {
            let s = spec(&b);
            (!s.is_unlimited()).then_some(bulkhead_api::TokenBucket {
                size: s.size,
                one_time_burst: s.one_time_burst,
                refill_time: s.refill_time_ms,
            })
        })
    };
    (api(&l.bandwidth), api(&l.ops))
}

/// The settings given as text, by name.
fn bulkhead_strings(b: &BulkheadSettings) -> Vec<(&'static str, &String)> {
    [
        ("cpu_quota", &b.cpu_quota),
        ("pin", &b.pin),
        ("host_cpus", &b.host_cpus),
        ("memory_limit", &b.memory_limit),
        ("device_cpu_quota", &b.device_cpu_quota),
        ("device_memory_limit", &b.device_memory_limit),
    ]
    .into_iter()
    .filter_map(|(name, v)| Some((name, v.as_ref()?)))
    .collect()
}

/// `bulkhead run`'s options for Bulkhead's own settings, each as `--option=value`.
fn bulkhead_args(b: &BulkheadSettings) -> Vec<String> {
    let word = |v: Value| v.as_str().map(str::to_string).unwrap_or_default();
    let mut args = Vec::new();
    if let Some(mode) = b.mode {
        args.push(format!("--mode={}", word(json!(mode))));
    }
    if let Some(on) = b.restart {
        args.push(format!("--restart={}", if on { "on" } else { "off" }));
    }
    if let Some(n) = b.restart_max {
        args.push(format!("--restart-max={n}"));
    }
    if let Some(s) = b.restart_window_s {
        args.push(format!("--restart-window={s}"));
    }
    if let Some(s) = b.watchdog_s {
        args.push(format!("--watchdog={s}"));
    }
    if let Some(n) = b.cpu_shares {
        args.push(format!("--cpu-shares={n}"));
    }
    for (name, value) in bulkhead_strings(b) {
        args.push(format!("--{}={value}", name.replace('_', "-")));
    }
    if let Some(l) = b.limits {
        args.push(format!("--limits={}", word(json!(l))));
    }
    if let Some(c) = b.core_seccomp {
        args.push(format!("--core-seccomp={}", word(json!(c))));
    }
    args
}

/// rust-vmm's vhost-device-vsock, which serves `/vsock` as a compartment:
/// `$BULKHEAD_VHOST_DEVICE_VSOCK`, else the copy `scripts/install-deps.sh` puts in Bulkhead's
/// cache folder.
pub fn vsock_program() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BULKHEAD_VHOST_DEVICE_VSOCK").filter(|v| !v.is_empty()) {
        return Ok(p.into());
    }
    let dir = bulkhead_linux_guest::dirs::cache_dir().map_err(|e| e.to_string())?;
    let program = dir.join("vhost-device-vsock-0.3.0/bin/vhost-device-vsock");
    if !program.is_file() {
        return Err(format!(
            "A vsock device needs rust-vmm's vhost-device-vsock, not found at {}: run \
             scripts/install-deps.sh or set BULKHEAD_VHOST_DEVICE_VSOCK.",
            program.display()
        ));
    }
    Ok(program)
}

/// `--device` for the vsock: vhost-device-vsock as a compartment that may write the folder
/// of the host-side socket (Firecracker's hybrid vsock: `uds_path`, and `uds_path_PORT` for
/// connections the guest makes).
fn vsock_device(v: &Vsock) -> Result<String, String> {
    let program = vsock_program()?;
    let uds = Path::new(&v.uds_path);
    let uds = if uds.is_absolute() {
        uds.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| e.to_string())?.join(uds)
    };
    let dir = uds.parent().ok_or("uds_path has no folder")?;
    let quote = |p: &Path| {
        shlex::try_quote(&p.to_string_lossy()).map(|q| q.into_owned()).map_err(|e| e.to_string())
    };
    Ok(format!(
        "vsock,rw={},exec={} --guest-cid {} --socket {{socket}} --uds-path {}",
        dir.display(),
        quote(&program)?,
        v.guest_cid,
        quote(&uds)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, path: &str, root: bool) -> Drive {
        serde_json::from_value(json!({
            "drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": false
        }))
        .unwrap()
    }

    #[test]
    fn the_root_drive_comes_first_and_is_named_on_the_command_line() {
        let dir = std::env::temp_dir().join(format!("fc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (k, a, b) = (dir.join("k"), dir.join("a"), dir.join("b"));
        for f in [&k, &a, &b] {
            std::fs::write(f, b"x").unwrap();
        }
        let mut c = VmConfig::default();
        c.put_boot(BootSource {
            kernel_image_path: k.display().to_string(),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: None,
        })
        .unwrap();
        c.put_drive(drive("data", &a.display().to_string(), false)).unwrap();
        c.put_drive(drive("rootfs", &b.display().to_string(), true)).unwrap();
        let e = c.put_drive(drive("other", &a.display().to_string(), true)).unwrap_err();
        assert_eq!(e, "A root block device already exists!");
        c.put_entropy(Entropy::default()).unwrap();
        let args = c.run_args("vm1").unwrap();
        let disks: Vec<_> = args.windows(2).filter(|w| w[0] == "--disk").map(|w| &w[1]).collect();
        assert_eq!(disks[0], &format!("{},format=raw", b.display()));
        assert_eq!(disks[1], &format!("{},format=raw", a.display()));
        let line = args.windows(2).find(|w| w[0] == "--cmdline").unwrap()[1].clone();
        assert_eq!(line, "console=ttyS0 root=/dev/vda rw");
        assert!(args.contains(&"--rng".to_string()) && args.contains(&"128M".to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rate_limiters_become_device_options() {
        let dir = std::env::temp_dir().join(format!("fc-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (k, a) = (dir.join("k"), dir.join("a"));
        for f in [&k, &a] {
            std::fs::write(f, b"x").unwrap();
        }
        let boot = BootSource {
            kernel_image_path: k.display().to_string(),
            boot_args: None,
            initrd_path: None,
        };
        let mut c = VmConfig { boot: Some(boot), ..VmConfig::default() };
        let mut d = drive("rootfs", &a.display().to_string(), true);
        d.rate_limiter = Some(
            serde_json::from_value(json!({
                "bandwidth": { "size": 10485760, "one_time_burst": 4096, "refill_time": 1000 },
                "ops": { "size": 0, "refill_time": 100 }
            }))
            .unwrap(),
        );
        c.put_drive(d).unwrap();
        let net: NetworkInterface = serde_json::from_value(json!({
            "iface_id": "eth0", "host_dev_name": "tap0",
            "rx_rate_limiter": {}, "tx_rate_limiter": { "ops": { "size": 100, "refill_time": 10 } }
        }))
        .unwrap();
        c.put_net(net).unwrap();
        let e: Entropy = serde_json::from_value(
            json!({ "rate_limiter": { "bandwidth": { "size": 4096, "refill_time": 100 } } }),
        )
        .unwrap();
        c.put_entropy(e).unwrap();
        let args = c.run_args("vm1").unwrap();
        let value = |flag: &str| args.windows(2).find(|w| w[0] == flag).unwrap()[1].clone();
        // A bucket of size 0 limits nothing, and `{}` (Kata's) nothing either.
        assert_eq!(value("--disk"), format!("{},format=raw,bw=10485760@1000+4096", a.display()));
        assert_eq!(value("--net"), "tap=tap0,tx-ops=100@10");
        assert!(args.contains(&"--rng=bw=4096@100".to_string()), "{args:?}");
        let mut big = drive("data", &a.display().to_string(), false);
        big.rate_limiter = Some(
            serde_json::from_value(json!({ "ops": { "size": 1, "refill_time": 3_600_001 } }))
                .unwrap(),
        );
        assert!(c.put_drive(big).unwrap_err().contains("rate_limiter.ops"));
        let mut socket: Drive = serde_json::from_value(json!({
            "drive_id": "vu", "socket": "/tmp/vu.sock", "is_root_device": false,
            "rate_limiter": { "ops": { "size": 1, "refill_time": 1 } }
        }))
        .unwrap();
        assert!(c.put_drive(socket.clone()).unwrap_err().contains("vhost-user"));
        socket.rate_limiter = Some(RateLimiter::default());
        c.put_drive(socket).unwrap();
        assert_eq!(c.drive_device("vu").unwrap().0, "blk1");
        assert!(c.drive_device("nope").unwrap_err().contains("rootfs, vu"));
        assert_eq!(c.net_device("eth0").unwrap(), "net0");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bulkheads_own_settings_become_run_options() {
        let boot =
            BootSource { kernel_image_path: "/k".into(), boot_args: None, initrd_path: None };
        let mut c = VmConfig { boot: Some(boot), ..VmConfig::default() };
        let b: BulkheadSettings = serde_json::from_value(json!({
            "mode": "monolithic", "restart": false, "watchdog_s": 0, "cpu_quota": "50%",
            "limits": "best-effort", "core_seccomp": "log"
        }))
        .unwrap();
        c.put_bulkhead(b).unwrap();
        let args = c.run_args("vm1").unwrap();
        for a in [
            "--mode=monolithic",
            "--restart=off",
            "--watchdog=0",
            "--cpu-quota=50%",
            "--limits=best-effort",
            "--core-seccomp=log",
        ] {
            assert!(args.iter().any(|x| x == a), "{a} not in {args:?}");
        }
        assert_eq!(c.full()["bulkhead"]["mode"], "monolithic");
        let bad = BulkheadSettings { pin: Some("--net tap0".into()), ..Default::default() };
        assert!(c.put_bulkhead(bad).unwrap_err().contains("Invalid pin"));
        let bad = BulkheadSettings { restart_window_s: Some(0.0), ..Default::default() };
        assert!(c.put_bulkhead(bad).is_err());
    }

    #[test]
    fn what_bulkhead_cannot_do_is_refused_by_name() {
        let mut c = VmConfig::default();
        let mut m = MachineConfig { smt: true, ..MachineConfig::default() };
        assert!(c.put_machine(m.clone()).unwrap_err().contains("smt"));
        m.smt = false;
        m.vcpu_count = 33;
        assert!(c.put_machine(m).unwrap_err().contains("1 to 32"));
        let e = c.run_args("x").unwrap_err();
        assert!(e.contains("without kernel configuration"), "{e}");
        assert!(check_id("drive_id", "a/b").is_err() && check_id("drive_id", "rootfs_1").is_ok());
        assert!(check_path("path_on_host", "/a,b").unwrap_err().contains("comma"));
    }
}
