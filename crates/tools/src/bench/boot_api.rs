//! `bulkhead bench boot`'s API path: Bulkhead started the way a Firecracker client starts
//! Firecracker. The benchmark runs `bulkhead firecracker --api-sock PATH` and, over that unix
//! socket, sends what a client sends — `PUT /machine-config`, `PUT /boot-source` with the
//! built-in guest written out as `kernel_image_path`, `PUT /actions` `InstanceStart` — with a
//! minimal HTTP/1.1 client (one kept-alive connection, `Content-Length` bodies), timing each
//! step from the front's `fork`+`exec`. The front starts `bulkhead run` as its child, whose
//! console is the front's stdout, so the guest's ready line arrives as under the plain subject.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long the front may take to listen, and a request to be answered.
const PATIENCE: Duration = Duration::from_secs(10);
/// How often the socket is tried while the front starts (the resolution of `socket_ms`).
const CONNECT_POLL: Duration = Duration::from_micros(100);

/// `bulkhead firecracker` for one boot after another, each with a socket of its own.
pub struct Front {
    exe: PathBuf,
    /// The sockets, the core's run folder (its control socket) and the metrics files.
    dir: PathBuf,
    kernel: PathBuf,
    memory_mib: u64,
    next: AtomicU32,
}

/// One boot through the API: where its socket is and what the front's id is.
pub struct Launch {
    pub socket: PathBuf,
    id: String,
}

/// The API path's own steps, in ms from the front's start.
pub struct ApiTimes {
    /// The API socket accepts a connection.
    pub socket_ms: f64,
    /// The first request (`PUT /machine-config`) answered: the API's thread, which confines
    /// itself (seccomp, capabilities) before it accepts, serves.
    pub first_ms: f64,
    /// `InstanceStart` sent.
    pub start_sent_ms: f64,
    /// `InstanceStart` answered 204.
    pub started_ms: f64,
}

impl Front {
    /// Boots of the guest ELF `kernel` with `memory_mib`, the front's files under `dir`.
    pub fn new(exe: PathBuf, dir: PathBuf, kernel: PathBuf, memory_mib: u64) -> Front {
        Front { exe, dir, kernel, memory_mib, next: AtomicU32::new(0) }
    }

    /// The front's command line for the next boot.
    pub fn command(&self) -> (Command, Launch) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let socket = self.dir.join(format!("fc-{n}.sock"));
        let id = format!("bench-fc-{}-{n}", std::process::id());
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&self.exe);
        cmd.arg("firecracker").arg("--api-sock").arg(&socket).args(["--id", &id]);
        cmd.env("BULKHEAD_RUN_DIR", self.dir.join("run"));
        (cmd, Launch { socket, id })
    }

    /// Configures and starts the microVM of `launch` as a client would, the guest's command
    /// line `cmdline`; `start` is when the front was started. With `metrics`, the front is
    /// asked to write its metrics there first (`PUT /metrics`), for [`Client::startup_cpu_us`].
    pub fn boot(
        &self,
        launch: &Launch,
        front: &mut Child,
        start: Instant,
        cmdline: &str,
        metrics: Option<&Path>,
    ) -> anyhow::Result<(Client, ApiTimes)> {
        let mut client = Client::connect(&launch.socket, front)?;
        let socket_ms = ms(start.elapsed());
        let machine = serde_json::json!({ "vcpu_count": 1, "mem_size_mib": self.memory_mib });
        client.put("/machine-config", &machine)?;
        let first_ms = ms(start.elapsed());
        let boot = serde_json::json!({ "kernel_image_path": self.kernel, "boot_args": cmdline });
        client.put("/boot-source", &boot)?;
        if let Some(path) = metrics {
            client.put("/metrics", &serde_json::json!({ "metrics_path": path }))?;
        }
        let start_sent_ms = ms(start.elapsed());
        client.put("/actions", &serde_json::json!({ "action_type": "InstanceStart" }))?;
        let started_ms = ms(start.elapsed());
        Ok((client, ApiTimes { socket_ms, first_ms, start_sent_ms, started_ms }))
    }

    /// The core the front started (its only child), once there.
    pub fn core_pid(front: u32) -> anyhow::Result<u32> {
        let children = std::fs::read_to_string(format!("/proc/{front}/task/{front}/children"))
            .context("cannot read the front's children (/proc/PID/task/TID/children)")?;
        match children.split_whitespace().next() {
            Some(pid) => Ok(pid.parse()?),
            None => bail!("the front {front} has no core"),
        }
    }

    /// A metrics file for the front of `launch`.
    pub fn metrics_path(&self, launch: &Launch) -> PathBuf {
        self.dir.join(format!("{}.metrics", launch.id))
    }
}

/// One kept-alive HTTP/1.1 connection to the API.
pub struct Client {
    stream: BufReader<UnixStream>,
}

impl Client {
    /// Connects as soon as the front listens (or fails if it ends first).
    fn connect(socket: &Path, front: &mut Child) -> anyhow::Result<Client> {
        let start = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(socket) {
                s.set_read_timeout(Some(PATIENCE))?;
                return Ok(Client { stream: BufReader::new(s) });
            }
            if let Some(status) = front.try_wait()? {
                bail!("bulkhead firecracker ended before its API listened ({status})");
            }
            if start.elapsed() > PATIENCE {
                bail!("no API on {} after {PATIENCE:?}", socket.display());
            }
            std::thread::sleep(CONNECT_POLL);
        }
    }

    /// `PUT path` with a JSON body; anything but 204 is an error naming the fault.
    pub fn put(&mut self, path: &str, body: &serde_json::Value) -> anyhow::Result<()> {
        let body = body.to_string();
        let request = format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes())?;
        let (status, reply) = self.response().with_context(|| format!("PUT {path}"))?;
        if status != 204 {
            bail!("PUT {path}: {status} {reply}");
        }
        Ok(())
    }

    /// Reads one response: its status and body.
    fn response(&mut self) -> anyhow::Result<(u16, String)> {
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok());
        let Some(status) = status else { bail!("not an HTTP status line: {line:?}") };
        let mut length = 0;
        loop {
            let mut header = String::new();
            if self.stream.read_line(&mut header)? == 0 {
                bail!("the connection closed in the headers");
            }
            if header == "\r\n" {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Flushes the front's metrics into `path` (put before `InstanceStart`) and reads its
    /// `api_server.process_startup_time_cpu_us`: the CPU time the front had used when its
    /// socket listened, as Firecracker reports its own.
    pub fn startup_cpu_us(&mut self, path: &Path) -> anyhow::Result<f64> {
        self.put("/actions", &serde_json::json!({ "action_type": "FlushMetrics" }))?;
        let text = std::fs::read_to_string(path)?;
        let line = text.lines().last().context("no metrics line")?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        v["api_server"]["process_startup_time_cpu_us"]
            .as_f64()
            .context("no api_server.process_startup_time_cpu_us in the metrics")
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
