//! PyTorch interop of whole models: our trained `mnist_model.pt` in the reference PyTorch
//! LeNet (strict `load_state_dict`), and a PyTorch-trained state_dict in ours, give the same
//! logits (to 1e-5) on a fixed batch, and `--evaluate` prints the same `Accuracy: c/N` and
//! average loss as PyTorch (scripts/ref/interop_logits.py).

mod common;

use common::*;
use mnist_models::{Model, ModelKind};
use std::path::Path;
use tch::{Device, Kind};

/// Test images whose logits are compared.
const N: usize = 64;

/// Our logits for the first `N` test images of `data`, with `model` loaded in-process the way
/// `--evaluate` loads it.
fn rust_logits(data: &Path, model: &Path) -> Vec<f32> {
    tch::set_num_threads(1);
    let mut m = Model::new(ModelKind::LeNet, Device::Cpu);
    mnist_train::state::load_into(&mut m, model).unwrap();
    let split = mnist_data::load_split(data, mnist_data::Split::Test).unwrap();
    let ds = mnist_train::dataset::TensorDataset::new(&split, Device::Cpu).unwrap();
    let logits = tch::no_grad(|| m.forward(&ds.batch(0, N).0));
    assert_eq!(logits.size(), [N as i64, 10]);
    let flat = logits.to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&flat).unwrap()
}

/// PyTorch's evaluation of `model` on `data`: (correct, count, avg_loss) and the logits.
fn python_eval(py: &Path, data: &Path, model: &Path, tmp: &Path) -> ((u64, u64, f64), Vec<f32>) {
    let logits_file = tmp.join("py_logits.f32");
    let o = run(
        py,
        args![
            ref_script("interop_logits.py").display(),
            "eval",
            "--data",
            data.display(),
            "--model",
            model.display(),
            "--n",
            N,
            "--logits-out",
            logits_file.display()
        ],
    )
    .ok("interop_logits.py eval");
    let j: serde_json::Value =
        serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", o.stdout));
    let bytes = std::fs::read(&logits_file).unwrap();
    let logits = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (
        (
            j["correct"].as_u64().unwrap(),
            j["count"].as_u64().unwrap(),
            j["avg_loss"].as_f64().unwrap(),
        ),
        logits,
    )
}

fn compare(what: &str, data: &Path, model: &Path, py: &Path, tmp: &Path) {
    let ours = rust_logits(data, model);
    let ((pc, pn, ploss), theirs) = python_eval(py, data, model, tmp);
    assert_eq!(theirs.len(), N * 10);
    let (d, m) = max_diff(&ours, &theirs);
    println!("{what}: max |logit diff| = {d:e} (max |logit| {m:.3})");
    assert!(d <= 1e-5, "{what}: logits differ by {d} (> 1e-5)");
    let argmax = |v: &[f32]| -> Vec<usize> {
        v.chunks(10)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0
            })
            .collect()
    };
    assert_eq!(
        argmax(&ours),
        argmax(&theirs),
        "{what}: per-sample predictions differ"
    );
    let (c, n, loss) = evaluate(data, &tmp.join("eval"), model);
    println!("{what}: --evaluate {c}/{n} loss {loss:.4}; PyTorch {pc}/{pn} loss {ploss:.6}");
    assert_eq!(
        (c, n),
        (pc, pn),
        "{what}: --evaluate accuracy differs from PyTorch's"
    );
    // The worker prints 4 decimals.
    assert!(
        (loss - ploss).abs() <= 1e-4,
        "{what}: --evaluate loss {loss} vs PyTorch {ploss}"
    );
}

#[test]
fn our_model_in_pytorch_and_pytorch_model_in_ours_agree() {
    let Some(py) = python("PyTorch logits interop") else {
        return;
    };
    let tmp = tempdir();
    let data = make_data(tmp.path(), 2000, 500);

    // Ours → PyTorch.
    let out = tmp.path().join("run");
    worker(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--epochs",
        2,
        "--batch-size",
        32,
        "--log-interval",
        100
    ])
    .ok("training");
    compare(
        "mnist-worker model in PyTorch",
        &data,
        &out.join("mnist_model.pt"),
        &py,
        tmp.path(),
    );

    // PyTorch → ours.
    let torch_model = tmp.path().join("torch_trained.pt");
    run(
        &py,
        args![
            ref_script("interop_logits.py").display(),
            "train",
            "--data",
            data.display(),
            "--out",
            torch_model.display(),
            "--steps",
            120,
            "--seed",
            3
        ],
    )
    .ok("interop_logits.py train");
    compare(
        "PyTorch-trained model in mnist-worker",
        &data,
        &torch_model,
        &py,
        tmp.path(),
    );
}
