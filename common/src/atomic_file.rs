//! Replacing a file atomically, the one way every writer in the workspace does it: a temporary
//! file in the target's own folder ([`tempfile::NamedTempFile`], so it is removed if anything
//! fails or panics), fsynced, renamed over the target ([`NamedTempFile::persist`]), and the
//! folder fsynced so the rename survives a crash. Readers see the old file or the whole new one,
//! never a prefix.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// A step of an atomic write that failed, with the file it was working on.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}", path.display())]
pub struct AtomicWriteError {
    /// What was being done: "creating a temporary file for", "writing", "syncing",
    /// "renaming the temporary file onto", "syncing the folder of".
    pub action: &'static str,
    /// The file involved (the target, or the temporary file while it is written).
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

/// A new file in a target folder, invisible under its final name until [`AtomicFile::commit`];
/// dropped uncommitted (an error, a panic), it is deleted.
pub struct AtomicFile {
    temp: NamedTempFile,
    dir: PathBuf,
}

/// The folder of `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl AtomicFile {
    /// A temporary file `.<name>.<random>.tmp` in `dir`, for a target in `dir` whose name
    /// (`name`) may still change before the commit. It gets the mode `File::create` would give
    /// (0666 less the umask), not a temporary file's 0600, since it becomes the target.
    pub fn new_in(dir: &Path, name: &str) -> Result<AtomicFile, AtomicWriteError> {
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let temp = builder
            .tempfile_in(dir)
            .map_err(|source| AtomicWriteError {
                action: "creating a temporary file for",
                path: dir.join(name),
                source,
            })?;
        Ok(AtomicFile {
            temp,
            dir: dir.to_path_buf(),
        })
    }

    /// A temporary file beside `target`.
    pub fn for_target(target: &Path) -> Result<AtomicFile, AtomicWriteError> {
        let name = target.file_name().ok_or_else(|| AtomicWriteError {
            action: "choosing a temporary file for",
            path: target.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        })?;
        Self::new_in(&parent_of(target), &name.to_string_lossy())
    }

    /// The open temporary file (read and write).
    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// Where the temporary file is.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// Fsync the file, rename it onto `target` (which must be in the folder it was created
    /// in), then fsync that folder. On failure the temporary file is removed and an existing
    /// `target` is left as it was (unless only the final folder sync failed).
    pub fn commit(self, target: &Path) -> Result<(), AtomicWriteError> {
        debug_assert_eq!(parent_of(target), self.dir, "rename across folders");
        let err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| AtomicWriteError {
                action,
                path,
                source,
            }
        };
        self.temp
            .as_file()
            .sync_all()
            .map_err(err("syncing", self.temp.path()))?;
        // On failure `persist` hands the temporary file back; dropping it deletes it.
        self.temp
            .persist(target)
            .map_err(|e| err("renaming the temporary file onto", target)(e.error))?;
        sync_dir(&self.dir).map_err(err("syncing the folder of", target))
    }
}

/// Fsync a folder so that a rename in it is durable. Some file systems refuse to sync a
/// folder (EINVAL); that is not an error, as they offer no way to make it durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir)?.sync_all() {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        r => r,
    }
}

/// Write `target` atomically: `write` fills a fresh temporary file beside it, which is then
/// committed ([`AtomicFile::commit`]). If `write` fails or panics, or any step fails, nothing
/// is left behind and an existing `target` is untouched.
pub fn write_atomic(
    target: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), AtomicWriteError> {
    let mut file = AtomicFile::for_target(target)?;
    write(file.file()).map_err(|source| AtomicWriteError {
        action: "writing",
        path: file.path().to_path_buf(),
        source,
    })?;
    file.commit(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_target_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        write_atomic(&target, |f| f.write_all(b"new contents")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
        assert_eq!(names(dir.path()), ["out.bin"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let fresh = dir.path().join("plain");
            File::create(&fresh).unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&target), mode(&fresh), "same mode as File::create");
        }
    }

    #[test]
    fn a_failing_or_panicking_writer_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        let err = write_atomic(&target, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.action, "writing");
        let line = crate::error_line(&err);
        assert!(
            line.contains(".out.bin.") && line.contains("disk on fire"),
            "{line}"
        );
        let panicked = std::panic::catch_unwind(|| {
            let _ = write_atomic(&target, |f| {
                f.write_all(b"x")?;
                panic!("writer panicked")
            });
        });
        assert!(panicked.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["out.bin"]);
    }

    #[test]
    fn the_name_may_be_chosen_after_writing_and_an_uncommitted_file_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AtomicFile::new_in(dir.path(), "data").unwrap();
        f.file().write_all(b"abc").unwrap();
        let temp = f.path().to_path_buf();
        assert!(temp.exists());
        drop(f);
        assert!(!temp.exists());
        let mut f = AtomicFile::new_in(dir.path(), "data").unwrap();
        f.file().write_all(b"abc").unwrap();
        f.commit(&dir.path().join("data.gz")).unwrap();
        assert_eq!(names(dir.path()), ["data.gz"]);
    }

    #[test]
    fn a_bare_file_name_and_a_missing_folder_are_reported() {
        let err = write_atomic(Path::new("/no/such/folder/x"), |_| Ok(())).unwrap_err();
        assert_eq!(err.action, "creating a temporary file for");
        assert!(err.to_string().contains("/no/such/folder/x"), "{err}");
        let err = AtomicFile::for_target(Path::new("/")).err().unwrap();
        assert_eq!(err.action, "choosing a temporary file for");
    }
}
