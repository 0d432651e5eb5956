//! Reading a run's `metrics.jsonl` back: one [`EpochPoint`] per epoch, with the fields the
//! pictures and the summary need. Fields this reader does not know (added by later versions,
//! such as a time breakdown) are kept in [`EpochPoint::extra`].

use crate::VizError;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The metrics file inside a run folder.
pub const METRICS_FILE: &str = mnist_common::contract::METRICS_FILE;

/// One epoch of a run, as `metrics.jsonl` records it (global figures, reduced over ranks).
#[derive(Clone, Debug, Deserialize)]
pub struct EpochPoint {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate of the epoch.
    #[serde(deserialize_with = "number")]
    pub lr: f64,
    /// Mean training loss per image.
    #[serde(deserialize_with = "number")]
    pub train_loss: f64,
    /// Mean test loss per image.
    #[serde(deserialize_with = "number")]
    pub test_loss: f64,
    /// Test top-1 accuracy, percent.
    #[serde(deserialize_with = "number")]
    pub test_top1: f64,
    /// Training images per second, all ranks together.
    #[serde(deserialize_with = "number")]
    pub images_per_second: f64,
    /// Seconds in the training loop.
    #[serde(default, deserialize_with = "number")]
    pub epoch_seconds: f64,
    /// Number of processes.
    pub world_size: usize,
    /// Gradient compression method.
    pub compression: String,
    /// Gradient payload bytes one rank sent per step.
    #[serde(default, deserialize_with = "number")]
    pub bytes_sent_per_step: f64,
    /// Every other field of the record, by name.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A number that JSON may hold as `null` (serde_json writes NaN and infinities so): NaN.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A run folder and its epochs.
#[derive(Clone, Debug)]
pub struct Run {
    /// The folder (the run's `--path`).
    pub dir: PathBuf,
    /// Its epochs in order, one per epoch number.
    pub epochs: Vec<EpochPoint>,
}

impl Run {
    /// Read `<dir>/metrics.jsonl`.
    pub fn read(dir: &Path) -> Result<Run, VizError> {
        let file = dir.join(METRICS_FILE);
        if !file.is_file() {
            return Err(VizError::NoMetrics {
                dir: dir.to_path_buf(),
            });
        }
        Ok(Run {
            dir: dir.to_path_buf(),
            epochs: read_file(&file)?,
        })
    }

    /// "compression, N process(es)": what tells runs apart in a legend.
    pub fn label(&self) -> String {
        let last = self.epochs.last();
        let method = last.map_or("?", |p| p.compression.as_str());
        let world = last.map_or(0, |p| p.world_size);
        format!(
            "{method}, {world} {}",
            if world == 1 { "process" } else { "processes" }
        )
    }
}

/// Parse a metrics file: blank lines are skipped, any other line must be an epoch record, and
/// when an epoch appears more than once (a run resumed from an earlier checkpoint trains it
/// again) the last record wins. At least one epoch is required.
pub fn read_file(file: &Path) -> Result<Vec<EpochPoint>, VizError> {
    let text = std::fs::read_to_string(file).map_err(|source| VizError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    parse(&text, file)
}

/// [`read_file`] on text already read (`file` names it in errors).
pub fn parse(text: &str, file: &Path) -> Result<Vec<EpochPoint>, VizError> {
    let mut by_epoch = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p: EpochPoint = serde_json::from_str(line).map_err(|e| VizError::BadRecord {
            file: file.to_path_buf(),
            line: i + 1,
            detail: e.to_string(),
        })?;
        by_epoch.insert(p.epoch, p);
    }
    if by_epoch.is_empty() {
        return Err(VizError::Empty {
            file: file.to_path_buf(),
        });
    }
    Ok(by_epoch.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(epoch: usize, acc: f64) -> String {
        format!(
            r#"{{"epoch":{epoch},"lr":0.01,"train_loss":0.5,"train_top1":80.0,"train_top5":99.0,"test_loss":0.4,"test_top1":{acc},"test_top5":99.5,"epoch_seconds":2.0,"images_per_second":1000.0,"world_size":2,"compression":"fp16","bytes_sent_per_step":123.0,"compression_ratio":2.0,"restarts":0,"compute_ms_median":3.5}}"#
        )
    }

    #[test]
    fn reads_records_and_keeps_unknown_fields() {
        let text = format!("{}\n\n{}\n", line(1, 90.0), line(2, 95.0));
        let v = parse(&text, Path::new("m.jsonl")).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].test_top1, 95.0);
        assert_eq!(v[0].compression, "fp16");
        assert_eq!(v[0].extra["compute_ms_median"], 3.5);
        assert_eq!(v[0].extra["restarts"], 0);
    }

    #[test]
    fn a_repeated_epoch_keeps_its_last_record() {
        let text = [line(1, 90.0), line(2, 91.0), line(2, 93.0), line(3, 94.0)].join("\n");
        let v = parse(&text, Path::new("m.jsonl")).unwrap();
        let acc: Vec<f64> = v.iter().map(|p| p.test_top1).collect();
        assert_eq!(acc, [90.0, 93.0, 94.0]);
    }

    #[test]
    fn null_numbers_read_as_nan() {
        let text = line(1, 90.0).replace(r#""train_loss":0.5"#, r#""train_loss":null"#);
        let v = parse(&text, Path::new("m.jsonl")).unwrap();
        assert!(v[0].train_loss.is_nan());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let text = format!("{}\n{{\"epoch\": 2, \"lr\": 0.1", line(1, 90.0));
        let e = parse(&text, Path::new("runs/a/metrics.jsonl")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("runs/a/metrics.jsonl, line 2: not an epoch record"),
            "{msg}"
        );
        let e = parse("\n", Path::new("m.jsonl")).unwrap_err();
        assert!(e.to_string().contains("no epoch records"), "{e}");
        let e = Run::read(Path::new("/nonexistent/run")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/run: no metrics.jsonl"),
            "{e}"
        );
    }

    #[test]
    fn labels_say_method_and_world_size() {
        let run = Run {
            dir: "x".into(),
            epochs: parse(&line(1, 90.0), Path::new("m")).unwrap(),
        };
        assert_eq!(run.label(), "fp16, 2 processes");
    }
}
