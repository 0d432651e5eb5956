//! Catching SIGINT, SIGTERM and SIGHUP while workers run. The handler only records the
//! signal in atomics (async-signal-safe); the supervision loop polls them and stops the
//! workers in an orderly way. Signals that were ignored when the launcher started (e.g.
//! SIGHUP under `nohup`) stay ignored, for the launcher and, through exec, for its workers.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// The signals that stop a launch.
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// The first stop signal received (0: none).
static FIRST: AtomicI32 = AtomicI32::new(0);
/// How many stop signals were received.
static COUNT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(signo: libc::c_int) {
    // Only lock-free atomics here: async-signal-safe.
    let _ = FIRST.compare_exchange(0, signo, Ordering::SeqCst, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// Handlers for [`STOP_SIGNALS`], restored to the previous ones on drop. Only one guard
/// should exist at a time (the state is process-wide).
pub struct SignalGuard {
    previous: Vec<(Signal, SigAction)>,
}

/// Install the handlers and clear any signal recorded earlier.
pub fn install() -> nix::Result<SignalGuard> {
    FIRST.store(0, Ordering::SeqCst);
    COUNT.store(0, Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let mut guard = SignalGuard {
        previous: Vec::new(),
    };
    for sig in STOP_SIGNALS {
        // SAFETY: `on_signal` only touches lock-free atomics, which is async-signal-safe.
        let old = unsafe { sigaction(sig, &action) }?;
        if old.handler() == SigHandler::SigIgn {
            // SAFETY: restoring SIG_IGN installs no code at all.
            unsafe { sigaction(sig, &old) }?;
        } else {
            guard.previous.push((sig, old));
        }
    }
    Ok(guard)
}

impl SignalGuard {
    /// The first stop signal received since [`install`], if any.
    pub fn received(&self) -> Option<Signal> {
        match FIRST.load(Ordering::SeqCst) {
            0 => None,
            n => Signal::try_from(n).ok(),
        }
    }

    /// How many stop signals arrived since [`install`] (a second one skips the grace period).
    pub fn count(&self) -> usize {
        COUNT.load(Ordering::SeqCst)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: re-installs the disposition that was in place before `install`.
            let _ = unsafe { sigaction(*sig, old) };
        }
    }
}

/// The exit status a shell reports for death by `sig`: 128 + its number (130 for SIGINT,
/// 143 for SIGTERM, 129 for SIGHUP).
pub fn exit_code_for(sig: Signal) -> i32 {
    mnist_common::contract::EXIT_SIGNAL_BASE + sig as i32
}
