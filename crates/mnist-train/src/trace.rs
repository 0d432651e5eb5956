//! The sample trace, a test hook (`MNIST_SAMPLE_TRACE=<folder>`,
//! [`mnist_common::contract::ENV_SAMPLE_TRACE`]): per optimizer step, one line
//! `<round> <step> <epoch> <i>,<i>,...` with the dataset indices this rank trained, appended
//! to `<folder>/samples-<pid>.txt` with one write per line (so a killed process leaves every
//! finished step's line). Tests check from it that an epoch saw every sample exactly once
//! across restarts and world-size changes. Off (no file, no cost) unless the variable is set.

use crate::TrainError;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

/// Where this rank's trace goes, if anywhere.
pub struct SampleTrace {
    file: Option<(File, PathBuf)>,
    round: u32,
}

impl SampleTrace {
    /// From the environment; `round` is the launcher's restart round.
    pub fn from_env(round: u32) -> Result<SampleTrace, TrainError> {
        let Some(dir) = std::env::var_os(mnist_common::contract::ENV_SAMPLE_TRACE) else {
            return Ok(SampleTrace { file: None, round });
        };
        let path = PathBuf::from(dir).join(format!("samples-{}.txt", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::OutputDir {
                path: path.clone(),
                source: e,
            })?;
        Ok(SampleTrace {
            file: Some((file, path)),
            round,
        })
    }

    /// Record that step `step` of `epoch` (0-based) trained `indices`.
    pub fn record(&mut self, step: u64, epoch: usize, indices: &[usize]) -> Result<(), TrainError> {
        let Some((file, path)) = self.file.as_mut() else {
            return Ok(());
        };
        let list: Vec<String> = indices.iter().map(usize::to_string).collect();
        let line = format!("{} {step} {epoch} {}\n", self.round, list.join(","));
        file.write_all(line.as_bytes())
            .map_err(|e| TrainError::OutputDir {
                path: path.clone(),
                source: e,
            })
    }
}
