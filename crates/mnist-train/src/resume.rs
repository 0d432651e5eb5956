//! The resumable checkpoint `<path>/checkpoint.bin`, written atomically by rank 0 after every
//! epoch and, with `--checkpoint-every STEPS`, every that many steps inside an epoch: weights,
//! momentum buffer, the epoch and the position inside its sample order, the epoch's figures
//! so far, the best accuracy and the settings that must not change on resume. Shuffling is a
//! pure function of `--seed` and the epoch, so no random-number state needs saving; `--resume`
//! continues exactly where the checkpoint was written (bit for bit on the CPU backend).
//!
//! Format: 8 magic bytes, then a bincode record. `MNISTCK3` is [`ResumeState`]; `MNISTCK2`
//! (before elastic world sizes: no `epoch_offset`) and `MNISTCK1` (before mid-epoch
//! checkpoints: at an epoch boundary) are still read.
//!
//! Only rank 0's machine holds the file: [`load_shared`] has rank 0 read it and broadcast it,
//! so every rank of a job spanning several machines resumes from the same state.

use crate::TrainError;
use mnist_common::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MNISTCK3";
const MAGIC_V2: &[u8; 8] = b"MNISTCK2";
const MAGIC_V1: &[u8; 8] = b"MNISTCK1";

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
    /// World size of the run (the shard layout of `batches_done` depends on it).
    pub world_size: usize,
    /// `--batch-size` of the run (a position inside an epoch counts its batches; None in a
    /// checkpoint of the first format).
    pub batch_size: Option<usize>,
    /// First epoch (0-based) still to train (or to finish, see `batches_done`).
    pub next_epoch: usize,
    /// Places of `next_epoch`'s sample order trained before the current shard layout began
    /// (0 unless the world size changed inside the epoch, `--nnodes MIN:MAX`).
    pub epoch_offset: usize,
    /// Batches of `next_epoch` already trained by every rank in the current shard layout
    /// (after `epoch_offset`; 0 at an epoch boundary).
    pub batches_done: usize,
    /// Over all ranks, the summed loss, top-1 and top-5 counts of those batches.
    pub epoch_sums: [f64; 3],
    /// Seconds spent training those batches.
    pub epoch_seconds: f64,
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

/// The record of a `MNISTCK2` file: [`ResumeState`] without `epoch_offset`.
#[derive(Deserialize)]
struct StateV2 {
    model: String,
    epochs: usize,
    seed: u64,
    world_size: usize,
    batch_size: Option<usize>,
    next_epoch: usize,
    batches_done: usize,
    epoch_sums: [f64; 3],
    epoch_seconds: f64,
    step: u64,
    best_acc: f64,
    params: Vec<f32>,
    momentum: Option<Vec<f32>>,
    buffers: Vec<f32>,
}

impl From<StateV2> for ResumeState {
    fn from(v: StateV2) -> ResumeState {
        ResumeState {
            model: v.model,
            epochs: v.epochs,
            seed: v.seed,
            world_size: v.world_size,
            batch_size: v.batch_size,
            next_epoch: v.next_epoch,
            epoch_offset: 0,
            batches_done: v.batches_done,
            epoch_sums: v.epoch_sums,
            epoch_seconds: v.epoch_seconds,
            step: v.step,
            best_acc: v.best_acc,
            params: v.params,
            momentum: v.momentum,
            buffers: v.buffers,
        }
    }
}

/// The record of a `MNISTCK1` file.
#[derive(Deserialize)]
struct StateV1 {
    model: String,
    epochs: usize,
    seed: u64,
    world_size: usize,
    next_epoch: usize,
    step: u64,
    best_acc: f64,
    params: Vec<f32>,
    momentum: Option<Vec<f32>>,
}

impl From<StateV1> for ResumeState {
    fn from(v: StateV1) -> ResumeState {
        ResumeState {
            model: v.model,
            epochs: v.epochs,
            seed: v.seed,
            world_size: v.world_size,
            batch_size: None,
            next_epoch: v.next_epoch,
            epoch_offset: 0,
            batches_done: 0,
            epoch_sums: [0.0; 3],
            epoch_seconds: 0.0,
            step: v.step,
            best_acc: v.best_acc,
            params: v.params,
            momentum: v.momentum,
            buffers: Vec::new(),
        }
    }
}

/// Path of the checkpoint for output folder `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Write `state` atomically to `path`.
pub fn save(path: &Path, state: &ResumeState) -> Result<(), TrainError> {
    save_with_hook(path, state, || {})
}

/// [`save`], calling `written` once the whole temporary file is written, before it is synced
/// and renamed onto `path` (the fault hook `crash-in-checkpoint` dies there).
pub fn save_with_hook(
    path: &Path,
    state: &ResumeState,
    written: impl FnOnce(),
) -> Result<(), TrainError> {
    let body = bincode::serialize(state).map_err(|e| TrainError::Resume {
        file: path.into(),
        detail: e.to_string(),
    })?;
    mnist_checkpoint::atomic_write(path, |f| {
        use std::io::Write;
        f.write_all(MAGIC)?;
        f.write_all(&body)?;
        f.flush()?;
        written();
        Ok(())
    })?;
    Ok(())
}

/// Remove temporary files that a writer of the checkpoint in `dir` left when it died before
/// its rename (`.checkpoint.bin.<random>.tmp`); returns how many. Errors are ignored: the
/// files are only litter.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let prefix = format!(".{FILE_NAME}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with(&prefix) && n.ends_with(".tmp")
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Read a checkpoint written by [`save`] (or by the first format).
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
    let corrupt = |e: bincode::Error| err(format!("corrupt checkpoint: {e}"));
    match bytes.split_at_checked(MAGIC.len()) {
        Some((m, body)) if m == MAGIC => bincode::deserialize(body).map_err(corrupt),
        Some((m, body)) if m == MAGIC_V2 => bincode::deserialize::<StateV2>(body)
            .map(ResumeState::from)
            .map_err(corrupt),
        Some((m, body)) if m == MAGIC_V1 => bincode::deserialize::<StateV1>(body)
            .map(ResumeState::from)
            .map_err(corrupt),
        _ => Err(err("not a resumable checkpoint of mnist-ddp".into())),
    }
}

/// Rank 0 reads the checkpoint at `path` ([`load`]) and broadcasts it; every rank returns the
/// same state, or an error (the others' names rank 0's problem).
pub fn load_shared(
    path: &Path,
    comm: &mut dyn mnist_comm::Communicator,
) -> Result<ResumeState, TrainError> {
    let rank = comm.rank();
    let own = (rank == 0).then(|| load(path));
    if comm.world_size() == 1 {
        return own.expect("rank 0 of one");
    }
    let err = |detail: String| TrainError::Resume {
        file: path.into(),
        detail,
    };
    let mut bytes = match &own {
        Some(r) => bincode::serialize(&r.as_ref().map_err(|e| e.to_string()))
            .map_err(|e| err(e.to_string()))?,
        None => Vec::new(),
    };
    let mut len = (bytes.len() as u64).to_le_bytes();
    comm.broadcast(&mut len, 0)?;
    bytes.resize(u64::from_le_bytes(len) as usize, 0);
    comm.broadcast(&mut bytes, 0)?;
    if let Some(r) = own {
        return r;
    }
    match bincode::deserialize::<Result<ResumeState, String>>(&bytes) {
        Ok(Ok(st)) => Ok(st),
        Ok(Err(why)) => Err(err(format!("rank 0 cannot resume from it: {why}"))),
        Err(e) => Err(err(format!("rank 0 sent a garbled checkpoint: {e}"))),
    }
}

/// Whether `st` (read from `file`) can be resumed with `cfg` and `world` processes; the error
/// names the setting that differs. `elastic` (`--nnodes MIN:MAX`): another world size is
/// accepted (the rest of the epoch is re-sharded).
pub fn check(
    cfg: &TrainConfig,
    world: usize,
    elastic: bool,
    st: &ResumeState,
    file: &std::path::Path,
) -> Result<(), TrainError> {
    let bad = |what: String| {
        Err(TrainError::Resume {
            file: file.into(),
            detail: what,
        })
    };
    if st.model != cfg.model.name() {
        return bad(format!(
            "it holds a {} model but --model is {}",
            st.model,
            cfg.model.name()
        ));
    }
    if st.epochs != cfg.epochs {
        return bad(format!(
            "it was made with --epochs {} but --epochs is {} (the cosine schedule would differ)",
            st.epochs, cfg.epochs
        ));
    }
    if st.seed != cfg.seed || (st.world_size != world && !elastic) {
        return bad(format!(
            "it was made with --seed {} and {} process(es); this run has --seed {} and {} (the data order would differ)",
            st.seed, st.world_size, cfg.seed, world
        ));
    }
    if (st.batches_done > 0 || st.epoch_offset > 0) && st.batch_size != Some(cfg.batch_size) {
        return bad(format!(
            "it stopped inside epoch {} after {} batches of --batch-size {}; this run has --batch-size {} (the position in the epoch would differ)",
            st.next_epoch + 1,
            st.batches_done,
            st.batch_size.map_or("?".into(), |b| b.to_string()),
            cfg.batch_size
        ));
    }
    if st.next_epoch >= cfg.epochs {
        return bad(format!(
            "training already finished all {} epochs",
            cfg.epochs
        ));
    }
    Ok(())
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
            batch_size: Some(32),
            next_epoch: 2,
            epoch_offset: 30,
            batches_done: 5,
            epoch_sums: [1.5, 100.0, 150.0],
            epoch_seconds: 0.5,
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
        std::fs::write(&p, b"MNISTCK3\x01").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("corrupt"));
        std::fs::write(&p, b"MNISTCK2\x01").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("corrupt"));
        std::fs::write(&p, b"MNISTCK1\x01").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("corrupt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A checkpoint of the first format (no position inside an epoch) loads as one written at
    /// an epoch boundary.
    #[test]
    fn the_first_format_still_loads() {
        #[derive(Serialize)]
        struct V1<'a> {
            model: &'a str,
            epochs: usize,
            seed: u64,
            world_size: usize,
            next_epoch: usize,
            step: u64,
            best_acc: f64,
            params: Vec<f32>,
            momentum: Option<Vec<f32>>,
        }
        let dir = tempfile::tempdir().unwrap();
        let p = path_in(dir.path());
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend(
            bincode::serialize(&V1 {
                model: "MLP",
                epochs: 4,
                seed: 3,
                world_size: 2,
                next_epoch: 1,
                step: 40,
                best_acc: 91.0,
                params: vec![0.5],
                momentum: None,
            })
            .unwrap(),
        );
        std::fs::write(&p, bytes).unwrap();
        let s = load(&p).unwrap();
        assert_eq!(
            (
                s.model.as_str(),
                s.next_epoch,
                s.batches_done,
                s.batch_size,
                s.step
            ),
            ("MLP", 1, 0, None, 40)
        );
    }

    #[test]
    fn a_writer_dying_before_the_rename_leaves_the_old_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = path_in(dir.path());
        let mut s = ResumeState {
            model: "LeNet".into(),
            epochs: 3,
            seed: 1,
            world_size: 1,
            batch_size: Some(32),
            next_epoch: 0,
            epoch_offset: 0,
            batches_done: 4,
            epoch_sums: [0.0; 3],
            epoch_seconds: 0.0,
            step: 4,
            best_acc: -1.0,
            params: vec![1.0; 1000],
            momentum: None,
            buffers: Vec::new(),
        };
        save(&p, &s).unwrap();
        // A panic in the hook stands in for the process dying between write and rename.
        s.step = 8;
        let died = std::panic::catch_unwind(|| {
            let _ = save_with_hook(&p, &s, || panic!("died"));
        });
        assert!(died.is_err());
        assert_eq!(load(&p).unwrap().step, 4, "the old checkpoint is intact");
        // A real death leaves its temporary file; the next writer's clean-up removes it.
        std::fs::write(dir.path().join(".checkpoint.bin.abc123.tmp"), b"partial").unwrap();
        std::fs::write(dir.path().join("other.tmp"), b"keep").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        assert!(dir.path().join("other.tmp").exists());
    }
}
