//! Malformed inputs must give a clear error naming the file, never a panic.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::{seeded, write_zip};
use mnist_checkpoint::{load_state_dict, save_state_dict, CheckpointError, NamedTensor};

/// A small valid checkpoint: two tensors, so its pickle is short enough to fuzz.
fn small() -> Vec<NamedTensor> {
    vec![
        NamedTensor::new("w", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        NamedTensor::new("b", vec![2], vec![-1.0, 0.5]),
    ]
}

/// All records of a zip file, in order.
fn records(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            (f.name().to_string(), buf)
        })
        .collect()
}

/// Writes `recs` as a zip at `dir/name` and returns the path.
fn zip_of(dir: &Path, name: &str, recs: &[(String, Vec<u8>)]) -> PathBuf {
    let path = dir.join(name);
    let borrowed: Vec<(&str, &[u8])> = recs
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    write_zip(&path, &borrowed);
    path
}

/// Loads `path`, expecting an error whose message names the file; returns the message.
fn load_err(path: &Path) -> String {
    let e = load_state_dict(path).expect_err("malformed input must not load");
    let msg = e.to_string();
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(msg.contains(&*name), "error does not name {name}: {msg}");
    msg
}

fn valid(dir: &Path) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let path = dir.join("good.pt");
    save_state_dict(&path, &small()).unwrap();
    let recs = records(&path);
    (path, recs)
}

#[test]
fn text_random_and_empty_files_are_not_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not a checkpoint\n").unwrap();
    assert_eq!(
        load_err(&text),
        format!(
            "{} is not a PyTorch checkpoint (zip) or safetensors file",
            text.display()
        )
    );
    let empty = dir.path().join("empty.pt");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        load_state_dict(&empty),
        Err(CheckpointError::NotACheckpoint { .. })
    ));
    for seed in 0..20 {
        let path = dir.path().join(format!("random{seed}.pt"));
        let bytes: Vec<u8> = seeded(seed, 4096)
            .iter()
            .map(|v| (v.to_bits() >> 7) as u8)
            .collect();
        std::fs::write(&path, bytes).unwrap();
        load_err(&path);
    }
    let missing = dir.path().join("missing.pt");
    assert!(load_err(&missing).contains("reading"));
}

#[test]
fn truncated_checkpoints_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = valid(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.pt");
    for len in (0..bytes.len())
        .step_by(13)
        .chain([bytes.len() - 1, bytes.len() - 22])
    {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        load_err(&cut);
    }
}

#[test]
fn zip_without_data_pkl_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recs) = valid(dir.path());
    let without: Vec<_> = recs
        .into_iter()
        .filter(|(n, _)| !n.ends_with("data.pkl"))
        .collect();
    let path = zip_of(dir.path(), "nopkl.pt", &without);
    assert!(load_err(&path).contains("data.pkl"));
    let empty = zip_of(dir.path(), "emptyzip.pt", &[]);
    assert!(load_err(&empty).contains("data.pkl"));
}

#[test]
fn pickle_that_is_not_a_dict_of_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[u8], &str)] = &[
        (b"\x80\x02K\x05.", "int 5, not a dict of tensors"),
        (
            b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u.",
            "entry 'a' is int 1, not a tensor",
        ),
        (b"\x80\x02}(K\x01K\x02u.", "key is int 1, not a str"),
        (b"\x80\x02K\x05", "without STOP"),
        (b"\x80\x02\xff.", "unsupported pickle opcode 0xff"),
        (b"\x80\x02h\x07.", "memo key 7 not set"),
        (b"\x80\x02u.", "no MARK"),
        (b"\x80\x02X\xff\xff\xff\xff.", "truncated"),
        (
            b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.",
            "object os.system",
        ),
    ];
    for (i, (pickle, want)) in cases.iter().enumerate() {
        let path = zip_of(
            dir.path(),
            &format!("p{i}.pt"),
            &[("a/data.pkl".into(), pickle.to_vec())],
        );
        let msg = load_err(&path);
        assert!(msg.contains(want), "case {i}: want {want:?} in {msg}");
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let mut pickle = b"\x80\x02)".to_vec();
    pickle.extend(std::iter::repeat_n(0x85u8, 200_000)); // TUPLE1, nested 200k deep
    pickle.push(b'.');
    let path = zip_of(dir.path(), "deep.pt", &[("a/data.pkl".into(), pickle)]);
    assert!(load_err(&path).contains("nested deeper"));
}

#[test]
fn missing_or_short_storage_records() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recs) = valid(dir.path());
    let without: Vec<_> = recs
        .iter()
        .filter(|(n, _)| !n.ends_with("data/1"))
        .cloned()
        .collect();
    let msg = load_err(&zip_of(dir.path(), "nostorage.pt", &without));
    assert!(
        msg.contains("tensor 'b'") && msg.contains("data/1") && msg.contains("missing"),
        "{msg}"
    );

    let short: Vec<_> = recs
        .iter()
        .map(|(n, d)| {
            (
                n.clone(),
                if n.ends_with("data/0") {
                    d[..20].to_vec()
                } else {
                    d.clone()
                },
            )
        })
        .collect();
    let msg = load_err(&zip_of(dir.path(), "short.pt", &short));
    assert!(
        msg.contains("tensor 'w'") && msg.contains("holds 20 bytes"),
        "{msg}"
    );

    let bad_order: Vec<_> = recs
        .iter()
        .map(|(n, d)| {
            (
                n.clone(),
                if n.ends_with("byteorder") {
                    b"middle".to_vec()
                } else {
                    d.clone()
                },
            )
        })
        .collect();
    assert!(load_err(&zip_of(dir.path(), "bo.pt", &bad_order)).contains("middle"));
}

#[test]
fn big_endian_storages_are_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recs) = valid(dir.path());
    let big: Vec<_> = recs
        .iter()
        .map(|(n, d)| {
            let d = if n.ends_with("byteorder") {
                b"big".to_vec()
            } else if n.contains("/data/") {
                d.chunks(4).flat_map(|c| c.iter().rev().copied()).collect()
            } else {
                d.clone()
            };
            (n.clone(), d)
        })
        .collect();
    let path = zip_of(dir.path(), "big.pt", &big);
    assert_eq!(load_state_dict(&path).unwrap(), small());
}

#[test]
fn fuzzed_pickles_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recs) = valid(dir.path());
    let pkl_idx = recs
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .unwrap();
    let pickle = recs[pkl_idx].1.clone();
    let path = dir.path().join("fuzz.pt");
    let mut loaded_ok = 0;
    for (i, &orig) in pickle.iter().enumerate() {
        for v in [0x00u8, 0xff, b'(', b'h', orig ^ 0x21] {
            let mut recs = recs.clone();
            recs[pkl_idx].1[i] = v;
            let borrowed: Vec<(&str, &[u8])> = recs
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            write_zip(&path, &borrowed);
            match load_state_dict(&path) {
                Ok(_) => loaded_ok += 1,
                Err(e) => assert!(e.to_string().contains("fuzz.pt"), "{e}"),
            }
        }
        // Truncations of the pickle, too.
        let mut recs = recs.clone();
        recs[pkl_idx].1.truncate(i);
        let borrowed: Vec<(&str, &[u8])> = recs
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        write_zip(&path, &borrowed);
        assert!(load_state_dict(&path).is_err());
    }
    // Some mutations (e.g. inside a name) are harmless; most are not.
    assert!(loaded_ok < pickle.len() * 5);
}

#[test]
fn broken_safetensors_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 8]); // only 8 of 16 data bytes
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        load_state_dict(&path),
        Err(CheckpointError::Safetensors { .. })
    ));
    load_err(&path);
}
