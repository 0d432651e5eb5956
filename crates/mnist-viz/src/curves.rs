//! `<path>/curves.png` and `curves.svg`: the run's curves so far, redrawn by rank 0 after every
//! epoch from `metrics.jsonl` (so a resumed run's picture covers the epochs before the
//! restart too). Each file is replaced atomically: a viewer never sees half a picture.

use crate::chart::{self, Series};
use crate::metrics::Run;
use crate::VizError;
use std::path::{Path, PathBuf};

/// The bitmap picture inside `--path`.
pub const CURVES_PNG: &str = mnist_common::contract::CURVES_PNG;
/// The vector picture inside `--path`.
pub const CURVES_SVG: &str = mnist_common::contract::CURVES_SVG;

/// Redraw `<dir>/curves.png` and `<dir>/curves.svg` from `<dir>/metrics.jsonl`; `model` names
/// the network in the title. Returns the two paths.
pub fn write(dir: &Path, model: &str) -> Result<[PathBuf; 2], VizError> {
    let run = Run::read(dir)?;
    let last = run.epochs.last().expect("a run has at least one epoch");
    let title = format!(
        "Training curves: {model}, {}, compression {} ({})",
        crate::console::count(last.world_size, "process", "processes"),
        last.compression,
        dir.display()
    );
    let series = [Series {
        label: run.label(),
        epochs: &run.epochs,
    }];
    let paths = [dir.join(CURVES_PNG), dir.join(CURVES_SVG)];
    for p in &paths {
        chart::write(p, &title, &series)?;
    }
    Ok(paths)
}
