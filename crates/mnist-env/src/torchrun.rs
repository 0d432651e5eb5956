//! torchrun and Kubeflow's PyTorchJob: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `LOCAL_WORLD_SIZE`, `GROUP_RANK`, `GROUP_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, and
//! torchrun's `TORCHELASTIC_RUN_ID`, `TORCHELASTIC_RESTART_COUNT`,
//! `TORCHELASTIC_USE_AGENT_STORE`.
//!
//! Kubeflow's PyTorchJob (without `nprocPerNode`) runs one process per pod and sets only
//! `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`: each pod is then its own node.

use crate::vars::Vars;
use crate::{Engine, EnvError, Meeting, Placement};

/// The placement, if `RANK`, `WORLD_SIZE` or `TORCHELASTIC_RUN_ID` is set.
pub(crate) fn detect(v: &Vars) -> Result<Option<Placement>, EnvError> {
    if !["RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"]
        .iter()
        .any(|k| v.has(k))
    {
        return Ok(None);
    }
    let torchrun = v.has("TORCHELASTIC_RUN_ID");
    let (engine, name) = if torchrun {
        (Engine::Torchrun, "torchrun")
    } else {
        (Engine::EnvUrl, "env:// (RANK/WORLD_SIZE)")
    };
    let present = |k: &str| format!("{k} is set");
    let rank = v.need(name, "RANK", &present("WORLD_SIZE or TORCHELASTIC_RUN_ID"))?;
    let world = v.need(name, "WORLD_SIZE", &present("RANK"))?;
    let contradiction = |detail: String| EnvError::Contradiction {
        engine: name.into(),
        detail,
    };
    if world == 0 || rank >= world {
        return Err(contradiction(format!(
            "RANK={rank} is not below WORLD_SIZE={world}"
        )));
    }
    let mut notes = Vec::new();
    let local_rank = v.num("LOCAL_RANK")?;
    let local_world = v.num("LOCAL_WORLD_SIZE")?;
    let (local_rank, local_world, node_rank, nnodes) = match (local_rank, local_world) {
        (None, None) => {
            notes.push("no LOCAL_RANK/LOCAL_WORLD_SIZE: one process per machine".into());
            (0, 1, rank, world)
        }
        (Some(lr), Some(lw)) => {
            if lw == 0 || lr >= lw {
                return Err(contradiction(format!(
                    "LOCAL_RANK={lr} is not below LOCAL_WORLD_SIZE={lw}"
                )));
            }
            if lw > world {
                return Err(contradiction(format!(
                    "LOCAL_WORLD_SIZE={lw} is larger than WORLD_SIZE={world}"
                )));
            }
            if lr > rank {
                return Err(contradiction(format!(
                    "LOCAL_RANK={lr} is larger than RANK={rank}"
                )));
            }
            let group = v.num("GROUP_RANK")?;
            let groups = v.num("GROUP_WORLD_SIZE")?;
            let (g, gs) = match (group, groups) {
                (Some(g), Some(gs)) => (g, gs),
                (Some(g), None) => (g, world.div_ceil(lw).max(g + 1)),
                (None, _) if lw == world => (0, 1),
                (None, _) => {
                    return Err(EnvError::Missing {
                        engine: name.into(),
                        missing: "GROUP_RANK".into(),
                        why: format!(
                            "LOCAL_WORLD_SIZE={lw} < WORLD_SIZE={world}: the processes span several machines"
                        ),
                    })
                }
            };
            if gs == 0 || g >= gs {
                return Err(contradiction(format!(
                    "GROUP_RANK={g} is not below GROUP_WORLD_SIZE={gs}"
                )));
            }
            if gs > world {
                return Err(contradiction(format!(
                    "GROUP_WORLD_SIZE={gs} is larger than WORLD_SIZE={world}"
                )));
            }
            (lr, lw, g, gs)
        }
        (Some(_), None) => {
            return Err(EnvError::Missing {
                engine: name.into(),
                missing: "LOCAL_WORLD_SIZE".into(),
                why: "LOCAL_RANK is set".into(),
            })
        }
        (None, Some(_)) => {
            return Err(EnvError::Missing {
                engine: name.into(),
                missing: "LOCAL_RANK".into(),
                why: "LOCAL_WORLD_SIZE is set".into(),
            })
        }
    };
    let addr = v.text("MASTER_ADDR")?;
    let port = v.port("MASTER_PORT")?;
    let (meeting, run_id) = match (addr, port) {
        (Some(host), Some(port)) => {
            let agent_store = v.get("TORCHELASTIC_USE_AGENT_STORE");
            if torchrun {
                let id = v.text("TORCHELASTIC_RUN_ID")?.unwrap_or("none");
                let attempt = v.num("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0);
                // torchrun's default run id is "none": the master port tells concurrent
                // jobs on one machine apart, the attempt successive restarts.
                let run_id = format!("torchrun-{id}-{port}-a{attempt}");
                let m = if agent_store == Some("True") {
                    Meeting::TorchStore {
                        host: host.to_string(),
                        port,
                        prefix: format!("mnist-ddp/{run_id}"),
                    }
                } else {
                    serve(host, port)
                };
                (Some(m), Some(run_id))
            } else {
                if agent_store == Some("True") {
                    return Err(EnvError::Missing {
                        engine: name.into(),
                        missing: "TORCHELASTIC_RUN_ID".into(),
                        why: "TORCHELASTIC_USE_AGENT_STORE=True says torchrun started this process"
                            .into(),
                    });
                }
                (Some(serve(host, port)), Some(format!("env-{host}-{port}")))
            }
        }
        (Some(_), None) if world > 1 => {
            return Err(EnvError::Missing {
                engine: name.into(),
                missing: "MASTER_PORT".into(),
                why: "MASTER_ADDR is set".into(),
            })
        }
        (None, Some(_)) if world > 1 => {
            return Err(EnvError::Missing {
                engine: name.into(),
                missing: "MASTER_ADDR".into(),
                why: "MASTER_PORT is set".into(),
            })
        }
        // Without MASTER_ADDR/MASTER_PORT the flags must say where to meet (checked by
        // `resolve`).
        _ => (None, None),
    };
    Ok(Some(Placement {
        engine,
        rank,
        local_rank,
        world_size: world,
        local_world_size: local_world,
        node_rank,
        nnodes,
        run_id,
        meeting,
        evidence: Vec::new(),
        notes,
    }))
}

fn serve(host: &str, port: u16) -> Meeting {
    Meeting::Serve {
        host: host.to_string(),
        port,
        port_from: "MASTER_PORT".into(),
    }
}
