//! MPI launchers: Open MPI's `mpirun` (`OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`,
//! `OMPI_COMM_WORLD_LOCAL_RANK`, `OMPI_COMM_WORLD_LOCAL_SIZE`; run id from
//! `OMPI_MCA_ess_base_jobid` or `PMIX_NAMESPACE`; machines from `OMPI_MCA_orte_num_nodes`)
//! and PMI launchers (`PMI_RANK`, `PMI_SIZE`; Hydra's `MPI_LOCALRANKID`/`MPI_LOCALNRANKS`;
//! run id from `PMI_JOBID`).
//!
//! On one machine the master is 127.0.0.1; across machines `MASTER_ADDR` must name rank 0's
//! host (`mpirun -x MASTER_ADDR=host0`), since MPI launchers do not say where rank 0 runs.
//! The port is `MASTER_PORT`, else [`crate::default_port`] of the run id.

use crate::vars::Vars;
use crate::{default_port, slurm, Engine, EnvError, Meeting, Placement};

fn contradiction(engine: &str, detail: String) -> EnvError {
    EnvError::Contradiction {
        engine: engine.into(),
        detail,
    }
}

/// Rank/world/local checks shared by both.
fn check(
    engine: &str,
    names: [&str; 4],
    [rank, world, local_rank, local]: [usize; 4],
) -> Result<(), EnvError> {
    let [r, w, lr, l] = names;
    if world == 0 || rank >= world {
        return Err(contradiction(
            engine,
            format!("{r}={rank} is not below {w}={world}"),
        ));
    }
    if local == 0 || local_rank >= local {
        return Err(contradiction(
            engine,
            format!("{lr}={local_rank} is not below {l}={local}"),
        ));
    }
    if local > world {
        return Err(contradiction(
            engine,
            format!("{l}={local} is larger than {w}={world}"),
        ));
    }
    Ok(())
}

/// The master for an MPI job on `nnodes` machines.
fn serve(v: &Vars, engine: &str, nnodes: usize, run_id: Option<&str>) -> Result<Meeting, EnvError> {
    let host = match v.text("MASTER_ADDR")? {
        Some(h) => h.to_string(),
        None if nnodes <= 1 => "127.0.0.1".to_string(),
        None => {
            return Err(EnvError::Missing {
                engine: engine.into(),
                missing: "MASTER_ADDR".into(),
                why: format!(
                "the job spans {nnodes} machines and the launcher does not say where rank 0 runs; \
                     pass rank 0's host, e.g. mpirun -x MASTER_ADDR=host0"
            ),
            })
        }
    };
    let (port, port_from) = match (v.port("MASTER_PORT")?, run_id) {
        (Some(p), _) => (p, "MASTER_PORT".to_string()),
        (None, Some(id)) => (default_port(id), format!("20000 + FNV-1a({id}) mod 12000")),
        (None, None) => (29500, "default 29500: no run id to derive one from".into()),
    };
    Ok(Meeting::Serve {
        host,
        port,
        port_from,
    })
}

/// Open MPI's placement, if `OMPI_COMM_WORLD_RANK` or `OMPI_COMM_WORLD_SIZE` is set.
pub(crate) fn detect_ompi(v: &Vars) -> Result<Option<Placement>, EnvError> {
    const E: &str = "Open MPI";
    let names = [
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ];
    if !v.has(names[0]) && !v.has(names[1]) {
        return Ok(None);
    }
    let why = "mpirun sets all four OMPI_COMM_WORLD_* variables";
    let vals = [
        v.need(E, names[0], why)?,
        v.need(E, names[1], why)?,
        v.need(E, names[2], why)?,
        v.need(E, names[3], why)?,
    ];
    check(E, names, vals)?;
    let [rank, world, local_rank, local] = vals;
    if let (Some(pr), Some(ps)) = (v.num("PMI_RANK")?, v.num("PMI_SIZE")?) {
        if (pr, ps) != (rank, world) {
            return Err(contradiction(
                "Open MPI and PMI",
                format!(
                    "OMPI_COMM_WORLD_RANK={rank} OMPI_COMM_WORLD_SIZE={world} but PMI_RANK={pr} PMI_SIZE={ps}"
                ),
            ));
        }
    }
    // Without a job id the flags must name the run (`--run-id`, checked by `resolve`).
    let run_id = match v.text("OMPI_MCA_ess_base_jobid")? {
        Some(j) => Some(format!("ompi-{j}")),
        None => v.text("PMIX_NAMESPACE")?.map(|ns| format!("ompi-{ns}")),
    };
    let mut notes = Vec::new();
    let nnodes = match v.num("OMPI_MCA_orte_num_nodes")? {
        Some(n) if n >= 1 => n,
        _ if local == world => 1,
        _ => {
            notes.push("number of machines estimated from OMPI_COMM_WORLD_LOCAL_SIZE".into());
            world.div_ceil(local)
        }
    };
    if local == world && nnodes != 1 {
        return Err(contradiction(
            E,
            format!(
                "OMPI_COMM_WORLD_LOCAL_SIZE={local} equals OMPI_COMM_WORLD_SIZE={world}, but OMPI_MCA_orte_num_nodes={nnodes}"
            ),
        ));
    }
    // mpirun fills machines in blocks by default; host names tell machines apart either way.
    let node_rank = if nnodes <= 1 {
        0
    } else {
        ((rank - local_rank) / local).min(nnodes - 1)
    };
    let meeting = serve(v, E, nnodes, run_id.as_deref())?;
    if let Some(n) = slurm::batch_note(v) {
        notes.push(n);
    }
    Ok(Some(Placement {
        engine: Engine::OpenMpi,
        rank,
        local_rank,
        world_size: world,
        local_world_size: local,
        node_rank,
        nnodes,
        run_id,
        meeting: Some(meeting),
        evidence: Vec::new(),
        notes,
    }))
}

/// A PMI launcher's placement, if `PMI_RANK` or `PMI_SIZE` is set.
pub(crate) fn detect_pmi(v: &Vars) -> Result<Option<Placement>, EnvError> {
    const E: &str = "PMI";
    if !v.has("PMI_RANK") && !v.has("PMI_SIZE") {
        return Ok(None);
    }
    let rank = v.need(E, "PMI_RANK", "PMI_SIZE is set")?;
    let world = v.need(E, "PMI_SIZE", "PMI_RANK is set")?;
    let mut notes = Vec::new();
    let (local_rank, local) = match (v.num("MPI_LOCALRANKID")?, v.num("MPI_LOCALNRANKS")?) {
        (Some(lr), Some(l)) => (lr, l),
        (None, None) if !v.has("MASTER_ADDR") => {
            notes.push("no MPI_LOCALRANKID/MPI_LOCALNRANKS and no MASTER_ADDR: all processes on this machine".into());
            (rank, world)
        }
        (None, None) => {
            notes.push(
                "no MPI_LOCALRANKID/MPI_LOCALNRANKS: each process is treated as its own machine"
                    .into(),
            );
            (0, 1)
        }
        (Some(_), None) => {
            return Err(EnvError::Missing {
                engine: E.into(),
                missing: "MPI_LOCALNRANKS".into(),
                why: "MPI_LOCALRANKID is set".into(),
            })
        }
        (None, Some(_)) => {
            return Err(EnvError::Missing {
                engine: E.into(),
                missing: "MPI_LOCALRANKID".into(),
                why: "MPI_LOCALNRANKS is set".into(),
            })
        }
    };
    check(
        E,
        ["PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"],
        [rank, world, local_rank, local],
    )?;
    let nnodes = world.div_ceil(local);
    let node_rank = if nnodes <= 1 {
        0
    } else {
        ((rank - local_rank) / local).min(nnodes - 1)
    };
    let job = v.text("PMI_JOBID")?.map(|j| format!("pmi-{j}"));
    let meeting = serve(v, E, nnodes, job.as_deref())?;
    let run_id = match (&job, &meeting) {
        (Some(j), _) => j.clone(),
        (None, Meeting::Serve { host, port, .. }) => format!("pmi-{host}-{port}"),
        (None, _) => "pmi".into(),
    };
    Ok(Some(Placement {
        engine: Engine::Pmi,
        rank,
        local_rank,
        world_size: world,
        local_world_size: local,
        node_rank,
        nnodes,
        run_id: Some(run_id),
        meeting: Some(meeting),
        evidence: Vec::new(),
        notes,
    }))
}
