//! Build script shared by the packages that link libtorch: rpath and libtorch_cuda linking.
// Shared build script for every package whose binaries or tests link libtorch through tch.
//
// It (1) records an rpath to libtorch's lib folder so binaries run without LD_LIBRARY_PATH,
// and (2) keeps libtorch_cuda as a real dependency when it exists: tch links it, but the
// linker's --as-needed drops it because nothing references its symbols directly, and then
// CUDA is never registered (`tch::Cuda::is_available()` is false on a CUDA machine).
// The lib folder comes from torch-sys (`links = "tch"`), which exports it as
// DEP_TCH_LIBTORCH_LIB to packages that depend on torch-sys directly.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report libtorch's lib folder; no rpath set");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let cuda = std::path::Path::new(&lib).join("libtorch_cuda.so");
    if cuda.exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
