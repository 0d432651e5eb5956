//! Bad input to `mnist-worker`: each case must fail with a non-zero exit and exactly one
//! clear `mnist-worker: error: …` line on stderr (clap's own usage error, exit 2, for an
//! unknown `--model`), never a panic or backtrace, and must leave the outputs already in
//! `--path` (best model, metrics, resumable checkpoint) byte for byte as they were.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// A scratch folder with good data and an output folder holding earlier results.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    out: PathBuf,
    before: Vec<(PathBuf, Vec<u8>)>,
}

const KEPT: [&str; 3] = ["mnist_model.pt", "metrics.jsonl", "checkpoint.bin"];

fn setup() -> Setup {
    let tmp = tempdir();
    let root = tmp.path().to_path_buf();
    let data = make_data(&root, 200, 100);
    let out = root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let model: Vec<_> = mnist_models::parameter_shapes(mnist_models::ModelKind::LeNet)
        .into_iter()
        .map(|(n, s)| {
            let s: Vec<usize> = s.iter().map(|&d| d as usize).collect();
            mnist_checkpoint::NamedTensor::new(n, s.clone(), vec![0.25; s.iter().product()])
        })
        .collect();
    mnist_checkpoint::save_state_dict(&out.join(KEPT[0]), &model).unwrap();
    std::fs::write(out.join(KEPT[1]), "{\"epoch\":1}\n").unwrap();
    std::fs::write(out.join(KEPT[2]), b"earlier checkpoint").unwrap();
    let before = KEPT
        .iter()
        .map(|f| (out.join(f), std::fs::read(out.join(f)).unwrap()))
        .collect();
    Setup {
        _tmp: tmp,
        root,
        data,
        out,
        before,
    }
}

impl Setup {
    /// Run the worker on `data` with `extra` flags, expect a clean bad-input failure (exit
    /// code 2, one line) mentioning every `needle`, and check that the earlier outputs are
    /// untouched.
    fn fails(&self, data: &Path, extra: Vec<String>, needles: &[&str]) -> String {
        let mut a = args![
            "--data",
            data.display(),
            "--path",
            self.out.display(),
            "--epochs",
            1,
            "--batch-size",
            50
        ];
        a.extend(extra);
        let o = worker(a);
        let all = format!("{}{}", o.stdout, o.stderr);
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "internal error"] {
            assert!(!all.contains(bad), "output contains {bad:?}:\n{all}");
        }
        let code = o.status.code();
        assert!(
            code.is_some() && code != Some(0),
            "expected a failure exit, got {}:\n{all}",
            o.status
        );
        // Bad input exits with 2, like clap's usage errors (EXIT_USAGE).
        assert_eq!(code, Some(2), "{all}");
        let msg = if o.stderr.starts_with("error: ") {
            // clap's usage error: `error: …` plus usage lines.
            o.stderr.clone()
        } else {
            let lines: Vec<&str> = o.stderr.lines().collect();
            assert_eq!(
                lines.len(),
                1,
                "expected exactly one stderr line, got:\n{}",
                o.stderr
            );
            assert!(
                lines[0].starts_with("mnist-worker: error: "),
                "{}",
                lines[0]
            );
            lines[0].to_string()
        };
        for n in needles {
            assert!(msg.contains(n), "error message lacks {n:?}: {msg}");
        }
        assert_no_repeated_cause(&msg);
        for (f, bytes) in &self.before {
            assert_eq!(&std::fs::read(f).unwrap(), bytes, "{} changed", f.display());
        }
        msg
    }

    /// A copy of the good data folder named `name`, changed by `edit`.
    fn bad_data(&self, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
        let d = self.root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&self.data).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        edit(&d);
        d
    }
}

/// A cause printed twice (`…: No such file (os error 2): No such file (os error 2)`) comes
/// from an error whose message embeds its `#[source]`, printed with `{:#}`.
fn assert_no_repeated_cause(msg: &str) {
    let parts: Vec<&str> = msg.split(": ").collect();
    for w in parts.windows(2) {
        assert!(w[0] != w[1], "the error repeats {:?}: {msg}", w[0]);
    }
}

fn edit_bytes(file: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(file).unwrap();
    f(&mut b);
    std::fs::write(file, b).unwrap();
}

#[test]
fn missing_data_folder() {
    let s = setup();
    s.fails(
        &s.root.join("no-such-data"),
        vec![],
        &["no-such-data", "train"],
    );
}

#[test]
fn truncated_images_file() {
    let s = setup();
    let d = s.bad_data("truncated", |d| {
        edit_bytes(&d.join("train-images-idx3-ubyte"), |b| {
            b.truncate(16 + 784 * 50 + 7)
        })
    });
    s.fails(&d, vec![], &["train-images-idx3-ubyte"]);
}

#[test]
fn wrong_magic() {
    let s = setup();
    let d = s.bad_data("magic", |d| {
        edit_bytes(&d.join("t10k-images-idx3-ubyte"), |b| b[2] = 0x09)
    });
    s.fails(&d, vec![], &["t10k-images-idx3-ubyte", "magic"]);
}

#[test]
fn label_out_of_range() {
    let s = setup();
    let d = s.bad_data("label10", |d| {
        edit_bytes(&d.join("train-labels-idx1-ubyte"), |b| b[8 + 17] = 10)
    });
    s.fails(&d, vec![], &["train-labels-idx1-ubyte", "17", "10"]);
}

#[test]
fn count_mismatch() {
    let s = setup();
    let d = s.bad_data("count", |d| {
        let labels = mnist_data::read_labels(&d.join("train-labels-idx1-ubyte")).unwrap();
        mnist_data::write_labels(&d.join("train-labels-idx1-ubyte"), &labels[..199], false)
            .unwrap();
    });
    s.fails(&d, vec![], &["200", "199"]);
}

#[test]
fn unknown_model_is_a_usage_error() {
    let s = setup();
    let m = s.fails(&s.data, args!["--model", "ResNet"], &["ResNet", "--model"]);
    assert!(
        m.contains("LeNet") && m.contains("MLP"),
        "the usage error should list the models: {m}"
    );
}

#[test]
fn path_under_a_regular_file() {
    let s = setup();
    let file = s.root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let o = worker(args![
        "--data",
        s.data.display(),
        "--path",
        file.join("sub").display(),
        "--epochs",
        1
    ]);
    assert_eq!(o.status.code(), Some(2), "bad input: {}", o.stderr);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(
        o.stderr.starts_with("mnist-worker: error: ")
            && o.stderr.contains("--path")
            && o.stderr.contains("a-file"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("panicked"));
    assert_no_repeated_cause(o.stderr.trim());
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn evaluate_missing_file() {
    let s = setup();
    // `CheckpointError::Io` quotes its source in its own message; the worker's error line
    // must still print the OS error once (`mnist_common::error_line`).
    s.fails(
        &s.data,
        args!["--evaluate", s.root.join("nope.pt").display()],
        &["nope.pt"],
    );
}

#[test]
fn evaluate_text_file() {
    let s = setup();
    let f = s.root.join("notes.txt");
    std::fs::write(&f, "these are not weights\n").unwrap();
    s.fails(&s.data, args!["--evaluate", f.display()], &["notes.txt"]);
}

#[test]
fn evaluate_mlp_checkpoint_as_lenet() {
    let s = setup();
    let f = s.root.join("mlp.pt");
    let t: Vec<_> = mnist_models::parameter_shapes(mnist_models::ModelKind::Mlp)
        .into_iter()
        .map(|(n, sh)| {
            let sh: Vec<usize> = sh.iter().map(|&d| d as usize).collect();
            mnist_checkpoint::NamedTensor::new(n, sh.clone(), vec![0.0; sh.iter().product()])
        })
        .collect();
    mnist_checkpoint::save_state_dict(&f, &t).unwrap();
    let m = s.fails(
        &s.data,
        args!["--evaluate", f.display(), "--model", "LeNet"],
        &["mlp.pt", "--model MLP"],
    );
    // Names a key and, for a shape mismatch, both shapes.
    assert!(
        m.contains("conv1.weight") || (m.contains("fc1.weight") && m.contains("[500, 784]")),
        "{m}"
    );
}

#[test]
fn evaluate_lenet_checkpoint_as_mlp_names_both_shapes() {
    let s = setup();
    let m = s.fails(
        &s.data,
        args![
            "--evaluate",
            s.out.join("mnist_model.pt").display(),
            "--model",
            "MLP"
        ],
        &["fc1.weight", "--model LeNet"],
    );
    assert!(m.contains("[120, 256]") && m.contains("[500, 784]"), "{m}");
}

#[test]
fn zero_epochs() {
    let s = setup();
    s.fails(&s.data, args!["--epochs", 0], &["--epochs", "0"]);
}

#[test]
fn zero_batch_size() {
    let s = setup();
    s.fails(&s.data, args!["--batch-size", 0], &["--batch-size", "0"]);
}

#[test]
fn negative_learning_rate() {
    let s = setup();
    s.fails(&s.data, args!["--lr", "-0.1"], &["--lr", "-0.1"]);
}
