//! Atomic file replacement: write a temp file in the destination folder, fsync, rename.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::CheckpointError;

/// Distinguishes temp files of concurrent writers in one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temp file when dropped, unless it was renamed into place.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `path` atomically: `write` fills a new temp file in the same folder, which is then
/// fsynced and renamed over `path` (and the folder fsynced). Readers see either the old file
/// or the complete new one. If `write` fails (or panics), or any step fails, the temp file is
/// removed and an existing file at `path` is left untouched.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), CheckpointError> {
    let io_err = |path: &Path, action: &'static str| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Save {
            path,
            action,
            source,
        }
    };
    let file_name = path.file_name().ok_or_else(|| CheckpointError::Save {
        path: path.to_path_buf(),
        action: "choosing a temp file for",
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tmp_path, mut file) = create_temp(&dir, &file_name.to_string_lossy())
        .map_err(io_err(&dir.join(file_name), "creating a temp file for"))?;
    let mut guard = TempGuard {
        path: tmp_path,
        armed: true,
    };
    write(&mut file).map_err(io_err(&guard.path, "writing"))?;
    file.sync_all().map_err(io_err(&guard.path, "syncing"))?;
    drop(file);
    fs::rename(&guard.path, path).map_err(io_err(path, "renaming the temp file onto"))?;
    guard.armed = false;
    // Make the rename itself durable; not all platforms allow syncing a directory.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates a fresh, exclusive temp file `.<name>.tmp-<pid>-<n>` in `dir`.
fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut last = io::Error::other("no temp file name tried");
    for _ in 0..1000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{pid}-{n}"));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}
