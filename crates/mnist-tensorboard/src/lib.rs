//! TensorBoard event files for scalars: [`EventWriter`] writes
//! `events.out.tfevents.<seconds>.<host>.<pid>.0` files that `tensorboard --logdir` reads
//! (a `file_version` event, then one event per step holding scalar summaries, each a TFRecord,
//! [`record`]); [`read_scalars`] reads them back (tests, tools).
//!
//! The messages are declared with prost's derive ([`proto`]) instead of generated from
//! TensorFlow's `.proto` files: the four fields scalars need do not justify a protoc build
//! step, and the derive keeps the encoding prost's own.

pub mod proto;
pub mod record;

use prost::Message;
use proto::{event::What, Event, Summary, SummaryValue};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Appends events to one new event file.
#[derive(Debug)]
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Create `dir` if needed and a new event file in it, starting with the `file_version`
    /// event.
    pub fn create(dir: &Path) -> io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let secs = now() as u64;
        let pid = std::process::id();
        // The name TensorFlow's writer uses; a second file of this process in the same second
        // gets the next suffix.
        let mut n = 0;
        let (file, path) = loop {
            let path = dir.join(format!("events.out.tfevents.{secs}.{host}.{pid}.{n}"));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(e),
            }
        };
        let mut w = EventWriter {
            out: BufWriter::new(file),
            path,
        };
        w.write_event(&Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        w.flush()?;
        Ok(w)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record scalar `values` (tag, value) at `step`, stamped `wall_time` (seconds since the
    /// Unix epoch). Buffered until [`EventWriter::flush`].
    pub fn scalars(&mut self, wall_time: f64, step: i64, values: &[(&str, f64)]) -> io::Result<()> {
        let value = values
            .iter()
            .map(|&(tag, v)| SummaryValue {
                tag: tag.to_string(),
                simple_value: Some(v as f32),
            })
            .collect();
        self.write_event(&Event {
            wall_time,
            step,
            what: Some(What::Summary(Summary { value })),
        })
    }

    /// Write everything buffered to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn write_event(&mut self, e: &Event) -> io::Result<()> {
        self.out.write_all(&record::frame(&e.encode_to_vec()))
    }
}

/// One scalar read back from an event file.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    /// Its series.
    pub tag: String,
    /// Its step.
    pub step: i64,
    /// Its wall time (seconds since the Unix epoch).
    pub wall_time: f64,
    /// Its value.
    pub value: f32,
}

/// An event file that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading the file failed.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Its framing is damaged.
    #[error("{}", path.display())]
    Frame {
        /// The file.
        path: PathBuf,
        /// Where and how.
        #[source]
        source: record::FrameError,
    },
    /// A record is not an `Event`.
    #[error("{}: record {index} is not an Event", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Which record (0-based).
        index: usize,
        /// Why.
        #[source]
        source: prost::DecodeError,
    },
}

/// Every event of the file at `path`, checksums verified.
pub fn read_events(path: &Path) -> Result<Vec<Event>, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.into(),
        source,
    })?;
    let recs = record::unframe(&bytes).map_err(|source| ReadError::Frame {
        path: path.into(),
        source,
    })?;
    recs.iter()
        .enumerate()
        .map(|(index, r)| {
            Event::decode(*r).map_err(|source| ReadError::Decode {
                path: path.into(),
                index,
                source,
            })
        })
        .collect()
}

/// Every scalar in the event file at `path`, in file order.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>, ReadError> {
    let mut out = Vec::new();
    for e in read_events(path)? {
        if let Some(What::Summary(s)) = e.what {
            for v in s.value {
                if let Some(value) = v.simple_value {
                    out.push(Scalar {
                        tag: v.tag,
                        step: e.step,
                        wall_time: e.wall_time,
                        value,
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_scalars_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let tb = dir.path().join("tb");
        let mut w = EventWriter::create(&tb).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        w.scalars(1.5, 0, &[("train/loss", 2.25), ("train/lr", 0.0)])
            .unwrap();
        w.scalars(2.5, 7, &[("test/top1", 97.5)]).unwrap();
        w.flush().unwrap();
        let events = read_events(w.path()).unwrap();
        assert_eq!(
            events[0].what,
            Some(What::FileVersion("brain.Event:2".into()))
        );
        let s = read_scalars(w.path()).unwrap();
        let got: Vec<(&str, i64, f64, f32)> = s
            .iter()
            .map(|x| (x.tag.as_str(), x.step, x.wall_time, x.value))
            .collect();
        assert_eq!(
            got,
            [
                ("train/loss", 0, 1.5, 2.25),
                ("train/lr", 0, 1.5, 0.0),
                ("test/top1", 7, 2.5, 97.5)
            ]
        );
        // A second writer in the same folder gets a file of its own.
        let w2 = EventWriter::create(&tb).unwrap();
        assert_ne!(w2.path(), w.path());
    }

    /// The bytes of a scalar event, checked field by field against the protobuf encoding
    /// (tag = field number << 3 | wire type).
    #[test]
    fn event_encoding_matches_the_proto_field_numbers() {
        let e = Event {
            wall_time: 1.0,
            step: 3,
            what: Some(What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: "a".into(),
                    simple_value: Some(0.0),
                }],
            })),
        };
        let mut want = vec![0x09]; // field 1, fixed64
        want.extend(1.0f64.to_le_bytes());
        want.extend([0x10, 3]); // field 2, varint
                                // field 5, length-delimited: Summary { field 1: Value { field 1 "a", field 2 0f32 } }
        want.extend([0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15, 0, 0, 0, 0]);
        assert_eq!(e.encode_to_vec(), want);
    }
}
