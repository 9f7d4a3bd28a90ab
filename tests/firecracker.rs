//! `bulkhead firecracker`: Firecracker's REST API in front of the core, driven over its unix
//! socket as Firecracker's clients drive it, booting the built-in guest.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{require_kvm, Running, TempDir};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
const DISK: usize = 4 << 20;

/// Firecracker's request and response bodies as JSON schemas, written from its OpenAPI
/// document (`tests/firecracker/schemas.json` says which commit), one validator per definition.
fn schemas() -> &'static HashMap<String, jsonschema::Validator> {
    static SCHEMAS: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let text = include_str!("firecracker/schemas.json");
        let doc: Value = serde_json::from_str(text).unwrap();
        let names: Vec<String> = doc["definitions"].as_object().unwrap().keys().cloned().collect();
        names
            .into_iter()
            .map(|name| {
                let root = json!({ "$ref": format!("#/definitions/{name}"),
                                   "definitions": doc["definitions"] });
                let validator = jsonschema::validator_for(&root)
                    .unwrap_or_else(|e| panic!("the schema {name}: {e}"));
                (name, validator)
            })
            .collect()
    })
}

/// Checks `value` against the schema `name`: the errors, if any.
fn check(name: &str, value: &Value) -> Result<(), String> {
    let validator = schemas().get(name).unwrap_or_else(|| panic!("no schema {name}"));
    let errors: Vec<String> =
        validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{value} is not a valid {name}: {}", errors.join("; ")))
    }
}

/// The schema of a request's body, by method and path.
fn request_schema(method: &str, path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    Some(match (method, segments.as_slice()) {
        ("PUT", ["boot-source"]) => "BootSource",
        ("PUT", ["drives", _]) => "Drive",
        ("PATCH", ["drives", _]) => "PartialDrive",
        ("PUT", ["machine-config"]) => "MachineConfiguration",
        ("PATCH", ["machine-config"]) => "MachineConfigurationUpdate",
        ("PUT", ["network-interfaces", _]) => "NetworkInterface",
        ("PATCH", ["network-interfaces", _]) => "PartialNetworkInterface",
        ("PUT", ["vsock"]) => "Vsock",
        ("PUT", ["entropy"]) => "EntropyDevice",
        ("PUT", ["logger"]) => "Logger",
        ("PUT", ["metrics"]) => "Metrics",
        ("PUT", ["actions"]) => "InstanceActionInfo",
        ("PUT", ["bulkhead"]) => "BulkheadSettings",
        ("PATCH", ["vm"]) => "Vm",
        _ => return None,
    })
}

/// The schema of a response's body: an error, or what a `GET` returns.
fn response_schema(method: &str, path: &str, status: u16) -> Option<&'static str> {
    if status >= 400 {
        return Some("Error");
    }
    Some(match (method, path) {
        ("GET", "/") => "InstanceInfo",
        ("GET", "/version") => "FirecrackerVersion",
        ("GET", "/machine-config") => "MachineConfiguration",
        ("GET", "/vm/config") => "FullVmConfiguration",
        _ => return None,
    })
}

/// A client of the API on one kept-alive connection.
struct Client {
    stream: BufReader<UnixStream>,
}

impl Client {
    /// Connects once the socket is there.
    fn connect(socket: &Path) -> Client {
        let start = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(socket) {
                s.set_read_timeout(Some(T)).unwrap();
                return Client { stream: BufReader::new(s) };
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no API on {}", socket.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends raw bytes and reads one response: status and JSON body (Null when none).
    fn raw(&mut self, bytes: &[u8]) -> (u16, Value) {
        // A server that refuses the connection (past its limit) answers and closes without
        // reading: the write may then fail, and the answer is still there to read.
        let _ = self.stream.get_mut().write_all(bytes);
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).expect("a status line").parse().unwrap();
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.stream.read_line(&mut header).unwrap();
            if header == "\r\n" {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).unwrap();
        let body = if length == 0 { Value::Null } else { serde_json::from_slice(&body).unwrap() };
        (status, body)
    }

    /// One request, its response checked against Firecracker's schemas: a 204 has no body, a
    /// 400 is an Error, a `GET` answers its resource; and a request that was carried out must
    /// be one Firecracker's schema takes.
    fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, reply) = self.raw(request.as_bytes());
        match response_schema(method, path, status) {
            Some(name) => check(name, &reply).unwrap_or_else(|e| panic!("{method} {path}: {e}")),
            None => assert_eq!(reply, Value::Null, "{method} {path}: {status} with a body"),
        }
        if status < 300 {
            if let Some(name) = request_schema(method, path) {
                let sent: Value = serde_json::from_str(body).expect("a JSON body");
                check(name, &sent).unwrap_or_else(|e| panic!("{method} {path} was taken: {e}"));
            }
        }
        (status, reply)
    }

    fn put(&mut self, path: &str, body: Value) -> (u16, Value) {
        self.call("PUT", path, &body.to_string())
    }

    /// Asserts a 204.
    fn ok(&mut self, path: &str, body: Value) {
        let (status, reply) = self.put(path, body);
        assert_eq!(status, 204, "PUT {path}: {reply}");
    }

    /// Asserts a 400 whose fault message holds `needle`.
    fn fault(&mut self, method: &str, path: &str, body: &str, needle: &str) {
        let (status, reply) = self.call(method, path, body);
        assert_eq!(status, 400, "{method} {path} {body}: {reply}");
        let message = reply["fault_message"].as_str().expect("a fault_message");
        assert!(message.contains(needle), "{method} {path} {body}: {message:?} lacks {needle:?}");
    }
}

/// A folder with the built-in guest written out and a raw disk of zeroes.
struct Files {
    dir: TempDir,
    kernel: PathBuf,
    disk: PathBuf,
}

fn files(tag: &str) -> Files {
    let dir = TempDir::new(tag);
    let kernel = dir.0.join("guest.elf");
    let out = common::bulkhead().arg("guest").arg("write").arg(&kernel).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let disk = dir.file("rootfs.raw", &vec![0; DISK]);
    Files { dir, kernel, disk }
}

/// Starts `bulkhead firecracker` with its own run folder (for the core's control socket).
fn front(f: &Files, args: &[&str]) -> Running {
    let mut cmd = common::bulkhead();
    cmd.arg("firecracker").args(args).env("BULKHEAD_RUN_DIR", f.dir.0.join("run"));
    Running::start(&mut cmd)
}

/// A front whose console lines (the guest's) arrive as they are printed, for a test that acts
/// on what the guest says while it runs.
struct LiveFront {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    /// The front's stderr (its messages and the core's), read to its end.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl LiveFront {
    fn start(cmd: &mut Command) -> LiveFront {
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let lines = common::lines_of(child.stdout.take().unwrap());
        LiveFront { child, lines, seen: Vec::new(), stderr: Some(stderr) }
    }

    /// Waits (up to 2 minutes) for a line starting with `prefix`; its fields.
    fn wait_for(&mut self, prefix: &str) -> HashMap<String, String> {
        loop {
            // Generous: the host is shared, and a VM with a vsock compartment starts in seconds.
            let Ok(line) = self.lines.recv_timeout(Duration::from_secs(180)) else {
                panic!("no {prefix:?} from the guest:\n{}", self.seen.join("\n"));
            };
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return common::parse_line(&line).unwrap().1;
            }
        }
    }

    /// The guest's check `name`, which must have passed (waiting for it if need be).
    fn check(&mut self, name: &str) -> HashMap<String, String> {
        let prefix = format!("BH check name={name} ");
        let kv = match self.seen.iter().find(|l| l.starts_with(&prefix)) {
            Some(line) => common::parse_line(line).unwrap().1,
            None => self.wait_for(&prefix),
        };
        assert_eq!(kv["status"], "ok", "check {name}: {kv:?}\n{}", self.seen.join("\n"));
        kv
    }

    /// Waits for the guest's end (`BH done status=ok`) and the front's exit; its code.
    fn finish(mut self) -> Option<i32> {
        self.wait_for("BH done ");
        let done = self.seen.last().unwrap().clone();
        assert!(done.contains("status=ok"), "{done}\n{}", self.seen.join("\n"));
        self.exit().0
    }

    /// Waits (up to 2 minutes) for the front's exit: its code and its stderr.
    fn exit(mut self) -> (Option<i32>, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "the front did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr.take().map(|t| t.join().unwrap()).unwrap_or_default();
        (status.code(), stderr)
    }
}

impl Drop for LiveFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn boot_source(f: &Files, args: &str) -> Value {
    json!({ "kernel_image_path": f.kernel, "boot_args": args })
}

fn root_drive(f: &Files) -> Value {
    json!({ "drive_id": "rootfs", "path_on_host": f.disk, "is_root_device": true,
            "is_read_only": false })
}

/// The guest's check passed and the disk holds what it wrote.
fn assert_guest_verified(run: &common::Run, f: &Files) {
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, run.stdout);
    let check = run.assert_check("blk-verify");
    assert_eq!(check["bytes"], DISK.to_string());
    assert!(
        std::fs::read(&f.disk).unwrap() == common::pattern(7, DISK),
        "the disk lacks the pattern"
    );
}

#[test]
fn calls_one_by_one_as_firecracker_containerd_makes_them_boot_the_guest() {
    require_kvm();
    let f = files("fc-calls");
    let socket = f.dir.0.join("api.sock");
    let id = format!("fc-calls-{}", std::process::id());
    let vm = front(&f, &["--api-sock", socket.to_str().unwrap(), "--id", &id]);
    let mut c = Client::connect(&socket);
    assert_eq!(c.call("GET", "/", "").1["state"], "Not started");
    c.ok("/machine-config", json!({ "vcpu_count": 1, "mem_size_mib": 128, "smt": false }));
    c.ok(
        "/boot-source",
        boot_source(&f, "bulkhead.run=blk-verify bulkhead.seed=7 bulkhead.hold_ms=1500"),
    );
    c.ok("/drives/rootfs", root_drive(&f));
    c.ok("/entropy", json!({}));
    let metrics = f.dir.0.join("metrics.json");
    c.ok("/metrics", json!({ "metrics_path": metrics }));
    c.fault("PATCH", "/vm", r#"{"state":"Paused"}"#, "not supported before starting");
    c.ok("/actions", json!({ "action_type": "InstanceStart" }));
    assert_eq!(c.call("GET", "/", "").1["state"], "Running");
    // Bulkhead's own socket answers for the VM the API started.
    let status = || {
        let out = common::bulkhead()
            .args(["ctl", &id, "status"])
            .env("BULKHEAD_RUN_DIR", f.dir.0.join("run"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!status().contains("PAUSED"));
    // Pausing and resuming (`PATCH /vm`): the core's vCPUs and queues stop, then go on; the
    // guest's verification below passes across it.
    assert_eq!(c.call("PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
    assert_eq!(c.call("GET", "/", "").1["state"], "Paused");
    assert!(status().contains("PAUSED"));
    c.fault("PATCH", "/vm", r#"{"state":"Stopped"}"#, "unknown variant");
    assert_eq!(c.call("PATCH", "/vm", r#"{"state":"Resumed"}"#).0, 204);
    assert_eq!(c.call("GET", "/", "").1["state"], "Running");
    assert!(!status().contains("PAUSED"));
    let after = "not supported after starting the microVM";
    c.fault("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#, after);
    c.fault("PUT", "/machine-config", r#"{"vcpu_count":2,"mem_size_mib":128}"#, after);
    c.fault("PUT", "/drives/rootfs", &root_drive(&f).to_string(), after);
    c.fault("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel","delay":1}"#, "unknown field");
    c.ok("/actions", json!({ "action_type": "FlushMetrics" }));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    // Firecracker's names, for the counters Bulkhead keeps; counted since the last line.
    // (Before and after the start, and paused and resumed.)
    assert_eq!(line["get_api_requests"]["instance_info_count"], 4, "{line}");
    // The drive put before boot, and the one refused after.
    assert_eq!(line["put_api_requests"]["drive_count"], 2, "{line}");
    assert_eq!(line["put_api_requests"]["drive_fails"], 1, "{line}");
    assert_eq!(line["put_api_requests"]["machine_cfg_count"], 2, "{line}");
    assert_eq!(line["put_api_requests"]["machine_cfg_fails"], 1, "{line}");
    assert!(line["put_api_requests"]["actions_fails"].as_u64().unwrap() >= 2, "{line}");
    assert!(line["api_server"]["process_startup_time_us"].as_u64().unwrap() > 0, "{line}");
    assert!(line["entropy"]["entropy_event_count"].is_u64(), "{line}");
    // Firecracker's block and vmm counters are none Bulkhead keeps: absent, not 0.
    assert!(line.get("block").is_none() && line.get("vmm").is_none(), "{line}");
    let blk = &line["bulkhead"]["devices"]["block_rootfs"];
    assert_eq!((blk["device"].as_str(), blk["state"].as_str()), (Some("blk0"), Some("running")));
    assert_eq!(blk["restarts"], 0, "{line}");
    c.ok("/actions", json!({ "action_type": "FlushMetrics" }));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let second: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(second["put_api_requests"]["drive_count"], 0, "{second}");
    assert_eq!(second["put_api_requests"]["actions_count"], 1, "{second}");
    assert_eq!(second["api_server"], line["api_server"]);
    let run = vm.wait(T);
    assert_guest_verified(&run, &f);
    assert!(!run.stderr.contains("Guest-boot-time"), "no --boot-timer: {}", run.stderr);
}

/// Metrics to a named pipe, as firecracker-containerd and Kata give them: written by the
/// periodic flush (its period shortened) once the microVM runs, whole lines only; and
/// `--boot-timer` passed to the core, which logs the guest's boot time.
#[test]
fn periodic_metrics_reach_a_named_pipe_and_the_boot_timer_logs() {
    require_kvm();
    let f = files("fc-periodic");
    let socket = f.dir.0.join("api.sock");
    let id = format!("fc-periodic-{}", std::process::id());
    let mut cmd = common::bulkhead();
    cmd.arg("firecracker")
        .args(["--api-sock", socket.to_str().unwrap(), "--id", &id, "--boot-timer"])
        .env("BULKHEAD_RUN_DIR", f.dir.0.join("run"))
        .env("BULKHEAD_FC_METRICS_PERIOD_MS", "200");
    let vm = Running::start(&mut cmd);
    let mut c = Client::connect(&socket);
    let fifo = f.dir.0.join("metrics.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    c.ok("/metrics", json!({ "metrics_path": fifo }));
    let reader = std::fs::File::open(&fifo).unwrap();
    c.ok("/boot-source", boot_source(&f, "bulkhead.run=boot bulkhead.hold_ms=1500"));
    c.ok("/entropy", json!({}));
    c.ok("/actions", json!({ "action_type": "InstanceStart" }));
    let lines: Vec<Value> = BufReader::new(reader)
        .lines()
        .take(3)
        .map(|l| serde_json::from_str(&l.unwrap()).expect("a whole JSON line"))
        .collect();
    assert_eq!(lines[0]["put_api_requests"]["actions_count"], 1, "{}", lines[0]);
    assert_eq!(lines[1]["put_api_requests"]["actions_count"], 0, "{}", lines[1]);
    assert_eq!(lines[2]["bulkhead"]["vm_state"], "Running", "{}", lines[2]);
    let run = vm.wait(T);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("Guest-boot-time = "), "{}", run.stderr);
}

#[test]
fn a_config_file_without_the_api_boots_the_same() {
    require_kvm();
    let f = files("fc-file");
    let config = json!({
        "boot-source": boot_source(&f, "bulkhead.run=blk-verify bulkhead.seed=7"),
        "drives": [root_drive(&f)],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        "entropy": {},
    });
    check_config_file(&config);
    let file = f.dir.file("vm.json", config.to_string().as_bytes());
    let id = format!("fc-file-{}", std::process::id());
    let vm = front(&f, &["--config-file", file.to_str().unwrap(), "--no-api", "--id", &id]);
    assert_guest_verified(&vm.wait(T), &f);
}

/// Each section of a config file against the schema of the request it stands for.
fn check_config_file(config: &Value) {
    for (section, value) in config.as_object().unwrap() {
        let (name, many) = match section.as_str() {
            "boot-source" => ("BootSource", false),
            "drives" => ("Drive", true),
            "machine-config" => ("MachineConfiguration", false),
            "network-interfaces" => ("NetworkInterface", true),
            "vsock" => ("Vsock", false),
            "entropy" => ("EntropyDevice", false),
            "logger" => ("Logger", false),
            "metrics" => ("Metrics", false),
            "bulkhead" => ("BulkheadSettings", false),
            other => panic!("no schema for the section {other}"),
        };
        let values = if many { value.as_array().unwrap().clone() } else { vec![value.clone()] };
        for v in &values {
            check(name, v).unwrap_or_else(|e| panic!("the config file's {section}: {e}"));
        }
    }
}

/// The schemas themselves: they take what Firecracker takes and refuse what it refuses — an
/// unknown field in a request or a response, a value out of its bounds, a missing field.
#[test]
fn the_schemas_take_firecrackers_bodies_and_refuse_unknown_fields() {
    let drive = json!({ "drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                        "is_read_only": false, "cache_type": "Unsafe", "io_engine": "Sync" });
    check("Drive", &drive).unwrap();
    check(
        "Drive",
        &json!({ "drive_id": "rootfs", "is_root_device": true, "rate_limiter":
        { "bandwidth": { "size": 1048576, "refill_time": 1000 } } }),
    )
    .unwrap();
    let info = json!({ "app_name": "bulkhead", "id": "a", "state": "Running",
                       "vmm_version": "0.1.0" });
    check("InstanceInfo", &info).unwrap();
    let mut extra = info.clone();
    extra["uptime"] = json!(1);
    assert!(check("InstanceInfo", &extra).is_err());
    assert!(check("Error", &json!({ "fault_message": "x", "code": 1 })).is_err());
    assert!(check(
        "InstanceInfo",
        &json!({ "app_name": "b", "id": "a", "state": "Booting",
                                           "vmm_version": "0" })
    )
    .is_err());
    assert!(check("MachineConfiguration", &json!({ "vcpu_count": 33, "mem_size_mib": 1 })).is_err());
    assert!(check("MachineConfiguration", &json!({ "vcpu_count": 1 })).is_err());
    check("MachineConfigurationUpdate", &json!({ "mem_size_mib": 192 })).unwrap();
    assert!(check("Vsock", &json!({ "guest_cid": 2, "uds_path": "/v" })).is_err());
    assert!(check("BootSource", &json!({ "kernel_image_path": "/k", "bootargs": "x" })).is_err());
    assert!(check("InstanceActionInfo", &json!({ "action_type": "Reboot" })).is_err());
    check(
        "FullVmConfiguration",
        &json!({ "balloon": null, "drives": [drive],
        "boot-source": null, "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 } }),
    )
    .unwrap();
    assert!(check("FullVmConfiguration", &json!({ "drives": [], "balloons": [] })).is_err());
    assert!(check("BulkheadSettings", &json!({ "mode": "hybrid" })).is_err());
}

/// Bulkhead's own section of the config file: `"mode": "monolithic"` runs the devices on the
/// core's threads, as `bulkhead ctl ID status` shows, and the guest's disk check passes.
#[test]
fn a_config_files_bulkhead_section_runs_the_devices_on_threads() {
    require_kvm();
    let f = files("fc-mono");
    let config = json!({
        "boot-source": boot_source(&f, "bulkhead.run=blk-verify bulkhead.seed=7 bulkhead.hold_ms=3000"),
        "drives": [root_drive(&f)],
        "entropy": {},
        "bulkhead": { "mode": "monolithic", "restart": true, "watchdog_s": 5 },
    });
    check_config_file(&config);
    let file = f.dir.file("vm.json", config.to_string().as_bytes());
    let id = format!("fc-mono-{}", std::process::id());
    let vm = front(&f, &["--config-file", file.to_str().unwrap(), "--no-api", "--id", &id]);
    let control = f.dir.0.join("run").join(format!("{id}.sock"));
    let start = Instant::now();
    while !control.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "the core never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = common::bulkhead()
        .args(["ctl", &id, "status"])
        .env("BULKHEAD_RUN_DIR", f.dir.0.join("run"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    for device in ["blk0", "rng0"] {
        let line = text.lines().find(|l| l.contains(device)).unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("thread") && !line.contains("compartment"), "{text}");
    }
    assert_guest_verified(&vm.wait(T), &f);
}

#[test]
fn bad_input_is_answered_as_firecracker_answers_it() {
    let f = files("fc-bad");
    let socket = f.dir.0.join("api.sock");
    let vm = front(&f, &["--api-sock", socket.to_str().unwrap(), "--id", "fc-bad"]);
    let mut c = Client::connect(&socket);
    // The thread that reads the API runs under its seccomp filter.
    // (The socket takes connections before that thread is there: look until it is.)
    let api_thread = || {
        std::fs::read_dir(format!("/proc/{}/task", vm.id()))
            .unwrap()
            .filter_map(|t| Some(t.ok()?.path()))
            .find(|t| {
                std::fs::read_to_string(t.join("comm")).unwrap_or_default().trim() == "fc-api"
            })
    };
    let start = Instant::now();
    let status = loop {
        let status = api_thread().and_then(|t| std::fs::read_to_string(t.join("status")).ok());
        match status {
            Some(s) if s.lines().any(|l| l == "Seccomp:\t2") => break s,
            s if start.elapsed() > Duration::from_secs(5) => panic!("not confined: {s:?}"),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    assert!(status.contains("CapEff:"), "{status}");
    c.fault("PUT", "/machine-config", r#"{"vcpu_count":1}"#, "missing field `mem_size_mib`");
    c.fault("PUT", "/machine-config", r#"{"vcpu_count":"1","mem_size_mib":128}"#, "invalid type");
    c.fault("PUT", "/machine-config", r#"{"vcpu_count":64,"mem_size_mib":128}"#, "1 to 32");
    c.fault("PUT", "/entropy", r#"{"rate":1}"#, "unknown field `rate`");
    c.fault("PUT", "/boot-source", r#"{"kernel_image_path":"#, "not valid JSON");
    c.fault("PUT", "/boot-source", "", "no body");
    c.fault("GET", "/nowhere", "", "Invalid request method and/or path: GET /nowhere.");
    c.fault("DELETE", "/drives/rootfs", "", "Invalid request method and/or path");
    c.fault("GET", "/boot-source", "", "Invalid request method and/or path");
    c.fault(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path":"/absent/vmlinux"}"#,
        "/absent/vmlinux cannot be opened",
    );
    let mut drive = root_drive(&f);
    c.fault("PUT", "/drives/other", &drive.to_string(), "does not match the id from the body");
    drive["io_engine"] = json!("Async");
    c.fault("PUT", "/drives/rootfs", &drive.to_string(), "io_engine Async");
    c.fault(
        "PUT",
        "/balloon",
        r#"{"amount_mib":1,"deflate_on_oom":true}"#,
        "not implemented in Bulkhead",
    );
    c.fault("PUT", "/snapshot/create", "{}", "Snapshots");
    c.fault(
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
        "without kernel configuration",
    );
    c.fault("PUT", "/actions", r#"{"action_type":"Reboot"}"#, "unknown variant `Reboot`");
    // After all that the connection still serves, and nothing was configured.
    assert_eq!(c.call("GET", "/vm/config", "").1["boot-source"], Value::Null);
    // A request the server cannot frame is answered, then the connection closed.
    let (status, reply) = c.raw(b"PUT /entropy HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(status, 400, "{reply}");
    check("Error", &reply).unwrap();
    // Connections are capped: past 64 at once, one is answered 400 and closed.
    let held: Vec<Client> = (0..64).map(|_| Client::connect(&socket)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut over = Client::connect(&socket);
    let (status, reply) = over.call("GET", "/", "");
    assert_eq!(status, 400, "{reply}");
    assert!(reply["fault_message"].as_str().unwrap().contains("Too many connections"));
    drop(held);
    // Firecracker's command-line options that Bulkhead does not take are refused by name.
    for (args, needle) in [
        (&["--metadata", "m.json"][..], "MMDS"),
        (&["--no-api"][..], "--no-api needs --config-file"),
    ] {
        let out = common::bulkhead().arg("firecracker").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn vm_config_reflects_what_was_put() {
    let f = files("fc-config");
    let socket = f.dir.0.join("api.sock");
    let _vm = front(&f, &["--api-sock", socket.to_str().unwrap(), "--id", "fc-config"]);
    let mut c = Client::connect(&socket);
    c.ok("/machine-config", json!({ "vcpu_count": 2, "mem_size_mib": 256 }));
    let (status, _) = c.call("PATCH", "/machine-config", r#"{"mem_size_mib":192}"#);
    assert_eq!(status, 204);
    c.ok("/boot-source", boot_source(&f, "console=ttyS0"));
    c.ok("/drives/rootfs", root_drive(&f));
    c.ok(
        "/network-interfaces/eth0",
        json!({ "iface_id": "eth0", "host_dev_name": "tap7",
                                              "guest_mac": "06:00:ac:10:00:02" }),
    );
    c.ok("/entropy", json!({}));
    c.ok("/bulkhead", json!({ "mode": "monolithic", "cpu_shares": 512 }));
    c.fault("PUT", "/bulkhead", r#"{"mode":"hybrid"}"#, "unknown variant `hybrid`");
    c.fault("PUT", "/bulkhead", r#"{"cgroup":"v2"}"#, "unknown field `cgroup`");
    let (status, config) = c.call("GET", "/vm/config", "");
    assert_eq!(status, 200);
    assert_eq!(config["bulkhead"], json!({ "mode": "monolithic", "cpu_shares": 512 }));
    assert_eq!(config["machine-config"]["vcpu_count"], 2);
    assert_eq!(config["machine-config"]["mem_size_mib"], 192);
    assert_eq!(config["boot-source"], boot_source(&f, "console=ttyS0"));
    assert_eq!(config["drives"], json!([root_drive(&f)]));
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], "tap7");
    assert_eq!(config["entropy"], json!({}));
    assert_eq!(config["vsock"], Value::Null);
    let (_, machine) = c.call("GET", "/machine-config", "");
    assert_eq!(machine, config["machine-config"]);
    let (_, version) = c.call("GET", "/version", "");
    assert!(version["firecracker_version"].is_string(), "{version}");
    // A named pipe as the log, as firecracker-containerd gives it: opened without waiting for
    // its reader, and the lines reach the reader.
    let fifo = f.dir.0.join("log.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    c.ok("/logger", json!({ "log_path": fifo, "level": "Debug", "show_log_origin": true }));
    let reader = std::fs::File::open(&fifo).unwrap();
    c.call("GET", "/machine-config", "");
    let lines = BufReader::new(reader).lines().map(Result::unwrap);
    let seen: Vec<String> = lines.take(2).collect();
    assert!(seen[0].contains("PUT /logger: 204"), "{seen:?}");
    assert!(seen[1].contains("GET /machine-config: 200"), "{seen:?}");
}

#[test]
fn sigterm_to_the_front_stops_the_vm_and_the_front_exits() {
    require_kvm();
    let f = files("fc-term");
    let config = json!({
        "boot-source": boot_source(&f, "bulkhead.run=boot bulkhead.hold_ms=60000"),
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    let file = f.dir.file("vm.json", config.to_string().as_bytes());
    let id = format!("fc-term-{}", std::process::id());
    let vm = front(&f, &["--config-file", file.to_str().unwrap(), "--no-api", "--id", &id]);
    let control = f.dir.0.join("run").join(format!("{id}.sock"));
    let start = Instant::now();
    while !control.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "the core never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill").args(["-TERM", &vm.id().to_string()]).status().unwrap();
    assert!(kill.success());
    // The core stops the VM on SIGTERM (exit code 128 + 15) and the front exits with that.
    let run = vm.wait(Duration::from_secs(15));
    assert_eq!(run.code, 128 + 15, "{}", run.stderr);
}

/// A sandbox platform's sequence: a vsock on a hybrid socket (served by vhost-device-vsock
/// as a compartment), boot, the guest connects to the host's port 5000 and checks its bytes
/// echoed back by a host listener on `uds_path` + `_5000`.
#[test]
fn a_vsock_put_through_the_api_carries_the_guests_connection() {
    require_kvm();
    let f = files("fc-vsock");
    // The compartment runs as the overflow user: it needs the folder of the hybrid socket.
    let vsock_dir = f.dir.0.join("vsock");
    std::fs::create_dir(&vsock_dir).unwrap();
    std::os::unix::fs::chown(&vsock_dir, Some(65534), Some(65534)).unwrap();
    let uds = vsock_dir.join("v.sock");
    let listener_path = vsock_dir.join("v.sock_5000");
    let listener = std::os::unix::net::UnixListener::bind(&listener_path).unwrap();
    std::fs::set_permissions(&listener_path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .unwrap();
    let host = common::echo_once(listener);
    let socket = f.dir.0.join("api.sock");
    let id = format!("fc-vsock-{}", std::process::id());
    let vm = front(&f, &["--api-sock", socket.to_str().unwrap(), "--id", &id]);
    let mut c = Client::connect(&socket);
    let args = "bulkhead.run=vsock bulkhead.vsock_connect=5000 bulkhead.bytes=65536";
    c.ok("/boot-source", boot_source(&f, args));
    c.ok("/vsock", json!({ "guest_cid": 3, "uds_path": uds }));
    c.fault("PUT", "/vsock", r#"{"guest_cid":2,"uds_path":"/tmp/v"}"#, "reserved");
    c.ok("/actions", json!({ "action_type": "InstanceStart" }));
    let run = vm.wait(T);
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, run.stdout);
    assert_eq!(run.assert_check("vsock")["bytes"], "65536");
    assert_eq!(host.join().unwrap(), 65536);
}

/// Kata Containers' sequence, as its Firecracker driver (`src/runtime/virtcontainers/fc.go`)
/// runs it, with the built-in guest standing in for Kata's kernel and agent: `--version`
/// (Kata parses `Firecracker vX.Y.Z`), then `--api-sock` with a `--config-file` holding
/// machine-config (`smt: false`), boot-source, the image as a read-only drive that is not the
/// root device, a pool of 8 placeholder drives backed by empty files, logger and metrics on
/// named pipes Kata reads, a hybrid vsock (`vsock_id: "root"`), a network interface on a tap
/// with Kata's empty rate limiters; then `GET /` until `Running`, the vsock's socket made 0640,
/// and a placeholder swapped for a container's disk with `PATCH /drives`, which the guest then
/// reads (and finds the container's bytes) and writes; the guest pings over the tap meanwhile.
#[test]
fn kata_containers_sequence_boots_with_placeholder_drives() {
    require_kvm();
    let out = common::bulkhead().args(["firecracker", "--version"]).output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout).to_string();
    let first = version.lines().next().unwrap_or_default();
    let fields: Vec<&str> = first.split(' ').collect();
    assert_eq!(fields[0], "Firecracker", "{version}");
    assert!(fields[1].trim_start_matches('v').split('.').count() == 3, "{version}");

    let f = files("fc-kata");
    // Kata's folder for the VM (its "jailer root" even without the jailer); the vsock's
    // compartment runs as the overflow user and must be able to create the socket there.
    let root = f.dir.0.join("root");
    std::fs::create_dir_all(root.join("run")).unwrap();
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    let fifo = |name: &str| {
        let path = f.dir.0.join(name);
        assert!(Command::new("mkfifo").arg(&path).status().unwrap().success());
        // Kata opens its reader first, without blocking.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        (path, reader)
    };
    let (logs, _logs_reader) = fifo("logs.fifo");
    let (metrics, _metrics_reader) = fifo("metrics.fifo");
    let image = f.dir.file("rootfs", &vec![0; DISK]);
    let mut drives = vec![json!({ "drive_id": "rootfs", "is_read_only": true,
                                  "is_root_device": false, "path_on_host": image })];
    for i in 0..8 {
        let placeholder = root.join(format!("drive_{i}"));
        std::fs::File::create(&placeholder).unwrap();
        drives.push(json!({ "drive_id": format!("drive_{i}"), "is_read_only": false,
                            "is_root_device": false, "path_on_host": placeholder }));
    }
    let uds = root.join("kata.hvsock");
    let boot_args = "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 \
                     pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on \
                     acpi=off 8250.nr_uarts=0 agent.log_vport=1025 \
                     bulkhead.run=net-ping,blk-swap bulkhead.ip=10.0.2.15/24 \
                     bulkhead.peer=10.0.2.1 bulkhead.count=3 bulkhead.disk=1 bulkhead.seed2=9 \
                     bulkhead.hold_ms=5000";
    let config = json!({
        "boot-source": { "kernel_image_path": f.kernel, "boot_args": boot_args },
        "machine-config": { "smt": false, "mem_size_mib": 128, "vcpu_count": 1 },
        "vsock": { "guest_cid": 3, "uds_path": uds, "vsock_id": "root" },
        "logger": { "level": "Error", "log_path": logs },
        "metrics": { "metrics_path": metrics },
        "drives": drives,
        "network-interfaces": [{ "iface_id": "eth0", "host_dev_name": "tap0",
                                 "guest_mac": "52:54:00:12:34:56",
                                 "rx_rate_limiter": {}, "tx_rate_limiter": {} }],
    });
    check_config_file(&config);
    let file = f.dir.file("fcConfig.json", config.to_string().as_bytes());
    let socket = root.join("run").join("firecracker.socket");
    // Kata's tap is in the VM's network namespace; the front runs there, as Kata runs it.
    let ns = common::NetNs::new("kata");
    let mut cmd = ns.bulkhead();
    cmd.arg("firecracker")
        .args(["--api-sock", socket.to_str().unwrap(), "--config-file", file.to_str().unwrap()])
        .env("BULKHEAD_RUN_DIR", f.dir.0.join("run"));
    let mut vm = LiveFront::start(&mut cmd);
    let mut c = Client::connect(&socket);
    let start = Instant::now();
    while c.call("GET", "/", "").1["state"] != "Running" {
        assert!(start.elapsed() < Duration::from_secs(10), "Kata's 10 s timeout passed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Kata makes the vsock's socket 0640 as soon as the VM runs: it must be there.
    std::fs::set_permissions(&uds, std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .expect("the hybrid vsock's socket once Running");
    let (_, config_now) = c.call("GET", "/vm/config", "");
    assert_eq!(config_now["drives"].as_array().unwrap().len(), 9);
    // A drive that is not there, a file that is not: 400, and the drive stays as it was.
    let missing = f.dir.0.join("missing.raw");
    c.fault(
        "PATCH",
        "/drives/drive_9",
        r#"{"drive_id":"drive_9","path_on_host":"/x"}"#,
        "Invalid block device ID",
    );
    c.fault(
        "PATCH",
        "/drives/drive_1",
        &json!({ "drive_id": "drive_1", "path_on_host": missing }).to_string(),
        "cannot be opened",
    );
    c.fault("PATCH", "/drives/drive_1", r#"{"drive_id":"drive_2"}"#, "does not match");
    // Kata then replaces a placeholder with a container's disk: the core serves drive_0 from
    // the new file (a new compartment on it; the guest told the new capacity), holding its
    // lock while the guest uses it. (Once the guest waits on the empty placeholder: Kata's
    // agent is told of the disk, it does not find it by itself.)
    let waiting = vm.wait_for("BH progress name=blk-swap ");
    assert_eq!(waiting["capacity"], "0");
    let container = f.dir.file("container.raw", &common::pattern(9, 1 << 20));
    let patch = json!({ "drive_id": "drive_0", "path_on_host": container });
    let (status, reply) = c.call("PATCH", "/drives/drive_0", &patch.to_string());
    assert_eq!(status, 204, "{reply}");
    assert!(
        bulkhead_disk::open(&container, &Default::default()).is_err(),
        "the new file is not held by the VM"
    );
    let (_, config_now) = c.call("GET", "/vm/config", "");
    assert_eq!(config_now["drives"][1]["path_on_host"], json!(container));
    let ping = vm.check("net-ping");
    assert_eq!((ping["sent"].as_str(), ping["received"].as_str()), ("3", "3"));
    // The guest found the container's bytes beyond the placeholder's 0, then wrote its own.
    let swap = vm.check("blk-swap");
    assert_eq!((swap["old_capacity"].as_str(), swap["capacity"].as_str()), ("0", "1048576"));
    assert_eq!(vm.finish(), Some(0));
    assert!(
        std::fs::read(&container).unwrap() == common::pattern(2, 1 << 20),
        "the guest's writes"
    );
}

/// A drive's `rate_limiter` put before boot holds as the guest measures it (1000 requests/s
/// within 5% over 5 s); `PATCH /drives` with another one, while the guest runs, changes it
/// (500/s, measured over the windows after the change); the entropy device's limiter and a
/// bucket of size 0 (no limit) are taken. The guest runs `blk-rate` twice; the patch goes
/// between the two runs.
#[test]
fn a_drives_rate_limiter_holds_and_a_patch_changes_it() {
    require_kvm();
    let f = files("fc-rate");
    let socket = f.dir.0.join("api.sock");
    let id = format!("fc-rate-{}", std::process::id());
    let mut front = LiveFront::start(
        common::bulkhead()
            .arg("firecracker")
            .args(["--api-sock", socket.to_str().unwrap(), "--id", &id])
            .env("BULKHEAD_RUN_DIR", f.dir.0.join("run")),
    );
    let mut c = Client::connect(&socket);
    let rate = "bulkhead.run=blk-rate,blk-rate bulkhead.mode=randread bulkhead.bs=4096 \
                bulkhead.seconds=5 bulkhead.irq=1";
    c.ok("/boot-source", boot_source(&f, rate));
    let mut drive = root_drive(&f);
    drive["rate_limiter"] = json!({ "ops": { "size": 100, "refill_time": 100 },
                                    "bandwidth": { "size": 0, "refill_time": 0 } });
    c.ok("/drives/rootfs", drive);
    let entropy = json!({ "bandwidth": { "size": 4096, "one_time_burst": 0, "refill_time": 100 } });
    c.ok("/entropy", json!({ "rate_limiter": entropy }));
    c.ok("/actions", json!({ "action_type": "InstanceStart" }));
    let first = front.wait_for("BH result workload=blk-rate");
    let field = |kv: &HashMap<String, String>, k: &str| kv[k].parse::<f64>().unwrap();
    let near = |what: &str, got: f64, want: f64| {
        eprintln!("{what}: {got:.1} for a limit of {want:.1}");
        assert!(((got - want) / want).abs() <= 0.05, "{what}: {got:.1}, not within 5% of {want}");
    };
    near("requests/s under the limit put before boot", field(&first, "iops"), 1000.0);
    let patch = json!({ "drive_id": "rootfs",
                        "rate_limiter": { "ops": { "size": 50, "refill_time": 100 } } });
    let (status, reply) = c.call("PATCH", "/drives/rootfs", &patch.to_string());
    assert_eq!(status, 204, "{reply}");
    // The second run's whole windows after its first second (which the patch may overlap;
    // a run of 5 s prints 4 or 5 windows, the last one's end racing the run's).
    let (mut ops, mut ns) = (0.0, 0.0);
    for second in 2..=4 {
        let w = front.wait_for(&format!("BH rate workload=blk-rate second={second} "));
        ops += field(&w, "ops");
        ns += field(&w, "ns");
    }
    near("requests/s after the patch", ops * 1e9 / ns, 500.0);
    let (_, config) = c.call("GET", "/vm/config", "");
    let limiter = &config["drives"][0]["rate_limiter"];
    assert_eq!(limiter["ops"]["size"], 50, "{config}");
    assert_eq!(limiter["bandwidth"]["size"], 0, "the bandwidth bucket stays as put: {config}");
    // The core shows the drive's limits as the patch left them.
    let status = common::bulkhead()
        .args(["ctl", &id, "device", "limits", "blk0"])
        .env("BULKHEAD_RUN_DIR", f.dir.0.join("run"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("ops 50/100ms") && shown.contains("bandwidth none"), "{shown}");
    c.fault(
        "PATCH",
        "/drives/rootfs",
        r#"{"drive_id":"rootfs","rate_limiter":{"ops":{"size":1,"refill_time":99999999}}}"#,
        "refill time",
    );
    c.fault("PATCH", "/network-interfaces/eth0", r#"{"iface_id":"eth0"}"#, "Invalid network");
    assert_eq!(front.finish(), Some(0));
}

/// An image that is not there is refused at its `PUT`; one that another process holds (QEMU's
/// locks, here `qemu-io`'s) fails `InstanceStart` with the core's words — which process
/// kind of use, and what to do — and once it is free the same microVM starts.
#[test]
fn a_missing_or_locked_image_is_refused_with_what_to_fix() {
    require_kvm();
    let f = files("fc-locked");
    let socket = f.dir.0.join("api.sock");
    let id = format!("fc-locked-{}", std::process::id());
    let vm = front(&f, &["--api-sock", socket.to_str().unwrap(), "--id", &id]);
    let mut c = Client::connect(&socket);
    c.ok("/boot-source", boot_source(&f, "bulkhead.run=blk-verify bulkhead.seed=7"));
    let mut missing = root_drive(&f);
    missing["path_on_host"] = json!(f.dir.0.join("absent.raw"));
    c.fault("PUT", "/drives/rootfs", &missing.to_string(), "absent.raw cannot be opened");
    c.ok("/drives/rootfs", root_drive(&f));
    let mut holder = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "sleep 100000"])
        .arg(&f.disk)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qemu-io is needed for these tests (qemu-utils)");
    let start = Instant::now();
    while bulkhead_disk::open(&f.disk, &Default::default()).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(30), "qemu-io never locked the image");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.fault(
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
        "is in use by another process (it writes to the image); stop that process first",
    );
    assert_eq!(c.call("GET", "/", "").1["state"], "Not started");
    let _ = holder.kill();
    let _ = holder.wait();
    c.ok("/actions", json!({ "action_type": "InstanceStart" }));
    let run = vm.wait(T);
    assert_guest_verified(&run, &f);
}

/// A sandbox platform's graceful stop (firecracker-go-sdk's `Machine.Shutdown`): metrics to a
/// file, the machine, its root drive and a hybrid vsock put one by one, `SendCtrlAltDel`
/// refused before boot as Firecracker refuses it, `InstanceStart`; the guest's connection to
/// the host's port 5000 echoed by a host listener; then `SendCtrlAltDel`: the guest (waiting
/// in `wait-cad`, its keyboard set up as Linux's drivers set it up) reads the keys on IRQ 1,
/// says so and resets, the VM ends, the front exits with the reboot's status (3), and its last
/// metrics line counts the actions (the failed one among the fails).
#[test]
fn send_ctrl_alt_del_ends_a_sandbox_platforms_vm_after_its_vsock_exchange() {
    require_kvm();
    let f = files("fc-cad");
    let vsock_dir = f.dir.0.join("vsock");
    std::fs::create_dir(&vsock_dir).unwrap();
    std::os::unix::fs::chown(&vsock_dir, Some(65534), Some(65534)).unwrap();
    let uds = vsock_dir.join("v.sock");
    let listener_path = vsock_dir.join("v.sock_5000");
    let listener = std::os::unix::net::UnixListener::bind(&listener_path).unwrap();
    std::fs::set_permissions(&listener_path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .unwrap();
    let host = common::echo_once(listener);
    let socket = f.dir.0.join("api.sock");
    let id = format!("fc-cad-{}", std::process::id());
    let mut front = LiveFront::start(
        common::bulkhead()
            .arg("firecracker")
            .args(["--api-sock", socket.to_str().unwrap(), "--id", &id])
            .env("BULKHEAD_RUN_DIR", f.dir.0.join("run")),
    );
    let mut c = Client::connect(&socket);
    let metrics = f.dir.0.join("metrics.json");
    c.ok("/metrics", json!({ "metrics_path": metrics }));
    c.ok("/machine-config", json!({ "vcpu_count": 1, "mem_size_mib": 128 }));
    let args = "bulkhead.run=vsock,wait-cad bulkhead.vsock_connect=5000 bulkhead.bytes=65536 \
                bulkhead.wait_s=600";
    c.ok("/boot-source", boot_source(&f, args));
    c.ok("/drives/rootfs", root_drive(&f));
    c.ok("/vsock", json!({ "guest_cid": 3, "uds_path": uds }));
    let cad = r#"{"action_type":"SendCtrlAltDel"}"#;
    c.fault("PUT", "/actions", cad, "not supported before starting the microVM");
    c.ok("/actions", json!({ "action_type": "InstanceStart" }));
    let vsock = front.wait_for("BH check name=vsock");
    assert_eq!((vsock["status"].as_str(), vsock["bytes"].as_str()), ("ok", "65536"), "{vsock:?}");
    assert_eq!(host.join().unwrap(), 65536);
    let listening = front.wait_for("BH kbd listening");
    assert_eq!(listening["set"], "2");
    let (status, reply) = c.call("PUT", "/actions", cad);
    assert_eq!(status, 204, "{reply}");
    front.wait_for("BH ctrl-alt-del");
    let (code, stderr) = front.exit();
    assert_eq!(code, Some(3), "the reboot's status: {stderr}");
    assert!(stderr.contains("the guest rebooted"), "{stderr}");
    assert!(!socket.exists(), "the API socket is removed at exit");
    // Every line's deltas together: InstanceStart, and SendCtrlAltDel twice, once refused.
    let text = std::fs::read_to_string(&metrics).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!lines.is_empty(), "the front writes a line at exit");
    let sum = |name: &str| -> u64 {
        lines.iter().map(|l| l["put_api_requests"][name].as_u64().unwrap_or(0)).sum()
    };
    assert_eq!((sum("actions_count"), sum("actions_fails")), (3, 1), "{text}");
}
