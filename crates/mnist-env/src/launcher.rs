//! Our own launcher's contract (`mnist_common::contract`): `MNIST_RUN_ID` with
//! `MNIST_RENDEZVOUS` or `MNIST_STORE`, and the identity in torchrun's variable names.

use crate::vars::Vars;
use crate::{Engine, EnvError, Meeting, Placement};
use std::path::PathBuf;

const ENGINE: &str = "mnist-launch contract";

/// The contract's placement, if any of its own variables is set.
pub(crate) fn detect(v: &Vars) -> Result<Option<Placement>, EnvError> {
    if !["MNIST_RUN_ID", "MNIST_RENDEZVOUS", "MNIST_STORE"]
        .iter()
        .any(|k| v.has(k))
    {
        return Ok(None);
    }
    let run_id = v.text("MNIST_RUN_ID")?.map(str::to_string);
    let world = v.num("WORLD_SIZE")?.unwrap_or(1);
    let rank = v.num("RANK")?.unwrap_or(0);
    let local_rank = v.num("LOCAL_RANK")?.unwrap_or(rank);
    let local_world = v.num("LOCAL_WORLD_SIZE")?.unwrap_or(world);
    let node_rank = v.num("GROUP_RANK")?.unwrap_or(0);
    let nnodes = v.num("MNIST_NNODES")?.unwrap_or(1);
    let meeting = match (v.text("MNIST_STORE")?, v.text("MNIST_RENDEZVOUS")?) {
        (Some(s), _) => Some(Meeting::Store(s.to_string())),
        (None, Some(f)) => Some(Meeting::File(PathBuf::from(f))),
        (None, None) => None,
    };
    if world > 1 && run_id.is_none() {
        return Err(EnvError::Missing {
            engine: ENGINE.into(),
            missing: "MNIST_RUN_ID".into(),
            why: format!("WORLD_SIZE={world} and the rendezvous variables are set"),
        });
    }
    Ok(Some(Placement {
        engine: Engine::Launcher,
        rank,
        local_rank,
        world_size: world,
        local_world_size: local_world,
        node_rank,
        nnodes,
        run_id,
        meeting,
        evidence: Vec::new(),
        notes: Vec::new(),
    }))
}
