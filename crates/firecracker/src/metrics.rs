//! Metrics as Firecracker writes them: one JSON object per line, on `FlushMetrics` and every
//! 60 s once the microVM runs, to the file or named pipe of `PUT /metrics`.
//!
//! The groups and names are Firecracker's (its `src/vmm/src/logger/metrics.rs`) where
//! Bulkhead has the very counter Firecracker names; where it has none, the name is absent,
//! never a made-up 0. What Bulkhead counts that Firecracker does not (restarts, device
//! states, requests of any kind per device) is under `bulkhead`, a group Firecracker does not
//! have. As in Firecracker, counts of events (its `SharedIncMetric`) are what happened since
//! the last line, and values (its `SharedStoreMetric`) are written as they stand. The names,
//! and which are which, are listed in docs/FIRECRACKER.md.
//!
//! A line is written with one `write(2)`: on a named pipe a line under `PIPE_BUF` (4096
//! bytes) arrives whole or not at all, so a reader never sees half of one.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use serde_json::{json, Map, Value};

/// What the API requests counted: Firecracker's groups and, in each, its names for the
/// endpoints Bulkhead implements.
#[derive(Debug, Default)]
pub struct ApiCounts {
    /// `(group, name)` → events since the last line.
    counts: BTreeMap<(&'static str, &'static str), u64>,
}

const GET: &str = "get_api_requests";
const PUT: &str = "put_api_requests";
const PATCH: &str = "patch_api_requests";

/// Firecracker's counter for a request, and its counter of failures where it has one.
fn counter(
    method: &str,
    segments: &[&str],
) -> Option<(&'static str, &'static str, Option<&'static str>)> {
    let (group, count, fails) = match (method, segments) {
        ("GET", []) => (GET, "instance_info_count", None),
        ("GET", ["machine-config"]) => (GET, "machine_cfg_count", None),
        ("GET", ["version"]) => (GET, "vmm_version_count", None),
        ("PUT", ["actions"]) => (PUT, "actions_count", Some("actions_fails")),
        ("PUT", ["boot-source"]) => (PUT, "boot_source_count", Some("boot_source_fails")),
        ("PUT", ["drives", _]) => (PUT, "drive_count", Some("drive_fails")),
        ("PUT", ["logger"]) => (PUT, "logger_count", Some("logger_fails")),
        ("PUT", ["machine-config"]) => (PUT, "machine_cfg_count", Some("machine_cfg_fails")),
        ("PUT", ["metrics"]) => (PUT, "metrics_count", Some("metrics_fails")),
        ("PUT", ["network-interfaces", _]) => (PUT, "network_count", Some("network_fails")),
        ("PUT", ["vsock"]) => (PUT, "vsock_count", Some("vsock_fails")),
        ("PATCH", ["drives", _]) => (PATCH, "drive_count", Some("drive_fails")),
        ("PATCH", ["machine-config"]) => (PATCH, "machine_cfg_count", Some("machine_cfg_fails")),
        ("PATCH", ["network-interfaces", _]) => (PATCH, "network_count", Some("network_fails")),
        _ => return None,
    };
    Some((group, count, fails))
}

impl ApiCounts {
    /// Every counter Bulkhead keeps, at 0: they are written even when nothing happened.
    pub fn new() -> ApiCounts {
        let mut counts = BTreeMap::new();
        let examples: [(&str, &[&str]); 14] = [
            ("GET", &[]),
            ("GET", &["machine-config"]),
            ("GET", &["version"]),
            ("PUT", &["actions"]),
            ("PUT", &["boot-source"]),
            ("PUT", &["drives", "x"]),
            ("PUT", &["logger"]),
            ("PUT", &["machine-config"]),
            ("PUT", &["metrics"]),
            ("PUT", &["network-interfaces", "x"]),
            ("PUT", &["vsock"]),
            ("PATCH", &["drives", "x"]),
            ("PATCH", &["machine-config"]),
            ("PATCH", &["network-interfaces", "x"]),
        ];
        for (method, segments) in examples {
            let (group, count, fails) = counter(method, segments).expect("a counted request");
            counts.insert((group, count), 0);
            if let Some(fails) = fails {
                counts.insert((group, fails), 0);
            }
        }
        ApiCounts { counts }
    }

    /// Counts one request, `failed` if it was answered with an error.
    pub fn record(&mut self, method: &str, segments: &[&str], failed: bool) {
        let Some((group, count, fails)) = counter(method, segments) else { return };
        *self.counts.entry((group, count)).or_default() += 1;
        if let (true, Some(fails)) = (failed, fails) {
            *self.counts.entry((group, fails)).or_default() += 1;
        }
    }

    /// The counts since the last call, by group, and starts counting again.
    fn take(&mut self, line: &mut Map<String, Value>) {
        for ((group, name), n) in self.counts.iter_mut() {
            let group = line.entry(*group).or_insert_with(|| json!({}));
            group[*name] = json!(*n);
            *n = 0;
        }
    }
}

/// The front's start and, once the API listens, how long that took: Firecracker's
/// `api_server.process_startup_time_us` and `process_startup_time_cpu_us`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Startup {
    pub wall_us: u64,
    pub cpu_us: u64,
}

static STARTUP: std::sync::OnceLock<Startup> = std::sync::OnceLock::new();

/// Records the front's startup, once its API listens.
pub fn set_startup(s: Startup) {
    let _ = STARTUP.set(s);
}

/// The front's startup, if its API listens.
pub fn startup() -> Option<Startup> {
    STARTUP.get().copied()
}

/// CPU time this process has used, in microseconds.
pub fn process_cpu_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000) + ts.tv_nsec as u64 / 1_000
}

/// One device as the core reports it, for a line.
#[derive(Debug, Clone)]
pub struct DeviceReading {
    /// The core's name: `blk0`, `rng0`.
    pub device: String,
    pub state: String,
    pub restarts: u32,
    pub requests: u64,
}

/// What the core said when asked for its status.
#[derive(Debug, Clone)]
pub enum CoreReading {
    /// The microVM is not started.
    NotStarted,
    /// The core answered.
    Running { uptime_s: u64, devices: Vec<DeviceReading> },
    /// The core did not answer: why.
    Silent(String),
}

/// The metrics file and what a line needs to remember from the last: the core's totals, so
/// that its counts can be written as deltas.
pub struct MetricsFile {
    file: std::fs::File,
    /// Device → (requests, restarts) at the last line.
    last: HashMap<String, (u64, u32)>,
    /// Lines a full pipe could not take (Firecracker's `logger.missed_metrics_count`).
    missed: u64,
    /// Lines that could not be written otherwise (`logger.metrics_fails`).
    fails: u64,
}

impl MetricsFile {
    pub fn new(file: std::fs::File) -> MetricsFile {
        MetricsFile { file, last: HashMap::new(), missed: 0, fails: 0 }
    }

    /// Builds one line. `keys` maps the core's device names to Firecracker's (`blk0` →
    /// `block_rootfs`).
    pub fn line(
        &mut self,
        api: &mut ApiCounts,
        startup: Option<Startup>,
        core: &CoreReading,
        keys: &HashMap<String, String>,
    ) -> Value {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut line = Map::new();
        line.insert("utc_timestamp_ms".into(), json!(ms));
        if let Some(s) = startup {
            line.insert(
                "api_server".into(),
                json!({ "process_startup_time_us": s.wall_us,
                        "process_startup_time_cpu_us": s.cpu_us }),
            );
        }
        api.take(&mut line);
        line.insert(
            "logger".into(),
            json!({
                "missed_metrics_count": std::mem::take(&mut self.missed),
                "metrics_fails": std::mem::take(&mut self.fails),
                "missed_log_count": crate::log::take_missed(),
            }),
        );
        let bulkhead = self.bulkhead_group(core, keys, &mut line);
        line.insert("bulkhead".into(), bulkhead);
        Value::Object(line)
    }

    /// The `bulkhead` group; fills Firecracker's `entropy` group on the way, the one device
    /// counter of Firecracker's that the core keeps too.
    fn bulkhead_group(
        &mut self,
        core: &CoreReading,
        keys: &HashMap<String, String>,
        line: &mut Map<String, Value>,
    ) -> Value {
        let (uptime_s, readings) = match core {
            CoreReading::NotStarted => return json!({ "vm_state": "Not started" }),
            CoreReading::Silent(why) => return json!({ "vm_state": "Running", "error": why }),
            CoreReading::Running { uptime_s, devices } => (uptime_s, devices),
        };
        let mut devices = Map::new();
        for d in readings {
            let (requests, restarts) = self.last.get(&d.device).copied().unwrap_or((0, 0));
            let new_requests = d.requests.saturating_sub(requests);
            let key = keys.get(&d.device).cloned().unwrap_or_else(|| d.device.clone());
            if key == "entropy" {
                // A request of the entropy device is one descriptor chain served: what
                // Firecracker's entropy_event_count counts.
                line.insert("entropy".into(), json!({ "entropy_event_count": new_requests }));
            }
            devices.insert(
                key,
                json!({ "device": d.device, "state": d.state,
                        "restarts": d.restarts.saturating_sub(restarts),
                        "requests": new_requests }),
            );
            self.last.insert(d.device.clone(), (d.requests, d.restarts));
        }
        json!({ "vm_state": "Running", "uptime_s": uptime_s, "devices": devices })
    }

    /// Writes `line` with one `write(2)`. A pipe that is full loses the line (counted in
    /// `missed_metrics_count`), as in Firecracker; any other failure is an error.
    pub fn write(&mut self, line: &Value) -> Result<(), String> {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        match self.file.write(&bytes) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => {
                self.fails += 1;
                Err(format!("Cannot write the metrics file: {n} of {} bytes written.", bytes.len()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.missed += 1;
                Ok(())
            }
            Err(e) => {
                self.fails += 1;
                Err(format!("Cannot write the metrics file: {e}."))
            }
        }
    }
}

/// The core's status over its control socket (as `bulkhead ctl ID status`).
pub fn read_core(id: &str) -> CoreReading {
    use bulkhead_api::{Payload, Reply, Request};
    let status = match bulkhead_ctl::request(id, &Request::Status) {
        Ok(Reply::Ok { result: Payload::Status(status) }) => status,
        Ok(Reply::Error { message }) => return CoreReading::Silent(message),
        Ok(other) => return CoreReading::Silent(format!("unexpected reply {other:?}")),
        Err(e) => return CoreReading::Silent(e.to_string()),
    };
    let devices = status
        .devices
        .iter()
        .map(|d| DeviceReading {
            device: d.id.clone(),
            state: serde_json::to_value(d.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{:?}", d.state)),
            restarts: d.restarts,
            requests: d.requests,
        })
        .collect();
    CoreReading::Running { uptime_s: status.uptime_s, devices }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(requests: u64, restarts: u32) -> CoreReading {
        CoreReading::Running {
            uptime_s: 3,
            devices: vec![
                DeviceReading {
                    device: "blk0".into(),
                    state: "running".into(),
                    restarts,
                    requests,
                },
                DeviceReading {
                    device: "rng0".into(),
                    state: "running".into(),
                    restarts: 0,
                    requests,
                },
            ],
        }
    }

    #[test]
    fn counts_are_deltas_values_are_kept_and_unknown_counters_absent() {
        let path = std::env::temp_dir().join(format!("fc-metrics-{}", std::process::id()));
        let mut m = MetricsFile::new(crate::log::open_output(path.to_str().unwrap()).unwrap());
        let mut api = ApiCounts::new();
        api.record("PUT", &["drives", "rootfs"], false);
        api.record("PUT", &["drives", "rootfs"], true);
        api.record("GET", &["vm", "config"], false);
        let keys: HashMap<_, _> = [
            ("blk0".to_string(), "block_rootfs".to_string()),
            ("rng0".to_string(), "entropy".to_string()),
        ]
        .into();
        let startup = Some(Startup { wall_us: 1500, cpu_us: 900 });
        let first = m.line(&mut api, startup, &reading(10, 1), &keys);
        assert_eq!(first["put_api_requests"]["drive_count"], 2);
        assert_eq!(first["put_api_requests"]["drive_fails"], 1);
        assert_eq!(first["get_api_requests"]["instance_info_count"], 0);
        assert_eq!(first["api_server"]["process_startup_time_us"], 1500);
        assert_eq!(first["entropy"]["entropy_event_count"], 10);
        assert_eq!(first["bulkhead"]["devices"]["block_rootfs"]["restarts"], 1);
        // Firecracker's block and vmm counters are none that Bulkhead keeps: absent.
        assert!(first.get("block").is_none() && first.get("block_rootfs").is_none());
        assert!(first.get("vmm").is_none());
        let second = m.line(&mut api, startup, &reading(15, 1), &keys);
        assert_eq!(second["put_api_requests"]["drive_count"], 0);
        assert_eq!(second["api_server"]["process_startup_time_us"], 1500);
        assert_eq!(second["entropy"]["entropy_event_count"], 5);
        assert_eq!(second["bulkhead"]["devices"]["block_rootfs"]["requests"], 5);
        assert_eq!(second["bulkhead"]["devices"]["block_rootfs"]["restarts"], 0);
        m.write(&second).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1 && text.len() < 4096, "{text}");
        std::fs::remove_file(&path).unwrap();
    }
}
