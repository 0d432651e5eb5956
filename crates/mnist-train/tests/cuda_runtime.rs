//! libtorch's CUDA half stays out of a process on a machine without an NVIDIA driver (its own
//! test binary, so nothing else in the process has asked libtorch about CUDA first).

use mnist_train::cuda_runtime::{load, CudaRuntime};

fn mapped(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|l| l.ends_with(name))
}

#[test]
fn without_a_driver_libtorch_cuda_is_not_loaded() {
    // SAFETY: probing for the driver library only runs its initialisers.
    if unsafe { libloading::Library::new("libcuda.so.1") }.is_ok() {
        mnist_testkit::skip(
            "without_a_driver_libtorch_cuda_is_not_loaded",
            "gpu",
            "this machine has an NVIDIA driver (libcuda.so.1 loads)",
        );
        return;
    }
    if std::env::var_os("MNIST_TORCH_CUDA").is_some() {
        mnist_testkit::skip(
            "without_a_driver_libtorch_cuda_is_not_loaded",
            "env",
            "MNIST_TORCH_CUDA is set in the test's environment",
        );
        return;
    }
    // A libtorch tensor op first: it must not need the CUDA half either.
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0]).sum(tch::Kind::Float);
    assert_eq!(t.double_value(&[]), 3.0);
    match load() {
        CudaRuntime::Absent(why) => assert!(why.starts_with("no NVIDIA driver ("), "{why}"),
        other => panic!("expected no CUDA runtime, got {other}"),
    }
    assert!(mapped("/libtorch_cpu.so"), "libtorch_cpu.so is not mapped");
    assert!(
        !mapped("/libtorch_cuda.so"),
        "libtorch_cuda.so is mapped although this machine has no NVIDIA driver"
    );
    assert_eq!(mnist_train::device::cuda_count(), 0);
}
