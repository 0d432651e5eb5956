//! Command-line flags shared by `mnist-launch` and `mnist-worker` (the reference's flags and
//! ours). The launcher forwards the ones given to it to each worker unchanged, see
//! [`forwarded_args`].

use crate::config::{
    BackendKind, CompressionKind, ConfigError, DeviceKind, ModelKind, ProgressMode, StepRange,
    TrainConfig,
};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command};
use std::ffi::OsString;
use std::path::PathBuf;

/// Default download mirrors for MNIST, tried in order.
pub const DEFAULT_MIRRORS: &[&str] = &[
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];

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
    /// Model to train: LeNet, MLP, or Net (the DDP example's CNN with BatchNorm and dropout).
    #[arg(long, value_enum, default_value = "LeNet", ignore_case = true)]
    pub model: ModelKind,
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
    pub device: DeviceKind,
    /// Communication backend: auto (NCCL on GPUs), nccl, or cpu.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// Gradient bucket size in MiB.
    #[arg(long, default_value_t = 25.0)]
    pub bucket_cap_mb: f64,
    /// Gradient compression.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionKind,
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
    /// Also write the resumable checkpoint (rank 0, atomically) every STEPS optimizer steps
    /// inside an epoch, so a failure loses at most that many steps (0: only after each epoch).
    #[arg(long, value_name = "STEPS", default_value_t = 0)]
    pub checkpoint_every: usize,
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
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Stop once this many epochs of the schedule are done, as if interrupted (for testing
    /// --resume).
    #[arg(long, hide = true)]
    pub stop_after_epochs: Option<usize>,
    /// Synchronise BatchNorm batch statistics across all processes, like nn.SyncBatchNorm
    /// (--model Net only; the default with more than one process).
    #[arg(long, overrides_with = "no_sync_bn")]
    pub sync_bn: bool,
    /// Normalise each process's batch with its own statistics; rank 0's running statistics
    /// are broadcast every step, as DDP's broadcast_buffers does (--model Net only).
    #[arg(long, overrides_with = "sync_bn")]
    pub no_sync_bn: bool,
    /// Write TensorBoard event files into DIR (default: <path>/tb; rank 0): per-step train
    /// loss and learning rate, per-epoch test loss/top-1/top-5, images/s, gradient bytes/step.
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub tensorboard: Option<Option<PathBuf>>,
    /// Record a timeline of global steps A to B-1 (0-based) on every rank into
    /// <path>/trace.json (Chrome trace format: Perfetto, chrome://tracing).
    #[arg(long, value_name = "A:B")]
    pub profile_steps: Option<String>,
}

impl TrainArgs {
    /// Validate the flags into the plain configuration the training code takes.
    pub fn resolve(&self) -> Result<TrainConfig, ConfigError> {
        let cfg = TrainConfig {
            model: self.model,
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
            device: self.device,
            gpu: self.gpu,
            backend: self.backend,
            bucket_cap_mb: self.bucket_cap_mb,
            compression: self.compression,
            topk_ratio: self.topk_ratio,
            powersgd_rank: self.powersgd_rank,
            powersgd_start_iter: self.powersgd_start_iter,
            check_sync: self.check_sync,
            checkpoint_every: self.checkpoint_every,
            timeout_s: self.timeout,
            threads: self.threads,
            batch_threads: self.batch_threads,
            progress: self.progress,
            stop_after: self.stop_after_epochs,
            sync_bn: match (self.sync_bn, self.no_sync_bn) {
                (true, _) => Some(true),
                (false, true) => Some(false),
                (false, false) => None,
            },
            tensorboard: self
                .tensorboard
                .as_ref()
                .map(|dir| dir.clone().unwrap_or_else(|| self.path.join("tb"))),
            profile_steps: self
                .profile_steps
                .as_deref()
                .map(StepRange::parse)
                .transpose()?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The training flags set on the command line (or from the environment) in `matches` — which
/// must come from a command that flattens [`TrainArgs`] — as arguments for a worker, in the
/// order clap defines them. Derived from clap's own definition of [`TrainArgs`], so a new flag
/// is forwarded without anyone listing it; flags left at their defaults are not passed (the
/// worker has the same defaults, from the same struct).
pub fn forwarded_args(matches: &ArgMatches) -> Vec<OsString> {
    let defs = TrainArgs::augment_args(Command::new("train-args"));
    let mut out = Vec::new();
    for arg in defs.get_arguments() {
        let id = arg.get_id().as_str();
        let (Some(long), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) =
            (arg.get_long(), matches.value_source(id))
        else {
            continue;
        };
        let flag = OsString::from(format!("--{long}"));
        if !arg.get_action().takes_values() {
            // A switch (`--download`, `--resume`): present means on.
            if matches.get_flag(id) {
                out.push(flag);
            }
            continue;
        }
        for occurrence in matches.get_raw_occurrences(id).into_iter().flatten() {
            out.push(flag.clone());
            out.extend(occurrence.map(OsString::from));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    /// Both binaries parse with `args_override_self` (a later flag wins).
    #[derive(Parser)]
    #[command(args_override_self = true)]
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

    /// A non-default value for each training flag that takes a free-form value. Flags with a
    /// fixed set of values get one picked automatically; a flag missing from here fails
    /// `every_flag_survives_the_trip_to_the_worker`, so no flag can skip that test.
    fn sample_value(long: &str) -> Option<&'static str> {
        Some(match long {
            "batch-size" => "32",
            "test-batch-size" => "500",
            "epochs" => "3",
            "lr" => "0.05",
            "momentum" => "0.5",
            "weight-decay" => "0.001",
            "log-interval" => "5",
            "seed" => "7",
            "path" => "/tmp/a run/out",
            "data" => "/tmp/data dir",
            "mirror" => "http://127.0.0.1:9/mnist/",
            "evaluate" => "some model.pt",
            "gpu" => "1",
            "bucket-cap-mb" => "1.5",
            "topk-ratio" => "0.1",
            "powersgd-rank" => "4",
            "powersgd-start-iter" => "10",
            "check-sync" => "2",
            "checkpoint-every" => "50",
            "timeout" => "30",
            "threads" => "3",
            "batch-threads" => "2",
            "stop-after-epochs" => "1",
            "tensorboard" => "/tmp/tb dir",
            "profile-steps" => "3:7",
            _ => return None,
        })
    }

    /// The flag with a non-default value, as arguments.
    fn flag_with_sample(arg: &clap::Arg) -> Vec<String> {
        let long = arg.get_long().expect("training flags are long flags");
        let mut v = vec![format!("--{long}")];
        if !arg.get_action().takes_values() {
            return v;
        }
        let default: Vec<_> = arg.get_default_values().iter().collect();
        let choice = arg
            .get_possible_values()
            .into_iter()
            .map(|p| p.get_name().to_string())
            .find(|p| !default.iter().any(|d| d.to_str() == Some(p)));
        match choice.or_else(|| sample_value(long).map(String::from)) {
            Some(value) => v.push(value),
            None => panic!("--{long}: add a non-default sample value to sample_value()"),
        }
        v
    }

    /// What a worker resolves from the arguments the launcher forwards for `argv`.
    fn round_trip(argv: &[String]) -> (String, String) {
        let cmd = Cli::command();
        let m = cmd
            .try_get_matches_from(std::iter::once("x".to_string()).chain(argv.iter().cloned()))
            .unwrap();
        let given = Cli::from_arg_matches(&m).unwrap().t.resolve().unwrap();
        let forwarded = forwarded_args(&m);
        let worker = Cli::try_parse_from(std::iter::once(OsString::from("x")).chain(forwarded))
            .unwrap()
            .t
            .resolve()
            .unwrap();
        (format!("{given:?}"), format!("{worker:?}"))
    }

    #[test]
    fn every_flag_survives_the_trip_to_the_worker() {
        let defaults = format!("{:?}", Cli::parse_from(["x"]).t.resolve().unwrap());
        let defs = TrainArgs::augment_args(Command::new("t"));
        let mut all = Vec::new();
        for arg in defs.get_arguments() {
            let mut argv = flag_with_sample(arg);
            // The BatchNorm switches are only valid with --model Net: tested with it, alone.
            let bn_switch = matches!(arg.get_long(), Some("sync-bn" | "no-sync-bn"));
            if bn_switch {
                argv.extend(["--model", "Net"].map(String::from));
            }
            let (given, worker) = round_trip(&argv);
            assert_ne!(given, defaults, "{argv:?} must change the configuration");
            assert_eq!(given, worker, "{argv:?} did not survive forwarding");
            if !bn_switch {
                all.extend(argv);
            }
        }
        // The later of the two BatchNorm switches wins, also after forwarding.
        for (argv, expect) in [
            (["--model", "Net", "--sync-bn", "--no-sync-bn"], Some(false)),
            (["--model", "Net", "--no-sync-bn", "--sync-bn"], Some(true)),
        ] {
            let argv = argv.map(String::from);
            let (given, worker) = round_trip(&argv);
            assert_eq!(given, worker);
            assert!(given.contains(&format!("sync_bn: {expect:?}")), "{given}");
        }
        // All at once, a repeated flag, and the reference's `--wd` alias.
        all.extend(["--mirror", "http://127.0.0.1:9/two/", "--wd", "0.002"].map(String::from));
        let (given, worker) = round_trip(&all);
        assert_eq!(given, worker);
        assert!(
            worker.contains("two/") && worker.contains("0.002"),
            "{worker}"
        );
        // `--tensorboard` without a folder: <path>/tb, also after forwarding.
        let (given, worker) = round_trip(&["--path", "/r", "--tensorboard"].map(String::from));
        assert_eq!(given, worker);
        assert!(given.contains("tensorboard: Some(\"/r/tb\")"), "{given}");
        // Nothing given, nothing forwarded.
        let m = Cli::command().get_matches_from(["x"]);
        assert!(forwarded_args(&m).is_empty());
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
            ("--profile-steps", "5"),
            ("--profile-steps", "5:5"),
            ("--profile-steps", "a:9"),
            ("--profile-steps", "9:3"),
        ] {
            let e = Cli::parse_from(["x", flag, val]).t.resolve().unwrap_err();
            assert_eq!(e.flag, flag);
        }
        // BatchNorm switches without BatchNorm, and a split batch with BatchNorm.
        for (args, flag) in [
            (&["--sync-bn"][..], "--sync-bn"),
            (&["--model", "MLP", "--no-sync-bn"][..], "--no-sync-bn"),
            (
                &["--model", "Net", "--batch-threads", "2"][..],
                "--batch-threads",
            ),
        ] {
            let e = Cli::parse_from(std::iter::once(&"x").chain(args))
                .t
                .resolve()
                .unwrap_err();
            assert_eq!(e.flag, flag);
            assert!(e.to_string().contains("Net"), "{e}");
        }
        let net = Cli::parse_from(["x", "--model", "net"])
            .t
            .resolve()
            .unwrap();
        assert_eq!(net.batch_parts(4), 1);
        assert!(net.sync_bn_for(2) && !net.sync_bn_for(1));
        let off = Cli::parse_from(["x", "--model", "Net", "--no-sync-bn"]);
        assert!(!off.t.resolve().unwrap().sync_bn_for(2));
    }
}
