//! Injecting the faults that `MNIST_FAULT` asks for ([`mnist_common::fault`]) into this rank's
//! training loop. The trainer calls [`Injector::before_step`] before each step and
//! [`Injector::corrupts_gradient`] between the backward pass and the all-reduce; with no
//! `MNIST_FAULT` both do nothing.

use mnist_common::fault::{Fault, FaultKind, FaultPlan};
use std::time::Duration;

/// This rank's share of the fault plan.
#[derive(Debug)]
pub struct Injector {
    plan: FaultPlan,
    rank: usize,
    slow_noted: bool,
}

impl Injector {
    /// The faults of `plan` that `rank` injects in restart round `round`.
    pub fn new(plan: &FaultPlan, rank: usize, round: u32) -> Injector {
        Injector {
            plan: plan.for_process(rank, round),
            rank,
            slow_noted: false,
        }
    }

    /// Before global step `step` (that many steps done): sleep for any `slow` fault in effect,
    /// then crash, abort, exit or hang if one is placed at exactly this step. Each fault that
    /// acts says so in one line on stderr (`slow` once), so tests can wait for it. Returns
    /// whether it slept.
    pub fn before_step(&mut self, step: u64) -> bool {
        if self.plan.is_empty() {
            return false;
        }
        let sleep = self.plan.slow_before(step);
        if !sleep.is_zero() {
            if !self.slow_noted {
                self.slow_noted = true;
                self.note(
                    step,
                    &format!(
                        "slow: sleeping {} ms before every step from here on",
                        sleep.as_millis()
                    ),
                );
            }
            std::thread::sleep(sleep);
        }
        let firing: Vec<Fault> = self.plan.firing_at(step).copied().collect();
        for f in firing {
            match f.kind {
                FaultKind::Crash => {
                    self.note(step, "crash: raising SIGSEGV");
                    raise_sigsegv();
                }
                FaultKind::Abort => {
                    self.note(step, "abort");
                    std::process::abort();
                }
                FaultKind::ExitCode(code) => {
                    self.note(step, &format!("exiting with code {code}"));
                    std::process::exit(code.into());
                }
                FaultKind::Hang => {
                    self.note(step, "hang: blocking forever (connections stay open)");
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
                FaultKind::Slow(_) | FaultKind::CorruptGradient | FaultKind::CrashInCheckpoint => {}
            }
        }
        !sleep.is_zero()
    }

    /// Whether to overwrite this rank's local gradient with NaN at global step `step` (after
    /// the backward pass, before the all-reduce); says so on stderr when it does.
    pub fn corrupts_gradient(&self, step: u64) -> bool {
        let hit = self
            .plan
            .firing_at(step)
            .any(|f| f.kind == FaultKind::CorruptGradient);
        if hit {
            self.note(
                step,
                "corrupt-gradient: filling the local gradient with NaN",
            );
        }
        hit
    }

    /// Called inside a checkpoint write at global step `step`, after the temporary file is
    /// written and before its rename: dies by SIGSEGV when a `crash-in-checkpoint` fault is in
    /// effect.
    pub fn in_checkpoint_write(&self, step: u64) {
        if self.plan.crashes_in_checkpoint(step) {
            self.note(
                step,
                "crash-in-checkpoint: raising SIGSEGV between writing and renaming the checkpoint",
            );
            raise_sigsegv();
        }
    }

    fn note(&self, step: u64, what: &str) {
        eprintln!(
            "{}: rank {} at step {step}: {what}",
            mnist_common::contract::ENV_FAULT,
            self.rank
        );
    }
}

/// End the process as a segmentation fault would.
fn raise_sigsegv() -> ! {
    // SAFETY: restoring the default action and raising the signal is what a segmentation fault
    // would do; the process ends here.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    unreachable!("SIGSEGV with its default action ends the process");
}
