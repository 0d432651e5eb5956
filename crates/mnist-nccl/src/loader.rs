//! Checks, without panicking, that cudarc will find `libcuda` and `libnccl` and every symbol
//! this crate calls: cudarc panics when a library or symbol is missing, so nothing calls into
//! it before these checks pass.
//!
//! The search repeats cudarc's own (same names, same order, so the library checked is the one
//! cudarc will load) and, when libnccl is missing under those names, also tries
//! `libnccl.so.2` to explain the usual cause (see the crate docs).

use libloading::Library;
use std::sync::OnceLock;

/// Driver symbols called directly or by `CudaContext::new` / `bind_to_thread`.
const CUDA_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuStreamQuery",
    "cuGetErrorName",
    "cuGetErrorString",
];

/// NCCL symbols this crate calls.
const NCCL_SYMBOLS: &[&str] = &[
    "ncclGetVersion",
    "ncclGetUniqueId",
    "ncclCommInitRankConfig",
    "ncclCommGetAsyncError",
    "ncclAllReduce",
    "ncclBroadcast",
    "ncclCommFinalize",
    "ncclCommDestroy",
    "ncclCommAbort",
    "ncclGetErrorString",
    "ncclGetLastError",
];

/// The name NCCL's wheels and packages install, which cudarc does not try.
const NCCL_SONAME: &str = "libnccl.so.2";

/// A library opened under one of cudarc's names; kept open for the life of the process.
struct Found {
    name: String,
    _lib: Library,
}

/// Open the first of `candidates` that loads, like cudarc does; on failure say what was tried.
fn open_first(candidates: &[String]) -> Result<Found, String> {
    let mut last = String::from("no candidate names");
    for name in candidates {
        // SAFETY: loading a shared library runs its initialisers; these are the vendor's CUDA
        // and NCCL libraries that cudarc would load anyway, by the same names.
        match unsafe { Library::new(name) } {
            Ok(lib) => {
                return Ok(Found {
                    name: name.clone(),
                    _lib: lib,
                })
            }
            Err(e) => last = format!("{e:?}"),
        }
    }
    Err(last)
}

/// "N names, libX.so … libX.so.1" for messages.
fn tried(names: &[String]) -> String {
    match (names.first(), names.last()) {
        (Some(a), Some(b)) if names.len() > 2 => format!("{} names, {a} … {b}", names.len()),
        _ => names.join(", "),
    }
}

/// Drop repeated names, keeping the first of each (cudarc's list repeats some).
fn dedup(names: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
}

/// Every symbol of `symbols` missing from `found`.
fn missing_symbols(found: &Found, symbols: &[&str]) -> Vec<String> {
    symbols
        .iter()
        .filter(|s| {
            // SAFETY: the symbol is only looked up, never called, and the type is a plain
            // pointer.
            unsafe { found._lib.get::<*const ()>(s.as_bytes()) }.is_err()
        })
        .map(|s| s.to_string())
        .collect()
}

fn probe_cuda() -> Result<Found, String> {
    let mut names = cudarc::get_lib_name_candidates("cuda");
    names.extend(cudarc::get_lib_name_candidates("nvcuda"));
    dedup(&mut names);
    let found = open_first(&names).map_err(|last| {
        format!(
            "cannot load the CUDA driver library (tried {}; last error: {last}); is an NVIDIA \
             driver installed on this machine?",
            tried(&names)
        )
    })?;
    let missing = missing_symbols(&found, CUDA_SYMBOLS);
    if !missing.is_empty() {
        return Err(format!(
            "the CUDA driver library {} lacks {} (driver too old for CUDA 13?)",
            found.name,
            missing.join(", ")
        ));
    }
    Ok(found)
}

fn probe_nccl() -> Result<Found, String> {
    let mut names = cudarc::get_lib_name_candidates("nccl");
    dedup(&mut names);
    let found = match open_first(&names) {
        Ok(f) => f,
        Err(last) => {
            // SAFETY: as in `open_first`; the handle is dropped at once.
            let soname_loads = unsafe { Library::new(NCCL_SONAME) }.is_ok();
            return Err(if soname_loads {
                format!(
                    "{NCCL_SONAME} is loadable but cudarc 0.19 only looks for {}; put a folder \
                     holding a symlink `libnccl.so -> <folder of {NCCL_SONAME}>/{NCCL_SONAME}` \
                     on LD_LIBRARY_PATH before starting the process (scripts/gpu-check.sh run \
                     does this)",
                    tried(&names)
                )
            } else {
                format!(
                    "cannot load libnccl (tried {}, and {NCCL_SONAME}; last error: {last}); \
                     install NCCL (pip's nvidia-nccl-cu13 puts it in \
                     site-packages/nvidia/nccl/lib) and put a folder with a `libnccl.so` \
                     symlink to it on LD_LIBRARY_PATH",
                    tried(&names)
                )
            });
        }
    };
    let missing = missing_symbols(&found, NCCL_SYMBOLS);
    if !missing.is_empty() {
        return Err(format!(
            "the NCCL library {} lacks {} (NCCL older than 2.18?)",
            found.name,
            missing.join(", ")
        ));
    }
    Ok(found)
}

static CUDA: OnceLock<Result<Found, String>> = OnceLock::new();
static NCCL: OnceLock<Result<Found, String>> = OnceLock::new();

/// `Ok(name loaded)` when cudarc can load libcuda with every symbol used here. Cached: the
/// dynamic loader's search path does not change while the process runs.
pub(crate) fn cuda_library() -> Result<&'static str, String> {
    match CUDA.get_or_init(probe_cuda) {
        Ok(f) => Ok(&f.name),
        Err(e) => Err(e.clone()),
    }
}

/// `Ok(name loaded)` when cudarc can load libnccl with every symbol used here (cached).
pub(crate) fn nccl_library() -> Result<&'static str, String> {
    match NCCL.get_or_init(probe_nccl) {
        Ok(f) => Ok(&f.name),
        Err(e) => Err(e.clone()),
    }
}
