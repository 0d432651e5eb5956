//! Test prerequisites that skip visibly.
//!
//! A test that cannot run here (no GPU, no Python with torch, not root, no `mpirun`) calls one
//! of the functions below instead of printing into captured output that nobody reads:
//!
//! - the skip is appended to the file named by `MNIST_SKIP_LOG` (the test command sets it and
//!   lists every skip, with its reason, in its closing summary), and printed to stderr;
//! - when the prerequisite's key is listed in `MNIST_REQUIRE` (comma-separated, e.g.
//!   `python,data`), the test **fails** instead: CI is supposed to have it, so its absence is a
//!   broken set-up, not a reason to pass.
//!
//! Keys: `python`, `data`, `gpu`, `root`, and a program's name for [`program`].

pub mod netns;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable naming the file skips are appended to.
pub const SKIP_LOG_VAR: &str = "MNIST_SKIP_LOG";
/// Environment variable listing prerequisites whose absence fails the test.
pub const REQUIRE_VAR: &str = "MNIST_REQUIRE";

/// Whether `key` is listed in `MNIST_REQUIRE`.
pub fn required(key: &str) -> bool {
    std::env::var(REQUIRE_VAR)
        .map(|v| v.split(',').any(|k| k.trim() == key))
        .unwrap_or(false)
}

/// Record that `test` did not run because prerequisite `key` is missing (`detail` says what
/// was looked for). Panics instead when `key` is required (see the crate docs).
pub fn skip(test: &str, key: &str, detail: &str) {
    if required(key) {
        panic!(
            "{test}: prerequisite `{key}` is missing ({detail}), and {REQUIRE_VAR} says this \
             machine must have it; run the set-up (scripts/test.sh does) or fix the environment"
        );
    }
    let line = format!("{test}: needs {key} ({detail})\n");
    eprint!("SKIPPED {line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR).filter(|p| !p.is_empty()) {
        // One write of one short line with O_APPEND: concurrent tests do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "{test}: cannot record the skip in {}: {e}",
                Path::new(&path).display()
            );
        }
    }
}

/// `$MNIST_PYTHON` (a Python with torch 2.11, set by `scripts/env.sh`), or `None` after
/// recording a skip of `test` (key `python`).
pub fn python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("MNIST_PYTHON") {
        Some(p) if !p.is_empty() && Path::new(&p).exists() => Some(PathBuf::from(p)),
        Some(p) if !p.is_empty() => {
            skip(
                test,
                "python",
                &format!("MNIST_PYTHON={} does not exist", Path::new(&p).display()),
            );
            None
        }
        _ => {
            skip(
                test,
                "python",
                "MNIST_PYTHON not set; source scripts/env.sh",
            );
            None
        }
    }
}

/// The repository root (this crate lives in `crates/mnist-testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A folder holding the real MNIST files (gzipped or raw IDX): `MNIST_DATA_DIR`, the
/// repository's own `data/mnist`, or the shared copy beside the checkout; `None` after
/// recording a skip (key `data`). `has_files` decides whether a candidate is complete.
pub fn mnist_dir(test: &str, has_files: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let root = repo_root();
    let candidates = [
        std::env::var_os("MNIST_DATA_DIR").map(PathBuf::from),
        Some(root.join("data/mnist")),
        Some(root.join("../shared/data/mnist")),
    ];
    let found = candidates.iter().flatten().find(|d| has_files(d)).cloned();
    if found.is_none() {
        let looked: Vec<String> = candidates
            .iter()
            .flatten()
            .map(|d| d.display().to_string())
            .collect();
        skip(
            test,
            "data",
            &format!("no MNIST files in {}", looked.join(", ")),
        );
    }
    found
}

/// Whether this process runs as root; records a skip of `test` (key `root`) when not.
pub fn root(test: &str, why: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        skip(test, "root", why);
    }
    euid == 0
}

/// The program `name` found on `PATH`, or `None` after recording a skip (key = `name`).
pub fn program(test: &str, name: &str) -> Option<PathBuf> {
    let found = find_on_path(name);
    if found.is_none() {
        skip(test, name, &format!("`{name}` not found on PATH"));
    }
    found
}

/// The program `name` found on `PATH`, without recording anything.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_list_is_split_on_commas() {
        // Only reads the variable; the suite's own MNIST_REQUIRE does not list this key.
        assert!(!required("no-such-prerequisite"));
    }

    #[test]
    fn programs_are_found_on_path_and_missing_ones_are_not() {
        assert!(find_on_path("sh").is_some(), "no `sh` on PATH");
        assert!(find_on_path("no-such-program-mnist-ddp").is_none());
    }
}
