//! Types shared by `mnist-launch` and `mnist-worker`: the command-line flags, the resolved
//! configuration the training code takes, the launcher ↔ worker contract, the rendezvous
//! file format, and the reference's log-line format.

pub mod atomic_file;
pub mod cli;
pub mod config;
pub mod contract;
pub mod fault;
pub mod logging;
pub mod panics;
pub mod rendezvous;

pub use config::{
    BackendKind, CompressionKind, ConfigError, DeviceKind, ModelKind, ProgressMode, StepRange,
    TrainConfig,
};

pub use contract::FailureKind;

/// One line for an error and its causes: `msg: cause: cause`. Every error type of the
/// workspace keeps its source out of its own `Display` (thiserror's and anyhow's convention),
/// so each cause appears exactly once.
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("reading x.pt")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn error_line_prints_each_cause_once() {
        let e = Outer {
            source: std::io::Error::other("gone"),
        };
        assert_eq!(super::error_line(&e), "reading x.pt: gone");
        let a = anyhow::Error::new(e).context("rank 0");
        assert_eq!(super::error_line(a.as_ref()), "rank 0: reading x.pt: gone");
    }
}
