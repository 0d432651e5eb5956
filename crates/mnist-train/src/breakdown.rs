//! Where a training step's time goes: compute, communication, and waiting for the slowest
//! rank, per epoch, with the straggler when one rank is consistently slower.
//!
//! Each rank times two things per step (two `Instant`s, no collective): *compute* (everything
//! but the gradient reduction: injected delays, data, forward, backward, gradient check,
//! optimizer step) and the gradient reduction (compression and collectives). A reduction
//! cannot finish before the last rank arrives, so a fast rank's reduction time includes
//! waiting for the slowest: at the end of the epoch the ranks all-gather their per-step times
//! (one collective per epoch) and for each step and rank
//!
//! ```text
//! wait = max over ranks of compute − own compute
//! comm = max(0, reduction time − wait)
//! ```
//!
//! The epoch's figures are the median and the 99th percentile over all ranks' steps. A rank is
//! the straggler when it computed longest in at least 3/4 of the steps and by a margin worth
//! reporting (the median, over steps, of its compute minus the next slowest rank's: at least
//! 1 ms and 10% of the median compute).

use mnist_comm::{CommError, Communicator};
use serde::Serialize;
use std::time::Duration;

/// One rank's per-step times over (part of) an epoch, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTimes {
    /// Compute per step: the step without its gradient reduction.
    pub compute_ms: Vec<f32>,
    /// Gradient reduction per step (compression and collectives, waiting included).
    pub reduce_ms: Vec<f32>,
}

impl StepTimes {
    /// Record one step.
    pub fn push(&mut self, compute: Duration, reduce: Duration) {
        self.compute_ms.push(compute.as_secs_f32() * 1e3);
        self.reduce_ms.push(reduce.as_secs_f32() * 1e3);
    }

    /// Steps recorded.
    pub fn len(&self) -> usize {
        self.compute_ms.len()
    }

    /// Whether no step was recorded.
    pub fn is_empty(&self) -> bool {
        self.compute_ms.is_empty()
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 * self.len());
        for v in self.compute_ms.iter().chain(&self.reduce_ms) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8]) -> StepTimes {
        let v: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (compute, reduce) = v.split_at(v.len() / 2);
        StepTimes {
            compute_ms: compute.to_vec(),
            reduce_ms: reduce.to_vec(),
        }
    }
}

/// Every rank's [`StepTimes`] of the epoch (index: rank), by one all-gather. Every rank must
/// call it at the same point.
pub fn gather(comm: &mut dyn Communicator, mine: &StepTimes) -> Result<Vec<StepTimes>, CommError> {
    if comm.world_size() == 1 {
        return Ok(vec![mine.clone()]);
    }
    Ok(comm
        .all_gather_bytes(&mine.to_bytes())?
        .iter()
        .map(|b| StepTimes::from_bytes(b))
        .collect())
}

/// Per step of `all[rank]`, the time it waited for the slowest rank (ms).
pub fn waits(all: &[StepTimes], rank: usize) -> Vec<f32> {
    let steps = all.iter().map(StepTimes::len).min().unwrap_or(0);
    (0..steps)
        .map(|s| {
            let slowest = all.iter().map(|t| t.compute_ms[s]).fold(0.0, f32::max);
            slowest - all[rank].compute_ms[s]
        })
        .collect()
}

/// One epoch's time breakdown over all ranks (written flat into `metrics.jsonl`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TimeBreakdown {
    /// Median compute per step, ms (all ranks' steps).
    pub step_compute_ms_median: f64,
    /// 99th percentile of compute per step, ms.
    pub step_compute_ms_p99: f64,
    /// Median communication per step (gradient reduction less waiting), ms.
    pub step_comm_ms_median: f64,
    /// 99th percentile of communication per step, ms.
    pub step_comm_ms_p99: f64,
    /// Median time a step waited for the slowest rank, ms.
    pub step_wait_ms_median: f64,
    /// 99th percentile of waiting per step, ms.
    pub step_wait_ms_p99: f64,
    /// Compute over the epoch's steps, seconds (mean over ranks).
    pub epoch_compute_s: f64,
    /// Communication over the epoch's steps, seconds (mean over ranks).
    pub epoch_comm_s: f64,
    /// Waiting for the slowest rank over the epoch's steps, seconds (mean over ranks).
    pub epoch_wait_s: f64,
    /// Median compute per step of each rank, ms (index: rank).
    pub step_compute_ms_by_rank: Vec<f64>,
    /// The rank that was consistently slowest, if one was.
    pub straggler_rank: Option<usize>,
    /// How much slower the straggler was than the next slowest rank: median over steps, ms.
    pub straggler_ms: Option<f64>,
    /// Percent of the steps in which the straggler computed longest.
    pub straggler_steps_pct: Option<f64>,
}

/// The breakdown of one epoch from every rank's step times (index: rank).
pub fn summarize(all: &[StepTimes]) -> TimeBreakdown {
    let world = all.len();
    let steps = all.iter().map(StepTimes::len).min().unwrap_or(0);
    if world == 0 || steps == 0 {
        return TimeBreakdown::default();
    }
    let (mut compute, mut comm, mut wait) = (Vec::new(), Vec::new(), Vec::new());
    for (r, t) in all.iter().enumerate() {
        for (s, w) in waits(all, r).into_iter().enumerate() {
            compute.push(t.compute_ms[s] as f64);
            wait.push(w as f64);
            comm.push((t.reduce_ms[s] - w).max(0.0) as f64);
        }
    }
    let per_rank_s = |v: &[f64]| v.iter().sum::<f64>() / 1e3 / world as f64;
    let by_rank: Vec<f64> = all
        .iter()
        .map(|t| {
            quantile(
                &t.compute_ms[..steps]
                    .iter()
                    .map(|&v| v as f64)
                    .collect::<Vec<_>>(),
                0.5,
            )
        })
        .collect();
    let median_compute = quantile(&compute, 0.5);
    let mut b = TimeBreakdown {
        step_compute_ms_median: median_compute,
        step_compute_ms_p99: quantile(&compute, 0.99),
        step_comm_ms_median: quantile(&comm, 0.5),
        step_comm_ms_p99: quantile(&comm, 0.99),
        step_wait_ms_median: quantile(&wait, 0.5),
        step_wait_ms_p99: quantile(&wait, 0.99),
        epoch_compute_s: per_rank_s(&compute),
        epoch_comm_s: per_rank_s(&comm),
        epoch_wait_s: per_rank_s(&wait),
        step_compute_ms_by_rank: by_rank,
        ..TimeBreakdown::default()
    };
    if world > 1 {
        if let Some((rank, ms, pct)) = straggler(all, steps, median_compute) {
            b.straggler_rank = Some(rank);
            b.straggler_ms = Some(ms);
            b.straggler_steps_pct = Some(pct);
        }
    }
    b
}

/// `(rank, margin ms, percent of steps)` of the consistently slowest rank, if there is one.
fn straggler(all: &[StepTimes], steps: usize, median_compute: f64) -> Option<(usize, f64, f64)> {
    let mut slowest_count = vec![0usize; all.len()];
    for s in 0..steps {
        let r = (0..all.len())
            .max_by(|&a, &b| all[a].compute_ms[s].total_cmp(&all[b].compute_ms[s]))
            .expect("world > 1");
        slowest_count[r] += 1;
    }
    let (rank, &count) = slowest_count.iter().enumerate().max_by_key(|(_, &c)| c)?;
    if 4 * count < 3 * steps {
        return None;
    }
    let margins: Vec<f64> = (0..steps)
        .map(|s| {
            let next = (0..all.len())
                .filter(|&r| r != rank)
                .map(|r| all[r].compute_ms[s])
                .fold(f32::MIN, f32::max);
            (all[rank].compute_ms[s] - next) as f64
        })
        .collect();
    let margin = quantile(&margins, 0.5);
    (margin >= 1.0 && margin >= 0.1 * median_compute)
        .then(|| (rank, margin, 100.0 * count as f64 / steps as f64))
}

/// The `q`-quantile of `v` (nearest rank: the smallest value with at least `q` of the values
/// at or below it); 0 for no values.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let k = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[k - 1]
}

impl TimeBreakdown {
    /// The epoch log line: medians and p99s, the split of the epoch, the straggler.
    pub fn log_line(&self) -> String {
        let total = self.epoch_compute_s + self.epoch_comm_s + self.epoch_wait_s;
        let pct = |x: f64| if total > 0.0 { 100.0 * x / total } else { 0.0 };
        let mut line = format!(
            "Time per step (ms, median/p99 over ranks and steps): compute {:.1}/{:.1}, \
             communication {:.1}/{:.1}, waiting for the slowest rank {:.1}/{:.1}; \
             split {:.0}% compute, {:.0}% communication, {:.0}% waiting",
            self.step_compute_ms_median,
            self.step_compute_ms_p99,
            self.step_comm_ms_median,
            self.step_comm_ms_p99,
            self.step_wait_ms_median,
            self.step_wait_ms_p99,
            pct(self.epoch_compute_s),
            pct(self.epoch_comm_s),
            pct(self.epoch_wait_s),
        );
        if let (Some(r), Some(ms), Some(p)) = (
            self.straggler_rank,
            self.straggler_ms,
            self.straggler_steps_pct,
        ) {
            line.push_str(&format!(
                "; straggler: rank {r}, {ms:.1} ms/step slower than the next slowest rank \
                 (slowest in {p:.0}% of steps)"
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(compute: &[f32], reduce: &[f32]) -> StepTimes {
        StepTimes {
            compute_ms: compute.to_vec(),
            reduce_ms: reduce.to_vec(),
        }
    }

    #[test]
    fn bytes_round_trip() {
        let t = times(&[1.5, 2.0, 3.25], &[0.5, 0.0, 7.0]);
        assert_eq!(StepTimes::from_bytes(&t.to_bytes()), t);
        assert_eq!(StepTimes::from_bytes(&[]), StepTimes::default());
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    /// Rank 1 computes 30 ms longer each step; rank 0 waits for it inside its reduction.
    #[test]
    fn a_slow_rank_is_the_straggler_and_the_other_waits_for_it() {
        let n = 20;
        let r0 = times(&vec![10.0; n], &vec![32.0; n]);
        let r1 = times(&vec![40.0; n], &vec![2.0; n]);
        let b = summarize(&[r0, r1]);
        assert_eq!(b.straggler_rank, Some(1));
        assert_eq!(b.straggler_ms, Some(30.0));
        assert_eq!(b.straggler_steps_pct, Some(100.0));
        // Waits: rank 0 30 ms, rank 1 0 → median over the 40 (rank, step) pairs is 0 (the
        // lower half), p99 30; communication 2 ms for both.
        assert_eq!((b.step_wait_ms_median, b.step_wait_ms_p99), (0.0, 30.0));
        assert_eq!((b.step_comm_ms_median, b.step_comm_ms_p99), (2.0, 2.0));
        assert_eq!(b.step_compute_ms_by_rank, vec![10.0, 40.0]);
        assert!((b.epoch_wait_s - 20.0 * 30.0 / 2.0 / 1e3).abs() < 1e-9);
        assert!((b.epoch_comm_s - 20.0 * 2.0 / 1e3).abs() < 1e-9);
        assert!((b.epoch_compute_s - 20.0 * 50.0 / 2.0 / 1e3).abs() < 1e-9);
        assert!(
            b.log_line().contains("straggler: rank 1, 30.0 ms/step"),
            "{}",
            b.log_line()
        );
    }

    /// Ranks taking turns at being slow, or slower by a hair, are no straggler.
    #[test]
    fn no_straggler_without_a_consistent_margin() {
        let a: Vec<f32> = (0..20)
            .map(|i| if i % 2 == 0 { 10.0 } else { 20.0 })
            .collect();
        let b: Vec<f32> = (0..20)
            .map(|i| if i % 2 == 0 { 20.0 } else { 10.0 })
            .collect();
        let z = vec![1.0; 20];
        assert_eq!(
            summarize(&[times(&a, &z), times(&b, &z)]).straggler_rank,
            None
        );
        let c = vec![10.0; 20];
        let d = vec![10.5; 20];
        let s = summarize(&[times(&c, &z), times(&d, &z)]);
        assert_eq!(s.straggler_rank, None);
        assert!(!s.log_line().contains("straggler"));
    }

    #[test]
    fn one_rank_never_waits() {
        let b = summarize(&[times(&[5.0, 7.0], &[0.0, 0.0])]);
        assert_eq!((b.step_wait_ms_p99, b.step_comm_ms_p99), (0.0, 0.0));
        assert_eq!(b.step_compute_ms_median, 5.0);
        assert_eq!(b.straggler_rank, None);
        assert_eq!(summarize(&[]), TimeBreakdown::default());
    }
}
