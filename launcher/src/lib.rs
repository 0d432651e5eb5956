//! `mnist-launch` as a library: start one `mnist-worker` per rank, pump their output into
//! per-rank logs, supervise them as a group and report the first failure (see [`run`]). With
//! `--nnodes` above 1 the nodes first meet through node 0's TCP rendezvous ([`multinode`],
//! `mnist-rdzv`), and another node's failure or loss stops this node's workers.
//!
//! Exit codes of the binary (`mnist_common::contract`): 0 all workers succeeded; 1 a worker
//! failed (or the launch could not start, the nodes could not meet, another node failed or
//! was lost); 2 bad command-line usage, or the first worker to
//! fail refused its input (flags, data or model files); 128 + signal number when the launcher
//! was stopped by SIGINT (130), SIGTERM (143) or SIGHUP (129).
//!
//! `mnist-launch plot RUN_DIR … -o FILE` ([`plot`]) draws several runs' curves into one picture
//! instead: exit 0, 2 for bad input (a folder without a readable `metrics.jsonl`, an output
//! that is neither `.png` nor `.svg`), 1 when drawing or writing fails.

pub mod args;
pub mod error_file;
pub mod fingerprint;
pub mod gpus;
pub mod group;
pub mod multinode;
pub mod oom;
pub mod output;
pub mod plot;
pub mod restart;
pub mod signals;
pub mod spec;
pub mod status;

pub use args::{ArgsError, LaunchArgs, LaunchConfig};
pub use group::{Exit, Exited, Outcome};

use mnist_common::FailureKind;
use nix::sys::signal::Signal;
use output::{rank_log_path, Pumps, RankLog, Stream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long to wait, after the last worker is reaped, for its output to be drained.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a launch did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Bad flags.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// The log folder cannot be created.
    #[error("cannot create the log folder {path:?} (--path)")]
    LogDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A rank's log file cannot be created.
    #[error("cannot create the log file {path:?} (--path)")]
    LogFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The signal handlers cannot be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] nix::Error),
    /// A worker cannot be started.
    #[error("cannot start worker rank {rank}: {program:?} (--worker-bin)")]
    Spawn {
        /// Its rank.
        rank: usize,
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The rendezvous between the nodes failed (unreachable, refused, a mismatch, a timeout).
    #[error("node {node}")]
    Rendezvous {
        /// This node's rank.
        node: usize,
        /// What went wrong.
        #[source]
        source: mnist_rdzv::RdzvError,
    },
    /// Another node failed or was lost; this node's workers were stopped.
    #[error("node {node}: stopped {workers} worker(s): {reason}")]
    Aborted {
        /// This node's rank.
        node: usize,
        /// Number of workers.
        workers: usize,
        /// Which node failed or was lost, and how.
        reason: String,
    },
    /// A worker failed; the others were stopped.
    #[error("{0}")]
    WorkerFailed(Box<WorkerFailure>),
    /// The launcher was told to stop; the workers were stopped.
    #[error("stopped by {} after forwarding SIGTERM to {workers} worker(s)", .signal.as_str())]
    Interrupted {
        /// The signal received.
        signal: Signal,
        /// Number of workers.
        workers: usize,
    },
}

/// The first worker failure of a launch (the root cause).
#[derive(Debug, Clone)]
pub struct WorkerFailure {
    /// The worker that failed first.
    pub first: Exited,
    /// Its log file.
    pub log: PathBuf,
    /// Its last lines of output.
    pub tail: Vec<String>,
    /// How the other workers ended.
    pub others: Vec<Exited>,
    /// Why it was killed, when the launcher can tell ([`oom`]: the out-of-memory killer).
    pub cause: Option<String>,
    /// Restarts done before this failure, when they are used up (`--max-restarts`); 0 else.
    pub restarts: u32,
}

impl std::fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.first;
        write!(
            f,
            "worker rank {} (pid {}) {}{} (first failure{}; log: {})",
            e.rank,
            e.pid,
            e.exit,
            self.cause
                .as_ref()
                .map(|c| format!(", {c}"))
                .unwrap_or_default(),
            match self.restarts {
                0 => String::new(),
                n => format!(" of the last round, after {n} restart(s): --max-restarts exhausted"),
            },
            self.log.display()
        )
    }
}

impl LaunchError {
    /// The launcher's exit code for this error (see the crate docs).
    pub fn exit_code(&self) -> i32 {
        use mnist_common::contract::{EXIT_FAILURE, EXIT_USAGE};
        match self {
            LaunchError::Args(_) => EXIT_USAGE,
            LaunchError::Interrupted { signal, .. } => signals::exit_code_for(*signal),
            // A worker refusing its input: running the launch again unchanged cannot help.
            LaunchError::WorkerFailed(f)
                if f.first.exit == Exit::Code(FailureKind::BadInput.exit_code()) =>
            {
                EXIT_USAGE
            }
            _ => EXIT_FAILURE,
        }
    }

    /// Lines to print after the one-line error: the failed worker's log tail and how the
    /// other workers ended.
    pub fn details(&self) -> Vec<String> {
        if let LaunchError::Rendezvous { source, .. } = self {
            return source.hint().into_iter().collect();
        }
        let LaunchError::WorkerFailed(f) = self else {
            return Vec::new();
        };
        let mut v = vec![format!(
            "last {} line(s) of rank {}'s output:",
            f.tail.len(),
            f.first.rank
        )];
        v.extend(
            f.tail
                .iter()
                .map(|l| format!("  [rank{}] {l}", f.first.rank)),
        );
        for o in &f.others {
            let how = if o.stopped {
                " (stopped by the launcher)"
            } else {
                ""
            };
            v.push(format!(
                "worker rank {} (pid {}) {}{how}",
                o.rank, o.pid, o.exit
            ));
        }
        v
    }
}

/// Removes the rendezvous file and the shared-memory segment, if any, when the launch ends
/// however it ends (the workers remove them too; this covers a rank that crashed first).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes, when dropped, every file in [`mnist_common::contract::SHM_DIR`] whose name
/// (ignoring a leading `.`: a temporary file being written) starts with the prefix: the data
/// set copies a run's workers share ([`mnist_common::contract::shm_data_prefix`]) or its
/// per-node segments ([`mnist_common::contract::shm_node_prefix`]), left behind when a worker
/// died before removing them.
struct RemoveShmData(String);

impl Drop for RemoveShmData {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(mnist_common::contract::SHM_DIR) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.trim_start_matches('.').starts_with(&self.0) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Run a launch: start `cfg.nproc` workers, log their output to `<log_dir>/rank<N>.log`
/// (rank 0's also to this process's stdout/stderr), and supervise them until all succeed
/// (`Ok`), one fails, or SIGINT/SIGTERM/SIGHUP arrives (`Err`; the others are stopped with
/// SIGTERM, `cfg.grace_period`, SIGKILL). Must be called from the thread that outlives the
/// workers (the main thread), see [`group`].
pub fn run(cfg: &LaunchConfig) -> Result<(), LaunchError> {
    for note in &cfg.notes {
        eprintln!("mnist-launch: note: {note}");
    }
    error_file::remove_stale(&cfg.log_dir);
    let signals = signals::install().map_err(LaunchError::Signals)?;
    // Several machines: meet the other nodes first (node 0 serves the rendezvous).
    let node = match &cfg.multi {
        Some(m) => Some(
            multinode::start(cfg, m).map_err(|source| LaunchError::Rendezvous {
                node: m.node_rank,
                source,
            })?,
        ),
        None => None,
    };
    let mut rounds = restart::History::default();
    let result = match &node {
        Some(n) => {
            let run_id = n.session.plan.run_id.clone();
            rounds.start(0, &run_id, false);
            let r = run_workers(cfg, &run_id, &n.layout(), Some(n), 0, &signals);
            rounds.end(&r);
            r
        }
        None => restart::run_rounds(cfg, &signals, &mut rounds),
    };
    if let Err(LaunchError::WorkerFailed(f)) = &result {
        let node_rank = cfg.multi.as_ref().map_or(0, |m| m.node_rank);
        if let Err(e) = error_file::write(&cfg.log_dir, node_rank, f, &rounds) {
            eprintln!("mnist-launch: warning: cannot write the error file: {e}");
        }
    }
    if let Some(n) = &node {
        let detail = match &result {
            Ok(()) => String::new(),
            Err(e) => mnist_common::error_line(e),
        };
        n.finish(result.is_ok(), &detail);
    }
    result
}

/// Start this node's workers and supervise them (see [`run`]).
fn run_workers(
    cfg: &LaunchConfig,
    run_id: &str,
    layout: &spec::Layout,
    node: Option<&multinode::Node>,
    round: u32,
    signals: &signals::SignalGuard,
) -> Result<(), LaunchError> {
    let rendezvous = (node.is_none() && cfg.nproc > 1).then(|| spec::rendezvous_path(run_id));
    let _remove_rendezvous = RemoveOnDrop(
        rendezvous
            .iter()
            .cloned()
            .chain((layout.world_size > 1).then(|| {
                Path::new(mnist_common::rendezvous::SHM_DIR)
                    .join(mnist_common::rendezvous::shm_name_for(run_id))
            }))
            .collect(),
    );
    let _remove_data = RemoveShmData(mnist_common::contract::shm_data_prefix(run_id));
    let _remove_node_segments = RemoveShmData(mnist_common::contract::shm_node_prefix(run_id));
    let ranks = layout.first_rank..layout.first_rank + cfg.nproc;
    let logs = create_logs(&cfg.log_dir, ranks.clone(), round)?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut specs = spec::worker_specs(
        cfg,
        run_id,
        rendezvous.as_deref(),
        layout,
        std::env::vars_os(),
        cores,
    );
    for s in &mut specs {
        s.env.push((
            mnist_common::contract::ENV_RESTART_ROUND.into(),
            round.to_string().into(),
        ));
    }
    log_config(cfg, run_id, rendezvous.as_deref(), &specs, node);

    let mut pumps = Pumps::new();
    let oom_watch = oom::OomWatch::start();
    let mut group = group::ProcessGroup::new();
    for (spec, log) in specs.iter().zip(&logs) {
        let rank = spec.identity.rank;
        let spawn_err = |source| LaunchError::Spawn {
            rank,
            program: spec.program.clone(),
            source,
        };
        let (out, err) = group.spawn(spec).map_err(spawn_err)?;
        pumps
            .attach(out, Stream::Stdout, log.clone())
            .map_err(spawn_err)?;
        pumps
            .attach(err, Stream::Stderr, log.clone())
            .map_err(spawn_err)?;
    }
    // Nodes without global rank 0 show a short status line instead of silence.
    let _status = node
        .filter(|_| layout.first_rank > 0)
        .map(|n| status::StatusLine::start(n, ranks.clone(), logs.first().cloned()));
    let abort = || node.and_then(|n| n.session.abort_reason());
    let outcome = group.supervise(cfg.grace_period, signals, &abort);
    if !pumps.finish(DRAIN_TIMEOUT) {
        eprintln!("mnist-launch: warning: a worker's output pipe stayed open after it exited (a child process of it?); not waiting for it");
    }
    let node_rank = layout.node_rank;
    match outcome {
        Outcome::Success => Ok(()),
        Outcome::Interrupted(signal) => Err(LaunchError::Interrupted {
            signal,
            workers: cfg.nproc,
        }),
        Outcome::Aborted(reason) => Err(LaunchError::Aborted {
            node: node_rank,
            workers: cfg.nproc,
            reason,
        }),
        Outcome::Failed(first) => {
            // A worker that only saw its peer vanish: when another node failed or was lost,
            // that node is the cause; its news may trail the workers' own detection briefly.
            if let (Some(n), Exit::Code(code)) = (node, &first.exit) {
                if *code == mnist_common::contract::EXIT_PEER_FAILED {
                    if let Some(reason) = wait_for_abort(n) {
                        return Err(LaunchError::Aborted {
                            node: node_rank,
                            workers: cfg.nproc,
                            reason,
                        });
                    }
                }
            }
            let log_of = |rank: usize| &logs[rank - layout.first_rank];
            // A worker that only saw a peer fail, while another one had to be killed after
            // ignoring SIGTERM: the unresponsive one (hung or stopped) is the root cause, and
            // the peer's message names the operation that timed out waiting for it.
            let hung = group.exits().into_iter().find(|e| e.unresponsive.is_some());
            let (first, hang_cause) = match hung {
                Some(h) if first.exit == Exit::Code(mnist_common::contract::EXIT_PEER_FAILED) => {
                    let reported = error_file::worker_message(&log_of(first.rank).tail())
                        .unwrap_or_else(|| first.exit.to_string());
                    let why = h.unresponsive.map(|u| u.to_string()).unwrap_or_default();
                    let cause = format!(
                        "unresponsive: {why}; rank {} reported: {reported}",
                        first.rank
                    );
                    (h, Some(cause))
                }
                _ => (first, None),
            };
            let log = log_of(first.rank);
            let sigkill = Exit::Signal {
                signo: Signal::SIGKILL as i32,
                core_dumped: false,
            };
            let cause = hang_cause.or_else(|| {
                (first.exit == sigkill && !first.stopped)
                    .then(|| oom_watch.note())
                    .flatten()
            });
            let others = group
                .exits()
                .into_iter()
                .filter(|e| e.rank != first.rank)
                .collect();
            Err(LaunchError::WorkerFailed(Box::new(WorkerFailure {
                log: log.path().to_path_buf(),
                tail: log.tail(),
                first,
                others,
                cause,
                restarts: 0,
            })))
        }
    }
}

/// The abort reason of the session, waiting up to the heartbeat timeout (plus a margin) for it.
fn wait_for_abort(n: &multinode::Node) -> Option<String> {
    let deadline = std::time::Instant::now()
        + mnist_rdzv::Heartbeat::default().timeout
        + Duration::from_secs(1);
    loop {
        if let Some(r) = n.session.abort_reason() {
            return Some(r);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `rank<N>.log` for each of this node's global `ranks`; global rank 0's is echoed. Restart
/// round 0 creates them, later rounds append behind a marker line.
fn create_logs(
    dir: &Path,
    ranks: std::ops::Range<usize>,
    round: u32,
) -> Result<Vec<Arc<RankLog>>, LaunchError> {
    std::fs::create_dir_all(dir).map_err(|source| LaunchError::LogDir {
        path: dir.to_path_buf(),
        source,
    })?;
    ranks
        .map(|rank| {
            let log = if round == 0 {
                RankLog::create(dir, rank, rank == 0)
            } else {
                let marker = format!("---- mnist-launch: restart round {round} ----");
                RankLog::append(dir, rank, rank == 0, &marker)
            };
            log.map(Arc::new).map_err(|source| LaunchError::LogFile {
                path: rank_log_path(dir, rank),
                source,
            })
        })
        .collect()
}

/// One or two lines on stderr describing the launch, like torchrun's start-up log.
fn log_config(
    cfg: &LaunchConfig,
    run_id: &str,
    rendezvous: Option<&Path>,
    specs: &[spec::WorkerSpec],
    node: Option<&multinode::Node>,
) {
    let rdzv = match (node, rendezvous) {
        (Some(n), _) => format!("TCP store at {}", n.multi.endpoint),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => "none (single process)".to_string(),
    };
    if let Some(n) = node {
        eprintln!(
            "mnist-launch: node {}: the job has {}; this node advertises {}",
            n.multi.node_rank,
            n.describe(),
            n.session.addr
        );
    }
    let ranks = match (specs.first(), specs.last()) {
        (Some(a), Some(b)) if specs.len() > 1 => {
            format!("ranks {}-{}", a.identity.rank, b.identity.rank)
        }
        (Some(a), _) => format!("rank {}", a.identity.rank),
        _ => String::new(),
    };
    eprintln!(
        "mnist-launch: starting {} worker(s) ({ranks}) of {}; run id {run_id}; rendezvous {rdzv}; logs {}",
        cfg.nproc,
        cfg.worker_bin.display(),
        rank_log_path(&cfg.log_dir, 0)
            .with_file_name("rank*.log")
            .display(),
    );
    let env = |k: &str| {
        specs
            .first()
            .and_then(|s| s.env.iter().find(|(key, _)| key == k))
            .map(|(_, v)| v.to_string_lossy().into_owned())
    };
    let omp = env(mnist_common::contract::ENV_OMP_NUM_THREADS).unwrap_or_default();
    let gpus = env(mnist_common::contract::ENV_GPUS)
        .map_or("GPUs: per the worker's --gpu/--device".to_string(), |g| {
            format!("GPUs {g} ({})", mnist_common::contract::ENV_GPUS)
        });
    eprintln!(
        "mnist-launch: OMP_NUM_THREADS={omp} per worker; {gpus}; CUDA_VISIBLE_DEVICES={}; grace period {:.1}s",
        std::env::var(mnist_common::contract::ENV_CUDA_VISIBLE_DEVICES).unwrap_or_else(|_| "(unset)".into()),
        cfg.grace_period.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_shared_data_of_the_run_is_removed_and_nothing_else() {
        let run = format!("unit-{}", std::process::id());
        let other = format!("unit-{}-x", std::process::id());
        let shm = Path::new(mnist_common::contract::SHM_DIR);
        let name = |run: &str, split| mnist_common::contract::shm_data_name(run, 0, split);
        let ours = [
            shm.join(name(&run, "train")),
            shm.join(format!(".{}.abc123.tmp", name(&run, "test"))),
        ];
        let theirs = shm.join(name(&other, "train"));
        for p in ours.iter().chain([&theirs]) {
            std::fs::write(p, b"x").unwrap();
        }
        drop(RemoveShmData(mnist_common::contract::shm_data_prefix(&run)));
        for p in &ours {
            assert!(!p.exists(), "{} left behind", p.display());
        }
        assert!(theirs.exists(), "another run's file was removed");
        std::fs::remove_file(&theirs).unwrap();
    }
}
