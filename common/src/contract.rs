//! The launcher ↔ worker contract, written down once. The README's "Launcher ↔ worker
//! contract" section describes the same thing for people.
//!
//! The launcher starts `mnist-worker` once per rank with the training flags it was given
//! ([`crate::cli::TrainArgs::to_args`]) plus [`WorkerIdentity::to_args`], and sets the same
//! identity in torchrun's environment variables so a worker can also be started by hand.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Global rank of this process (0 ≤ RANK < WORLD_SIZE).
pub const ENV_RANK: &str = "RANK";
/// Rank of this process on its machine.
pub const ENV_LOCAL_RANK: &str = "LOCAL_RANK";
/// Number of processes in the job.
pub const ENV_WORLD_SIZE: &str = "WORLD_SIZE";
/// Number of processes on this machine.
pub const ENV_LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
/// Path of the rendezvous file.
pub const ENV_RENDEZVOUS: &str = "MNIST_RENDEZVOUS";
/// Identifier of this run; a rendezvous file with another id is stale.
pub const ENV_RUN_ID: &str = "MNIST_RUN_ID";
/// Seconds a worker waits at the rendezvous for its peers.
pub const ENV_RENDEZVOUS_TIMEOUT: &str = "MNIST_RENDEZVOUS_TIMEOUT";
/// Exit code of a worker that failed on bad input or a runtime error.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of a worker stopped because a peer failed.
pub const EXIT_PEER_FAILED: i32 = 3;
/// Exit code for bad command-line usage (clap's).
pub const EXIT_USAGE: i32 = 2;

/// Who a worker is within the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerIdentity {
    /// Global rank.
    pub rank: usize,
    /// Rank on this machine.
    pub local_rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Processes on this machine.
    pub local_world_size: usize,
    /// The rendezvous file (None for a single process).
    pub rendezvous: Option<PathBuf>,
    /// The run id (None for a single process).
    pub run_id: Option<String>,
    /// Seconds to wait for peers at the rendezvous.
    pub rendezvous_timeout_s: f64,
}

impl WorkerIdentity {
    /// A lone process: rank 0 of 1.
    pub fn single() -> Self {
        WorkerIdentity {
            rank: 0,
            local_rank: 0,
            world_size: 1,
            local_world_size: 1,
            rendezvous: None,
            run_id: None,
            rendezvous_timeout_s: 60.0,
        }
    }

    /// Environment variables the launcher sets for this worker.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            (ENV_RANK.into(), self.rank.to_string()),
            (ENV_LOCAL_RANK.into(), self.local_rank.to_string()),
            (ENV_WORLD_SIZE.into(), self.world_size.to_string()),
            (
                ENV_LOCAL_WORLD_SIZE.into(),
                self.local_world_size.to_string(),
            ),
            (
                ENV_RENDEZVOUS_TIMEOUT.into(),
                self.rendezvous_timeout_s.to_string(),
            ),
        ];
        if let Some(r) = &self.rendezvous {
            v.push((ENV_RENDEZVOUS.into(), r.display().to_string()));
        }
        if let Some(r) = &self.run_id {
            v.push((ENV_RUN_ID.into(), r.clone()));
        }
        v
    }

    /// Worker command-line arguments carrying the same identity.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--rank".into(),
            self.rank.to_string(),
            "--local-rank".into(),
            self.local_rank.to_string(),
            "--world-size".into(),
            self.world_size.to_string(),
            "--local-world-size".into(),
            self.local_world_size.to_string(),
            "--rendezvous-timeout".into(),
            self.rendezvous_timeout_s.to_string(),
        ];
        if let Some(r) = &self.rendezvous {
            v.extend(["--rendezvous".into(), r.display().to_string()]);
        }
        if let Some(r) = &self.run_id {
            v.extend(["--run-id".into(), r.clone()]);
        }
        v
    }
}
