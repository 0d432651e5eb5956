//! The table rank 0 prints when a run ends: wall time, epochs, best accuracy and its epoch,
//! throughput, where the steps' time went and which rank straggled (when the records carry the
//! time breakdown: `epoch_<part>_s`, `step_<part>_ms_median` / `_p99`, `straggler_rank`,
//! `straggler_ms`, parts `compute`, `comm`, `wait`), bytes
//! sent, and the paths of everything the run wrote.

use crate::console::{count, CONFIG_FILE};
use crate::curves::{CURVES_PNG, CURVES_SVG};
use crate::metrics::{EpochPoint, METRICS_FILE};
use mnist_common::contract::{LOG_FILE, MODEL_FILE};
use std::path::Path;

/// The Chrome trace `--profile-steps` writes into `--path`.
pub const TRACE_FILE: &str = "trace.json";

/// What the trainer knows at the end that `metrics.jsonl` does not say.
#[derive(Clone, Debug)]
pub struct RunEnd<'a> {
    /// The run's output folder (`--path`).
    pub dir: &'a Path,
    /// Seconds from this process's start to the end of training.
    pub wall_seconds: f64,
    /// Epochs the schedule has (`--epochs`).
    pub epochs_total: usize,
    /// Bytes rank 0 sent through its communicator (all collectives).
    pub bytes_sent: u64,
    /// Whether this process resumed an earlier attempt (its wall time and bytes are this
    /// attempt's only).
    pub resumed: bool,
}

/// `1 h 02 min`, `3 min 07 s`, `12.3 s`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let whole = secs.round() as u64;
    if whole >= 3600 {
        format!("{} h {:02} min", whole / 3600, (whole % 3600) / 60)
    } else if whole >= 60 {
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else {
        format!("{secs:.1} s")
    }
}

/// Bytes in decimal units: `512 B`, `12.3 kB`, `4.56 MB`, `1.20 GB`.
pub fn bytes(n: f64) -> String {
    if n < 1e3 {
        format!("{n:.0} B")
    } else if n < 1e6 {
        format!("{:.1} kB", n / 1e3)
    } else if n < 1e9 {
        format!("{:.2} MB", n / 1e6)
    } else {
        format!("{:.2} GB", n / 1e9)
    }
}

/// A number with thousands separators: `12,345`.
pub fn thousands(n: f64) -> String {
    if !n.is_finite() {
        return "?".into();
    }
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// The parts of a step the time breakdown of `metrics.jsonl` names, with their labels.
const PARTS: [(&str, &str); 3] = [
    ("compute", "compute"),
    ("comm", "communication"),
    ("wait", "waiting"),
];

/// Mean over the epochs whose records carry the number field `key`.
fn mean_of(epochs: &[EpochPoint], key: &str) -> Option<f64> {
    let v: Vec<f64> = epochs
        .iter()
        .filter_map(|p| p.extra.get(key).and_then(|v| v.as_f64()))
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Sum over the epochs of the number field `key` (None when no record has it).
fn sum_of(epochs: &[EpochPoint], key: &str) -> Option<f64> {
    mean_of(epochs, key).map(|m| {
        m * epochs
            .iter()
            .filter(|p| p.extra.get(key).is_some_and(|v| v.is_number()))
            .count() as f64
    })
}

/// Where the training time went, from the breakdown fields (`epoch_<part>_s`, summed over
/// the epochs; each a mean over ranks): "compute 40.1 s (62%), …".
fn time_split(epochs: &[EpochPoint]) -> Option<String> {
    let secs: Vec<(&str, f64)> = PARTS
        .iter()
        .filter_map(|(k, label)| Some((*label, sum_of(epochs, &format!("epoch_{k}_s"))?)))
        .collect();
    let total: f64 = secs.iter().map(|(_, s)| s).sum();
    if secs.is_empty() || total <= 0.0 {
        return None;
    }
    let parts: Vec<String> = secs
        .iter()
        .map(|(l, s)| format!("{l} {} ({:.0}%)", duration(*s), 100.0 * s / total))
        .collect();
    Some(format!(
        "{} (training steps, mean over ranks)",
        parts.join(", ")
    ))
}

/// One step's parts, median and p99 over the steps (`step_<part>_ms_median` / `_p99`), mean
/// over the epochs: "compute 3.10 / 5.20 ms, …".
fn step_times(epochs: &[EpochPoint]) -> Option<String> {
    let parts: Vec<String> = PARTS
        .iter()
        .filter_map(|(k, label)| {
            let median = mean_of(epochs, &format!("step_{k}_ms_median"))?;
            Some(match mean_of(epochs, &format!("step_{k}_ms_p99")) {
                Some(p99) => format!("{label} {median:.2} / {p99:.2} ms"),
                None => format!("{label} {median:.2} ms"),
            })
        })
        .collect();
    (!parts.is_empty()).then(|| format!("{} (median / p99 over steps)", parts.join(", ")))
}

/// The rank the breakdown named as the straggler most often (`straggler_rank`), in how many
/// epochs, and by how much at most (`straggler_ms`).
fn straggler(epochs: &[EpochPoint]) -> Option<String> {
    let named: Vec<(u64, f64)> = epochs
        .iter()
        .filter_map(|p| {
            let r = p.extra.get("straggler_rank")?.as_u64()?;
            let ms = p
                .extra
                .get("straggler_ms")
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN);
            Some((r, ms))
        })
        .collect();
    let mut counts = std::collections::BTreeMap::<u64, usize>::new();
    for (r, _) in &named {
        *counts.entry(*r).or_default() += 1;
    }
    let (rank, n) = counts
        .into_iter()
        .max_by_key(|&(r, n)| (n, std::cmp::Reverse(r)))?;
    let worst = named
        .iter()
        .filter(|(r, _)| *r == rank)
        .map(|(_, ms)| *ms)
        .filter(|ms| ms.is_finite())
        .fold(None::<f64>, |m, v| Some(m.map_or(v, |m| m.max(v))));
    let by = worst.map_or(String::new(), |ms| {
        format!(", up to {ms:.1} ms per step slower than the next slowest rank")
    });
    Some(format!(
        "rank {rank} in {n} of {}{by}",
        count(epochs.len(), "epoch", "epochs")
    ))
}

/// The summary as `(label, value)` rows; files that do not exist are left out.
pub fn rows(end: &RunEnd, epochs: &[EpochPoint]) -> Vec<(&'static str, String)> {
    let attempt = if end.resumed { " (this attempt)" } else { "" };
    let mut rows = vec![(
        "wall time",
        format!("{}{attempt}", duration(end.wall_seconds)),
    )];
    let done = epochs.last().map_or(0, |p| p.epoch);
    rows.push(("epochs", format!("{done} of {}", end.epochs_total)));
    let best = epochs.iter().filter(|p| p.test_top1.is_finite()).fold(
        None::<&EpochPoint>,
        |b, p| match b {
            Some(b) if b.test_top1 >= p.test_top1 => Some(b),
            _ => Some(p),
        },
    );
    if let Some(b) = best {
        rows.push((
            "best accuracy",
            format!("{:.2}% (epoch {})", b.test_top1, b.epoch),
        ));
    }
    let speeds: Vec<f64> = epochs
        .iter()
        .map(|p| p.images_per_second)
        .filter(|v| v.is_finite())
        .collect();
    if !speeds.is_empty() {
        let mean = speeds.iter().sum::<f64>() / speeds.len() as f64;
        let world = epochs.last().map_or(1, |p| p.world_size);
        rows.push((
            "images/s",
            format!(
                "{} (training, all {} together, mean of {})",
                thousands(mean),
                count(world, "process", "processes"),
                count(speeds.len(), "epoch", "epochs")
            ),
        ));
    }
    if let Some(split) = time_split(epochs) {
        rows.push(("time split", split));
    }
    if let Some(step) = step_times(epochs) {
        rows.push(("time per step", step));
    }
    if let Some(s) = straggler(epochs) {
        rows.push(("straggler", s));
    }
    let mut sent = format!("{}{attempt}", bytes(end.bytes_sent as f64));
    if let Some(p) = epochs.last().filter(|p| p.world_size > 1) {
        sent += &format!(
            " by rank 0 ({} of gradients per step, {})",
            bytes(p.bytes_sent_per_step),
            p.compression
        );
    } else {
        sent += " (one process: no gradient traffic)";
    }
    rows.push(("bytes sent", sent));
    let file = |name: &str| Some(end.dir.join(name)).filter(|p| p.is_file());
    let mut paths = |label: &'static str, names: &[&str]| {
        let found: Vec<String> = names
            .iter()
            .filter_map(|n| file(n))
            .map(|p| p.display().to_string())
            .collect();
        if !found.is_empty() {
            rows.push((label, found.join(", ")));
        }
    };
    paths("model", &[MODEL_FILE]);
    paths("log", &[LOG_FILE]);
    paths("metrics", &[METRICS_FILE]);
    paths("configuration", &[CONFIG_FILE]);
    paths("curves", &[CURVES_PNG, CURVES_SVG]);
    paths("trace", &[TRACE_FILE]);
    rows
}

/// The summary as aligned lines under a heading.
pub fn lines(end: &RunEnd, epochs: &[EpochPoint]) -> Vec<String> {
    let rows = rows(end, epochs);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    std::iter::once("Run summary".to_string())
        .chain(rows.iter().map(|(k, v)| format!("  {k:<width$}  {v}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: usize, acc: f64, extra: &str) -> EpochPoint {
        serde_json::from_str(&format!(
            r#"{{"epoch":{n},"lr":0.01,"train_loss":0.5,"test_loss":0.4,"test_top1":{acc},"images_per_second":{},"epoch_seconds":2.0,"world_size":2,"compression":"fp16","bytes_sent_per_step":122880.0{extra}}}"#,
            1000.0 * n as f64
        ))
        .unwrap()
    }

    #[test]
    fn formats() {
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(187.0), "3 min 07 s");
        assert_eq!(duration(3725.0), "1 h 02 min");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(122_880.0), "122.9 kB");
        assert_eq!(bytes(4_560_000.0), "4.56 MB");
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
    }

    #[test]
    fn summary_rows_say_what_the_run_did() {
        let dir = tempfile::tempdir().unwrap();
        for f in [MODEL_FILE, LOG_FILE, METRICS_FILE, CURVES_PNG] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let end = RunEnd {
            dir: dir.path(),
            wall_seconds: 75.0,
            epochs_total: 4,
            bytes_sent: 2_500_000,
            resumed: false,
        };
        let epochs = [epoch(1, 90.0, ""), epoch(2, 97.5, ""), epoch(3, 97.5, "")];
        let rows = rows(&end, &epochs);
        let get = |k: &str| {
            rows.iter()
                .find(|(l, _)| *l == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no row {k}: {rows:?}"))
        };
        assert_eq!(get("wall time"), "1 min 15 s");
        assert_eq!(get("epochs"), "3 of 4");
        // The first epoch that reached the best accuracy.
        assert_eq!(get("best accuracy"), "97.50% (epoch 2)");
        assert!(get("images/s")
            .starts_with("2,000 (training, all 2 processes together, mean of 3 epochs)"));
        assert_eq!(
            get("bytes sent"),
            "2.50 MB by rank 0 (122.9 kB of gradients per step, fp16)"
        );
        let d = dir.path().display();
        assert_eq!(get("model"), format!("{d}/{MODEL_FILE}"));
        assert_eq!(get("curves"), format!("{d}/{CURVES_PNG}"));
        // Files the run did not write are left out; no time split without its fields.
        for absent in [
            "trace",
            "configuration",
            "time split",
            "time per step",
            "straggler",
        ] {
            assert!(rows.iter().all(|(l, _)| *l != absent), "{rows:?}");
        }
        let text = lines(&end, &epochs);
        assert_eq!(text[0], "Run summary");
        assert!(text[1].starts_with("  wall time      "), "{text:?}");
    }

    #[test]
    fn time_split_comes_from_the_records_when_present() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TRACE_FILE), "[]").unwrap();
        let end = RunEnd {
            dir: dir.path(),
            wall_seconds: 5.0,
            epochs_total: 3,
            bytes_sent: 0,
            resumed: true,
        };
        // The fields of the time breakdown as the trainer writes them (flat, per epoch).
        let e1 = r#","step_compute_ms_median":10.0,"step_compute_ms_p99":30.0,"step_comm_ms_median":2.0,"step_comm_ms_p99":4.0,"step_wait_ms_median":0.5,"step_wait_ms_p99":1.0,"epoch_compute_s":6.0,"epoch_comm_s":3.0,"epoch_wait_s":1.0,"straggler_rank":1,"straggler_ms":55.0"#;
        let e2 = r#","step_compute_ms_median":12.0,"step_compute_ms_p99":20.0,"step_comm_ms_median":4.0,"step_comm_ms_p99":6.0,"step_wait_ms_median":1.5,"step_wait_ms_p99":3.0,"epoch_compute_s":6.0,"epoch_comm_s":3.0,"epoch_wait_s":1.0,"straggler_rank":1,"straggler_ms":61.5"#;
        let e3 = r#","straggler_rank":null,"straggler_ms":null"#;
        let rows = rows(
            &end,
            &[epoch(1, 90.0, e1), epoch(2, 91.0, e2), epoch(3, 92.0, e3)],
        );
        let get = |k: &str| rows.iter().find(|(l, _)| *l == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("time split"),
            Some("compute 12.0 s (60%), communication 6.0 s (30%), waiting 2.0 s (10%) (training steps, mean over ranks)")
        );
        assert_eq!(
            get("time per step"),
            Some("compute 11.00 / 25.00 ms, communication 3.00 / 5.00 ms, waiting 1.00 / 2.00 ms (median / p99 over steps)")
        );
        assert_eq!(
            get("straggler"),
            Some(
                "rank 1 in 2 of 3 epochs, up to 61.5 ms per step slower than the next slowest rank"
            )
        );
        assert!(get("trace").unwrap().ends_with(TRACE_FILE));
        assert_eq!(get("wall time"), Some("5.0 s (this attempt)"));
    }
}
