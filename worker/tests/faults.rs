//! The fault-injection hook `MNIST_FAULT` (README "Fault injection"): each kind acts in the
//! named rank at exactly the named global step, a bad value is bad input, and nothing is
//! injected unless the variable is set.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// Training flags for `out` on `data`: batch 32, every step logged.
fn train_args(data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    with_base(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--epochs",
        epochs,
        "--batch-size",
        32,
        "--test-batch-size",
        100,
        "--log-interval",
        1
    ])
}

/// Run `bin` with `args` and `MNIST_FAULT=fault`.
fn run_with_fault(bin: &Path, args: Vec<String>, fault: &str) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env(mnist_common::contract::ENV_FAULT, fault);
    spawn(cmd).wait(DEADLINE)
}

/// Launch 2 CPU ranks of 1 epoch on 640 images (10 steps per rank) with `fault`.
fn launch_two(fault: &str) -> (Output, tempfile::TempDir) {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let out = tmp.path().join("run");
    let mut a = train_args(&data, &out, 1);
    a.extend(args!["--backend", "cpu", "--nproc", 2]);
    (run_with_fault(&launcher_bin(), a, fault), tmp)
}

fn launcher_error(o: &Output) -> String {
    o.stderr
        .lines()
        .find(|l| l.starts_with("mnist-launch: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", o.stderr))
        .to_string()
}

/// The steps rank 1 finished, from its `rank 1: epoch 1 step k/10` lines.
fn steps_logged_by_rank1(tmp: &Path) -> Vec<usize> {
    std::fs::read_to_string(tmp.join("run/rank1.log"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split("rank 1: epoch 1 step ").nth(1))
        .filter_map(|s| s.split('/').next()?.parse().ok())
        .collect()
}

#[test]
fn slow_delays_every_step_of_its_rank_from_its_step_on() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 320, 100);
    let out = tmp.path().join("run");
    // 10 steps; steps 2..9 sleep 300 ms each: at least 2.4 s in the training loop.
    let o = run_with_fault(&worker_bin(), train_args(&data, &out, 1), "0:2:slow=300ms")
        .ok("slow worker");
    let notes: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("MNIST_FAULT:"))
        .collect();
    assert_eq!(
        notes,
        ["MNIST_FAULT: rank 0 at step 2: slow: sleeping 300 ms before every step from here on"],
        "{}",
        o.stderr
    );
    assert!(
        o.stdout
            .contains("Fault injection (MNIST_FAULT, a test hook): 0:2:slow=300ms"),
        "{}",
        o.stdout
    );
    let m = metrics(&out);
    let secs = m[0]["epoch_seconds"].as_f64().unwrap();
    assert!(secs >= 2.4, "8 slow steps of 300 ms took only {secs} s");
    // Without the variable nothing is injected.
    let plain = worker(args![
        "--data",
        data.display(),
        "--path",
        tmp.path().join("plain").display(),
        "--epochs",
        1,
        "--batch-size",
        32
    ])
    .ok("plain worker");
    assert!(!plain.stderr.contains("MNIST_FAULT"), "{}", plain.stderr);
    assert!(
        !plain.stdout.contains("Fault injection"),
        "{}",
        plain.stdout
    );
}

#[test]
fn exit_code_ends_its_rank_at_exactly_its_step() {
    let (o, tmp) = launch_two("1:3:exit-code=7");
    assert!(!o.status.success(), "{}", o.stderr);
    let err = launcher_error(&o);
    assert!(
        err.contains("rank 1") && err.contains("exited with code 7"),
        "{err}"
    );
    // Steps 0, 1 and 2 done (logged as 1..=3), then the exit before the fourth.
    assert_eq!(steps_logged_by_rank1(tmp.path()), [1, 2, 3]);
    let log1 = std::fs::read_to_string(tmp.path().join("run/rank1.log")).unwrap();
    assert!(
        log1.contains("MNIST_FAULT: rank 1 at step 3: exiting with code 7"),
        "{log1}"
    );
}

#[test]
fn crash_and_abort_die_by_their_signals() {
    for (kind, signal) in [("crash", "SIGSEGV"), ("abort", "SIGABRT")] {
        let (o, tmp) = launch_two(&format!("1:2:{kind}"));
        assert!(!o.status.success(), "{}", o.stderr);
        let err = launcher_error(&o);
        assert!(
            err.contains("rank 1") && err.contains(signal),
            "{kind}: {err}"
        );
        assert_eq!(steps_logged_by_rank1(tmp.path()), [1, 2], "{kind}");
    }
}

#[test]
fn a_bad_value_is_bad_input_quoting_it() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 64, 20);
    for (value, says) in [
        (
            "1:x:crash",
            "MNIST_FAULT=1:x:crash: step `x` in `1:x:crash` is not a whole number",
        ),
        ("0:0:explode", "unknown kind `explode`"),
        (
            "3:0:hang",
            "rank 3 in `3:0:hang` is not below the world size 1",
        ),
    ] {
        let out = tmp.path().join("run");
        let o = run_with_fault(&worker_bin(), train_args(&data, &out, 1), value);
        assert_eq!(o.status.code(), Some(2), "{value}: {}", o.stderr);
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{value}: {}", o.stderr);
        assert!(
            lines[0].starts_with("mnist-worker: error: ") && lines[0].contains(says),
            "{value}: {}",
            lines[0]
        );
    }
}

#[test]
fn a_corrupted_gradient_is_caught_naming_its_rank_and_step() {
    let (o, tmp) = launch_two("1:4:corrupt-gradient");
    assert_eq!(o.status.code(), Some(1), "{}", o.stderr);
    let err = launcher_error(&o);
    assert!(err.contains("worker rank 1"), "{err}");
    let log1 = std::fs::read_to_string(tmp.path().join("run/rank1.log")).unwrap();
    assert!(
        log1.contains("MNIST_FAULT: rank 1 at step 4: corrupt-gradient")
            && log1.contains(
                "rank 1: the local gradient of step 4 holds NaN or Inf before the all-reduce"
            ),
        "{log1}"
    );
    let log0 = std::fs::read_to_string(tmp.path().join("run/rank0.log")).unwrap();
    assert!(
        log0.contains("peer rank 1 aborted: the local gradient of step 4"),
        "{log0}"
    );
    // Nothing non-finite reached a checkpoint or model file: the run stopped inside epoch 1.
    assert!(!tmp.path().join("run/mnist_model.pt").exists());
    assert_eq!(steps_logged_by_rank1(tmp.path()), [1, 2, 3, 4]);
}
