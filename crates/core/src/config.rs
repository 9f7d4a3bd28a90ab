//! What a VM is made of, as the VMM (`bulkhead-vmm`) hands it to [`crate::vm::run`].

use std::path::PathBuf;

use crate::boot::KernelSource;
use crate::legacy::serial::ConsoleSink;
use std::sync::Arc;

use crate::supervisor::{RestartPolicy, SupervisorHandle};
use crate::virtio::Backend;

/// The command line Linux kernels get unless the user gives one.
pub const DEFAULT_LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off";
/// Default vCPUs and memory.
pub const DEFAULT_CPUS: u8 = 1;
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// A VM's configuration.
pub struct VmConfig {
    pub kernel: KernelSource,
    pub initrd: Option<PathBuf>,
    /// The kernel command line; `None` picks the default for the kernel kind.
    pub cmdline: Option<String>,
    pub cpus: u8,
    pub memory: u64,
    /// Where the serial console's output goes.
    pub console: ConsoleSink,
    /// Forward this process's stdin to the serial console.
    pub console_input: bool,
    /// Turn SIGINT and SIGTERM into a clean stop (`bulkhead run` sets this).
    pub handle_signals: bool,
    /// Boot a foreign kernel even on a host that cannot run it.
    pub force: bool,
    /// Virtio devices, each with its backend (a compartment or a thread).
    pub devices: Vec<Box<dyn Backend>>,
    /// Describe each device's backend on stderr at start.
    pub verbose: bool,
    /// When and how the supervisor restarts failed device backends.
    pub restart: RestartPolicy,
    /// Called once the devices run, with the supervisor and the keyboard
    /// (the VMM starts the management API here); what it returns lives as long as the VM.
    pub on_start: Option<OnStart>,
    /// Places the vCPU threads (cgroups, CPU affinity); see [`crate::vcpu::Placement`].
    pub placement: Option<Arc<dyn crate::vcpu::Placement>>,
    /// Called by each of the core's own threads once it has started (a vCPU
    /// thread before its first `KVM_RUN`, the main thread before its event
    /// loop, a device's supervisor before it watches the device): the VMM
    /// installs the thread's seccomp filter and drops its capabilities here.
    /// An error ends the VM.
    pub confine: Option<ConfineHook>,
    /// Log the guest's boot time, measured from this reading, when it writes the boot
    /// timer's port (see [`crate::legacy::boot_timer`]); `None`: no boot timer.
    pub boot_timer: Option<crate::legacy::boot_timer::BootClock>,
    /// Kept with every snapshot of this VM, unread by the core: how the VMM starts it again
    /// (`bulkhead run` keeps its arguments and folder here).
    pub recipe: Option<String>,
    /// Start from a snapshot or a predecessor's handover instead of booting the kernel: its
    /// memory, its vCPUs' and devices' state (the devices themselves are `devices`, as the
    /// saved VM had them).
    pub resume: Option<Resume>,
}

/// Where a VM that does not boot resumes from.
pub enum Resume {
    /// A snapshot's folder (`bulkhead run --restore`): memory filled from its file.
    Snapshot(Box<crate::state::Snapshot>),
    /// A core update: the state and the memory's memfd the previous core handed over.
    Takeover(Box<crate::state::handover::Takeover>),
}

/// The core's threads that [`VmConfig::confine`] is called on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreThread {
    /// A vCPU thread: `KVM_RUN` and the exits that reach userspace.
    Vcpu,
    /// The main thread: the event loop (signals, console input, the VM's end).
    EventLoop,
    /// A device's supervisor thread: watches its backend, restarts it.
    Supervisor,
}

/// See [`VmConfig::confine`].
pub type ConfineHook = Arc<dyn Fn(CoreThread) -> Result<(), String> + Send + Sync>;

/// What [`VmConfig::on_start`] is handed once the devices run: the hands the management API
/// acts with.
pub struct Started {
    /// The devices' supervisor: restarts, upgrades, reports.
    pub supervisor: SupervisorHandle,
    /// The i8042's keyboard, for keys the host presses.
    pub keyboard: crate::legacy::i8042::Keyboard,
    /// Pausing, resuming and snapshots of the VM.
    pub machine: crate::state::Machine,
}

/// See [`VmConfig::on_start`].
pub type OnStart = Box<dyn FnOnce(Started) -> Box<dyn std::any::Any> + Send>;

impl VmConfig {
    /// A VM booting `kernel` with default resources, console to stdout.
    pub fn new(kernel: KernelSource) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: None,
            cpus: DEFAULT_CPUS,
            memory: DEFAULT_MEMORY,
            console: Box::new(std::io::stdout()),
            console_input: false,
            handle_signals: false,
            force: false,
            devices: Vec::new(),
            verbose: false,
            restart: RestartPolicy::default(),
            on_start: None,
            placement: None,
            confine: None,
            boot_timer: None,
            recipe: None,
            resume: None,
        }
    }
}
