//! The API's resources: each request routed to what it configures or does, in the state the
//! microVM is in (not started, or running). Before `InstanceStart` the resources only
//! collect configuration; `InstanceStart` hands it to [`Launch`], which starts the VMM.
//! After that, configuring is refused as Firecracker refuses it.

use std::collections::HashMap;
use std::sync::mpsc::Sender;

use serde_json::json;

use bulkhead_api::{Payload, RateLimits, Request};

use crate::config::{self, api_buckets, check_id, check_limiter, not_implemented, VmConfig};
use crate::http::Response;
use crate::log::{self, Level};
use crate::metrics::{self, ApiCounts, CoreReading, MetricsFile};
use crate::model::{self, ActionType};

/// Starts the VMM with the arguments of `bulkhead run`; the error says why it could not.
pub type Launch = Box<dyn FnMut(&[String]) -> Result<(), String> + Send>;

/// Firecracker's answer to a `PATCH` before boot.
const BEFORE_BOOT: &str = "The requested operation is not supported before starting the microVM.";

/// Firecracker's answer to configuring after boot.
const AFTER_BOOT: &str = "The requested operation is not supported after starting the microVM.";

/// One microVM, as the API sees it.
pub struct Microvm {
    id: String,
    pub config: VmConfig,
    started: bool,
    /// Paused through `PATCH /vm`.
    paused: bool,
    launch: Launch,
    metrics: Option<MetricsFile>,
    api: ApiCounts,
    /// The core's device names → Firecracker's metric groups, once started.
    device_keys: HashMap<String, String>,
    /// Told once the microVM runs: the periodic metrics start then.
    pub on_start: Option<Sender<()>>,
}

impl Microvm {
    pub fn new(id: String, launch: Launch) -> Microvm {
        Microvm {
            id,
            config: VmConfig::default(),
            started: false,
            paused: false,
            launch,
            metrics: None,
            api: ApiCounts::new(),
            device_keys: HashMap::new(),
            on_start: None,
        }
    }

    /// Answers one request.
    pub fn handle(&mut self, method: &str, path: &str, body: &[u8]) -> Response {
        let response = match self.route(method, path, body) {
            Ok(r) => r,
            Err(message) => Response::bad_request(message),
        };
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        self.api.record(method, &segments, response.status >= 400);
        if response.status >= 400 {
            log::log(
                Level::Warning,
                &format!("{method} {path}: {}", response.fault_message().unwrap_or("")),
            );
        } else {
            log::log(Level::Debug, &format!("{method} {path}: {}", response.status));
        }
        response
    }

    fn route(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Response, String> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let bad_path = || format!("Invalid request method and/or path: {method} {path}.");
        match (method, segments.as_slice()) {
            ("GET", []) => Ok(Response::ok(json!({
                "app_name": "bulkhead",
                "id": self.id,
                "state": match (self.started, self.paused) {
                    (false, _) => "Not started",
                    (true, false) => "Running",
                    (true, true) => "Paused",
                },
                "vmm_version": env!("CARGO_PKG_VERSION"),
            }))),
            ("GET", ["version"]) => {
                Ok(Response::ok(json!({ "firecracker_version": crate::API_VERSION })))
            }
            ("GET", ["machine-config"]) => Ok(Response::ok(json!(self.config.machine))),
            ("GET", ["vm", "config"]) => Ok(Response::ok(self.config.full())),
            ("PUT", ["actions"]) => self.action(model::parse(body)?),
            ("PUT", ["machine-config"]) => {
                self.before_boot()?;
                self.config.put_machine(model::parse(body)?).map(|_| Response::no_content())
            }
            ("PATCH", ["machine-config"]) => {
                self.before_boot()?;
                self.config.patch_machine(model::parse(body)?).map(|_| Response::no_content())
            }
            ("PUT", ["boot-source"]) => {
                self.before_boot()?;
                self.config.put_boot(model::parse(body)?).map(|_| Response::no_content())
            }
            ("PUT", ["drives", id]) => {
                self.before_boot()?;
                check_id("drive_id", id)?;
                let drive: model::Drive = model::parse(body)?;
                same_id(id, &drive.drive_id)?;
                self.config.put_drive(drive).map(|_| Response::no_content())
            }
            ("PATCH", ["drives", id]) => {
                self.after_boot()?;
                let patch: model::PartialDrive = model::parse(body)?;
                same_id(id, &patch.drive_id)?;
                self.patch_drive(patch).map(|_| Response::no_content())
            }
            ("PUT", ["network-interfaces", id]) => {
                self.before_boot()?;
                check_id("iface_id", id)?;
                let net: model::NetworkInterface = model::parse(body)?;
                same_id(id, &net.iface_id)?;
                self.config.put_net(net).map(|_| Response::no_content())
            }
            ("PATCH", ["network-interfaces", id]) => {
                self.after_boot()?;
                let patch: model::PartialNetworkInterface = model::parse(body)?;
                same_id(id, &patch.iface_id)?;
                self.patch_net(patch).map(|_| Response::no_content())
            }
            ("PUT", ["vsock"]) => {
                self.before_boot()?;
                self.config.put_vsock(model::parse(body)?).map(|_| Response::no_content())
            }
            ("PUT", ["entropy"]) => {
                self.before_boot()?;
                self.config.put_entropy(model::parse(body)?).map(|_| Response::no_content())
            }
            ("PUT", ["bulkhead"]) => {
                self.before_boot()?;
                self.config.put_bulkhead(model::parse(body)?).map(|_| Response::no_content())
            }
            ("PUT", ["logger"]) => self.put_logger(model::parse(body)?),
            ("PUT", ["metrics"]) => self.put_metrics(model::parse(body)?),
            (_, ["balloon", ..]) => Err(not_implemented("The balloon device (/balloon)")),
            (_, ["mmds", ..]) => Err(not_implemented("MMDS (/mmds)")),
            (_, ["cpu-config"]) => Err(not_implemented("CPU templates (/cpu-config)")),
            (_, ["snapshot", ..]) => Err(not_implemented("Snapshots (/snapshot)")),
            ("PATCH", ["vm"]) => {
                self.after_boot()?;
                let change: model::VmStateChange = model::parse(body)?;
                let request = match change.state {
                    model::VmState::Paused => Request::Pause,
                    model::VmState::Resumed => Request::Resume,
                };
                self.ask_core(&request)?;
                self.paused = change.state == model::VmState::Paused;
                Ok(Response::no_content())
            }
            (_, ["pmem", ..]) => Err(not_implemented("virtio-pmem (/pmem)")),
            (_, ["hotplug", ..]) => Err(not_implemented("Memory hot-plug (/hotplug)")),
            (_, ["serial"]) => Err(not_implemented("Serial console configuration (/serial)")),
            _ => Err(bad_path()),
        }
    }

    fn after_boot(&self) -> Result<(), String> {
        if !self.started {
            return Err(BEFORE_BOOT.into());
        }
        Ok(())
    }

    /// `PATCH /drives/{id}`: a new file (the core serves the drive from it, and tells the
    /// guest its capacity) and new rate limits, in that order, as Firecracker applies them.
    fn patch_drive(&mut self, patch: model::PartialDrive) -> Result<(), String> {
        let (device, drive) = self.config.drive_device(&patch.drive_id)?;
        let unable = |why: String| format!("Unable to patch the block device: {why}");
        if drive.socket.is_some() {
            return Err(unable(format!(
                "{} is a vhost-user drive; its file and rate are its backend's.",
                patch.drive_id
            )));
        }
        let read_only = drive.is_read_only.unwrap_or(false);
        if let Some(limiter) = &patch.rate_limiter {
            check_limiter("rate_limiter", limiter).map_err(unable)?;
        }
        if let Some(path) = &patch.path_on_host {
            config::check_new_file(path, read_only).map_err(unable)?;
            let path = std::path::absolute(path).map_err(|e| unable(e.to_string()))?;
            let request = Request::DiskReplace {
                id: device.clone(),
                path,
                format: Some("raw".into()),
                read_only: None,
            };
            self.ask_core(&request).map_err(unable)?;
            let drive = self.config.drives.iter_mut().find(|d| d.drive_id == patch.drive_id);
            if let Some(drive) = drive {
                drive.path_on_host = patch.path_on_host.clone();
            }
        }
        if let Some(limiter) = patch.rate_limiter {
            let (bandwidth, ops) = api_buckets(&limiter);
            let limits = RateLimits { bandwidth, ops, ..RateLimits::default() };
            self.ask_core(&Request::DeviceLimits { id: device, limits }).map_err(unable)?;
            let drive = self.config.drives.iter_mut().find(|d| d.drive_id == patch.drive_id);
            if let Some(drive) = drive {
                drive.rate_limiter = Some(merged(drive.rate_limiter, limiter));
            }
        }
        Ok(())
    }

    /// `PATCH /network-interfaces/{id}`: new rate limits for what the guest receives (rx)
    /// and sends (tx).
    fn patch_net(&mut self, patch: model::PartialNetworkInterface) -> Result<(), String> {
        let device = self.config.net_device(&patch.iface_id)?;
        let unable = |why: String| format!("Unable to patch the network interface: {why}");
        let mut limits = RateLimits::default();
        if let Some(rx) = &patch.rx_rate_limiter {
            check_limiter("rx_rate_limiter", rx).map_err(unable)?;
            (limits.rx_bandwidth, limits.rx_ops) = api_buckets(rx);
        }
        if let Some(tx) = &patch.tx_rate_limiter {
            check_limiter("tx_rate_limiter", tx).map_err(unable)?;
            (limits.tx_bandwidth, limits.tx_ops) = api_buckets(tx);
        }
        self.ask_core(&Request::DeviceLimits { id: device, limits }).map_err(unable)?;
        if let Some(n) = self.config.nets.iter_mut().find(|n| n.iface_id == patch.iface_id) {
            if let Some(rx) = patch.rx_rate_limiter {
                n.rx_rate_limiter = Some(merged(n.rx_rate_limiter, rx));
            }
            if let Some(tx) = patch.tx_rate_limiter {
                n.tx_rate_limiter = Some(merged(n.tx_rate_limiter, tx));
            }
        }
        Ok(())
    }

    /// Asks the core over its control socket (as `bulkhead ctl` does); the error is the
    /// core's message, or why it could not be asked.
    fn ask_core(&self, request: &Request) -> Result<Payload, String> {
        match bulkhead_ctl::request(&self.id, request) {
            Ok(reply) => reply.into_result(),
            Err(e) => Err(bulkhead_ctl::describe(&e)),
        }
    }

    fn before_boot(&self) -> Result<(), String> {
        if self.started {
            return Err(AFTER_BOOT.into());
        }
        Ok(())
    }

    fn action(&mut self, action: model::Action) -> Result<Response, String> {
        match action.action_type {
            ActionType::InstanceStart => {
                self.before_boot()?;
                let args = self.config.run_args(&self.id)?;
                log::log(Level::Info, &format!("InstanceStart: bulkhead {}", args.join(" ")));
                (self.launch)(&args)?;
                self.started = true;
                self.device_keys = self.config.metric_keys();
                if let Some(tx) = self.on_start.take() {
                    let _ = tx.send(());
                }
                Ok(Response::no_content())
            }
            // Firecracker's: Ctrl-Alt-Del pressed on the i8042 keyboard, answered at once (the
            // guest may ignore the keys; a Linux guest reboots, which ends the VM and this
            // process with the reboot exit code).
            ActionType::SendCtrlAltDel => {
                self.after_boot()?;
                self.ask_core(&Request::CtrlAltDel)
                    .map_err(|why| format!("Cannot send CTRL+ALT+DEL: {why}"))?;
                Ok(Response::no_content())
            }
            ActionType::FlushMetrics => self.flush_metrics().map(|_| Response::no_content()),
        }
    }

    fn put_logger(&mut self, l: model::Logger) -> Result<Response, String> {
        // show_log_origin is accepted (firecracker-containerd sets it) and prints nothing more.
        if l.module.is_some() {
            return Err(not_implemented("The logger's module filter"));
        }
        let level = l.level.as_deref().map(Level::parse).transpose()?;
        log::configure(level, l.log_path.as_deref(), l.show_level)?;
        self.config.logger = Some(l);
        Ok(Response::no_content())
    }

    fn put_metrics(&mut self, m: model::Metrics) -> Result<Response, String> {
        if self.metrics.is_some() {
            return Err("Reinitialization of metrics not allowed.".into());
        }
        let file = log::open_output(&m.metrics_path)
            .map_err(|e| format!("Cannot open the metrics file {}: {e}.", m.metrics_path))?;
        self.metrics = Some(MetricsFile::new(file));
        self.config.metrics = Some(m);
        Ok(Response::no_content())
    }

    /// Writes one line of metrics (see [`crate::metrics`]): what this front counts and, once
    /// the VM runs, what the core counts (asked on its control socket, as `bulkhead ctl ID
    /// status` does).
    pub fn flush_metrics(&mut self) -> Result<(), String> {
        if self.metrics.is_none() {
            return Err("The metrics system is not initialized: PUT /metrics first.".into());
        }
        let core =
            if self.started { metrics::read_core(&self.id) } else { CoreReading::NotStarted };
        let file = self.metrics.as_mut().expect("checked above");
        let line = file.line(&mut self.api, metrics::startup(), &core, &self.device_keys);
        file.write(&line)
    }

    /// The periodic flush: a line if `/metrics` is configured, nothing otherwise.
    pub fn periodic_flush(&mut self) {
        if self.metrics.is_some() {
            if let Err(e) = self.flush_metrics() {
                log::log(Level::Warning, &format!("periodic metrics: {e}"));
            }
        }
    }
}

/// A limiter after a `PATCH`: the buckets it names replace the old ones.
fn merged(old: Option<model::RateLimiter>, patch: model::RateLimiter) -> model::RateLimiter {
    let old = old.unwrap_or_default();
    model::RateLimiter { bandwidth: patch.bandwidth.or(old.bandwidth), ops: patch.ops.or(old.ops) }
}

fn same_id(path_id: &str, body_id: &str) -> Result<(), String> {
    if path_id != body_id {
        return Err("The id from the path does not match the id from the body!".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn vm() -> (Microvm, Arc<Mutex<Vec<Vec<String>>>>) {
        let launched = Arc::new(Mutex::new(Vec::new()));
        let seen = launched.clone();
        let launch: Launch = Box::new(move |args| {
            seen.lock().unwrap().push(args.to_vec());
            Ok(())
        });
        (Microvm::new("vm1".into(), launch), launched)
    }

    #[test]
    fn start_once_then_configuration_is_refused() {
        let (mut vm, launched) = vm();
        let start = br#"{"action_type":"InstanceStart"}"#;
        let r = vm.handle("PUT", "/actions", start);
        assert!(r.fault_message().unwrap().contains("kernel configuration"), "{r:?}");
        let kernel = std::env::current_exe().unwrap();
        let body = json!({ "kernel_image_path": kernel, "boot_args": "a" }).to_string();
        assert_eq!(vm.handle("PUT", "/boot-source", body.as_bytes()).status, 204);
        let m = br#"{"vcpu_count":2,"mem_size_mib":64}"#;
        assert_eq!(vm.handle("PUT", "/machine-config", m).status, 204);
        assert_eq!(vm.handle("PATCH", "/machine-config", br#"{"mem_size_mib":96}"#).status, 204);
        assert_eq!(vm.handle("PUT", "/actions", start).status, 204);
        let args = &launched.lock().unwrap()[0];
        assert!(args.windows(2).any(|w| w[0] == "--memory" && w[1] == "96M"), "{args:?}");
        let r = vm.handle("PUT", "/actions", start);
        assert_eq!(r.fault_message(), Some(AFTER_BOOT));
        assert_eq!(vm.handle("PUT", "/machine-config", m).fault_message(), Some(AFTER_BOOT));
        assert_eq!(vm.handle("GET", "/", b"").body.unwrap()["state"], "Running");
    }

    #[test]
    fn paths_methods_and_ids_are_checked() {
        let (mut vm, _) = vm();
        let r = vm.handle("DELETE", "/machine-config", b"");
        assert_eq!(
            r.fault_message(),
            Some("Invalid request method and/or path: DELETE /machine-config.")
        );
        assert_eq!(vm.handle("GET", "/nowhere", b"").status, 400);
        let r = vm.handle("PUT", "/drives/a", br#"{"drive_id":"b","is_root_device":false}"#);
        assert!(r.fault_message().unwrap().contains("does not match"), "{r:?}");
        let r = vm.handle("PUT", "/balloon", b"{}");
        assert!(r.fault_message().unwrap().contains("balloon"), "{r:?}");
        let r = vm.handle("PUT", "/actions", br#"{"action_type":"FlushMetrics"}"#);
        assert!(r.fault_message().unwrap().contains("PUT /metrics"), "{r:?}");
        // Firecracker patches drives and interfaces only once the microVM runs.
        let r = vm.handle("PATCH", "/drives/a", br#"{"drive_id":"a"}"#);
        assert_eq!(r.fault_message(), Some(BEFORE_BOOT));
        let r = vm.handle("PATCH", "/network-interfaces/e", br#"{"iface_id":"e"}"#);
        assert_eq!(r.fault_message(), Some(BEFORE_BOOT));
        // And SendCtrlAltDel, as Firecracker.
        let r = vm.handle("PUT", "/actions", br#"{"action_type":"SendCtrlAltDel"}"#);
        assert_eq!(r.fault_message(), Some(BEFORE_BOOT));
    }
}
