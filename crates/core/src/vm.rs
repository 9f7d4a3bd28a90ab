//! A VM from start to end: KVM set-up, guest memory, boot, the core's
//! devices, vCPU threads, and the main thread's event loop (console input,
//! signals, the exit latch).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootSpec, Kernel, KernelKind, MmioDevice};
use crate::bus::Bus;
use crate::config::{Resume, VmConfig, DEFAULT_LINUX_CMDLINE};
use crate::cpu;
use crate::exit::{ExitLatch, VmExit};
use crate::host::{self, HostKind};
use crate::irq::{self, ioapic::IoApic};
use crate::layout::{self, ports};
use crate::legacy::boot_timer::{BootClock, BootTimer};
use crate::legacy::i8042::{Keyboard, I8042};
use crate::legacy::power::AcpiPower;
use crate::legacy::serial::SerialConsole;
use crate::memory::{GuestRam, MemoryError};
use crate::supervisor::Supervisor;
use crate::vcpu::{VcpuShared, VcpuThread};
use crate::virtio::attach::{attach_all, cmdline_entries, AttachError};

/// The most vCPUs a VM may have (xAPIC IDs in the MADT are 8-bit).
pub const MAX_CPUS: u8 = 254;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Kvm(#[from] host::OpenError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("{kernel} is not the built-in guest but (presumably) a Linux kernel, and this host's KVM is {host}: guest kernel code runs in an instruction emulator here and stock Linux does not boot. Run the built-in guest (no --kernel), use a host with VT-x/AMD-V, or pass --force to try anyway")]
    ForeignKernelOnPvm { kernel: String, host: &'static str },
    #[error("--cpus must be between 1 and {max}, not {given}")]
    Cpus { given: u32, max: u8 },
    #[error("KVM refused to {what}")]
    Setup { what: &'static str, source: kvm_ioctls::Error },
    #[error("cannot {what}")]
    Io { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Snapshot(#[from] crate::state::SnapshotError),
    #[error("cannot restore {}: {reason}", dir.display())]
    Restore { dir: std::path::PathBuf, reason: String },
}

fn setup(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Setup { what, source }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// Boots the VM described by `config` and runs it to its end.
pub fn run(config: VmConfig) -> Result<VmExit, VmError> {
    let started = std::time::Instant::now();
    let host = HostKind::detect();
    let kvm = host::open_kvm()?;
    let kernel = Kernel::open(&config.kernel)?;
    check_cpus(&kvm, config.cpus)?;
    let confine_alarm = config.confine.clone();
    crate::virtio::alarm::start(move || {
        if let Some(confine) = confine_alarm {
            // A thread of the event loop's class: it only shuts sockets down.
            let _ = confine(crate::config::CoreThread::EventLoop);
        }
    })
    .map_err(io("start the alarm"))?;
    let resume = config.resume;
    let from = match &resume {
        Some(Resume::Snapshot(snapshot)) => snapshot.dir.clone(),
        Some(Resume::Takeover(_)) => "the previous core's handover".into(),
        None => Default::default(),
    };
    let restoring = |reason: String| VmError::Restore { dir: from.clone(), reason };
    if let Some(Resume::Snapshot(snapshot)) = &resume {
        let m = &snapshot.manifest;
        if m.memory_bytes != config.memory || m.cpus != config.cpus {
            return Err(restoring(format!(
                "the snapshot has {} vCPUs and {} bytes of memory where the VM was given {} and {}",
                m.cpus, m.memory_bytes, config.cpus, config.memory
            )));
        }
    }
    let mut filled = None;
    let (ram, machine_state) = match resume {
        None => (Arc::new(GuestRam::new(config.memory)?), None),
        Some(Resume::Snapshot(snapshot)) => {
            let ram = Arc::new(GuestRam::new(config.memory)?);
            let start = std::time::Instant::now();
            snapshot.fill(&ram)?;
            filled = Some(start.elapsed());
            (ram, Some((snapshot.machine, None)))
        }
        Some(Resume::Takeover(takeover)) => {
            let crate::state::handover::Takeover { machine, memory, paused_at_ns } = *takeover;
            if machine.vcpus.len() != usize::from(config.cpus) {
                return Err(restoring(format!(
                    "the VM had {} vCPUs where this core was given {}",
                    machine.vcpus.len(),
                    config.cpus
                )));
            }
            (
                Arc::new(GuestRam::from_file(memory, config.memory)?),
                Some((machine, Some(paused_at_ns))),
            )
        }
    };
    let vm = create_vm(&kvm, &ram)?;
    let exit = ExitLatch::new().map_err(io("create the exit event"))?;
    let mut devices = core_devices(&vm, &exit, config.console, config.boot_timer)?;
    let virtio = attach_all(&vm, &ram, &devices.ioapic, &mut devices.mmio, config.devices)?;
    if let Some((machine, _)) = &machine_state {
        restore_devices(machine, &devices, &virtio).map_err(restoring)?;
    }
    if config.verbose {
        for d in &virtio {
            eprintln!(
                "bulkhead: {} at {:#x} irq {}: {}",
                d.name, d.window.base, d.window.irq, d.description
            );
        }
    }
    let windows: Vec<_> = virtio.iter().map(|d| d.window).collect();
    let spec = BootSpec {
        kernel: &kernel,
        initrd: config.initrd.clone(),
        cmdline: full_cmdline(config.cmdline.as_deref(), kernel.kind, &windows),
        cpus: config.cpus,
        devices: windows,
    };
    // A restored VM's memory holds its kernel, where it stood.
    let entry = match &machine_state {
        None => Some(boot::load(&ram.memory, ram.size, &spec)?),
        Some(_) => None,
    };
    // Refused only once it loaded, so that a malformed image is reported as such.
    if kernel.kind.is_foreign() && !host.runs_linux() && !config.force {
        return Err(VmError::ForeignKernelOnPvm {
            kernel: kernel.name.clone(),
            host: host.describe(),
        });
    }
    let serial = devices.serial.clone();
    let gate = Arc::new(crate::vcpu::Gate::new(config.cpus));
    let ioapic = devices.ioapic.clone();
    let shared = VcpuShared {
        pio: Arc::new(devices.pio),
        mmio: Arc::new(devices.mmio),
        ioapic: devices.ioapic,
        exit: exit.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        placement: config.placement.clone(),
        confine: config.confine.clone(),
        gate: gate.clone(),
        msrs: Arc::new(Vec::new()),
        xcrs: kvm.check_extension(Cap::Xcrs),
    };
    let confine = config.confine.clone();
    let supervisor_started: crate::supervisor::ThreadStart = Arc::new(move || match &confine {
        Some(confine) => confine(crate::config::CoreThread::Supervisor),
        None => Ok(()),
    });
    let supervisor =
        Supervisor::start(virtio, config.restart.clone(), exit.clone(), supervisor_started)
            .map_err(io("start the supervisor"))?;
    let keyboard = devices.keyboard.clone();
    let machine = crate::state::Machine::new(crate::state::Parts {
        vm: vm.clone(),
        ram: ram.clone(),
        gate,
        ioapic,
        serial: serial.clone(),
        supervisor: supervisor.handle(),
        recipe: config.recipe.clone(),
        cpus: config.cpus,
        exit: exit.clone(),
    });
    let control = config.on_start.map(|start| {
        start(crate::config::Started {
            supervisor: supervisor.handle(),
            keyboard,
            machine: machine.clone(),
        })
    });
    let start = match (&machine_state, entry) {
        (Some((machine, _)), _) => Start::Restore { machine, from: &from },
        (None, Some(entry)) => Start::Boot(entry),
        (None, None) => unreachable!("a VM either boots or is restored"),
    };
    let threads = match start_vcpus(&kvm, &vm, &ram, config.cpus, start, shared.clone()) {
        Ok(threads) => threads,
        Err(e) => {
            supervisor.stop();
            return Err(e);
        }
    };
    // Before the takeover is reported (`set_resumed`): the API may pause the VM from then on.
    machine.set_threads(threads);
    match (&machine_state, filled) {
        (Some((_, Some(paused_at_ns))), _) => {
            let pause = crate::state::handover::monotonic_ns().saturating_sub(*paused_at_ns);
            let pause = std::time::Duration::from_nanos(pause);
            machine.set_resumed(crate::state::handover::Resumed { pause });
            if config.verbose {
                eprintln!(
                    "bulkhead: took the VM over from the previous core: the guest was paused \
                     {:.2} ms (vCPUs running {:.2} ms after this core started)",
                    pause.as_secs_f64() * 1000.0,
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
        }
        (Some(_), Some(filled)) if config.verbose => eprintln!(
            "bulkhead: restored from {}: vCPUs running {:.2} ms after the core started (memory \
             filled in {:.2} ms)",
            from.display(),
            started.elapsed().as_secs_f64() * 1000.0,
            filled.as_secs_f64() * 1000.0
        ),
        _ => {}
    }
    VCPUS_STARTED.store(true, Ordering::Release);
    drop(machine_state);
    // What the set-up allocated (the command line's parser, the guest image as read, the
    // tables) is free by now: the heap's free pages go back to the host, 0.1–0.2 MiB of
    // resident memory for the whole run.
    // SAFETY: malloc_trim only releases free heap memory; its madvise and brk are allowed to
    // every thread of the core.
    unsafe { libc::malloc_trim(0) };
    let result = event_loop(
        &exit,
        &serial,
        config.console_input,
        config.handle_signals,
        config.confine.as_ref(),
    );
    // First release whatever waits on a backend (a vCPU in a round trip), then stop.
    supervisor.interrupt();
    shared.stop.store(true, Ordering::Release);
    for t in machine.take_threads() {
        t.stop();
    }
    drop(control);
    supervisor.stop(); // ends the backends: compartments are killed, threads stopped
    result?;
    Ok(exit.get().unwrap_or(VmExit::Error("the VM stopped without a reason".into())))
}

fn check_cpus(kvm: &Kvm, cpus: u8) -> Result<(), VmError> {
    let max = MAX_CPUS.min(kvm.get_max_vcpus().min(usize::from(MAX_CPUS)) as u8);
    if cpus == 0 || cpus > max {
        return Err(VmError::Cpus { given: cpus.into(), max });
    }
    Ok(())
}

/// The kernel's command line: the user's (or the default), plus, for the
/// built-in guest, the virtio-mmio devices (Linux finds them in ACPI).
fn full_cmdline(given: Option<&str>, kind: KernelKind, devices: &[MmioDevice]) -> String {
    let base = given.map_or_else(|| default_cmdline(kind), str::to_string);
    if kind != KernelKind::BuiltIn || devices.is_empty() {
        return base;
    }
    let entries = cmdline_entries(devices);
    if base.is_empty() {
        entries
    } else {
        format!("{base} {entries}")
    }
}

fn default_cmdline(kind: KernelKind) -> String {
    match kind {
        KernelKind::BuiltIn => String::new(),
        _ => DEFAULT_LINUX_CMDLINE.to_string(),
    }
}

/// Creates the VM with its memory and a split irqchip (local APICs in KVM,
/// the I/O APIC in the core, no PIC or PIT: see [`crate::irq`]).
///
/// Memory is registered first: measured on KVM-PVM, a first memory slot
/// added after KVM's full irqchip waited ~7 ms for an SRCU grace period;
/// before it, ~40 us.
fn create_vm(kvm: &Kvm, ram: &GuestRam) -> Result<Arc<VmFd>, VmError> {
    let vm = kvm.create_vm().map_err(setup("create a VM"))?;
    vm.set_tss_address(0xfffb_d000).map_err(setup("set the TSS address"))?;
    register_memory(&vm, ram)?;
    irq::enable_split_irqchip(&vm).map_err(setup("enable the split irqchip"))?;
    Ok(Arc::new(vm))
}

fn register_memory(vm: &VmFd, ram: &GuestRam) -> Result<(), VmError> {
    for (slot, region) in ram.memory.iter().enumerate() {
        let host = ram
            .memory
            .get_host_address(region.start_addr())
            .expect("a region's start is inside guest memory");
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `ram`, which outlives
        // the VM (both are dropped when `run` returns, vCPUs first), and the
        // slots do not overlap.
        unsafe { vm.set_user_memory_region(region) }.map_err(setup("map guest memory"))?;
    }
    Ok(())
}

/// The core's own devices: the I/O APIC on the MMIO bus; COM1, the ACPI
/// power registers, the i8042 and, when asked for, the boot timer on the port bus.
struct CoreDevices {
    pio: Bus,
    mmio: Bus,
    ioapic: Arc<Mutex<IoApic>>,
    serial: Arc<Mutex<SerialConsole>>,
    keyboard: Keyboard,
}

fn core_devices(
    vm: &Arc<VmFd>,
    exit: &ExitLatch,
    console: crate::legacy::serial::ConsoleSink,
    boot_timer: Option<BootClock>,
) -> Result<CoreDevices, VmError> {
    let place = |e: &dyn std::fmt::Display| VmError::Io {
        what: "place the core's devices",
        source: std::io::Error::other(e.to_string()),
    };
    let ioapic = Arc::new(Mutex::new(IoApic::new(vm.clone())));
    let mut mmio = Bus::default();
    mmio.insert(layout::IOAPIC_START, 0x1000, ioapic.clone()).map_err(|e| place(&e))?;
    let interrupt = |pin: u32, what: &'static str| -> Result<Arc<EventFd>, VmError> {
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(io(what))?);
        ioapic.lock().unwrap().connect(pin as usize, irq.clone()).map_err(|e| place(&e))?;
        Ok(irq)
    };
    let serial =
        SerialConsole::new(interrupt(ports::COM1_IRQ, "create the serial interrupt")?, console);
    let kbd_irq = interrupt(ports::I8042_IRQ, "create the keyboard interrupt")?;
    let mut pio = Bus::default();
    pio.insert(ports::COM1.into(), 8, serial.clone()).map_err(|e| place(&e))?;
    let power = Arc::new(Mutex::new(AcpiPower::new(exit.clone(), boot::acpi::S5_SLEEP_TYPE)));
    pio.insert(ports::ACPI_SLEEP_CONTROL.into(), 3, power).map_err(|e| place(&e))?;
    let i8042 = Arc::new(Mutex::new(I8042::new(exit.clone(), kbd_irq)));
    pio.insert(ports::I8042_DATA.into(), ports::I8042_PORTS.into(), i8042.clone())
        .map_err(|e| place(&e))?;
    if let Some(start) = boot_timer {
        let timer = Arc::new(Mutex::new(BootTimer::new(start)));
        pio.insert(ports::BOOT_TIMER.into(), 1, timer).map_err(|e| place(&e))?;
    }
    Ok(CoreDevices { pio, mmio, ioapic, serial, keyboard: Keyboard::new(i8042) })
}

/// How the vCPUs start: at the kernel's entry, or where a snapshot's or a predecessor's stood
/// (`from` names it in errors).
enum Start<'a> {
    Boot(boot::BootEntry),
    Restore { machine: &'a crate::state::MachineState, from: &'a std::path::Path },
}

/// Set once this process's vCPUs run: a core that took a VM over and fails before then hands it
/// back to its predecessor (the VMM asks, [`vcpus_started`]).
static VCPUS_STARTED: AtomicBool = AtomicBool::new(false);

/// Whether this process's VM has started its vCPUs.
pub fn vcpus_started() -> bool {
    VCPUS_STARTED.load(Ordering::Acquire)
}

fn start_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    ram: &GuestRam,
    count: u8,
    start: Start,
    mut shared: VcpuShared,
) -> Result<Vec<VcpuThread>, VmError> {
    let base = cpu::supported_cpuid(kvm)?;
    let mut vcpus = Vec::new();
    for id in 0..count {
        let vcpu = vm.create_vcpu(id.into()).map_err(setup("create a vCPU"))?;
        let tsc_khz =
            if kvm.check_extension(Cap::GetTscKhz) { vcpu.get_tsc_khz().ok() } else { None };
        cpu::configure(&vcpu, id, &cpu::cpuid_for(&base, id, count, tsc_khz))?;
        match &start {
            Start::Boot(entry) if id == 0 => cpu::set_boot_registers(&vcpu, &ram.memory, *entry)?,
            Start::Boot(_) => {}
            Start::Restore { machine, from } => {
                let saved = &machine.vcpus[usize::from(id)];
                crate::state::cpu::restore(&vcpu, saved).map_err(|e| VmError::Restore {
                    dir: from.to_path_buf(),
                    reason: format!("vCPU {id}: {}", crate::state::with_causes(&e)),
                })?;
            }
        }
        vcpus.push(vcpu);
    }
    if let Start::Restore { machine, .. } = &start {
        let clock = kvm_bindings::kvm_clock_data { clock: machine.clock_ns, ..Default::default() };
        vm.set_clock(&clock).map_err(setup("set the VM clock"))?;
    }
    // The MSRs a snapshot saves (those of the list the vCPU lets read): listed here, where the
    // main thread may still ask KVM for its list.
    let listed = kvm.get_msr_index_list().map_err(setup("list the MSRs"))?;
    shared.msrs = Arc::new(listed.as_slice().to_vec());
    let shared = &shared;
    let mut threads = Vec::new();
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        match VcpuThread::spawn(id as u8, vcpu, shared.clone()) {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                // Those already started wait for the guest; stop them.
                shared.stop.store(true, Ordering::Release);
                threads.into_iter().for_each(VcpuThread::stop);
                return Err(VmError::Io { what: "start a vCPU thread", source: e });
            }
        }
    }
    Ok(threads)
}

/// Puts a snapshot's I/O APIC, serial port and transports in place, once the devices' backends
/// are connected: their queues start where they stood.
fn restore_devices(
    machine: &crate::state::MachineState,
    devices: &CoreDevices,
    virtio: &[crate::virtio::attach::Attached],
) -> Result<(), String> {
    if machine.devices.len() != virtio.len() {
        let names = |n: Vec<&str>| n.join(", ");
        return Err(format!(
            "the snapshot's VM had the devices {} where this one has {}",
            names(machine.devices.iter().map(|d| d.name.as_str()).collect()),
            names(virtio.iter().map(|d| d.name.as_str()).collect())
        ));
    }
    devices.ioapic.lock().unwrap_or_else(|p| p.into_inner()).restore(&machine.ioapic)?;
    devices.serial.lock().unwrap_or_else(|p| p.into_inner()).restore(&machine.serial)?;
    for (saved, device) in machine.devices.iter().zip(virtio) {
        device.transport.lock().unwrap_or_else(|p| p.into_inner()).restore(saved)?;
    }
    Ok(())
}

/// The eventfd SIGINT/SIGTERM write to (-1 until installed).
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signum: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(signum, Ordering::SeqCst);
    let fd = SIGNAL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live u64.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// The main event loop's tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Exit,
    Signal,
    Stdin,
}

impl Token {
    const ALL: [Token; 3] = [Token::Exit, Token::Signal, Token::Stdin];

    fn raw(self) -> u64 {
        self as u64
    }

    fn from_raw(raw: u64) -> Option<Token> {
        Token::ALL.into_iter().find(|t| t.raw() == raw)
    }
}

/// Waits for the VM to end, feeding console input and watching signals. It waits on nothing
/// else: each device's backend is watched by its own supervisor thread.
fn event_loop(
    exit: &ExitLatch,
    serial: &Arc<Mutex<SerialConsole>>,
    console_input: bool,
    handle_signals: bool,
    confine: Option<&crate::config::ConfineHook>,
) -> Result<(), VmError> {
    let epoll = Epoll::new().map_err(io("create the event loop"))?;
    let add = |fd: i32, token: Token| {
        epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token.raw()))
    };
    add(exit.event().as_raw_fd(), Token::Exit).map_err(io("watch the exit event"))?;
    let signal_event = EventFd::new(libc::EFD_NONBLOCK).map_err(io("create the signal event"))?;
    if handle_signals {
        SIGNAL_FD.store(signal_event.as_raw_fd(), Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal)
                .map_err(|e| VmError::Io { what: "handle SIGINT/SIGTERM", source: e.into() })?;
        }
        add(signal_event.as_raw_fd(), Token::Signal).map_err(io("watch signals"))?;
    }
    // Console input only from a pipe or terminal; EPOLL refuses regular files.
    let mut stdin_open = console_input && add(libc::STDIN_FILENO, Token::Stdin).is_ok();
    let mut events = vec![EpollEvent::default(); 4];
    if let Some(confine) = confine {
        confine(crate::config::CoreThread::EventLoop).map_err(|e| VmError::Io {
            what: "confine the event loop",
            source: std::io::Error::other(e),
        })?;
    }
    while !exit.is_set() {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VmError::Io { what: "wait for events", source: e }),
        };
        for event in &events[..n] {
            match Token::from_raw(event.data()) {
                Some(Token::Signal) => {
                    let _ = signal_event.read();
                    exit.request(VmExit::Signal(LAST_SIGNAL.load(Ordering::SeqCst)));
                }
                Some(Token::Stdin) if stdin_open => {
                    stdin_open = forward_stdin(serial);
                    if !stdin_open {
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            libc::STDIN_FILENO,
                            EpollEvent::default(),
                        );
                    }
                }
                // The exit latch: the loop's condition sees it.
                _ => {}
            }
        }
    }
    SIGNAL_FD.store(-1, Ordering::SeqCst);
    Ok(())
}

/// Reads what stdin has and queues it for the guest; false at end of input.
fn forward_stdin(serial: &Arc<Mutex<SerialConsole>>) -> bool {
    let mut buf = [0u8; 64];
    // SAFETY: reading into a live stack buffer of the given length.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return false;
    }
    serial.lock().unwrap_or_else(|p| p.into_inner()).input(&buf[..n as usize]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_guest_gets_an_empty_default_cmdline() {
        assert_eq!(default_cmdline(KernelKind::BuiltIn), "");
        let dev = [MmioDevice { base: 0xd000_0000, size: 0x1000, irq: 5 }];
        assert_eq!(
            full_cmdline(Some("x"), KernelKind::BuiltIn, &dev),
            "x virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            full_cmdline(None, KernelKind::BuiltIn, &dev),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(full_cmdline(Some("x"), KernelKind::BzImage, &dev), "x");
        assert!(default_cmdline(KernelKind::BzImage).contains("console=ttyS0"));
    }
}
