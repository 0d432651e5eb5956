//! `mnist-launch`'s command line ([`LaunchArgs`]) and the plain, validated [`LaunchConfig`]
//! it resolves to. The training flags are validated here too (so a typo fails before any
//! process starts) and then forwarded to every worker unchanged.

use clap::{CommandFactory, FromArgMatches, Parser};
use mnist_common::cli::{forwarded_args, TrainArgs};
use mnist_common::{ConfigError, DeviceKind, ProgressMode};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the worker program looked up next to the launcher's own executable.
pub const WORKER_PROGRAM: &str = "mnist-worker";

/// Start one training worker per rank and supervise them as a group (like torchrun).
#[derive(Parser, Clone, Debug)]
#[command(
    name = "mnist-launch",
    version,
    args_override_self = true,
    after_help = "Compare runs: mnist-launch plot RUN_DIR [RUN_DIR ...] -o compare.png (or .svg); see mnist-launch plot --help."
)]
pub struct LaunchArgs {
    /// Training flags, forwarded to every worker.
    #[command(flatten)]
    pub train: TrainArgs,
    /// Worker processes to start [default: the number of visible GPUs, or 1; 1 with
    /// --device cpu; the length of --gpus when given].
    #[arg(long, visible_alias = "nproc-per-node", value_name = "N")]
    pub nproc: Option<usize>,
    /// GPUs to use, e.g. 0,2: rank r uses the r-th entry (passed to workers as MNIST_GPUS).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub gpus: Option<Vec<usize>>,
    /// Number of machines (nodes) in the job; each runs one mnist-launch.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub nnodes: usize,
    /// This machine's rank among the nodes, 0 … nnodes-1 (node 0 serves the rendezvous;
    /// global ranks follow node-rank order).
    #[arg(long, default_value_t = 0, value_name = "R")]
    pub node_rank: usize,
    /// Node 0's address (host name or IP) where the rendezvous is served.
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub master_addr: String,
    /// Port of the rendezvous on node 0 (0 on node 0: any free port, printed at start).
    #[arg(long, default_value_t = 29500, value_name = "PORT")]
    pub master_port: u16,
    /// The rendezvous as HOST:PORT (torchrun's spelling; overrides --master-addr/--master-port).
    #[arg(long, value_name = "HOST:PORT")]
    pub rdzv_endpoint: Option<String>,
    /// Job id every node must give alike; a node with another id is refused.
    #[arg(long, default_value = "none", value_name = "ID")]
    pub rdzv_id: String,
    /// Address this node advertises to the other nodes [default: the IPv4 address of the
    /// interface named by MNIST_SOCKET_IFNAME, else the local address of this node's
    /// connection to node 0].
    #[arg(long, value_name = "ADDR")]
    pub local_addr: Option<String>,
    /// Seconds each worker waits at the rendezvous for its peers (and each node for the
    /// other nodes).
    #[arg(
        long,
        default_value_t = 60.0,
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    pub rendezvous_timeout: f64,
    /// Seconds between SIGTERM and SIGKILL when the workers are stopped.
    #[arg(
        long,
        default_value_t = 5.0,
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    pub grace_period: f64,
    /// Restart all workers up to N times when one fails (exit, signal, lost peer, hang past
    /// --timeout), each time resuming from the newest checkpoint of this job (see
    /// --checkpoint-every); after N restarts the launch fails with the last root cause.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_restarts: u32,
    /// The worker program [default: mnist-worker next to this executable].
    #[arg(long, hide = true, env = mnist_common::contract::ENV_WORKER_BIN, value_name = "PATH")]
    pub worker_bin: Option<PathBuf>,
    /// The training flags given on the command line, as the workers receive them (filled by
    /// [`LaunchArgs::try_parse_argv`]).
    #[arg(skip)]
    pub forwarded: Vec<OsString>,
    /// The node flags given on the command line (`--nnodes`, `--node-rank`, `--master-addr`,
    /// `--master-port`, `--rdzv-endpoint`, `--rdzv-id`; filled by
    /// [`LaunchArgs::try_parse_argv`]): any of them turns reading Slurm's variables off.
    #[arg(skip)]
    pub node_flags_given: Vec<&'static str>,
}

/// The node flags, by clap id and spelling.
const NODE_FLAGS: [(&str, &str); 6] = [
    ("nnodes", "--nnodes"),
    ("node_rank", "--node-rank"),
    ("master_addr", "--master-addr"),
    ("master_port", "--master-port"),
    ("rdzv_endpoint", "--rdzv-endpoint"),
    ("rdzv_id", "--rdzv-id"),
];

/// The resolved launch: plain values only, no clap types.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchConfig {
    /// Number of workers (the world size).
    pub nproc: usize,
    /// GPU index for each local rank, when `--gpus` was given (`len() == nproc`).
    pub gpus: Option<Vec<usize>>,
    /// The worker program.
    pub worker_bin: PathBuf,
    /// Training flags, as arguments every worker receives.
    pub worker_args: Vec<OsString>,
    /// Folder for `rank<N>.log` (the `--path` flag).
    pub log_dir: PathBuf,
    /// Seconds each worker waits at the rendezvous.
    pub rendezvous_timeout_s: f64,
    /// Time between SIGTERM and SIGKILL when stopping workers.
    pub grace_period: Duration,
    /// Adjustments made while resolving, worth one line on stderr each.
    pub notes: Vec<String>,
    /// With `--nnodes` above 1: this node's part in the job.
    pub multi: Option<MultiNode>,
    /// `--max-restarts`: how often a failed worker group is restarted.
    pub max_restarts: u32,
}

/// A job spanning several machines, as this node sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiNode {
    /// Number of nodes.
    pub nnodes: usize,
    /// This node's rank.
    pub node_rank: usize,
    /// The rendezvous, `HOST:PORT`.
    pub endpoint: String,
    /// Its port (node 0 listens on it).
    pub port: u16,
    /// The job id (`--rdzv-id`).
    pub rdzv_id: String,
    /// The address to advertise (`--local-addr` or `MNIST_SOCKET_IFNAME`'s), if given.
    pub local_addr: Option<String>,
    /// What must agree between nodes.
    pub fingerprint: mnist_rdzv::Fingerprint,
}

/// Facts about the machine that resolution depends on, given explicitly so tests can vary them.
#[derive(Clone, Debug)]
pub struct Environment {
    /// GPUs visible to this process (see [`crate::gpus::visible_gpu_count`]).
    pub visible_gpus: usize,
    /// This executable, whose folder holds `mnist-worker` by default.
    pub current_exe: Option<PathBuf>,
    /// Whether the launcher's console (stderr) is a terminal: then `--progress auto` becomes
    /// `always` for the workers, whose own output is a pipe, and rank 0's progress bar is
    /// passed through live.
    pub console_is_terminal: bool,
    /// `MNIST_SOCKET_IFNAME`, when set.
    pub socket_ifname: Option<String>,
    /// The nodes of the Slurm step this launcher is a task of (`srun --nodes N
    /// --ntasks-per-node 1 mnist-launch …`), read by [`mnist_env::slurm::launcher_nodes`].
    pub slurm: Result<Option<mnist_env::slurm::SlurmNodes>, mnist_env::EnvError>,
}

impl Environment {
    /// The real machine.
    pub fn detect() -> Self {
        Environment {
            visible_gpus: crate::gpus::visible_gpu_count(),
            current_exe: std::env::current_exe().ok(),
            console_is_terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            socket_ifname: std::env::var(mnist_common::contract::ENV_SOCKET_IFNAME)
                .ok()
                .filter(|s| !s.is_empty()),
            slurm: mnist_env::slurm::launcher_nodes(&std::env::vars().collect()),
        }
    }
}

/// A launcher flag with a value that cannot work; every message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A training flag is out of range.
    #[error(transparent)]
    Train(#[from] ConfigError),
    /// `--nproc 0`.
    #[error("invalid value 0 for --nproc: expected an integer ≥ 1")]
    ZeroNproc,
    /// `--gpus` with no entries.
    #[error("invalid value for --gpus: expected a comma-separated list of GPU indices, e.g. 0,2")]
    EmptyGpus,
    /// `--nproc` and `--gpus` disagree.
    #[error("--nproc {nproc} does not match --gpus {gpus} ({len} entries); give one of them or make them agree")]
    NprocGpusMismatch {
        /// The `--nproc` value.
        nproc: usize,
        /// The `--gpus` value as written.
        gpus: String,
        /// Its number of entries.
        len: usize,
    },
    /// A `--gpus` entry beyond the visible GPUs.
    #[error("invalid value {gpus} for --gpus: GPU {index} does not exist ({visible} visible; indices count from 0 within CUDA_VISIBLE_DEVICES)")]
    GpuOutOfRange {
        /// The `--gpus` value as written.
        gpus: String,
        /// The offending index.
        index: usize,
        /// How many GPUs are visible.
        visible: usize,
    },
    /// `--gpu` and `--gpus` together.
    #[error("--gpu {gpu} and --gpus {gpus} cannot be combined; use --gpus alone")]
    GpuAndGpus {
        /// The `--gpu` value.
        gpu: usize,
        /// The `--gpus` value as written.
        gpus: String,
    },
    /// A negative, infinite or NaN duration.
    #[error("invalid value {value} for {flag}: expected {expected}")]
    BadSeconds {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: f64,
        /// What would be accepted.
        expected: &'static str,
    },
    /// The worker program is missing or not executable.
    #[error("worker program {path:?} (--worker-bin / MNIST_WORKER_BIN) {problem}")]
    WorkerBin {
        /// The program looked for.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// `--nnodes 0`, or a `--node-rank` not below `--nnodes`.
    #[error("invalid value {value} for {flag}: expected {expected}")]
    Nodes {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// `MNIST_SOCKET_IFNAME` names an unusable interface.
    #[error(transparent)]
    Interface(#[from] mnist_rdzv::RdzvError),
    /// The data files cannot be read for the fingerprint.
    #[error("cannot read {path:?} (--data) to compare it with the other nodes")]
    DataFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The engine that started the launcher (Slurm) says something that cannot work.
    #[error(transparent)]
    Engine(#[from] mnist_env::EnvError),
    /// No `--worker-bin` and this executable's folder is unknown.
    #[error("cannot find {WORKER_PROGRAM} next to this executable (its path is unknown); pass --worker-bin or set MNIST_WORKER_BIN")]
    NoCurrentExe,
}

fn list(gpus: &[usize]) -> String {
    gpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl LaunchArgs {
    /// Parse `argv` (program name first) and keep the training flags that were given, to be
    /// forwarded to the workers exactly as written (see [`forwarded_args`]). Use this, not
    /// clap's `parse_from`, which would leave [`LaunchArgs::forwarded`] empty.
    pub fn try_parse_argv<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(argv)?;
        let mut args = Self::from_arg_matches(&matches)?;
        args.forwarded = forwarded_args(&matches);
        args.node_flags_given = NODE_FLAGS
            .iter()
            .filter(|(id, _)| {
                matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
            })
            .map(|&(_, flag)| flag)
            .collect();
        Ok(args)
    }

    /// [`LaunchArgs::try_parse_argv`] of this process's arguments; exits with clap's usage
    /// message and code on bad flags.
    pub fn parse_env() -> Self {
        Self::try_parse_argv(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Validate against the real machine.
    pub fn resolve(&self) -> Result<LaunchConfig, ArgsError> {
        self.resolve_in(&Environment::detect())
    }

    /// Validate against the machine described by `env`.
    pub fn resolve_in(&self, env: &Environment) -> Result<LaunchConfig, ArgsError> {
        let train = self.train.resolve()?;
        let mut notes = Vec::new();
        let mut gpus = self.gpus.clone();
        if let Some(g) = &gpus {
            if g.is_empty() {
                return Err(ArgsError::EmptyGpus);
            }
            if let Some(gpu) = self.train.gpu {
                return Err(ArgsError::GpuAndGpus { gpu, gpus: list(g) });
            }
            if env.visible_gpus > 0 {
                if let Some(&index) = g.iter().find(|&&i| i >= env.visible_gpus) {
                    return Err(ArgsError::GpuOutOfRange {
                        gpus: list(g),
                        index,
                        visible: env.visible_gpus,
                    });
                }
            }
        }
        let mut nproc = match (self.nproc, &gpus) {
            (Some(0), _) => return Err(ArgsError::ZeroNproc),
            (Some(n), Some(g)) if n != g.len() => {
                return Err(ArgsError::NprocGpusMismatch {
                    nproc: n,
                    gpus: list(g),
                    len: g.len(),
                })
            }
            (Some(n), _) => n,
            (None, Some(g)) => g.len(),
            (None, None) if self.train.device == DeviceKind::Cpu => 1,
            (None, None) => env.visible_gpus.max(1),
        };
        if self.train.evaluate.is_some() && nproc > 1 {
            notes.push(format!("--evaluate runs one process (not {nproc})"));
            nproc = 1;
            if let Some(g) = &mut gpus {
                g.truncate(1);
            }
        }
        let rendezvous_timeout_s = self.rendezvous_timeout;
        if !(rendezvous_timeout_s.is_finite() && rendezvous_timeout_s > 0.0) {
            return Err(ArgsError::BadSeconds {
                flag: "--rendezvous-timeout",
                value: rendezvous_timeout_s,
                expected: "a positive number of seconds",
            });
        }
        let grace_period =
            Duration::try_from_secs_f64(self.grace_period).map_err(|_| ArgsError::BadSeconds {
                flag: "--grace-period",
                value: self.grace_period,
                expected: "a number of seconds ≥ 0",
            })?;
        let worker_bin = match &self.worker_bin {
            Some(p) => p.clone(),
            None => env
                .current_exe
                .as_deref()
                .and_then(Path::parent)
                .ok_or(ArgsError::NoCurrentExe)?
                .join(WORKER_PROGRAM),
        };
        check_executable(&worker_bin)?;
        let nodes = self.with_engine_nodes(env, &mut notes)?;
        let multi = nodes.multi_node(&train, env, nproc)?;
        if self.max_restarts > 0 && multi.is_some() {
            return Err(ArgsError::Nodes {
                flag: "--max-restarts",
                value: self.max_restarts.to_string(),
                expected: format!(
                    "0 with --nnodes {} (restarting the workers of several machines in a new rendezvous round is not built yet)",
                    nodes.nnodes
                ),
            });
        }
        if self.max_restarts > 0 && self.train.evaluate.is_some() {
            notes.push("--max-restarts has no effect with --evaluate".into());
        }
        Ok(LaunchConfig {
            nproc,
            gpus,
            worker_bin,
            worker_args: {
                let mut args = self.forwarded.clone();
                // The workers' output is a pipe: on a terminal, `auto` means draw anyway (a
                // later flag wins).
                if self.train.progress == ProgressMode::Auto && env.console_is_terminal {
                    args.extend(["--progress".into(), "always".into()]);
                }
                args
            },
            log_dir: self.train.path.clone(),
            rendezvous_timeout_s,
            grace_period,
            notes,
            multi,
            max_restarts: if self.train.evaluate.is_some() {
                0
            } else {
                self.max_restarts
            },
        })
    }

    /// These flags with the node flags taken from Slurm when `srun` started this launcher on
    /// several nodes and no node flag was given (node count = the step's nodes, node rank =
    /// `SLURM_PROCID`, master = `MASTER_ADDR` or the step's first node, port = `MASTER_PORT` or
    /// the run id's, rendezvous id = `SLURM_JOB_ID.SLURM_STEP_ID`).
    fn with_engine_nodes(
        &self,
        env: &Environment,
        notes: &mut Vec<String>,
    ) -> Result<LaunchArgs, ArgsError> {
        let mut a = self.clone();
        if !self.node_flags_given.is_empty() {
            return Ok(a);
        }
        let n = match &env.slurm {
            Err(e) => return Err(ArgsError::Engine(e.clone())),
            Ok(Some(n)) if n.nnodes > 1 => n,
            Ok(_) => return Ok(a),
        };
        a.nnodes = n.nnodes;
        a.node_rank = n.node_rank;
        a.master_addr = n.master_addr.clone();
        a.master_port = n.master_port;
        a.rdzv_endpoint = None;
        a.rdzv_id = n.run_id.clone();
        notes.push(format!(
            "Slurm: node {} of {}, rendezvous at {} (port {}), --rdzv-id {}",
            n.node_rank,
            n.nnodes,
            mnist_env::join_host_port(&n.master_addr, n.master_port),
            n.port_from,
            n.run_id
        ));
        Ok(a)
    }

    /// `Some` with `--nnodes` above 1: the rendezvous endpoint, the advertised address and the
    /// fingerprint.
    fn multi_node(
        &self,
        train: &mnist_common::TrainConfig,
        env: &Environment,
        nproc: usize,
    ) -> Result<Option<MultiNode>, ArgsError> {
        if self.nnodes == 0 {
            return Err(ArgsError::Nodes {
                flag: "--nnodes",
                value: "0".into(),
                expected: "an integer ≥ 1".into(),
            });
        }
        if self.node_rank >= self.nnodes {
            return Err(ArgsError::Nodes {
                flag: "--node-rank",
                value: self.node_rank.to_string(),
                expected: format!("0 … {} (below --nnodes {})", self.nnodes - 1, self.nnodes),
            });
        }
        if self.nnodes == 1 {
            return Ok(None);
        }
        if self.train.evaluate.is_some() {
            return Err(ArgsError::Nodes {
                flag: "--nnodes",
                value: self.nnodes.to_string(),
                expected: "1 with --evaluate (evaluation runs one process on one machine)".into(),
            });
        }
        let (host, port) = match &self.rdzv_endpoint {
            Some(ep) => {
                let bad = || ArgsError::Nodes {
                    flag: "--rdzv-endpoint",
                    value: ep.clone(),
                    expected: "HOST:PORT, e.g. 10.0.0.1:29500".into(),
                };
                let (h, p) = ep.rsplit_once(':').ok_or_else(bad)?;
                let p: u16 = p.parse().map_err(|_| bad())?;
                if h.is_empty() {
                    return Err(bad());
                }
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    p,
                )
            }
            None => (self.master_addr.clone(), self.master_port),
        };
        if port == 0 && self.node_rank != 0 {
            return Err(ArgsError::Nodes {
                flag: "--master-port",
                value: "0".into(),
                expected: "node 0's actual port on the other nodes (0 = any free port works on node 0 only)".into(),
            });
        }
        let local_addr = match (&self.local_addr, &env.socket_ifname) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(ifname)) => Some(mnist_rdzv::net::interface_ipv4(ifname)?.to_string()),
            (None, None) => None,
        };
        let endpoint = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Some(MultiNode {
            nnodes: self.nnodes,
            node_rank: self.node_rank,
            endpoint,
            port,
            rdzv_id: self.rdzv_id.clone(),
            local_addr,
            fingerprint: crate::fingerprint::of(train, nproc)?,
        }))
    }
}

/// Fail unless `path` is a regular file with an execute bit.
fn check_executable(path: &Path) -> Result<(), ArgsError> {
    let problem = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "does not exist (build it with `cargo build --release -p mnist-worker`)".to_string()
        }
        Err(e) => format!("cannot be read: {e}"),
        Ok(m) if !m.is_file() => "is not a regular file".to_string(),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => "is not executable".to_string(),
        Ok(_) => return Ok(()),
    };
    Err(ArgsError::WorkerBin {
        path: path.to_path_buf(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(gpus: usize) -> Environment {
        // Any executable file works as the worker here.
        Environment {
            visible_gpus: gpus,
            current_exe: Some(PathBuf::from("/bin/sh")),
            console_is_terminal: false,
            socket_ifname: None,
            slurm: Ok(None),
        }
    }

    fn parse(extra: &[&str]) -> LaunchArgs {
        let args = ["mnist-launch", "--worker-bin", "/bin/sh"]
            .iter()
            .chain(extra);
        LaunchArgs::try_parse_argv(args).unwrap()
    }

    #[test]
    fn nproc_defaults() {
        assert_eq!(parse(&[]).resolve_in(&env(0)).unwrap().nproc, 1);
        assert_eq!(parse(&[]).resolve_in(&env(4)).unwrap().nproc, 4);
        assert_eq!(
            parse(&["--device", "cpu"])
                .resolve_in(&env(4))
                .unwrap()
                .nproc,
            1
        );
        assert_eq!(
            parse(&["--nproc", "3"]).resolve_in(&env(0)).unwrap().nproc,
            3
        );
        let c = parse(&["--gpus", "0,2"]).resolve_in(&env(4)).unwrap();
        assert_eq!((c.nproc, c.gpus), (2, Some(vec![0, 2])));
    }

    #[test]
    fn evaluate_forces_one_process() {
        let c = parse(&["--nproc", "4", "--evaluate", "m.pt"])
            .resolve_in(&env(4))
            .unwrap();
        assert_eq!(c.nproc, 1);
        assert_eq!(c.notes.len(), 1);
        let c = parse(&["--gpus", "1,3", "--evaluate", "m.pt"])
            .resolve_in(&env(4))
            .unwrap();
        assert_eq!((c.nproc, c.gpus), (1, Some(vec![1])));
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--nproc", "0"], "--nproc"),
            (&["--nproc", "3", "--gpus", "0,1"], "--nproc 3"),
            (&["--gpus", "0,7"], "GPU 7"),
            (&["--gpus", "0", "--gpu", "1"], "--gpu 1"),
            (&["--grace-period", "-1"], "--grace-period"),
            (&["--rendezvous-timeout", "0"], "--rendezvous-timeout"),
            (&["--epochs", "0"], "--epochs"),
        ];
        for (argv, needle) in cases {
            let e = parse(argv).resolve_in(&env(2)).unwrap_err().to_string();
            assert!(e.contains(needle), "{argv:?}: {e}");
        }
    }

    #[test]
    fn progress_auto_becomes_always_on_a_terminal() {
        let a = LaunchArgs::try_parse_argv(["mnist-launch", "--worker-bin", "/bin/sh"]).unwrap();
        let mut e = env(0);
        let has = |c: &LaunchConfig, v: &str| {
            c.worker_args
                .windows(2)
                .any(|w| w[0] == "--progress" && w[1] == v)
        };
        assert!(!a
            .resolve_in(&e)
            .unwrap()
            .worker_args
            .contains(&"--progress".into()));
        e.console_is_terminal = true;
        assert!(has(&a.resolve_in(&e).unwrap(), "always"));
        let a = LaunchArgs::try_parse_argv([
            "mnist-launch",
            "--worker-bin",
            "/bin/sh",
            "--progress",
            "never",
        ])
        .unwrap();
        assert!(has(&a.resolve_in(&e).unwrap(), "never"));
    }

    #[test]
    fn worker_bin_default_and_checks() {
        let mut a = LaunchArgs::try_parse_argv(["mnist-launch"]).unwrap();
        a.worker_bin = None; // whatever MNIST_WORKER_BIN says
        let e = Environment {
            visible_gpus: 0,
            current_exe: Some("/nonexistent/dir/mnist-launch".into()),
            console_is_terminal: false,
            socket_ifname: None,
            slurm: Ok(None),
        };
        let msg = a.resolve_in(&e).unwrap_err().to_string();
        assert!(
            msg.contains("/nonexistent/dir/mnist-worker") && msg.contains("does not exist"),
            "{msg}"
        );
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("w");
        std::fs::write(&plain, "").unwrap();
        a.worker_bin = Some(plain);
        let msg = a.resolve_in(&env(0)).unwrap_err().to_string();
        assert!(
            msg.contains("not executable") && msg.contains("--worker-bin"),
            "{msg}"
        );
    }

    #[test]
    fn several_nodes_resolve_their_endpoint_and_address() {
        let m = |extra: &[&str]| parse(extra).resolve_in(&env(0)).map(|c| c.multi);
        assert_eq!(
            m(&["--node-rank", "0"]).unwrap(),
            None,
            "one node: no rendezvous"
        );
        let c = m(&[
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-addr",
            "10.0.0.1",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.endpoint.as_str(), c.port, c.node_rank),
            ("10.0.0.1:29500", 29500, 1)
        );
        assert_eq!(
            (c.rdzv_id.as_str(), c.local_addr.as_deref()),
            ("none", None)
        );
        let c = m(&[
            "--nnodes",
            "3",
            "--rdzv-endpoint",
            "head:1234",
            "--rdzv-id",
            "j7",
            "--local-addr",
            "10.0.0.5",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.endpoint.as_str(), c.rdzv_id.as_str()),
            ("head:1234", "j7")
        );
        assert_eq!(c.local_addr.as_deref(), Some("10.0.0.5"));
        assert!(c
            .fingerprint
            .0
            .iter()
            .any(|(k, v)| k == "--model" && v == "LeNet"));
        let mut e = env(0);
        e.socket_ifname = Some("lo".into());
        let c = parse(&["--nnodes", "2"])
            .resolve_in(&e)
            .unwrap()
            .multi
            .unwrap();
        assert_eq!(c.local_addr.as_deref(), Some("127.0.0.1"));
        e.socket_ifname = Some("nosuchif9".into());
        let msg = parse(&["--nnodes", "2"])
            .resolve_in(&e)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("MNIST_SOCKET_IFNAME") && msg.contains("nosuchif9"),
            "{msg}"
        );
        let cases: &[(&[&str], &str)] = &[
            (&["--nnodes", "0"], "--nnodes"),
            (&["--nnodes", "2", "--node-rank", "2"], "--node-rank"),
            (
                &["--nnodes", "2", "--rdzv-endpoint", "nohostport"],
                "--rdzv-endpoint",
            ),
            (
                &["--nnodes", "2", "--rdzv-endpoint", "h:99999"],
                "--rdzv-endpoint",
            ),
            (
                &["--nnodes", "2", "--node-rank", "1", "--master-port", "0"],
                "--master-port",
            ),
            (&["--nnodes", "2", "--evaluate", "m.pt"], "--evaluate"),
        ];
        for (argv, needle) in cases {
            let e = parse(argv).resolve_in(&env(0)).unwrap_err().to_string();
            assert!(e.contains(needle), "{argv:?}: {e}");
        }
    }

    #[test]
    fn worker_args_are_the_training_flags_given() {
        let c = parse(&["--epochs", "3", "--model", "MLP", "--nproc", "2"])
            .resolve_in(&env(0))
            .unwrap();
        let want: Vec<OsString> = ["--epochs", "3", "--model", "MLP"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(c.worker_args, want);
        assert_eq!(c.log_dir, PathBuf::from("./logging/"));
    }

    #[test]
    fn under_srun_the_node_flags_come_from_slurm() {
        let nodes = mnist_env::slurm::SlurmNodes {
            nnodes: 2,
            node_rank: 1,
            master_addr: "node1".into(),
            master_port: 23456,
            port_from: "MASTER_PORT".into(),
            run_id: "7.0".into(),
            evidence: vec![],
        };
        let e = Environment {
            slurm: Ok(Some(nodes)),
            ..env(0)
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let c = parse(&["--nproc", "2", "--data", &data])
            .resolve_in(&e)
            .unwrap();
        let m = c.multi.expect("several nodes");
        assert_eq!((m.nnodes, m.node_rank), (2, 1));
        assert_eq!(
            (m.endpoint.as_str(), m.port, m.rdzv_id.as_str()),
            ("node1:23456", 23456, "7.0")
        );
        assert!(
            c.notes.iter().any(|n| n.starts_with("Slurm: node 1 of 2")),
            "{:?}",
            c.notes
        );
        // Any node flag given: Slurm is not consulted.
        let c = parse(&["--nproc", "2", "--nnodes", "1", "--data", &data])
            .resolve_in(&e)
            .unwrap();
        assert!(c.multi.is_none());
        // Slurm variables that cannot work are an error naming them.
        let e = Environment {
            slurm: Err(mnist_env::EnvError::Contradiction {
                engine: "Slurm".into(),
                detail: "SLURM_STEP_TASKS_PER_NODE=2: mnist-launch runs once per node".into(),
            }),
            ..env(0)
        };
        let msg = parse(&["--data", &data])
            .resolve_in(&e)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("SLURM_STEP_TASKS_PER_NODE=2"), "{msg}");
    }
}
