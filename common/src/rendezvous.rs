//! The rendezvous file format: what rank 0 publishes so the other ranks can find it.
//!
//! Layout on disk: the 8-byte magic [`MAGIC`], the format version as a little-endian `u32`,
//! then the [`RendezvousRecord`] serialized with bincode. Rank 0 writes a temporary file next to
//! the target and renames it over the target ([`crate::atomic_file`]), so a reader sees either
//! no file or a whole one.
//! A file with another run id or another format version is *stale* (left over by an earlier
//! run or another program version): readers ignore it and keep waiting.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// First bytes of every rendezvous file.
pub const MAGIC: &[u8; 8] = b"MNISTRDV";
/// Version of the layout written by this program.
pub const FORMAT_VERSION: u32 = 1;

pub use crate::contract::{shm_name_for, SHM_DIR};

/// What rank 0 publishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RendezvousRecord {
    /// Always [`FORMAT_VERSION`] when written by this program.
    pub format_version: u32,
    /// The run this file belongs to.
    pub run_id: String,
    /// Number of ranks in the run.
    pub world_size: u64,
    /// Host name of rank 0.
    pub host: String,
    /// `ip:port` where rank 0 accepts the other ranks.
    pub addr: String,
    /// Process id of rank 0.
    pub pid: u32,
    /// Shared-memory segment rank 0 plans to use when every rank is on its host.
    pub shm_name: Option<String>,
    /// Opaque bytes rank 0 hands to every rank (for example an NCCL unique id).
    pub payload: Vec<u8>,
}

/// A rendezvous file that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// Reading, writing or renaming the file failed.
    #[error("rendezvous file {path}: {op}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The record could not be serialized.
    #[error("rendezvous file {path}: cannot encode the record: {detail}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The serializer's message.
        detail: String,
    },
}

/// What a reader found at the rendezvous path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// No file yet.
    Missing,
    /// A file that belongs to another run or version; the string says why.
    Stale(String),
    /// This run's record.
    Ready(RendezvousRecord),
}

impl RendezvousRecord {
    /// The bytes written to disk: magic, version, bincode body.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let body = bincode::serialize(self).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(12 + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.format_version.to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parse file bytes and judge them against `run_id`: anything that is not a record of this
    /// run in this format version is [`ReadOutcome::Stale`].
    pub fn judge(bytes: &[u8], run_id: &str) -> ReadOutcome {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return ReadOutcome::Stale("not a rendezvous file (bad magic)".into());
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[8..12]);
        let version = u32::from_le_bytes(v);
        if version != FORMAT_VERSION {
            return ReadOutcome::Stale(format!(
                "format version {version}, this program reads {FORMAT_VERSION}"
            ));
        }
        let rec: RendezvousRecord = match bincode::deserialize(&bytes[12..]) {
            Ok(r) => r,
            Err(e) => return ReadOutcome::Stale(format!("undecodable record: {e}")),
        };
        if rec.format_version != FORMAT_VERSION {
            return ReadOutcome::Stale(format!("record version {}", rec.format_version));
        }
        if rec.run_id != run_id {
            return ReadOutcome::Stale(format!(
                "run id {:?}, this run is {:?}",
                rec.run_id, run_id
            ));
        }
        ReadOutcome::Ready(rec)
    }

    /// Write the record to `path` atomically ([`crate::atomic_file`]: temporary file in the
    /// same directory, fsync, rename, fsync of the directory).
    pub fn publish(&self, path: &Path) -> Result<(), RendezvousError> {
        let bytes = self.encode().map_err(|detail| RendezvousError::Encode {
            path: path.to_path_buf(),
            detail,
        })?;
        crate::atomic_file::write_atomic(path, |f| f.write_all(&bytes)).map_err(|e| {
            RendezvousError::Io {
                path: path.to_path_buf(),
                op: e.action,
                source: e.source,
            }
        })
    }

    /// Read `path` and judge it against `run_id` (a missing file is not an error).
    pub fn read(path: &Path, run_id: &str) -> Result<ReadOutcome, RendezvousError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Self::judge(&bytes, run_id)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReadOutcome::Missing),
            Err(source) => Err(RendezvousError::Io {
                path: path.to_path_buf(),
                op: "read",
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(run: &str) -> RendezvousRecord {
        RendezvousRecord {
            format_version: FORMAT_VERSION,
            run_id: run.into(),
            world_size: 3,
            host: "h".into(),
            addr: "127.0.0.1:1234".into(),
            pid: 42,
            shm_name: Some("mnist-ddp-x".into()),
            payload: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trip_and_stale_detection() {
        let dir = std::env::temp_dir().join(format!("rdv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rdv");
        assert_eq!(
            RendezvousRecord::read(&path, "a").unwrap(),
            ReadOutcome::Missing
        );
        rec("a").publish(&path).unwrap();
        assert_eq!(
            RendezvousRecord::read(&path, "a").unwrap(),
            ReadOutcome::Ready(rec("a"))
        );
        assert!(matches!(
            RendezvousRecord::read(&path, "b").unwrap(),
            ReadOutcome::Stale(_)
        ));
        let mut bytes = rec("a").encode().unwrap();
        bytes[8] = 9;
        assert!(
            matches!(RendezvousRecord::judge(&bytes, "a"), ReadOutcome::Stale(s) if s.contains("version 9"))
        );
        assert!(matches!(
            RendezvousRecord::judge(b"junk", "a"),
            ReadOutcome::Stale(_)
        ));
        // Only the target remains: the temporary file was renamed.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
