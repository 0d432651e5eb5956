//! Several worker processes: through `mnist-launch` (2 and 3 ranks, every `--compression`
//! method with `--check-sync 1`, a rank killed mid-training) and started by hand (2 ranks ×
//! batch B equal 1 rank × batch 2B over the same global sample order).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Run `mnist-launch` with `BASE` plus `extra`.
fn launch(extra: Vec<String>) -> Output {
    let mut a = with_base(args!["--backend", "cpu"]);
    a.extend(extra);
    run(&launcher_bin(), a)
}

fn train_args(data: &Path, out: &Path) -> Vec<String> {
    args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--log-interval",
        5,
        "--test-batch-size",
        100
    ]
}

fn launched_training(nproc: usize) {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1920, 200);
    let out = tmp.path().join("run");
    let mut a = train_args(&data, &out);
    a.extend(args!["--nproc", nproc, "--epochs", 3, "--batch-size", 32]);
    a.extend(args!["--lr", 0.05, "--check-sync", 1]);
    let o = launch(a).ok(&format!("mnist-launch --nproc {nproc}"));
    println!("--nproc {nproc}: {:.2}s", o.secs);
    for r in 0..nproc {
        assert!(
            out.join(format!("rank{r}.log")).is_file(),
            "rank{r}.log missing"
        );
    }
    let log0 = std::fs::read_to_string(out.join("rank0.log")).unwrap();
    assert!(log0.contains("Final best Test Accuracy"), "{log0}");
    // The ranks shared one copy of the data, and it is gone from /dev/shm.
    assert!(
        log0.contains("one copy in shared memory for the ranks of this machine"),
        "{log0}"
    );
    let run_id = o
        .stderr
        .split("run id ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no run id in:\n{}", o.stderr));
    let prefix = mnist_common::contract::shm_data_prefix(run_id);
    let left: Vec<String> = std::fs::read_dir(mnist_common::contract::SHM_DIR)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.trim_start_matches('.').starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "shared data left behind: {left:?}");
    for r in 1..nproc {
        let l = std::fs::read_to_string(out.join(format!("rank{r}.log"))).unwrap();
        assert!(
            !l.contains("Save model") && !l.contains("error"),
            "rank {r} saved or failed:\n{l}"
        );
    }
    let m = metrics(&out);
    assert_eq!(m.len(), 3);
    assert_eq!(m[0]["world_size"], nproc);
    let loss = |i: usize| m[i]["test_loss"].as_f64().unwrap();
    assert!(loss(2) < loss(0), "test loss did not fall: {m:?}");
    assert!(m[2]["test_top1"].as_f64().unwrap() > 30.0, "{m:?}");
    assert!(m[0]["bytes_sent_per_step"].as_f64().unwrap() > 0.0);
    mnist_checkpoint::load_state_dict(&out.join("mnist_model.pt")).unwrap();
}

#[test]
fn launch_two_ranks_with_check_sync() {
    launched_training(2);
}

#[test]
fn launch_three_ranks_with_check_sync() {
    launched_training(3);
}

fn compression(method: &str) {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let out = tmp.path().join("run");
    let mut a = train_args(&data, &out);
    a.extend(args![
        "--nproc",
        2,
        "--epochs",
        1,
        "--batch-size",
        32,
        "--check-sync",
        1,
        "--compression",
        method,
        "--powersgd-start-iter",
        3,
        "--topk-ratio",
        0.05
    ]);
    let o = launch(a).ok(&format!("--compression {method}"));
    let m = metrics(&out);
    assert_eq!(m[0]["compression"], method);
    let ratio = m[0]["compression_ratio"].as_f64().unwrap();
    assert!(
        if method == "none" {
            (ratio - 1.0).abs() < 1e-9
        } else {
            ratio > 1.0
        },
        "--compression {method}: ratio {ratio}"
    );
    let loss = m[0]["train_loss"].as_f64().unwrap();
    assert!(
        loss.is_finite(),
        "--compression {method}: train loss {loss}"
    );
    println!(
        "--compression {method}: 2 ranks x 10 steps in sync, {:.0} bytes/step, {:.2}s",
        m[0]["bytes_sent_per_step"], o.secs
    );
}

macro_rules! compression_tests {
    ($($name:ident => $method:literal),* $(,)?) => {
        $(#[test] fn $name() { compression($method); })*
    };
}

compression_tests! {
    compression_none_in_sync => "none",
    compression_fp16_in_sync => "fp16",
    compression_bf16_in_sync => "bf16",
    compression_topk_in_sync => "topk",
    compression_powersgd_in_sync => "powersgd",
    compression_powersgd_fp16_in_sync => "powersgd_fp16",
    compression_batched_powersgd_in_sync => "batched_powersgd",
    compression_batched_powersgd_fp16_in_sync => "batched_powersgd_fp16",
}

/// Start two workers by hand (rank 0 writing to `out0`, rank 1 given `out1`), meeting
/// through a rendezvous file in `tmp`.
fn start_two_ranks(tmp: &Path, common: &[String], out0: &Path, out1: &Path) -> [Running; 2] {
    let rdzv = tmp.join("rendezvous");
    let run_id = format!("e2e-{}", std::process::id());
    let start = |rank: usize, out: &Path| {
        let mut cmd = Command::new(worker_bin());
        cmd.args(with_base(common.to_vec()))
            .args(args![
                "--path",
                out.display(),
                "--rank",
                rank,
                "--world-size",
                2,
                "--rendezvous",
                rdzv.display()
            ])
            .args(args!["--run-id", run_id, "--backend", "cpu"]);
        spawn(cmd)
    };
    [start(0, out0), start(1, out1)]
}

/// Two workers started by hand, run to completion.
fn two_ranks_by_hand(tmp: &Path, common: &[String], out0: &Path, out1: &Path) -> (Output, Output) {
    let [r0, r1] = start_two_ranks(tmp, common, out0, out1);
    (r0.wait(DEADLINE), r1.wait(DEADLINE))
}

/// A worker whose peer dies exits with the peer-failure code (3) and one line naming the
/// peer, decided by the error's type (`TrainError::kind`), not by its text.
#[test]
fn a_dead_peer_makes_the_survivor_exit_with_the_peer_failure_code() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 960, 100);
    let common: Vec<String> = args![
        "--data",
        data.display(),
        "--epochs",
        500,
        "--batch-size",
        32,
        "--log-interval",
        1
    ];
    let (out0, out1) = (tmp.path().join("rank0"), tmp.path().join("rank1"));
    let [r0, mut r1] = start_two_ranks(tmp.path(), &common, &out0, &out1);
    let log = out0.join("mnist_train.log");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Train Epoch")
    {
        assert!(t0.elapsed() < DEADLINE, "training did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    r1.child.kill().unwrap();
    let o = r0.wait(DEADLINE);
    assert_eq!(o.status.code(), Some(3), "{}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", o.stderr);
    assert!(
        lines[0].starts_with("mnist-worker: error: rank 0 stopped: a peer failed")
            && lines[0].contains("rank 1"),
        "{}",
        lines[0]
    );
}

#[test]
fn two_ranks_of_batch_b_equal_one_rank_of_batch_2b() {
    // 3200 samples: 2 ranks × 1600, batches of 32 → 50 steps; 1 rank, batches of 64 → 50 steps.
    // Rank r's batch k is order[64k + r + 2j] (j < 32), so the two ranks' batches together
    // are order[64k .. 64k + 64]: the single rank's batch k. Averaging the two rank means
    // equals the mean over 64, so the parameters must agree up to rounding.
    let tmp = tempdir();
    let data = make_data(tmp.path(), 3200, 200);
    let common: Vec<String> = args![
        "--data",
        data.display(),
        "--epochs",
        1,
        "--log-interval",
        25,
        "--test-batch-size",
        100,
        "--compression",
        "none"
    ];
    let (out0, out1) = (tmp.path().join("rank0"), tmp.path().join("rank1"));
    let mut two = common.clone();
    two.extend(args!["--batch-size", 32]);
    let (o0, o1) = two_ranks_by_hand(tmp.path(), &two, &out0, &out1);
    let o0 = o0.ok("rank 0");
    o1.ok("rank 1");
    assert!(o0.stdout.contains("2 process(es)"), "{}", o0.stdout);
    // Only rank 0 writes outputs.
    for f in [
        "mnist_model.pt",
        "checkpoint.bin",
        "metrics.jsonl",
        "mnist_train.log",
    ] {
        assert!(out0.join(f).is_file(), "rank 0 did not write {f}");
        assert!(!out1.join(f).exists(), "rank 1 wrote {f}");
    }
    let single = tmp.path().join("single");
    let mut one = common.clone();
    one.extend(args!["--batch-size", 64, "--path", single.display()]);
    worker(one).ok("1 rank, batch 64");

    let a = mnist_train::resume::load(&mnist_train::resume::path_in(&out0)).unwrap();
    let b = mnist_train::resume::load(&mnist_train::resume::path_in(&single)).unwrap();
    assert_eq!((a.step, b.step), (50, 50));
    let (d, m) = max_diff(&a.params, &b.params);
    println!("2 x 32 vs 1 x 64 after 50 steps: max |param diff| {d:e}, max |param| {m:.3}, relative {:e}", d / m);
    assert!(
        d <= 1e-5 * m,
        "parameters differ: max diff {d} vs max |param| {m}"
    );
    let (ma, mb) = (metrics(&out0), metrics(&single));
    assert_eq!(ma[0]["test_top1"], mb[0]["test_top1"]);
}

#[test]
fn killed_rank_stops_the_launch() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 960, 100);
    let out: PathBuf = tmp.path().join("killed-run");
    let out_s = out.display().to_string();
    let mut a = with_base(args![
        "--backend",
        "cpu",
        "--nproc",
        2,
        "--epochs",
        500,
        "--batch-size",
        32
    ]);
    a.extend(train_args(&data, &out));
    let mut cmd = Command::new(launcher_bin());
    cmd.args(&a);
    let launch = spawn(cmd);
    // Wait until rank 0 is training.
    let t0 = Instant::now();
    loop {
        let log = std::fs::read_to_string(out.join("rank0.log")).unwrap_or_default();
        if log.contains("Train Epoch") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "training did not start:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let procs = processes_with(&out_s);
    let workers: Vec<_> = procs
        .iter()
        .filter(|(_, a)| a[0].ends_with("mnist-worker"))
        .collect();
    assert_eq!(workers.len(), 2, "expected 2 workers: {procs:?}");
    let (pid1, _) = workers
        .iter()
        .find(|(pid, _)| rank_of(*pid).as_deref() == Some("1"))
        .expect("rank 1");
    let killed_at = Instant::now();
    let st = Command::new("kill")
        .args(["-KILL", &pid1.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = launch.wait(Duration::from_secs(60));
    let took = killed_at.elapsed().as_secs_f64();
    println!(
        "launcher exited {:.2}s after rank 1 was killed: {}",
        took,
        o.stderr.lines().find(|l| l.contains("error")).unwrap_or("")
    );
    assert!(
        !o.status.success(),
        "the launch succeeded after a rank was killed"
    );
    let err = o
        .stderr
        .lines()
        .find(|l| l.starts_with("mnist-launch: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", o.stderr));
    assert!(
        err.contains("rank 1") && err.contains(&pid1.to_string()) && err.contains("SIGKILL"),
        "{err}"
    );
    // How fast the launcher noticed is printed above, not asserted (a loaded machine); that it
    // noticed at all is `launch.wait`'s deadline.
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    // No process of this run is left: the survivors would train for 500 epochs, so waiting
    // for them to vanish (a process in the middle of exiting) cannot hide one.
    let t0 = Instant::now();
    loop {
        let left = processes_with(&out_s);
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "processes of the killed run remain: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Only the machine's local rank 0 reads the data files (the others map its shared copy), so
/// with two ranks a bad data folder is reported once, by rank 0, as bad input (exit 2), the
/// other rank stopping because its peer failed.
#[test]
fn bad_data_with_two_ranks_is_bad_input_from_rank_0() {
    let tmp = tempdir();
    let empty = tmp.path().join("no-data");
    std::fs::create_dir(&empty).unwrap();
    let out = tmp.path().join("run");
    let mut a = train_args(&empty, &out);
    a.extend(args!["--nproc", 2, "--epochs", 1]);
    let o = launch(a);
    assert_eq!(o.status.code(), Some(2), "{}", o.stderr);
    let err = o
        .stderr
        .lines()
        .find(|l| l.starts_with("mnist-launch: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", o.stderr));
    assert!(
        err.contains("worker rank 0") && err.contains("(bad input)"),
        "{err}"
    );
    let log0 = std::fs::read_to_string(out.join("rank0.log")).unwrap();
    assert!(log0.contains("no-data"), "rank 0 names the folder:\n{log0}");
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
}
