//! The resumable checkpoint `<path>/checkpoint.bin`, written atomically after every epoch:
//! weights, momentum buffer, the next epoch, the best accuracy so far and the settings that
//! must not change on resume. Shuffling is a pure function of `--seed` and the epoch, so no
//! random-number state needs saving; `--resume` continues exactly where the run stopped.

use crate::TrainError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MNISTCK2";
/// Checkpoints of earlier versions (no buffers).
const OLD_MAGIC: &[u8; 8] = b"MNISTCK1";

/// File name of the resumable checkpoint inside `--path`.
pub use mnist_common::contract::CHECKPOINT_FILE as FILE_NAME;

/// Everything needed to continue training.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResumeState {
    /// Model name (`LeNet`, `MLP`).
    pub model: String,
    /// `--epochs` of the run (the cosine period).
    pub epochs: usize,
    /// `--seed` of the run.
    pub seed: u64,
    /// World size of the run (the shard layout depends on it).
    pub world_size: usize,
    /// First epoch (0-based) still to train.
    pub next_epoch: usize,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Best test accuracy so far, percent (negative before any evaluation).
    pub best_acc: f64,
    /// Flat parameters.
    pub params: Vec<f32>,
    /// Flat momentum buffer (None before the first step).
    pub momentum: Option<Vec<f32>>,
    /// The model's buffers (Net's BatchNorm running statistics and counters), concatenated
    /// in `state_dict` order; empty for LeNet and MLP.
    pub buffers: Vec<f32>,
}

/// Path of the checkpoint for output folder `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Write `state` atomically to `path`.
pub fn save(path: &Path, state: &ResumeState) -> Result<(), TrainError> {
    let body = bincode::serialize(state).map_err(|e| TrainError::Resume {
        file: path.into(),
        detail: e.to_string(),
    })?;
    mnist_checkpoint::atomic_write(path, |f| {
        use std::io::Write;
        f.write_all(MAGIC)?;
        f.write_all(&body)
    })?;
    Ok(())
}

/// Read a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<ResumeState, TrainError> {
    let err = |detail: String| TrainError::Resume {
        file: path.into(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        err(format!(
            "cannot read it: {e} (was the run started with this --path?)"
        ))
    })?;
    if bytes.starts_with(OLD_MAGIC) {
        return Err(err(
            "it was written by an earlier version of mnist-ddp; start again without --resume"
                .into(),
        ));
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(err("not a resumable checkpoint of mnist-ddp".into()));
    }
    bincode::deserialize(&bytes[MAGIC.len()..]).map_err(|e| err(format!("corrupt checkpoint: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage_is_rejected() {
        let dir = std::env::temp_dir().join(format!("resume-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = path_in(&dir);
        let s = ResumeState {
            model: "LeNet".into(),
            epochs: 3,
            seed: 1,
            world_size: 1,
            next_epoch: 2,
            step: 10,
            best_acc: 97.5,
            params: vec![1.0, 2.0],
            momentum: Some(vec![0.5, 0.25]),
            buffers: vec![0.0, 1.0, 3.0],
        };
        save(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap(), s);
        std::fs::write(&p, b"hello").unwrap();
        assert!(load(&p)
            .unwrap_err()
            .to_string()
            .contains("not a resumable checkpoint"));
        std::fs::write(&p, b"MNISTCK2\x01").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("corrupt"));
        std::fs::write(&p, b"MNISTCK1\x01").unwrap();
        assert!(load(&p)
            .unwrap_err()
            .to_string()
            .contains("earlier version"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
