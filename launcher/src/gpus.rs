//! Counting the GPUs this process may use, without loading any CUDA library: the launcher
//! only needs the number to choose its default `--nproc`, and must work on machines with no
//! driver at all.

use std::ffi::OsStr;
use std::path::Path;

/// Where the NVIDIA kernel driver lists one folder per GPU.
pub const NVIDIA_PROC_GPUS: &str = "/proc/driver/nvidia/gpus";

/// Number of GPUs visible to this process: from `CUDA_VISIBLE_DEVICES` when it is set,
/// else the entries of [`NVIDIA_PROC_GPUS`], else 0. Never fails.
pub fn visible_gpu_count() -> usize {
    count_visible(
        std::env::var_os(mnist_common::contract::ENV_CUDA_VISIBLE_DEVICES).as_deref(),
        Path::new(NVIDIA_PROC_GPUS),
    )
}

/// [`visible_gpu_count`] with its two inputs given explicitly (for tests).
pub fn count_visible(cuda_visible_devices: Option<&OsStr>, proc_gpus: &Path) -> usize {
    match cuda_visible_devices {
        Some(list) => count_cuda_visible_devices(&list.to_string_lossy()),
        None => std::fs::read_dir(proc_gpus)
            .map(|entries| entries.filter(|e| e.is_ok()).count())
            .unwrap_or(0),
    }
}

/// Count the devices a `CUDA_VISIBLE_DEVICES` value names. Empty entries are skipped; like
/// the CUDA runtime, enumeration stops at the first negative index (so `""` and `"-1"` mean
/// no GPU, and `"0,-1,1"` means one). UUIDs (`GPU-…`, `MIG-…`) count as one device each.
pub fn count_cuda_visible_devices(value: &str) -> usize {
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .take_while(|e| !e.starts_with('-'))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_visible_devices_values() {
        for (value, n) in [
            ("", 0),
            ("-1", 0),
            ("0", 1),
            ("0,1", 2),
            (" 0 , 2 ,", 2),
            ("0,-1,1", 1),
            ("GPU-8c3e1e0a-aaaa,MIG-1234", 2),
            (",,", 0),
        ] {
            assert_eq!(
                count_cuda_visible_devices(value),
                n,
                "CUDA_VISIBLE_DEVICES={value:?}"
            );
        }
    }

    #[test]
    fn env_wins_over_proc_and_missing_proc_means_zero() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["0000:01:00.0", "0000:02:00.0", "0000:03:00.0"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(count_visible(None, dir.path()), 3);
        assert_eq!(count_visible(Some(OsStr::new("1")), dir.path()), 1);
        assert_eq!(count_visible(Some(OsStr::new("")), dir.path()), 0);
        assert_eq!(count_visible(None, &dir.path().join("missing")), 0);
    }
}
