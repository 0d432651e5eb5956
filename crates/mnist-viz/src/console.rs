//! The start of a run as people read it: a few lines saying what trains where (instead of the
//! whole configuration as one JSON line), and the whole configuration written to
//! `<path>/config.json` for tools and for later reference.

use crate::VizError;
use mnist_common::{CompressionKind, TrainConfig};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The file, inside `--path`, holding the run's full configuration.
pub const CONFIG_FILE: &str = mnist_common::contract::CONFIG_FILE;

/// What rank 0 knows about the run once its process group is up.
#[derive(Clone, Debug, Serialize)]
pub struct RunFacts {
    /// Number of processes.
    pub world_size: usize,
    /// Rank 0's device, as people write it ("CPU", "GPU 0").
    pub device: String,
    /// Intra-op threads per process.
    pub threads: usize,
    /// How gradients travel ("NCCL", "CPU (shared memory / TCP)", "none (single process)").
    pub backend: String,
    /// The job's id (`MNIST_RUN_ID`), when the launcher gave one.
    pub run_id: Option<String>,
    /// The launcher's restart round (0: the first attempt).
    pub restart_round: u32,
}

/// `n` and the noun, singular or plural.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The compression method with the parameters that matter for it.
fn compression(cfg: &TrainConfig) -> String {
    let name = cfg.compression.name();
    match cfg.compression {
        CompressionKind::TopK => format!("{name} (ratio {})", cfg.topk_ratio),
        CompressionKind::None | CompressionKind::Fp16 | CompressionKind::Bf16 => name.into(),
        _ => format!(
            "{name} (rank {}, from step {})",
            cfg.powersgd_rank, cfg.powersgd_start_iter
        ),
    }
}

/// The start-up lines rank 0 prints: model and world, gradients, schedule, folders.
pub fn startup_lines(cfg: &TrainConfig, facts: &RunFacts) -> Vec<String> {
    let world = facts.world_size;
    let mut lines = vec![format!(
        "Run: {} on {}, {} with {} each",
        cfg.model.name(),
        facts.device,
        count(world, "process", "processes"),
        count(facts.threads, "thread", "threads"),
    )];
    if cfg.evaluate.is_none() {
        lines.push(format!(
            "Gradients: {}, compression {}; {} of {} images per process ({} per step), lr {} (cosine), momentum {}, seed {}",
            facts.backend,
            compression(cfg),
            count(cfg.epochs, "epoch", "epochs"),
            cfg.batch_size,
            cfg.batch_size * world,
            cfg.lr,
            cfg.momentum,
            cfg.seed,
        ));
    }
    lines.push(format!(
        "Folders: data {}, output {} (full configuration in {})",
        cfg.data.display(),
        cfg.path.display(),
        CONFIG_FILE
    ));
    lines
}

/// What `config.json` holds: the validated configuration and the facts of the run.
#[derive(Serialize)]
struct ConfigFile<'a> {
    config: &'a TrainConfig,
    run: &'a RunFacts,
}

/// Write `<cfg.path>/config.json` atomically (readers see the old file or the whole new one)
/// and return its path.
pub fn write_config(cfg: &TrainConfig, facts: &RunFacts) -> Result<PathBuf, VizError> {
    let file = cfg.path.join(CONFIG_FILE);
    write_json(
        &file,
        &ConfigFile {
            config: cfg,
            run: facts,
        },
    )?;
    Ok(file)
}

fn write_json(file: &Path, value: &impl Serialize) -> Result<(), VizError> {
    mnist_common::atomic_file::write_atomic(file, |f| {
        use std::io::Write;
        serde_json::to_writer_pretty(&mut *f, value).map_err(std::io::Error::other)?;
        writeln!(f)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        train: mnist_common::cli::TrainArgs,
    }

    fn config(args: &[&str]) -> TrainConfig {
        let argv = std::iter::once("t").chain(args.iter().copied());
        Args::parse_from(argv).train.resolve().unwrap()
    }

    fn facts() -> RunFacts {
        RunFacts {
            world_size: 2,
            device: "CPU".into(),
            threads: 1,
            backend: "CPU (shared memory / TCP)".into(),
            run_id: Some("job7".into()),
            restart_round: 0,
        }
    }

    #[test]
    fn startup_is_a_few_short_readable_lines() {
        let cfg = config(&[
            "--compression",
            "topk",
            "--topk-ratio",
            "0.05",
            "--path",
            "out/x",
            "--epochs",
            "3",
        ]);
        let lines = startup_lines(&cfg, &facts());
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines.iter().all(|l| l.len() < 200), "{lines:#?}");
        assert_eq!(
            lines[0],
            "Run: LeNet on CPU, 2 processes with 1 thread each"
        );
        assert!(
            lines[1].starts_with(
                "Gradients: CPU (shared memory / TCP), compression topk (ratio 0.05); 3 epochs of 64 images per process (128 per step)"
            ),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("output out/x (full configuration in config.json)"));
        let eval = config(&["--evaluate", "m.pt"]);
        assert_eq!(startup_lines(&eval, &facts()).len(), 2);
    }

    #[test]
    fn config_json_holds_the_whole_configuration_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().display().to_string();
        let cfg = config(&["--path", &out, "--lr", "0.125", "--compression", "fp16"]);
        std::fs::write(dir.path().join(CONFIG_FILE), "old, not JSON").unwrap();
        let file = write_config(&cfg, &facts()).unwrap();
        assert_eq!(file, dir.path().join(CONFIG_FILE));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(v["config"]["lr"], 0.125);
        assert_eq!(v["config"]["compression"], "Fp16");
        assert_eq!(v["config"]["path"], out.as_str());
        assert_eq!(v["run"]["world_size"], 2);
        assert_eq!(v["run"]["run_id"], "job7");
        // Every field of the configuration is there (it round-trips).
        let back: TrainConfig = serde_json::from_value(v["config"].clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&cfg).unwrap()
        );
        // Nothing but the file itself is left in the folder (no temporary file).
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CONFIG_FILE]);
    }

    #[test]
    fn a_folder_that_cannot_be_written_is_an_error_naming_it() {
        let cfg = config(&["--path", "/nonexistent/run"]);
        let e = write_config(&cfg, &facts()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/run"), "{e}");
    }
}
