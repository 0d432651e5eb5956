//! `mnist-launch`: parse the flags, resolve them, and hand over to [`mnist_launch::run`].
//! Errors are printed as one line (`mnist-launch: error: …`), followed by the failed worker's
//! log tail when there is one; the exit codes are listed in the library's documentation.

use mnist_launch::{LaunchArgs, LaunchError};
use std::process::ExitCode;

fn main() -> ExitCode {
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
            let fallback = mnist_common::contract::EXIT_FAILURE as u8;
            ExitCode::from(u8::try_from(code).unwrap_or(fallback))
        }
    }
}
