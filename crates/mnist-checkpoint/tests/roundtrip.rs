//! Round trips through our own writers and readers, and the atomic-write guarantees.

mod common;

use std::io::Write;

use common::{assert_same, lenet_tensors};
use mnist_checkpoint::{
    atomic_write, load_state_dict, load_state_dict_with_dtypes, save_safetensors, save_state_dict,
    CheckpointError, DType, NamedTensor,
};

fn odd_tensors() -> Vec<NamedTensor> {
    vec![
        NamedTensor::new(
            "z.last_first",
            vec![2, 3],
            vec![1.5, -2.0, 0.0, -0.0, 1e-30, 3.25],
        ),
        NamedTensor::new("scalar", vec![], vec![42.0]),
        NamedTensor::new("empty", vec![0, 4], vec![]),
        NamedTensor::new(
            "nan_inf",
            vec![3],
            vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY],
        ),
        NamedTensor::new("deep", vec![1, 2, 1, 2, 1], vec![1.0, 2.0, 3.0, 4.0]),
        NamedTensor::new("unicode.é", vec![1], vec![7.0]),
    ]
}

#[test]
fn torch_zip_round_trip_keeps_order_and_bits() {
    let dir = tempfile::tempdir().unwrap();
    for tensors in [lenet_tensors(1), odd_tensors()] {
        let path = dir.path().join("mnist_model.pt");
        save_state_dict(&path, &tensors).unwrap();
        assert_same(&load_state_dict(&path).unwrap(), &tensors);
        let typed = load_state_dict_with_dtypes(&path).unwrap();
        assert!(typed.iter().all(|(_, d)| *d == DType::F32));
    }
    // Only the checkpoint remains: no temp files.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("mnist_model.pt")]);
}

#[test]
fn torch_zip_layout_matches_torch_save() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mnist_model.pt");
    save_state_dict(&path, &lenet_tensors(2)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let names: Vec<String> = z.file_names().map(String::from).collect();
    assert_eq!(names[0], "mnist_model/data.pkl");
    for rec in [
        "version",
        "byteorder",
        ".format_version",
        ".storage_alignment",
        "data/9",
    ] {
        assert!(
            names.contains(&format!("mnist_model/{rec}")),
            "{rec} in {names:?}"
        );
    }
    for i in 0..z.len() {
        let f = z.by_index(i).unwrap();
        assert_eq!(
            f.compression(),
            zip::CompressionMethod::Stored,
            "{}",
            f.name()
        );
        if f.name().contains("/data/") {
            assert_eq!(f.data_start() % 64, 0, "{} not 64-byte aligned", f.name());
        }
    }
    let mut v = String::new();
    std::io::Read::read_to_string(&mut z.by_name("mnist_model/version").unwrap(), &mut v).unwrap();
    assert_eq!(v, "3\n");
}

#[test]
fn safetensors_round_trip_and_content_detection() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = lenet_tensors(3);
    let path = dir.path().join("model.safetensors");
    save_safetensors(&path, &tensors).unwrap();
    let mut got = load_state_dict(&path).unwrap();
    // The safetensors serializer stores tensors sorted by name.
    let mut want = tensors.clone();
    want.sort_by(|a, b| a.name.cmp(&b.name));
    assert_same(&got, &want);
    // Detected by content, not extension.
    let renamed = dir.path().join("model.pt");
    std::fs::rename(&path, &renamed).unwrap();
    got = load_state_dict(&renamed).unwrap();
    assert_same(&got, &want);
    // And a torch zip named .safetensors still loads as a torch zip.
    let odd = dir.path().join("odd.safetensors");
    save_state_dict(&odd, &odd_tensors()).unwrap();
    assert_same(&load_state_dict(&odd).unwrap(), &odd_tensors());
}

#[test]
fn save_rejects_inconsistent_tensors_and_keeps_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pt");
    save_state_dict(&path, &lenet_tensors(4)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let bad = vec![NamedTensor::new("w", vec![2, 3], vec![1.0; 5])];
    let e = save_state_dict(&path, &bad).unwrap_err();
    assert!(matches!(e, CheckpointError::InvalidTensor { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("m.pt") && msg.contains("'w'") && msg.contains("[2, 3]") && msg.contains('5'),
        "{msg}"
    );
    let dup = vec![
        NamedTensor::new("a", vec![1], vec![1.0]),
        NamedTensor::new("a", vec![1], vec![2.0]),
    ];
    assert!(save_state_dict(&path, &dup)
        .unwrap_err()
        .to_string()
        .contains("more than once"));
    assert!(save_safetensors(&path, &bad).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn atomic_write_failure_leaves_old_file_and_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.pt");
    std::fs::write(&path, b"old contents").unwrap();
    let err = atomic_write(&path, |f| {
        f.write_all(b"partial new contents")?;
        Err(std::io::Error::other("disk on fire"))
    })
    .unwrap_err();
    let cause = std::error::Error::source(&err).map(|c| c.to_string());
    let msg = format!("{err}: {}", cause.unwrap_or_default());
    assert!(
        msg.contains("disk on fire") && msg.contains("ckpt.pt"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"old contents");
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "temp file left behind: {entries:?}");

    // A panicking writer also leaves nothing behind.
    let r = std::panic::catch_unwind(|| {
        let _ = atomic_write(&path, |f| {
            f.write_all(b"x")?;
            panic!("writer panicked");
        });
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"old contents");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // Success replaces the file.
    atomic_write(&path, |f| f.write_all(b"new")).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn atomic_write_into_missing_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no_such_dir").join("x.pt");
    let msg = atomic_write(&path, |_| Ok(())).unwrap_err().to_string();
    assert!(msg.contains("no_such_dir"), "{msg}");
}

/// Tensors written as int64, float64 and int32 come back with that dtype and their values
/// (integers rounded); a dtype the writer does not produce, or a missing one, is refused
/// with the tensor's name and nothing is written.
#[test]
fn other_dtypes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typed.pt");
    let tensors = vec![
        NamedTensor::new("bn.running_mean", vec![2], vec![0.5, -1.25]),
        NamedTensor::new("bn.num_batches_tracked", vec![], vec![18760.0]),
        NamedTensor::new("wide", vec![2], vec![0.1, 3.0]),
        NamedTensor::new("count32", vec![1], vec![-7.4]),
    ];
    let dtypes = [DType::F32, DType::I64, DType::F64, DType::I32];
    mnist_checkpoint::save_state_dict_with_dtypes(&path, &tensors, &dtypes).unwrap();
    let back = load_state_dict_with_dtypes(&path).unwrap();
    let got: Vec<DType> = back.iter().map(|(_, d)| *d).collect();
    assert_eq!(got, dtypes);
    assert_eq!(back[0].0, tensors[0]);
    assert_eq!(back[1].0, tensors[1]);
    assert_eq!(back[2].0.data, vec![0.1f32, 3.0]);
    assert_eq!(back[3].0.data, vec![-7.0]);

    let bad = dir.path().join("bad.pt");
    for dtypes in [
        &[DType::F32, DType::F16, DType::F32, DType::F32][..],
        &[DType::F32],
    ] {
        let e = mnist_checkpoint::save_state_dict_with_dtypes(&bad, &tensors, dtypes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.pt"), "{e}");
        assert!(e.contains("bn.num_batches_tracked"), "{e}");
        assert!(!bad.exists());
    }
}
