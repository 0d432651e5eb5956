//! The worker's training library: data on the device, the model in flat buffers, SGD with
//! PyTorch's semantics and a cosine schedule, gradient averaging through a communicator,
//! evaluation, logs, metrics and checkpoints. `mnist-worker` calls [`run`].

pub mod batchnorm;
pub mod board;
pub mod breakdown;
pub mod cuda_runtime;
pub mod dataset;
pub mod device;
mod error;
pub mod evaluate;
pub mod fault;
pub mod flat;
pub mod guard;
pub mod host;
pub mod interrupt;
pub mod metrics;
pub mod optim;
pub mod phases;
pub mod report;
pub mod resume;
pub mod schedule;
pub mod session;
pub mod split;
pub mod state;
pub mod sync;
pub mod timeline;
pub mod trainer;

pub use error::TrainError;
pub use session::Session;

use mnist_common::contract::WorkerIdentity;
use mnist_common::TrainConfig;

/// Train or evaluate as `cfg` says, as the process `identity`. On failure the peers are told
/// (so they stop instead of waiting) and the error is returned; a panic (tch reports libtorch
/// errors by panicking) becomes [`TrainError::Torch`] or [`TrainError::Internal`].
pub fn run(cfg: &TrainConfig, identity: &WorkerIdentity) -> Result<(), TrainError> {
    let mut s = mnist_common::panics::catch(|| Session::start(cfg, identity))
        .unwrap_or_else(|p| Err(TrainError::from_panic(p, "start-up")))?;
    let result = mnist_common::panics::catch(|| {
        prepare_data(cfg, &mut s).and_then(|()| trainer::run_session(cfg, &mut s))
    })
    .unwrap_or_else(|p| Err(TrainError::from_panic(p, "training")));
    if let Err(e) = &result {
        s.comm.abort(&mnist_common::error_line(e));
    }
    result
}

/// With `--download`, rank 0 fetches missing files while the others wait.
fn prepare_data(cfg: &TrainConfig, s: &mut Session) -> Result<(), TrainError> {
    if cfg.download {
        if s.comm.rank() == 0 {
            let log = &s.log;
            mnist_data::download(&cfg.data, &cfg.mirrors, &mut |m| log.info(m))?;
        }
        s.comm.barrier()?;
    }
    Ok(())
}
