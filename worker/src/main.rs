//! `mnist-worker`: one rank of a training job. Normally started by `mnist-launch`; it can be
//! started by hand with `--rank/--world-size/--rendezvous/--run-id` or torchrun's variables.
//! Parses flags, resolves the configuration and calls `mnist_train::run`.

use clap::Parser;
use mnist_common::cli::TrainArgs;
use mnist_common::contract::{self, WorkerIdentity};
use std::path::PathBuf;

/// One rank of mnist-ddp training (usually started by mnist-launch).
#[derive(Parser, Debug)]
#[command(name = "mnist-worker", version, about, args_override_self = true)]
struct WorkerArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Global rank of this process.
    #[arg(long, env = contract::ENV_RANK, default_value_t = 0)]
    rank: usize,
    /// Rank on this machine (default: the global rank).
    #[arg(long, env = contract::ENV_LOCAL_RANK)]
    local_rank: Option<usize>,
    /// Number of processes in the job.
    #[arg(long, env = contract::ENV_WORLD_SIZE, default_value_t = 1)]
    world_size: usize,
    /// Number of processes on this machine (default: the world size).
    #[arg(long, env = contract::ENV_LOCAL_WORLD_SIZE)]
    local_world_size: Option<usize>,
    /// Rendezvous file (needed with more than one process).
    #[arg(long, env = contract::ENV_RENDEZVOUS)]
    rendezvous: Option<PathBuf>,
    /// Run id shared by the job's processes.
    #[arg(long, env = contract::ENV_RUN_ID)]
    run_id: Option<String>,
    /// Seconds to wait for the peers at the rendezvous.
    #[arg(long, env = contract::ENV_RENDEZVOUS_TIMEOUT, default_value_t = 60.0)]
    rendezvous_timeout: f64,
}

fn identity(a: &WorkerArgs) -> anyhow::Result<WorkerIdentity> {
    anyhow::ensure!(a.world_size >= 1, "--world-size must be at least 1");
    anyhow::ensure!(
        a.rank < a.world_size,
        "--rank {} is not below --world-size {}",
        a.rank,
        a.world_size
    );
    if a.world_size > 1 {
        anyhow::ensure!(
            a.rendezvous.is_some(),
            "--world-size {} needs --rendezvous FILE (or MNIST_RENDEZVOUS)",
            a.world_size
        );
        anyhow::ensure!(
            a.run_id.is_some(),
            "--world-size {} needs --run-id (or MNIST_RUN_ID)",
            a.world_size
        );
    }
    anyhow::ensure!(
        a.rendezvous_timeout > 0.0,
        "--rendezvous-timeout must be positive"
    );
    Ok(WorkerIdentity {
        rank: a.rank,
        local_rank: a.local_rank.unwrap_or(a.rank),
        world_size: a.world_size,
        local_world_size: a.local_world_size.unwrap_or(a.world_size),
        rendezvous: a.rendezvous.clone(),
        run_id: a.run_id.clone(),
        rendezvous_timeout_s: a.rendezvous_timeout,
    })
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("mnist-worker: internal error: {info}");
    }));
    let args = WorkerArgs::parse();
    let result = identity(&args).and_then(|id| {
        let cfg = args.train.resolve()?;
        mnist_train::run(&cfg, &id)
            .map_err(|e| (id.rank, e))
            .map_err(|(rank, e)| {
                let peer = matches!(
                    e,
                    mnist_train::TrainError::Comm(mnist_comm::CommError::PeerFailed { .. })
                );
                anyhow::Error::new(e).context(if peer {
                    format!("rank {rank} stopped: a peer failed")
                } else {
                    format!("rank {rank}")
                })
            })
    });
    if let Err(e) = result {
        eprintln!(
            "mnist-worker: error: {}",
            mnist_common::error_line(e.as_ref())
        );
        let peer = e.to_string().contains("a peer failed");
        std::process::exit(if peer {
            contract::EXIT_PEER_FAILED
        } else {
            contract::EXIT_FAILURE
        });
    }
}
