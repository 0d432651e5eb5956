//! Slurm: a task started by `srun` (alone, or as a step of an `sbatch` script).
//!
//! A task has `SLURM_PROCID` (its rank), `SLURM_STEP_ID`, the step's task count
//! (`SLURM_STEP_NUM_TASKS`, else `SLURM_NTASKS`), its node's tasks (`SLURM_LOCALID` of
//! `SLURM_STEP_TASKS_PER_NODE`, like `2(x3),1`) and nodes (`SLURM_STEP_NODELIST`, like
//! `gpu-[01-03]`; this node is `SLURMD_NODENAME` in it, else `SLURM_NODEID`). The run id is
//! `SLURM_JOB_ID.SLURM_STEP_ID` (Slurm's own name for a step, so two steps of one job never
//! meet); the master is `MASTER_ADDR`, else the step's first node; its port `MASTER_PORT`,
//! else [`crate::default_port`] of the run id.
//!
//! A batch script (and whatever it starts without `srun`) has `SLURM_JOB_ID` and even
//! `SLURM_PROCID=0` but no `SLURM_STEP_ID`: those variables describe the job, not the
//! process, and are ignored. When `mpirun` runs inside a job it starts the process itself:
//! `OMPI_COMM_WORLD_*` then win over the Slurm variables it inherited (from the batch script
//! or from the `srun` that started `mpirun`'s daemon). `srun --mpi=pmi2` sets `PMI_RANK` and
//! `PMI_SIZE` equal to Slurm's; PMI variables for another number of processes mean a PMI
//! launcher (Hydra) inside the job started the process, and they win; the same count with
//! another rank is a contradiction.

use crate::hostlist;
use crate::vars::{Env, Vars};
use crate::{default_port, mpi, Engine, EnvError, Meeting, Placement};

const ENGINE: &str = "Slurm";

/// What a Slurm task's variables say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlurmTask {
    /// `SLURM_PROCID`.
    pub rank: usize,
    /// The step's tasks.
    pub world: usize,
    /// `SLURM_LOCALID`.
    pub local_rank: usize,
    /// Tasks on each node of the step.
    pub tasks_per_node: Vec<usize>,
    /// The step's nodes, expanded.
    pub nodes: Vec<String>,
    /// This node's index in `nodes`.
    pub node: usize,
    /// `SLURM_JOB_ID`.
    pub job_id: String,
    /// `SLURM_STEP_ID`.
    pub step_id: String,
}

impl SlurmTask {
    /// `SLURM_JOB_ID.SLURM_STEP_ID`.
    pub fn run_id(&self) -> String {
        format!("{}.{}", self.job_id, self.step_id)
    }
}

fn contradiction(detail: String) -> EnvError {
    EnvError::Contradiction {
        engine: ENGINE.into(),
        detail,
    }
}

/// The first of `names` that is set, with its name.
fn first<'a>(v: &Vars<'a>, names: &[&'static str]) -> Option<(&'static str, &'a str)> {
    names.iter().find_map(|&n| v.get(n).map(|x| (n, x)))
}

/// Whether this process is a Slurm task (`SLURM_PROCID` and a step id are set).
fn is_task(v: &Vars) -> bool {
    v.has("SLURM_PROCID") && (v.has("SLURM_STEP_ID") || v.has("SLURM_STEPID"))
}

/// Read a task's variables (`None` if this process is not a Slurm task).
pub(crate) fn task(v: &Vars) -> Result<Option<SlurmTask>, EnvError> {
    if !is_task(v) {
        return Ok(None);
    }
    let rank = v.need(ENGINE, "SLURM_PROCID", "a task")?;
    let (step_var, step_id) = first(v, &["SLURM_STEP_ID", "SLURM_STEPID"]).unwrap_or_default();
    let (job_var, job_id) =
        first(v, &["SLURM_JOB_ID", "SLURM_JOBID"]).ok_or_else(|| EnvError::Missing {
            engine: ENGINE.into(),
            missing: "SLURM_JOB_ID".into(),
            why: "SLURM_PROCID and SLURM_STEP_ID are set".into(),
        })?;
    for (var, value) in [(step_var, step_id), (job_var, job_id)] {
        if value.trim().is_empty() {
            return Err(EnvError::Invalid {
                var: var.into(),
                value: value.into(),
                expected: "a job or step id".into(),
            });
        }
    }
    let (world_var, world) = match v.num("SLURM_STEP_NUM_TASKS")? {
        Some(w) => ("SLURM_STEP_NUM_TASKS", w),
        None => (
            "SLURM_NTASKS",
            v.need(ENGINE, "SLURM_NTASKS", "SLURM_PROCID is set")?,
        ),
    };
    if world == 0 || rank >= world {
        return Err(contradiction(format!(
            "SLURM_PROCID={rank} is not below {world_var}={world}"
        )));
    }
    let (tpn_var, tpn_value) = first(v, &["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"])
        .ok_or_else(|| EnvError::Missing {
            engine: ENGINE.into(),
            missing: "SLURM_STEP_TASKS_PER_NODE".into(),
            why: "SLURM_PROCID is set".into(),
        })?;
    let tasks_per_node =
        hostlist::tasks_per_node(tpn_var, tpn_value).map_err(|problem| EnvError::Invalid {
            var: tpn_var.into(),
            value: tpn_value.into(),
            expected: problem,
        })?;
    let sum: usize = tasks_per_node.iter().sum();
    if sum != world {
        return Err(contradiction(format!(
            "{tpn_var}={tpn_value} adds up to {sum} tasks, {world_var}={world}"
        )));
    }
    let (list_var, list) = first(
        v,
        &[
            "SLURM_STEP_NODELIST",
            "SLURM_JOB_NODELIST",
            "SLURM_NODELIST",
        ],
    )
    .ok_or_else(|| EnvError::Missing {
        engine: ENGINE.into(),
        missing: "SLURM_STEP_NODELIST".into(),
        why: "SLURM_PROCID is set".into(),
    })?;
    let nodes = hostlist::expand(list).map_err(|e| EnvError::Invalid {
        var: list_var.into(),
        value: list.into(),
        expected: format!("a Slurm host list ({})", e.problem),
    })?;
    if nodes.len() != tasks_per_node.len() {
        return Err(contradiction(format!(
            "{list_var}={list} names {} node(s), {tpn_var}={tpn_value} {}",
            nodes.len(),
            tasks_per_node.len()
        )));
    }
    let by_name = v
        .get("SLURMD_NODENAME")
        .and_then(|n| nodes.iter().position(|x| x == n));
    let node = match by_name {
        Some(i) => i,
        None => {
            let id = v.need(
                ENGINE,
                "SLURM_NODEID",
                "SLURMD_NODENAME is not in the node list",
            )?;
            if id >= nodes.len() {
                return Err(contradiction(format!(
                    "SLURM_NODEID={id} but {list_var}={list} names {} node(s)",
                    nodes.len()
                )));
            }
            id
        }
    };
    let local_rank = v.need(ENGINE, "SLURM_LOCALID", "SLURM_PROCID is set")?;
    let here = tasks_per_node[node];
    if local_rank >= here {
        return Err(contradiction(format!(
            "SLURM_LOCALID={local_rank} but {tpn_var}={tpn_value} gives node {node} ({}) {here} task(s)",
            nodes[node]
        )));
    }
    // The workers of one machine must be consecutive ranks (they share one copy of the data
    // written by the machine's lowest rank, and the machine's first rank leads it).
    let first_rank: usize = tasks_per_node[..node].iter().sum();
    if rank != first_rank + local_rank {
        return Err(contradiction(format!(
            "SLURM_PROCID={rank} with SLURM_LOCALID={local_rank} on node {node} ({}) of {tpn_var}={tpn_value}: \
             the ranks of a node are not consecutive (srun --distribution=cyclic?); mnist-ddp needs \
             --distribution=block",
            nodes[node]
        )));
    }
    Ok(Some(SlurmTask {
        rank,
        world,
        local_rank,
        tasks_per_node,
        nodes,
        node,
        job_id: job_id.trim().to_string(),
        step_id: step_id.trim().to_string(),
    }))
}

/// The master's host and port for a Slurm run: `MASTER_ADDR`/`MASTER_PORT`, else the step's
/// first node and the port derived from the run id.
fn master(v: &Vars, t: &SlurmTask) -> Result<(String, u16, String), EnvError> {
    let run_id = t.run_id();
    let host = match v.text("MASTER_ADDR")? {
        Some(h) => h.to_string(),
        None => t.nodes[0].clone(),
    };
    Ok(match v.port("MASTER_PORT")? {
        Some(p) => (host, p, "MASTER_PORT".into()),
        None => (
            host,
            default_port(&run_id),
            format!("20000 + FNV-1a({run_id}) mod 12000"),
        ),
    })
}

/// Slurm's placement, unless an MPI launcher inside the job started this process (see the
/// module docs).
pub(crate) fn detect_with_mpi(v: &Vars) -> Result<Option<Placement>, EnvError> {
    if !is_task(v) {
        return Ok(None);
    }
    if v.has("OMPI_COMM_WORLD_RANK") {
        let note = format!(
            "mpirun started this process inside Slurm job {}: its SLURM_PROCID describes mpirun's daemon and is ignored",
            v.get("SLURM_JOB_ID").unwrap_or("?")
        );
        return Ok(mpi::detect_ompi(v)?.map(|mut p| {
            p.notes.push(note);
            p
        }));
    }
    let Some(t) = task(v)? else {
        return Ok(None);
    };
    let mut notes = Vec::new();
    if v.has("PMI_RANK") || v.has("PMI_SIZE") {
        let pr = v.need("PMI", "PMI_RANK", "PMI_SIZE is set")?;
        let ps = v.need("PMI", "PMI_SIZE", "PMI_RANK is set")?;
        if ps != t.world {
            let mut p = mpi::detect_pmi(v)?.expect("PMI_RANK is set");
            p.notes.push(format!(
                "a PMI launcher started these {ps} process(es) inside Slurm job {} (a step of {} task(s)): Slurm's variables are ignored",
                t.job_id, t.world
            ));
            return Ok(Some(p));
        }
        if pr != t.rank {
            return Err(EnvError::Contradiction {
                engine: "Slurm and PMI".into(),
                detail: format!(
                    "SLURM_PROCID={} but PMI_RANK={pr} (both for {ps} processes)",
                    t.rank
                ),
            });
        }
        notes.push("PMI_RANK/PMI_SIZE agree (srun --mpi=pmi2)".into());
    }
    let (host, port, port_from) = master(v, &t)?;
    Ok(Some(Placement {
        engine: Engine::Slurm,
        rank: t.rank,
        local_rank: t.local_rank,
        world_size: t.world,
        local_world_size: t.tasks_per_node[t.node],
        node_rank: t.node,
        nnodes: t.nodes.len(),
        run_id: Some(t.run_id()),
        meeting: Some(Meeting::Serve {
            host,
            port,
            port_from,
        }),
        evidence: Vec::new(),
        notes,
    }))
}

/// A note when Slurm's job variables are present without a task's (a batch script).
pub(crate) fn batch_note(v: &Vars) -> Option<String> {
    if is_task(v) {
        return None;
    }
    let job = v.get("SLURM_JOB_ID").or_else(|| v.get("SLURM_JOBID"))?;
    Some(format!(
        "SLURM_JOB_ID={job} without SLURM_STEP_ID: a batch script, not a task started by srun; Slurm's variables are ignored"
    ))
}

/// Where `mnist-launch` sits when `srun` started it, one launcher per node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlurmNodes {
    /// Nodes in the step (one launcher each).
    pub nnodes: usize,
    /// This launcher's node rank (`SLURM_PROCID`).
    pub node_rank: usize,
    /// The master's host (node 0's launcher serves the rendezvous there).
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// Where the port came from.
    pub port_from: String,
    /// `SLURM_JOB_ID.SLURM_STEP_ID`, the rendezvous id.
    pub run_id: String,
    /// The variables read.
    pub evidence: Vec<(String, String)>,
}

/// The launcher's placement under `srun` (`None` when this is not a Slurm task). Each node
/// must run exactly one task (`srun --ntasks-per-node 1`).
pub fn launcher_nodes(env: &Env) -> Result<Option<SlurmNodes>, EnvError> {
    let v = Vars::new(env);
    let Some(t) = task(&v)? else {
        return Ok(None);
    };
    if t.tasks_per_node.iter().any(|&n| n != 1) {
        return Err(EnvError::Contradiction {
            engine: ENGINE.into(),
            detail: format!(
                "SLURM_STEP_TASKS_PER_NODE={}: mnist-launch runs once per node and starts the workers itself (srun --ntasks-per-node 1 mnist-launch --nproc N)",
                v.get("SLURM_STEP_TASKS_PER_NODE")
                    .or_else(|| v.get("SLURM_TASKS_PER_NODE"))
                    .unwrap_or("?")
            ),
        });
    }
    let (master_addr, master_port, port_from) = master(&v, &t)?;
    Ok(Some(SlurmNodes {
        nnodes: t.nodes.len(),
        node_rank: t.rank,
        master_addr,
        master_port,
        port_from,
        run_id: t.run_id(),
        evidence: v.evidence(),
    }))
}
