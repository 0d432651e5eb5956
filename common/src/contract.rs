//! The launcher ↔ worker contract, written down once. The README's "Launcher ↔ worker
//! contract" section describes the same thing for people.
//!
//! Everything the two binaries share lives here: environment variables, file names, exit
//! codes and the failure kinds behind them. The launcher starts `mnist-worker` once per rank
//! with the training flags it was given ([`crate::cli::forwarded_args`]) and the worker's
//! identity in the environment ([`WorkerIdentity::to_env`], torchrun's variable names, so a
//! worker can also be started by hand).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

// ---- Environment: identity (torchrun's names, so a worker can be started by hand) ----

/// Global rank of this process (0 ≤ RANK < WORLD_SIZE).
pub const ENV_RANK: &str = "RANK";
/// Rank of this process on its machine.
pub const ENV_LOCAL_RANK: &str = "LOCAL_RANK";
/// Number of processes in the job.
pub const ENV_WORLD_SIZE: &str = "WORLD_SIZE";
/// Number of processes on this machine.
pub const ENV_LOCAL_WORLD_SIZE: &str = "LOCAL_WORLD_SIZE";
/// Rank of this process's node (machine) in the job (torchrun's name; default 0). The ranks
/// of one node are contiguous global ranks; its lowest (local rank 0) is the node's leader.
pub const ENV_NODE_RANK: &str = "GROUP_RANK";

// ---- Environment: our launcher's contract ----

/// Number of nodes (machines) in the job (default 1). Ranks with different node ranks talk
/// over the network even on one host (tests put ranks on such "fake nodes").
pub const ENV_NNODES: &str = "MNIST_NNODES";
/// Which transport the CPU collectives use: `auto` (shared memory inside a node, a TCP ring
/// between nodes), `shm` (one node only), `tcp` (every rank its own node: the pure ring, for
/// tests and benchmarks of the inter-node path) or `star` (the former star through rank 0,
/// kept for benchmarks).
pub const ENV_COMM_TRANSPORT: &str = "MNIST_COMM_TRANSPORT";
/// Path of the rendezvous file.
pub const ENV_RENDEZVOUS: &str = "MNIST_RENDEZVOUS";
/// `HOST:PORT` of the TCP rendezvous store (node 0's launcher, jobs spanning several
/// machines): rank 0 publishes its group address there instead of in a file.
/// `tcpstore://HOST:PORT/PREFIX` names a PyTorch `TCPStore` instead (torchrun's agent store).
pub const ENV_STORE: &str = "MNIST_STORE";
/// A network interface name: the launcher advertises that interface's IPv4 address to the
/// other nodes (default: the local address of its connection to the master).
pub const ENV_SOCKET_IFNAME: &str = "MNIST_SOCKET_IFNAME";
/// Identifier of this run; a rendezvous file with another id is stale.
pub const ENV_RUN_ID: &str = "MNIST_RUN_ID";
/// The launcher's restart round of this worker: 0 for the first attempt, N after the Nth
/// restart (`--max-restarts`; torchrun's `TORCHELASTIC_RESTART_COUNT`). Default 0.
pub const ENV_RESTART_ROUND: &str = "MNIST_RESTART_ROUND";
/// Seconds a worker waits at the rendezvous for its peers.
pub const ENV_RENDEZVOUS_TIMEOUT: &str = "MNIST_RENDEZVOUS_TIMEOUT";
/// The IP address rank 0 advertises to ranks on other hosts (default: the first non-loopback
/// IPv4 address of its host name).
pub const ENV_RENDEZVOUS_ADDR: &str = "MNIST_RENDEZVOUS_ADDR";
/// With `--gpus`: the GPU of each local rank, comma-separated (local rank r uses entry r;
/// indices inside `CUDA_VISIBLE_DEVICES`).
pub const ENV_GPUS: &str = "MNIST_GPUS";
/// Whether a worker loads libtorch's CUDA half (`libtorch_cuda.so` and the CUDA libraries it
/// pulls in): `auto` (default: when an NVIDIA driver is present and `CUDA_VISIBLE_DEVICES`
/// does not hide every GPU), `off` (never), `on` (always, even without a driver).
pub const ENV_TORCH_CUDA: &str = "MNIST_TORCH_CUDA";
/// The worker program the launcher starts (`--worker-bin`; default: `mnist-worker` next to
/// the launcher).
pub const ENV_WORKER_BIN: &str = "MNIST_WORKER_BIN";
/// Intra-op threads per worker; the launcher sets max(1, cores / processes) unless it is
/// already set.
pub const ENV_OMP_NUM_THREADS: &str = "OMP_NUM_THREADS";
/// The GPUs visible to the job (CUDA's own variable; the launcher counts them, the workers'
/// CUDA runtime applies it).
pub const ENV_CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

// ---- Environment: test hooks ----

/// Fault injection for tests: `<rank>:<step>:<kind>[=value][@round]`, several separated by `,`
/// (kinds `crash`, `abort`, `exit-code[=N]`, `hang`, `slow[=MS]`, `corrupt-gradient`; see
/// [`crate::fault`]). Read by the worker only; nothing is injected unless it is set.
pub const ENV_FAULT: &str = "MNIST_FAULT";

// ---- Environment: tuning of the shared-memory backend (rarely needed) ----

/// Bytes per rank and chunk of the shared-memory all-reduce.
pub const ENV_SHM_CHUNK: &str = "MNIST_SHM_CHUNK";
/// Microseconds a shared-memory wait spins before yielding.
pub const ENV_SHM_SPIN_US: &str = "MNIST_SHM_SPIN_US";
/// Microseconds a shared-memory wait yields before sleeping on the futex.
pub const ENV_SHM_YIELD_US: &str = "MNIST_SHM_YIELD_US";

// ---- Files ----

/// The best model inside `--path` (a PyTorch `state_dict`).
pub const MODEL_FILE: &str = "mnist_model.pt";
/// The reference's log inside `--path` (global rank 0 only).
pub const LOG_FILE: &str = "mnist_train.log";
/// One JSON object per epoch inside `--path`.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's full configuration inside `--path` (JSON, written by rank 0 at start-up).
pub const CONFIG_FILE: &str = "config.json";
/// The training curves inside `--path` (PNG), redrawn by rank 0 after every epoch.
pub const CURVES_PNG: &str = "curves.png";
/// The training curves inside `--path` (SVG), redrawn beside [`CURVES_PNG`].
pub const CURVES_SVG: &str = "curves.svg";
/// The resumable checkpoint inside `--path`.
pub const CHECKPOINT_FILE: &str = "checkpoint.bin";
/// The launcher's report of a failed launch inside `--path` (torchrun's error file): the root
/// cause (node, rank, pid, exit code or signal, message, time, last log lines) and how each
/// restart round ended.
pub const ERROR_FILE: &str = "error.json";
/// Folder of the shared-memory segments.
pub const SHM_DIR: &str = "/dev/shm";

/// `rank<N>.log`: rank N's stdout and stderr, written by the launcher inside `--path`.
pub fn rank_log_name(rank: usize) -> String {
    format!("rank{rank}.log")
}

/// `mnist-ddp-<run id>.rdzv`: the rendezvous file of a run, in the temporary folder.
pub fn rendezvous_file_name(run_id: &str) -> String {
    format!("mnist-ddp-{run_id}.rdzv")
}

/// `mnist-ddp-<run id>`: the shared-memory segment of a run, in [`SHM_DIR`] (characters outside
/// `[A-Za-z0-9_-]` become `_`).
pub fn shm_name_for(run_id: &str) -> String {
    let clean: String = run_id
        .chars()
        .take(160)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("mnist-ddp-{clean}")
}

/// `mnist-ddp-<run id>-data<leader>-<split>`: the shared copy of a data split (`train` or
/// `test`, raw bytes) that the ranks of one machine map instead of each holding its own, in
/// [`SHM_DIR`]; `leader` is the global rank of the machine's local rank 0, which writes it.
/// Removed once every rank mapped it; the launcher removes leftovers
/// ([`shm_data_prefix`]).
pub fn shm_data_name(run_id: &str, leader: usize, split: &str) -> String {
    format!("{}{leader}-{split}", shm_data_prefix(run_id))
}

/// `mnist-ddp-<run id>-node<k>`: the shared-memory segment of node `k` of a run spanning
/// several nodes (its ranks reduce there before the node leaders' ring), in [`SHM_DIR`].
pub fn shm_node_name_for(run_id: &str, node: usize) -> String {
    format!("{}{node}", shm_node_prefix(run_id))
}

/// The start of every [`shm_node_name_for`] of a run.
pub fn shm_node_prefix(run_id: &str) -> String {
    format!("{}-node", shm_name_for(run_id))
}

/// The start of every [`shm_data_name`] of a run (a temporary file being written has a `.`
/// before it).
pub fn shm_data_prefix(run_id: &str) -> String {
    format!("{}-data", shm_name_for(run_id))
}

// ---- Exit codes ----

/// Exit code of a process that succeeded.
pub const EXIT_OK: i32 = 0;
/// Worker: failed by its own fault (a runtime error, libtorch error, out of memory, an output
/// that cannot be written). Launcher: a worker failed, or the launch could not start.
pub const EXIT_FAILURE: i32 = 1;
/// Bad command-line usage or bad input (flags, data files, model files): running it again
/// unchanged fails the same way. clap uses this code for usage errors too.
pub const EXIT_USAGE: i32 = 2;
/// Worker: stopped because a peer failed (died, aborted, hung past `--timeout`).
pub const EXIT_PEER_FAILED: i32 = 3;
/// Added to a signal number for a process stopped by that signal (130 for SIGINT, 143 for
/// SIGTERM, 129 for SIGHUP), as shells report it.
pub const EXIT_SIGNAL_BASE: i32 = 128;

/// What kind of failure ended a worker, which decides its exit code (and, for a launcher,
/// whether trying again could help).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// This process failed by itself (runtime error, libtorch error, I/O on its outputs).
    OwnFault,
    /// Another rank failed first; this one stopped because of it.
    PeerFailed,
    /// The flags or input files cannot work; nothing ran that a retry would change.
    BadInput,
    /// Stopped by this signal number (SIGINT, SIGTERM, SIGHUP).
    Interrupted(i32),
}

impl FailureKind {
    /// The documented exit code for this kind of failure.
    pub fn exit_code(self) -> i32 {
        match self {
            FailureKind::OwnFault => EXIT_FAILURE,
            FailureKind::PeerFailed => EXIT_PEER_FAILED,
            FailureKind::BadInput => EXIT_USAGE,
            FailureKind::Interrupted(sig) => EXIT_SIGNAL_BASE + sig,
        }
    }

    /// The kind a worker's exit code stands for (`None` for success or an unknown code).
    pub fn from_exit_code(code: i32) -> Option<FailureKind> {
        match code {
            EXIT_FAILURE => Some(FailureKind::OwnFault),
            EXIT_USAGE => Some(FailureKind::BadInput),
            EXIT_PEER_FAILED => Some(FailureKind::PeerFailed),
            c if c > EXIT_SIGNAL_BASE && c < EXIT_SIGNAL_BASE + 64 => {
                Some(FailureKind::Interrupted(c - EXIT_SIGNAL_BASE))
            }
            _ => None,
        }
    }
}

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
    /// This machine's node rank (0 for a single machine).
    pub node_rank: usize,
    /// Number of nodes (1 for a single machine).
    pub nnodes: usize,
    /// The rendezvous file (None for a single process).
    pub rendezvous: Option<PathBuf>,
    /// The TCP rendezvous store `HOST:PORT`, used instead of the file when set.
    pub store: Option<String>,
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
            node_rank: 0,
            nnodes: 1,
            rendezvous: None,
            store: None,
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
            (ENV_NODE_RANK.into(), self.node_rank.to_string()),
            (ENV_NNODES.into(), self.nnodes.to_string()),
            (
                ENV_RENDEZVOUS_TIMEOUT.into(),
                self.rendezvous_timeout_s.to_string(),
            ),
        ];
        if let Some(r) = &self.rendezvous {
            v.push((ENV_RENDEZVOUS.into(), r.display().to_string()));
        }
        if let Some(s) = &self.store {
            v.push((ENV_STORE.into(), s.clone()));
        }
        if let Some(r) = &self.run_id {
            v.push((ENV_RUN_ID.into(), r.clone()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_round_trip() {
        for k in [
            FailureKind::OwnFault,
            FailureKind::PeerFailed,
            FailureKind::BadInput,
            FailureKind::Interrupted(15),
        ] {
            assert_eq!(FailureKind::from_exit_code(k.exit_code()), Some(k));
        }
        assert_eq!(FailureKind::Interrupted(2).exit_code(), 130);
        assert_eq!(FailureKind::from_exit_code(0), None);
        assert_eq!(shm_name_for("a/b c"), "mnist-ddp-a_b_c");
        assert_eq!(shm_data_name("a/b", 4, "test"), "mnist-ddp-a_b-data4-test");
        assert!(shm_data_name("r", 0, "train").starts_with(&shm_data_prefix("r")));
    }

    /// Every environment variable and file name written down here is also in the README (its
    /// contract section), so neither can grow without the other.
    #[test]
    fn the_readme_names_every_variable_and_file() {
        let readme = include_str!("../../README.md");
        let consts: Vec<&str> = include_str!("contract.rs")
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert!(consts.len() >= 15, "parsed only {consts:?}");
        for c in [ENV_RANK, ENV_GPUS, MODEL_FILE, SHM_DIR] {
            assert!(consts.contains(&c), "{c} not parsed from {consts:?}");
        }
        let missing: Vec<&&str> = consts.iter().filter(|c| !readme.contains(**c)).collect();
        assert!(missing.is_empty(), "not in README.md: {missing:?}");
        for code in [EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PEER_FAILED] {
            assert!(readme.contains(&format!("| {code} |")), "exit code {code}");
        }
        assert!(readme.contains(&format!("| {EXIT_SIGNAL_BASE} + signal |")));
    }
}
