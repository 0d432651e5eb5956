//! `mnist-worker`: one rank of a training job. Normally started by `mnist-launch`; it can be
//! started by hand with `--rank/--world-size/--rendezvous/--run-id` or torchrun's variables.
//! Parses flags, resolves the configuration and calls `mnist_train::run`.

use clap::Parser;
use mnist_common::cli::TrainArgs;
use mnist_common::contract::{self, WorkerIdentity};
use mnist_common::FailureKind;
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
    /// Rank of this process's node (machine).
    #[arg(long, env = contract::ENV_NODE_RANK, default_value_t = 0)]
    node_rank: usize,
    /// Number of nodes (machines) in the job.
    #[arg(long, env = contract::ENV_NNODES, default_value_t = 1)]
    nnodes: usize,
    /// Rendezvous file (needed with more than one process).
    #[arg(long, env = contract::ENV_RENDEZVOUS)]
    rendezvous: Option<PathBuf>,
    /// TCP rendezvous store HOST:PORT (jobs spanning several machines; replaces the file).
    #[arg(long, env = contract::ENV_STORE, value_name = "HOST:PORT")]
    store: Option<String>,
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
            a.rendezvous.is_some() || a.store.is_some(),
            "--world-size {} needs --rendezvous FILE (or MNIST_RENDEZVOUS) or --store HOST:PORT (MNIST_STORE)",
            a.world_size
        );
        anyhow::ensure!(
            a.run_id.is_some(),
            "--world-size {} needs --run-id (or MNIST_RUN_ID)",
            a.world_size
        );
    }
    anyhow::ensure!(
        a.node_rank < a.nnodes.max(1),
        "--node-rank {} (GROUP_RANK) is not below --nnodes {} (MNIST_NNODES)",
        a.node_rank,
        a.nnodes
    );
    anyhow::ensure!(
        a.rendezvous_timeout > 0.0,
        "--rendezvous-timeout must be positive"
    );
    Ok(WorkerIdentity {
        rank: a.rank,
        local_rank: a.local_rank.unwrap_or(a.rank),
        world_size: a.world_size,
        local_world_size: a.local_world_size.unwrap_or(a.world_size),
        node_rank: a.node_rank,
        nnodes: a.nnodes.max(1),
        rendezvous: a.rendezvous.clone(),
        store: a.store.clone(),
        run_id: a.run_id.clone(),
        rendezvous_timeout_s: a.rendezvous_timeout,
    })
}

fn main() {
    mnist_common::panics::install_quiet_hook();
    let args = WorkerArgs::parse();
    let outcome = mnist_common::panics::catch(|| -> Result<(), (anyhow::Error, FailureKind)> {
        let id = identity(&args).map_err(|e| (e, FailureKind::BadInput))?;
        let cfg = args
            .train
            .resolve()
            .map_err(|e| (anyhow::Error::new(e), FailureKind::BadInput))?;
        if let Err(e) = mnist_train::interrupt::install() {
            return Err((
                anyhow::Error::new(e).context("cannot install signal handlers"),
                FailureKind::OwnFault,
            ));
        }
        mnist_train::run(&cfg, &id).map_err(|e| {
            let kind = e.kind();
            let what = match kind {
                FailureKind::PeerFailed => format!("rank {} stopped: a peer failed", id.rank),
                _ => format!("rank {}", id.rank),
            };
            (anyhow::Error::new(e).context(what), kind)
        })
    });
    let (err, kind) = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(failure)) => failure,
        Err(panic) => (
            anyhow::anyhow!("internal error: {panic}"),
            FailureKind::OwnFault,
        ),
    };
    eprintln!(
        "mnist-worker: error: {}",
        mnist_common::error_line(err.as_ref())
    );
    std::process::exit(kind.exit_code());
}
