//! Downloading the MNIST files from mirrors, each checked against a SHA-256 of its
//! decompressed content before it appears under its final name.
//!
//! For each missing file, each mirror is tried in turn: the body is streamed into a hidden
//! temporary file in the target folder, hashed (after decompression), and renamed into place
//! only when the hash matches. A failed attempt removes its temporary file, so an interrupted
//! or corrupted download never leaves anything behind. The temporary file and the rename are
//! the workspace's one atomic writer, [`mnist_common::atomic_file`] (fsync of file and folder).

use crate::error::DataError;
use crate::mnist::find_file;
use flate2::read::MultiGzDecoder;
use mnist_common::atomic_file::AtomicFile;
use sha2::{Digest, Sha256};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// SHA-256 of the decompressed content of the four MNIST files, by standard name.
pub const MNIST_SHA256: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
];

/// Largest body accepted from a mirror (the biggest MNIST file is under 10 MB gzipped).
const MAX_BODY: u64 = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Downloads whichever of the four MNIST files are missing from `dir` (created if needed),
/// trying `mirrors` (base URLs) in order; `log` receives one line per step.
pub fn download(
    dir: &Path,
    mirrors: &[String],
    log: &mut dyn FnMut(&str),
) -> Result<(), DataError> {
    download_with_sums(dir, mirrors, &MNIST_SHA256, log)
}

/// Like [`download`] for any files: `sums` pairs each standard file name (fetched as
/// `<mirror><name>.gz`) with the hex SHA-256 of its decompressed content.
///
/// A file already present under any accepted name (see [`crate::accepted_names`]) is skipped
/// without being re-hashed.
pub fn download_with_sums(
    dir: &Path,
    mirrors: &[String],
    sums: &[(&str, &str)],
    log: &mut dyn FnMut(&str),
) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        op: "create folder",
        source,
    })?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .build();
    for &(name, sum) in sums {
        if let Some(path) = find_file(dir, name) {
            log(&format!(
                "{} already present, not downloading",
                path.display()
            ));
            continue;
        }
        let mut failures = Vec::new();
        let mut saved = None;
        for base in mirrors {
            let url = mirror_url(base, name);
            log(&format!("downloading {url}"));
            match fetch_verified(&agent, &url, dir, name, sum) {
                Ok(path) => {
                    saved = Some(path);
                    break;
                }
                Err(reason) => {
                    let line = format!("{url}: {reason}");
                    log(&line);
                    failures.push(line);
                }
            }
        }
        match saved {
            Some(path) => log(&format!(
                "saved {} (SHA-256 {sum} verified)",
                path.display()
            )),
            None => {
                return Err(DataError::Download {
                    file: name.to_string(),
                    dir: dir.to_path_buf(),
                    failures,
                });
            }
        }
    }
    Ok(())
}

/// `<base>/<name>.gz`, adding the slash when `base` lacks it.
pub fn mirror_url(base: &str, name: &str) -> String {
    let sep = if base.ends_with('/') { "" } else { "/" };
    format!("{base}{sep}{name}.gz")
}

/// Fetches one URL into `dir`, verifies it, and returns its final path; the error is the
/// reason this mirror failed, for the caller to prefix with the URL.
fn fetch_verified(
    agent: &ureq::Agent,
    url: &str,
    dir: &Path,
    name: &str,
    expected: &str,
) -> Result<PathBuf, String> {
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, resp) => format!("HTTP {code} {}", resp.status_text()),
        ureq::Error::Transport(t) => format!("request failed: {t}"),
    })?;
    let mut temp = AtomicFile::new_in(dir, name).map_err(|e| {
        format!(
            "cannot create a temporary file in {}: {}",
            dir.display(),
            e.source
        )
    })?;
    let temp_path = temp.path().to_path_buf();
    let file = temp.file();
    let written = std::io::copy(&mut response.into_reader().take(MAX_BODY + 1), file)
        .map_err(|e| format!("download interrupted: {e}"))?;
    if written > MAX_BODY {
        return Err(format!("body larger than {MAX_BODY} bytes, refused"));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot re-read {}: {e}", temp_path.display()))?;
    let mut reader = BufReader::new(file);
    let mut head = [0u8; 2];
    let n = reader
        .read(&mut head)
        .map_err(|e| format!("cannot re-read {}: {e}", temp_path.display()))?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot re-read {}: {e}", temp_path.display()))?;
    // A server may have sent it with Content-Encoding: gzip, which ureq already undid; then the
    // body is the raw IDX file and is saved without `.gz`.
    let gzipped = n == 2 && head == [0x1f, 0x8b];
    let mut hasher = Sha256::new();
    if gzipped {
        std::io::copy(&mut MultiGzDecoder::new(reader), &mut hasher)
            .map_err(|e| format!("downloaded data is not valid gzip ({written} bytes): {e}"))?;
    } else {
        std::io::copy(&mut reader, &mut hasher)
            .map_err(|e| format!("cannot re-read {}: {e}", temp_path.display()))?;
    }
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(format!(
            "SHA-256 mismatch: expected {expected}, got {actual} (of the decompressed content); file rejected"
        ));
    }
    let target = dir.join(if gzipped {
        format!("{name}.gz")
    } else {
        name.to_string()
    });
    temp.commit(&target)
        .map_err(|e| mnist_common::error_line(&e))?;
    Ok(target)
}
