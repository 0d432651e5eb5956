//! `--resume`: a run interrupted after one epoch (`--stop-after-epochs 1`) and resumed ends
//! with the same parameters, momentum, best accuracy and best model as an uninterrupted run;
//! resuming with other settings fails with one clear line and leaves the checkpoint alone.

mod common;

use common::*;
use std::path::Path;

fn train(data: &Path, out: &Path, extra: Vec<String>) -> Output {
    let mut a = args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--epochs",
        3,
        "--batch-size",
        32,
        "--log-interval",
        100
    ];
    a.extend(extra);
    worker(a)
}

fn final_best(log: &str) -> String {
    log.lines()
        .rev()
        .find_map(|l| l.split("Final best Test Accuracy: ").nth(1))
        .expect("no Final line")
        .to_string()
}

/// A failed resume: bad input (exit code 2), one `mnist-worker: error:` line containing every
/// `needle`.
fn assert_refused(o: &Output, needles: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        o.stdout,
        o.stderr
    );
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one stderr line, got:\n{}",
        o.stderr
    );
    assert!(lines[0].starts_with("mnist-worker: error:"), "{}", lines[0]);
    for n in needles {
        assert!(lines[0].contains(n), "{:?} lacks {n:?}", lines[0]);
    }
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 1000, 300);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let ta = train(&data, &a, vec![]).ok("run A (3 epochs)");
    let tb1 = train(&data, &b, args!["--stop-after-epochs", 1]).ok("run B, stopped after 1 epoch");
    assert!(
        tb1.stdout.contains("Stopped after epoch 1 of 3"),
        "{}",
        tb1.stdout
    );
    assert!(!tb1.stdout.contains("Final best"), "{}", tb1.stdout);
    let ck = mnist_train::resume::path_in(&b);
    let st = mnist_train::resume::load(&ck).unwrap();
    assert_eq!((st.next_epoch, st.epochs), (1, 3));

    // Resuming with different settings is refused and changes nothing.
    let before_ck = std::fs::read(&ck).unwrap();
    let before_model = std::fs::read(b.join("mnist_model.pt")).unwrap();
    let before_metrics = std::fs::read(b.join("metrics.jsonl")).unwrap();
    assert_refused(
        &train(&data, &b, args!["--resume", "--epochs", 4]),
        &["--resume", "checkpoint.bin", "--epochs 3", "--epochs is 4"],
    );
    assert_refused(
        &train(&data, &b, args!["--resume", "--model", "MLP"]),
        &["--resume", "LeNet", "MLP"],
    );
    assert_refused(
        &train(&data, &b, args!["--resume", "--seed", 2]),
        &["--resume", "--seed"],
    );
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        before_ck,
        "a refused resume changed checkpoint.bin"
    );
    assert_eq!(
        std::fs::read(b.join("mnist_model.pt")).unwrap(),
        before_model
    );
    assert_eq!(
        std::fs::read(b.join("metrics.jsonl")).unwrap(),
        before_metrics
    );
    let empty = tmp.path().join("empty");
    assert_refused(
        &train(&data, &empty, args!["--resume"]),
        &["--resume", "checkpoint.bin"],
    );

    let tb2 = train(&data, &b, args!["--resume"]).ok("run B resumed");
    assert!(tb2.stdout.contains("Resuming from"), "{}", tb2.stdout);
    println!(
        "run A {:.2}s; run B {:.2}s + {:.2}s",
        ta.secs, tb1.secs, tb2.secs
    );

    let sa = mnist_train::resume::load(&mnist_train::resume::path_in(&a)).unwrap();
    let sb = mnist_train::resume::load(&ck).unwrap();
    assert_eq!((sa.next_epoch, sa.step), (sb.next_epoch, sb.step));
    let (d, m) = max_diff(&sa.params, &sb.params);
    println!("resumed vs straight: max |param diff| {d:e} (max |param| {m:.3})");
    assert!(d <= 1e-6, "parameters differ by {d}");
    let (dm, _) = max_diff(sa.momentum.as_ref().unwrap(), sb.momentum.as_ref().unwrap());
    assert!(dm <= 1e-6, "momentum buffers differ by {dm}");
    assert_eq!(sa.best_acc, sb.best_acc);
    let la = std::fs::read_to_string(a.join("mnist_train.log")).unwrap();
    let lb = std::fs::read_to_string(b.join("mnist_train.log")).unwrap();
    assert_eq!(final_best(&la), final_best(&lb));
    let ma = mnist_checkpoint::load_state_dict(&a.join("mnist_model.pt")).unwrap();
    let mb = mnist_checkpoint::load_state_dict(&b.join("mnist_model.pt")).unwrap();
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x.name, y.name);
        assert!(
            max_diff(&x.data, &y.data).0 <= 1e-6,
            "best model differs in {}",
            x.name
        );
    }
    // metrics.jsonl: one record per epoch across both parts, with the same test results.
    let (ra, rb) = (metrics(&a), metrics(&b));
    assert_eq!(rb.len(), 3);
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x["epoch"], y["epoch"]);
        assert_eq!(x["test_top1"], y["test_top1"]);
        assert!((x["test_loss"].as_f64().unwrap() - y["test_loss"].as_f64().unwrap()).abs() < 1e-6);
    }
    // Nothing left to resume.
    assert_refused(
        &train(&data, &b, args!["--resume"]),
        &["--resume", "already finished"],
    );
}
