//! The launcher: the one thread of the core that may start processes — the process's main
//! thread, the VM running on threads of its own ([`run_beside`]).
//!
//! Compartments are started (and restarted, and upgraded) by `clone3` with
//! namespace flags and `execve` — the calls an attacker most wants. The
//! supervisor runs on the event loop and restarts come from the API thread
//! too; rather than allow those calls there, both hand the spawn to this
//! thread, confined before the VM starts anything, and wait for it. Its filter allows
//! process creation and what a compartment does from `clone3` until it
//! enters its own sandbox (a child inherits the filter of the thread that
//! created it, and keeps it across `execve`), plus every device's
//! compartment list (the compartment's filters stack on this one). It keeps
//! the capabilities a compartment needs to enter its sandbox; every other
//! thread has none. With `--core-update on` (the default) it is also the thread that executes
//! a new core, under a deny-list instead ([`super::updater`]).
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

thread_local! {
    /// Set on the launcher: what it asks of itself runs at once.
    static ON_LAUNCHER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `vm` on a thread of its own while the calling thread — the process's main thread —
/// becomes the launcher: it confines itself as [`ThreadClass::Launcher`] (or, when it may
/// execute a new core — `updates`: `--core-update on` — as
/// [`super::updater::confine_launcher`] does; `inherited`: this core took a VM over and runs
/// under that filter already), then runs what the other threads ask of it until `vm` returns,
/// and returns its value.
///
/// Why the main thread: a compartment dies with the thread that started it, and a new core
/// executed in place lives on in the thread that executed it, which becomes the main thread.
/// With the launcher always the main thread, every compartment — started by this core or kept
/// from an earlier one — has the same parent thread, which lives on through every update.
pub fn run_beside<R: Send + 'static>(
    updates: Option<(super::CoreSeccomp, bool)>,
    vm: impl FnOnce() -> R + Send + 'static,
) -> std::io::Result<R> {
    let (tx, rx) = mpsc::channel::<Job>();
    if LAUNCHER.set(tx.clone()).is_err() {
        return Err(std::io::Error::other("the launcher was already started"));
    }
    let result = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = result.clone();
    let done = tx;
    std::thread::Builder::new().name("bulkhead-vm".into()).spawn(move || {
        let value = vm();
        // The last job: the launcher stops once it has run.
        let _ = done.send(Box::new(move || {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        }));
    })?;
    let confined = match updates {
        Some((setting, inherited)) => super::updater::confine_launcher(setting, inherited)
            .map(|()| super::record(ThreadClass::Launcher, None)),
        None => confine(ThreadClass::Launcher),
    };
    if let Err(e) = confined {
        // Nothing may be started unconfined: the VM's thread, left waiting on its first job,
        // goes with the process.
        eprintln!("bulkhead: {e}");
        std::process::exit(1);
    }
    ON_LAUNCHER.with(|on| on.set(true));
    for job in rx {
        job();
        if let Some(value) = result.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Ok(value);
        }
    }
    Err(std::io::Error::other("the VM's thread ended without a word"))
}

/// Runs `f` on the launcher and returns its value; runs it here on the launcher itself, or
/// when no launcher was started (a process that runs no VM, unit tests).
pub fn call<'a, R: Send + 'a>(f: impl FnOnce() -> R + Send + 'a) -> R {
    let Some(launcher) = LAUNCHER.get() else { return f() };
    if ON_LAUNCHER.with(|on| on.get()) {
        return f();
    }
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
