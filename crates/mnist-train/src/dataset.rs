//! The data set as tensors: images normalised once (mean 0.1307, std 0.3081) into one
//! `[N, 1, 28, 28]` tensor on the training device; batches are gathered by index.

use crate::TrainError;
use mnist_data::MnistSplit;
use tch::{Device, Kind, Tensor};

/// MNIST mean used by the reference's `transforms.Normalize`.
pub const MEAN: f64 = 0.1307;
/// MNIST standard deviation used by the reference.
pub const STD: f64 = 0.3081;

/// One split held on a device.
#[derive(Debug)]
pub struct TensorDataset {
    /// Normalised images `[N, 1, 28, 28]`, f32.
    pub images: Tensor,
    /// Labels `[N]`, i64.
    pub labels: Tensor,
    /// N.
    pub len: usize,
}

impl TensorDataset {
    /// Normalise `split` and move it to `device`.
    pub fn new(split: &MnistSplit, device: Device) -> Result<TensorDataset, TrainError> {
        let img = &split.images;
        if img.rows != 28 || img.cols != 28 {
            return Err(TrainError::Shape(format!(
                "images are {}x{} pixels; LeNet and MLP need 28x28",
                img.rows, img.cols
            )));
        }
        let n = img.count as i64;
        let images = Tensor::from_slice(&img.pixels)
            .to_device(device)
            .to_kind(Kind::Float)
            .view([n, 1, 28, 28]);
        let images = (images / 255.0 - MEAN) / STD;
        let labels = Tensor::from_slice(&split.labels)
            .to_device(device)
            .to_kind(Kind::Int64);
        Ok(TensorDataset {
            images,
            labels,
            len: img.count,
        })
    }

    /// Images and labels at `index` (an i64 tensor on the same device).
    pub fn gather(&self, index: &Tensor) -> (Tensor, Tensor) {
        (
            self.images.index_select(0, index),
            self.labels.index_select(0, index),
        )
    }
}
