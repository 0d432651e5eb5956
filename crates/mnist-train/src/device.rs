//! Device selection: `--device auto|cpu|cuda`, `--gpu N`, and the launcher's `MNIST_GPUS`
//! list. Never panics on a machine without a GPU or driver.

use crate::TrainError;
use mnist_common::DeviceKind;
use tch::Device;

/// Pick the device for the process with `local_rank`.
///
/// `cuda_count` is the number of usable CUDA devices (0 without a GPU or driver).
pub fn select(
    kind: DeviceKind,
    gpu: Option<usize>,
    gpus: Option<&str>,
    local_rank: usize,
    cuda_count: usize,
) -> Result<Device, TrainError> {
    let want_cuda = match kind {
        DeviceKind::Cpu => return Ok(Device::Cpu),
        DeviceKind::Auto => cuda_count > 0,
        DeviceKind::Cuda => {
            if cuda_count == 0 {
                return Err(TrainError::Device(
                    "--device cuda: no usable CUDA GPU found (no GPU, no NVIDIA driver, or \
                     CUDA_VISIBLE_DEVICES hides them); use --device cpu or auto"
                        .into(),
                ));
            }
            true
        }
    };
    if !want_cuda {
        return Ok(Device::Cpu);
    }
    let index = match gpus.filter(|s| !s.trim().is_empty()) {
        Some(list) => {
            let ids: Vec<&str> = list.split(',').map(str::trim).collect();
            let id = ids.get(local_rank).ok_or_else(|| {
                TrainError::Device(format!(
                    "--gpus {list}: lists {} GPU(s) but this is local rank {local_rank}",
                    ids.len()
                ))
            })?;
            id.parse::<usize>().map_err(|_| {
                TrainError::Device(format!("--gpus {list}: {id:?} is not a GPU index"))
            })?
        }
        None => gpu.unwrap_or(0) + local_rank,
    };
    if index >= cuda_count {
        return Err(TrainError::Device(format!(
            "GPU {index} requested (--gpu/--gpus, local rank {local_rank}) but only {cuda_count} \
             CUDA device(s) are visible"
        )));
    }
    Ok(Device::Cuda(index))
}

/// Number of usable CUDA devices according to libtorch (0 when CUDA is unusable, including
/// when libtorch's CUDA half is not loaded: see [`crate::cuda_runtime`]).
pub fn cuda_count() -> usize {
    if crate::cuda_runtime::load().is_loaded() && tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_without_gpu_is_cpu() {
        assert_eq!(
            select(DeviceKind::Auto, None, None, 0, 0).unwrap(),
            Device::Cpu
        );
    }

    #[test]
    fn cuda_without_gpu_is_a_clear_error() {
        let e = select(DeviceKind::Cuda, None, None, 0, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--device cuda") && e.contains("no usable CUDA GPU"),
            "{e}"
        );
    }

    #[test]
    fn ranks_map_to_gpus() {
        assert_eq!(
            select(DeviceKind::Auto, None, None, 1, 2).unwrap(),
            Device::Cuda(1)
        );
        assert_eq!(
            select(DeviceKind::Auto, Some(1), None, 1, 4).unwrap(),
            Device::Cuda(2)
        );
        assert_eq!(
            select(DeviceKind::Cuda, None, Some("0,2"), 1, 4).unwrap(),
            Device::Cuda(2)
        );
        assert!(select(DeviceKind::Cuda, Some(3), None, 0, 2)
            .unwrap_err()
            .to_string()
            .contains("GPU 3"));
        assert!(select(DeviceKind::Cuda, None, Some("0"), 1, 2).is_err());
        assert!(select(DeviceKind::Cuda, None, Some("x"), 0, 2).is_err());
        assert_eq!(
            select(DeviceKind::Cpu, None, None, 0, 8).unwrap(),
            Device::Cpu
        );
    }

    #[test]
    fn this_machine_reports_without_panicking() {
        let n = cuda_count();
        println!("CUDA devices visible to libtorch: {n}");
    }
}
