//! Seeing what a run did: the time breakdown and straggler report in `metrics.jsonl` and the
//! log (README "Where the time goes"), and TensorBoard event files (`--tensorboard`) read back
//! with TensorBoard's own reader.

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
    let tb = tmp.path().join("board");
    let mut a = train_args(&data, &out);
    a.extend(args![
        "--backend",
        "cpu",
        "--nproc",
        2,
        "--tensorboard",
        tb.display()
    ]);
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
    // `--tensorboard DIR`: one event file, rank 0's, with the epoch's figures.
    let files = event_files(&tb);
    assert_eq!(files.len(), 1, "{files:?}");
    let s = mnist_tensorboard::read_scalars(&files[0]).unwrap();
    let loss: Vec<f32> = s
        .iter()
        .filter(|x| x.tag == "test/loss")
        .map(|x| x.value)
        .collect();
    assert_eq!(loss, [m["test_loss"].as_f64().unwrap() as f32]);
    assert_eq!(s.iter().filter(|x| x.tag == "train/loss").count(), 10);
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

/// The TensorBoard event files in `dir`.
fn event_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("tfevents"))
        .collect();
    v.sort();
    v
}

/// `--tensorboard` (default folder `<path>/tb`), read back by TensorBoard's own reader
/// (EventAccumulator, `scripts/ref/tb_scalars.py`): per step the loss and learning rate, per
/// epoch the values `metrics.jsonl` holds.
#[test]
fn tensorboard_shows_what_metrics_jsonl_holds() {
    const TEST: &str = "tensorboard_shows_what_metrics_jsonl_holds";
    let Some(py) = python(TEST) else { return };
    let has_tb = Command::new(&py)
        .args(["-c", "import tensorboard"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_tb {
        mnist_testkit::skip(
            TEST,
            "python",
            &format!(
                "{} cannot import tensorboard (scripts/env.sh installs it)",
                py.display()
            ),
        );
        return;
    }
    let tmp = tempdir();
    let data = make_data(tmp.path(), 320, 100);
    let out = tmp.path().join("run");
    let mut a = train_args(&data, &out);
    a.extend(args!["--epochs", 2, "--tensorboard"]);
    let o = run(&worker_bin(), a).ok("--tensorboard");
    assert!(o.stdout.contains("TensorBoard: writing"), "{}", o.stdout);
    let tb = out.join("tb");
    assert_eq!(event_files(&tb).len(), 1);
    let r = run(
        &py,
        args![
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../scripts/ref/tb_scalars.py")
                .display(),
            tb.display()
        ],
    )
    .ok("tb_scalars.py");
    let got: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("tb_scalars.py printed no JSON ({e}):\n{}", r.stdout));
    let series = |tag: &str| -> Vec<(i64, f64)> {
        got[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no {tag} in {got}"))
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    };
    let m = metrics(&out);
    assert_eq!(m.len(), 2);
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "{what}: TensorBoard {a}, metrics.jsonl {b}"
        )
    };
    // Per epoch, at the global step count at its end (10 steps per epoch).
    for (tag, key) in [
        ("test/loss", "test_loss"),
        ("test/top1", "test_top1"),
        ("test/top5", "test_top5"),
        ("perf/images_per_second", "images_per_second"),
        ("comm/gradient_bytes_per_step", "bytes_sent_per_step"),
        ("train/epoch_loss", "train_loss"),
    ] {
        let s = series(tag);
        assert_eq!(s.iter().map(|p| p.0).collect::<Vec<_>>(), [10, 20], "{tag}");
        for (e, (_, v)) in s.iter().enumerate() {
            close(*v, m[e][key].as_f64().unwrap(), tag);
        }
    }
    // Per step: 20 steps, numbered 0..19; each epoch's mean batch loss (full batches, one
    // process) is its train loss, and the learning rate its epoch's.
    let loss = series("train/loss");
    let lr = series("train/lr");
    assert_eq!(
        loss.iter().map(|p| p.0).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    assert_eq!(lr.len(), 20);
    for e in 0..2 {
        let mean = loss[10 * e..10 * (e + 1)].iter().map(|p| p.1).sum::<f64>() / 10.0;
        let want = m[e]["train_loss"].as_f64().unwrap();
        assert!(
            (mean - want).abs() < 1e-4 * want,
            "epoch {e}: {mean} vs {want}"
        );
        for p in &lr[10 * e..10 * (e + 1)] {
            close(p.1, m[e]["lr"].as_f64().unwrap(), "train/lr");
        }
    }
}

/// `--profile-steps 8:12` on two ranks (10 steps per epoch, 2 epochs, rank 1 slowed by
/// `MNIST_FAULT`): `trace.json` parses, holds both ranks, steps 8 to 11 each nest their
/// phases, which add up to the step, with the collectives (and their bytes) inside the
/// gradient reduction; rank 0 waits for rank 1; epoch 1's evaluation is there.
#[test]
fn profile_steps_writes_a_chrome_trace_of_every_rank() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    let out = tmp.path().join("run");
    let mut a = train_args(&data, &out);
    a.extend(args![
        "--epochs",
        2,
        "--backend",
        "cpu",
        "--nproc",
        2,
        "--profile-steps",
        "8:12"
    ]);
    let mut cmd = Command::new(launcher_bin());
    cmd.args(a)
        .env(mnist_common::contract::ENV_FAULT, "1:0:slow=30ms");
    let o = spawn(cmd).wait(DEADLINE).ok("--profile-steps");
    assert!(
        o.stdout.contains("Timeline of steps 8..12 on every rank"),
        "{}",
        o.stdout
    );
    let text = std::fs::read_to_string(out.join("trace.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    #[derive(Debug)]
    struct Span {
        name: String,
        ts: f64,
        dur: f64,
        args: serde_json::Value,
    }
    let spans = |pid: u64| -> Vec<Span> {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["pid"].as_u64() == Some(pid))
            .map(|e| Span {
                name: e["name"].as_str().unwrap().to_string(),
                ts: e["ts"].as_f64().unwrap(),
                dur: e["dur"].as_f64().unwrap(),
                args: e["args"].clone(),
            })
            .collect()
    };
    for rank in 0..2u64 {
        let named = events.iter().any(|e| {
            e["ph"] == "M"
                && e["name"] == "process_name"
                && e["pid"].as_u64() == Some(rank)
                && e["args"]["name"] == format!("rank {rank}")
        });
        assert!(named, "no process_name for rank {rank}");
        let all = spans(rank);
        let steps: Vec<&Span> = all.iter().filter(|s| s.name.starts_with("step ")).collect();
        let numbers: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            numbers,
            ["step 8", "step 9", "step 10", "step 11"],
            "rank {rank}"
        );
        const EPS: f64 = 2.0; // µs: rounding of microsecond timestamps
        let inside = |s: &Span, outer: &Span| {
            s.ts >= outer.ts - EPS && s.ts + s.dur <= outer.ts + outer.dur + EPS
        };
        let phases = [
            "injected delay (MNIST_FAULT slow)",
            "data gather",
            "forward",
            "backward",
            "gradient check",
            "gradient reduction",
            "optimizer step",
        ];
        let mut waited = 0;
        for step in &steps {
            let children: Vec<&Span> = all
                .iter()
                .filter(|s| phases.contains(&s.name.as_str()) && inside(s, step))
                .collect();
            let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
            for want in [
                "data gather",
                "forward",
                "backward",
                "gradient reduction",
                "optimizer step",
            ] {
                assert!(
                    names.contains(&want),
                    "rank {rank} {}: {names:?}",
                    step.name
                );
            }
            assert_eq!(
                names.contains(&"injected delay (MNIST_FAULT slow)"),
                rank == 1,
                "rank {rank} {}: {names:?}",
                step.name
            );
            // The phases follow each other and add up to the step.
            let sum: f64 = children.iter().map(|s| s.dur).sum();
            assert!(
                (sum - step.dur).abs() <= 0.01 * step.dur + 10.0,
                "rank {rank} {}: phases {sum} µs, step {} µs",
                step.name,
                step.dur
            );
            for w in children.windows(2) {
                assert!((w[0].ts + w[0].dur - w[1].ts).abs() <= EPS, "{w:?}");
            }
            let reduce = children
                .iter()
                .find(|s| s.name == "gradient reduction")
                .unwrap();
            let collectives: Vec<&Span> = all
                .iter()
                .filter(|s| s.name.starts_with("all_reduce") && inside(s, reduce))
                .collect();
            assert!(!collectives.is_empty(), "rank {rank} {}", step.name);
            let bytes: u64 = collectives
                .iter()
                .map(|s| s.args["bytes"].as_u64().unwrap())
                .sum();
            // LeNet's gradient in f32.
            assert!(bytes > 100_000, "rank {rank} {}: {bytes} bytes", step.name);
            waited += all
                .iter()
                .filter(|s| s.name == "waiting for peers" && inside(s, reduce))
                .count();
        }
        // Rank 0 waits for the slowed rank 1 in every step (30 ms each); rank 1 hardly ever.
        if rank == 0 {
            assert_eq!(waited, 4, "rank 0's waits");
        }
        let evals = all.iter().filter(|s| s.name == "evaluation").count();
        assert_eq!(
            evals, 1,
            "rank {rank}: epoch 1's evaluation (its last step, 9, was profiled)"
        );
    }
}
