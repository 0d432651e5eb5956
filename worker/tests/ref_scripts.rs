//! The PyTorch reference scripts the benchmarks run (scripts/ref/): each one's flags parse
//! (`--help`; a flag added twice through the shared `parse_common` once broke
//! torch_ddp_nodes.py unnoticed), and torch_ddp_nodes.py, which scripts/bench-nodes.sh starts
//! in each namespace, trains a few batches as a world of one. Skips visibly without Python and
//! torch.

mod common;

use common::*;
use std::process::Command;

#[test]
fn reference_scripts_parse_their_flags_and_the_per_node_script_trains() {
    let Some(py) = python("reference_scripts_parse_their_flags_and_the_per_node_script_trains")
    else {
        return;
    };
    for s in [
        "torch_loop.py",
        "torch_dataloader.py",
        "torch_ddp.py",
        "torch_ddp_nodes.py",
        "torch_ddp_train.py",
        "torch_gpu_epoch.py",
    ] {
        let o = Command::new(&py)
            .arg(ref_script(s))
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{s} --help failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let tmp = tempdir();
    let data = make_data(tmp.path(), 256, 100);
    let port = free_port();
    for model in ["LeNet", "MLP"] {
        let o = Command::new(&py)
            .arg(ref_script("torch_ddp_nodes.py"))
            .args(args![
                "--rank",
                0,
                "--world",
                1,
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                "--data",
                data.display(),
                "--warmup",
                0,
                "--epochs",
                1,
                "--max-batches",
                2,
                "--model",
                model
            ])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.contains("RESULT epoch_seconds="),
            "torch_ddp_nodes.py --model {model}:\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
