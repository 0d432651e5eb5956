//! Where a worker sits in its job when another program started it.
//!
//! `mnist-worker` may be started by `mnist-launch`, by `torchrun`, by a Kubeflow PyTorchJob,
//! by Slurm's `srun`, by Open MPI's `mpirun` or by another PMI launcher (MPICH's Hydra). Each
//! says who the process is through its own environment variables. [`detect`] reads them, in
//! this order (the first that is present decides):
//!
//! 1. our launcher's contract (`MNIST_RUN_ID`, `MNIST_RENDEZVOUS`, `MNIST_STORE` with `RANK`…);
//! 2. torchrun / Kubeflow (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//!    `GROUP_RANK`, `GROUP_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, `TORCHELASTIC_*`);
//! 3. Slurm, for a task started by `srun` (`SLURM_PROCID`, `SLURM_STEP_ID`,
//!    `SLURM_STEP_NUM_TASKS`/`SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_STEP_TASKS_PER_NODE`,
//!    `SLURM_STEP_NODELIST`, `SLURM_JOB_ID`);
//! 4. Open MPI (`OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE`);
//! 5. PMI (`PMI_RANK`, `PMI_SIZE`, and Hydra's `MPI_LOCALRANKID`/`MPI_LOCALNRANKS`).
//!
//! An MPI launcher run *inside* a Slurm job (`mpirun` in an `sbatch` script) starts the
//! process itself, while the Slurm variables it inherits describe the batch script or
//! `mpirun`'s daemons: the MPI variables then win ([`slurm`] explains the rule). Explicit
//! flags beat everything ([`resolve`]).
//!
//! With env:// semantics (everything but our launcher and torchrun's agent store), global
//! rank 0 serves the meeting point, our key-value store, at `MASTER_ADDR:MASTER_PORT`
//! ([`Meeting::Serve`]); under torchrun (`TORCHELASTIC_USE_AGENT_STORE=True`) the workers
//! use torchrun's own `TCPStore` there ([`Meeting::TorchStore`]). Variables that contradict
//! each other are an error naming them ([`EnvError::Contradiction`]).

pub mod hostlist;
mod launcher;
mod mpi;
mod resolve;
pub mod slurm;
mod torchrun;
mod vars;

pub use resolve::{resolve, Explicit};
pub use vars::Env;

use std::fmt;
use std::path::PathBuf;
use vars::Vars;

/// Who started the process, as far as its environment tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Nothing: a lone process (rank 0 of 1), or everything given by flags.
    Alone,
    /// Explicit flags (`--rank`, `--world-size`, …) only.
    Flags,
    /// `mnist-launch` (our contract).
    Launcher,
    /// torchrun (`TORCHELASTIC_RUN_ID` is set).
    Torchrun,
    /// torchrun's variables without torchrun: a Kubeflow PyTorchJob or anything env://.
    EnvUrl,
    /// A task started by Slurm's `srun`.
    Slurm,
    /// Open MPI's `mpirun`.
    OpenMpi,
    /// A PMI launcher (MPICH's Hydra `mpiexec`, `srun --mpi=pmi2` without Slurm's variables).
    Pmi,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Alone => "none (a single process)",
            Engine::Flags => "command-line flags",
            Engine::Launcher => "mnist-launch",
            Engine::Torchrun => "torchrun",
            Engine::EnvUrl => "env:// variables (Kubeflow PyTorchJob or similar)",
            Engine::Slurm => "Slurm (srun task)",
            Engine::OpenMpi => "Open MPI (mpirun)",
            Engine::Pmi => "PMI (mpiexec)",
        })
    }
}

/// Where the workers meet to find rank 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Meeting {
    /// A rendezvous file (`MNIST_RENDEZVOUS`, `--rendezvous`).
    File(PathBuf),
    /// Our key-value store served by someone else, `HOST:PORT` or `tcpstore://…`
    /// (`MNIST_STORE`, `--store`).
    Store(String),
    /// env:// semantics: global rank 0 serves our key-value store on `port` (every
    /// interface), the others connect to `host:port`.
    Serve {
        /// The master's host (`MASTER_ADDR` or the engine's default).
        host: String,
        /// The port (`MASTER_PORT` or [`default_port`]).
        port: u16,
        /// Where the port came from, for the log line.
        port_from: String,
    },
    /// torchrun's agent store (`TORCHELASTIC_USE_AGENT_STORE=True`): a PyTorch `TCPStore`
    /// at `host:port`, keys under `prefix`.
    TorchStore {
        /// `MASTER_ADDR`.
        host: String,
        /// `MASTER_PORT`.
        port: u16,
        /// The key prefix of this run.
        prefix: String,
    },
}

impl Meeting {
    /// The value for the worker's store endpoint (`MNIST_STORE` syntax) as seen by `rank`:
    /// `HOST:PORT` of our store (rank 0 of [`Meeting::Serve`] reaches its own server on the
    /// loopback address), `tcpstore://HOST:PORT/PREFIX` for torchrun's store; `None` for a
    /// file.
    pub fn store_endpoint(&self, rank: usize) -> Option<String> {
        match self {
            Meeting::File(_) => None,
            Meeting::Store(s) => Some(s.clone()),
            Meeting::Serve { port, .. } if rank == 0 => Some(format!("127.0.0.1:{port}")),
            Meeting::Serve { host, port, .. } => Some(join_host_port(host, *port)),
            Meeting::TorchStore { host, port, prefix } => Some(format!(
                "tcpstore://{}/{prefix}",
                join_host_port(host, *port)
            )),
        }
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for Meeting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Meeting::File(p) => write!(f, "rendezvous file {}", p.display()),
            Meeting::Store(s) => write!(f, "store {s}"),
            Meeting::Serve {
                host,
                port,
                port_from,
            } => write!(
                f,
                "master {} (rank 0 serves the store; port {port_from})",
                join_host_port(host, *port)
            ),
            Meeting::TorchStore { host, port, prefix } => write!(
                f,
                "torchrun's TCPStore at {} (keys under {prefix}/)",
                join_host_port(host, *port)
            ),
        }
    }
}

/// What the environment says about this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Who started it.
    pub engine: Engine,
    /// Global rank.
    pub rank: usize,
    /// Rank on this machine.
    pub local_rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Processes on this machine.
    pub local_world_size: usize,
    /// This machine's index in the job (0 when the engine does not say; host names then tell
    /// machines apart).
    pub node_rank: usize,
    /// Machines in the job.
    pub nnodes: usize,
    /// The run id all processes of the job share.
    pub run_id: Option<String>,
    /// Where they meet (`None`: not known from the environment).
    pub meeting: Option<Meeting>,
    /// The variables read, in order, with their values.
    pub evidence: Vec<(String, String)>,
    /// What else was concluded or ignored, for the log line.
    pub notes: Vec<String>,
}

impl Placement {
    /// A lone process.
    pub fn alone() -> Self {
        Placement {
            engine: Engine::Alone,
            rank: 0,
            local_rank: 0,
            world_size: 1,
            local_world_size: 1,
            node_rank: 0,
            nnodes: 1,
            run_id: None,
            meeting: None,
            evidence: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// One line for the log: the engine, the variables it read, and what follows from them.
    pub fn summary(&self) -> String {
        let mut s = format!("environment: {}", self.engine);
        if !self.evidence.is_empty() {
            let ev: Vec<String> = self
                .evidence
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!(" [{}]", ev.join(" ")));
        }
        s.push_str(&format!(
            " -> rank {} of {}, local rank {} of {}, node {} of {}",
            self.rank,
            self.world_size,
            self.local_rank,
            self.local_world_size,
            self.node_rank,
            self.nnodes
        ));
        if let Some(m) = &self.meeting {
            s.push_str(&format!(", {m}"));
        }
        if let Some(r) = &self.run_id {
            s.push_str(&format!(", run id {r}"));
        }
        for n in &self.notes {
            s.push_str(&format!("; {n}"));
        }
        s
    }
}

/// Why the environment cannot be used; every message names the variables involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// A variable has a value of the wrong form.
    #[error("{var}={value:?}: expected {expected}")]
    Invalid {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A variable the engine always sets is missing.
    #[error("{engine}: {missing} is not set ({why})")]
    Missing {
        /// The engine whose variables were found.
        engine: String,
        /// The missing variable.
        missing: String,
        /// Why it is needed (which variables were present).
        why: String,
    },
    /// Variables that cannot all be true.
    #[error("{engine}: contradictory variables: {detail}")]
    Contradiction {
        /// The engine (or engines) involved.
        engine: String,
        /// The variables and their values.
        detail: String,
    },
    /// A flag (or the flags together with the environment) cannot work.
    #[error("{0}")]
    Flags(String),
}

/// The port rank 0 serves on when the engine gives none (`MASTER_PORT` unset):
/// 20000 + (FNV-1a of the run id mod 12000), so every process of a run computes the same
/// port, different runs (Slurm jobs, `mpirun` jobs) get different ones, and it stays below
/// Linux's ephemeral range (32768…).
pub fn default_port(run_id: &str) -> u16 {
    20000 + (vars::fnv1a(run_id) % 12000) as u16
}

/// Read the environment and say where this process sits (see the crate docs for the order).
/// A process no engine started is [`Placement::alone`] (with a note when Slurm's batch
/// variables were seen and ignored).
pub fn detect(env: &Env) -> Result<Placement, EnvError> {
    let v = Vars::new(env);
    let mut p = if let Some(p) = launcher::detect(&v)? {
        p
    } else if let Some(p) = torchrun::detect(&v)? {
        p
    } else if let Some(p) = slurm::detect_with_mpi(&v)? {
        p
    } else if let Some(p) = mpi::detect_ompi(&v)? {
        p
    } else if let Some(p) = mpi::detect_pmi(&v)? {
        p
    } else {
        let mut p = Placement::alone();
        if let Some(note) = slurm::batch_note(&v) {
            p.notes.push(note);
        }
        p
    };
    p.evidence = v.evidence();
    Ok(p)
}

#[cfg(test)]
mod tests;
