//! Seeing what a run did (README "Observing a run"): the time breakdown and straggler report
//! in `metrics.jsonl` and the log.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// Training flags for `out` on `data`: batch 32, one epoch.
fn train_args(data: &Path, out: &Path) -> Vec<String> {
    with_base(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--epochs",
        1,
        "--batch-size",
        32,
        "--test-batch-size",
        100
    ])
}

/// Two ranks, rank 1 sleeping 60 ms before every step (`MNIST_FAULT` slow): rank 1 is
/// reported as the straggler by about that much, and rank 0 waits for it.
#[test]
fn a_slow_rank_is_reported_as_the_straggler() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let out = tmp.path().join("run");
    let mut a = train_args(&data, &out);
    a.extend(args!["--backend", "cpu", "--nproc", 2]);
    let mut cmd = Command::new(launcher_bin());
    cmd.args(a)
        .env(mnist_common::contract::ENV_FAULT, "1:0:slow=60ms");
    let o = spawn(cmd).wait(DEADLINE).ok("two ranks, rank 1 slow");
    let m = &metrics(&out)[0];
    let f = |k: &str| {
        m[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing or not a number in {m}"))
    };
    assert_eq!(m["straggler_rank"].as_u64(), Some(1), "{m}");
    // 60 ms of sleep per step; other noise on a loaded machine can only blur it so far.
    let by = f("straggler_ms");
    assert!((40.0..2000.0).contains(&by), "straggler_ms {by} in {m}");
    assert!(f("straggler_steps_pct") >= 75.0, "{m}");
    // Rank 0 waits ~60 ms per step for rank 1 (10 steps): in p99 and the epoch's total.
    assert!(f("step_wait_ms_p99") >= 40.0, "{m}");
    assert!(f("epoch_wait_s") >= 0.5 * 10.0 * 0.040, "{m}");
    let by_rank = m["step_compute_ms_by_rank"].as_array().unwrap();
    assert_eq!(by_rank.len(), 2, "{m}");
    assert!(
        by_rank[1].as_f64().unwrap() >= by_rank[0].as_f64().unwrap() + 40.0,
        "{m}"
    );
    for k in [
        "step_compute_ms_median",
        "step_comm_ms_median",
        "step_comm_ms_p99",
        "epoch_compute_s",
        "epoch_comm_s",
    ] {
        assert!(f(k) >= 0.0, "{k} in {m}");
    }
    let line = o
        .stdout
        .lines()
        .find(|l| l.contains("Time per step (ms"))
        .unwrap_or_else(|| panic!("no time breakdown line in:\n{}", o.stdout));
    assert!(
        line.contains("straggler: rank 1,") && line.contains("waiting for the slowest rank"),
        "{line}"
    );
}

/// One process: the breakdown is there, with nothing to wait for and no straggler.
#[test]
fn one_process_has_a_breakdown_without_waiting() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 320, 100);
    let out = tmp.path().join("run");
    let o = run(&worker_bin(), train_args(&data, &out)).ok("one process");
    let m = &metrics(&out)[0];
    assert_eq!(m["step_wait_ms_p99"].as_f64(), Some(0.0), "{m}");
    assert_eq!(m["step_comm_ms_p99"].as_f64(), Some(0.0), "{m}");
    assert!(m["straggler_rank"].is_null(), "{m}");
    let compute = m["epoch_compute_s"].as_f64().unwrap();
    let secs = m["epoch_seconds"].as_f64().unwrap();
    // The steps are the training loop, less logging and the like.
    assert!(compute > 0.0 && compute <= secs, "{compute} of {secs} s");
    assert!(o.stdout.contains("Time per step (ms"), "{}", o.stdout);
}
