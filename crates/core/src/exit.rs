//! How a VM ends, and the one place that records it.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset (Bulkhead does not restart it).
    Reboot,
    /// The guest stopped in a way a real machine would not survive: a triple
    /// fault, an instruction KVM could not emulate, a failed VM entry.
    Crashed(String),
    /// The VMM was told to stop by a signal.
    Signal(i32),
    /// The VMM itself failed.
    Error(String),
    /// The core handed the paused VM over to a new core binary (`update-core`): the VMM
    /// takes [`crate::state::handover::take`] and executes it; the guest goes on there.
    HandOver,
}

impl VmExit {
    /// The process exit code documented in the README.
    pub fn code(&self) -> i32 {
        match self {
            VmExit::PowerOff => 0,
            VmExit::Error(_) => 1,
            VmExit::Reboot => 3,
            VmExit::Crashed(_) => 4,
            VmExit::Signal(s) => 128 + s,
            VmExit::HandOver => 0,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            VmExit::PowerOff => "the guest powered off".into(),
            VmExit::Reboot => "the guest rebooted".into(),
            VmExit::Crashed(why) => format!("the guest crashed: {why}"),
            VmExit::Signal(s) => format!("stopped by signal {s}"),
            VmExit::Error(e) => format!("the VMM failed: {e}"),
            VmExit::HandOver => "the core handed the VM over to a new core binary".into(),
        }
    }
}

/// Records the first exit reason and wakes the VM's main thread.
#[derive(Clone)]
pub struct ExitLatch {
    reason: Arc<Mutex<Option<VmExit>>>,
    event: Arc<EventFd>,
}

impl ExitLatch {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitLatch {
            reason: Arc::new(Mutex::new(None)),
            event: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// Records `exit` unless an earlier reason is already recorded.
    pub fn request(&self, exit: VmExit) {
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if reason.is_none() {
            *reason = Some(exit);
            let _ = self.event.write(1);
        }
    }

    pub fn get(&self) -> Option<VmExit> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_set(&self) -> bool {
        self.get().is_some()
    }

    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins() {
        let latch = ExitLatch::new().unwrap();
        assert!(!latch.is_set());
        latch.request(VmExit::Reboot);
        latch.request(VmExit::PowerOff);
        assert_eq!(latch.get(), Some(VmExit::Reboot));
        assert_eq!(latch.event().read().unwrap(), 1);
        assert_eq!(VmExit::Signal(2).code(), 130);
    }
}
