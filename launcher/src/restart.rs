//! `--max-restarts N` on one machine, torchrun's restart policy: when a worker fails (exits
//! non-zero, dies by a signal, or stops because a peer failed or hung past `--timeout`), the
//! whole group is stopped (see [`crate::group`]) and started again in a new round: a new run
//! id (so a new rendezvous file and shared-memory segment), `MNIST_RESTART_ROUND` set to the
//! round, and `--resume` when this job has written a checkpoint (`--checkpoint-every` bounds
//! what is lost). A worker refusing its input (exit 2) is not restarted: the same input would
//! fail again. After N restarts the launch fails with the last round's root cause; every
//! round's end is kept in a [`History`] for the error file ([`crate::error_file`]).
//!
//! Several machines ([`run_node_rounds`]): node 0's rendezvous server decides. A node whose
//! worker failed reports it and waits; the server orders every remaining node to restart
//! (when restarts remain and, after a lost node, at least `--nnodes` MIN nodes survive) or
//! ends the job. Each node then stops its workers, registers again, and starts the next
//! round's ranks with `--resume` when node 0's launcher found a checkpoint of this job
//! ([`resume_probe`]). The checkpoint lives only on node 0; global rank 0 (always on node
//! 0) reads it and broadcasts it to the other ranks (`mnist_train::resume::load_shared`).

use crate::multinode::Node;
use crate::signals::SignalGuard;
use crate::{run_workers, spec, Exit, LaunchConfig, LaunchError, WorkerFailure};
use mnist_common::contract::CHECKPOINT_FILE;
use mnist_common::FailureKind;
use mnist_rdzv::{Event, ResumeProbe};
use std::path::Path;
use std::time::SystemTime;

/// One round of workers.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    /// 0 for the first attempt, N after the Nth restart.
    pub round: u32,
    /// Its run id.
    pub run_id: String,
    /// Whether its workers resumed from a checkpoint.
    pub resumed: bool,
    /// When it started.
    pub started: SystemTime,
    /// When it ended (None while running).
    pub ended: Option<SystemTime>,
    /// How it ended: `succeeded`, or the launcher's one-line error.
    pub status: Option<String>,
}

/// The rounds of one launch, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Every round started.
    pub rounds: Vec<Round>,
}

impl History {
    /// Note that `round` starts now.
    pub fn start(&mut self, round: u32, run_id: &str, resumed: bool) {
        self.rounds.push(Round {
            round,
            run_id: run_id.to_string(),
            resumed,
            started: SystemTime::now(),
            ended: None,
            status: None,
        });
    }

    /// Note how the last round started ended.
    pub fn end(&mut self, result: &Result<(), LaunchError>) {
        if let Some(r) = self.rounds.last_mut() {
            r.ended = Some(SystemTime::now());
            r.status = Some(match result {
                Ok(()) => "succeeded".to_string(),
                Err(e) => mnist_common::error_line(e),
            });
        }
    }
}

/// What identifies one version of the checkpoint file: a new atomic write is a new file.
fn checkpoint_version(path: &Path) -> Option<(u64, SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?))
}

/// Whether `failure` may be retried: anything but a worker refusing its input.
pub fn restartable(failure: &WorkerFailure) -> bool {
    failure.first.exit != Exit::Code(FailureKind::BadInput.exit_code())
}

/// Run rounds of this machine's workers until one succeeds, a failure cannot be retried,
/// the launcher is told to stop, or `cfg.max_restarts` restarts are used up (see the module
/// docs). Each round is recorded in `history`.
pub fn run_rounds(
    cfg: &LaunchConfig,
    signals: &SignalGuard,
    history: &mut History,
) -> Result<(), LaunchError> {
    let checkpoint = cfg.log_dir.join(CHECKPOINT_FILE);
    // A checkpoint already there belongs to an earlier job, unless the user resumes it.
    let before = checkpoint_version(&checkpoint);
    let user_resume = cfg.worker_args.iter().any(|a| a == "--resume");
    let layout = spec::Layout::single(cfg.nproc);
    let mut round = 0u32;
    loop {
        let ours = checkpoint_version(&checkpoint).is_some_and(|v| Some(v) != before);
        let resume = round > 0 && (user_resume || ours);
        let mut this = cfg.clone();
        if resume && !user_resume {
            this.worker_args.push("--resume".into());
        }
        let run_id = spec::new_run_id();
        history.start(round, &run_id, resume || (round == 0 && user_resume));
        let result = run_workers(&this, &run_id, &layout, None, round, signals);
        history.end(&result);
        let failure = match result {
            Err(LaunchError::WorkerFailed(f)) => f,
            other => return other,
        };
        if !restartable(&failure) {
            if cfg.max_restarts > 0 {
                eprintln!(
                    "mnist-launch: not restarting: worker rank {} refused its input (exit {}); the same input would fail again",
                    failure.first.rank,
                    FailureKind::BadInput.exit_code()
                );
            }
            return Err(LaunchError::WorkerFailed(failure));
        }
        if round >= cfg.max_restarts || signals.received().is_some() {
            let mut failure = failure;
            failure.restarts = round;
            return Err(LaunchError::WorkerFailed(failure));
        }
        round += 1;
        let from =
            if user_resume || checkpoint_version(&checkpoint).is_some_and(|v| Some(v) != before) {
                format!("resuming from {}", checkpoint.display())
            } else {
                "from the beginning (this job has written no checkpoint yet)".to_string()
            };
        eprintln!(
            "mnist-launch: restart {round} of {} (--max-restarts) after: {}; starting {} worker(s) again {from}",
            cfg.max_restarts,
            failure,
            cfg.nproc
        );
    }
}

/// Node 0's answer to "may a restarted round resume?": the user resumed, or this job has
/// written `<path>/checkpoint.bin` (a file there before the launch belongs to an earlier job).
pub fn resume_probe(cfg: &LaunchConfig) -> ResumeProbe {
    let checkpoint = cfg.log_dir.join(CHECKPOINT_FILE);
    let before = checkpoint_version(&checkpoint);
    let user_resume = cfg.worker_args.iter().any(|a| a == "--resume");
    ResumeProbe(std::sync::Arc::new(move || {
        user_resume || checkpoint_version(&checkpoint).is_some_and(|v| Some(v) != before)
    }))
}

/// What a node tells the others about its failed worker: the launcher's line, and when the
/// worker only saw a peer fail, its own message (which names the operation and the rank it
/// waited for, e.g. a hung rank on another node).
fn failure_detail(err: &LaunchError, f: &WorkerFailure) -> String {
    let line = mnist_common::error_line(err);
    let peer = Exit::Code(mnist_common::contract::EXIT_PEER_FAILED);
    match crate::error_file::worker_message(&f.tail) {
        Some(msg) if f.first.exit == peer => {
            format!("{line}; rank {} reported: {msg}", f.first.rank)
        }
        _ => line,
    }
}

/// How long a node whose worker failed waits for the server's verdict (restart or abort).
const VERDICT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Several machines: run this node's workers round after round as node 0's server orders
/// (see the module docs). Each round is recorded in `history`.
pub fn run_node_rounds(
    cfg: &LaunchConfig,
    node: &mut Node,
    signals: &SignalGuard,
    history: &mut History,
) -> Result<(), LaunchError> {
    let user_resume = cfg.worker_args.iter().any(|a| a == "--resume");
    let node_rank = node.multi.node_rank;
    loop {
        let plan = node.session.plan.clone();
        let mut this = cfg.clone();
        if plan.resume && !user_resume {
            this.worker_args.push("--resume".into());
        }
        history.start(
            plan.round,
            &plan.run_id,
            plan.resume || (plan.round == 0 && user_resume),
        );
        let result = run_workers(
            &this,
            &plan.run_id,
            &node.layout(),
            Some(node),
            plan.round,
            signals,
        );
        history.end(&result);
        let err = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if cfg.max_restarts == 0 || signals.received().is_some() {
            return Err(err);
        }
        let event = match &err {
            // This node's own failure: tell the server and hear whether the job restarts.
            LaunchError::WorkerFailed(f) => {
                node.session
                    .report_failure(&failure_detail(&err, f), restartable(f));
                node.session.wait_event(VERDICT_WAIT)
            }
            LaunchError::Aborted { .. } => node.session.event(),
            _ => None,
        };
        match event {
            Some(Event::Restart { round, reason }) => {
                eprintln!(
                    "mnist-launch: node {node_rank}: restart {round} of {} (--max-restarts) after: {reason}; registering for rendezvous round {round}",
                    cfg.max_restarts
                );
                let before = plan.world_size;
                node.rejoin().map_err(|source| LaunchError::Rendezvous {
                    node: node_rank,
                    source,
                })?;
                let now = &node.session.plan;
                if now.world_size != before {
                    eprintln!(
                        "mnist-launch: node {node_rank}: round {}: the job continues with {} node(s), {} processes (was {before}); same per-rank batch, so the global batch scales by {}/{before}",
                        now.round,
                        now.nodes.len(),
                        now.world_size,
                        now.world_size
                    );
                }
            }
            _ => {
                return Err(match err {
                    LaunchError::WorkerFailed(mut f) => {
                        f.restarts = plan.round;
                        LaunchError::WorkerFailed(f)
                    }
                    other => other,
                })
            }
        }
    }
}
