//! Build script shared by the packages that link libtorch: the rpath to libtorch.
// Shared build script for every package whose binaries or tests link libtorch through tch.
//
// It records an rpath to libtorch's lib folder so binaries run without LD_LIBRARY_PATH.
// libtorch_cuda is deliberately not linked (the linker's --as-needed drops it, as nothing
// references its symbols): mnist_train::cuda_runtime opens it at run time where an NVIDIA
// driver exists, so CPU-only processes do not carry its ~235 MB.
// The lib folder comes from torch-sys (`links = "tch"`), which exports it as
// DEP_TCH_LIBTORCH_LIB to packages that depend on torch-sys directly.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report libtorch's lib folder; no rpath set");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
}
