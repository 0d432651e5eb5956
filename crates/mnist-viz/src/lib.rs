//! What a run did, shown to people: the console's start-up lines and `config.json`
//! ([`console`]), the end-of-run summary table ([`summary`]), the per-epoch curves
//! `curves.png` / `curves.svg` ([`curves`]) and the comparison of several runs that
//! `mnist-launch plot` draws ([`compare`]). Everything is read from, or written beside, a run's
//! `metrics.jsonl` ([`metrics`]); nothing here needs libtorch, so the launcher uses it too.
//!
//! Charts are drawn with `plotters`; their text comes from DejaVu Sans, embedded in the binary
//! ([`font`]), so pictures have labels on a machine without any font installed.

pub mod chart;
pub mod compare;
pub mod console;
pub mod curves;
mod error;
pub mod font;
pub mod metrics;
pub mod summary;

pub use error::VizError;
