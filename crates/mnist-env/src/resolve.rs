//! Explicit flags over the environment, and the checks on the result.

use crate::vars::Env;
use crate::{detect, Engine, EnvError, Meeting, Placement};
use std::path::PathBuf;

/// What the worker's command line says (each `None` when the flag was not given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Explicit {
    /// `--rank`.
    pub rank: Option<usize>,
    /// `--local-rank`.
    pub local_rank: Option<usize>,
    /// `--world-size`.
    pub world_size: Option<usize>,
    /// `--local-world-size`.
    pub local_world_size: Option<usize>,
    /// `--node-rank`.
    pub node_rank: Option<usize>,
    /// `--nnodes`.
    pub nnodes: Option<usize>,
    /// `--rendezvous FILE`.
    pub rendezvous: Option<PathBuf>,
    /// `--store HOST:PORT`.
    pub store: Option<String>,
    /// `--run-id ID`.
    pub run_id: Option<String>,
}

impl Explicit {
    fn any_identity(&self) -> bool {
        [
            self.rank,
            self.local_rank,
            self.world_size,
            self.local_world_size,
            self.node_rank,
            self.nnodes,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// Override `field` with `flag` when given, noting when it differs from the environment's.
fn take(
    field: &mut usize,
    flag: Option<usize>,
    name: &str,
    from_env: bool,
    notes: &mut Vec<String>,
) {
    if let Some(f) = flag {
        if from_env && f != *field {
            notes.push(format!("{name} {f} overrides the environment's {}", *field));
        }
        *field = f;
    }
}

/// The placement of this process: [`detect`] on `env`, then each explicit flag over the
/// value the environment gave, then the checks every placement must pass (ranks below their
/// sizes; with several processes a meeting point and a run id).
pub fn resolve(flags: &Explicit, env: &Env) -> Result<Placement, EnvError> {
    let mut p = detect(env)?;
    let from_env = p.engine != Engine::Alone;
    if !from_env && (flags.any_identity() || flags.rendezvous.is_some() || flags.store.is_some()) {
        p.engine = Engine::Flags;
    }
    let mut notes = Vec::new();
    take(&mut p.rank, flags.rank, "--rank", from_env, &mut notes);
    take(
        &mut p.world_size,
        flags.world_size,
        "--world-size",
        from_env,
        &mut notes,
    );
    if from_env {
        take(
            &mut p.local_rank,
            flags.local_rank,
            "--local-rank",
            true,
            &mut notes,
        );
        take(
            &mut p.local_world_size,
            flags.local_world_size,
            "--local-world-size",
            true,
            &mut notes,
        );
    } else {
        // By hand on one machine: the local rank is the rank, the machine holds them all.
        p.local_rank = flags.local_rank.unwrap_or(p.rank);
        p.local_world_size = flags.local_world_size.unwrap_or(p.world_size);
    }
    take(
        &mut p.node_rank,
        flags.node_rank,
        "--node-rank",
        from_env,
        &mut notes,
    );
    take(
        &mut p.nnodes,
        flags.nnodes,
        "--nnodes",
        from_env,
        &mut notes,
    );
    if let Some(s) = &flags.store {
        p.meeting = Some(Meeting::Store(s.clone()));
    } else if let Some(f) = &flags.rendezvous {
        p.meeting = Some(Meeting::File(f.clone()));
    }
    if let Some(r) = &flags.run_id {
        if from_env && p.run_id.as_deref().is_some_and(|e| e != r) {
            notes.push(format!(
                "--run-id {r} overrides the environment's {}",
                p.run_id.as_deref().unwrap_or_default()
            ));
        }
        p.run_id = Some(r.clone());
    }
    p.notes.extend(notes);
    check(&p)?;
    Ok(p)
}

fn check(p: &Placement) -> Result<(), EnvError> {
    let src = |flag: &str| match p.engine {
        Engine::Alone | Engine::Flags => flag.to_string(),
        e => format!("{flag} (from {e} or the flag)"),
    };
    let bad = |s: String| Err(EnvError::Flags(s));
    if p.world_size == 0 {
        return bad(format!("{} must be at least 1", src("--world-size")));
    }
    if p.rank >= p.world_size {
        return bad(format!(
            "{} {} is not below {} {}",
            src("--rank"),
            p.rank,
            src("--world-size"),
            p.world_size
        ));
    }
    if p.local_world_size == 0 || p.local_rank >= p.local_world_size {
        return bad(format!(
            "{} {} is not below {} {}",
            src("--local-rank"),
            p.local_rank,
            src("--local-world-size"),
            p.local_world_size
        ));
    }
    if p.local_world_size > p.world_size {
        return bad(format!(
            "{} {} is larger than {} {}",
            src("--local-world-size"),
            p.local_world_size,
            src("--world-size"),
            p.world_size
        ));
    }
    if p.nnodes == 0 || p.node_rank >= p.nnodes {
        return bad(format!(
            "{} {} (GROUP_RANK) is not below {} {} (MNIST_NNODES)",
            src("--node-rank"),
            p.node_rank,
            src("--nnodes"),
            p.nnodes
        ));
    }
    if p.world_size > 1 {
        if p.meeting.is_none() {
            return bad(format!(
                "world size {} needs a meeting point: --rendezvous FILE (MNIST_RENDEZVOUS), --store HOST:PORT (MNIST_STORE), or MASTER_ADDR and MASTER_PORT (env://)",
                p.world_size
            ));
        }
        if p.run_id.is_none() {
            return bad(format!(
                "world size {} needs --run-id ID (or MNIST_RUN_ID), the same for every process of the job",
                p.world_size
            ));
        }
    }
    Ok(())
}
