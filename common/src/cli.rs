//! Command-line flags shared by `mnist-launch` and `mnist-worker` (the reference's flags and
//! ours). The launcher forwards them to each worker unchanged, see [`TrainArgs::to_args`].

use crate::config::{
    BackendKind, CompressionKind, ConfigError, DeviceKind, ModelKind, TrainConfig,
};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Default download mirrors for MNIST, tried in order.
pub const DEFAULT_MIRRORS: &[&str] = &[
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];

/// `--model` values, spelled as the reference spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    /// LeNet-5 style CNN.
    #[value(name = "LeNet")]
    LeNet,
    /// 784→500→250→10 perceptron.
    #[value(name = "MLP")]
    Mlp,
}

/// `--device` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when usable, else CPU.
    Auto,
    /// CPU only.
    Cpu,
    /// CUDA; fails when no GPU is usable.
    Cuda,
}

/// `--backend` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// NCCL on GPUs, the CPU backend otherwise.
    Auto,
    /// NCCL through cudarc.
    Nccl,
    /// Shared memory / TCP.
    Cpu,
}

/// `--compression` values (PyTorch DDP hook names; top-k is ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    /// No compression.
    None,
    /// fp16 all-reduce.
    Fp16,
    /// bf16 all-reduce.
    Bf16,
    /// Top-k with error feedback.
    Topk,
    /// PowerSGD.
    Powersgd,
    /// PowerSGD in fp16.
    #[value(name = "powersgd_fp16")]
    PowersgdFp16,
    /// Batched PowerSGD.
    #[value(name = "batched_powersgd")]
    BatchedPowersgd,
    /// Batched PowerSGD in fp16.
    #[value(name = "batched_powersgd_fp16")]
    BatchedPowersgdFp16,
}

/// Training and evaluation flags, identical for the launcher and the worker.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Input batch size for training, per process.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Input batch size for testing.
    #[arg(long, default_value_t = 1000)]
    pub test_batch_size: usize,
    /// Number of epochs to train (also the cosine schedule's period).
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub momentum: f64,
    /// Weight decay (L2 penalty).
    #[arg(
        long = "weight-decay",
        visible_alias = "wd",
        default_value_t = 5e-4,
        allow_negative_numbers = true
    )]
    pub weight_decay: f64,
    /// How many batches to wait before logging training status.
    #[arg(long, default_value_t = 10)]
    pub log_interval: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Model to train: LeNet or MLP.
    #[arg(long, value_enum, default_value = "LeNet", ignore_case = true)]
    pub model: ModelArg,
    /// Folder for mnist_train.log, metrics.jsonl and mnist_model.pt.
    #[arg(long, default_value = "./logging/")]
    pub path: PathBuf,
    /// Folder holding the four MNIST IDX files (gzipped or raw).
    #[arg(long, default_value = "./data/mnist")]
    pub data: PathBuf,
    /// Download missing MNIST files into --data (SHA-256 checked).
    #[arg(long)]
    pub download: bool,
    /// Base URL to download from (repeatable; default: the usual public mirrors).
    #[arg(long = "mirror")]
    pub mirrors: Vec<String>,
    /// Evaluate this saved model (ours, a PyTorch state_dict, or .safetensors) instead of training.
    #[arg(long)]
    pub evaluate: Option<PathBuf>,
    /// Continue training from <path>/checkpoint.bin.
    #[arg(long)]
    pub resume: bool,
    /// GPU index to use (the reference's flag); with several processes, rank r uses GPU gpu+r.
    #[arg(long)]
    pub gpu: Option<usize>,
    /// Device: auto (CUDA when usable), cpu, or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Communication backend: auto (NCCL on GPUs), nccl, or cpu.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// Gradient bucket size in MiB.
    #[arg(long, default_value_t = 25.0)]
    pub bucket_cap_mb: f64,
    /// Gradient compression.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    /// Fraction of entries top-k sends per bucket.
    #[arg(long, default_value_t = 0.01)]
    pub topk_ratio: f64,
    /// PowerSGD matrix approximation rank.
    #[arg(long, default_value_t = 2)]
    pub powersgd_rank: usize,
    /// Steps of plain all-reduce before PowerSGD starts.
    #[arg(long, default_value_t = 1000)]
    pub powersgd_start_iter: usize,
    /// Compare parameter checksums across ranks every N steps (0: never).
    #[arg(long, default_value_t = 0)]
    pub check_sync: usize,
    /// Seconds a collective waits for an unresponsive peer before failing.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Intra-op threads per process (default: OMP_NUM_THREADS, else cores / processes).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Split each training batch across N threads of each process, each with its own model
    /// replica and gradient buffer, their gradients summed before the step (CPU only; default:
    /// --threads, keeping at least 16 images per part; 1 on CUDA).
    #[arg(long, value_name = "N")]
    pub batch_threads: Option<usize>,
    /// Progress bar: always, never, or (default) when stdout is a terminal.
    #[arg(long, value_parser = ["always", "never", "auto"], default_value = "auto")]
    pub progress: String,
    /// Stop once this many epochs of the schedule are done, as if interrupted (for testing
    /// --resume).
    #[arg(long, hide = true)]
    pub stop_after_epochs: Option<usize>,
}

impl TrainArgs {
    /// Validate the flags into the plain configuration the training code takes.
    pub fn resolve(&self) -> Result<TrainConfig, ConfigError> {
        let cfg = TrainConfig {
            model: match self.model {
                ModelArg::LeNet => ModelKind::LeNet,
                ModelArg::Mlp => ModelKind::Mlp,
            },
            batch_size: self.batch_size,
            test_batch_size: self.test_batch_size,
            epochs: self.epochs,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            log_interval: self.log_interval,
            seed: self.seed,
            path: self.path.clone(),
            data: self.data.clone(),
            download: self.download,
            mirrors: if self.mirrors.is_empty() {
                DEFAULT_MIRRORS.iter().map(|s| s.to_string()).collect()
            } else {
                self.mirrors.clone()
            },
            evaluate: self.evaluate.clone(),
            resume: self.resume,
            device: match self.device {
                DeviceArg::Auto => DeviceKind::Auto,
                DeviceArg::Cpu => DeviceKind::Cpu,
                DeviceArg::Cuda => DeviceKind::Cuda,
            },
            gpu: self.gpu,
            backend: match self.backend {
                BackendArg::Auto => BackendKind::Auto,
                BackendArg::Nccl => BackendKind::Nccl,
                BackendArg::Cpu => BackendKind::Cpu,
            },
            bucket_cap_mb: self.bucket_cap_mb,
            compression: match self.compression {
                CompressionArg::None => CompressionKind::None,
                CompressionArg::Fp16 => CompressionKind::Fp16,
                CompressionArg::Bf16 => CompressionKind::Bf16,
                CompressionArg::Topk => CompressionKind::TopK,
                CompressionArg::Powersgd => CompressionKind::PowerSgd,
                CompressionArg::PowersgdFp16 => CompressionKind::PowerSgdFp16,
                CompressionArg::BatchedPowersgd => CompressionKind::BatchedPowerSgd,
                CompressionArg::BatchedPowersgdFp16 => CompressionKind::BatchedPowerSgdFp16,
            },
            topk_ratio: self.topk_ratio,
            powersgd_rank: self.powersgd_rank,
            powersgd_start_iter: self.powersgd_start_iter,
            check_sync: self.check_sync,
            timeout_s: self.timeout,
            threads: self.threads,
            batch_threads: self.batch_threads,
            progress: match self.progress.as_str() {
                "always" => Some(true),
                "never" => Some(false),
                _ => None,
            },
            stop_after: self.stop_after_epochs,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The flags as command-line arguments, for forwarding to a worker.
    pub fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut kv = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        kv("--batch-size", self.batch_size.to_string());
        kv("--test-batch-size", self.test_batch_size.to_string());
        kv("--epochs", self.epochs.to_string());
        kv("--lr", self.lr.to_string());
        kv("--momentum", self.momentum.to_string());
        kv("--weight-decay", self.weight_decay.to_string());
        kv("--log-interval", self.log_interval.to_string());
        kv("--seed", self.seed.to_string());
        kv(
            "--model",
            self.model
                .to_possible_value()
                .unwrap()
                .get_name()
                .to_string(),
        );
        kv("--path", self.path.display().to_string());
        kv("--data", self.data.display().to_string());
        for m in &self.mirrors {
            kv("--mirror", m.clone());
        }
        if let Some(e) = &self.evaluate {
            kv("--evaluate", e.display().to_string());
        }
        if let Some(g) = self.gpu {
            kv("--gpu", g.to_string());
        }
        kv(
            "--device",
            self.device
                .to_possible_value()
                .unwrap()
                .get_name()
                .to_string(),
        );
        kv(
            "--backend",
            self.backend
                .to_possible_value()
                .unwrap()
                .get_name()
                .to_string(),
        );
        kv("--bucket-cap-mb", self.bucket_cap_mb.to_string());
        kv(
            "--compression",
            self.compression
                .to_possible_value()
                .unwrap()
                .get_name()
                .to_string(),
        );
        kv("--topk-ratio", self.topk_ratio.to_string());
        kv("--powersgd-rank", self.powersgd_rank.to_string());
        kv(
            "--powersgd-start-iter",
            self.powersgd_start_iter.to_string(),
        );
        kv("--check-sync", self.check_sync.to_string());
        kv("--timeout", self.timeout.to_string());
        if let Some(t) = self.threads {
            kv("--threads", t.to_string());
        }
        if let Some(t) = self.batch_threads {
            kv("--batch-threads", t.to_string());
        }
        kv("--progress", self.progress.clone());
        if let Some(n) = self.stop_after_epochs {
            kv("--stop-after-epochs", n.to_string());
        }
        if self.download {
            a.push("--download".into());
        }
        if self.resume {
            a.push("--resume".into());
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        t: TrainArgs,
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = Cli::parse_from(["x"]).t.resolve().unwrap();
        assert_eq!(
            (
                c.batch_size,
                c.test_batch_size,
                c.epochs,
                c.log_interval,
                c.seed
            ),
            (64, 1000, 20, 10, 1)
        );
        assert_eq!((c.lr, c.momentum, c.weight_decay), (0.01, 0.9, 5e-4));
        assert_eq!(c.model, ModelKind::LeNet);
    }

    #[test]
    fn forwarded_args_parse_back_to_the_same_config() {
        let a = Cli::parse_from([
            "x",
            "--model",
            "mlp",
            "--wd",
            "0.001",
            "--epochs",
            "3",
            "--resume",
            "--compression",
            "powersgd_fp16",
            "--batch-threads",
            "3",
        ])
        .t;
        let b = Cli::parse_from(std::iter::once("x".to_string()).chain(a.to_args())).t;
        assert_eq!(
            format!("{:?}", a.resolve().unwrap()),
            format!("{:?}", b.resolve().unwrap())
        );
    }

    #[test]
    fn batch_parts_follow_threads_and_batch_size() {
        let parts = |args: &[&str], threads| {
            let c = Cli::parse_from(std::iter::once(&"x").chain(args)).t;
            c.resolve().unwrap().batch_parts(threads)
        };
        assert_eq!(parts(&[], 1), 1);
        assert_eq!(parts(&[], 2), 2);
        assert_eq!(parts(&[], 8), 4); // batch 64: at least 16 images per part
        assert_eq!(parts(&["--batch-size", "8"], 4), 1);
        assert_eq!(parts(&["--batch-threads", "3"], 2), 3);
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (flag, val) in [
            ("--epochs", "0"),
            ("--batch-size", "0"),
            ("--lr", "-0.1"),
            ("--batch-threads", "0"),
        ] {
            let e = Cli::parse_from(["x", flag, val]).t.resolve().unwrap_err();
            assert_eq!(e.flag, flag);
        }
    }
}
