//! Test-set evaluation: average loss (summed per sample, divided by the sample count — the
//! reference divides by the batch count by mistake), top-1 and top-5 accuracy. With several
//! ranks each evaluates a contiguous shard and the sums are all-reduced: every sample counted
//! exactly once.

use crate::dataset::TensorDataset;
use mnist_comm::{CommError, Communicator, ReduceOp};
use mnist_models::Model;
use tch::{Kind, Reduction, Tensor};

/// Global evaluation result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    /// Summed cross-entropy over all samples.
    pub loss_sum: f64,
    /// Samples whose top prediction is right.
    pub correct1: u64,
    /// Samples whose label is among the top five.
    pub correct5: u64,
    /// Samples evaluated.
    pub count: u64,
}

impl EvalResult {
    /// Mean loss per sample.
    pub fn avg_loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }
    /// Top-1 accuracy in percent.
    pub fn top1(&self) -> f64 {
        100.0 * self.correct1 as f64 / self.count.max(1) as f64
    }
    /// Top-5 accuracy in percent.
    pub fn top5(&self) -> f64 {
        100.0 * self.correct5 as f64 / self.count.max(1) as f64
    }
}

/// Counts of correct top-1 and top-5 predictions in a batch, as 0-d i64 tensors.
pub fn correct_counts(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let top1 = logits.argmax(-1, false).eq_tensor(labels).sum(Kind::Int64);
    let k = 5.min(logits.size()[1]);
    let (_, idx) = logits.topk(k, -1, true, false);
    let top5 = idx
        .eq_tensor(&labels.unsqueeze(1))
        .any_dim(1, false)
        .sum(Kind::Int64);
    (top1, top5)
}

/// Evaluate `model` on this rank's shard of `data` and reduce over ranks.
pub fn evaluate(
    model: &Model,
    data: &TensorDataset,
    batch: usize,
    comm: &mut dyn Communicator,
) -> Result<EvalResult, CommError> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let lo = data.len * rank / world;
    let hi = data.len * (rank + 1) / world;
    let device = data.device();
    let sums = tch::no_grad(|| {
        let mut loss = Tensor::zeros([], (Kind::Double, device));
        let mut c1 = Tensor::zeros([], (Kind::Int64, device));
        let mut c5 = Tensor::zeros([], (Kind::Int64, device));
        let mut start = lo;
        while start < hi {
            let n = batch.min(hi - start);
            let (x, y) = data.batch(start, n);
            let logits = model.forward(&x);
            let l = logits.log_softmax(-1, Kind::Float).g_nll_loss::<Tensor>(
                &y,
                None,
                Reduction::Sum,
                -100,
            );
            loss += l.to_kind(Kind::Double);
            let (a, b) = correct_counts(&logits, &y);
            c1 += a;
            c5 += b;
            start += n;
        }
        [
            loss.double_value(&[]),
            c1.int64_value(&[]) as f64,
            c5.int64_value(&[]) as f64,
            (hi - lo) as f64,
        ]
    });
    let mut buf: Vec<f32> = sums.iter().map(|&v| v as f32).collect();
    comm.all_reduce_f32(&mut buf, ReduceOp::Sum)?;
    let (loss_sum, correct1, correct5, count) = if world == 1 {
        (sums[0], sums[1] as u64, sums[2] as u64, sums[3] as u64)
    } else {
        (
            buf[0] as f64,
            buf[1].round() as u64,
            buf[2].round() as u64,
            buf[3].round() as u64,
        )
    };
    Ok(EvalResult {
        loss_sum,
        correct1,
        correct5,
        count,
    })
}
