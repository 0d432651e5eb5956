//! One training step's forward and backward pass, optionally split across threads of this
//! process: data parallelism inside a process, the way DDP does it across processes.
//!
//! On a CPU, libtorch's intra-op threads help little with LeNet at batch 64: most kernels are
//! too small to divide. Splitting the batch instead gives each thread whole kernels: with
//! `parts` threads, each computes the loss and gradients of about `N / parts` images with one
//! intra-op thread, on a replica of the model whose parameters are views of the same flat
//! buffer ([`FlatParams::attach`]) and whose gradients land in a flat buffer of its own. Each
//! part's loss is weighted by its share of the batch, so the sum of the parts' gradients is the
//! gradient of the whole batch's mean loss — the same step, up to float rounding.

use crate::evaluate::correct_counts;
use crate::flat::FlatParams;
use crate::TrainError;
use mnist_common::panics::{self, Panic};
use mnist_models::Model;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;
use tch::{Kind, Tensor};

/// The outcome of one step's forward and backward pass over a batch.
#[derive(Debug)]
pub struct StepOutput {
    /// Mean loss over the batch (detached).
    pub loss: Tensor,
    /// Number of images whose top-1 prediction is right.
    pub correct1: Tensor,
    /// Number of images whose label is among the top 5.
    pub correct5: Tensor,
    /// When the calling thread's forward pass ended (for the timeline; None when the
    /// forward and backward passes are not separable).
    pub forward_end: Option<std::time::Instant>,
}

/// A part of a batch for a helper thread.
struct Job {
    x: Tensor,
    y: Tensor,
    /// The part's share of the batch: its loss is multiplied by this before backward.
    weight: f64,
}

/// What a helper thread computed for its part.
struct Reply {
    /// The weighted loss (detached).
    loss: Tensor,
    correct1: Tensor,
    correct5: Tensor,
    /// When the forward pass ended.
    forward_end: std::time::Instant,
}

/// A helper thread and its replica's gradient buffer.
struct Helper {
    jobs: Option<Sender<Job>>,
    /// A helper's part, or the panic (a libtorch error) that stopped it.
    replies: Receiver<Result<Reply, Panic>>,
    grads: Tensor,
    thread: Option<JoinHandle<()>>,
}

/// Runs each step's forward and backward pass on the calling thread and `parts - 1` helpers.
pub struct BatchSplitter {
    helpers: Vec<Helper>,
}

impl std::fmt::Debug for BatchSplitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSplitter")
            .field("parts", &self.parts())
            .finish()
    }
}

impl BatchSplitter {
    /// Split each batch into `parts` (≥ 1): start `parts - 1` helper threads, each with a
    /// replica of `model` attached to `flat`.
    pub fn new(
        model: &Model,
        flat: &FlatParams,
        parts: usize,
    ) -> Result<BatchSplitter, TrainError> {
        let device = flat.params.device();
        let mut helpers = Vec::new();
        for i in 1..parts.max(1) {
            let mut replica = Model::new(model.kind(), device);
            let grads = flat.attach(&mut replica);
            let (job_tx, job_rx) = channel::<Job>();
            let (reply_tx, reply_rx) = channel::<Result<Reply, Panic>>();
            let thread = std::thread::Builder::new()
                .name(format!("batch-part-{i}"))
                .spawn({
                    let grads = grads.shallow_clone();
                    move || helper_loop(replica, grads, job_rx, reply_tx)
                })
                .map_err(|e| {
                    TrainError::Device(format!("cannot start a batch-split thread: {e}"))
                })?;
            helpers.push(Helper {
                jobs: Some(job_tx),
                replies: reply_rx,
                grads,
                thread: Some(thread),
            });
        }
        Ok(BatchSplitter { helpers })
    }

    /// Number of parts each batch is split into.
    pub fn parts(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Zero the gradients, then compute the loss of `model` on the batch `(x, y)` and
    /// accumulate the gradient of its mean into `flat.grads`, splitting the batch across the
    /// helper threads.
    pub fn forward_backward(
        &mut self,
        model: &Model,
        flat: &mut FlatParams,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<StepOutput, TrainError> {
        let n = x.size()[0];
        let ranges = split_ranges(n, self.parts() as i64);
        flat.zero_grads();
        // Hand out parts 1.. first so the helpers work while this thread does part 0.
        let mut busy = Vec::new();
        for (helper, &(lo, len)) in self.helpers.iter().zip(&ranges[1..]) {
            let job = Job {
                x: x.narrow(0, lo, len),
                y: y.narrow(0, lo, len),
                weight: len as f64 / n as f64,
            };
            let sent = helper.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok());
            if !sent {
                return Err(helper_died());
            }
            busy.push(helper);
        }
        let (lo, len) = ranges[0];
        let part = part_step(
            model,
            &x.narrow(0, lo, len),
            &y.narrow(0, lo, len),
            len as f64 / n as f64,
        );
        let (mut loss, mut correct1, mut correct5) = (part.loss, part.correct1, part.correct5);
        for helper in busy {
            let r = helper
                .replies
                .recv()
                .map_err(|_| helper_died())?
                .map_err(|p| TrainError::from_panic(p, "training step (batch-split thread)"))?;
            tch::no_grad(|| {
                let _ = flat.grads.g_add_(&helper.grads);
            });
            loss += r.loss;
            correct1 += r.correct1;
            correct5 += r.correct5;
        }
        Ok(StepOutput {
            loss,
            correct1,
            correct5,
            forward_end: Some(part.forward_end),
        })
    }
}

impl Drop for BatchSplitter {
    fn drop(&mut self) {
        for h in &mut self.helpers {
            h.jobs = None; // closes the channel: the helper's loop ends
        }
        for h in &mut self.helpers {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn helper_died() -> TrainError {
    TrainError::Device("a batch-split thread stopped unexpectedly".into())
}

/// A helper: for each job, zero the replica's gradients (`grads`, its flat buffer), then
/// forward and backward.
/// A panic (tch reports libtorch errors so) goes back as the reply, so the step fails with
/// libtorch's message instead of a dead thread.
fn helper_loop(
    replica: Model,
    mut grads: Tensor,
    jobs: Receiver<Job>,
    replies: Sender<Result<Reply, Panic>>,
) {
    while let Ok(job) = jobs.recv() {
        let out = panics::catch(|| {
            let _ = grads.zero_();
            part_step(&replica, &job.x, &job.y, job.weight)
        });
        let failed = out.is_err();
        if replies.send(out).is_err() || failed {
            break;
        }
    }
}

/// Forward and backward for one part with its loss weighted by `weight`; returns the weighted
/// loss and the part's correct counts.
fn part_step(model: &Model, x: &Tensor, y: &Tensor, weight: f64) -> Reply {
    let logits = model.forward(x);
    let loss = logits.cross_entropy_for_logits(y);
    let loss = if weight == 1.0 { loss } else { loss * weight };
    let forward_end = std::time::Instant::now();
    loss.backward();
    let (correct1, correct5) = tch::no_grad(|| correct_counts(&logits, y));
    Reply {
        loss: loss.detach().to_kind(Kind::Float),
        correct1,
        correct5,
        forward_end,
    }
}

/// `(start, len)` of `parts` nearly equal, non-empty slices of `0..n` (fewer when n < parts).
fn split_ranges(n: i64, parts: i64) -> Vec<(i64, i64)> {
    let parts = parts.clamp(1, n.max(1));
    let (base, extra) = (n / parts, n % parts);
    let mut out = Vec::new();
    let mut lo = 0;
    for i in 0..parts {
        let len = base + i64::from(i < extra);
        out.push((lo, len));
        lo += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mnist_models::ModelKind;
    use tch::Device;

    #[test]
    fn ranges_cover_the_batch() {
        assert_eq!(split_ranges(64, 2), vec![(0, 32), (32, 32)]);
        assert_eq!(split_ranges(7, 3), vec![(0, 3), (3, 2), (5, 2)]);
        assert_eq!(split_ranges(1, 4), vec![(0, 1)]);
    }

    /// Two and three parts give the loss, counts and gradient of the whole batch.
    #[test]
    fn split_step_equals_whole_batch_step() {
        for arch in [ModelKind::LeNet, ModelKind::Mlp] {
            tch::manual_seed(11);
            let mut model = Model::new(arch, Device::Cpu);
            let mut flat = FlatParams::new(&mut model);
            let x = Tensor::randn([23, 1, 28, 28], (Kind::Float, Device::Cpu));
            let y = Tensor::randint(10, [23], (Kind::Int64, Device::Cpu));
            let mut whole = BatchSplitter::new(&model, &flat, 1).unwrap();
            let w = whole.forward_backward(&model, &mut flat, &x, &y).unwrap();
            let g_whole = flat.grads.copy();
            for parts in [2, 3] {
                let mut split = BatchSplitter::new(&model, &flat, parts).unwrap();
                assert_eq!(split.parts(), parts);
                // Twice: the second step must not see the first step's gradients.
                for _ in 0..2 {
                    let s = split.forward_backward(&model, &mut flat, &x, &y).unwrap();
                    let dl = (s.loss.double_value(&[]) - w.loss.double_value(&[])).abs();
                    assert!(dl < 1e-5, "{arch:?} {parts} parts: loss differs by {dl}");
                    assert!(s.correct1.equal(&w.correct1));
                    assert!(s.correct5.equal(&w.correct5));
                    let scale = g_whole.abs().max().double_value(&[]);
                    let d = (&flat.grads - &g_whole).abs().max().double_value(&[]);
                    assert!(
                        d < 1e-5 * scale,
                        "{arch:?} {parts} parts: gradients differ by {d}"
                    );
                }
            }
        }
    }

    /// A replica computes with the current parameter values after an in-place update.
    #[test]
    fn helpers_see_parameter_updates() {
        tch::manual_seed(12);
        let mut model = Model::new(ModelKind::Mlp, Device::Cpu);
        let mut flat = FlatParams::new(&mut model);
        let x = Tensor::randn([8, 1, 28, 28], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [8], (Kind::Int64, Device::Cpu));
        let mut split = BatchSplitter::new(&model, &flat, 2).unwrap();
        let before = split.forward_backward(&model, &mut flat, &x, &y).unwrap();
        tch::no_grad(|| {
            let _ = flat.params.g_mul_scalar_(0.5);
        });
        let after = split.forward_backward(&model, &mut flat, &x, &y).unwrap();
        let mut whole = BatchSplitter::new(&model, &flat, 1).unwrap();
        let reference = whole.forward_backward(&model, &mut flat, &x, &y).unwrap();
        let d = (after.loss.double_value(&[]) - reference.loss.double_value(&[])).abs();
        assert!(d < 1e-5, "after the update the split loss differs by {d}");
        assert!((after.loss.double_value(&[]) - before.loss.double_value(&[])).abs() > 1e-4);
    }

    /// A libtorch error (an out-of-range label) becomes one-line errors: in a helper thread
    /// it comes back as the step's error, with libtorch's message; on the calling thread it
    /// is a panic that the trainer's step guard catches the same way.
    #[test]
    fn libtorch_errors_in_any_part_are_reported_with_their_message() {
        mnist_common::panics::install_quiet_hook();
        tch::manual_seed(13);
        let mut model = Model::new(ModelKind::Mlp, Device::Cpu);
        let mut flat = FlatParams::new(&mut model);
        let x = Tensor::randn([8, 1, 28, 28], (Kind::Float, Device::Cpu));
        let labels = |v: [i64; 8]| Tensor::from_slice(&v);
        let mut split = BatchSplitter::new(&model, &flat, 2).unwrap();
        // Part 1 (the helper thread) holds the bad label.
        let e = split
            .forward_backward(&model, &mut flat, &x, &labels([0, 1, 2, 3, 4, 5, 6, 10]))
            .unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, TrainError::Torch { .. })
                && text.contains("batch-split thread")
                && text.contains("out of bounds")
                && !text.contains('\n'),
            "{text}"
        );
        assert_eq!(e.kind(), mnist_common::FailureKind::OwnFault);
        // Part 0 (this thread): a panic, caught as the trainer does.
        let mut split = BatchSplitter::new(&model, &flat, 2).unwrap();
        let p = panics::catch(|| {
            split.forward_backward(&model, &mut flat, &x, &labels([10, 1, 2, 3, 4, 5, 6, 7]))
        })
        .unwrap_err();
        let e = TrainError::from_panic(p, "training step");
        assert!(
            e.to_string()
                .starts_with("libtorch error during training step: ")
                && e.to_string().contains("out of bounds"),
            "{e}"
        );
    }
}
