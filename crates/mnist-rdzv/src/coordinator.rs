//! The pure decision logic of the rendezvous server ([`Coordinator`]): who may join, when a
//! round starts, which nodes a later round waits for, and what every node is told when
//! something does not fit. No I/O, unit-tested.

use crate::protocol::{Fingerprint, JoinRequest, NodeEntry, Plan};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// What the server does with a [`JoinRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Registered; wait for the others.
    Wait,
    /// Registered, and the round is complete: start everyone with this plan.
    Complete(Plan),
    /// `--nnodes MIN:MAX`: the node came while a round runs; it is held and joins the next
    /// round (the reason says so).
    Held(String),
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

/// The rendezvous server's decisions, without any I/O (unit-tested). A job runs in rounds:
/// round 0 waits for `--nnodes` nodes (with `MIN:MAX`, for MAX, or for at least MIN when the
/// rendezvous timeout ends); after a failure [`Coordinator::next_round`] waits for the nodes
/// that survived it (and takes any node held meanwhile).
#[derive(Clone, Debug)]
pub struct Coordinator {
    rdzv_id: String,
    min_nodes: usize,
    nnodes: usize,
    reference: Fingerprint,
    joined: BTreeMap<usize, JoinRequest>,
    state: State,
    round: u32,
    /// In a later round: the nodes it waits for (the survivors of the previous round).
    expected: Option<BTreeSet<usize>>,
    /// Nodes that came while a round ran (elastic jobs): they join the next round.
    waiting: BTreeMap<usize, JoinRequest>,
}

impl Coordinator {
    /// A rendezvous for `nnodes` nodes of job `rdzv_id`; `reference` is node 0's fingerprint.
    pub fn new(rdzv_id: &str, nnodes: usize, reference: Fingerprint) -> Self {
        Coordinator {
            rdzv_id: rdzv_id.to_string(),
            min_nodes: nnodes,
            nnodes,
            reference,
            joined: BTreeMap::new(),
            state: State::Gathering,
            round: 0,
            expected: None,
            waiting: BTreeMap::new(),
        }
    }

    /// `--nnodes MIN:MAX`: a round may run with as few as `min` nodes (clamped to 1 … nnodes).
    pub fn with_min_nodes(mut self, min: usize) -> Self {
        self.min_nodes = min.clamp(1, self.nnodes);
        self
    }

    /// Whether the node count may change between rounds (MIN below MAX).
    pub fn elastic(&self) -> bool {
        self.min_nodes < self.nnodes
    }

    /// The fewest nodes a round may run with.
    pub fn min_nodes(&self) -> usize {
        self.min_nodes
    }

    /// The current round (0 for the first).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The plan of the running round, if it started.
    pub fn started(&self) -> Option<&Plan> {
        match &self.state {
            State::Started(p) => Some(p),
            _ => None,
        }
    }

    /// Whether `req` may join this job at all (the same job, node rank, `--nnodes` and
    /// settings); the error names what differs.
    fn validate(&self, req: &JoinRequest) -> Result<(), String> {
        let n = req.node_rank;
        if req.nnodes != self.nnodes {
            return Err(format!(
                "node {n}: --nnodes {}, node 0: {} ({})",
                req.nnodes,
                self.nnodes,
                req.who()
            ));
        }
        if n >= self.nnodes {
            return Err(format!(
                "{}: --node-rank {n} is not below --nnodes {}",
                req.who(),
                self.nnodes
            ));
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
            return Err(r);
        }
        Ok(())
    }

    /// Decide about a registration; `new_run_id` makes the run id if this completes a round.
    pub fn offer(&mut self, req: &JoinRequest, new_run_id: impl FnOnce() -> String) -> Verdict {
        let n = req.node_rank;
        if req.rdzv_id != self.rdzv_id {
            return Verdict::RejectOne(format!(
                "{} belongs to another job: --rdzv-id {:?}, this rendezvous serves {:?}",
                req.who(),
                req.rdzv_id,
                self.rdzv_id
            ));
        }
        match &self.state {
            State::Started(p) => {
                let room = p.nodes.len() + self.waiting.len() < self.nnodes;
                let known =
                    p.nodes.iter().any(|e| e.node_rank == n) || self.waiting.contains_key(&n);
                if self.elastic() && room && !known && self.validate(req).is_ok() {
                    self.waiting.insert(n, req.clone());
                    return Verdict::Held(format!(
                        "{} arrived while round {} runs with {} node(s) ({} processes); it joins at the next round",
                        req.who(),
                        self.round,
                        p.nodes.len(),
                        p.world_size
                    ));
                }
                return Verdict::RejectOne(format!(
                    "{} came too late: the job already started with {} node(s) ({} processes, run {})",
                    req.who(),
                    p.nodes.len(),
                    p.world_size,
                    p.run_id
                ));
            }
            State::Failed(r) => return Verdict::RejectOne(r.clone()),
            State::Gathering => {}
        }
        // In round 0 a bad node means the job cannot start; later, only that node is refused.
        let fail = |s: &mut Self, reason: String| {
            if s.round == 0 {
                s.state = State::Failed(reason.clone());
                Verdict::FailAll(reason)
            } else {
                Verdict::RejectOne(reason)
            }
        };
        if let Err(r) = self.validate(req) {
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
        self.joined.insert(n, req.clone());
        self.try_complete(new_run_id)
    }

    /// Complete the round once every node it waits for is there.
    fn try_complete(&mut self, new_run_id: impl FnOnce() -> String) -> Verdict {
        let all = match &self.expected {
            None => self.joined.len() == self.nnodes,
            Some(e) => {
                self.joined.len() == self.nnodes || e.iter().all(|n| self.joined.contains_key(n))
            }
        };
        if all && self.joined.len() >= self.min_nodes {
            Verdict::Complete(self.form(new_run_id()))
        } else {
            Verdict::Wait
        }
    }

    /// Start the round with the nodes joined: global ranks in node-rank order.
    fn form(&mut self, run_id: String) -> Plan {
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
            run_id,
            world_size: first_rank,
            nodes,
            round: self.round,
            resume: false,
        };
        self.state = State::Started(plan.clone());
        plan
    }

    /// A node's connection went away before its round started. Round 0: the job cannot start
    /// (`FailAll`). A later round: the node is dropped; the round completes without it when
    /// the others are there (`Complete`), fails when fewer than MIN nodes could still come, or
    /// waits on (None). A held node is forgotten (None).
    pub fn left_early(
        &mut self,
        node_rank: usize,
        why: &str,
        new_run_id: impl FnOnce() -> String,
    ) -> Option<Verdict> {
        if let Some(r) = self.waiting.remove(&node_rank) {
            let _ = r;
            return None;
        }
        if !matches!(self.state, State::Gathering) {
            return None;
        }
        let who = self.joined.get(&node_rank)?.who();
        if self.round == 0 {
            let r = format!("{who} left the rendezvous before every node had joined: {why}");
            self.state = State::Failed(r.clone());
            return Some(Verdict::FailAll(r));
        }
        self.joined.remove(&node_rank);
        if let Some(e) = self.expected.as_mut() {
            e.remove(&node_rank);
        }
        let possible: BTreeSet<usize> = self
            .joined
            .keys()
            .chain(self.expected.iter().flatten())
            .copied()
            .collect();
        if possible.len() < self.min_nodes {
            let r = format!(
                "round {}: {who} left while the round formed ({why}); {} node(s) remain and --nnodes needs at least {}",
                self.round,
                possible.len(),
                self.min_nodes
            );
            self.state = State::Failed(r.clone());
            return Some(Verdict::FailAll(r));
        }
        match self.try_complete(new_run_id) {
            Verdict::Wait => None,
            v => Some(v),
        }
    }

    /// The rendezvous timeout of the round ended: with at least MIN nodes joined the round
    /// starts with them (`Complete`), else it fails naming the node ranks that never came.
    /// None if the round started or failed already.
    pub fn expire(
        &mut self,
        waited_s: f64,
        new_run_id: impl FnOnce() -> String,
    ) -> Option<Verdict> {
        if !matches!(self.state, State::Gathering) {
            return None;
        }
        if self.joined.len() >= self.min_nodes && self.elastic() {
            return Some(Verdict::Complete(self.form(new_run_id())));
        }
        let missing: Vec<String> = match &self.expected {
            None => (0..self.nnodes).collect::<Vec<_>>(),
            Some(e) => e.iter().copied().collect(),
        }
        .into_iter()
        .filter(|r| !self.joined.contains_key(r))
        .map(|r| r.to_string())
        .collect();
        let joined: Vec<String> = self.joined.values().map(JoinRequest::who).collect();
        let r = format!(
            "{}node rank(s) {} never joined the rendezvous within {waited_s:.0} s (--rendezvous-timeout); joined: {}",
            if self.round > 0 { format!("round {}: ", self.round) } else { String::new() },
            missing.join(", "),
            if joined.is_empty() { "none".to_string() } else { joined.join(", ") }
        );
        self.state = State::Failed(r.clone());
        Some(Verdict::FailAll(r))
    }

    /// The node ranks of the running round that are not in `lost`.
    pub fn survivors(&self, lost: &BTreeSet<usize>) -> BTreeSet<usize> {
        self.started()
            .map(|p| {
                p.nodes
                    .iter()
                    .map(|e| e.node_rank)
                    .filter(|n| !lost.contains(n))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Begin the next round, waiting for `survivors` (nodes held meanwhile join it at once).
    /// Returns the held nodes that were moved into it.
    pub fn next_round(&mut self, survivors: BTreeSet<usize>) -> Vec<usize> {
        self.round += 1;
        self.state = State::Gathering;
        self.joined = std::mem::take(&mut self.waiting);
        self.expected = Some(survivors);
        self.joined.keys().copied().collect()
    }

    /// The job ended: the held nodes (who must be told), forgotten.
    pub fn take_waiting(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.waiting).into_keys().collect()
    }

    /// Give up: the job failed for `reason` (later registrations hear it).
    pub fn fail(&mut self, reason: &str) {
        self.state = State::Failed(reason.to_string());
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
        let Some(Verdict::FailAll(r)) = c.expire(60.0, String::new) else {
            panic!()
        };
        assert!(r.starts_with("node rank(s) 1, 2 never joined"), "{r}");
        assert!(c.expire(60.0, String::new).is_none());

        let mut c = Coordinator::new("job", 3, fp("none"));
        c.offer(&req(2, 1, "none"), String::new);
        let Some(Verdict::FailAll(r)) = c.left_early(2, "connection closed", String::new) else {
            panic!()
        };
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

    #[test]
    fn a_later_round_waits_for_the_survivors_and_takes_held_nodes() {
        let mut c = Coordinator::new("job", 3, fp("none")).with_min_nodes(2);
        assert!(c.elastic());
        c.offer(&req(0, 1, "none"), String::new);
        c.offer(&req(1, 2, "none"), String::new);
        // Round 0 waits for MAX; at the timeout it starts with the MIN there.
        let Some(Verdict::Complete(p)) = c.expire(30.0, || "r0".into()) else {
            panic!()
        };
        assert_eq!((p.round, p.world_size, p.nodes.len()), (0, 3, 2));
        // A node arriving now is held for the next round.
        let Verdict::Held(why) = c.offer(&req(2, 1, "none"), String::new) else {
            panic!()
        };
        assert!(
            why.contains("node 2") && why.contains("next round"),
            "{why}"
        );
        // Node 1 is lost: the survivors are node 0; held node 2 is in the next round already.
        let survivors = c.survivors(&BTreeSet::from([1]));
        assert_eq!(survivors, BTreeSet::from([0]));
        assert_eq!(c.next_round(survivors), vec![2]);
        let Verdict::Complete(p) = c.offer(&req(0, 1, "none"), || "r1".into()) else {
            panic!()
        };
        assert_eq!((p.round, p.world_size, p.run_id.as_str()), (1, 2, "r1"));
        assert_eq!(
            (p.ranks_of(0), p.ranks_of(2), p.ranks_of(1)),
            (0..1, 1..2, 0..0)
        );
    }

    #[test]
    fn a_later_round_fails_below_min_and_names_who_never_came_back() {
        let mut c = Coordinator::new("job", 3, fp("none")).with_min_nodes(2);
        for n in 0..3 {
            c.offer(&req(n, 1, "none"), String::new);
        }
        assert!(c.started().is_some());
        c.next_round(BTreeSet::from([0, 1, 2]));
        assert_eq!(c.offer(&req(0, 1, "none"), String::new), Verdict::Wait);
        assert_eq!(c.offer(&req(1, 1, "none"), String::new), Verdict::Wait);
        // Node 2 never registers again: at the timeout the round starts with 0 and 1.
        let Some(Verdict::Complete(p)) = c.expire(30.0, || "r1".into()) else {
            panic!()
        };
        assert_eq!((p.round, p.nodes.len()), (1, 2));
        let mut r1 = req(1, 1, "none");
        r1.nnodes = 2;
        let mut r0 = req(0, 1, "none");
        r0.nnodes = 2;
        let mut c2 = Coordinator::new("job", 2, fp("none"));
        c2.offer(&r0, String::new);
        c2.offer(&r1, String::new);
        c2.next_round(BTreeSet::from([0, 1]));
        c2.offer(&r0, String::new);
        // A fixed node count: a node that does not come back fails the round, named.
        let Some(Verdict::FailAll(r)) = c2.expire(30.0, String::new) else {
            panic!()
        };
        assert!(r.starts_with("round 1: node rank(s) 1 never joined"), "{r}");
        // An expected node lost while the round forms, leaving fewer than MIN: fails at once.
        let mut c3 = Coordinator::new("job", 3, fp("none")).with_min_nodes(2);
        for n in 0..3 {
            c3.offer(&req(n, 1, "none"), String::new);
        }
        c3.next_round(BTreeSet::from([0, 1]));
        c3.offer(&req(0, 1, "none"), String::new);
        let Some(Verdict::FailAll(r)) = c3.left_early(0, "closed", String::new) else {
            panic!()
        };
        assert!(
            r.contains("1 node(s) remain and --nnodes needs at least 2"),
            "{r}"
        );
    }
}
