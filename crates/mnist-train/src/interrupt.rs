//! Stopping between steps. The worker installs [`install`]: SIGINT, SIGTERM and SIGHUP then
//! only record the signal, and the training loop checks [`pending`] between steps and ends
//! with [`crate::TrainError::Interrupted`] (exit code 128 + signal) instead of dying in the
//! middle of writing a file. A second signal of the same run restores the default action and
//! re-raises it, so a stuck worker still dies at once (and the launcher's SIGKILL after its
//! grace period always works).

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicI32, Ordering};

/// The signal received, 0 for none.
static PENDING: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

extern "C" fn on_signal(signo: libc::c_int) {
    // Only async-signal-safe work: an atomic swap, and on a second signal `signal` + `raise`.
    if PENDING.swap(signo, Ordering::SeqCst) != 0 {
        // SAFETY: `signal` and `raise` are async-signal-safe; restoring the default action and
        // re-raising ends the process the way the signal normally would.
        unsafe {
            libc::signal(signo, libc::SIG_DFL);
            libc::raise(signo);
        }
    }
}

/// Record SIGINT, SIGTERM and SIGHUP instead of dying on the first one (see the module docs).
pub fn install() -> Result<(), nix::Error> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in SIGNALS {
        // SAFETY: the handler only touches an atomic and calls async-signal-safe functions.
        unsafe { signal::sigaction(s, &action) }?;
    }
    Ok(())
}

/// The signal received since [`install`], if any.
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_is_recorded_not_fatal() {
        install().unwrap();
        assert_eq!(pending(), None);
        signal::raise(Signal::SIGHUP).unwrap();
        assert_eq!(pending(), Some(libc::SIGHUP));
    }
}
