//! `mnist-launch plot RUN_DIR [RUN_DIR …] -o compare.png`: several runs' curves overlaid, one
//! colour per run, the legend saying each run's compression method and world size (and its
//! folder when two runs would read alike).

use crate::chart::{self, Format, Series};
use crate::metrics::Run;
use crate::VizError;
use std::path::{Path, PathBuf};

/// Legend labels for `runs`: "method, N processes", with the folder added to labels that
/// would otherwise repeat.
pub fn labels(runs: &[Run]) -> Vec<String> {
    let plain: Vec<String> = runs.iter().map(Run::label).collect();
    plain
        .iter()
        .zip(runs)
        .map(|(l, r)| {
            if plain.iter().filter(|o| *o == l).count() > 1 {
                format!("{l} ({})", folder_name(&r.dir))
            } else {
                l.clone()
            }
        })
        .collect()
}

/// The last component of `dir` (or the whole path when it has none, e.g. `.`).
fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Read every run in `dirs` and draw them together into `out` (PNG or SVG by its extension),
/// atomically. The first folder without a readable `metrics.jsonl` is the error.
pub fn write(dirs: &[PathBuf], out: &Path) -> Result<(), VizError> {
    Format::of(out)?;
    let runs = dirs
        .iter()
        .map(|d| Run::read(d))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = labels(&runs);
    let series: Vec<Series> = runs
        .iter()
        .zip(labels)
        .map(|(r, label)| Series {
            label,
            epochs: &r.epochs,
        })
        .collect();
    let title = if runs.len() == 1 {
        format!("{}: {}", series[0].label, runs[0].dir.display())
    } else {
        let names: Vec<String> = runs.iter().map(|r| folder_name(&r.dir)).collect();
        let names = names.join(", ");
        if names.chars().count() <= 60 {
            format!("{} runs compared: {names}", runs.len())
        } else {
            format!("{} runs compared", runs.len())
        }
    };
    chart::write(out, &title, &series)
}
