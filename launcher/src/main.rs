//! `mnist-launch`: parse the flags, resolve them, and hand over to [`mnist_launch::run`]; or,
//! as `mnist-launch plot RUN_DIR … -o FILE`, draw several runs' curves
//! ([`mnist_launch::plot`]). Errors are printed as one line (`mnist-launch: error: …`),
//! followed by the failed worker's log tail when there is one; the exit codes are listed in
//! the library's documentation.

use mnist_launch::plot::{self, PlotArgs};
use mnist_launch::{LaunchArgs, LaunchError};
use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if plot::wanted(&argv) {
        return plot_main(argv);
    }
    let args = LaunchArgs::parse_env();
    let result = args
        .resolve()
        .map_err(LaunchError::from)
        .and_then(|cfg| mnist_launch::run(&cfg));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = err.exit_code();
            let details = err.details();
            eprintln!("mnist-launch: error: {}", mnist_common::error_line(&err));
            for line in details {
                eprintln!("mnist-launch: {line}");
            }
            exit(code)
        }
    }
}

/// `mnist-launch plot …`: exit 0 with the picture written, 2 for bad input (a folder without
/// a readable metrics.jsonl, an output that is neither .png nor .svg), 1 when drawing or
/// writing failed.
fn plot_main(argv: Vec<OsString>) -> ExitCode {
    use mnist_common::contract::{EXIT_FAILURE, EXIT_USAGE};
    // "mnist-launch plot" is the program name clap shows in usage messages.
    let rest = std::iter::once(OsString::from("mnist-launch plot")).chain(argv.into_iter().skip(2));
    let args = PlotArgs::parse_from_rest(rest);
    match plot::run(&args) {
        Ok(file) => {
            println!(
                "mnist-launch: wrote {} ({} run(s))",
                file.display(),
                args.runs.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("mnist-launch: error: {}", mnist_common::error_line(&err));
            exit(if err.is_bad_input() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            })
        }
    }
}

fn exit(code: i32) -> ExitCode {
    let fallback = mnist_common::contract::EXIT_FAILURE as u8;
    ExitCode::from(u8::try_from(code).unwrap_or(fallback))
}
