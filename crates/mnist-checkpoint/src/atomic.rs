//! Atomic file replacement for checkpoints: the workspace's one atomic writer
//! ([`mnist_common::atomic_file`]), with its errors as [`CheckpointError::Save`].

use std::fs::File;
use std::io;
use std::path::Path;

use crate::CheckpointError;

/// Writes `path` atomically: `write` fills a new temp file in the same folder, which is then
/// fsynced and renamed over `path` (and the folder fsynced). Readers see either the old file
/// or the complete new one. If `write` fails (or panics), or any step fails, the temp file is
/// removed and an existing file at `path` is left untouched.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), CheckpointError> {
    mnist_common::atomic_file::write_atomic(path, write).map_err(|e| CheckpointError::Save {
        path: e.path,
        action: e.action,
        source: e.source,
    })
}
