//! The launcher: the one thread of the core that may start processes.
//!
//! Compartments are started (and restarted, and upgraded) by `clone3` with
//! namespace flags and `execve` — the calls an attacker most wants. The
//! supervisor runs on the event loop and restarts come from the API thread
//! too; rather than allow those calls there, both hand the spawn to this
//! thread, started before any other, and wait for it. Its filter allows
//! process creation and what a compartment does from `clone3` until it
//! enters its own sandbox (a child inherits the filter of the thread that
//! created it, and keeps it across `execve`), plus every device's
//! compartment list (the compartment's filters stack on this one). It keeps
//! the capabilities a compartment needs to enter its sandbox; every other
//! thread has none.
//!
//! Why a thread and not a process: a compartment stays a child of the core
//! (reaped with `waitid`, killed by pidfd, dying with its launcher through
//! `PR_SET_PDEATHSIG`), and nothing else changes. The cost: the launcher
//! shares the core's address space, so an attacker who already runs code in
//! another thread could make it spawn; a launcher process with its own
//! address space would close that, at the price of proxying exits and
//! pidfds over a socket.

use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;

use super::{confine, Job, ThreadClass};

static LAUNCHER: OnceLock<Sender<Job>> = OnceLock::new();

/// The launcher thread's name.
pub const THREAD_NAME: &str = "bulkhead-launch";

/// Starts the launcher thread, which confines itself as [`ThreadClass::Launcher`].
pub fn start() -> std::io::Result<()> {
    let tx = super::start_job_thread(THREAD_NAME, || confine(ThreadClass::Launcher))?;
    LAUNCHER.set(tx).map_err(|_| std::io::Error::other("the launcher was already started"))
}

/// Runs `f` on the launcher thread and returns its value; runs it here when
/// no launcher was started (monolithic mode, tests).
pub fn call<'a, R: Send + 'a>(f: impl FnOnce() -> R + Send + 'a) -> R {
    let Some(launcher) = LAUNCHER.get() else { return f() };
    let (done_tx, done_rx) = mpsc::sync_channel::<R>(1);
    let job: Box<dyn FnOnce() + Send + 'a> = Box::new(move || {
        let _ = done_tx.send(f());
    });
    // SAFETY: only the lifetime changes. The job borrows from this frame for
    // 'a, and this function does not return until the job has run or been
    // dropped: `done_rx.recv()` returns only once `done_tx`, which the job
    // owns, has sent or been dropped with the job.
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + 'a>, Job>(job) };
    if let Err(mpsc::SendError(job)) = launcher.send(job) {
        job();
    }
    done_rx.recv().expect("the launcher thread failed while starting a process")
}
