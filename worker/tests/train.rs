//! End-to-end single-process training: the log, metrics and best model a short run writes,
//! and `--evaluate` of that model (ours, and re-saved by PyTorch) giving the same accuracy.

mod common;

use common::*;
use std::path::Path;

/// `(correct, count, loss)` of the test line just before the last "Save model" line: the
/// evaluation of the best epoch.
fn best_epoch_test(log: &str) -> (u64, u64, f64) {
    let lines: Vec<&str> = log.lines().collect();
    let save = lines
        .iter()
        .rposition(|l| l.contains("Save model with best accuracy"))
        .expect("no Save line");
    last_test_line(&lines[..save].join("\n")).expect("no Test set line before Save")
}

fn check_log(log: &str) {
    for l in log.lines() {
        assert!(
            has_log_prefix(l),
            "log line without the `MM/DD HH:MM:SS AM | ` prefix: {l:?}"
        );
    }
    for needle in [
        "Train Epoch",
        "Test set: Average loss",
        "Save model with best accuracy",
        "Current best test accuracy",
        "Final best Test Accuracy",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
}

fn check_metrics(dir: &Path, epochs: usize) {
    let m = metrics(dir);
    assert_eq!(m.len(), epochs, "one metrics record per epoch");
    let fields = [
        "epoch",
        "lr",
        "train_loss",
        "train_top1",
        "train_top5",
        "test_loss",
        "test_top1",
        "test_top5",
        "epoch_seconds",
        "epoch_cpu_seconds",
        "images_per_second",
        "world_size",
        "compression",
        "bytes_sent_per_step",
    ];
    for (i, r) in m.iter().enumerate() {
        for f in fields {
            assert!(r.get(f).is_some(), "metrics record {i} lacks {f}: {r}");
        }
        assert_eq!(r["epoch"], (i + 1) as u64);
        assert_eq!(r["world_size"], 1);
        assert_eq!(r["compression"], "none");
        for f in [
            "train_loss",
            "test_loss",
            "epoch_seconds",
            "epoch_cpu_seconds",
            "images_per_second",
            "lr",
        ] {
            let v = r[f].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{f} = {v} in {r}");
        }
    }
    for r in &m {
        // The loop's CPU time: positive, and on one process no more than its threads could
        // use in the loop's wall time (with a little room for clock granularity).
        let (cpu, wall) = (
            r["epoch_cpu_seconds"].as_f64().unwrap(),
            r["epoch_seconds"].as_f64().unwrap(),
        );
        let threads = std::thread::available_parallelism().map_or(64, |n| n.get()) as f64;
        assert!(
            cpu <= wall * threads + 0.05,
            "cpu {cpu} s > {threads} x wall {wall} s: {r}"
        );
    }
    assert_eq!(m[0]["lr"], 0.01, "first epoch uses the initial --lr");
    let loss = |i: usize| m[i]["test_loss"].as_f64().unwrap();
    let acc = |i: usize| m[i]["test_top1"].as_f64().unwrap();
    assert!(
        loss(epochs - 1) < 0.7 * loss(0),
        "test loss did not fall: {m:?}"
    );
    assert!(
        acc(epochs - 1) > 60.0,
        "test accuracy {} is not well above chance (10%)",
        acc(epochs - 1)
    );
    assert!(m[epochs - 1]["train_loss"].as_f64().unwrap() < m[0]["train_loss"].as_f64().unwrap());
}

fn check_model_file(file: &Path) {
    let t = mnist_checkpoint::load_state_dict(file).unwrap();
    let got: Vec<(String, Vec<usize>)> = t
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let want: Vec<(String, Vec<usize>)> =
        mnist_models::parameter_shapes(mnist_models::ModelKind::LeNet)
            .into_iter()
            .map(|(n, s)| (n.to_string(), s.iter().map(|&d| d as usize).collect()))
            .collect();
    assert_eq!(got, want, "mnist_model.pt keys/shapes");
    assert!(t.iter().all(|t| t.data.iter().all(|v| v.is_finite())));
}

#[test]
fn training_makes_progress_and_evaluate_reproduces_the_best_accuracy() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 2000, 500);
    let out = tmp.path().join("run");
    let o = worker(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--epochs",
        3,
        "--batch-size",
        32,
        "--log-interval",
        20
    ])
    .ok("training");
    println!("training 3 epochs x 63 steps: {:.2}s", o.secs);
    assert!(
        o.stderr.trim().is_empty(),
        "unexpected stderr: {}",
        o.stderr
    );
    let log = std::fs::read_to_string(out.join("mnist_train.log")).unwrap();
    check_log(&log);
    check_log(&o.stdout);
    check_metrics(&out, 3);
    let model = out.join("mnist_model.pt");
    check_model_file(&model);

    // --evaluate of the saved best model reports exactly the best epoch's test result.
    let (c, n, loss) = best_epoch_test(&log);
    assert_eq!(n, 500);
    let eval_dir = tmp.path().join("eval");
    let (ec, en, eloss) = evaluate(&data, &eval_dir, &model);
    assert_eq!(
        (ec, en),
        (c, n),
        "--evaluate accuracy differs from the best epoch's"
    );
    assert!(
        (eloss - loss).abs() < 1e-9,
        "--evaluate loss {eloss} vs training log {loss}"
    );

    // The same weights re-saved by PyTorch (plain, and with DDP's "module." prefix) evaluate
    // identically.
    let Some(py) = python("--evaluate of a PyTorch-saved state_dict") else {
        return;
    };
    let resaved = tmp.path().join("torch_saved.pt");
    let ddp = tmp.path().join("torch_ddp.pt");
    let code = "import sys, torch\n\
                sd = torch.load(sys.argv[1], weights_only=True)\n\
                torch.save({k: v.clone() for k, v in sd.items()}, sys.argv[2])\n\
                torch.save({'module.' + k: v.clone() for k, v in sd.items()}, sys.argv[3])\n";
    run(
        &py,
        args![
            "-c",
            code,
            model.display(),
            resaved.display(),
            ddp.display()
        ],
    )
    .ok("torch.save");
    for f in [&resaved, &ddp] {
        let (pc, pn, ploss) = evaluate(&data, &eval_dir, f);
        assert_eq!((pc, pn), (c, n), "{} evaluates differently", f.display());
        assert!((ploss - loss).abs() < 1e-9);
    }
    // A freshly initialised PyTorch LeNet also loads and evaluates (near chance).
    let fresh = tmp.path().join("torch_fresh.pt");
    run(
        &py,
        args![
            ref_script("interop_logits.py").display(),
            "init",
            "--out",
            fresh.display(),
            "--seed",
            5
        ],
    )
    .ok("init");
    let (_, fn_, _) = evaluate(&data, &eval_dir, &fresh);
    assert_eq!(fn_, 500);
}
