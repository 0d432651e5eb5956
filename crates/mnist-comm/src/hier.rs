//! The hierarchical communicator of a group spanning several nodes: inside a node the ranks
//! share one memory segment ([`ShmComm`] over that node's ranks only), between nodes the node
//! leaders (each node's lowest rank) form a TCP [`Ring`].
//!
//! ```text
//!  node 0: ranks 0 1 2        node 1: ranks 3 4
//!   1. reduce into rank 0      1. reduce into rank 3        (shared memory, per node)
//!   2. rank 0 ◄──── ring all-reduce ────► rank 3            (TCP, leaders only)
//!   3. broadcast from rank 0   3. broadcast from rank 3     (shared memory, per node)
//! ```
//!
//! Broadcast, all-gather and barrier follow the same three stages. A failure inside a node is
//! sent around the ring by its leader; a failure in the ring is passed into each node through
//! the segment's abort flag, so every rank stops naming the rank that failed.

use crate::group::Group;
use crate::reduce::DType;
use crate::reduce::{as_bytes_mut, Elem};
use crate::ring::Ring;
use crate::shm::{OpDesc, ShmComm, OP_ALL_GATHER, OP_ALL_REDUCE, OP_BARRIER};
use crate::{CommError, Communicator, ReduceOp};

/// Communicator of a group spanning several nodes (see the module documentation).
pub struct HierComm {
    rank: usize,
    world: usize,
    /// Node index of every rank.
    node_of: Vec<usize>,
    /// Global ranks of each node, ascending (the first is its leader).
    nodes: Vec<Vec<usize>>,
    /// This node's shared memory (when it has more than one rank).
    local: Option<ShmComm>,
    /// The leaders' ring (leaders only).
    ring: Option<Ring>,
    seq: u64,
    sent: u64,
    poisoned: Option<String>,
    /// Keeps the rendezvous connections open for the whole run.
    _group: Group,
}

/// Length-prefixed concatenation of `parts`.
fn pack(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// The inverse of [`pack`], expecting `count` parts.
fn unpack(b: &[u8], count: usize) -> Option<Vec<Vec<u8>>> {
    let mut at = 0usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let n = u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?) as usize;
        out.push(b.get(at + 8..at.checked_add(8 + n)?)?.to_vec());
        at += 8 + n;
    }
    (at == b.len()).then_some(out)
}

impl HierComm {
    /// Assemble from the parts [`crate::connect`] built.
    pub(crate) fn new(
        group: Group,
        node_of: Vec<usize>,
        local: Option<ShmComm>,
        ring: Option<Ring>,
    ) -> HierComm {
        let count = node_of.iter().max().map_or(1, |m| m + 1);
        let mut nodes = vec![Vec::new(); count];
        for (r, &k) in node_of.iter().enumerate() {
            nodes[k].push(r);
        }
        HierComm {
            rank: group.rank,
            world: group.world,
            node_of,
            nodes,
            local,
            ring,
            seq: 0,
            sent: 0,
            poisoned: None,
            _group: group,
        }
    }

    fn begin(&mut self) -> Result<(), CommError> {
        if let Some(first) = &self.poisoned {
            return Err(CommError::Poisoned {
                rank: self.rank,
                first: first.clone(),
            });
        }
        self.seq += 1;
        Ok(())
    }

    /// A stage failed: tell the ring and this node (each only once), remember, return it.
    fn spread<T>(&mut self, r: Result<T, CommError>) -> Result<T, CommError> {
        let e = match r {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if let Some(ring) = &mut self.ring {
            let _ = ring.fail_out(&e);
        }
        if let Some(l) = &mut self.local {
            l.abort(&e.to_string());
        }
        self.poisoned.get_or_insert_with(|| e.to_string());
        Err(e)
    }

    fn my_node(&self) -> usize {
        self.node_of[self.rank]
    }

    fn all_reduce<T: Elem>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<(), CommError> {
        let d = OpDesc {
            op: OP_ALL_REDUCE,
            dtype: T::DTYPE as u64,
            count: buf.len() as u64,
            extra: u64::from(op == ReduceOp::Average),
        };
        self.begin()?;
        if let Some(l) = &mut self.local {
            let r = l.reduce_sum_to_first(buf, &d);
            self.spread(r)?;
        }
        if let Some(ring) = &mut self.ring {
            let divide = (op == ReduceOp::Average).then_some(self.world);
            let r = ring.all_reduce(buf, self.seq, &d, divide);
            self.spread(r)?;
        }
        if let Some(l) = &mut self.local {
            let r = l.broadcast_as(as_bytes_mut(buf), 0, &d);
            self.spread(r)?;
        }
        let bytes = std::mem::size_of_val(buf) as u64;
        let w = self.world as u64;
        self.sent += 2 * bytes * (w - 1) / w;
        Ok(())
    }
}

impl Communicator for HierComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    crate::typed_all_reduce_via_generic!();
    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<(), CommError> {
        let d = OpDesc::broadcast(self.rank, self.world, buf.len(), root)?;
        self.begin()?;
        let (root_node, mine) = (self.node_of[root], self.my_node());
        let local_root = self.nodes[root_node].iter().position(|&r| r == root);
        if mine == root_node {
            if let (Some(l), Some(lr)) = (&mut self.local, local_root) {
                let r = l.broadcast_as(buf, lr, &d);
                self.spread(r)?;
            }
        }
        if let Some(ring) = &mut self.ring {
            let r = ring.broadcast(buf, root_node, self.seq, &d);
            self.spread(r)?;
        }
        if mine != root_node {
            if let Some(l) = &mut self.local {
                let r = l.broadcast_as(buf, 0, &d);
                self.spread(r)?;
            }
        }
        if self.rank == root {
            self.sent += (buf.len() * (self.world - 1)) as u64;
        }
        Ok(())
    }
    fn all_gather_bytes(&mut self, send: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        let d = OpDesc {
            op: OP_ALL_GATHER,
            dtype: DType::U8 as u64,
            count: send.len() as u64,
            extra: 0,
        };
        self.begin()?;
        let parts = match &mut self.local {
            Some(l) => {
                let r = l.all_gather_as(send, &d);
                self.spread(r)?
            }
            None => vec![send.to_vec()],
        };
        let mut full = Vec::new();
        let seq = self.seq;
        if let Some(ring) = &mut self.ring {
            let r = ring.all_gather(pack(&parts), seq, &d);
            let blobs = self.spread(r)?;
            let mut all = vec![Vec::new(); self.world];
            for (k, blob) in blobs.iter().enumerate() {
                let members = &self.nodes[k];
                let Some(ps) = unpack(blob, members.len()) else {
                    let e = CommError::Mismatch {
                        rank: self.rank,
                        seq,
                        detail: format!("node {k}'s all_gather parts are malformed"),
                    };
                    return self.spread(Err(e));
                };
                for (&r, p) in members.iter().zip(ps) {
                    all[r] = p;
                }
            }
            full = pack(&all);
        }
        if let Some(l) = &mut self.local {
            let leader = self.ring.is_some();
            let r = l.all_gather_as(if leader { &full } else { &[] }, &d);
            let got = self.spread(r)?;
            if !leader {
                full = got.into_iter().next().unwrap_or_default();
            }
        }
        let Some(out) = unpack(&full, self.world) else {
            let e = CommError::Mismatch {
                rank: self.rank,
                seq,
                detail: "the gathered parts are malformed".into(),
            };
            return self.spread(Err(e));
        };
        self.sent += (send.len() * (self.world - 1)) as u64;
        Ok(out)
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        let d = OpDesc {
            op: OP_BARRIER,
            dtype: DType::U8 as u64,
            count: 0,
            extra: 0,
        };
        self.begin()?;
        if let Some(l) = &mut self.local {
            let r = l.barrier_as(&d);
            self.spread(r)?;
        }
        if let Some(ring) = &mut self.ring {
            let r = ring.barrier(self.seq, &d);
            self.spread(r)?;
        }
        if let Some(l) = &mut self.local {
            let r = l.barrier_as(&d);
            self.spread(r)?;
        }
        Ok(())
    }
    fn bytes_sent(&self) -> u64 {
        self.sent
    }
    fn abort(&mut self, reason: &str) {
        let msg = format!("rank {} aborted: {reason}", self.rank);
        if let Some(ring) = &mut self.ring {
            ring.abort(&msg);
        }
        if let Some(l) = &mut self.local {
            l.abort(&msg);
        }
        self.poisoned.get_or_insert(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_and_rejects_garbage() {
        let parts = vec![vec![], vec![1u8, 2, 3], vec![9; 100]];
        assert_eq!(unpack(&pack(&parts), 3), Some(parts.clone()));
        assert_eq!(unpack(&pack(&parts), 2), None);
        assert_eq!(unpack(&pack(&parts)[..20], 3), None);
    }
}
