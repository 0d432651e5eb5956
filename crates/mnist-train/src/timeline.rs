//! `--profile-steps A:B`: a timeline of global steps A..B on every rank, written by rank 0 as
//! Chrome-trace JSON (`<path>/trace.json`, the format of chrome://tracing and Perfetto).
//!
//! One track per rank (`pid` = rank, `tid` 0 = its training loop). Each profiled step is a span
//! `step N` holding its phases back to back ([`StepMarks::spans`]: injected delay, data gather,
//! forward, backward, gradient check, gradient reduction, optimizer step). Inside the gradient
//! reduction: each collective as its own span (operation, the bytes it moved and this rank's
//! bytes sent in `args`), the time between them as `compression` (encoding and decoding; for
//! `none`, copying to and from the buffers), and, inside the first collective, `waiting for
//! peers`: how much later the slowest rank finished computing than this one (known once the
//! epoch's step times are gathered, [`crate::breakdown`]). The evaluation after an epoch is a
//! span when the epoch's last step was profiled.
//!
//! Outside the window nothing is recorded: the training loop asks [`Timeline::active`] (a
//! range check) and only then wraps the communicator ([`Recording`]). Timestamps are this
//! machine's wall clock (so the ranks of a machine line up), shifted so the trace starts at 0.
//! At the end of the epoch in which the window closes (or the last epoch), the ranks'
//! events are gathered to rank 0 (one all-gather), which writes the file atomically.

use crate::breakdown::{self, StepTimes};
use crate::phases::{Phase, StepMarks};
use crate::TrainError;
use mnist_comm::{CommError, Communicator, DeviceBuffer, DeviceCollectives, ReduceOp};
use mnist_common::StepRange;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The trace's file name inside `--path`.
pub const TRACE_FILE: &str = "trace.json";

/// One Chrome-trace event: a complete span (`ph` "X") or metadata (`ph` "M").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// What it is.
    pub name: String,
    /// Its category (`step`, `compute`, `comm`, `wait`, `eval`; empty for metadata).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cat: String,
    /// "X": a span; "M": metadata (process and thread names).
    pub ph: String,
    /// Start, microseconds.
    #[serde(default)]
    pub ts: f64,
    /// Duration, microseconds (spans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dur: Option<f64>,
    /// The rank.
    pub pid: usize,
    /// The thread: 0, the training loop.
    pub tid: u32,
    /// Details: step number, bytes, the process's name.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub args: serde_json::Map<String, serde_json::Value>,
}

/// One collective call seen by [`Recording`].
#[derive(Clone, Debug)]
pub struct Call {
    /// The operation.
    pub op: &'static str,
    /// Bytes of the buffer it worked on (its own contribution for an all-gather).
    pub bytes: u64,
    /// Bytes this rank sent for it ([`Communicator::bytes_sent`]).
    pub sent: u64,
    /// When it started.
    pub start: Instant,
    /// When it returned.
    pub end: Instant,
}

/// A communicator that forwards every call to another and notes each collective.
pub struct Recording<'a> {
    inner: &'a mut dyn Communicator,
    calls: &'a mut Vec<Call>,
}

impl<'a> Recording<'a> {
    /// Record the calls made through it into `calls`.
    pub fn new(inner: &'a mut dyn Communicator, calls: &'a mut Vec<Call>) -> Recording<'a> {
        Recording { inner, calls }
    }

    fn record<T>(
        &mut self,
        op: &'static str,
        bytes: usize,
        f: impl FnOnce(&mut dyn Communicator) -> T,
    ) -> T {
        let sent = self.inner.bytes_sent();
        let start = Instant::now();
        let r = f(&mut *self.inner);
        self.calls.push(Call {
            op,
            bytes: bytes as u64,
            sent: self.inner.bytes_sent() - sent,
            start,
            end: Instant::now(),
        });
        r
    }

    fn device_inner(&mut self, op: &str) -> Result<&mut dyn DeviceCollectives, CommError> {
        let rank = self.inner.rank();
        self.inner
            .device()
            .ok_or_else(|| CommError::InvalidArgument {
                rank,
                op: op.into(),
                detail: "this communicator has no device collectives".into(),
            })
    }
}

impl Communicator for Recording<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world_size(&self) -> usize {
        self.inner.world_size()
    }
    fn all_reduce_f32(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        let n = std::mem::size_of_val(buf);
        self.record("all_reduce f32", n, |c| c.all_reduce_f32(buf, op))
    }
    fn all_reduce_f16(&mut self, buf: &mut [half::f16], op: ReduceOp) -> Result<(), CommError> {
        let n = std::mem::size_of_val(buf);
        self.record("all_reduce f16", n, |c| c.all_reduce_f16(buf, op))
    }
    fn all_reduce_bf16(&mut self, buf: &mut [half::bf16], op: ReduceOp) -> Result<(), CommError> {
        let n = std::mem::size_of_val(buf);
        self.record("all_reduce bf16", n, |c| c.all_reduce_bf16(buf, op))
    }
    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<(), CommError> {
        let n = buf.len();
        self.record("broadcast", n, |c| c.broadcast(buf, root))
    }
    fn all_gather_bytes(&mut self, send: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        self.record("all_gather", send.len(), |c| c.all_gather_bytes(send))
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        self.record("barrier", 0, |c| c.barrier())
    }
    fn bytes_sent(&self) -> u64 {
        self.inner.bytes_sent()
    }
    fn abort(&mut self, reason: &str) {
        self.inner.abort(reason)
    }
    fn device(&mut self) -> Option<&mut dyn DeviceCollectives> {
        if self.inner.device().is_some() {
            Some(self)
        } else {
            None
        }
    }
}

impl DeviceCollectives for Recording<'_> {
    unsafe fn all_reduce_device(
        &mut self,
        buf: DeviceBuffer,
        op: ReduceOp,
    ) -> Result<(), CommError> {
        let n = buf.count * buf.dtype.size_bytes();
        let sent = self.inner.bytes_sent();
        let start = Instant::now();
        // SAFETY: forwarded unchanged; our caller upholds the contract.
        let r = unsafe {
            self.device_inner("all_reduce (device)")?
                .all_reduce_device(buf, op)
        };
        self.calls.push(Call {
            op: "all_reduce (device)",
            bytes: n as u64,
            sent: self.inner.bytes_sent() - sent,
            start,
            end: Instant::now(),
        });
        r
    }
    unsafe fn broadcast_device(&mut self, buf: DeviceBuffer, root: usize) -> Result<(), CommError> {
        let n = buf.count * buf.dtype.size_bytes();
        let sent = self.inner.bytes_sent();
        let start = Instant::now();
        // SAFETY: forwarded unchanged; our caller upholds the contract.
        let r = unsafe {
            self.device_inner("broadcast (device)")?
                .broadcast_device(buf, root)
        };
        self.calls.push(Call {
            op: "broadcast (device)",
            bytes: n as u64,
            sent: self.inner.bytes_sent() - sent,
            start,
            end: Instant::now(),
        });
        r
    }
}

/// A profiled step whose `waiting for peers` span awaits the epoch's step times.
#[derive(Debug)]
struct PendingWait {
    /// Index of the step in the epoch's [`StepTimes`].
    index: usize,
    /// The first collective of its gradient reduction.
    start: Instant,
    end: Instant,
}

/// This rank's timeline (`--profile-steps`).
#[derive(Debug)]
pub struct Timeline {
    window: Option<StepRange>,
    rank: usize,
    /// What the gaps between a reduction's collectives are called.
    gap_name: &'static str,
    origin: Instant,
    origin_unix_us: f64,
    events: Vec<TraceEvent>,
    pending: Vec<PendingWait>,
    written: bool,
}

impl Timeline {
    /// A timeline of `window` (None: record nothing) for `rank`, whose gradient compression
    /// method is `method`.
    pub fn new(window: Option<StepRange>, rank: usize, method: &str) -> Timeline {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6);
        Timeline {
            window,
            rank,
            gap_name: if method == "none" {
                "gradient staging"
            } else {
                "compression"
            },
            origin: Instant::now(),
            origin_unix_us: unix,
            events: Vec::new(),
            pending: Vec::new(),
            written: false,
        }
    }

    /// Whether global step `step` is profiled.
    pub fn active(&self, step: u64) -> bool {
        self.window.is_some_and(|w| w.contains(step))
    }

    fn us(&self, t: Instant) -> f64 {
        self.origin_unix_us + t.saturating_duration_since(self.origin).as_secs_f64() * 1e6
    }

    fn span(&mut self, name: &str, cat: &str, start: Instant, end: Instant) -> &mut TraceEvent {
        let ev = TraceEvent {
            name: name.into(),
            cat: cat.into(),
            ph: "X".into(),
            ts: self.us(start),
            dur: Some(end.saturating_duration_since(start).as_secs_f64() * 1e6),
            pid: self.rank,
            tid: 0,
            args: serde_json::Map::new(),
        };
        self.events.push(ev);
        self.events.last_mut().expect("just pushed")
    }

    /// Record global step `step` from its phase marks and the collectives of its gradient
    /// reduction; `index` is its position in the epoch's [`StepTimes`].
    pub fn step(&mut self, step: u64, marks: &StepMarks, calls: &[Call], index: usize) {
        let spans = marks.spans();
        let end = spans.last().map_or(marks.start, |s| s.2);
        self.span(&format!("step {step}"), "step", marks.start, end)
            .args
            .insert("step".into(), step.into());
        let forward_marked = spans.iter().any(|s| s.0 == Phase::Forward);
        for &(phase, a, b) in &spans {
            let name = match phase {
                Phase::Backward if !forward_marked => "forward + backward",
                p => p.name(),
            };
            let cat = if phase == Phase::Reduce {
                "comm"
            } else {
                "compute"
            };
            self.span(name, cat, a, b);
            if phase == Phase::Reduce {
                let mut from = a;
                for c in calls {
                    if c.start > from {
                        self.span(self.gap_name, "compute", from, c.start);
                    }
                    let ev = self.span(c.op, "comm", c.start, c.end);
                    ev.args.insert("bytes".into(), c.bytes.into());
                    ev.args.insert("bytes_sent".into(), c.sent.into());
                    from = c.end;
                }
                if b > from && !calls.is_empty() {
                    self.span(self.gap_name, "compute", from, b);
                }
                if let Some(first) = calls.first() {
                    self.pending.push(PendingWait {
                        index,
                        start: first.start,
                        end: first.end,
                    });
                }
            }
        }
    }

    /// Record the evaluation that ran from `start` to now.
    pub fn evaluation(&mut self, start: Instant) {
        self.span("evaluation", "eval", start, Instant::now());
    }

    /// Add the `waiting for peers` spans of the epoch's profiled steps, from every rank's step
    /// times (index: rank).
    pub fn epoch_times(&mut self, all: &[StepTimes]) {
        if self.pending.is_empty() {
            return;
        }
        let waits = breakdown::waits(all, self.rank);
        for p in std::mem::take(&mut self.pending) {
            let Some(&w) = waits.get(p.index) else {
                continue;
            };
            let dur = (w as f64 * 1e3).min(p.end.duration_since(p.start).as_secs_f64() * 1e6);
            if dur > 0.0 {
                let ev = self.span("waiting for peers", "wait", p.start, p.end);
                ev.dur = Some(dur);
            }
        }
    }

    /// Whether the trace is due now: the window has closed by global step `step` (steps done)
    /// or this is the run's last epoch, and it was not written yet.
    pub fn due(&self, step: u64, last_epoch: bool) -> bool {
        self.window
            .is_some_and(|w| !self.written && (step >= w.end || last_epoch))
    }

    /// Gather every rank's events to rank 0, which writes `<dir>/trace.json` (atomically) and
    /// returns its path. Every rank must call it at the same point.
    pub fn write(
        &mut self,
        comm: &mut dyn Communicator,
        dir: &Path,
    ) -> Result<Option<PathBuf>, TrainError> {
        self.written = true;
        let mine = serde_json::to_vec(&self.events).expect("trace events serialise");
        self.events = Vec::new();
        let all = if comm.world_size() == 1 {
            vec![mine]
        } else {
            comm.all_gather_bytes(&mine)?
        };
        if comm.rank() != 0 {
            return Ok(None);
        }
        let mut events = Vec::new();
        for (rank, bytes) in all.iter().enumerate() {
            let evs: Vec<TraceEvent> = serde_json::from_slice(bytes).map_err(|e| {
                TrainError::Internal(format!("rank {rank}'s timeline does not parse: {e}"))
            })?;
            events.push(meta("process_name", rank, "name", format!("rank {rank}")));
            events.push(meta("process_sort_index", rank, "sort_index", rank));
            events.push(meta(
                "thread_name",
                rank,
                "name",
                "training loop".to_string(),
            ));
            events.extend(evs);
        }
        let t0 = events
            .iter()
            .filter(|e| e.ph == "X")
            .map(|e| e.ts)
            .fold(f64::INFINITY, f64::min);
        for e in events.iter_mut().filter(|e| e.ph == "X") {
            e.ts -= t0;
        }
        let doc = serde_json::json!({
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": {"producer": "mnist-ddp --profile-steps", "ranks": all.len()},
        });
        let path = dir.join(TRACE_FILE);
        mnist_common::atomic_file::write_atomic(&path, |f| {
            serde_json::to_writer(std::io::BufWriter::new(f), &doc).map_err(std::io::Error::other)
        })
        .map_err(|e| TrainError::Output {
            flag: "--profile-steps",
            path: path.clone(),
            source: e.source,
        })?;
        Ok(Some(path))
    }
}

fn meta(name: &str, rank: usize, key: &str, value: impl Into<serde_json::Value>) -> TraceEvent {
    let mut args = serde_json::Map::new();
    args.insert(key.into(), value.into());
    TraceEvent {
        name: name.into(),
        cat: String::new(),
        ph: "M".into(),
        ts: 0.0,
        dur: None,
        pid: rank,
        tid: 0,
        args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A step with two collectives: phases tile the step; collectives and the gaps between
    /// them tile the reduction; the wait sits inside the first collective.
    #[test]
    fn a_step_nests_and_tiles() {
        let mut t = Timeline::new(Some(StepRange { start: 3, end: 5 }), 1, "topk");
        assert!(!t.active(2) && t.active(3) && t.active(4) && !t.active(5));
        let mut m = StepMarks::start();
        let at = |ms: u64| m.start + Duration::from_millis(ms);
        let (d, f, b, c, r, o) = (at(1), at(2), at(5), at(6), at(16), at(17));
        let calls = vec![
            Call {
                op: "all_gather",
                bytes: 100,
                sent: 100,
                start: at(7),
                end: at(12),
            },
            Call {
                op: "all_reduce f32",
                bytes: 40,
                sent: 40,
                start: at(13),
                end: at(15),
            },
        ];
        for (p, x) in [
            (Phase::Delay, d),
            (Phase::Data, f),
            (Phase::Backward, b),
            (Phase::Check, c),
            (Phase::Reduce, r),
            (Phase::Optimizer, o),
        ] {
            m.set(p, x);
        }
        t.step(3, &m, &calls, 0);
        let times = |c: f32| StepTimes {
            compute_ms: vec![c],
            reduce_ms: vec![10.0],
        };
        t.epoch_times(&[times(10.0), times(7.0)]);
        let names: Vec<&str> = t.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "step 3",
                "injected delay (MNIST_FAULT slow)",
                "data gather",
                "forward + backward",
                "gradient check",
                "gradient reduction",
                "compression",
                "all_gather",
                "compression",
                "all_reduce f32",
                "compression",
                "optimizer step",
                "waiting for peers"
            ]
        );
        let ev = |n: &str| t.events.iter().find(|e| e.name == n).unwrap();
        assert_eq!(ev("step 3").dur, Some(17_000.0));
        assert_eq!(ev("all_gather").args["bytes"], 100);
        let wait = ev("waiting for peers");
        assert_eq!(wait.ts, ev("all_gather").ts);
        assert_eq!(wait.dur, Some(3_000.0)); // rank 0 computed 3 ms longer
        assert!(t.due(5, false) && !t.due(4, false) && t.due(4, true));
    }

    #[test]
    fn no_window_records_nothing() {
        let t = Timeline::new(None, 0, "none");
        assert!(!t.active(0) && !t.due(10, true));
    }
}
