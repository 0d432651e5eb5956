//! Times save/load of a state dict of N float32 values (default: the LeNet shapes, 44k
//! values): `cargo run --release -p mnist-checkpoint --example ckpt_bench -- [values] [dir]`.
//! Keeps the written files in `dir` (default: a temp folder) for inspection.

use std::path::PathBuf;
use std::time::Instant;

use mnist_checkpoint::{load_state_dict, save_safetensors, save_state_dict, NamedTensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let values: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ckpt_bench"));
    std::fs::create_dir_all(&dir)?;
    let shapes: Vec<(String, Vec<usize>)> = if values == 0 {
        [
            ("conv1.weight", vec![6, 1, 5, 5]),
            ("conv1.bias", vec![6]),
            ("conv2.weight", vec![16, 6, 5, 5]),
            ("conv2.bias", vec![16]),
            ("fc1.weight", vec![120, 256]),
            ("fc1.bias", vec![120]),
            ("fc2.weight", vec![84, 120]),
            ("fc2.bias", vec![84]),
            ("fc3.weight", vec![10, 84]),
            ("fc3.bias", vec![10]),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect()
    } else {
        vec![("big.weight".to_string(), vec![values])]
    };
    let tensors: Vec<NamedTensor> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            NamedTensor::new(name, shape, data)
        })
        .collect();
    let total: usize = tensors.iter().map(|t| t.data.len()).sum();
    for (label, path, save) in [
        (
            "torch zip  ",
            dir.join("mnist_model.pt"),
            save_state_dict as fn(&std::path::Path, &[NamedTensor]) -> _,
        ),
        (
            "safetensors",
            dir.join("mnist_model.safetensors"),
            save_safetensors,
        ),
    ] {
        let t0 = Instant::now();
        save(&path, &tensors)?;
        let saved = t0.elapsed();
        let t1 = Instant::now();
        let back = load_state_dict(&path)?;
        let loaded = t1.elapsed();
        assert_eq!(back.iter().map(|t| t.data.len()).sum::<usize>(), total);
        println!(
            "{label}: {total} values, {} bytes, save {:.2} ms, load {:.2} ms ({})",
            std::fs::metadata(&path)?.len(),
            saved.as_secs_f64() * 1e3,
            loaded.as_secs_f64() * 1e3,
            path.display()
        );
    }
    Ok(())
}
