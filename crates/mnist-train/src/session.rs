//! What a worker sets up before training: intra-op threads, the device, the communicator,
//! the output folder with its log, and the console progress bar.

use crate::{device, TrainError};
use indicatif::{ProgressBar, ProgressDrawTarget, TermLike};
use mnist_comm::{Communicator, Solo};
use mnist_common::contract::WorkerIdentity;
use mnist_common::fault::FaultPlan;
use mnist_common::logging::RunLog;
use mnist_common::{BackendKind, ProgressMode, TrainConfig};
use mnist_nccl::NcclGroup;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tch::Device;

/// A worker's established environment.
pub struct Session {
    /// Where tensors live.
    pub device: Device,
    /// The process group: the CPU backend, or NCCL for device buffers ([`NcclGroup`]) with the
    /// CPU group beside it for host-side collectives.
    pub comm: Box<dyn Communicator>,
    /// Rank 0: console and `<path>/mnist_train.log`; other ranks: console only.
    pub log: RunLog,
    /// CPU threads this process may use (`--threads`, `OMP_NUM_THREADS`, or cores / processes).
    pub threads: usize,
    /// Who this worker is (ranks, run id).
    pub identity: WorkerIdentity,
    /// The faults `MNIST_FAULT` asks for (a test hook; empty unless set).
    pub faults: FaultPlan,
    /// The launcher's restart round (`MNIST_RESTART_ROUND`; 0: the first attempt).
    pub restart_round: u32,
    /// When this process started setting up (the run summary's wall time).
    pub started: Instant,
    progress: bool,
}

/// Whether this run reduces gradients with NCCL: CUDA device and `--backend nccl`, or `auto`
/// with more than one process.
pub fn wants_nccl(backend: BackendKind, device: Device, world_size: usize) -> bool {
    device.is_cuda()
        && match backend {
            BackendKind::Nccl => true,
            BackendKind::Auto => world_size > 1,
            BackendKind::Cpu => false,
        }
}

/// The restart round the launcher gave (`MNIST_RESTART_ROUND`), 0 when unset.
fn restart_round() -> Result<u32, mnist_common::ConfigError> {
    use mnist_common::contract::ENV_RESTART_ROUND;
    match std::env::var(ENV_RESTART_ROUND) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| mnist_common::ConfigError {
            flag: ENV_RESTART_ROUND,
            value: v,
            expected: "a whole number ≥ 0",
        }),
        _ => Ok(0),
    }
}

/// Intra-op threads: `--threads`, else `OMP_NUM_THREADS`, else cores / processes here.
pub fn thread_count(cfg: &TrainConfig, local_world_size: usize) -> usize {
    cfg.threads
        .or_else(|| {
            std::env::var(mnist_common::contract::ENV_OMP_NUM_THREADS)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|&n| n > 0)
        })
        .unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / local_world_size.max(1)).max(1)
        })
}

impl Session {
    /// Set everything up for `identity` under `cfg`.
    pub fn start(cfg: &TrainConfig, identity: &WorkerIdentity) -> Result<Session, TrainError> {
        if let crate::cuda_runtime::CudaRuntime::BadSetting(m) = crate::cuda_runtime::load() {
            return Err(TrainError::Device(m.clone()));
        }
        let started = Instant::now();
        let faults = FaultPlan::from_env()?;
        faults.check_world(identity.world_size)?;
        let restart_round = restart_round()?;
        let threads = thread_count(cfg, identity.local_world_size);
        tch::set_num_threads(threads as i32);
        let gpus = std::env::var(mnist_common::contract::ENV_GPUS).ok();
        let device = device::select(
            cfg.device,
            cfg.gpu,
            gpus.as_deref(),
            identity.local_rank,
            device::cuda_count(),
        )
        .map_err(|e| match (e, crate::cuda_runtime::load()) {
            (TrainError::Device(m), rt @ crate::cuda_runtime::CudaRuntime::Absent(_)) => {
                TrainError::Device(format!("{m}; {rt}"))
            }
            (e, _) => e,
        })?;
        if cfg.backend == BackendKind::Nccl && !device.is_cuda() {
            return Err(TrainError::Device("--backend nccl needs CUDA devices; this run is on the CPU (use --backend cpu or auto)".into()));
        }
        let log = if identity.rank == 0 {
            std::fs::create_dir_all(&cfg.path).map_err(|e| TrainError::OutputDir {
                path: cfg.path.clone(),
                source: e,
            })?;
            RunLog::open(&cfg.path.join(mnist_common::contract::LOG_FILE)).map_err(|e| {
                TrainError::OutputDir {
                    path: cfg.path.clone(),
                    source: e,
                }
            })?
        } else {
            RunLog::console()
        };
        let mut use_nccl = wants_nccl(cfg.backend, device, identity.world_size);
        let mut notes = Vec::new();
        if restart_round > 0 {
            notes.push(format!(
                "Restart round {restart_round} ({}): the launcher restarted the workers after a failure",
                mnist_common::contract::ENV_RESTART_ROUND
            ));
        }
        if !device.is_cuda() && crate::cuda_runtime::load().is_loaded() {
            notes.push(format!(
                "{} (CUDA runtime registered: {}), but no usable GPU: training on the CPU",
                crate::cuda_runtime::load(),
                tch::utils::has_cudart()
            ));
        }
        if !faults.is_empty() {
            notes.push(format!(
                "Fault injection ({}, a test hook): {faults}",
                mnist_common::contract::ENV_FAULT
            ));
        }
        if use_nccl {
            if let Err(e) = mnist_nccl::available() {
                if cfg.backend == BackendKind::Nccl {
                    return Err(TrainError::Device(format!("--backend nccl: {e}")));
                }
                notes.push(format!(
                    "NCCL unavailable ({e}); reducing gradients over the CPU backend"
                ));
                use_nccl = false;
            }
        }
        let nccl_id = if use_nccl && identity.rank == 0 {
            Some(mnist_nccl::new_unique_id()?.to_vec())
        } else {
            None
        };
        let transport = match std::env::var(mnist_common::contract::ENV_COMM_TRANSPORT) {
            Ok(v) if !v.is_empty() => {
                mnist_comm::Transport::parse(&v).ok_or(mnist_common::ConfigError {
                    flag: mnist_common::contract::ENV_COMM_TRANSPORT,
                    value: v,
                    expected: "auto, shm, tcp or star",
                })?
            }
            _ => mnist_comm::Transport::Auto,
        };
        let (mut comm, payload): (Box<dyn Communicator>, Vec<u8>) = if identity.world_size == 1 {
            (Box::new(Solo), nccl_id.clone().unwrap_or_default())
        } else {
            mnist_comm::connect(
                identity,
                mnist_comm::CommOptions {
                    timeout: Duration::from_secs_f64(cfg.timeout_s),
                    rendezvous_timeout: Duration::from_secs_f64(identity.rendezvous_timeout_s),
                    transport,
                    rank0_payload: nccl_id,
                },
            )?
        };
        if let (true, Device::Cuda(ordinal)) = (use_nccl, device) {
            let nccl = mnist_nccl::NcclComm::init_with_timeout(
                &payload,
                identity.rank,
                identity.world_size,
                ordinal,
                Duration::from_secs_f64(cfg.timeout_s),
            )?;
            comm = Box::new(NcclGroup::new(nccl, comm));
        }
        if identity.rank == 0 {
            let backend = if comm.device().is_some() {
                "NCCL"
            } else if identity.world_size > 1 {
                "CPU (shared memory / TCP)"
            } else {
                "none (single process)"
            };
            let facts = mnist_viz::console::RunFacts {
                world_size: identity.world_size,
                device: crate::report::device_name(device),
                threads,
                backend: backend.into(),
                run_id: identity.run_id.clone(),
                restart_round,
            };
            crate::report::announce(cfg, identity, &log, &facts);
            for n in &notes {
                log.info(n);
            }
        }
        let progress = identity.rank == 0
            && match cfg.progress {
                ProgressMode::Always => true,
                ProgressMode::Never => false,
                ProgressMode::Auto => std::io::stdout().is_terminal(),
            };
        Ok(Session {
            device,
            comm,
            log,
            threads,
            identity: identity.clone(),
            faults,
            restart_round,
            started,
            progress,
        })
    }

    /// A progress bar for one epoch of `len` batches, when the console wants one.
    pub fn progress_bar(
        &self,
        len: u64,
        epoch: usize,
        plan: crate::report::BarPlan,
    ) -> Option<ProgressBar> {
        if !self.progress {
            return None;
        }
        let pb = if std::io::stderr().is_terminal() {
            ProgressBar::new(len)
        } else {
            // `--progress always` with stderr a pipe (under mnist-launch, which passes the
            // bytes through to its terminal): draw with plain ANSI sequences.
            ProgressBar::with_draw_target(
                Some(len),
                ProgressDrawTarget::term_like_with_hz(Box::new(PipeTerm), 4),
            )
        };
        let style = crate::report::bar_style(plan);
        pb.set_style(style);
        pb.set_prefix(format!("{epoch}/{}", epoch + plan.epochs_after));
        Some(pb)
    }
}

/// A terminal behind a pipe: stderr, drawn with `\r` and ANSI clear-line (the launcher echoes
/// rank 0's bytes to its own terminal as they arrive).
#[derive(Debug)]
struct PipeTerm;

impl PipeTerm {
    fn put(&self, s: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut e = std::io::stderr().lock();
        e.write_all(s.as_bytes())?;
        e.flush()
    }
}

impl TermLike for PipeTerm {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\x1b[{n}A"))?;
        }
        Ok(())
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\x1b[{n}B"))?;
        }
        Ok(())
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\x1b[{n}C"))?;
        }
        Ok(())
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\x1b[{n}D"))?;
        }
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.put(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.put(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.put("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}
