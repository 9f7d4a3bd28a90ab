//! Running the Linux guest under QEMU: the independent peer that Bulkhead's vhost-user
//! compartments (and its frontend) are tested against.
//!
//! [`Qemu::find`] locates the QEMU 7.2 that `scripts/install-qemu.sh` unpacks (its wrapper sets
//! the library path, module folder and firmware folders). A [`VmSpec`] describes one run —
//! kernel, initrd, command line, memory, devices — and [`Qemu::run`] starts QEMU with the serial
//! console on a pipe, collects the console and its `BH` report lines, and kills QEMU if the
//! guest has not powered off within the timeout. Any vhost-user device makes guest memory a
//! shared memfd (`memory-backend-memfd,share=on`), as vhost-user requires.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::report::BhLine;
use crate::LinuxGuest;

/// The QEMU wrapper's path under the cache directory.
pub const WRAPPER: &str = "qemu-7.2/bin/qemu-system-x86_64";

/// Why QEMU could not be found or run.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// No QEMU wrapper is installed.
    #[error("QEMU 7.2 was not found at {0}; run scripts/install-qemu.sh (or set BULKHEAD_QEMU to a qemu-system-x86_64)")]
    NotInstalled(PathBuf),
    /// No cache directory could be chosen to look in.
    #[error(transparent)]
    Dirs(#[from] crate::dirs::DirsError),
    /// A program could not be started.
    #[error("could not start {program}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// `qemu-storage-daemon` exited or never made its socket.
    #[error("qemu-storage-daemon did not start serving {socket}: {stderr}")]
    DaemonStart {
        /// The socket it should have made.
        socket: PathBuf,
        /// What it printed.
        stderr: String,
    },
}

/// The accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works on any host, ~2 s to the init here.
    Tcg,
    /// Hardware KVM (`-cpu host,-arch-capabilities`, as KVM-PVM hosts need).
    Kvm,
}

/// A device given to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// `vhost-user-blk-pci` on a backend listening at `socket`.
    VhostUserBlk {
        /// The backend's socket.
        socket: PathBuf,
        /// Virtqueues to ask for (the backend must offer at least as many).
        queues: u16,
    },
    /// `vhost-user-rng-pci` on a backend listening at `socket`.
    VhostUserRng {
        /// The backend's socket.
        socket: PathBuf,
    },
    /// `virtio-net-pci` on a vhost-user net backend listening at `socket`.
    VhostUserNet {
        /// The backend's socket.
        socket: PathBuf,
    },
    /// QEMU's own `virtio-blk-pci` on a raw file.
    VirtioBlk {
        /// The raw image.
        path: PathBuf,
        /// Whether the guest sees a read-only disk.
        read_only: bool,
    },
    /// QEMU's own `virtio-rng-pci`.
    VirtioRng,
    /// QEMU's `virtio-net-pci` on user-mode networking; the host answers at `10.0.2.1`.
    NetUser,
    /// QEMU's `virtio-net-pci` on an existing tap interface.
    NetTap {
        /// The tap interface's name.
        ifname: String,
    },
}

impl Device {
    /// `vhost-user-blk-pci` with one virtqueue.
    pub fn vhost_user_blk(socket: impl Into<PathBuf>) -> Device {
        Device::VhostUserBlk { socket: socket.into(), queues: 1 }
    }

    fn is_vhost_user(&self) -> bool {
        matches!(
            self,
            Device::VhostUserBlk { .. } | Device::VhostUserRng { .. } | Device::VhostUserNet { .. }
        )
    }

    /// The QEMU arguments for device number `i`.
    fn args(&self, i: usize) -> Vec<String> {
        let chardev = |socket: &Path| format!("socket,id=chr{i},path={}", opt_path(socket));
        let nic = |netdev: String| {
            vec![
                "-netdev".into(),
                netdev,
                "-device".into(),
                format!("virtio-net-pci,netdev=net{i},romfile="),
            ]
        };
        match self {
            Device::VhostUserBlk { socket, queues } => vec![
                "-chardev".into(),
                chardev(socket),
                "-device".into(),
                format!("vhost-user-blk-pci,chardev=chr{i},num-queues={queues}"),
            ],
            Device::VhostUserRng { socket } => vec![
                "-chardev".into(),
                chardev(socket),
                "-device".into(),
                format!("vhost-user-rng-pci,chardev=chr{i}"),
            ],
            Device::VhostUserNet { socket } => {
                let mut v = vec!["-chardev".into(), chardev(socket)];
                v.extend(nic(format!("vhost-user,id=net{i},chardev=chr{i}")));
                v
            }
            Device::VirtioBlk { path, read_only } => {
                let ro = if *read_only { "on" } else { "off" };
                vec![
                    "-blockdev".into(),
                    format!(
                        "driver=file,node-name=disk{i},filename={},read-only={ro}",
                        opt_path(path)
                    ),
                    "-device".into(),
                    format!("virtio-blk-pci,drive=disk{i}"),
                ]
            }
            Device::VirtioRng => vec!["-device".into(), "virtio-rng-pci".into()],
            Device::NetUser => {
                nic(format!("user,id=net{i},net=10.0.2.0/24,host=10.0.2.1,restrict=on"))
            }
            Device::NetTap { ifname } => {
                nic(format!("tap,id=net{i},ifname={ifname},script=no,downscript=no"))
            }
        }
    }
}

/// A QEMU option value holding a path: commas are doubled.
fn opt_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// One guest run: what to boot, with which devices, for how long.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The whole kernel command line.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// The accelerator.
    pub accel: Accel,
    /// Devices, in PCI slot order.
    pub devices: Vec<Device>,
    /// Back guest memory with a shared memfd even without vhost-user devices.
    pub shared_memory: bool,
    /// QEMU is killed when the guest has not powered off by then.
    pub timeout: Duration,
}

impl VmSpec {
    /// The guest `guest` running the init's checks `tests` (like `"blk,rng"`): 512 MiB, one
    /// vCPU, TCG, no devices, 120 s.
    pub fn new(guest: &LinuxGuest, tests: &str) -> VmSpec {
        VmSpec {
            kernel: guest.kernel.clone(),
            initrd: guest.initrd.clone(),
            cmdline: format!("{} bulkhead.test={tests}", guest.cmdline_hint),
            memory_mib: 512,
            cpus: 1,
            accel: Accel::Tcg,
            devices: Vec::new(),
            shared_memory: false,
            timeout: Duration::from_secs(120),
        }
    }

    /// Adds a device.
    pub fn device(mut self, device: Device) -> VmSpec {
        self.devices.push(device);
        self
    }

    /// Appends `arg` (like `bulkhead.blk=vda,vdb`) to the kernel command line.
    pub fn arg(mut self, arg: &str) -> VmSpec {
        self.cmdline.push(' ');
        self.cmdline.push_str(arg);
        self
    }

    /// QEMU's arguments for this run.
    pub fn args(&self) -> Vec<OsString> {
        let shared = self.shared_memory || self.devices.iter().any(Device::is_vhost_user);
        let mut a: Vec<String> = ["-nodefaults", "-no-user-config", "-display", "none"]
            .iter()
            .chain(&["-serial", "stdio", "-no-reboot"])
            .map(|s| s.to_string())
            .collect();
        match self.accel {
            Accel::Tcg => a.extend(["-accel".into(), "tcg".into()]),
            Accel::Kvm => {
                a.extend(["-accel", "kvm", "-cpu", "host,-arch-capabilities"].map(String::from))
            }
        }
        let machine = if shared { "q35,memory-backend=mem" } else { "q35" };
        a.extend(["-machine".into(), machine.into()]);
        a.extend(["-m".into(), format!("{}M", self.memory_mib)]);
        a.extend(["-smp".into(), self.cpus.to_string()]);
        if shared {
            let size = self.memory_mib;
            a.extend([
                "-object".into(),
                format!("memory-backend-memfd,id=mem,size={size}M,share=on"),
            ]);
        }
        let mut out: Vec<OsString> = a.into_iter().map(OsString::from).collect();
        out.extend(["-kernel".into(), self.kernel.clone().into_os_string()]);
        out.extend(["-initrd".into(), self.initrd.clone().into_os_string()]);
        out.extend(["-append".into(), OsString::from(&self.cmdline)]);
        for (i, dev) in self.devices.iter().enumerate() {
            out.extend(dev.args(i).into_iter().map(OsString::from));
        }
        out
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// QEMU exited by itself (the guest powered off, or QEMU failed).
    Exited(ExitStatus),
    /// The timeout passed and QEMU was killed.
    TimedOut,
}

/// What one run produced.
#[derive(Clone, Debug)]
pub struct GuestRun {
    /// The whole serial console (and QEMU's standard error, after it).
    pub console: String,
    /// The `BH` report lines, in order.
    pub lines: Vec<BhLine>,
    /// How it ended.
    pub exit: Exit,
    /// From QEMU's start to its exit (or kill).
    pub elapsed: Duration,
    /// From QEMU's start to the `BH ready` line: the boot time, to the init.
    pub ready_after: Option<Duration>,
}

impl GuestRun {
    /// The `check` lines named `name` (one per disk for `blk`).
    pub fn checks(&self, name: &str) -> Vec<&BhLine> {
        self.lines.iter().filter(|l| l.event == "check" && l.get("name") == Some(name)).collect()
    }

    /// The first `check` line named `name`.
    pub fn check(&self, name: &str) -> Option<&BhLine> {
        self.checks(name).into_iter().next()
    }

    /// The `BH done` line, if the init got that far.
    pub fn done(&self) -> Option<&BhLine> {
        self.lines.iter().find(|l| l.event == "done")
    }

    /// Whether the guest powered off cleanly, reported `done status=ok`, and has only `ok`
    /// lines (at least one) for each of `checks`; the error says what went wrong.
    pub fn verify(&self, checks: &[&str]) -> Result<(), String> {
        match self.exit {
            Exit::Exited(s) if s.success() => {}
            Exit::Exited(s) => return Err(format!("QEMU exited with {s}")),
            Exit::TimedOut => {
                return Err(format!("the guest did not power off in {:?}", self.elapsed))
            }
        }
        for name in checks {
            let lines = self.checks(name);
            if lines.is_empty() || !lines.iter().all(|l| l.is_ok()) {
                let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                return Err(format!("check {name} did not pass: {lines:?}"));
            }
        }
        match self.done() {
            Some(done) if done.is_ok() => Ok(()),
            other => Err(format!("the init did not finish ok: {other:?}")),
        }
    }

    /// [`GuestRun::verify`], panicking with the guest's console on failure. For tests.
    pub fn assert_ok(&self, checks: &[&str]) {
        if let Err(why) = self.verify(checks) {
            panic!("{why}\n--- guest console ---\n{}--- end ---", self.console);
        }
    }
}

/// An installed QEMU.
#[derive(Clone, Debug)]
pub struct Qemu {
    binary: PathBuf,
}

impl Qemu {
    /// `$BULKHEAD_QEMU`, else the wrapper `scripts/install-qemu.sh` writes in the cache dir,
    /// else a `qemu-system-x86_64` on `PATH`.
    pub fn find() -> Result<Qemu, QemuError> {
        if let Some(path) = std::env::var_os("BULKHEAD_QEMU").filter(|v| !v.is_empty()) {
            let binary = PathBuf::from(path);
            return match binary.is_file() {
                true => Ok(Qemu { binary }),
                false => Err(QemuError::NotInstalled(binary)),
            };
        }
        let wrapper = crate::dirs::cache_dir()?.join(WRAPPER);
        if wrapper.is_file() {
            return Ok(Qemu { binary: wrapper });
        }
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("qemu-system-x86_64"))
                .find(|p| p.is_file())
        });
        match on_path {
            Some(binary) => Ok(Qemu { binary }),
            None => Err(QemuError::NotInstalled(wrapper)),
        }
    }

    /// The `qemu-system-x86_64` (wrapper) this runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Boots `spec` and waits for the guest to power off or the timeout to pass.
    pub fn run(&self, spec: &VmSpec) -> Result<GuestRun, QemuError> {
        let start = Instant::now();
        let mut child = Command::new(&self.binary)
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| QemuError::Spawn { program: self.binary.clone(), source })?;
        let stderr = read_all_in_background(child.stderr.take());
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line).trim_end().to_string();
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut run = collect(&rx, start, start + spec.timeout);
        run.exit = finish(&mut child, run.exit == Exit::TimedOut);
        run.elapsed = start.elapsed();
        if let Ok(err) = stderr.join() {
            run.console.push_str(&err);
        }
        Ok(run)
    }
}

/// Gathers console lines until the console closes or `deadline` passes.
fn collect(rx: &mpsc::Receiver<(Instant, String)>, start: Instant, deadline: Instant) -> GuestRun {
    let mut run = GuestRun {
        console: String::new(),
        lines: Vec::new(),
        exit: Exit::TimedOut,
        elapsed: Duration::ZERO,
        ready_after: None,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                if let Some(bh) = BhLine::parse(&line) {
                    if bh.event == "ready" && run.ready_after.is_none() {
                        run.ready_after = Some(at - start);
                    }
                    run.lines.push(bh);
                }
                run.console.push_str(&line);
                run.console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Timeout) => return run,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Any status: `finish` replaces it with the real one.
                run.exit = Exit::Exited(ExitStatus::default());
                return run;
            }
        }
    }
}

/// Waits for QEMU (killing it first if `kill`), giving it 10 s to exit after its console closed.
fn finish(child: &mut Child, kill: bool) -> Exit {
    if !kill {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Exit::Exited(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Exit::TimedOut
}

/// Reads a pipe to its end on a thread.
pub(crate) fn read_all_in_background<R: Read + Send + 'static>(
    pipe: Option<R>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> LinuxGuest {
        LinuxGuest {
            kernel: "/g/vmlinuz".into(),
            initrd: "/g/initramfs.cpio".into(),
            cmdline_hint: "console=ttyS0".into(),
            notices: Vec::new(),
        }
    }

    fn args(spec: &VmSpec) -> Vec<String> {
        spec.args().into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn plain_tcg_run() {
        let spec = VmSpec::new(&guest(), "cpus,mem").device(Device::VirtioRng);
        let a = args(&spec);
        assert!(has_pair(&a, "-accel", "tcg"));
        assert!(has_pair(&a, "-machine", "q35"));
        assert!(has_pair(&a, "-m", "512M"));
        assert!(has_pair(&a, "-kernel", "/g/vmlinuz"));
        assert!(has_pair(&a, "-append", "console=ttyS0 bulkhead.test=cpus,mem"));
        assert!(has_pair(&a, "-device", "virtio-rng-pci"));
        assert!(!a.iter().any(|s| s.contains("memfd")), "{a:?}");
        assert!(a.contains(&"-nodefaults".to_string()));
    }

    #[test]
    fn vhost_user_devices_share_memory() {
        let spec = VmSpec::new(&guest(), "blk")
            .device(Device::vhost_user_blk("/run/a,b.sock"))
            .device(Device::VhostUserRng { socket: "/run/rng.sock".into() })
            .arg("bulkhead.blk=vda");
        let a = args(&spec);
        assert!(has_pair(&a, "-machine", "q35,memory-backend=mem"));
        assert!(has_pair(&a, "-object", "memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(has_pair(&a, "-chardev", "socket,id=chr0,path=/run/a,,b.sock"));
        assert!(has_pair(&a, "-device", "vhost-user-blk-pci,chardev=chr0,num-queues=1"));
        assert!(has_pair(&a, "-chardev", "socket,id=chr1,path=/run/rng.sock"));
        assert!(has_pair(&a, "-device", "vhost-user-rng-pci,chardev=chr1"));
        assert!(spec.cmdline.ends_with("bulkhead.test=blk bulkhead.blk=vda"));
    }

    #[test]
    fn disks_and_nics() {
        let mut spec = VmSpec::new(&guest(), "blk,net")
            .device(Device::VirtioBlk { path: "/d/disk.raw".into(), read_only: true })
            .device(Device::NetTap { ifname: "bhtap0".into() })
            .device(Device::VhostUserNet { socket: "/n.sock".into() });
        spec.accel = Accel::Kvm;
        let a = args(&spec);
        assert!(has_pair(&a, "-cpu", "host,-arch-capabilities"));
        assert!(has_pair(
            &a,
            "-blockdev",
            "driver=file,node-name=disk0,filename=/d/disk.raw,read-only=on"
        ));
        assert!(has_pair(&a, "-device", "virtio-blk-pci,drive=disk0"));
        assert!(has_pair(&a, "-netdev", "tap,id=net1,ifname=bhtap0,script=no,downscript=no"));
        assert!(has_pair(&a, "-netdev", "vhost-user,id=net2,chardev=chr2"));
        assert!(has_pair(&a, "-device", "virtio-net-pci,netdev=net2,romfile="));
    }

    fn finished(exit: Exit, console: &str) -> GuestRun {
        GuestRun {
            lines: console.lines().filter_map(BhLine::parse).collect(),
            console: console.into(),
            exit,
            elapsed: Duration::from_secs(2),
            ready_after: None,
        }
    }

    #[test]
    fn verify_needs_clean_exit_ok_checks_and_done() {
        use std::os::unix::process::ExitStatusExt;
        let clean = Exit::Exited(ExitStatus::from_raw(0));
        let good = "BH ready kernel=6.1\nBH check name=blk status=ok dev=vda\n\
                    BH check name=blk status=ok dev=vdb\nBH done status=ok\n";
        assert_eq!(finished(clean, good).verify(&["blk"]), Ok(()));
        let err = finished(clean, good).verify(&["blk", "rng"]).unwrap_err();
        assert!(err.contains("check rng"), "{err}");
        let one_bad = good.replace("ok dev=vdb", "fail reason=mismatch dev=vdb");
        assert!(finished(clean, &one_bad).verify(&["blk"]).is_err());
        let no_done = good.replace("BH done status=ok\n", "");
        assert!(finished(clean, &no_done).verify(&[]).is_err());
        assert!(finished(Exit::TimedOut, good).verify(&["blk"]).is_err());
        let crashed = Exit::Exited(ExitStatus::from_raw(1 << 8));
        assert!(finished(crashed, good).verify(&["blk"]).is_err());
    }

    #[test]
    fn missing_qemu_names_the_install_script() {
        let err = QemuError::NotInstalled("/nowhere".into()).to_string();
        assert!(err.contains("scripts/install-qemu.sh"), "{err}");
    }
}
