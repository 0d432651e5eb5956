//! The phases of one training step and the instants at which each ended, taken with
//! `Instant::now()` (tens of nanoseconds) on every step: the time breakdown
//! ([`crate::breakdown`]) and the timeline ([`crate::timeline`]) both read them.

use std::time::{Duration, Instant};

/// A phase of a training step, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// An injected delay (`MNIST_FAULT` `slow`).
    Delay,
    /// Gathering the batch from the data set (and the step's dropout stream).
    Data,
    /// The forward pass (as seen by the calling thread when a batch is split across threads).
    Forward,
    /// The backward pass (with a split batch: also waiting for the other threads' parts and
    /// summing their gradients). Covers the forward pass too when that was not marked (Net,
    /// whose SyncBatchNorm interleaves both).
    Backward,
    /// The non-finite gradient check.
    Check,
    /// The gradient reduction: compression and collectives, waiting for peers included.
    Reduce,
    /// The SGD step and the epoch's running sums.
    Optimizer,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 7] = [
        Phase::Delay,
        Phase::Data,
        Phase::Forward,
        Phase::Backward,
        Phase::Check,
        Phase::Reduce,
        Phase::Optimizer,
    ];

    /// Its name in the timeline.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Delay => "injected delay (MNIST_FAULT slow)",
            Phase::Data => "data gather",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Check => "gradient check",
            Phase::Reduce => "gradient reduction",
            Phase::Optimizer => "optimizer step",
        }
    }
}

/// When a step started and when each of its phases ended.
#[derive(Clone, Debug)]
pub struct StepMarks {
    /// The step's start.
    pub start: Instant,
    ends: [Option<Instant>; 7],
}

impl StepMarks {
    /// A step starting now.
    pub fn start() -> StepMarks {
        StepMarks {
            start: Instant::now(),
            ends: [None; 7],
        }
    }

    /// Phase `p` ends now.
    pub fn mark(&mut self, p: Phase) {
        self.set(p, Instant::now());
    }

    /// Phase `p` ended at `at`.
    pub fn set(&mut self, p: Phase, at: Instant) {
        self.ends[p as usize] = Some(at);
    }

    /// The marked phases in order as `(phase, start, end)`, each starting where the previous
    /// one ended (the first at the step's start): they tile the step.
    pub fn spans(&self) -> Vec<(Phase, Instant, Instant)> {
        let mut from = self.start;
        let mut v = Vec::with_capacity(7);
        for p in Phase::ALL {
            if let Some(end) = self.ends[p as usize] {
                v.push((p, from, end));
                from = end;
            }
        }
        v
    }

    /// From the start to the end of the last marked phase.
    pub fn total(&self) -> Duration {
        self.ends
            .iter()
            .flatten()
            .max()
            .map_or(Duration::ZERO, |e| e.duration_since(self.start))
    }

    /// The gradient reduction's duration (zero when it was not marked).
    pub fn reduce(&self) -> Duration {
        self.spans()
            .iter()
            .find(|(p, ..)| *p == Phase::Reduce)
            .map_or(Duration::ZERO, |(_, a, b)| b.duration_since(*a))
    }

    /// The step less its gradient reduction.
    pub fn compute(&self) -> Duration {
        self.total().saturating_sub(self.reduce())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_tile_the_step_and_split_it() {
        let mut m = StepMarks::start();
        let t = |ms| m.start + Duration::from_millis(ms);
        let (a, b, c, d) = (t(2), t(5), t(9), t(10));
        m.set(Phase::Data, a);
        m.set(Phase::Backward, b);
        m.set(Phase::Reduce, c);
        m.set(Phase::Optimizer, d);
        let s = m.spans();
        let names: Vec<Phase> = s.iter().map(|x| x.0).collect();
        assert_eq!(
            names,
            [
                Phase::Data,
                Phase::Backward,
                Phase::Reduce,
                Phase::Optimizer
            ]
        );
        assert_eq!((s[0].1, s[1].1, s[2].1, s[3].1), (m.start, a, b, c));
        assert_eq!(m.total(), Duration::from_millis(10));
        assert_eq!(m.reduce(), Duration::from_millis(4));
        assert_eq!(m.compute(), Duration::from_millis(6));
    }
}
