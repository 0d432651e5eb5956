//! Downloads from a loopback HTTP server: success, hash mismatch, corrupt gzip, a 404 mirror
//! followed by a good one, and every mirror failing; nothing is left behind on failure.

mod common;

use common::{dead_origin, serve};
use mnist_data::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::path::Path;

struct Fixture {
    train: MnistSplit,
    test: MnistSplit,
    /// URL path "/mnist/<name>.gz" → gzip bytes.
    files: HashMap<String, Vec<u8>>,
    /// (name, sha256 of decompressed) for the four files.
    sums: Vec<(String, String)>,
}

fn fixture() -> Fixture {
    let train = synthetic(40, 1);
    let test = synthetic(15, 2);
    let gz = tempfile::tempdir().unwrap();
    let raw = tempfile::tempdir().unwrap();
    for (split, data) in [(Split::Train, &train), (Split::Test, &test)] {
        write_split(gz.path(), split, data, true).unwrap();
        write_split(raw.path(), split, data, false).unwrap();
    }
    let mut files = HashMap::new();
    let mut sums = Vec::new();
    for name in STANDARD_NAMES {
        files.insert(
            format!("/mnist/{name}.gz"),
            fs::read(gz.path().join(format!("{name}.gz"))).unwrap(),
        );
        let digest = Sha256::digest(fs::read(raw.path().join(name)).unwrap());
        sums.push((name.to_string(), hex::encode(digest)));
    }
    Fixture {
        train,
        test,
        files,
        sums,
    }
}

fn sums_ref(f: &Fixture) -> Vec<(&str, &str)> {
    f.sums
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn good_mirror_downloads_and_loads() {
    let f = fixture();
    let server = serve(f.files.clone());
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("new/sub");
    let mut lines = Vec::new();
    let mirrors = vec![format!("{}/mnist/", server.origin)];
    download_with_sums(&target, &mirrors, &sums_ref(&f), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    let mut expected: Vec<String> = STANDARD_NAMES.iter().map(|n| format!("{n}.gz")).collect();
    expected.sort();
    assert_eq!(entries(&target), expected);
    assert_eq!(load_split(&target, Split::Train).unwrap(), f.train);
    assert_eq!(load_split(&target, Split::Test).unwrap(), f.test);
    assert!(lines.iter().any(|l| l.contains("verified")), "{lines:?}");
    // A second call finds everything present and requests nothing.
    let before = server.hits.lock().unwrap().len();
    download_with_sums(&target, &mirrors, &sums_ref(&f), &mut |_| {}).unwrap();
    assert_eq!(server.hits.lock().unwrap().len(), before);
    assert_eq!(before, 4);
}

#[test]
fn hash_mismatch_is_rejected_and_leaves_nothing() {
    let f = fixture();
    let mut files = f.files.clone();
    // Valid gzip, wrong content: the train images of another seed.
    let other = tempfile::tempdir().unwrap();
    write_split(other.path(), Split::Train, &synthetic(40, 99), true).unwrap();
    files.insert(
        "/mnist/train-images-idx3-ubyte.gz".into(),
        fs::read(other.path().join("train-images-idx3-ubyte.gz")).unwrap(),
    );
    let server = serve(files);
    let dir = tempfile::tempdir().unwrap();
    let mirrors = vec![format!("{}/mnist/", server.origin)];
    let err = download_with_sums(dir.path(), &mirrors, &sums_ref(&f), &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    let url = format!("{}/mnist/train-images-idx3-ubyte.gz", server.origin);
    for part in [
        url.as_str(),
        "SHA-256 mismatch",
        f.sums[0].1.as_str(),
        "train-images-idx3-ubyte",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(
        entries(dir.path()).is_empty(),
        "left behind: {:?}",
        entries(dir.path())
    );
}

#[test]
fn corrupt_gzip_is_rejected_and_leaves_nothing() {
    let f = fixture();
    let mut files = f.files.clone();
    let body = files.get_mut("/mnist/train-images-idx3-ubyte.gz").unwrap();
    let mid = body.len() / 2;
    body[mid] ^= 0xff;
    body.truncate(body.len() - 10);
    let server = serve(files);
    let dir = tempfile::tempdir().unwrap();
    let mirrors = vec![format!("{}/mnist/", server.origin)];
    let msg = download_with_sums(dir.path(), &mirrors, &sums_ref(&f), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("not valid gzip") && msg.contains("train-images-idx3-ubyte.gz"),
        "{msg}"
    );
    assert!(
        entries(dir.path()).is_empty(),
        "left behind: {:?}",
        entries(dir.path())
    );
}

#[test]
fn falls_back_to_the_next_mirror() {
    let f = fixture();
    let good = serve(f.files.clone());
    let empty = serve(HashMap::new());
    let dir = tempfile::tempdir().unwrap();
    // Second base URL without its trailing slash.
    let mirrors = vec![
        format!("{}/mnist/", empty.origin),
        format!("{}/mnist", good.origin),
    ];
    let mut lines = Vec::new();
    download_with_sums(dir.path(), &mirrors, &sums_ref(&f), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(load_split(dir.path(), Split::Test).unwrap(), f.test);
    assert_eq!(empty.hits.lock().unwrap().len(), 4);
    assert_eq!(good.hits.lock().unwrap().len(), 4);
    assert!(lines.iter().any(|l| l.contains("HTTP 404")), "{lines:?}");
    assert_eq!(entries(dir.path()).len(), 4);
}

#[test]
fn all_mirrors_failing_lists_each() {
    let f = fixture();
    let empty = serve(HashMap::new());
    let dead = dead_origin();
    let dir = tempfile::tempdir().unwrap();
    let mirrors = vec![format!("{}/a/", empty.origin), format!("{dead}/b/")];
    let msg = download_with_sums(dir.path(), &mirrors, &sums_ref(&f), &mut |_| {})
        .unwrap_err()
        .to_string();
    for part in [
        format!("{}/a/train-images-idx3-ubyte.gz: HTTP 404", empty.origin),
        format!("{dead}/b/train-images-idx3-ubyte.gz: request failed"),
        dir.path().display().to_string(),
    ] {
        assert!(msg.contains(&part), "{part:?} missing from: {msg}");
    }
    assert!(entries(dir.path()).is_empty());
    let msg = download_with_sums(dir.path(), &[], &sums_ref(&f), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no mirrors given"), "{msg}");
}

#[test]
fn mirror_url_adds_missing_slash() {
    assert_eq!(mirror_url("http://h/x/", "f"), "http://h/x/f.gz");
    assert_eq!(mirror_url("http://h/x", "f"), "http://h/x/f.gz");
}
