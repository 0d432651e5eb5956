//! Per-epoch metrics, appended as one JSON object per line to `<path>/metrics.jsonl`.

use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// One epoch's figures (global, reduced over ranks).
#[derive(Clone, Debug, Serialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate used during the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch's samples.
    pub train_loss: f64,
    /// Training top-1 accuracy, percent.
    pub train_top1: f64,
    /// Training top-5 accuracy, percent.
    pub train_top5: f64,
    /// Mean test loss per sample.
    pub test_loss: f64,
    /// Test top-1 accuracy, percent.
    pub test_top1: f64,
    /// Test top-5 accuracy, percent.
    pub test_top5: f64,
    /// Seconds spent in the training loop.
    pub epoch_seconds: f64,
    /// CPU seconds rank 0's process (all its threads) used in the training loop: what the
    /// loop cost, less sensitive than `epoch_seconds` to other load on the machine.
    pub epoch_cpu_seconds: f64,
    /// Training images per second, all ranks together.
    pub images_per_second: f64,
    /// Number of processes.
    pub world_size: usize,
    /// Gradient compression method.
    pub compression: String,
    /// Payload bytes this rank sent per training step for gradients.
    pub bytes_sent_per_step: f64,
    /// Bytes `none` would send per step divided by `bytes_sent_per_step` (null for one process).
    pub compression_ratio: Option<f64>,
    /// Restarts of the job so far (the launcher's restart round, `--max-restarts`).
    pub restarts: u32,
    /// Where the steps' time went: compute, communication, waiting, the straggler (flat).
    #[serde(flatten)]
    pub time: crate::breakdown::TimeBreakdown,
}

/// Append `rec` to the JSON-lines file at `path`.
pub fn append(path: &Path, rec: &EpochRecord) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let line = serde_json::to_string(rec).map_err(std::io::Error::other)?;
    writeln!(f, "{line}")
}
