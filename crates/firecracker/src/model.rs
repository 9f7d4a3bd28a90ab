//! The request and response bodies of Firecracker's API, as its OpenAPI document defines
//! them (see `docs/FIRECRACKER.md` for the version). Every type refuses fields it does not
//! know, as Firecracker does: a misspelt field is an error, not a silent default.
//!
//! Fields Bulkhead cannot honour yet are still parsed (so that the answer names them rather
//! than calling them unknown) and refused in [`crate::vm`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /machine-config`: vcpu_count and mem_size_mib are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
}

impl Default for MachineConfig {
    /// Firecracker's defaults: one vCPU, 128 MiB.
    fn default() -> MachineConfig {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
        }
    }
}

/// `PATCH /machine-config`: any subset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub cpu_template: Option<String>,
    pub huge_pages: Option<String>,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    pub is_root_device: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// A drive's cache strategy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum CacheType {
    Unsafe,
    Writeback,
}

/// A drive's I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum IoEngine {
    Sync,
    Async,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PATCH /drives/{drive_id}`, after boot: a new file, new rate limits, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PATCH /network-interfaces/{iface_id}`, after boot: new rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    pub iface_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// A rate limiter: a bucket of bytes and a bucket of operations, either absent (in a `PUT`:
/// no limit; in a `PATCH`: left as it is). `{}` limits nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// A token bucket: `size` tokens, refilled from empty in `refill_time` ms, and
/// `one_time_burst` more once. A size or refill time of 0 limits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
    /// Deprecated in Firecracker, still accepted there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PUT /entropy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub metrics_path: String,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub action_type: ActionType,
}

/// The actions of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm`: pause or resume the microVM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateChange {
    pub state: VmState,
}

/// The states `PATCH /vm` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// Bulkhead's own settings, which Firecracker's API has no place for: `PUT /bulkhead` and
/// the config file's `bulkhead` section. Each is one of `bulkhead run`'s options (named in
/// its comment); what is not given keeps `bulkhead run`'s default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkheadSettings {
    /// `--mode`: device backends in compartments or on the core's threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// `--restart on|off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<bool>,
    /// `--restart-max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_max: Option<u32>,
    /// `--restart-window`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_window_s: Option<f64>,
    /// `--watchdog`, in seconds (0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog_s: Option<f64>,
    /// `--cpu-quota` (`50%`, `0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<String>,
    /// `--pin` (`0=1,1=0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// `--host-cpus` (`0-1,3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpus: Option<String>,
    /// `--cpu-shares` (2 to 262144).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    /// `--memory-limit` (`1G`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// `--device-cpu-quota` (`100%`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_cpu_quota: Option<String>,
    /// `--device-memory-limit` (`512M`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory_limit: Option<String>,
    /// `--limits fail|best-effort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Strictness>,
    /// `--core-seccomp on|log|off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_seccomp: Option<CoreSeccomp>,
}

/// `bulkhead run --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Microkernel,
    Monolithic,
}

/// `bulkhead run --limits`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strictness {
    Fail,
    BestEffort,
}

/// `bulkhead run --core-seccomp`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoreSeccomp {
    On,
    Log,
    Off,
}

/// Firecracker's JSON configuration file (`--config-file`): the bodies of the `PUT`
/// requests, by resource. The sections Bulkhead does not implement are parsed so that the
/// error names them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "machine-config")]
    pub machine_config: Option<MachineConfig>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    pub vsock: Option<Vsock>,
    pub entropy: Option<Entropy>,
    pub logger: Option<Logger>,
    pub metrics: Option<Metrics>,
    pub balloon: Option<Value>,
    #[serde(rename = "mmds-config")]
    pub mmds_config: Option<Value>,
    #[serde(rename = "cpu-config")]
    pub cpu_config: Option<Value>,
    pub pmem: Option<Value>,
    #[serde(rename = "memory-hotplug")]
    pub memory_hotplug: Option<Value>,
    /// Bulkhead's own section.
    pub bulkhead: Option<BulkheadSettings>,
}

/// Parses a request body into `T`, or says what to fix, as a fault message.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.is_empty() {
        return Err("The request has no body: send the JSON object this resource takes.".into());
    }
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "The request body is not valid JSON"
            }
            _ => "The request body does not match this resource's schema",
        };
        format!("{what}: {e}.")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_missing_and_mistyped_fields_are_named() {
        let e = parse::<BootSource>(br#"{"kernel_image_path":"/k","bootargs":"x"}"#).unwrap_err();
        assert!(e.contains("unknown field `bootargs`"), "{e}");
        let e = parse::<MachineConfig>(br#"{"vcpu_count":1}"#).unwrap_err();
        assert!(e.contains("missing field `mem_size_mib`"), "{e}");
        let e = parse::<MachineConfig>(br#"{"vcpu_count":"2","mem_size_mib":1}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = parse::<Action>(br#"{"action_type":"Reboot"}"#).unwrap_err();
        assert!(e.contains("unknown variant `Reboot`"), "{e}");
        let e = parse::<Action>(b"{").unwrap_err();
        assert!(e.starts_with("The request body is not valid JSON"), "{e}");
        assert!(parse::<Entropy>(b"").is_err());
    }

    #[test]
    fn a_config_file_reads_its_sections() {
        let c: ConfigFile = serde_json::from_str(
            r#"{"boot-source":{"kernel_image_path":"/k","boot_args":"a"},
                "drives":[{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"is_read_only":false}],
                "machine-config":{"vcpu_count":2,"mem_size_mib":256},
                "entropy":{}}"#,
        )
        .unwrap();
        assert_eq!(c.drives.len(), 1);
        assert_eq!(c.machine_config.unwrap().vcpu_count, 2);
        assert!(serde_json::from_str::<ConfigFile>(r#"{"boot_source":{}}"#).is_err());
        let c: ConfigFile =
            serde_json::from_str(r#"{"bulkhead":{"mode":"monolithic","limits":"best-effort"}}"#)
                .unwrap();
        let b = c.bulkhead.unwrap();
        assert_eq!((b.mode, b.limits), (Some(Mode::Monolithic), Some(Strictness::BestEffort)));
        let e = parse::<BulkheadSettings>(br#"{"mode":"monolithic","cgroup":"x"}"#).unwrap_err();
        assert!(e.contains("unknown field `cgroup`"), "{e}");
    }
}
