//! Outside backends for `bench vsock` and `bench fs`: rust-vmm's vhost-device-vsock and the
//! Rust virtiofsd, found where `scripts/install-deps.sh` puts them, and the three ways a
//! subject runs one — as Bulkhead's compartment (`run --device …,exec=PROGRAM`), started by
//! the bench beside Bulkhead's core (`run --vhost-user`, unsandboxed), and started by the bench
//! beside QEMU microvm (`-device vhost-user-…-device`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::io::{Attach, Prepare, Ratio, Samples, Subject};
use super::peer;

/// The user outside programs run as in their compartments (`nobody`).
pub const COMPARTMENT_UID: u32 = 65534;

/// Guest memory of every subject, in MiB.
const MEMORY_MIB: u64 = 256;

/// An outside program: `$env` if set, else `rel` under Bulkhead's cache folder
/// (`$BULKHEAD_CACHE_DIR`, `$XDG_CACHE_HOME/bulkhead` or `~/.cache/bulkhead`).
pub fn find_cached(env: &str, rel: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let path = peer::cache_dir().map(|c| c.join(rel));
    match path {
        Some(p) if p.is_file() => Ok(p),
        _ => bail!(
            "{rel} was not found in Bulkhead's cache folder: run scripts/install-deps.sh, or set {env}"
        ),
    }
}

/// Hands `path` to the user compartments run as.
pub fn chown_to_compartment(path: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(COMPARTMENT_UID), Some(COMPARTMENT_UID))
        .with_context(|| format!("cannot hand {} to uid 65534 (run as root)", path.display()))
}

/// An outside backend as the bench starts it: its program and arguments, and the vhost-user
/// socket it listens on (and removes once a frontend connects, as vhost-device-vsock does).
#[derive(Clone)]
pub struct Backend {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub socket: PathBuf,
    /// Files to remove before it starts (sockets a previous run left).
    pub stale: Vec<PathBuf>,
    /// Where its error output goes.
    pub log: PathBuf,
}

impl Backend {
    /// Starts the backend and waits (up to 10 s) for its socket.
    fn start(&self) -> anyhow::Result<Child> {
        for p in self.stale.iter().chain([&self.socket]) {
            let _ = std::fs::remove_file(p);
        }
        let log = std::fs::File::create(&self.log)?;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        let start = Instant::now();
        while !self.socket.exists() {
            let ended = child.try_wait()?;
            if ended.is_some() || start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                let said = std::fs::read_to_string(&self.log).unwrap_or_default();
                bail!("{} did not listen on its socket: {said}", self.program.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(child)
    }

    fn prepare(&self) -> Prepare {
        let me = self.clone();
        Box::new(move || me.start().map(Some))
    }
}

/// The three subjects: Bulkhead's core with the program as a compartment (`device` is the
/// `--device` spec; `stale` files are removed before each run), Bulkhead's core with the
/// bench's `backend` (`vhost_user` is the `--vhost-user` spec, without `socket=`), and, unless
/// `qemu` is `None`, QEMU microvm with the bench's backend (`qemu_device` is the `-device`
/// value, without `chardev=`).
pub struct Specs {
    pub device: String,
    pub stale: Vec<PathBuf>,
    pub backend: Backend,
    pub vhost_user: String,
    pub qemu_device: String,
}

pub const COMPARTMENT: &str = "Bulkhead, compartment";
pub const UNSANDBOXED: &str = "Bulkhead, unsandboxed";
pub const QEMU: &str = "QEMU microvm";

pub fn subjects(specs: Specs, guest: &Path, with_qemu: bool) -> anyhow::Result<Vec<Subject>> {
    let exe = std::env::current_exe().context("cannot find the bulkhead binary")?;
    let run = move |spec: (&'static str, String)| {
        let exe = exe.clone();
        Box::new(move |_: &Attach, cmdline: &str| {
            let mut c = Command::new(&exe);
            c.args(["run", "--memory", &format!("{MEMORY_MIB}M"), spec.0, &spec.1]);
            c.args(["--cmdline", cmdline]);
            c
        })
    };
    let stale = specs.stale.clone();
    let socket = specs.backend.socket.display().to_string();
    let mut out = vec![
        Subject {
            name: COMPARTMENT,
            make: run(("--device", specs.device)),
            prepare: Some(Box::new(move || {
                for p in &stale {
                    let _ = std::fs::remove_file(p);
                }
                Ok(None)
            })),
        },
        Subject {
            name: UNSANDBOXED,
            make: run(("--vhost-user", format!("{},socket={socket}", specs.vhost_user))),
            prepare: Some(specs.backend.prepare()),
        },
    ];
    if with_qemu {
        let qemu = peer::find_qemu().ok_or_else(|| {
            anyhow::anyhow!(
                "QEMU was not found: run scripts/install-qemu.sh, set BULKHEAD_QEMU, or pass --no-qemu"
            )
        })?;
        let guest = guest.to_path_buf();
        let device = format!("{},chardev=vu", specs.qemu_device);
        out.push(Subject {
            name: QEMU,
            prepare: Some(specs.backend.prepare()),
            make: Box::new(move |_, cmdline| {
                let base = peer::microvm(&qemu, &guest, 1, MEMORY_MIB, cmdline);
                let mut c = Command::new(&qemu);
                // vhost-user backends map guest memory: it must be shared.
                c.args(base.get_args().map(|a| match a.to_str() {
                    Some(m) if m.starts_with("memory-backend-memfd,") => {
                        OsString::from(format!("{m},share=on"))
                    }
                    _ => a.to_os_string(),
                }));
                c.args(["-global", "virtio-mmio.force-legacy=false"]);
                c.args(["-chardev", &format!("socket,id=vu,path={socket}"), "-device", &device]);
                c
            }),
        });
    }
    Ok(out)
}

/// The ratios of the tables: the compartment over the unsandboxed program (the sandbox's
/// cost), and over QEMU (the frontends, same backend).
pub fn ratios(samples: &Samples) -> Vec<Ratio> {
    let find = |name: &str| samples.subjects.iter().position(|s| *s == name);
    let mut ratios = Vec::new();
    if let Some(u) = find(UNSANDBOXED) {
        ratios.push((0, u, "compartment/unsandboxed"));
    }
    if let Some(q) = find(QEMU) {
        ratios.push((0, q, "compartment/QEMU"));
    }
    ratios
}
