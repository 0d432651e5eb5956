//! `<path>/error.json` ([`mnist_common::contract::ERROR_FILE`]), torchrun's error file: written
//! atomically by the launcher whose worker failed, with the root cause (node, rank, pid, exit
//! code or signal, the worker's error message, time, the last lines of its log) and how each
//! restart round ended. A stale one from an earlier launch in the same folder is removed when
//! a launch starts, so the file always describes the last launch.

use crate::restart::History;
use crate::{Exit, WorkerFailure};
use mnist_common::contract::ERROR_FILE;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Remove `<dir>/error.json` left by an earlier launch (a missing file is fine).
pub fn remove_stale(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(ERROR_FILE));
}

fn time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A worker's own error message: the last `mnist-worker: error: …` line of its output `tail`.
pub fn worker_message(tail: &[String]) -> Option<String> {
    const PREFIX: &str = "mnist-worker: error: ";
    tail.iter().rev().find_map(|l| {
        l.find(PREFIX)
            .map(|i| l[i + PREFIX.len()..].trim().to_string())
    })
}

/// The failed worker's own error message, else the launcher's explanation, else how it ended.
fn message(f: &WorkerFailure) -> String {
    worker_message(&f.tail)
        .or_else(|| f.cause.clone())
        .unwrap_or_else(|| f.first.exit.to_string())
}

/// The error file's content for `failure` on node `node`, after the rounds in `history`.
pub fn content(node: usize, failure: &WorkerFailure, history: &History) -> Value {
    let e = &failure.first;
    let (exit_code, signal) = match &e.exit {
        Exit::Code(c) => (Some(*c), None),
        Exit::Signal { signo, .. } => (
            None,
            Some(Signal::try_from(*signo).map_or(signo.to_string(), |s| s.as_str().to_string())),
        ),
        Exit::Unknown(_) => (None, None),
    };
    let rounds: Vec<Value> = history
        .rounds
        .iter()
        .map(|r| {
            json!({
                "round": r.round,
                "run_id": r.run_id,
                "resumed": r.resumed,
                "started": time(r.started),
                "ended": r.ended.map(time),
                "status": r.status,
            })
        })
        .collect();
    json!({
        "message": failure.to_string(),
        "root_cause": {
            "node": node,
            "rank": e.rank,
            "pid": e.pid,
            "exit_code": exit_code,
            "signal": signal,
            "description": e.exit.to_string(),
            "cause": failure.cause,
            "error": message(failure),
            "time": time(SystemTime::now()),
            "log": failure.log,
            "log_tail": failure.tail,
        },
        "others": failure.others.iter().map(|o| json!({
            "rank": o.rank,
            "pid": o.pid,
            "description": o.exit.to_string(),
            "stopped_by_launcher": o.stopped,
        })).collect::<Vec<_>>(),
        "restarts": failure.restarts,
        "rounds": rounds,
    })
}

/// Write `<dir>/error.json` for `failure` atomically; returns its path.
pub fn write(
    dir: &Path,
    node: usize,
    failure: &WorkerFailure,
    history: &History,
) -> Result<PathBuf, mnist_common::atomic_file::AtomicWriteError> {
    let path = dir.join(ERROR_FILE);
    let text = serde_json::to_string_pretty(&content(node, failure, history))
        .unwrap_or_else(|e| format!("{{\"message\": \"cannot encode the error: {e}\"}}"));
    mnist_common::atomic_file::write_atomic(&path, |f| {
        use std::io::Write;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Exited;

    #[test]
    fn the_file_names_the_root_cause_and_every_round() {
        let dir = tempfile::tempdir().unwrap();
        let failure = WorkerFailure {
            first: Exited {
                rank: 1,
                pid: 4242,
                exit: Exit::Signal {
                    signo: 9,
                    core_dumped: false,
                },
                stopped: false,
                unresponsive: None,
            },
            log: dir.path().join("rank1.log"),
            tail: vec![
                "training".into(),
                "mnist-worker: error: rank 1: something broke".into(),
            ],
            others: vec![Exited {
                rank: 0,
                pid: 4241,
                exit: Exit::Code(143),
                stopped: true,
                unresponsive: None,
            }],
            cause: None,
            restarts: 1,
        };
        let mut h = History::default();
        h.start(0, "run-a", false);
        h.end(&Err(crate::LaunchError::WorkerFailed(Box::new(
            failure.clone(),
        ))));
        h.start(1, "run-b", true);
        h.end(&Err(crate::LaunchError::WorkerFailed(Box::new(
            failure.clone(),
        ))));
        let p = write(dir.path(), 0, &failure, &h).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let rc = &v["root_cause"];
        assert_eq!(
            (rc["node"].as_u64(), rc["rank"].as_u64()),
            (Some(0), Some(1))
        );
        assert_eq!(rc["pid"], 4242);
        assert_eq!(rc["signal"], "SIGKILL");
        assert!(rc["exit_code"].is_null());
        assert_eq!(rc["error"], "rank 1: something broke");
        assert_eq!(rc["log_tail"].as_array().unwrap().len(), 2);
        assert_eq!(v["restarts"], 1);
        let rounds = v["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2);
        assert_eq!(
            (rounds[1]["round"].as_u64(), rounds[1]["resumed"].as_bool()),
            (Some(1), Some(true))
        );
        assert!(rounds[0]["status"]
            .as_str()
            .unwrap()
            .contains("killed by signal SIGKILL"));
        assert_eq!(v["others"][0]["stopped_by_launcher"], true);
        remove_stale(dir.path());
        assert!(!p.exists());
    }
}
