//! `--checkpoint-every STEPS`: a run that dies inside an epoch and is resumed from its last
//! mid-epoch checkpoint ends bit for bit like an uninterrupted run (parameters, momentum, best
//! model file), and a writer that dies between writing and renaming the checkpoint leaves the
//! previous one loadable.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// 640 images, batch 32: 20 steps per epoch, 2 epochs; a checkpoint every 3 steps.
fn train(data: &Path, out: &Path, fault: Option<&str>, extra: Vec<String>) -> Output {
    let mut a = with_base(args![
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
        100,
        "--checkpoint-every",
        3
    ]);
    a.extend(extra);
    let mut cmd = Command::new(worker_bin());
    cmd.args(a);
    if let Some(f) = fault {
        cmd.env(mnist_common::contract::ENV_FAULT, f);
    }
    spawn(cmd).wait(DEADLINE)
}

/// Run B ends exactly as run A: the same parameters, momentum and step, and the same best-model
/// file byte for byte.
fn assert_same_end(a: &Path, b: &Path) {
    let sa = mnist_train::resume::load(&mnist_train::resume::path_in(a)).unwrap();
    let sb = mnist_train::resume::load(&mnist_train::resume::path_in(b)).unwrap();
    assert_eq!((sa.next_epoch, sa.batches_done, sa.step), (2, 0, 40));
    assert_eq!((sb.next_epoch, sb.batches_done, sb.step), (2, 0, 40));
    let differing = sa
        .params
        .iter()
        .zip(&sb.params)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differing, 0, "{differing} parameters differ in their bits");
    assert_eq!(sa.momentum, sb.momentum, "momentum buffers differ");
    assert_eq!(sa.best_acc, sb.best_acc);
    assert_eq!(
        std::fs::read(a.join("mnist_model.pt")).unwrap(),
        std::fs::read(b.join("mnist_model.pt")).unwrap(),
        "the best-model files differ"
    );
}

#[test]
fn a_run_resumed_inside_an_epoch_ends_bit_for_bit_like_an_uninterrupted_one() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 200);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    train(&data, &a, None, vec![]).ok("run A");
    // Step 26 is batch 7 of epoch 2; the last checkpoint before it is step 24 (4 batches done).
    let died = train(&data, &b, Some("0:26:exit-code=9"), vec![]);
    assert_eq!(died.status.code(), Some(9), "{}", died.stderr);
    let st = mnist_train::resume::load(&mnist_train::resume::path_in(&b)).unwrap();
    assert_eq!((st.next_epoch, st.batches_done, st.step), (1, 4, 24));
    assert!(st.epoch_sums[0] > 0.0 && st.epoch_seconds > 0.0, "{st:?}");

    // Inside an epoch the position counts batches: another --batch-size is refused.
    let refused = train(&data, &b, None, args!["--resume", "--batch-size", 16]);
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("it stopped inside epoch 2 after 4 batches of --batch-size 32"),
        "{}",
        refused.stderr
    );

    let resumed = train(&data, &b, None, args!["--resume"]).ok("run B resumed");
    assert!(
        resumed
            .stdout
            .contains("at epoch 2, batch 5 (step 24; best so far"),
        "{}",
        resumed.stdout
    );
    assert_same_end(&a, &b);
    // The resumed epoch's figures cover the whole epoch: the same as run A's up to f32
    // rounding of the carried sums.
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(mb.len(), 2);
    for k in ["train_loss", "train_top1", "test_loss", "test_top1"] {
        let (x, y) = (ma[1][k].as_f64().unwrap(), mb[1][k].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{k}: {x} vs {y}");
    }
}

#[test]
fn a_crash_between_writing_and_renaming_the_checkpoint_leaves_the_previous_one() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 200);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    train(&data, &a, None, vec![]).ok("run A");
    // The first checkpoint from step 10 on is step 12's: rank 0 dies inside that write.
    let died = train(&data, &b, Some("0:10:crash-in-checkpoint"), vec![]);
    assert!(
        died.stderr.contains(
            "MNIST_FAULT: rank 0 at step 12: crash-in-checkpoint: raising SIGSEGV between writing and renaming"
        ),
        "{}",
        died.stderr
    );
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(died.status.signal(), Some(11), "SIGSEGV: {:?}", died.status);
    }
    let st = mnist_train::resume::load(&mnist_train::resume::path_in(&b)).unwrap();
    assert_eq!((st.next_epoch, st.batches_done, st.step), (0, 9, 9));
    let temps: Vec<_> = std::fs::read_dir(&b)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert_eq!(
        temps.len(),
        1,
        "the dead writer's temporary file: {temps:?}"
    );

    let resumed = train(&data, &b, None, args!["--resume"]).ok("run B resumed");
    assert!(
        resumed
            .stdout
            .contains("Removed 1 temporary checkpoint file(s) left by a writer that died"),
        "{}",
        resumed.stdout
    );
    assert_same_end(&a, &b);
}
