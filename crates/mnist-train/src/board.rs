//! Rank 0's TensorBoard event file (`--tensorboard`): per step the train loss (rank 0's batch)
//! and the learning rate; per epoch, at the global step count at its end, the figures of its
//! `metrics.jsonl` record (test loss/top-1/top-5, images/s, gradient bytes/step, the time
//! breakdown, …). Written at the end of each epoch and flushed, so TensorBoard shows each
//! epoch as it completes.

use crate::metrics::EpochRecord;
use crate::TrainError;
use mnist_tensorboard::EventWriter;
use std::path::{Path, PathBuf};

/// The flag named in write errors.
const FLAG: &str = "--tensorboard";

/// An open event file.
#[derive(Debug)]
pub struct Board {
    writer: EventWriter,
    dir: PathBuf,
}

/// The per-step series of one epoch, from its first global step (0-based).
#[derive(Clone, Debug, Default)]
pub struct StepSeries {
    /// Global step of the first entry.
    pub first_step: u64,
    /// Wall time of each step's end (seconds since the Unix epoch).
    pub wall_time: Vec<f64>,
    /// Rank 0's mean batch loss per step.
    pub loss: Vec<f32>,
}

impl Board {
    /// A new event file in `dir`.
    pub fn open(dir: &Path) -> Result<Board, TrainError> {
        let writer = EventWriter::create(dir).map_err(|e| err(dir, e))?;
        Ok(Board {
            writer,
            dir: dir.to_path_buf(),
        })
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// Write one epoch: its steps' loss and learning rate, then its record at `step` (the
    /// global step count at its end); flush.
    pub fn epoch(
        &mut self,
        steps: &StepSeries,
        step: u64,
        rec: &EpochRecord,
    ) -> Result<(), TrainError> {
        for (i, (&wall, &loss)) in steps.wall_time.iter().zip(&steps.loss).enumerate() {
            self.writer
                .scalars(
                    wall,
                    (steps.first_step + i as u64) as i64,
                    &[("train/loss", loss as f64), ("train/lr", rec.lr)],
                )
                .map_err(|e| err(&self.dir, e))?;
        }
        let t = &rec.time;
        let mut values = vec![
            ("epoch", rec.epoch as f64),
            ("test/loss", rec.test_loss),
            ("test/top1", rec.test_top1),
            ("test/top5", rec.test_top5),
            ("train/epoch_loss", rec.train_loss),
            ("train/epoch_top1", rec.train_top1),
            ("perf/images_per_second", rec.images_per_second),
            ("perf/epoch_seconds", rec.epoch_seconds),
            ("comm/gradient_bytes_per_step", rec.bytes_sent_per_step),
            ("time/compute_ms_median", t.step_compute_ms_median),
            ("time/comm_ms_median", t.step_comm_ms_median),
            ("time/wait_ms_median", t.step_wait_ms_median),
        ];
        if let Some(r) = rec.compression_ratio {
            values.push(("comm/compression_ratio", r));
        }
        self.writer
            .scalars(mnist_tensorboard::now(), step as i64, &values)
            .and_then(|()| self.writer.flush())
            .map_err(|e| err(&self.dir, e))
    }
}

fn err(dir: &Path, source: std::io::Error) -> TrainError {
    TrainError::Output {
        flag: FLAG,
        path: dir.to_path_buf(),
        source,
    }
}
