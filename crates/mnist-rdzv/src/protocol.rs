//! The messages of the rendezvous (the server's decisions about them are in
//! [`crate::coordinator`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The first message on a connection: who is calling.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Hello {
    /// A launcher registering its node.
    Node(JoinRequest),
    /// A worker using the key-value store of a started run.
    Store {
        /// The run id the store was started for (from [`Plan::run_id`]).
        run_id: String,
    },
}

/// Everything that must agree between nodes, as (what, value) pairs, e.g.
/// `("--compression", "fp16")`. Compared entry by entry against node 0's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint(pub Vec<(String, String)>);

impl Fingerprint {
    /// Differences to `reference`, one `(what, ours, theirs)` per entry that differs or exists
    /// on one side only (`"(absent)"`).
    pub fn diff(&self, reference: &Fingerprint) -> Vec<(String, String, String)> {
        let mine: BTreeMap<_, _> = self.0.iter().cloned().collect();
        let theirs: BTreeMap<_, _> = reference.0.iter().cloned().collect();
        let mut keys: Vec<&String> = mine.keys().chain(theirs.keys()).collect();
        keys.sort();
        keys.dedup();
        let absent = || "(absent)".to_string();
        keys.into_iter()
            .filter(|k| mine.get(*k) != theirs.get(*k))
            .map(|k| {
                (
                    k.clone(),
                    mine.get(k).cloned().unwrap_or_else(absent),
                    theirs.get(k).cloned().unwrap_or_else(absent),
                )
            })
            .collect()
    }
}

/// A launcher's registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The job's rendezvous id (`--rdzv-id`): a node of another job is refused.
    pub rdzv_id: String,
    /// This node's rank (`--node-rank`).
    pub node_rank: usize,
    /// Number of nodes this node expects (`--nnodes`).
    pub nnodes: usize,
    /// Worker processes on this node (`--nproc`; may differ between nodes).
    pub nproc: usize,
    /// Host name.
    pub host: String,
    /// The address other nodes reach this node at (an IP address).
    pub addr: String,
    /// The launcher's process id.
    pub pid: u32,
    /// What must agree between nodes.
    pub fingerprint: Fingerprint,
}

impl JoinRequest {
    /// `node 1 (host, 10.0.0.2, pid 7)`, for messages.
    pub fn who(&self) -> String {
        format!(
            "node {} ({}, {}, pid {})",
            self.node_rank, self.host, self.addr, self.pid
        )
    }
}

/// One node of a started job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Its node rank.
    pub node_rank: usize,
    /// Its number of worker processes.
    pub nproc: usize,
    /// The global rank of its first worker (global ranks follow node-rank order).
    pub first_rank: usize,
    /// Its host name.
    pub host: String,
    /// Its advertised address.
    pub addr: String,
    /// Its launcher's process id.
    pub pid: u32,
}

/// The job as the rendezvous formed it (one round of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// A fresh id for this run (the workers' run id; store clients must present it).
    pub run_id: String,
    /// Total number of worker processes.
    pub world_size: usize,
    /// Every node taking part, by node rank (with `--nnodes MIN:MAX` some ranks may be absent).
    pub nodes: Vec<NodeEntry>,
    /// The rendezvous round: 0 for the first, N after the Nth restart (`--max-restarts`).
    pub round: u32,
    /// Whether the workers resume from the job's newest checkpoint (a later round, once the
    /// job has written one; node 0's launcher decides, since only it holds the checkpoint).
    pub resume: bool,
}

impl Plan {
    /// The global ranks of node `node_rank` (empty if it takes no part).
    pub fn ranks_of(&self, node_rank: usize) -> std::ops::Range<usize> {
        self.nodes
            .iter()
            .find(|n| n.node_rank == node_rank)
            .map_or(0..0, |n| n.first_rank..n.first_rank + n.nproc)
    }
}

/// Server → launcher.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToNode {
    /// Every node has joined: start the workers.
    Start(Plan),
    /// This node cannot take part; the reason names what is wrong.
    Reject(String),
    /// The job is over for everyone: the reason names the node that failed or was lost.
    Abort(String),
    /// A worker failed or a node was lost and restarts remain (`--max-restarts`): stop the
    /// workers and register again for round `round` (a new connection, same request).
    Restart {
        /// The round to join.
        round: u32,
        /// What failed, naming the node.
        reason: String,
    },
    /// Heartbeat.
    Ping,
}

/// Launcher → server, after its [`Hello::Node`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromNode {
    /// Heartbeat.
    Ping,
    /// This node's workers have ended; `ok` false when they failed (`detail` says how).
    Leave {
        /// Whether every worker of the node succeeded.
        ok: bool,
        /// How they ended, for the other nodes' messages.
        detail: String,
        /// With `ok` false: whether starting them again could help (false when a worker
        /// refused its input: the same input fails again).
        restartable: bool,
    },
}

/// A store operation of a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreRequest {
    /// Set `key` to `value` (waking every reader waiting for it).
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Get `key`, waiting up to `wait_ms` for it to be set.
    Get {
        /// The key.
        key: String,
        /// Milliseconds to wait.
        wait_ms: u64,
    },
}

/// The store's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreResponse {
    /// The set was done.
    Done,
    /// The value of the key asked for.
    Value(Vec<u8>),
    /// The key was not set within the wait.
    Timeout,
    /// The connection is refused (another run's worker); the reason says why.
    Refused(String),
}
