//! `mnist-launch --max-restarts`: a worker killed with SIGKILL inside an epoch is survived
//! (the group restarts from the newest mid-epoch checkpoint and ends byte for byte like an
//! uninterrupted run); when the restarts are used up the launch fails naming the root cause
//! in one line and in `error.json`, and leaves no process behind.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// 2 ranks × batch 32 on 1280 images: 20 steps per epoch, 2 epochs, a checkpoint every 3
/// steps, every step logged.
fn launch_cmd(data: &Path, out: &Path, extra: Vec<String>, fault: Option<&str>) -> Command {
    let mut a = with_base(args![
        "--backend",
        "cpu",
        "--nproc",
        2,
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--epochs",
        2,
        "--batch-size",
        32,
        "--test-batch-size",
        100,
        "--log-interval",
        1,
        "--checkpoint-every",
        3
    ]);
    a.extend(extra);
    let mut cmd = Command::new(launcher_bin());
    cmd.args(a);
    if let Some(f) = fault {
        cmd.env(mnist_common::contract::ENV_FAULT, f);
    }
    cmd
}

/// No process has `out` on its command line (waiting for exiting ones to vanish).
fn assert_nothing_left(out: &Path) {
    let out_s = out.display().to_string();
    let t0 = Instant::now();
    while !processes_with(&out_s).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "processes remain: {:?}",
            processes_with(&out_s)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn launcher_error(o: &Output) -> String {
    o.stderr
        .lines()
        .find(|l| l.starts_with("mnist-launch: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", o.stderr))
        .to_string()
}

#[test]
fn a_worker_killed_mid_epoch_is_restarted_and_the_model_matches_an_uninterrupted_run() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1280, 200);
    let (a, b): (PathBuf, PathBuf) = (tmp.path().join("a"), tmp.path().join("b"));
    spawn(launch_cmd(&data, &a, vec![], None))
        .wait(DEADLINE)
        .ok("uninterrupted run");

    // Rank 1 is slowed down in the first round only (the fault's default round), so the kill
    // lands inside epoch 2; sleeping changes no number.
    let run = spawn(launch_cmd(
        &data,
        &b,
        args!["--max-restarts", 1],
        Some("1:0:slow=150ms"),
    ));
    wait_for_log(&b.join("rank1.log"), "rank 1: epoch 2 step 4/20");
    let (pid1, _) = processes_with(&b.display().to_string())
        .into_iter()
        .find(|(pid, argv)| {
            argv[0].ends_with("mnist-worker") && rank_of(*pid).as_deref() == Some("1")
        })
        .expect("rank 1's process");
    let killed = Instant::now();
    assert!(Command::new("kill")
        .args(["-KILL", &pid1.to_string()])
        .status()
        .unwrap()
        .success());
    let o = run
        .wait(DEADLINE)
        .ok("run with a killed worker and --max-restarts 1");
    println!(
        "finished {:.1}s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let restart = o
        .stderr
        .lines()
        .find(|l| l.starts_with("mnist-launch: restart 1 of 1"))
        .unwrap_or_else(|| panic!("no restart line:\n{}", o.stderr));
    assert!(
        restart.contains(&format!(
            "worker rank 1 (pid {pid1}) killed by signal SIGKILL"
        )) && restart.contains("resuming from"),
        "{restart}"
    );
    // The second round resumed inside epoch 2.
    let log0 = std::fs::read_to_string(b.join("rank0.log")).unwrap();
    let second = log0
        .split("---- mnist-launch: restart round 1 ----")
        .nth(1)
        .unwrap_or_else(|| panic!("no round marker in rank0.log:\n{log0}"));
    assert!(
        second.contains("Resuming from") && second.contains("at epoch 2, batch "),
        "{second}"
    );
    assert!(
        second.contains("Restart round 1 (MNIST_RESTART_ROUND)"),
        "{second}"
    );

    // Same end as the uninterrupted run, to the bit.
    let sa = mnist_train::resume::load(&mnist_train::resume::path_in(&a)).unwrap();
    let sb = mnist_train::resume::load(&mnist_train::resume::path_in(&b)).unwrap();
    assert_eq!((sa.next_epoch, sa.step), (sb.next_epoch, sb.step));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&sa.params) == bits(&sb.params), "parameters differ");
    assert_eq!(sa.momentum, sb.momentum);
    assert_eq!(
        std::fs::read(a.join("mnist_model.pt")).unwrap(),
        std::fs::read(b.join("mnist_model.pt")).unwrap(),
        "the final model files differ"
    );
    // metrics.jsonl counts the restart; no error file for a launch that succeeded.
    let m = metrics(&b);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(
        (m[0]["restarts"].as_u64(), m[1]["restarts"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(!b.join("error.json").exists());
    assert_nothing_left(&b);
}

#[test]
fn exhausted_restarts_fail_naming_the_root_cause_in_error_json() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1280, 200);
    let out = tmp.path().join("run");
    // `@*`: the fault acts in every round; each round resumes from step 3 and dies at step 5.
    let o = spawn(launch_cmd(
        &data,
        &out,
        args!["--max-restarts", 1],
        Some("1:5:exit-code=7@*"),
    ))
    .wait(DEADLINE);
    assert_eq!(o.status.code(), Some(1), "{}", o.stderr);
    let err = launcher_error(&o);
    assert!(
        err.contains("worker rank 1 (pid ")
            && err.contains("exited with code 7")
            && err.contains("after 1 restart(s): --max-restarts exhausted"),
        "{err}"
    );
    assert_eq!(
        o.stderr.matches("mnist-launch: restart ").count(),
        1,
        "{}",
        o.stderr
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("error.json")).unwrap()).unwrap();
    let rc = &v["root_cause"];
    assert_eq!(
        (rc["rank"].as_u64(), rc["exit_code"].as_i64()),
        (Some(1), Some(7))
    );
    assert_eq!(rc["node"], 0);
    assert!(rc["pid"].as_u64().unwrap() > 0);
    assert!(rc["log_tail"].as_array().unwrap().iter().any(|l| l
        .as_str()
        .unwrap()
        .contains("MNIST_FAULT: rank 1 at step 5")));
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{v}");
    assert_eq!(rounds[0]["resumed"], false);
    assert_eq!(rounds[1]["resumed"], true);
    for r in rounds {
        assert!(
            r["status"].as_str().unwrap().contains("exited with code 7"),
            "{r}"
        );
    }
    assert_nothing_left(&out);
}

#[test]
fn bad_input_is_not_restarted() {
    let tmp = tempdir();
    let out = tmp.path().join("run");
    let empty = tmp.path().join("no-data");
    std::fs::create_dir(&empty).unwrap();
    let o = spawn(launch_cmd(&empty, &out, args!["--max-restarts", 3], None)).wait(DEADLINE);
    assert_eq!(o.status.code(), Some(2), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("mnist-launch: not restarting: worker rank 0 refused its input"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("mnist-launch: restart "), "{}", o.stderr);
}

/// The launcher's `restart 1 of 1` line, waiting for the run to succeed.
fn restart_line(o: &Output) -> String {
    o.stderr
        .lines()
        .find(|l| l.starts_with("mnist-launch: restart 1 of 1"))
        .unwrap_or_else(|| panic!("no restart line:\n{}", o.stderr))
        .to_string()
}

#[test]
fn a_hung_rank_is_found_within_the_timeout_named_killed_and_restarted() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1280, 200);
    let out = tmp.path().join("run");
    let t0 = Instant::now();
    let o = spawn(launch_cmd(
        &data,
        &out,
        args!["--max-restarts", 1, "--timeout", 10, "--grace-period", 1],
        Some("1:6:hang"),
    ))
    .wait(DEADLINE)
    .ok("run with a hung rank and --max-restarts 1");
    println!(
        "whole run {:.1}s (timeout 10 s, grace 1 s)",
        t0.elapsed().as_secs_f64()
    );
    let line = restart_line(&o);
    assert!(
        line.contains("worker rank 1 (pid ")
            && line.contains("killed by signal SIGKILL, unresponsive: it made no progress")
            && line.contains("rank 0 reported:")
            && line.contains("all_reduce(")
            && line.contains("timed out after 10.0s waiting for rank(s) [1]"),
        "{line}"
    );
    let log1 = std::fs::read_to_string(out.join("rank1.log")).unwrap();
    assert!(
        log1.contains("MNIST_FAULT: rank 1 at step 6: hang"),
        "{log1}"
    );
    // The checkpoint of step 6 was written before the hang: nothing is lost.
    let log0 = std::fs::read_to_string(out.join("rank0.log")).unwrap();
    assert!(log0.contains("at epoch 1, batch 7 (step 6;"), "{log0}");
    assert_nothing_left(&out);
}

#[test]
fn a_stopped_rank_is_found_named_killed_and_restarted() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1280, 200);
    let out = tmp.path().join("run");
    let run = spawn(launch_cmd(
        &data,
        &out,
        args!["--max-restarts", 1, "--timeout", 10, "--grace-period", 1],
        Some("1:0:slow=150ms"),
    ));
    wait_for_log(&out.join("rank1.log"), "rank 1: epoch 1 step 4/20");
    let (pid1, _) = processes_with(&out.display().to_string())
        .into_iter()
        .find(|(pid, argv)| {
            argv[0].ends_with("mnist-worker") && rank_of(*pid).as_deref() == Some("1")
        })
        .expect("rank 1's process");
    let stopped = Instant::now();
    assert!(Command::new("kill")
        .args(["-STOP", &pid1.to_string()])
        .status()
        .unwrap()
        .success());
    let o = run
        .wait(DEADLINE)
        .ok("run with a stopped rank and --max-restarts 1");
    println!(
        "finished {:.1}s after SIGSTOP",
        stopped.elapsed().as_secs_f64()
    );
    let line = restart_line(&o);
    assert!(
        line.contains(&format!(
            "worker rank 1 (pid {pid1}) killed by signal SIGKILL"
        )) && line.contains("unresponsive: it was stopped (SIGSTOP)")
            && line.contains("waiting for rank(s) [1]"),
        "{line}"
    );
    assert_nothing_left(&out);
}
