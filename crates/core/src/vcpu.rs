//! vCPU threads: each runs `KVM_RUN` in a loop and hands the exits that reach
//! userspace (port I/O and MMIO for the core's own devices, power events,
//! failures) to the buses or the exit latch.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::bus::Bus;
use crate::exit::{ExitLatch, VmExit};
use crate::irq::ioapic::IoApic;

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuShared {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub ioapic: Arc<std::sync::Mutex<IoApic>>,
    pub exit: ExitLatch,
    pub stop: Arc<AtomicBool>,
    /// Places each vCPU thread (cgroup, CPU affinity) before it first runs.
    pub placement: Option<Arc<dyn Placement>>,
    /// Confines each vCPU thread as it starts (see `VmConfig::confine`).
    pub confine: Option<crate::config::ConfineHook>,
    /// Where vCPUs park while the VM is paused, and save their state.
    pub gate: Arc<Gate>,
    /// The MSRs KVM lists (`KVM_GET_MSR_INDEX_LIST`): a vCPU's saved state holds those it
    /// lets read ([`crate::state::cpu::save`]).
    pub msrs: Arc<Vec<u32>>,
    /// Whether KVM saves XCR0 (`KVM_CAP_XCRS`).
    pub xcrs: bool,
}

/// Pausing the vCPUs: a pause is asked for, each vCPU leaves `KVM_RUN` (kicked), finishes its
/// last exit and parks here until the VM resumes; parked, it saves its state when asked.
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

struct GateState {
    paused: bool,
    parked: usize,
    /// Bumped for each save asked for; a vCPU saves once per value.
    save: u64,
    saved: Vec<Option<Result<crate::state::cpu::VcpuState, String>>>,
}

/// How often a parked vCPU looks at the stop flag.
const PARKED_TICK: Duration = Duration::from_millis(20);

impl Gate {
    pub fn new(cpus: u8) -> Gate {
        let state = GateState {
            paused: false,
            parked: 0,
            save: 0,
            saved: (0..cpus).map(|_| None).collect(),
        };
        Gate { state: Mutex::new(state), changed: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the vCPUs to park (they must be kicked out of `KVM_RUN` to see it).
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    pub fn paused(&self) -> bool {
        self.lock().paused
    }

    /// Lets the parked vCPUs run on.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.changed.notify_all();
    }

    /// Waits until `count` vCPUs are parked, or `timeout` has passed.
    pub fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let guard = self.lock();
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |s| s.parked < count)
            .unwrap_or_else(|p| p.into_inner());
        guard.parked >= count
    }

    /// Asks every parked vCPU to save its state, and waits (up to `timeout`) for all of them.
    pub fn save_all(&self, timeout: Duration) -> Result<Vec<crate::state::cpu::VcpuState>, String> {
        let mut guard = self.lock();
        guard.save += 1;
        guard.saved.iter_mut().for_each(|s| *s = None);
        self.changed.notify_all();
        let (mut guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |s| s.saved.iter().any(Option::is_none))
            .unwrap_or_else(|p| p.into_inner());
        let mut states = Vec::new();
        for (id, saved) in guard.saved.iter_mut().enumerate() {
            match saved.take() {
                Some(Ok(state)) => states.push(state),
                Some(Err(e)) => return Err(format!("vCPU {id}: {e}")),
                None => return Err(format!("vCPU {id} did not save its state in {timeout:?}")),
            }
        }
        Ok(states)
    }

    /// Called by vCPU `id`'s thread out of `KVM_RUN`: parks while the VM is paused, saving its
    /// state each time that is asked for.
    fn park(&self, id: u8, vcpu: &mut VcpuFd, shared: &VcpuShared) {
        crate::state::cpu::complete_exit(vcpu);
        let mut guard = self.lock();
        if !guard.paused {
            return;
        }
        guard.parked += 1;
        self.changed.notify_all();
        let mut saved = guard.save;
        while guard.paused && !shared.stop.load(Ordering::Acquire) {
            if guard.save != saved {
                saved = guard.save;
                let state = crate::state::cpu::save(vcpu, &shared.msrs, shared.xcrs)
                    .map_err(|e| crate::state::with_causes(&e));
                if let Some(slot) = guard.saved.get_mut(usize::from(id)) {
                    *slot = Some(state);
                }
                self.changed.notify_all();
                continue;
            }
            guard =
                self.changed.wait_timeout(guard, PARKED_TICK).unwrap_or_else(|p| p.into_inner()).0;
        }
        guard.parked -= 1;
    }
}

/// Where vCPU threads run: the VMM decides (cgroups, CPU affinity);
/// the core only says which thread is which vCPU.
pub trait Placement: Send + Sync {
    /// Called with vCPU `id`'s thread ID by the thread that starts it,
    /// while the new thread waits before its first `KVM_RUN` (so the vCPU
    /// thread itself makes no call for it); an error stops the VM from
    /// starting.
    fn place_vcpu(&self, id: u8, tid: i32) -> Result<(), String>;
}

/// A running vCPU thread.
pub struct VcpuThread {
    handle: JoinHandle<()>,
}

/// The signal that kicks a vCPU out of `KVM_RUN`; its handler does nothing.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        register_signal_handler(kick_signal(), on_kick).expect("install the vCPU kick handler");
    });
}

impl VcpuThread {
    /// Starts vCPU `id` on its own thread.
    pub fn spawn(id: u8, vcpu: VcpuFd, shared: VcpuShared) -> std::io::Result<Self> {
        install_kick_handler();
        let placement = shared.placement.clone();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new().name(format!("vcpu{id}")).spawn(move || {
            // SAFETY: gettid has no arguments and cannot fail.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            // The spawning thread places this one, then says whether to run.
            if go_rx.recv() == Ok(true) {
                run(id, vcpu, &shared);
            }
        })?;
        let tid = tid_rx.recv().map_err(|_| std::io::Error::other("the vCPU thread ended"))?;
        let placed = placement.map_or(Ok(()), |p| p.place_vcpu(id, tid));
        let _ = go_tx.send(placed.is_ok());
        if let Err(why) = placed {
            let _ = handle.join();
            return Err(std::io::Error::other(format!("vCPU {id}: {why}")));
        }
        Ok(VcpuThread { handle })
    }

    /// Kicks the thread out of `KVM_RUN` once (a pause: it parks at the gate).
    pub fn kick(&self) {
        if !self.handle.is_finished() {
            // SAFETY: the pthread id belongs to a thread we spawned and have not joined (we
            // hold its handle); the kick signal has a no-op handler installed.
            unsafe { libc::pthread_kill(self.handle.as_pthread_t(), kick_signal()) };
        }
    }

    /// Kicks the thread out of `KVM_RUN` until it ends (it checks the stop
    /// flag after every exit), then joins it.
    pub fn stop(self) {
        while !self.handle.is_finished() {
            self.kick();
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = self.handle.join();
    }
}

fn run(id: u8, mut vcpu: VcpuFd, shared: &VcpuShared) {
    if let Some(confine) = &shared.confine {
        if let Err(e) = confine(crate::config::CoreThread::Vcpu) {
            shared.exit.request(VmExit::Error(format!("vCPU {id}: {e}")));
            return;
        }
    }
    while !shared.stop.load(Ordering::Acquire) {
        if shared.gate.paused() {
            shared.gate.park(id, &mut vcpu, shared);
            continue;
        }
        let outcome = match vcpu.run() {
            Ok(exit) => handle_exit(id, exit, shared),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
            Err(e) => Err(VmExit::Error(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        };
        if let Err(exit) = outcome {
            shared.exit.request(with_state(exit, &mut vcpu));
            break;
        }
    }
}

/// Adds where the vCPU stood to a crash report.
fn with_state(exit: VmExit, vcpu: &mut VcpuFd) -> VmExit {
    let VmExit::Crashed(mut why) = exit else { return exit };
    let run = vcpu.get_kvm_run();
    if run.exit_reason == kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
        // SAFETY: the exit reason says the `internal` member of the union is valid.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        why.push_str(&format!(" suberror={} data={:x?}", internal.suberror, &internal.data[..n]));
    }
    if let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) {
        why.push_str(&format!(
            " at rip={:#x} cs={:#x} cr0={:#x} efer={:#x}",
            regs.rip, sregs.cs.selector, sregs.cr0, sregs.efer
        ));
    }
    VmExit::Crashed(why)
}

/// Handles one exit; `Err` ends the VM with that reason.
fn handle_exit(id: u8, exit: VcpuExit, shared: &VcpuShared) -> Result<(), VmExit> {
    match exit {
        VcpuExit::IoOut(port, data) => {
            shared.pio.write(port.into(), data);
        }
        VcpuExit::IoIn(port, data) => {
            shared.pio.read(port.into(), data);
        }
        VcpuExit::MmioWrite(addr, data) => {
            shared.mmio.write(addr, data);
        }
        VcpuExit::MmioRead(addr, data) => {
            shared.mmio.read(addr, data);
        }
        VcpuExit::Hlt => {
            return Err(VmExit::Crashed(format!("vCPU {id} halted with interrupts off")))
        }
        VcpuExit::Shutdown => return Err(VmExit::Crashed(format!("vCPU {id} triple-faulted"))),
        VcpuExit::SystemEvent(kind, _) => {
            return Err(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmExit::Reboot,
                other => VmExit::Crashed(format!("vCPU {id}: system event {other}")),
            })
        }
        VcpuExit::InternalError => {
            return Err(VmExit::Crashed(format!(
                "vCPU {id}: KVM could not emulate an instruction (internal error)"
            )))
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Err(VmExit::Crashed(format!(
                "vCPU {id}: VM entry failed (reason {reason:#x}, host CPU {cpu})"
            )))
        }
        VcpuExit::Intr => {}
        VcpuExit::IoapicEoi(vector) => {
            shared.ioapic.lock().unwrap_or_else(|p| p.into_inner()).end_of_interrupt(vector);
        }
        other => return Err(VmExit::Crashed(format!("vCPU {id}: unexpected exit {other:?}"))),
    }
    Ok(())
}
