//! Who this worker is: its flags over what the engine that started it says
//! ([`mnist_env::resolve`]), turned into the launcher ↔ worker contract's
//! [`WorkerIdentity`]. Under env:// semantics (Slurm, `mpirun`, Kubeflow) global rank 0
//! serves the run's store at `MASTER_ADDR:MASTER_PORT` itself.

use mnist_common::contract::WorkerIdentity;
use mnist_env::{Explicit, Meeting, Placement};
use mnist_rdzv::StoreServer;

/// A resolved identity, with the store rank 0 serves (kept alive for the whole run).
pub struct Resolved {
    /// The worker's identity.
    pub identity: WorkerIdentity,
    /// How it was found, for the first log line.
    pub placement: Placement,
    /// The store this process serves, if it is rank 0 under env:// semantics.
    pub server: Option<StoreServer>,
}

/// Why the placement failed, and whether it is bad input (flags, variables) or not.
pub enum Failure {
    /// The flags or the environment cannot work (exit 2).
    Input(anyhow::Error),
    /// The store could not be served (exit 1).
    Serve(anyhow::Error),
}

/// Resolve `flags` against the process environment and, on rank 0 under env:// semantics,
/// start the store.
pub fn resolve(flags: &Explicit, rendezvous_timeout_s: f64) -> Result<Resolved, Failure> {
    let env: mnist_env::Env = std::env::vars().collect();
    let p = mnist_env::resolve(flags, &env)
        .map_err(|e| Failure::Input(anyhow::Error::new(e).context("cannot place this worker")))?;
    let mut server = None;
    if let Some(Meeting::Serve { port, .. }) = &p.meeting {
        if p.rank == 0 && p.world_size > 1 {
            let run_id = p.run_id.as_deref().unwrap_or_default();
            let s = StoreServer::start(*port, run_id).map_err(|e| {
                Failure::Serve(anyhow::Error::new(e).context(format!(
                    "rank 0 serves the store of run {run_id} ({}; set MASTER_PORT to a free port)",
                    p.meeting.as_ref().map(|m| m.to_string()).unwrap_or_default()
                )))
            })?;
            server = Some(s);
        }
    }
    let (rendezvous, store) = match &p.meeting {
        Some(Meeting::File(f)) => (Some(f.clone()), None),
        Some(m) => (None, m.store_endpoint(p.rank)),
        None => (None, None),
    };
    let identity = WorkerIdentity {
        rank: p.rank,
        local_rank: p.local_rank,
        world_size: p.world_size,
        local_world_size: p.local_world_size,
        node_rank: p.node_rank,
        nnodes: p.nnodes,
        rendezvous,
        store,
        run_id: p.run_id.clone(),
        rendezvous_timeout_s,
    };
    Ok(Resolved {
        identity,
        placement: p,
        server,
    })
}
