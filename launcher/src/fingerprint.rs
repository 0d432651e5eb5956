//! What must agree between the nodes of one job, as (what, value) pairs named the way the user
//! wrote them (`--compression`, `fp16`), so a mismatch reads "node 1: --compression fp16,
//! node 0: none". Per-node settings (`--nproc`, `--path`, `--threads`, `--gpus`) are left out.

use crate::args::ArgsError;
use mnist_common::{CompressionKind, TrainConfig};
use mnist_rdzv::Fingerprint;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// The fingerprint of a node training with `cfg` (`_nproc` processes: may differ per node).
pub fn of(cfg: &TrainConfig, _nproc: usize) -> Result<Fingerprint, ArgsError> {
    let mut v: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, val: String| v.push((k.to_string(), val));
    put(
        "mnist-ddp version",
        format!(
            "{} (rendezvous protocol {})",
            env!("CARGO_PKG_VERSION"),
            mnist_rdzv::wire::PROTOCOL_VERSION
        ),
    );
    put("--model", cfg.model.name().into());
    put("--batch-size", cfg.batch_size.to_string());
    put("--test-batch-size", cfg.test_batch_size.to_string());
    put("--epochs", cfg.epochs.to_string());
    put("--lr", cfg.lr.to_string());
    put("--momentum", cfg.momentum.to_string());
    put("--weight-decay", cfg.weight_decay.to_string());
    put("--seed", cfg.seed.to_string());
    put("--resume", cfg.resume.to_string());
    put("--backend", format!("{:?}", cfg.backend).to_lowercase());
    put("--bucket-cap-mb", cfg.bucket_cap_mb.to_string());
    put("--compression", cfg.compression.name().into());
    match cfg.compression {
        CompressionKind::TopK => put("--topk-ratio", cfg.topk_ratio.to_string()),
        CompressionKind::PowerSgd
        | CompressionKind::PowerSgdFp16
        | CompressionKind::BatchedPowerSgd
        | CompressionKind::BatchedPowerSgdFp16 => {
            put("--powersgd-rank", cfg.powersgd_rank.to_string());
            put("--powersgd-start-iter", cfg.powersgd_start_iter.to_string());
        }
        _ => {}
    }
    put("--check-sync", cfg.check_sync.to_string());
    put("--checkpoint-every", cfg.checkpoint_every.to_string());
    put(
        "--stop-after-epochs",
        cfg.stop_after.map_or("-".into(), |n| n.to_string()),
    );
    if !cfg.download {
        // With --download, missing files are fetched and checked against known SHA-256 sums.
        v.extend(data_checksums(&cfg.data)?);
    }
    Ok(Fingerprint(v))
}

/// `("--data <file>", sha256 prefix)` for each MNIST file in `dir` (`train-*`, `t10k-*`).
fn data_checksums(dir: &Path) -> Result<Vec<(String, String)>, ArgsError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        // The worker reports a missing folder itself, naming the flag.
        return Ok(vec![("--data".into(), "(no folder)".into())]);
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("train-") || n.starts_with("t10k-"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let path = dir.join(&n);
            sha256_prefix(&path)
                .map(|h| (format!("--data file {n} (SHA-256)"), h))
                .map_err(|source| ArgsError::DataFile { path, source })
        })
        .collect()
}

fn sha256_prefix(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        t: mnist_common::cli::TrainArgs,
    }

    fn fp(args: &[&str], data: &Path) -> Fingerprint {
        let d = data.display().to_string();
        let argv = ["x", "--data", d.as_str()]
            .into_iter()
            .chain(args.iter().copied());
        of(&Cli::parse_from(argv).t.resolve().unwrap(), 1).unwrap()
    }

    #[test]
    fn settings_and_data_files_are_compared_per_node_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), b"abc").unwrap();
        std::fs::write(dir.path().join("README"), b"not data").unwrap();
        let base = fp(&[], dir.path());
        assert!(fp(&["--threads", "3", "--path", "/elsewhere"], dir.path())
            .diff(&base)
            .is_empty());
        let d = fp(&["--compression", "fp16"], dir.path()).diff(&base);
        assert_eq!(
            d,
            vec![("--compression".into(), "fp16".into(), "none".into())]
        );
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), b"abd").unwrap();
        let d = fp(&[], dir.path()).diff(&base);
        assert_eq!(d.len(), 1);
        assert!(d[0].0.contains("train-images-idx3-ubyte"), "{d:?}");
    }
}
