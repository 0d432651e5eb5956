//! Helpers shared by the integration tests: seeded tensors, manifests, hand-built zips.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use mnist_checkpoint::NamedTensor;
use zip::write::SimpleFileOptions;

/// The LeNet state-dict keys and shapes the reference Python class expects.
pub const LENET: &[(&str, &[usize])] = &[
    ("conv1.weight", &[6, 1, 5, 5]),
    ("conv1.bias", &[6]),
    ("conv2.weight", &[16, 6, 5, 5]),
    ("conv2.bias", &[16]),
    ("fc1.weight", &[120, 256]),
    ("fc1.bias", &[120]),
    ("fc2.weight", &[84, 120]),
    ("fc2.bias", &[84]),
    ("fc3.weight", &[10, 84]),
    ("fc3.bias", &[10]),
];

/// Deterministic values in [-1, 1) from a 64-bit LCG seeded with `seed`.
pub fn seeded(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// LeNet-shaped tensors with seeded values.
pub fn lenet_tensors(seed: u64) -> Vec<NamedTensor> {
    LENET
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            NamedTensor::new(*name, shape.to_vec(), seeded(seed + i as u64, n))
        })
        .collect()
}

/// Writes a manifest (see scripts/torch_checkpoint_check.py): name, shape, f32 bits.
pub fn write_manifest(path: &Path, tensors: &[NamedTensor]) {
    let mut s = String::new();
    for t in tensors {
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        let vals: Vec<String> = t.data.iter().map(|v| v.to_bits().to_string()).collect();
        s += &format!("{}\t{}\t{}\n", t.name, shape.join(","), vals.join(" "));
    }
    std::fs::write(path, s).unwrap();
}

/// Reads a manifest written by the Python script.
pub fn read_manifest(path: &Path) -> Vec<NamedTensor> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| {
            let mut f = line.split('\t');
            let name = f.next().unwrap();
            let shape = f.next().unwrap();
            let vals = f.next().unwrap();
            let shape = shape
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|d| d.parse().unwrap())
                .collect();
            let data = vals
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(|b| f32::from_bits(b.parse().unwrap()))
                .collect();
            NamedTensor::new(name, shape, data)
        })
        .collect()
}

/// Asserts two tensor lists are equal bit for bit (NaN-safe), in order.
pub fn assert_same(got: &[NamedTensor], want: &[NamedTensor]) {
    let names = |v: &[NamedTensor]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(want));
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.shape, w.shape, "{}", w.name);
        let gb: Vec<u32> = g.data.iter().map(|v| v.to_bits()).collect();
        let wb: Vec<u32> = w.data.iter().map(|v| v.to_bits()).collect();
        assert_eq!(gb, wb, "values of {}", w.name);
    }
}

/// Writes a zip holding `records` (name, bytes), STORED, like torch.save.
pub fn write_zip(path: &Path, records: &[(&str, &[u8])]) {
    let file = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(file);
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in records {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

/// The `MNIST_PYTHON` interpreter, or `None` after recording a visible skip
/// ([`mnist_testkit::python`]).
pub fn python(test: &str) -> Option<String> {
    mnist_testkit::python(test).map(|p| p.display().to_string())
}

/// Path of the Python helper script.
pub fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/torch_checkpoint_check.py")
}
