//! `bulkhead run`: boot a VM and show its console. The arguments become a
//! [`bulkhead_vmm::Config`], which [`bulkhead_vmm::run`] runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bulkhead_core::boot::KernelSource;
use bulkhead_core::config::Resume;
use bulkhead_core::legacy::boot_timer::BootClock;
use bulkhead_core::supervisor::RestartPolicy;
use bulkhead_core::virtio::{ConfigSpace, DeviceKind, DeviceShape, ExternalBackend};
use bulkhead_core::VmConfig;
use bulkhead_devices::console::{ConsoleConfig, ConsoleHost};
use bulkhead_devices::{BlkConfig, DeviceConfig, RngConfig};
use bulkhead_vmm::backends::outside::{
    built_in_names, OutsideSpec, Profile, Seccomp, SOCKET_PLACEHOLDER,
};
use bulkhead_vmm::{Config, CoreSeccomp, Mode, Request};
use clap::Args;

#[derive(Args)]
pub struct RunArgs {
    /// Kernel to boot (bzImage, ELF vmlinux or PVH ELF); default: the built-in guest.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (replaces the default).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Guest memory (e.g. 512M, 2G; a bare number is MiB).
    #[arg(long, default_value = "256M", value_parser = super::parse_size)]
    pub memory: u64,
    /// Boot a Linux kernel even where this host cannot run one (KVM-PVM).
    #[arg(long)]
    pub force: bool,
    /// A virtio-blk disk: PATH[,readonly][,format=raw|qcow2|vmdk][,queues=N][,serial=ID], and
    /// rate limits [,bw=SIZE@MS[+BURST]][,ops=N@MS[+BURST]]: SIZE bytes (K, M, G: binary) or N
    /// requests every MS milliseconds, BURST more once (repeatable).
    #[arg(long, value_name = "PATH[,OPTIONS]")]
    pub disk: Vec<String>,
    /// A virtio-net device on a host tap: tap=NAME[,mac=52:54:00:12:34:56], and rate limits
    /// [,rx-bw=SIZE@MS[+BURST]][,rx-ops=N@MS[+BURST]][,tx-bw=…][,tx-ops=…] (rx: what the guest
    /// receives) (repeatable).
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,LIMITS]")]
    pub net: Vec<String>,
    /// A virtio-rng device fed by the host's getrandom(2); --rng=bw=SIZE@MS[+BURST],ops=N@MS
    /// limits the bytes of entropy and the requests.
    #[arg(
        long,
        value_name = "LIMITS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = ""
    )]
    pub rng: Option<String>,
    /// A virtio-console (hvc0 in a Linux guest), its host side opened by the core: socket=PATH
    /// (a unix socket it listens on, one client at a time), pty (a new pseudo-terminal, named
    /// on stderr) or stdio (this process's stdin and stdout: the serial console then gives up
    /// its input and still writes to stdout). Repeatable; stdio once.
    #[arg(long, value_name = "socket=PATH|pty|stdio")]
    pub console: Vec<String>,
    /// Where device backends run: each in a sandboxed process, or on threads of the core.
    #[arg(long, value_enum, default_value = "microkernel")]
    pub mode: Mode,
    /// Restart device backends that fail (microkernel mode).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off,
          action = clap::ArgAction::Set)]
    pub restart: bool,
    /// Keep a standby compartment for each disk, network interface and rng, started ahead
    /// (sandboxed, in its cgroup, handed the device's files and its vhost-user set-up): a
    /// restart then only starts its queues. Costs an idle process per device (microkernel
    /// mode).
    #[arg(long, value_name = "on|off", default_value = "off", value_parser = parse_on_off,
          action = clap::ArgAction::Set)]
    pub standby: bool,
    /// Most restarts of one device within --restart-window before it is marked failed.
    #[arg(long, default_value_t = 100)]
    pub restart_max: u32,
    /// The window for --restart-max, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub restart_window: f64,
    /// Seconds without progress, with requests outstanding, before a backend counts as hung (0: never).
    #[arg(long, default_value_t = 5.0)]
    pub watchdog: f64,
    /// Attach a vhost-user backend Bulkhead did not start: TYPE,socket=PATH[,queues=N][,tag=T].
    /// TYPE: a virtio device type by name (blk, net, rng, console, vsock, fs, sound, gpio, i2c,
    /// …) or number. Queues: the backend's count (GET_QUEUE_NUM), else the type's. tag=T:
    /// virtio-fs's mount tag, for backends that have no configuration space (virtiofsd).
    #[arg(long = "vhost-user", value_name = "TYPE,socket=PATH")]
    pub vhost_user: Vec<String>,
    /// Run a vhost-user backend program Bulkhead did not write as a compartment, restarted
    /// when it fails: TYPE[,OPTIONS],exec=PROGRAM ARGS… — `{socket}` in ARGS is where it
    /// listens. OPTIONS: ro=PATH and rw=PATH (what it may read, write; repeatable),
    /// profile=NAME|FILE (its seccomp profile; default: the built-in one for PROGRAM's name),
    /// seccomp=on|log|off (log: allow and name each call outside the profile), queues=N,
    /// tag=T (fs).
    #[arg(long = "device", value_name = "TYPE,…,exec=PROGRAM ARGS")]
    pub device: Vec<String>,
    /// The VM's name for `bulkhead ctl` (default: vm-PID).
    #[arg(long)]
    pub name: Option<String>,
    /// Restore the VM a snapshot folder holds (`bulkhead ctl VM snapshot --to DIR`) instead of
    /// booting: its memory and its vCPUs' and devices' state, with the devices it was started
    /// with (the same images, taps and options, which the snapshot names). Beside it only
    /// --name and -v may be given.
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
    /// Let `bulkhead ctl VM update-core` hand this VM to a new core binary: a thread of the
    /// core keeps the rights to execute it (see docs/ARCHITECTURE.md, "Updating the core").
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off,
          action = clap::ArgAction::Set)]
    pub core_update: bool,
    /// Take over the VM a previous core hands over in the memfd FD (what `update-core` runs;
    /// not for users).
    #[arg(long, value_name = "FD", hide = true)]
    pub takeover: Option<i32>,
    /// Describe the devices at start and say how the VM ended, on stderr.
    #[arg(long, short)]
    pub verbose: bool,
    #[command(flatten)]
    pub limits: super::limits::LimitArgs,
    /// Seccomp on the core's own threads, an allow-list per thread class: on (a call outside
    /// it stops the core, naming it), log (allowed, logged by the kernel's audit), off.
    #[arg(long, value_enum, default_value = "on")]
    pub core_seccomp: CoreSeccomp,
    /// Log the guest's boot time on stderr when it writes 123 to I/O port 0x3f0 (as
    /// Firecracker's --boot-timer), measured from this command's start.
    #[arg(long)]
    pub boot_timer: bool,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}': use on or off")),
    }
}

fn restart_policy(args: &RunArgs) -> anyhow::Result<RestartPolicy> {
    let secs = |v: f64, what: &str| {
        Duration::try_from_secs_f64(v)
            .map_err(|_| anyhow::anyhow!("{what} must be a number of seconds, not {v}"))
    };
    let watchdog = secs(args.watchdog, "--watchdog")?;
    Ok(RestartPolicy {
        enabled: args.restart,
        max_restarts: args.restart_max,
        window: secs(args.restart_window, "--restart-window")?,
        hang_deadline: (!watchdog.is_zero()).then_some(watchdog),
        ..RestartPolicy::default()
    })
}

/// `path` relative to the directory the command was run in, whoever opens it later.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// A console asked for with `--console SPEC`, named `console{i}`.
fn console_request(i: usize, spec: &str) -> anyhow::Result<Request> {
    let mut host: ConsoleHost = spec.parse().with_context(|| format!("--console {spec}"))?;
    match &mut host {
        // The core listens on it: a relative name means the directory `run` was started in.
        ConsoleHost::Socket(path) => *path = absolute(path)?,
        ConsoleHost::Pty | ConsoleHost::Stdio => {}
        ConsoleHost::Open(_) | ConsoleHost::Inherited(_) => anyhow::bail!(
            "--console {spec}: descriptors are how a core hands a console to its compartment; \
             use socket=PATH, pty or stdio"
        ),
    }
    let config = DeviceConfig::Console(ConsoleConfig { host });
    Ok(Request { name: format!("console{i}"), config, args: Vec::new(), limits: None })
}

/// The devices asked for with --disk, --net, --rng and --console.
fn device_requests(args: &RunArgs) -> anyhow::Result<Vec<Request>> {
    let mut requests = Vec::new();
    for (i, spec) in args.disk.iter().enumerate() {
        let mut config: BlkConfig = spec.parse().with_context(|| format!("--disk {spec}"))?;
        // The compartment opens it: a relative name means the directory `run` was started in.
        config.path = absolute(&config.path)?;
        let args = vec!["--disk".into(), config.to_string()];
        let config = DeviceConfig::Blk(config);
        requests.push(Request { name: format!("blk{i}"), config, args, limits: None });
    }
    for (i, spec) in args.net.iter().enumerate() {
        let config: DeviceConfig =
            format!("net,{spec}").parse().with_context(|| format!("--net {spec}"))?;
        requests.push(Request { name: format!("net{i}"), config, args: Vec::new(), limits: None });
    }
    if let Some(spec) = &args.rng {
        let config: RngConfig = spec.parse().with_context(|| format!("--rng={spec}"))?;
        // The compartment reads its limits from the core's limits page.
        let config = DeviceConfig::Rng(config);
        requests.push(Request { name: "rng0".into(), config, args: Vec::new(), limits: None });
    }
    for (i, spec) in args.console.iter().enumerate() {
        requests.push(console_request(i, spec)?);
    }
    if stdio_consoles(&requests) > 1 {
        anyhow::bail!("--console stdio can be given once: there is one stdin");
    }
    Ok(requests)
}

/// The device's name: its type's name and how many of that type came before it.
fn device_name(kind: DeviceKind, taken: &mut HashMap<&'static str, usize>) -> String {
    let index = taken.entry(kind.name()).or_insert(0);
    let name = format!("{}{index}", kind.name());
    *index += 1;
    name
}

/// Applies an option every vhost-user device takes (`queues=N`, `tag=T` for fs) to `shape`;
/// false if `part` is none of them.
fn shape_option(
    shape: &mut DeviceShape,
    part: &str,
    flag: &str,
    spec: &str,
) -> anyhow::Result<bool> {
    match part.split_once('=') {
        Some(("queues", n)) => match n.parse::<usize>() {
            Ok(n) if (1..=bulkhead_core::virtio::MAX_QUEUES).contains(&n) => shape.queues = Some(n),
            _ => anyhow::bail!(
                "{flag} {spec}: queues must be a number from 1 to {}",
                bulkhead_core::virtio::MAX_QUEUES
            ),
        },
        Some(("tag", tag)) if shape.kind.name() == "fs" => {
            if tag.is_empty() || tag.len() > bulkhead_core::virtio::FS_TAG_MAX {
                anyhow::bail!(
                    "{flag} {spec}: a virtio-fs tag has 1 to {} bytes",
                    bulkhead_core::virtio::FS_TAG_MAX
                );
            }
            shape.config = ConfigSpace::FsTag(tag.to_string());
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// How many consoles are on stdin and stdout.
fn stdio_consoles(requests: &[Request]) -> usize {
    let on_stdio = |r: &&Request| matches!(&r.config, DeviceConfig::Console(c) if c.host == ConsoleHost::Stdio);
    requests.iter().filter(on_stdio).count()
}

/// Parses `TYPE,socket=PATH[,queues=N][,tag=T]`; `taken` counts the devices of each type so
/// far, for its name (`blk1` after a `--disk`'s `blk0`).
fn external_backend(
    spec: &str,
    taken: &mut HashMap<&'static str, usize>,
) -> anyhow::Result<ExternalBackend> {
    let mut parts = spec.split(',');
    let kind = DeviceKind::parse(parts.next().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("--vhost-user {spec}: {e}"))?;
    let mut shape = DeviceShape::of(kind);
    let mut socket = None;
    for part in parts {
        if shape_option(&mut shape, part, "--vhost-user", spec)? {
            continue;
        }
        match part.split_once('=') {
            Some(("socket", path)) => socket = Some(absolute(Path::new(path))?),
            _ => anyhow::bail!(
                "--vhost-user {spec}: unknown option {part:?}; give socket=PATH, queues=N{}",
                if kind.name() == "fs" { " or tag=T" } else { "" }
            ),
        }
    }
    let socket = socket
        .ok_or_else(|| anyhow::anyhow!("--vhost-user {spec}: give the socket as socket=PATH"))?;
    Ok(ExternalBackend { shape, name: device_name(kind, taken), socket })
}

/// `PROGRAM` as a path: as given when it names a folder, else found in `$PATH`.
fn find_program(program: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable =
        |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path = absolute(Path::new(program))?;
        if !path.exists() {
            anyhow::bail!("{program}: no such file");
        }
        if !runnable(&path) {
            anyhow::bail!("{program} is not a program (not an executable file)");
        }
        return Ok(path);
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|p| runnable(p))
        .ok_or_else(|| anyhow::anyhow!("{program}: no such program in $PATH; give its path"))
}

/// Parses `TYPE[,OPTIONS],exec=PROGRAM ARGS…` (see `--device`).
fn outside_backend(
    spec: &str,
    taken: &mut HashMap<&'static str, usize>,
) -> anyhow::Result<OutsideSpec> {
    let (head, command) = match spec.split_once(",exec=") {
        Some(split) => split,
        None => anyhow::bail!(
            "--device {spec}: give the backend's program last, as exec=PROGRAM ARGS… (for a \
             backend you start yourself, use --vhost-user TYPE,socket=PATH)"
        ),
    };
    let mut parts = head.split(',');
    let kind = DeviceKind::parse(parts.next().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("--device {spec}: {e}"))?;
    let mut shape = DeviceShape::of(kind);
    let (mut read, mut write, mut profile, mut seccomp) =
        (Vec::new(), Vec::new(), None, Seccomp::On);
    for part in parts {
        if shape_option(&mut shape, part, "--device", spec)? {
            continue;
        }
        match part.split_once('=') {
            Some(("ro", path)) => read.push(absolute(Path::new(path))?),
            Some(("rw", path)) => write.push(absolute(Path::new(path))?),
            Some(("profile", name)) => {
                profile = Some(Profile::load(name).with_context(|| format!("--device {spec}"))?)
            }
            Some(("seccomp", mode)) => {
                seccomp = match mode {
                    "on" => Seccomp::On,
                    "log" => Seccomp::Log,
                    "off" => Seccomp::Off,
                    _ => anyhow::bail!("--device {spec}: seccomp is on, log or off, not {mode:?}"),
                }
            }
            _ => anyhow::bail!(
                "--device {spec}: unknown option {part:?}; give ro=PATH, rw=PATH, profile=NAME|FILE, \
                 seccomp=on|log|off, queues=N{}, then exec=PROGRAM ARGS…",
                if kind.name() == "fs" { ", tag=T" } else { "" }
            ),
        }
    }
    let words = shlex::split(command)
        .ok_or_else(|| anyhow::anyhow!("--device {spec}: unbalanced quotes in exec="))?;
    let Some((program, args)) = words.split_first() else {
        anyhow::bail!("--device {spec}: exec= names no program");
    };
    let program = find_program(program).with_context(|| format!("--device {spec}"))?;
    if !args.iter().any(|a| a.contains(SOCKET_PLACEHOLDER)) {
        anyhow::bail!(
            "--device {spec}: put {SOCKET_PLACEHOLDER} in the program's arguments where it takes \
             the path of its vhost-user socket (e.g. --socket-path={SOCKET_PLACEHOLDER})"
        );
    }
    let profile = match profile {
        Some(profile) => profile,
        None => match Profile::for_program(&program) {
            Some(profile) => profile,
            None if seccomp != Seccomp::On => Profile::default(),
            None => anyhow::bail!(
                "--device {spec}: Bulkhead has no seccomp profile for {} (it has: {}); give one \
                 with profile=FILE, or run it once with seccomp=log to see the calls it makes",
                program.display(),
                built_in_names().collect::<Vec<_>>().join(", ")
            ),
        },
    };
    Ok(OutsideSpec {
        name: device_name(kind, taken),
        shape,
        program,
        args: args.to_vec(),
        read,
        write,
        profile,
        seccomp,
        cwd: std::env::current_dir().ok(),
    })
}

impl TryFrom<RunArgs> for Config {
    type Error = anyhow::Error;

    fn try_from(args: RunArgs) -> anyhow::Result<Config> {
        // The boot timer counts from here: as early as the command line is read.
        let boot_timer = args.boot_timer.then(BootClock::now);
        let kernel = match &args.kernel {
            Some(path) => KernelSource::File(absolute(path)?),
            None => KernelSource::Bytes(bulkhead_guest_elf::GUEST_ELF),
        };
        if args.cpus > u32::from(u8::MAX) {
            anyhow::bail!(
                "--cpus must be between 1 and {}, not {}",
                bulkhead_core::vm::MAX_CPUS,
                args.cpus
            );
        }
        let mut vm = VmConfig::new(kernel);
        vm.initrd = args.initrd.as_deref().map(absolute).transpose()?;
        vm.cmdline = args.cmdline.clone();
        vm.cpus = args.cpus as u8;
        vm.memory = args.memory;
        vm.handle_signals = true;
        vm.force = args.force;
        vm.verbose = args.verbose;
        vm.restart = restart_policy(&args)?;
        vm.boot_timer = boot_timer;
        let name = args.name.clone().unwrap_or_else(|| format!("vm-{}", std::process::id()));
        bulkhead_api::paths::check_name(&name).with_context(|| format!("--name {name}"))?;
        let devices = device_requests(&args)?;
        // stdin goes to one console: the serial port's, unless a virtio console is on stdio.
        vm.console_input = stdio_consoles(&devices) == 0;
        args.limits.check(args.cpus, args.memory, args.mode == Mode::Microkernel)?;
        if args.standby && args.mode != Mode::Microkernel {
            anyhow::bail!("--standby on is for microkernel mode: monolithic mode's devices are threads of the core, which are not restarted");
        }
        if args.standby && !args.restart {
            anyhow::bail!("--standby on needs --restart on: a standby only takes over a restart");
        }
        let mut taken = HashMap::new();
        for d in &devices {
            *taken.entry(bulkhead_vmm::backends::core_kind(d.config.kind()).name()).or_insert(0) +=
                1;
        }
        let outside = args
            .device
            .iter()
            .map(|spec| outside_backend(spec, &mut taken))
            .collect::<Result<_, _>>()?;
        let external = args
            .vhost_user
            .iter()
            .map(|spec| external_backend(spec, &mut taken))
            .collect::<Result<_, _>>()?;
        Ok(Config {
            vm,
            name,
            mode: args.mode,
            devices,
            external,
            outside,
            limits: args.limits.limits(args.memory),
            core_seccomp: args.core_seccomp,
            standby: args.standby,
            core_update: args.core_update,
            taken_over: false,
            kept: Vec::new(),
        })
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let argv = run_arguments();
    if let Some(fd) = args.takeover {
        return take_over(fd, &argv);
    }
    if let Some(dir) = &args.restore {
        return bulkhead_vmm::run(restore_config(dir, &args, &argv)?);
    }
    let mut config: Config = args.try_into()?;
    config.vm.recipe = Some(recipe(&argv));
    bulkhead_vmm::run(config)
}

/// The arguments after `run`, as this process was given them.
fn run_arguments() -> Vec<String> {
    let all: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    match all.iter().position(|a| a == "run") {
        Some(i) => all[i + 1..].to_vec(),
        None => Vec::new(),
    }
}

/// What a snapshot keeps of how the VM was started: `run`'s arguments and the folder they were
/// given in (relative paths in them are resolved there on restore).
#[derive(serde::Serialize, serde::Deserialize)]
struct Recipe {
    args: Vec<String>,
    cwd: Option<PathBuf>,
}

fn recipe(argv: &[String]) -> String {
    let recipe = Recipe { args: argv.to_vec(), cwd: std::env::current_dir().ok() };
    serde_json::to_string(&recipe).expect("a recipe serializes")
}

/// `bulkhead run` parsed from a snapshot's recipe.
#[derive(clap::Parser)]
#[command(name = "bulkhead run")]
struct RecipeArgs {
    #[command(flatten)]
    run: RunArgs,
}

/// The VM a snapshot holds, as its recipe starts it, to be restored from `dir`.
fn restore_config(dir: &Path, given: &RunArgs, argv: &[String]) -> anyhow::Result<Config> {
    // Only the name and -v are this run's own; the rest is the snapshot's VM.
    let mut rest = argv.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--restore" | "--name" => {
                rest.next();
            }
            "-v" | "--verbose" => {}
            a if a.starts_with("--restore=") || a.starts_with("--name=") => {}
            other => anyhow::bail!(
                "--restore starts the VM with the options it was started with, which the \
                 snapshot keeps; give only --name and -v beside it, not {other}"
            ),
        }
    }
    let dir = absolute(dir)?;
    let snapshot = bulkhead_core::state::Snapshot::load(&dir)?;
    let text = snapshot.manifest.recipe.clone().with_context(|| {
        format!("{}: the snapshot does not say how its VM was started", dir.display())
    })?;
    let what = format!("{}: the snapshot's", dir.display());
    let mut args = recipe_args(&text, &what)?;
    if given.name.is_some() {
        args.name.clone_from(&given.name);
    }
    args.verbose |= given.verbose;
    let mut config: Config = args.try_into()?;
    config.vm.recipe = Some(text);
    config.vm.resume = Some(Resume::Snapshot(Box::new(snapshot)));
    Ok(config)
}

/// `bulkhead run` as the recipe `text` starts it, in the folder it names (relative paths in
/// it are that folder's); `what` names the recipe in errors.
fn recipe_args(text: &str, what: &str) -> anyhow::Result<RunArgs> {
    let recipe: Recipe = serde_json::from_str(text)
        .with_context(|| format!("{what} recipe is not one `bulkhead run` wrote"))?;
    if recipe.args.iter().any(|a| a == "--restore" || a.starts_with("--restore=")) {
        anyhow::bail!("{what} recipe restores another snapshot");
    }
    if let Some(cwd) = recipe.cwd.as_deref().filter(|cwd| cwd.is_dir()) {
        std::env::set_current_dir(cwd).with_context(|| {
            format!("cannot enter the folder the VM was started in, {}", cwd.display())
        })?;
    }
    let argv = std::iter::once("bulkhead run".to_string()).chain(recipe.args.iter().cloned());
    Ok(<RecipeArgs as clap::Parser>::try_parse_from(argv)
        .map_err(|e| anyhow::anyhow!("{what} recipe: {e}"))?
        .run)
}

/// Test-only (debug builds): `BULKHEAD_TAKEOVER_FAULT=NAME` makes a core whose binary's file
/// is named NAME fail to take a VM over, so that the hand-back is tested against a real new
/// binary.
fn takeover_fault() -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        let own = std::env::current_exe().ok();
        let name = own.as_deref().and_then(Path::file_name).and_then(|n| n.to_str());
        if let (Ok(faulty), Some(name)) = (std::env::var("BULKHEAD_TAKEOVER_FAULT"), name) {
            if faulty == name {
                anyhow::bail!("BULKHEAD_TAKEOVER_FAULT names this binary ({name})");
            }
        }
    }
    Ok(())
}

/// `bulkhead run --takeover FD`: the VM a previous core handed over (see
/// `bulkhead_vmm::update`), resumed on its memory; if this core cannot, the VM is handed back.
fn take_over(fd: i32, argv: &[String]) -> anyhow::Result<i32> {
    if argv.len() != 2 {
        anyhow::bail!("--takeover is given alone: it is how a core hands its VM to the next");
    }
    let received = bulkhead_vmm::update::Received::read(fd)?;
    let config = (|| {
        takeover_fault()?;
        let h = &received.handover;
        let mut args = recipe_args(&h.recipe, "the handover's")?;
        args.name = Some(h.name.clone());
        args.verbose = h.verbose;
        let mut config: Config = args.try_into()?;
        if config.vm.memory != h.memory_bytes {
            anyhow::bail!(
                "the recipe asks for {} bytes of memory where the VM has {}",
                config.vm.memory,
                h.memory_bytes
            );
        }
        config.vm.recipe = Some(h.recipe.clone());
        config.taken_over = true;
        config.kept = received.kept();
        let takeover = bulkhead_core::state::handover::Takeover {
            machine: received.machine()?,
            memory: received.memory()?,
            paused_at_ns: h.paused_at_ns,
        };
        config.vm.resume = Some(Resume::Takeover(Box::new(takeover)));
        Ok(config)
    })();
    let failed = match config.map(bulkhead_vmm::run) {
        Ok(Ok(code)) => return Ok(code),
        Ok(Err(e)) if bulkhead_core::vm::vcpus_started() => return Err(e),
        Ok(Err(e)) | Err(e) => e,
    };
    Err(received.hand_back(&failed))
}
