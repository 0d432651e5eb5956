//! What each worker is started with: program, arguments and an explicitly built environment,
//! plus the run id and the per-run rendezvous file name. Pure functions, so tests can check
//! the launcher ↔ worker contract without starting anything.

use crate::args::LaunchConfig;
use mnist_common::contract::{
    WorkerIdentity, ENV_ELASTIC, ENV_GPUS, ENV_LOCAL_RANK, ENV_LOCAL_WORLD_SIZE, ENV_NNODES,
    ENV_NODE_RANK, ENV_OMP_NUM_THREADS, ENV_RANK, ENV_RENDEZVOUS, ENV_RENDEZVOUS_ADDR,
    ENV_RENDEZVOUS_TIMEOUT, ENV_RESTART_ROUND, ENV_RUN_ID, ENV_STORE, ENV_WORLD_SIZE,
};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Variables the launcher owns: inherited values are dropped so a launcher started from
/// inside another job never passes on a stale identity.
const OWNED: &[&str] = &[
    ENV_RANK,
    ENV_LOCAL_RANK,
    ENV_WORLD_SIZE,
    ENV_LOCAL_WORLD_SIZE,
    ENV_RENDEZVOUS,
    ENV_RUN_ID,
    ENV_RENDEZVOUS_TIMEOUT,
    ENV_GPUS,
    ENV_STORE,
    ENV_NODE_RANK,
    ENV_NNODES,
    ENV_RESTART_ROUND,
    ENV_ELASTIC,
];

/// Where this node's workers sit in the job.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Global rank of this node's first worker.
    pub first_rank: usize,
    /// Workers in the whole job.
    pub world_size: usize,
    /// This node's place among the nodes of the current round, 0 … nnodes-1 (the workers'
    /// `GROUP_RANK`; equals `--node-rank` until a node is lost).
    pub node_rank: usize,
    /// Number of nodes in the current round.
    pub nnodes: usize,
    /// The TCP rendezvous store `HOST:PORT` (several nodes).
    pub store: Option<String>,
    /// The address this node advertises (several nodes): rank 0 advertises its group socket
    /// there (`MNIST_RENDEZVOUS_ADDR`).
    pub advertised_addr: Option<String>,
}

impl Layout {
    /// One machine with `nproc` workers.
    pub fn single(nproc: usize) -> Self {
        Layout {
            first_rank: 0,
            world_size: nproc,
            node_rank: 0,
            nnodes: 1,
            store: None,
            advertised_addr: None,
        }
    }
}

/// One worker's command.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSpec {
    /// Its identity (rank, world size, rendezvous).
    pub identity: WorkerIdentity,
    /// The program.
    pub program: PathBuf,
    /// The training flags given to the launcher (the identity is in the environment).
    pub args: Vec<OsString>,
    /// The complete environment (the child starts from an empty one).
    pub env: Vec<(OsString, OsString)>,
}

/// A fresh run id: hex of this process's id, the time in nanoseconds and a random number
/// (std's per-process random hash keys), so concurrent and successive runs never collide.
pub fn new_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    format!(
        "{:x}-{:x}-{:016x}",
        std::process::id(),
        nanos as u64,
        h.finish()
    )
}

/// The rendezvous file of run `run_id`: `<temp dir>/mnist-ddp-<run_id>.rdzv`.
pub fn rendezvous_path(run_id: &str) -> PathBuf {
    std::env::temp_dir().join(mnist_common::contract::rendezvous_file_name(run_id))
}

/// `OMP_NUM_THREADS` for each of `nproc` workers on `cores` cores: `max(1, cores / nproc)`.
pub fn omp_threads(cores: usize, nproc: usize) -> usize {
    (cores / nproc.max(1)).max(1)
}

/// The commands for all ranks. `parent_env` is the launcher's environment (inherited except
/// for the contract's variables); `OMP_NUM_THREADS` is set to [`omp_threads`] unless it is
/// already there; `rendezvous` is `None` for a single worker (and for several nodes, which meet
/// through `layout.store`).
pub fn worker_specs(
    cfg: &LaunchConfig,
    run_id: &str,
    rendezvous: Option<&Path>,
    layout: &Layout,
    parent_env: impl IntoIterator<Item = (OsString, OsString)>,
    cores: usize,
) -> Vec<WorkerSpec> {
    let mut base: BTreeMap<OsString, OsString> = parent_env.into_iter().collect();
    for k in OWNED {
        base.remove(&OsString::from(k));
    }
    base.entry(ENV_OMP_NUM_THREADS.into())
        .or_insert_with(|| omp_threads(cores, cfg.nproc).to_string().into());
    if let Some(g) = &cfg.gpus {
        let list = g.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        base.insert(ENV_GPUS.into(), list.into());
    }
    if let Some(a) = &layout.advertised_addr {
        base.insert(ENV_RENDEZVOUS_ADDR.into(), a.into());
    }
    (0..cfg.nproc)
        .map(|local_rank| {
            let identity = WorkerIdentity {
                rank: layout.first_rank + local_rank,
                local_rank,
                world_size: layout.world_size,
                local_world_size: cfg.nproc,
                node_rank: layout.node_rank,
                nnodes: layout.nnodes,
                rendezvous: rendezvous.map(Path::to_path_buf),
                store: layout.store.clone(),
                run_id: Some(run_id.to_string()),
                rendezvous_timeout_s: cfg.rendezvous_timeout_s,
            };
            let mut env = base.clone();
            env.extend(
                identity
                    .to_env()
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into())),
            );
            let args = cfg.worker_args.clone();
            WorkerSpec {
                identity,
                program: cfg.worker_bin.clone(),
                args,
                env: env.into_iter().collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(nproc: usize, gpus: Option<Vec<usize>>) -> LaunchConfig {
        LaunchConfig {
            nproc,
            gpus,
            worker_bin: "/w".into(),
            worker_args: vec!["--epochs".into(), "2".into()],
            log_dir: "/l".into(),
            rendezvous_timeout_s: 30.0,
            grace_period: Duration::from_secs(1),
            notes: vec![],
            multi: None,
            max_restarts: 0,
        }
    }

    fn get<'a>(s: &'a WorkerSpec, k: &str) -> Option<&'a str> {
        s.env
            .iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.to_str())
    }

    #[test]
    fn identity_env_args_and_inheritance() {
        let parent = [
            ("PATH", "/bin"),
            ("RANK", "9"),
            ("MNIST_GPUS", "5"),
            ("CUDA_VISIBLE_DEVICES", "1,3"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let rdzv = rendezvous_path("abc");
        let specs = worker_specs(
            &cfg(2, Some(vec![1, 0])),
            "abc",
            Some(&rdzv),
            &Layout::single(2),
            parent,
            8,
        );
        assert_eq!(specs.len(), 2);
        let s = &specs[1];
        assert_eq!(get(s, "RANK"), Some("1"));
        assert_eq!(get(s, "WORLD_SIZE"), Some("2"));
        assert_eq!(get(s, "PATH"), Some("/bin"));
        assert_eq!(get(s, "CUDA_VISIBLE_DEVICES"), Some("1,3"));
        assert_eq!(get(s, "MNIST_GPUS"), Some("1,0"));
        assert_eq!(get(s, "OMP_NUM_THREADS"), Some("4"));
        assert_eq!(get(s, "MNIST_RUN_ID"), Some("abc"));
        assert_eq!(get(s, "MNIST_RENDEZVOUS"), rdzv.to_str());
        assert_eq!(s.args, ["--epochs", "2"]);
        assert_eq!(get(s, "LOCAL_RANK"), Some("1"));
        assert_eq!(get(s, "LOCAL_WORLD_SIZE"), Some("2"));
    }

    #[test]
    fn single_worker_has_no_rendezvous_and_user_omp_wins() {
        let parent = [("OMP_NUM_THREADS", "3"), ("MNIST_RENDEZVOUS", "/stale")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let specs = worker_specs(&cfg(1, None), "x", None, &Layout::single(1), parent, 8);
        assert_eq!(get(&specs[0], "OMP_NUM_THREADS"), Some("3"));
        assert_eq!(get(&specs[0], "MNIST_RENDEZVOUS"), None);
        assert_eq!(get(&specs[0], "MNIST_GPUS"), None);
    }

    #[test]
    fn second_node_ranks_store_and_address() {
        let parent = [("GROUP_RANK", "7"), ("MNIST_RENDEZVOUS_ADDR", "9.9.9.9")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let layout = Layout {
            first_rank: 3,
            world_size: 5,
            node_rank: 1,
            nnodes: 2,
            store: Some("10.0.0.1:29500".into()),
            advertised_addr: Some("10.0.0.2".into()),
        };
        let specs = worker_specs(&cfg(2, None), "r", None, &layout, parent, 8);
        let s = &specs[1];
        assert_eq!(get(s, "RANK"), Some("4"));
        assert_eq!(get(s, "LOCAL_RANK"), Some("1"));
        assert_eq!(get(s, "WORLD_SIZE"), Some("5"));
        assert_eq!(get(s, "LOCAL_WORLD_SIZE"), Some("2"));
        assert_eq!(get(s, "GROUP_RANK"), Some("1"));
        assert_eq!(get(s, "MNIST_NNODES"), Some("2"));
        assert_eq!(get(s, "MNIST_STORE"), Some("10.0.0.1:29500"));
        assert_eq!(get(s, "MNIST_RENDEZVOUS_ADDR"), Some("10.0.0.2"));
        assert_eq!(get(s, "MNIST_RENDEZVOUS"), None);
        assert_eq!(s.identity.rank, 4);
    }

    #[test]
    fn omp_and_run_ids() {
        assert_eq!(
            (omp_threads(8, 3), omp_threads(2, 4), omp_threads(0, 0)),
            (2, 1, 1)
        );
        let (a, b) = (new_run_id(), new_run_id());
        assert_ne!(a, b);
        assert_ne!(rendezvous_path(&a), rendezvous_path(&b));
        assert!(rendezvous_path(&a).starts_with(std::env::temp_dir()));
    }
}
