//! Types shared by `mnist-launch` and `mnist-worker`: the command-line flags, the resolved
//! configuration the training code takes, the launcher ↔ worker contract, the rendezvous
//! file format, and the reference's log-line format.

pub mod cli;
pub mod config;
pub mod contract;
pub mod logging;
pub mod rendezvous;

pub use config::{BackendKind, CompressionKind, ConfigError, DeviceKind, ModelKind, TrainConfig};
