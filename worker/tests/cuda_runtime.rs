//! libtorch's CUDA half is loaded at run time (mnist_train::cuda_runtime): forced in with
//! `MNIST_TORCH_CUDA=on` it registers CUDA with libtorch (`hasCUDART`) and training on the CPU
//! still works; a bad value of the variable is bad input.

mod common;

use common::*;
use std::process::Command;

fn worker_with(value: &str, data: &std::path::Path, out: &std::path::Path) -> Output {
    let mut cmd = Command::new(worker_bin());
    cmd.args(with_base(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--epochs",
        1
    ]))
    .env("MNIST_TORCH_CUDA", value);
    spawn(cmd).wait(DEADLINE)
}

#[test]
fn forced_in_it_registers_cuda_and_cpu_training_still_works() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 200, 100);
    let out = tmp.path().join("out");
    let o = worker_with("on", &data, &out).ok("worker with MNIST_TORCH_CUDA=on");
    let text = o.stdout.clone();
    let note = text
        .lines()
        .find(|l| l.contains("libtorch CUDA runtime loaded from"))
        .unwrap_or_else(|| panic!("no CUDA runtime note in:\n{text}"));
    assert!(note.contains("/libtorch_cuda.so"), "{note}");
    assert!(note.contains("(CUDA runtime registered: true)"), "{note}");
    assert!(last_test_line(&text).is_some(), "no test line in:\n{text}");
}

#[test]
fn the_default_run_says_nothing_about_it_and_a_bad_value_is_refused() {
    let tmp = tempdir();
    let data = make_data(tmp.path(), 200, 100);
    let out = tmp.path().join("out");
    let o = worker_with("auto", &data, &out).ok("worker with MNIST_TORCH_CUDA=auto");
    let text = o.stdout.clone();
    if !text.contains("CUDA runtime loaded") {
        assert!(last_test_line(&text).is_some(), "no test line in:\n{text}");
    }
    let o = worker_with("maybe", &data, &out);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = o.stderr.clone();
    assert!(
        err.trim()
            .ends_with("MNIST_TORCH_CUDA=\"maybe\": expected auto, on or off"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
