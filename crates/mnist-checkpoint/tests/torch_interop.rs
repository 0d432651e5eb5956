//! Interop with real PyTorch 2.11 (needs `MNIST_PYTHON`; records a visible skip otherwise):
//! torch.load + strict load_state_dict of our files, and our loading of torch.save files.
//! The Python side is scripts/torch_checkpoint_check.py.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_same, lenet_tensors, python, read_manifest, script, write_manifest};
use mnist_checkpoint::{load_state_dict, load_state_dict_with_dtypes, save_state_dict, DType};

fn run_script(py: &str, args: &[&Path]) -> String {
    let out = Command::new(py)
        .arg(script())
        .args(args)
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python failed: {text}");
    text
}

#[test]
fn pytorch_loads_our_lenet_checkpoint_strictly() {
    let Some(py) = python("pytorch_loads_our_lenet_checkpoint_strictly") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("mnist_model.pt");
    let manifest = dir.path().join("expected.manifest");
    let tensors = lenet_tensors(7);
    save_state_dict(&ckpt, &tensors).unwrap();
    write_manifest(&manifest, &tensors);
    let out = run_script(&py, &[Path::new("check-ours"), &ckpt, &manifest]);
    assert!(out.contains("OK check-ours 10 tensors"), "{out}");
}

#[test]
fn we_load_what_torch_save_writes() {
    let Some(py) = python("we_load_what_torch_save_writes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = run_script(&py, &[Path::new("make"), dir.path()]);
    assert!(out.contains("OK make"), "{out}");
    let p = |n: &str| dir.path().join(n);

    let lenet = read_manifest(&p("lenet.manifest"));
    assert_eq!(lenet.len(), 10);
    for file in ["lenet.pt", "lenet_p4.pt"] {
        assert_same(&load_state_dict(&p(file)).unwrap(), &lenet);
    }

    let mixed = read_manifest(&p("mixed.manifest"));
    for file in ["mixed.pt", "mixed_p4.pt"] {
        let got = load_state_dict_with_dtypes(&p(file)).unwrap();
        let dtype = |name: &str| got.iter().find(|(t, _)| t.name == name).unwrap().1;
        assert_eq!(dtype("f64"), DType::F64);
        assert_eq!(dtype("f16"), DType::F16);
        assert_eq!(dtype("bf16"), DType::BF16);
        assert_eq!(dtype("i64_scalar"), DType::I64);
        assert_eq!(dtype("flags"), DType::Bool);
        let tensors: Vec<_> = got.into_iter().map(|(t, _)| t).collect();
        assert_same(&tensors, &mixed);
    }

    // And a re-save of torch's file through us is read back identically by torch's rules.
    let resaved = p("resaved.pt");
    save_state_dict(&resaved, &mixed).unwrap();
    assert_same(&load_state_dict(&resaved).unwrap(), &mixed);

    let msg = load_state_dict(&p("legacy.pt")).unwrap_err().to_string();
    assert!(
        msg.contains("legacy.pt") && msg.contains("_use_new_zipfile_serialization"),
        "{msg}"
    );
}
