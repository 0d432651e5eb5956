//! `--model Net` end to end: our trained state_dict loads strictly into the example's `Net` in
//! PyTorch (plain and with DDP's `module.` prefix; `num_batches_tracked` as int64) and gives
//! the same outputs and accuracy, and into a real `DistributedDataParallel(Net())` both ways
//! the README shows; a PyTorch-trained Net (either form) evaluates here with
//! PyTorch's accuracy; a forward/backward pass in eval mode matches PyTorch's (outputs and
//! every gradient, 1e-5); and two ranks train through `mnist-launch` with and without
//! `--sync-bn`, in step (`--check-sync`).

mod common;

use common::*;
use mnist_checkpoint::{DType, NamedTensor};
use mnist_models::{Model, ModelKind};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Test images whose outputs are compared.
const N: usize = 64;

fn test_images(data: &Path) -> (Tensor, Tensor) {
    let split = mnist_data::load_split(data, mnist_data::Split::Test).unwrap();
    let ds = mnist_train::dataset::TensorDataset::new(&split, Device::Cpu).unwrap();
    ds.batch(0, N)
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.detach().to_kind(Kind::Float).contiguous().view([-1])).unwrap()
}

fn read_f32(file: &Path) -> Vec<f32> {
    std::fs::read(file)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn interop(py: &Path, args: Vec<String>) -> serde_json::Value {
    let mut a = args![ref_script("interop_logits.py").display()];
    a.extend(args);
    a.extend(args!["--arch", "Net"]);
    let o = run(py, a).ok("interop_logits.py");
    serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", o.stdout))
}

/// `--evaluate` of a Net model: (correct, count, loss).
fn evaluate_net(data: &Path, out: &Path, model: &Path) -> (u64, u64, f64) {
    let o = worker(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--model",
        "Net",
        "--evaluate",
        model.display()
    ])
    .ok("--evaluate --model Net");
    last_test_line(&o.stdout).unwrap_or_else(|| panic!("no Test set line in:\n{}", o.stdout))
}

/// PyTorch loads `model` strictly and agrees with us on outputs, accuracy and loss.
fn compare(what: &str, py: &Path, data: &Path, model: &Path, tmp: &Path) {
    tch::set_num_threads(1);
    let mut m = Model::new(ModelKind::Net, Device::Cpu);
    mnist_train::state::load_into(&mut m, model).unwrap();
    let ours = to_vec(&tch::no_grad(|| m.forward(&test_images(data).0)));
    let outputs = tmp.join("py_out.f32");
    let j = interop(
        py,
        args![
            "eval",
            "--data",
            data.display(),
            "--model",
            model.display(),
            "--n",
            N,
            "--logits-out",
            outputs.display()
        ],
    );
    let theirs = read_f32(&outputs);
    let (d, _) = max_diff(&ours, &theirs);
    println!("{what}: max |output diff| = {d:e}");
    assert!(d <= 1e-5, "{what}: outputs differ by {d}");
    let (c, n, loss) = evaluate_net(data, &tmp.join("eval"), model);
    let (pc, pn) = (j["correct"].as_u64().unwrap(), j["count"].as_u64().unwrap());
    let ploss = j["avg_loss"].as_f64().unwrap();
    println!("{what}: --evaluate {c}/{n} loss {loss:.4}; PyTorch {pc}/{pn} loss {ploss:.6}");
    assert_eq!((c, n), (pc, pn), "{what}: accuracy differs from PyTorch's");
    assert!(
        (loss - ploss).abs() <= 1e-4,
        "{what}: loss {loss} vs {ploss}"
    );
}

/// The same tensors under DDP's `module.` keys, dtypes kept.
fn with_module_prefix(src: &Path, dst: &Path) {
    let (tensors, dtypes): (Vec<NamedTensor>, Vec<DType>) =
        mnist_checkpoint::load_state_dict_with_dtypes(src)
            .unwrap()
            .into_iter()
            .map(|(mut t, d)| {
                t.name = format!("module.{}", t.name);
                (t, d)
            })
            .unzip();
    mnist_checkpoint::save_state_dict_with_dtypes(dst, &tensors, &dtypes).unwrap();
}

#[test]
fn net_state_dicts_go_both_ways_with_pytorch() {
    let Some(py) = python("Net state_dict interop with PyTorch") else {
        return;
    };
    let tmp = tempdir();
    let data = make_data(tmp.path(), 960, 300);

    // Ours → PyTorch: 30 steps of batch 32.
    let out = tmp.path().join("run");
    worker(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--model",
        "Net",
        "--epochs",
        1,
        "--batch-size",
        32,
        "--log-interval",
        100
    ])
    .ok("training Net");
    let ours = out.join("mnist_model.pt");
    let saved = mnist_checkpoint::load_state_dict_with_dtypes(&ours).unwrap();
    let names: Vec<&str> = saved.iter().map(|(t, _)| t.name.as_str()).collect();
    let layout: Vec<&str> = mnist_models::state_layout(ModelKind::Net)
        .iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, layout, "state_dict keys and order");
    let (counter, dtype) = &saved[6];
    assert_eq!(counter.name, "bn1.num_batches_tracked");
    assert_eq!((*dtype, counter.data.as_slice()), (DType::I64, &[30.0][..]));
    compare("mnist-worker Net in PyTorch", &py, &data, &ours, tmp.path());
    let prefixed = tmp.path().join("ours_module.pt");
    with_module_prefix(&ours, &prefixed);
    compare(
        "mnist-worker Net with module. keys in PyTorch",
        &py,
        &data,
        &prefixed,
        tmp.path(),
    );
    // Into a real DDP-wrapped Net, the ways a DDP script loads (README "Checkpoints").
    let j = interop(&py, args!["ddp-load", "--model", ours.display()]);
    assert_eq!(j["loaded"].as_array().unwrap().len(), 2, "{j}");
    assert_eq!(j["tensors"], 18, "{j}");
    let j = interop(
        &py,
        args!["ddp-load", "--model", prefixed.display(), "--expect-prefix"],
    );
    assert_eq!(j["loaded"][0], "ddp.load_state_dict(sd)", "{j}");

    // PyTorch → ours, plain and as DDP saves it.
    for prefix in [false, true] {
        let file = tmp.path().join(format!("torch_{prefix}.pt"));
        let mut a = args![
            "train",
            "--data",
            data.display(),
            "--out",
            file.display(),
            "--steps",
            40,
            "--seed",
            3
        ];
        if prefix {
            a.push("--prefix".into());
        }
        interop(&py, a);
        compare(
            &format!("PyTorch-trained Net (module. prefix: {prefix}) in mnist-worker"),
            &py,
            &data,
            &file,
            tmp.path(),
        );
    }
}

#[test]
fn eval_mode_forward_and_backward_match_pytorch() {
    let Some(py) = python("Net forward/backward against PyTorch") else {
        return;
    };
    tch::set_num_threads(1);
    let tmp = tempdir();
    let data = make_data(tmp.path(), 640, 100);
    // Trained weights, so the running statistics are not the initial 0 and 1.
    let model = tmp.path().join("torch.pt");
    interop(
        &py,
        args![
            "train",
            "--data",
            data.display(),
            "--out",
            model.display(),
            "--steps",
            20
        ],
    );
    let grads_file = tmp.path().join("grads.f32");
    let j = interop(
        &py,
        args![
            "grads",
            "--data",
            data.display(),
            "--model",
            model.display(),
            "--n",
            N,
            "--out",
            grads_file.display()
        ],
    );
    let theirs = read_f32(&grads_file);

    let mut m = Model::new(ModelKind::Net, Device::Cpu);
    mnist_train::state::load_into(&mut m, &model).unwrap();
    let (x, y) = test_images(&data);
    let out = m.forward(&x);
    let loss = out.cross_entropy_for_logits(&y);
    loss.backward();
    let dl = (loss.double_value(&[]) - j["loss"].as_f64().unwrap()).abs();
    assert!(dl < 1e-5, "loss differs by {dl}");
    let names: Vec<&str> = j["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ours_names: Vec<&str> = m.parameters().iter().map(|p| p.name).collect();
    assert_eq!(names, ours_names);
    let mut pos = 0;
    let mut take = |n: usize| {
        let s = &theirs[pos..pos + n];
        pos += n;
        s.to_vec()
    };
    let (d, _) = max_diff(&to_vec(&out), &take(N * 10));
    assert!(d < 1e-5, "outputs differ by {d}");
    for p in m.parameters() {
        let ours = to_vec(&p.tensor.grad());
        let (d, scale) = max_diff(&ours, &take(ours.len()));
        println!("{}: max |grad diff| {d:e} (max |grad| {scale:.3e})", p.name);
        assert!(d < 1e-5, "{}: gradients differ by {d}", p.name);
    }
    assert_eq!(pos, theirs.len());
}

/// Two ranks through the launcher, with SyncBatchNorm (the default) and without: both
/// train, stay in step (parameters and, with sync, BatchNorm buffers: `--check-sync 1`),
/// log which BatchNorm they use, and save a model that evaluates.
#[test]
fn two_ranks_train_net_with_and_without_sync_bn() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 512, 200);
    for (flag, expect) in [
        (None, "synchronised across 2 processes"),
        (Some("--no-sync-bn"), "broadcast every step"),
    ] {
        let out = tmp.path().join(format!("run-{}", flag.unwrap_or("sync")));
        let mut a = with_base(args![
            "--backend",
            "cpu",
            "--nproc",
            2,
            "--model",
            "Net",
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
            "--check-sync",
            1
        ]);
        a.extend(flag.map(String::from));
        let o = run(&launcher_bin(), a).ok(&format!("mnist-launch --model Net {flag:?}"));
        let log0 = std::fs::read_to_string(out.join("rank0.log")).unwrap();
        assert!(log0.contains(expect), "{flag:?}: {log0}\n{}", o.stderr);
        assert!(log0.contains("Final best Test Accuracy"), "{log0}");
        let m = metrics(&out);
        assert_eq!(m.len(), 2);
        assert!(m[1]["test_top1"].as_f64().unwrap() > 30.0, "{m:?}");
        let (c, n, _) = evaluate_net(&data, &out.join("eval"), &out.join("mnist_model.pt"));
        assert_eq!(n, 200);
        assert!(c > 60, "{flag:?}: the saved model evaluates to {c}/{n}");
    }
}

/// `--resume` restores the BatchNorm buffers (and dropout continues with the epoch's masks):
/// a Net run stopped after one epoch and resumed ends with the parameters, buffers and best
/// model of an uninterrupted run.
#[test]
fn resumed_net_run_equals_uninterrupted_run() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 320, 100);
    let train = |out: &Path, extra: Vec<String>| {
        let mut a = args![
            "--data",
            data.display(),
            "--path",
            out.display(),
            "--model",
            "Net",
            "--epochs",
            2,
            "--batch-size",
            32,
            "--test-batch-size",
            100
        ];
        a.extend(extra);
        worker(a)
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    train(&a, vec![]).ok("Net, 2 epochs");
    train(&b, args!["--stop-after-epochs", 1]).ok("Net, stopped after 1 epoch");
    let st = mnist_train::resume::load(&mnist_train::resume::path_in(&b)).unwrap();
    assert_eq!(st.buffers.len(), (2 * 32 + 1) + (2 * 64 + 1));
    assert_eq!(
        st.buffers[64], 10.0,
        "bn1.num_batches_tracked after 10 steps"
    );
    let o = train(&b, args!["--resume"]).ok("Net resumed");
    assert!(o.stdout.contains("Resuming from"), "{}", o.stdout);
    let sa = mnist_train::resume::load(&mnist_train::resume::path_in(&a)).unwrap();
    let sb = mnist_train::resume::load(&mnist_train::resume::path_in(&b)).unwrap();
    let (d, _) = max_diff(&sa.params, &sb.params);
    assert!(d <= 1e-6, "parameters differ by {d}");
    let (d, _) = max_diff(&sa.buffers, &sb.buffers);
    assert!(d <= 1e-6, "buffers differ by {d}");
    assert_eq!(sa.buffers[64], 20.0);
    let ma = mnist_checkpoint::load_state_dict(&a.join("mnist_model.pt")).unwrap();
    let mb = mnist_checkpoint::load_state_dict(&b.join("mnist_model.pt")).unwrap();
    assert_eq!(ma.len(), 18);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x.name, y.name);
        assert!(
            max_diff(&x.data, &y.data).0 <= 1e-6,
            "best model differs in {}",
            x.name
        );
    }
}
