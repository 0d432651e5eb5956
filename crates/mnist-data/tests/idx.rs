//! IDX reading, validation, naming styles and split loading, on small generated files.

use mnist_data::*;
use std::fs;
use std::path::Path;

fn images(count: usize, rows: usize, cols: usize) -> IdxImages {
    let pixels = (0..count * rows * cols)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    IdxImages {
        count,
        rows,
        cols,
        pixels,
    }
}

fn labels(count: usize) -> Vec<u8> {
    (0..count).map(|i| (i * 3 % 10) as u8).collect()
}

fn err_text<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn roundtrip_raw_and_gz_detected_by_content_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = images(5, 3, 4);
    let lab = labels(5);
    for gzip in [false, true] {
        // Deliberately misleading names: the gzip one has no .gz, the raw one has .gz.
        let name = if gzip { "imgs" } else { "imgs.gz" };
        let p = dir.path().join(name);
        write_images(&p, &img, gzip).unwrap();
        assert_eq!(fs::read(&p).unwrap().starts_with(&[0x1f, 0x8b]), gzip);
        assert_eq!(read_images(&p).unwrap(), img);
        let p = dir.path().join(format!("{name}.labels"));
        write_labels(&p, &lab, gzip).unwrap();
        assert_eq!(read_labels(&p).unwrap(), lab);
    }
    assert_eq!(img.image(4).unwrap().len(), 12);
    assert!(img.image(5).is_none());
}

#[test]
fn wrong_magic_quotes_found_and_expected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("train-labels-idx1-ubyte");
    write_labels(&p, &labels(4), false).unwrap();
    let msg = err_text(read_images(&p));
    for part in [
        "train-labels-idx1-ubyte",
        "0x00000801",
        "0x00000803",
        "labels file",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    let p = dir.path().join("junk");
    fs::write(&p, b"\x12\x34\x56\x78\0\0\0\0").unwrap();
    let msg = err_text(read_labels(&p));
    assert!(
        msg.contains("0x12345678") && msg.contains("0x00000801") && msg.contains("junk"),
        "{msg}"
    );
}

#[test]
fn truncated_and_trailing_quote_byte_counts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("imgs-idx3");
    write_images(&p, &images(5, 3, 4), false).unwrap();
    let full = fs::read(&p).unwrap();
    assert_eq!(full.len(), 16 + 60);

    fs::write(&p, &full[..70]).unwrap();
    let msg = err_text(read_images(&p));
    for part in ["imgs-idx3", "truncated", "76", "70", "5 x 3 x 4"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }

    let mut longer = full.clone();
    longer.extend_from_slice(&[1, 2, 3]);
    fs::write(&p, &longer).unwrap();
    let msg = err_text(read_images(&p));
    for part in ["imgs-idx3", "trailing", "76", "79"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }

    fs::write(&p, &full[..10]).unwrap();
    let msg = err_text(read_images(&p));
    assert!(
        msg.contains("truncated") && msg.contains("16") && msg.contains("10"),
        "{msg}"
    );

    let lp = dir.path().join("labs");
    write_labels(&lp, &labels(6), true).unwrap();
    let raw = mnist_data::read_maybe_gz(&lp).unwrap();
    fs::write(&lp, &raw[..raw.len() - 2]).unwrap();
    let msg = err_text(read_labels(&lp));
    for part in ["labs", "truncated", "14 bytes", "12 bytes"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

#[test]
fn zero_rows_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flat");
    let mut bytes = IMAGES_MAGIC.to_be_bytes().to_vec();
    for v in [2u32, 0, 28] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    fs::write(&p, &bytes).unwrap();
    let msg = err_text(read_images(&p));
    assert!(msg.contains("flat") && msg.contains("0 x 28"), "{msg}");
}

#[test]
fn label_out_of_range_names_index_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad-labels.gz");
    write_labels(&p, &[0, 9, 4, 10, 2], true).unwrap();
    let msg = err_text(read_labels(&p));
    for part in ["bad-labels.gz", "index 3", "is 10"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

#[test]
fn corrupt_gzip_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t10k-images-idx3-ubyte.gz");
    write_images(&p, &images(20, 8, 8), true).unwrap();
    let good = fs::read(&p).unwrap();
    // Cut short.
    fs::write(&p, &good[..good.len() / 2]).unwrap();
    let msg = err_text(read_images(&p));
    assert!(
        msg.contains("t10k-images-idx3-ubyte.gz") && msg.contains("gzip"),
        "{msg}"
    );
    // A flipped byte in the compressed stream (caught by inflate or by the CRC).
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    fs::write(&p, &bad).unwrap();
    let msg = err_text(read_images(&p));
    assert!(
        msg.contains("t10k-images-idx3-ubyte.gz") && msg.contains("gzip"),
        "{msg}"
    );
}

#[test]
fn missing_file_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope-idx3-ubyte");
    let msg = err_text(read_images(&p));
    assert!(
        msg.contains("nope-idx3-ubyte") && msg.contains("not found"),
        "{msg}"
    );
}

#[test]
fn locate_lists_the_four_names_and_suggests_flags() {
    let dir = tempfile::tempdir().unwrap();
    let msg = err_text(locate(dir.path(), Split::Test));
    for part in [
        "t10k-images-idx3-ubyte,",
        "t10k-images.idx3-ubyte,",
        "t10k-images-idx3-ubyte.gz",
        "t10k-images.idx3-ubyte.gz",
        "--download",
        "--data DIR",
        "test images",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    // Images present, labels missing: the error is about the labels.
    write_images(
        &dir.path().join("t10k-images-idx3-ubyte"),
        &images(2, 2, 2),
        false,
    )
    .unwrap();
    let msg = err_text(locate(dir.path(), Split::Test));
    assert!(
        msg.contains("test labels") && msg.contains("t10k-labels.idx1-ubyte.gz"),
        "{msg}"
    );
}

fn rename_all(dir: &Path, from: &str, to: &str) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        fs::rename(&path, dir.join(name.replacen(from, to, 1))).unwrap();
    }
}

#[test]
fn both_naming_styles_raw_and_gz_load() {
    let data = MnistSplit {
        images: images(7, 5, 6),
        labels: labels(7),
    };
    for gzip in [false, true] {
        for dotted in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write_split(dir.path(), Split::Train, &data, gzip).unwrap();
            if dotted {
                rename_all(dir.path(), "-idx", ".idx");
            }
            let (ip, lp) = locate(dir.path(), Split::Train).unwrap();
            let iname = ip.file_name().unwrap().to_str().unwrap();
            assert_eq!(iname.ends_with(".gz"), gzip);
            assert_eq!(iname.contains(".idx3"), dotted);
            assert!(lp.to_str().unwrap().contains("train-labels"));
            assert_eq!(load_split(dir.path(), Split::Train).unwrap(), data);
            assert!(locate(dir.path(), Split::Test).is_err());
        }
    }
}

#[test]
fn raw_is_preferred_over_gz() {
    let dir = tempfile::tempdir().unwrap();
    let data = MnistSplit {
        images: images(3, 2, 2),
        labels: labels(3),
    };
    write_split(dir.path(), Split::Test, &data, true).unwrap();
    write_split(dir.path(), Split::Test, &data, false).unwrap();
    let (ip, lp) = locate(dir.path(), Split::Test).unwrap();
    assert_eq!(ip, dir.path().join("t10k-images-idx3-ubyte"));
    assert_eq!(lp, dir.path().join("t10k-labels-idx1-ubyte"));
}

#[test]
fn count_mismatch_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    write_images(
        &dir.path().join("train-images-idx3-ubyte.gz"),
        &images(5, 28, 28),
        true,
    )
    .unwrap();
    write_labels(
        &dir.path().join("train-labels.idx1-ubyte"),
        &labels(4),
        false,
    )
    .unwrap();
    let msg = err_text(load_split(dir.path(), Split::Train));
    for part in [
        "train-images-idx3-ubyte.gz",
        "5 images",
        "train-labels.idx1-ubyte",
        "4 labels",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

#[test]
fn accepted_names_order() {
    assert_eq!(
        accepted_names("train-labels-idx1-ubyte"),
        [
            "train-labels-idx1-ubyte",
            "train-labels.idx1-ubyte",
            "train-labels-idx1-ubyte.gz",
            "train-labels.idx1-ubyte.gz"
        ]
    );
}
