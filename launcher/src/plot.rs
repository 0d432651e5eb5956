//! `mnist-launch plot RUN_DIR [RUN_DIR …] -o compare.png`: several runs' curves in one
//! picture, from each run's `metrics.jsonl` (drawn by `mnist_viz::compare`).

use clap::Parser;
use std::ffi::OsString;
use std::path::PathBuf;

/// The first argument that selects this subcommand.
pub const SUBCOMMAND: &str = "plot";

/// Overlay the curves of several training runs (loss, test accuracy, learning rate, images/s
/// against the epoch), one colour per run, labelled with its compression method and world size.
#[derive(Parser, Clone, Debug)]
#[command(name = "mnist-launch plot", version)]
pub struct PlotArgs {
    /// Run folders (each a training run's --path, holding metrics.jsonl).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// The picture to write: PNG or SVG, chosen by the extension.
    #[arg(short, long, default_value = "compare.png", value_name = "FILE")]
    pub output: PathBuf,
}

impl PlotArgs {
    /// Parse the arguments after `plot` (`argv[0]` is the program name), or exit with clap's
    /// usage message (status 2).
    pub fn parse_from_rest(argv: impl IntoIterator<Item = OsString>) -> PlotArgs {
        PlotArgs::parse_from(argv)
    }
}

/// Whether `argv` (program name first) asks for the `plot` subcommand.
pub fn wanted(argv: &[OsString]) -> bool {
    argv.get(1).is_some_and(|a| a == SUBCOMMAND)
}

/// Draw the comparison `args` asks for; returns the picture's path.
pub fn run(args: &PlotArgs) -> Result<PathBuf, mnist_viz::VizError> {
    mnist_viz::compare::write(&args.runs, &args.output)?;
    Ok(args.output.clone())
}
