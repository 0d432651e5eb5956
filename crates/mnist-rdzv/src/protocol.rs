//! The messages of the rendezvous and the pure decision logic of its server
//! ([`Coordinator`]): who may join, when the job starts, and what every node is told when
//! something does not fit.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

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

/// The job as the rendezvous formed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// A fresh id for this run (the workers' run id; store clients must present it).
    pub run_id: String,
    /// Total number of worker processes.
    pub world_size: usize,
    /// Every node, by node rank.
    pub nodes: Vec<NodeEntry>,
}

impl Plan {
    /// The global ranks of node `node_rank` (empty if there is no such node).
    pub fn ranks_of(&self, node_rank: usize) -> std::ops::Range<usize> {
        self.nodes
            .get(node_rank)
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

/// What the server does with a [`JoinRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Registered; wait for the others.
    Wait,
    /// Registered, and it was the last one: start everyone with this plan.
    Complete(Plan),
    /// Refuse this node only (another job's node, a late node); the others are unaffected.
    RejectOne(String),
    /// The job cannot start: tell every node this reason.
    FailAll(String),
}

#[derive(Clone, Debug)]
enum State {
    Gathering,
    Started(Plan),
    Failed(String),
}

/// The rendezvous server's decisions, without any I/O (unit-tested).
#[derive(Clone, Debug)]
pub struct Coordinator {
    rdzv_id: String,
    nnodes: usize,
    reference: Fingerprint,
    joined: BTreeMap<usize, JoinRequest>,
    state: State,
}

impl Coordinator {
    /// A rendezvous for `nnodes` nodes of job `rdzv_id`; `reference` is node 0's fingerprint.
    pub fn new(rdzv_id: &str, nnodes: usize, reference: Fingerprint) -> Self {
        Coordinator {
            rdzv_id: rdzv_id.to_string(),
            nnodes,
            reference,
            joined: BTreeMap::new(),
            state: State::Gathering,
        }
    }

    /// Whether the job started.
    pub fn started(&self) -> Option<&Plan> {
        match &self.state {
            State::Started(p) => Some(p),
            _ => None,
        }
    }

    /// Decide about a registration; `new_run_id` makes the run id if this completes the job.
    pub fn offer(&mut self, req: &JoinRequest, new_run_id: impl FnOnce() -> String) -> Verdict {
        let n = req.node_rank;
        match &self.state {
            State::Started(p) => {
                return Verdict::RejectOne(format!(
                "{} came too late: the job already started with {} node(s) ({} processes, run {})",
                req.who(),
                p.nodes.len(),
                p.world_size,
                p.run_id
            ))
            }
            State::Failed(r) => return Verdict::RejectOne(r.clone()),
            State::Gathering => {}
        }
        if req.rdzv_id != self.rdzv_id {
            return Verdict::RejectOne(format!(
                "{} belongs to another job: --rdzv-id {:?}, this rendezvous serves {:?}",
                req.who(),
                req.rdzv_id,
                self.rdzv_id
            ));
        }
        let fail = |s: &mut Self, reason: String| {
            s.state = State::Failed(reason.clone());
            Verdict::FailAll(reason)
        };
        if req.nnodes != self.nnodes {
            let r = format!(
                "node {n}: --nnodes {}, node 0: {} ({})",
                req.nnodes,
                self.nnodes,
                req.who()
            );
            return fail(self, r);
        }
        if n >= self.nnodes {
            let r = format!(
                "{}: --node-rank {n} is not below --nnodes {}",
                req.who(),
                self.nnodes
            );
            return fail(self, r);
        }
        if let Some(first) = self.joined.get(&n) {
            let r = format!(
                "node rank {n} was given twice: {} and {}",
                first.who(),
                req.who()
            );
            return fail(self, r);
        }
        let diff = req.fingerprint.diff(&self.reference);
        if !diff.is_empty() {
            let mut r = String::new();
            for (i, (what, mine, theirs)) in diff.iter().enumerate() {
                if i > 0 {
                    r.push_str("; ");
                }
                let _ = write!(r, "node {n}: {what} {mine}, node 0: {theirs}");
            }
            let _ = write!(r, " (the nodes of one job must agree; {})", req.who());
            return fail(self, r);
        }
        self.joined.insert(n, req.clone());
        if self.joined.len() < self.nnodes {
            return Verdict::Wait;
        }
        let mut first_rank = 0;
        let nodes = self
            .joined
            .values()
            .map(|r| {
                let e = NodeEntry {
                    node_rank: r.node_rank,
                    nproc: r.nproc,
                    first_rank,
                    host: r.host.clone(),
                    addr: r.addr.clone(),
                    pid: r.pid,
                };
                first_rank += r.nproc;
                e
            })
            .collect();
        let plan = Plan {
            run_id: new_run_id(),
            world_size: first_rank,
            nodes,
        };
        self.state = State::Started(plan.clone());
        Verdict::Complete(plan)
    }

    /// A node's connection went away before the job started: the job cannot start.
    pub fn left_early(&mut self, node_rank: usize, why: &str) -> Option<String> {
        if !matches!(self.state, State::Gathering) {
            return None;
        }
        let who = self.joined.get(&node_rank)?.who();
        let r = format!("{who} left the rendezvous before every node had joined: {why}");
        self.state = State::Failed(r.clone());
        Some(r)
    }

    /// The rendezvous timed out: the reason names the node ranks that never came (None if the
    /// job started or failed already).
    pub fn expire(&mut self, waited_s: f64) -> Option<String> {
        if !matches!(self.state, State::Gathering) {
            return None;
        }
        let missing: Vec<String> = (0..self.nnodes)
            .filter(|r| !self.joined.contains_key(r))
            .map(|r| r.to_string())
            .collect();
        let joined: Vec<String> = self.joined.values().map(JoinRequest::who).collect();
        let r = format!(
            "node rank(s) {} never joined the rendezvous within {waited_s:.0} s (--rendezvous-timeout); joined: {}",
            missing.join(", "),
            if joined.is_empty() { "none".to_string() } else { joined.join(", ") }
        );
        self.state = State::Failed(r.clone());
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(comp: &str) -> Fingerprint {
        Fingerprint(vec![
            ("--model".into(), "LeNet".into()),
            ("--compression".into(), comp.into()),
        ])
    }

    fn req(node: usize, nproc: usize, comp: &str) -> JoinRequest {
        JoinRequest {
            rdzv_id: "job".into(),
            node_rank: node,
            nnodes: 3,
            nproc,
            host: format!("h{node}"),
            addr: format!("10.0.0.{}", node + 1),
            pid: 100 + node as u32,
            fingerprint: fp(comp),
        }
    }

    #[test]
    fn ranks_follow_node_rank_order_whatever_the_arrival_order() {
        let mut c = Coordinator::new("job", 3, fp("none"));
        assert_eq!(c.offer(&req(2, 1, "none"), || "x".into()), Verdict::Wait);
        assert_eq!(c.offer(&req(0, 2, "none"), || "x".into()), Verdict::Wait);
        let Verdict::Complete(p) = c.offer(&req(1, 3, "none"), || "run".into()) else {
            panic!("not complete")
        };
        assert_eq!(p.world_size, 6);
        assert_eq!(
            (p.ranks_of(0), p.ranks_of(1), p.ranks_of(2)),
            (0..2, 2..5, 5..6)
        );
        assert_eq!(p.nodes[2].addr, "10.0.0.3");
        assert_eq!(c.started().unwrap().run_id, "run");
        // A late node is refused alone, naming itself.
        let Verdict::RejectOne(r) = c.offer(&req(1, 1, "none"), || "y".into()) else {
            panic!()
        };
        assert!(r.contains("node 1") && r.contains("too late"), "{r}");
    }

    #[test]
    fn mismatches_are_named_for_everyone() {
        let mut c = Coordinator::new("job", 3, fp("none"));
        assert_eq!(c.offer(&req(0, 1, "none"), String::new), Verdict::Wait);
        let Verdict::FailAll(r) = c.offer(&req(1, 1, "fp16"), String::new) else {
            panic!()
        };
        assert!(
            r.starts_with("node 1: --compression fp16, node 0: none"),
            "{r}"
        );
        // Once failed, later nodes hear the same reason.
        assert_eq!(
            c.offer(&req(2, 1, "none"), String::new),
            Verdict::RejectOne(r)
        );
    }

    #[test]
    fn duplicates_other_jobs_bad_ranks_and_nnodes() {
        let mut c = Coordinator::new("job", 3, fp("none"));
        c.offer(&req(1, 1, "none"), String::new);
        let mut dup = req(1, 1, "none");
        dup.addr = "10.0.0.9".into();
        let Verdict::FailAll(r) = c.offer(&dup, String::new) else {
            panic!()
        };
        assert!(
            r.contains("node rank 1 was given twice")
                && r.contains("10.0.0.2")
                && r.contains("10.0.0.9"),
            "{r}"
        );

        let mut c = Coordinator::new("job", 3, fp("none"));
        let mut other = req(1, 1, "none");
        other.rdzv_id = "other".into();
        let Verdict::RejectOne(r) = c.offer(&other, String::new) else {
            panic!()
        };
        assert!(r.contains("another job") && r.contains("\"other\""), "{r}");
        // The job itself is unaffected.
        assert_eq!(c.offer(&req(1, 1, "none"), String::new), Verdict::Wait);

        let mut c = Coordinator::new("job", 3, fp("none"));
        let mut big = req(1, 1, "none");
        big.nnodes = 4;
        assert!(
            matches!(c.offer(&big, String::new), Verdict::FailAll(r) if r.starts_with("node 1: --nnodes 4, node 0: 3"))
        );
        let mut c = Coordinator::new("job", 3, fp("none"));
        assert!(
            matches!(c.offer(&req(5, 1, "none"), String::new), Verdict::FailAll(r) if r.contains("--node-rank 5"))
        );
    }

    #[test]
    fn timeouts_and_early_leavers_name_the_nodes() {
        let mut c = Coordinator::new("job", 3, fp("none"));
        c.offer(&req(0, 1, "none"), String::new);
        let r = c.expire(60.0).unwrap();
        assert!(r.starts_with("node rank(s) 1, 2 never joined"), "{r}");
        assert!(c.expire(60.0).is_none());

        let mut c = Coordinator::new("job", 3, fp("none"));
        c.offer(&req(2, 1, "none"), String::new);
        let r = c.left_early(2, "connection closed").unwrap();
        assert!(
            r.contains("node 2 (h2, 10.0.0.3") && r.contains("connection closed"),
            "{r}"
        );
    }

    #[test]
    fn fingerprint_diff_lists_missing_entries() {
        let a = Fingerprint(vec![("a".into(), "1".into()), ("b".into(), "2".into())]);
        let b = Fingerprint(vec![("a".into(), "1".into()), ("c".into(), "3".into())]);
        assert_eq!(
            a.diff(&b),
            vec![
                ("b".into(), "2".into(), "(absent)".into()),
                ("c".into(), "(absent)".into(), "3".into())
            ]
        );
        assert!(a.diff(&a).is_empty());
    }
}
