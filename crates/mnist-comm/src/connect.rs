//! [`connect`]: join the group named by a worker's identity and pick the backend.

use crate::group::{
    self, await_ready, await_welcome, send_msg, send_welcome, Group, JoinSpec, Meeting, Msg,
};
use crate::shm::{shm_name_for, Segment, ShmComm, SHM_MAX_WORLD};
use crate::{CommError, Communicator, Solo, TcpComm};
use mnist_common::contract::WorkerIdentity;
use std::time::{Duration, Instant};

/// Which backend carries the collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transport {
    /// Shared memory when every rank reports the same host name, else TCP.
    #[default]
    Auto,
    /// Shared memory; an error if the ranks are on different hosts.
    Shm,
    /// TCP through rank 0, even on one host.
    Tcp,
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
    let shm_plan = (opts.transport != Transport::Tcp && all_local).then(|| shm_name_for(run_id));
    let deadline = Instant::now() + opts.rendezvous_timeout;
    let spec = JoinSpec {
        rank,
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
        let use_shm = match opts.transport {
            Transport::Tcp => false,
            // Nodes of a multi-node job (they meet through the TCP store) may share a host name
            // and even /dev/shm (network namespaces, containers): they talk over the network.
            Transport::Auto => same_host && world <= SHM_MAX_WORLD && identity.store.is_none(),
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
            return Ok((Box::new(TcpComm::new(g, opts.timeout)), payload));
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
            return Ok((Box::new(TcpComm::new(g, opts.timeout)), payload));
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
