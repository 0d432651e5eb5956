//! The plain, validated configuration that the training code takes. It never sees clap types:
//! `cli::TrainArgs::resolve` turns flags into a [`TrainConfig`] or a [`ConfigError`] naming
//! the flag and what was expected.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which network to train (`--model`, spelled as the reference spells it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
pub enum ModelKind {
    /// LeNet-5 style CNN: conv 1→6 k5, pool, conv 6→16 k5, pool, fc 256→120→84→10.
    #[value(name = "LeNet")]
    LeNet,
    /// Multi-layer perceptron 784→500→250→10.
    #[value(name = "MLP")]
    Mlp,
    /// The DDP example's CNN: conv 1→32 k3, BatchNorm, relu, conv 32→64 k3, BatchNorm, relu,
    /// pool, dropout 0.25, fc 9216→128, relu, dropout 0.5, fc 128→10, log_softmax.
    #[value(name = "Net")]
    Net,
}

impl ModelKind {
    /// Every network, in `--model`'s order.
    pub const ALL: [ModelKind; 3] = [ModelKind::LeNet, ModelKind::Mlp, ModelKind::Net];

    /// The name the reference uses on its command line (`LeNet`, `MLP`); the same as the
    /// `--model` value (tested).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::LeNet => "LeNet",
            ModelKind::Mlp => "MLP",
            ModelKind::Net => "Net",
        }
    }

    /// Whether the network has BatchNorm layers (running statistics, `--sync-bn`).
    pub fn has_batch_norm(self) -> bool {
        self == ModelKind::Net
    }
}

/// Where tensors live (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
pub enum DeviceKind {
    /// CUDA when a GPU is usable, else the CPU.
    Auto,
    /// Always the CPU.
    Cpu,
    /// A CUDA GPU; an error when none is usable.
    Cuda,
}

/// Which communication backend reduces gradients (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
pub enum BackendKind {
    /// NCCL on CUDA devices, the CPU backend otherwise.
    Auto,
    /// NCCL (CUDA only).
    Nccl,
    /// The CPU backend (shared memory on one machine, TCP between machines).
    Cpu,
}

/// Gradient compression applied before the all-reduce (`--compression`; names follow
/// PyTorch's DDP hooks, top-k is ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
pub enum CompressionKind {
    /// Plain f32 all-reduce.
    None,
    /// Divide by world size, all-reduce in fp16.
    Fp16,
    /// Divide by world size, all-reduce in bf16.
    Bf16,
    /// Top-k by magnitude with error feedback, exchanged by all-gather.
    #[value(name = "topk")]
    TopK,
    /// PowerSGD low-rank compression.
    #[value(name = "powersgd")]
    PowerSgd,
    /// PowerSGD communicating in fp16.
    #[value(name = "powersgd_fp16")]
    PowerSgdFp16,
    /// PowerSGD on whole flattened buckets.
    #[value(name = "batched_powersgd")]
    BatchedPowerSgd,
    /// Batched PowerSGD communicating in fp16.
    #[value(name = "batched_powersgd_fp16")]
    BatchedPowerSgdFp16,
}

impl CompressionKind {
    /// The `--compression` value (`none`, `fp16`, `powersgd_fp16`, …; tested against clap's).
    pub fn name(self) -> &'static str {
        match self {
            CompressionKind::None => "none",
            CompressionKind::Fp16 => "fp16",
            CompressionKind::Bf16 => "bf16",
            CompressionKind::TopK => "topk",
            CompressionKind::PowerSgd => "powersgd",
            CompressionKind::PowerSgdFp16 => "powersgd_fp16",
            CompressionKind::BatchedPowerSgd => "batched_powersgd",
            CompressionKind::BatchedPowerSgdFp16 => "batched_powersgd_fp16",
        }
    }
}

/// When to draw a progress bar (`--progress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
pub enum ProgressMode {
    /// When stdout is a terminal.
    Auto,
    /// Always (also into a pipe, drawn with ANSI sequences).
    Always,
    /// Never.
    Never,
}

/// A flag value that cannot be used, with the flag's name and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("invalid value {value} for {flag}: expected {expected}")]
pub struct ConfigError {
    /// The flag, e.g. `--epochs`.
    pub flag: &'static str,
    /// The value given, as text.
    pub value: String,
    /// What would have been accepted.
    pub expected: &'static str,
}

/// Everything a worker needs to train or evaluate, validated.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Network to train or evaluate.
    pub model: ModelKind,
    /// Per-process training batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    pub test_batch_size: usize,
    /// Number of epochs (the cosine schedule's period).
    pub epochs: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay added to gradients.
    pub weight_decay: f64,
    /// Log training progress every this many batches.
    pub log_interval: usize,
    /// Seed for initialisation and shuffling.
    pub seed: u64,
    /// Output folder for the log, metrics and checkpoints.
    pub path: PathBuf,
    /// Folder holding the MNIST IDX files.
    pub data: PathBuf,
    /// Fetch missing data files from the mirrors.
    pub download: bool,
    /// Base URLs to download from, tried in order.
    pub mirrors: Vec<String>,
    /// Evaluate this model file instead of training.
    pub evaluate: Option<PathBuf>,
    /// Continue from `<path>/checkpoint.bin`.
    pub resume: bool,
    /// Device selection.
    pub device: DeviceKind,
    /// GPU index for rank 0 (the reference's `--gpu`); later ranks use the following indices.
    pub gpu: Option<usize>,
    /// Communication backend.
    pub backend: BackendKind,
    /// Gradient bucket size in MiB.
    pub bucket_cap_mb: f64,
    /// Gradient compression.
    pub compression: CompressionKind,
    /// Fraction of each bucket sent by top-k.
    pub topk_ratio: f64,
    /// PowerSGD matrix rank.
    pub powersgd_rank: usize,
    /// Steps of plain all-reduce before PowerSGD starts.
    pub powersgd_start_iter: usize,
    /// Compare parameter checksums across ranks every N steps (0: never).
    pub check_sync: usize,
    /// Also write the resumable checkpoint every this many optimizer steps inside an epoch
    /// (0: only after each epoch).
    pub checkpoint_every: usize,
    /// Seconds a collective may wait for a peer.
    pub timeout_s: f64,
    /// Intra-op threads (None: cores / local world size, or OMP_NUM_THREADS).
    pub threads: Option<usize>,
    /// Threads each training batch is split across (None: see [`TrainConfig::batch_parts`]).
    pub batch_threads: Option<usize>,
    /// When to show a progress bar.
    pub progress: ProgressMode,
    /// Stop after this many epochs of the schedule (simulates an interrupted run; tests).
    pub stop_after: Option<usize>,
    /// `--sync-bn` (`Some(true)`) or `--no-sync-bn` (`Some(false)`); None: the default, on
    /// with more than one process (see [`TrainConfig::sync_bn_for`]).
    pub sync_bn: Option<bool>,
    /// Folder for TensorBoard event files (`--tensorboard`); None: none written.
    pub tensorboard: Option<PathBuf>,
    /// Global steps whose timeline is recorded into `trace.json` (`--profile-steps`).
    pub profile_steps: Option<StepRange>,
}

/// A range of global optimizer steps, `start` (0-based) up to `end` (exclusive): `--profile-steps A:B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRange {
    /// First step in the range.
    pub start: u64,
    /// First step after it.
    pub end: u64,
}

impl StepRange {
    /// Parse `A:B` (whole numbers, A < B) for `--profile-steps`.
    pub fn parse(s: &str) -> Result<StepRange, ConfigError> {
        let bad = || ConfigError {
            flag: "--profile-steps",
            value: s.to_string(),
            expected: "A:B, global steps A (0-based) up to B (exclusive), whole numbers with A < B",
        };
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let (start, end) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if start >= end {
            return Err(bad());
        }
        Ok(StepRange { start, end })
    }

    /// Whether global step `step` is in the range.
    pub fn contains(&self, step: u64) -> bool {
        (self.start..self.end).contains(&step)
    }
}

impl TrainConfig {
    /// Parts each training batch is split into on a CPU with `threads` threads per process:
    /// `--batch-threads`, else `threads`, as long as each part keeps at least 16 images.
    /// A network with BatchNorm is never split: its batch statistics need the whole batch.
    pub fn batch_parts(&self, threads: usize) -> usize {
        if self.model.has_batch_norm() {
            return 1;
        }
        self.batch_threads
            .unwrap_or_else(|| threads.min(self.batch_size / 16))
            .max(1)
    }

    /// Whether BatchNorm statistics are synchronised across `world` processes: `--sync-bn` /
    /// `--no-sync-bn`, by default on with more than one process (as the DDP example converts
    /// to `SyncBatchNorm` unconditionally); never for one process or a model without BatchNorm.
    pub fn sync_bn_for(&self, world: usize) -> bool {
        self.model.has_batch_norm() && world > 1 && self.sync_bn.unwrap_or(true)
    }

    /// Check ranges that clap's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(flag: &'static str, value: impl ToString, expected: &'static str) -> ConfigError {
            ConfigError {
                flag,
                value: value.to_string(),
                expected,
            }
        }
        if self.evaluate.is_none() && self.epochs == 0 {
            return Err(bad("--epochs", self.epochs, "an integer ≥ 1"));
        }
        if self.batch_size == 0 {
            return Err(bad("--batch-size", self.batch_size, "an integer ≥ 1"));
        }
        if self.test_batch_size == 0 {
            return Err(bad(
                "--test-batch-size",
                self.test_batch_size,
                "an integer ≥ 1",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad("--lr", self.lr, "a positive number"));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(bad("--momentum", self.momentum, "a number in [0, 1)"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad("--weight-decay", self.weight_decay, "a number ≥ 0"));
        }
        if self.log_interval == 0 {
            return Err(bad("--log-interval", self.log_interval, "an integer ≥ 1"));
        }
        if !(self.bucket_cap_mb.is_finite() && self.bucket_cap_mb > 0.0) {
            return Err(bad(
                "--bucket-cap-mb",
                self.bucket_cap_mb,
                "a positive number",
            ));
        }
        if !(self.topk_ratio > 0.0 && self.topk_ratio <= 1.0) {
            return Err(bad("--topk-ratio", self.topk_ratio, "a number in (0, 1]"));
        }
        if self.powersgd_rank == 0 {
            return Err(bad("--powersgd-rank", self.powersgd_rank, "an integer ≥ 1"));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return Err(bad(
                "--timeout",
                self.timeout_s,
                "a positive number of seconds",
            ));
        }
        if self.threads == Some(0) {
            return Err(bad("--threads", 0, "an integer ≥ 1"));
        }
        if self.batch_threads == Some(0) {
            return Err(bad("--batch-threads", 0, "an integer ≥ 1"));
        }
        if let (Some(n), true) = (self.batch_threads, self.model.has_batch_norm()) {
            if n > 1 {
                return Err(bad(
                    "--batch-threads",
                    n,
                    "1 with --model Net (BatchNorm needs each batch whole; leave it out)",
                ));
            }
        }
        if let (Some(on), false) = (self.sync_bn, self.model.has_batch_norm()) {
            return Err(bad(
                if on { "--sync-bn" } else { "--no-sync-bn" },
                self.model.name(),
                "--model Net (only Net has BatchNorm layers)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clap_name<T: ValueEnum>(v: &T) -> String {
        v.to_possible_value().unwrap().get_name().to_string()
    }

    #[test]
    fn names_are_the_command_line_values() {
        for m in ModelKind::value_variants() {
            assert_eq!(m.name(), clap_name(m));
        }
        assert_eq!(ModelKind::value_variants(), ModelKind::ALL);
        for c in CompressionKind::value_variants() {
            assert_eq!(c.name(), clap_name(c));
        }
    }
}
