//! The real MNIST files (`MNIST_DATA_DIR`, the repository's own `data/mnist`, or the shared
//! copy next to the repository): both splits load with the expected sizes, their decompressed content matches
//! the embedded SHA-256 table, and `download` fetches them from a loopback mirror.

mod common;

use mnist_data::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;

/// `MNIST_DATA_DIR`, the repository's own `data/mnist`, or the shared copy beside the
/// checkout ([`mnist_testkit::mnist_dir`] records a visible skip when none has the files).
fn real_dir(test: &str) -> Option<PathBuf> {
    mnist_testkit::mnist_dir(test, |d| {
        locate(d, Split::Train).is_ok() && locate(d, Split::Test).is_ok()
    })
}

#[test]
fn real_splits_load_and_match_checksums() {
    let Some(dir) = real_dir("real_splits_load_and_match_checksums") else {
        return;
    };
    for (split, n) in [(Split::Train, 60_000), (Split::Test, 10_000)] {
        let s = load_split(&dir, split).unwrap();
        assert_eq!(
            (s.images.count, s.images.rows, s.images.cols, s.labels.len()),
            (n, 28, 28, n)
        );
        let mut counts = [0usize; 10];
        s.labels.iter().for_each(|&l| counts[usize::from(l)] += 1);
        assert!(counts.iter().all(|&c| c > n / 20), "{split:?}: {counts:?}");
    }
    for (name, sum) in MNIST_SHA256 {
        let path = find_file(&dir, name).unwrap();
        let actual = hex::encode(Sha256::digest(read_maybe_gz(&path).unwrap()));
        assert_eq!(actual, sum, "{}", path.display());
    }
}

#[test]
fn download_real_files_from_loopback_mirror() {
    let Some(dir) = real_dir("download_real_files_from_loopback_mirror") else {
        return;
    };
    let mut files = HashMap::new();
    for name in STANDARD_NAMES {
        let path = find_file(&dir, name).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.starts_with(&[0x1f, 0x8b]),
            "{} is not gzipped",
            path.display()
        );
        files.insert(format!("/exdb/mnist/{name}.gz"), bytes);
    }
    let server = common::serve(files);
    let target = tempfile::tempdir().unwrap();
    let mirrors = vec![format!("{}/exdb/mnist/", server.origin)];
    download(target.path(), &mirrors, &mut |l| println!("{l}")).unwrap();
    assert_eq!(
        load_split(target.path(), Split::Test).unwrap().images.count,
        10_000
    );
    assert_eq!(server.hits.lock().unwrap().len(), 4);
}
