//! `mnist-worker`: one rank of a training job. Normally started by `mnist-launch`; it can be
//! started by hand with `--rank/--world-size/--rendezvous/--run-id`, or by torchrun, srun, mpirun
//! or Kubernetes (their variables are read by `mnist_env`).
//! Parses flags, resolves the configuration and calls `mnist_train::run`.

use clap::Parser;
use mnist_common::cli::TrainArgs;
use mnist_common::contract;
use mnist_common::FailureKind;
use std::path::PathBuf;

mod placement;

/// One rank of mnist-ddp training (usually started by mnist-launch, or by torchrun, srun,
/// mpirun or Kubernetes: it reads where it sits from their environment variables).
#[derive(Parser, Debug)]
#[command(name = "mnist-worker", version, about, args_override_self = true)]
struct WorkerArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// Global rank of this process (default: from the environment, see README "Started by
    /// other engines").
    #[arg(long)]
    rank: Option<usize>,
    /// Rank on this machine (default: from the environment, else the global rank).
    #[arg(long)]
    local_rank: Option<usize>,
    /// Number of processes in the job (default: from the environment, else 1).
    #[arg(long)]
    world_size: Option<usize>,
    /// Number of processes on this machine (default: from the environment, else the world
    /// size).
    #[arg(long)]
    local_world_size: Option<usize>,
    /// Rank of this process's node (machine).
    #[arg(long)]
    node_rank: Option<usize>,
    /// Number of nodes (machines) in the job.
    #[arg(long)]
    nnodes: Option<usize>,
    /// Rendezvous file (a meeting point for several processes).
    #[arg(long)]
    rendezvous: Option<PathBuf>,
    /// Key-value store to meet through: HOST:PORT (ours) or tcpstore://HOST:PORT/PREFIX
    /// (PyTorch's TCPStore).
    #[arg(long, value_name = "ENDPOINT")]
    store: Option<String>,
    /// Run id shared by the job's processes.
    #[arg(long)]
    run_id: Option<String>,
    /// Seconds to wait for the peers at the rendezvous.
    #[arg(long, env = contract::ENV_RENDEZVOUS_TIMEOUT, default_value_t = 60.0)]
    rendezvous_timeout: f64,
}

impl WorkerArgs {
    fn explicit(&self) -> mnist_env::Explicit {
        mnist_env::Explicit {
            rank: self.rank,
            local_rank: self.local_rank,
            world_size: self.world_size,
            local_world_size: self.local_world_size,
            node_rank: self.node_rank,
            nnodes: self.nnodes,
            rendezvous: self.rendezvous.clone(),
            store: self.store.clone(),
            run_id: self.run_id.clone(),
        }
    }
}

fn main() {
    mnist_common::panics::install_quiet_hook();
    // Before any libtorch call: libtorch decides once whether CUDA exists.
    mnist_train::cuda_runtime::load();
    let args = WorkerArgs::parse();
    let outcome = mnist_common::panics::catch(|| -> Result<(), (anyhow::Error, FailureKind)> {
        if args.rendezvous_timeout.is_nan() || args.rendezvous_timeout <= 0.0 {
            return Err((
                anyhow::anyhow!("--rendezvous-timeout must be positive"),
                FailureKind::BadInput,
            ));
        }
        let resolved =
            placement::resolve(&args.explicit(), args.rendezvous_timeout).map_err(|f| match f {
                placement::Failure::Input(e) => (e, FailureKind::BadInput),
                placement::Failure::Serve(e) => (e, FailureKind::OwnFault),
            })?;
        // The first line (stdout, the log's format): what the environment said and what
        // follows from it.
        println!(
            "{}",
            mnist_common::logging::format_line(
                &chrono::Local::now(),
                &format!("Worker {}", resolved.placement.summary())
            )
        );
        // Rank 0's store (env://) lives as long as the run.
        let placement::Resolved {
            identity: id,
            server: _store,
            ..
        } = resolved;
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
