//! libtorch's CUDA half, loaded only where it can be used.
//!
//! A CUDA build of libtorch (PyPI's `torch`) splits into `libtorch_cpu.so` and
//! `libtorch_cuda.so`; the latter and the CUDA libraries it pulls in (cuBLAS, cuDNN, …) cost
//! every process about 235 MB of resident memory (184 MB of it private) and a slower start,
//! measured with torch 2.11 on a machine without a GPU. Our binaries do not link it; instead
//! [`load`] opens it (`RTLD_GLOBAL`, so its static initialisers register libtorch's CUDA
//! hooks) when an NVIDIA driver is present. It must run before any other libtorch call that
//! asks about CUDA: libtorch decides once per process whether CUDA exists (its
//! `getCUDAHooks()` caches the first answer), which is why `mnist-worker` calls it first.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What became of libtorch's CUDA half in this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CudaRuntime {
    /// Loaded from this file.
    Loaded(PathBuf),
    /// Not loaded: the reason, for the log and for errors that ask for a GPU.
    Absent(String),
    /// Not loaded because `MNIST_TORCH_CUDA` holds something else than auto, on or off (the
    /// worker refuses to start with it).
    BadSetting(String),
}

impl CudaRuntime {
    /// Whether libtorch can use CUDA devices in this process (given a GPU).
    pub fn is_loaded(&self) -> bool {
        matches!(self, CudaRuntime::Loaded(_))
    }
}

impl std::fmt::Display for CudaRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaRuntime::Loaded(p) => {
                write!(f, "libtorch CUDA runtime loaded from {}", p.display())
            }
            CudaRuntime::Absent(why) => write!(f, "libtorch CUDA runtime not loaded: {why}"),
            CudaRuntime::BadSetting(m) => f.write_str(m),
        }
    }
}

/// How `MNIST_TORCH_CUDA` asks to treat the CUDA half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Auto,
    Off,
    On,
}

static STATE: OnceLock<CudaRuntime> = OnceLock::new();

/// Load libtorch's CUDA half if this process can use it (once; later calls return the first
/// outcome). Never fails: what went wrong is in [`CudaRuntime::Absent`].
pub fn load() -> &'static CudaRuntime {
    STATE.get_or_init(|| {
        let var = mnist_common::contract::ENV_TORCH_CUDA;
        let policy = match std::env::var(var).as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("auto") => Policy::Auto,
            Ok("off") | Ok("0") => Policy::Off,
            Ok("on") | Ok("1") => Policy::On,
            Ok(other) => {
                return CudaRuntime::BadSetting(format!(
                    "{var}={other:?}: expected auto, on or off"
                ))
            }
        };
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        decide(policy, visible.as_deref(), driver_present).and_then_load()
    })
}

/// The decision before any library is opened: `Ok(())` to go on and load.
fn decide(
    policy: Policy,
    cuda_visible_devices: Option<&str>,
    driver: impl FnOnce() -> Result<(), String>,
) -> Decision {
    let var = mnist_common::contract::ENV_TORCH_CUDA;
    match policy {
        Policy::Off => return Decision::Skip(format!("{var}=off")),
        Policy::On => return Decision::Load,
        Policy::Auto => {}
    }
    if let Some(v) = cuda_visible_devices {
        let v = v.trim();
        if v.is_empty() || v.starts_with("-1") {
            return Decision::Skip(format!("CUDA_VISIBLE_DEVICES={v:?} hides every GPU"));
        }
    }
    match driver() {
        Ok(()) => Decision::Load,
        Err(e) => Decision::Skip(format!("no NVIDIA driver ({e})")),
    }
}

/// Outcome of [`decide`].
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Load,
    Skip(String),
}

impl Decision {
    fn and_then_load(self) -> CudaRuntime {
        match self {
            Decision::Skip(why) => CudaRuntime::Absent(why),
            Decision::Load => match libtorch_dir() {
                None => CudaRuntime::Absent(
                    "libtorch_cpu.so is not mapped in this process (cannot locate libtorch)".into(),
                ),
                Some(dir) => open_global(&dir.join("libtorch_cuda.so")),
            },
        }
    }
}

/// The driver library loads (it is what CUDA needs first; a machine without it has no GPU
/// libtorch could use).
fn driver_present() -> Result<(), String> {
    // SAFETY: loading the NVIDIA driver library runs its initialisers, which only set up
    // its own state; nothing from it is called here and it is unloaded again.
    unsafe { libloading::Library::new("libcuda.so.1") }
        .map(drop)
        .map_err(|e| error_chain(&e))
}

/// `e` and its sources, joined (libloading's own message is only "dlopen failed").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    parts.join(": ")
}

/// The folder of the `libtorch_cpu.so` this process has mapped (the CUDA half sits beside
/// it).
fn libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
}

/// Open `lib` with `RTLD_NOW | RTLD_GLOBAL` and keep it for the life of the process.
fn open_global(lib: &Path) -> CudaRuntime {
    if !lib.exists() {
        return CudaRuntime::Absent(format!(
            "{} does not exist (a CPU-only libtorch)",
            lib.display()
        ));
    }
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL;
    // SAFETY: libtorch_cuda.so is the CUDA half of the very libtorch this process already
    // runs (found beside its libtorch_cpu.so); its initialisers register CUDA with that
    // libtorch, which is what loading it is for. It is never unloaded (`forget`).
    match unsafe { libloading::os::unix::Library::open(Some(lib), flags) } {
        Ok(handle) => {
            std::mem::forget(handle);
            CudaRuntime::Loaded(lib.to_path_buf())
        }
        Err(e) => CudaRuntime::Absent(format!(
            "opening {} failed: {}",
            lib.display(),
            error_chain(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_driver() -> Result<(), String> {
        Err("libcuda.so.1: cannot open shared object file".into())
    }

    #[test]
    fn auto_loads_only_with_a_driver_and_visible_gpus() {
        assert_eq!(decide(Policy::Auto, None, || Ok(())), Decision::Load);
        assert_eq!(decide(Policy::Auto, Some("0,1"), || Ok(())), Decision::Load);
        let Decision::Skip(why) = decide(Policy::Auto, None, no_driver) else {
            panic!("loaded without a driver")
        };
        assert!(why.starts_with("no NVIDIA driver (libcuda.so.1"), "{why}");
        for hidden in ["", " ", "-1", "-1,0"] {
            let Decision::Skip(why) = decide(Policy::Auto, Some(hidden), || Ok(())) else {
                panic!("loaded with CUDA_VISIBLE_DEVICES={hidden:?}")
            };
            assert!(why.contains("hides every GPU"), "{why}");
        }
    }

    #[test]
    fn on_and_off_override_the_probe() {
        assert_eq!(decide(Policy::On, Some(""), no_driver), Decision::Load);
        assert_eq!(
            decide(Policy::Off, None, || Ok(())),
            Decision::Skip("MNIST_TORCH_CUDA=off".into())
        );
    }

    #[test]
    fn a_missing_library_is_named() {
        let r = open_global(Path::new("/nonexistent/libtorch_cuda.so"));
        assert_eq!(
            r.to_string(),
            "libtorch CUDA runtime not loaded: /nonexistent/libtorch_cuda.so does not exist (a CPU-only libtorch)"
        );
    }
}
