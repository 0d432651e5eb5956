//! [`connect`]: join the group named by a worker's identity and pick the backend.

use crate::group::{
    self, await_ready, await_welcome, recv_msg, send_msg, send_welcome, Group, JoinSpec, Meeting,
    Msg,
};
use crate::hier::HierComm;
use crate::ring::Ring;
use crate::shm::{shm_name_for, Segment, ShmComm, SHM_MAX_WORLD};
use crate::{CommError, Communicator, Solo, TcpComm};
use mnist_common::contract::WorkerIdentity;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Which backend carries the collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transport {
    /// Ranks with the same node rank (`GROUP_RANK`) and host name form a node: shared memory
    /// inside a node, a TCP ring between node leaders ([`crate::HierComm`]); one node is
    /// [`ShmComm`] alone.
    #[default]
    Auto,
    /// Shared memory; an error if the ranks are on different hosts.
    Shm,
    /// Every rank its own node: the TCP ring alone, even on one host (tests and benchmarks of
    /// the inter-node path).
    Tcp,
    /// The old star through rank 0 ([`TcpComm`]), kept for benchmarks only.
    Star,
}

impl Transport {
    /// Parse `auto`, `shm`, `tcp` or `star` (the values of `MNIST_COMM_TRANSPORT`).
    pub fn parse(v: &str) -> Option<Transport> {
        match v {
            "auto" => Some(Transport::Auto),
            "shm" => Some(Transport::Shm),
            "tcp" => Some(Transport::Tcp),
            "star" => Some(Transport::Star),
            _ => None,
        }
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct CommOptions {
    /// How long a collective waits for its peers before failing (`--timeout`).
    pub timeout: Duration,
    /// How long the rendezvous waits for every rank to join.
    pub rendezvous_timeout: Duration,
    /// Which backend to use.
    pub transport: Transport,
    /// Bytes rank 0 publishes to every rank (for example an NCCL unique id); ignored elsewhere.
    pub rank0_payload: Option<Vec<u8>>,
}

impl Default for CommOptions {
    fn default() -> Self {
        CommOptions {
            timeout: Duration::from_secs(120),
            rendezvous_timeout: Duration::from_secs(60),
            transport: Transport::Auto,
            rank0_payload: None,
        }
    }
}

fn reject_all(g: &mut Group, reason: &str) {
    for s in g.socks.iter_mut().flatten() {
        let _ = send_msg(
            g.rank,
            s,
            &Msg::Reject {
                reason: reason.to_string(),
            },
        );
    }
}

/// Join the group described by `identity` and return its communicator and rank 0's payload
/// (the same bytes on every rank). World size 1 returns [`Solo`] without any file.
///
/// Rank 0 binds an ephemeral TCP port, publishes its address in the rendezvous file (see
/// [`mnist_common::rendezvous`]) or, when `identity.store` is set, in the TCP rendezvous
/// store of node 0's launcher, waits for every rank's hello, removes the file, and tells
/// everyone which transport to use; with shared memory it creates the segment and unlinks it
/// once every rank has mapped it, so nothing is left behind.
pub fn connect(
    identity: &WorkerIdentity,
    opts: CommOptions,
) -> Result<(Box<dyn Communicator>, Vec<u8>), CommError> {
    let (rank, world) = (identity.rank, identity.world_size);
    let err = |detail: String| CommError::Rendezvous { rank, detail };
    if world <= 1 {
        return Ok((Box::new(Solo), opts.rank0_payload.unwrap_or_default()));
    }
    if rank >= world {
        return Err(err(format!("rank {rank} is not below world size {world}")));
    }
    let meeting = match (&identity.store, &identity.rendezvous) {
        (Some(ep), _) => Meeting::Store(ep),
        (None, Some(path)) => Meeting::File(path),
        (None, None) => return Err(err("no rendezvous file or store given".into())),
    };
    let run_id = identity
        .run_id
        .as_deref()
        .ok_or_else(|| err("no run id given".into()))?;
    let all_local = identity.local_world_size == world;
    let shm_plan = (matches!(opts.transport, Transport::Auto | Transport::Shm)
        && all_local
        && identity.nnodes <= 1)
        .then(|| shm_name_for(run_id));
    let deadline = Instant::now() + opts.rendezvous_timeout;
    let spec = JoinSpec {
        rank,
        node_rank: identity.node_rank,
        world,
        all_local_hint: all_local,
        meeting,
        run_id,
        deadline,
        timeout: opts.rendezvous_timeout,
        shm_plan: shm_plan.clone(),
        payload: opts.rank0_payload.clone().unwrap_or_default(),
    };
    if rank == 0 {
        let mut g = group::host_join(&spec)?;
        let same_host = g.hosts.iter().all(|h| *h == g.hosts[0]);
        g.nodes = node_layout(&g, opts.transport);
        let one_node = g.nodes.iter().all(|&n| n == 0);
        let use_shm = match opts.transport {
            Transport::Tcp | Transport::Star => false,
            Transport::Auto => one_node,
            Transport::Shm if !same_host || world > SHM_MAX_WORLD => {
                let reason = format!(
                    "shared memory needs all {world} ranks on one host (at most {SHM_MAX_WORLD}); hosts are {:?}",
                    g.hosts
                );
                reject_all(&mut g, &reason);
                return Err(err(reason));
            }
            Transport::Shm => true,
        };
        let payload = spec.payload.clone();
        if !use_shm {
            send_welcome(&mut g, None)?;
            if one_node {
                return Ok((Box::new(TcpComm::new(g, opts.timeout)), payload));
            }
            let comm = build_hier(g, run_id, &opts)?;
            return Ok((Box::new(comm), payload));
        }
        let name = shm_plan.unwrap_or_else(|| shm_name_for(run_id));
        let seg = match Segment::create(&name, world) {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("cannot create shared memory /dev/shm/{name}: {e}");
                reject_all(&mut g, &reason);
                return Err(err(reason));
            }
        };
        send_welcome(&mut g, Some(name))?;
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
        await_ready(&mut g, wait)?;
        let mut comm = ShmComm::new(g, seg, opts.timeout);
        comm.unlink();
        Ok((Box::new(comm), payload))
    } else {
        let (mut g, sock) = group::guest_join(&spec)?;
        let shm = await_welcome(&mut g, sock, deadline)?;
        let payload = g.payload.clone();
        let Some(name) = shm else {
            if g.nodes.iter().all(|&n| n == 0) {
                return Ok((Box::new(TcpComm::new(g, opts.timeout)), payload));
            }
            let comm = build_hier(g, run_id, &opts)?;
            return Ok((Box::new(comm), payload));
        };
        let seg = Segment::open(&name, world);
        let error = seg.as_ref().err().map(|e| e.to_string());
        if let Some(Some(s)) = g.socks.first_mut() {
            send_msg(
                rank,
                s,
                &Msg::Ready {
                    error: error.clone(),
                },
            )?;
        }
        let seg = seg.map_err(|e| err(format!("cannot map shared memory /dev/shm/{name}: {e}")))?;
        Ok((Box::new(ShmComm::new(g, seg, opts.timeout)), payload))
    }
}

/// Rank 0: the node index of every rank. [`Transport::Tcp`]: every rank its own node;
/// [`Transport::Shm`] and [`Transport::Star`]: one node; [`Transport::Auto`]: ranks with the same
/// node rank and host name share a node (split into pieces of at most [`SHM_MAX_WORLD`]).
/// Nodes are numbered in the order of their lowest rank.
fn node_layout(g: &Group, t: Transport) -> Vec<usize> {
    match t {
        Transport::Tcp => (0..g.world).collect(),
        Transport::Shm | Transport::Star => vec![0; g.world],
        Transport::Auto => {
            let mut seen: BTreeMap<(u64, &str), (usize, usize)> = BTreeMap::new();
            let mut next = 0;
            (0..g.world)
                .map(|r| {
                    let key = (g.node_keys[r], g.hosts[r].as_str());
                    let e = seen.entry(key).or_insert_with(|| {
                        next += 1;
                        (next - 1, 0)
                    });
                    // A full node continues as a fresh one.
                    if e.1 == SHM_MAX_WORLD {
                        *e = (next, 0);
                        next += 1;
                    }
                    e.1 += 1;
                    e.0
                })
                .collect()
        }
    }
}

fn rdv(rank: usize, detail: String) -> CommError {
    CommError::Rendezvous { rank, detail }
}

/// Connect to a data listener at `addr` and say who we are (retrying until `deadline`).
fn dial(
    rank: usize,
    run_id: &str,
    peer: usize,
    addr: &str,
    deadline: Instant,
) -> Result<TcpStream, CommError> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| rdv(rank, format!("rank {peer}'s data address {addr:?}: {e}")))?;
    let mut s = loop {
        match TcpStream::connect_timeout(&sa, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return Err(rdv(
                    rank,
                    format!("cannot reach rank {peer} at {addr}: {e}"),
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = s.set_nodelay(true);
    send_msg(
        rank,
        &mut s,
        &Msg::Data {
            rank: rank as u64,
            run_id: run_id.to_string(),
        },
    )?;
    Ok(s)
}

/// Accept the data connections of the ranks in `expect` on `listener` (others are dropped).
fn accept_from(
    rank: usize,
    run_id: &str,
    listener: &TcpListener,
    expect: &[usize],
    addrs: &[String],
    deadline: Instant,
) -> Result<BTreeMap<usize, TcpStream>, CommError> {
    let io = |op: &str, source| CommError::Io {
        rank,
        op: op.into(),
        source,
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| io("data listener nonblocking", e))?;
    let mut got = BTreeMap::new();
    while got.len() < expect.len() {
        let mut s = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = expect
                        .iter()
                        .filter(|r| !got.contains_key(*r))
                        .map(|&r| format!("rank {r} ({})", addrs[r]))
                        .collect();
                    return Err(rdv(
                        rank,
                        format!("no data connection from {}", missing.join(", ")),
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => return Err(io("accept a data connection", e)),
        };
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        match recv_msg::<Msg>(rank, &mut s, Duration::from_secs(5), "a data connection") {
            Ok(Msg::Data {
                rank: r,
                run_id: id,
            }) if id == run_id && expect.contains(&(r as usize)) => {
                got.entry(r as usize).or_insert(s);
            }
            _ => continue, // not one of ours
        }
    }
    Ok(got)
}

/// Every rank: build the hierarchical communicator once the welcome told the node layout:
/// the node's leader accepts its node's ranks and its ring predecessor, connects to its ring
/// successor, creates the node's segment and waits until its ranks mapped it.
fn build_hier(mut g: Group, run_id: &str, opts: &CommOptions) -> Result<HierComm, CommError> {
    let rank = g.rank;
    let deadline = Instant::now() + opts.rendezvous_timeout;
    let node_of = g.nodes.clone();
    let count = node_of.iter().max().map_or(1, |m| m + 1);
    let mut nodes = vec![Vec::new(); count];
    for (r, &k) in node_of.iter().enumerate() {
        nodes[k].push(r);
    }
    let k = node_of[rank];
    let members = nodes[k].clone();
    let leaders: Vec<usize> = nodes.iter().map(|m| m[0]).collect();
    let listener = g
        .listener
        .take()
        .ok_or_else(|| rdv(rank, "no data listener".into()))?;
    let multi = nodes.iter().any(|m| m.len() > 1);
    // A leader may be waiting for its own node before it can answer the ring.
    let slack = if multi {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    };
    let seg_name = mnist_common::contract::shm_node_name_for(run_id, k);
    let sub = |g: &Group, idx: usize, socks: Vec<Option<TcpStream>>| Group {
        rank: idx,
        world: members.len(),
        hosts: members.iter().map(|&r| g.hosts[r].clone()).collect(),
        pids: members.iter().map(|&r| g.pids[r]).collect(),
        socks,
        payload: Vec::new(),
        node_keys: Vec::new(),
        nodes: Vec::new(),
        addrs: Vec::new(),
        listener: None,
    };
    if members[0] != rank {
        // A node's other ranks: join the leader's segment.
        let idx = members.iter().position(|&r| r == rank).unwrap_or(0);
        let mut s = dial(rank, run_id, members[0], &g.addrs[members[0]], deadline)?;
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
        let from = format!("rank {} (node leader)", members[0]);
        let name = match recv_msg(rank, &mut s, wait, &from)? {
            Msg::MapSegment { name } => name,
            Msg::Reject { reason } => {
                return Err(rdv(rank, format!("rank {} refused: {reason}", members[0])))
            }
            other => {
                return Err(rdv(
                    rank,
                    format!("unexpected message from {from}: {other:?}"),
                ))
            }
        };
        let seg = Segment::open(&name, members.len());
        let error = seg.as_ref().err().map(|e| e.to_string());
        send_msg(rank, &mut s, &Msg::Ready { error })?;
        let seg = seg.map_err(|e| {
            rdv(
                rank,
                format!("cannot map shared memory /dev/shm/{name}: {e}"),
            )
        })?;
        let mut socks: Vec<Option<TcpStream>> = vec![Some(s)];
        socks.resize_with(1, || None);
        // Wait for the leader longer than it waits for the ring, so that it can tell us why.
        let patience = 3 * opts.timeout + 2 * slack + Duration::from_secs(10);
        let local = ShmComm::new(sub(&g, idx, socks), seg, patience).with_names(members.clone());
        return Ok(HierComm::new(g, node_of, Some(local), None));
    }
    // A leader.
    let n = leaders.len();
    let send = dial(
        rank,
        run_id,
        leaders[(k + 1) % n],
        &g.addrs[leaders[(k + 1) % n]],
        deadline,
    )?;
    let prev = leaders[(k + n - 1) % n];
    let mut expect = vec![prev];
    expect.extend_from_slice(&members[1..]);
    let mut conns = accept_from(rank, run_id, &listener, &expect, &g.addrs, deadline)?;
    drop(listener);
    let recv = conns
        .remove(&prev)
        .ok_or_else(|| rdv(rank, format!("no ring connection from rank {prev}")))?;
    let local = if members.len() > 1 {
        let mut socks: Vec<Option<TcpStream>> = vec![None];
        socks.extend(members[1..].iter().map(|r| conns.remove(r)));
        let seg = match Segment::create(&seg_name, members.len()) {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("cannot create shared memory /dev/shm/{seg_name}: {e}");
                for s in socks.iter_mut().flatten() {
                    let _ = send_msg(
                        rank,
                        s,
                        &Msg::Reject {
                            reason: reason.clone(),
                        },
                    );
                }
                return Err(rdv(rank, reason));
            }
        };
        let mut sg = sub(&g, 0, socks);
        for s in sg.socks.iter_mut().flatten() {
            send_msg(
                rank,
                s,
                &Msg::MapSegment {
                    name: seg_name.clone(),
                },
            )?;
        }
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
        await_ready(&mut sg, wait)?;
        let mut l = ShmComm::new(sg, seg, opts.timeout).with_names(members.clone());
        l.unlink();
        Some(l)
    } else {
        None
    };
    let addrs = leaders.iter().map(|&r| g.addrs[r].clone()).collect();
    let ring =
        Ring::new(rank, k, leaders, addrs, send, recv, opts.timeout, slack).map_err(|source| {
            CommError::Io {
                rank,
                op: "start the ring".into(),
                source,
            }
        })?;
    Ok(HierComm::new(g, node_of, local, Some(ring)))
}
