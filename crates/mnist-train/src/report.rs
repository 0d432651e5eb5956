//! What rank 0 tells people, through `mnist-viz`: the start-up lines and `config.json`
//! ([`announce`]), the curves redrawn after every epoch ([`Curves`]), the end-of-run table
//! ([`summary`]) and the progress bar's look ([`bar_style`]).

use indicatif::{ProgressState, ProgressStyle};
use mnist_common::contract::{WorkerIdentity, METRICS_FILE};
use mnist_common::logging::RunLog;
use mnist_common::TrainConfig;
use mnist_viz::console::RunFacts;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tch::Device;

/// The device as people write it: `CPU`, `cuda:0`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "CPU".into(),
        other => format!("{other:?}"),
    }
}

/// Rank 0 at start-up: the whole configuration as one line in the log file only, a few readable
/// lines on the console (and in the log), and, when training, `<path>/config.json`.
pub fn announce(cfg: &TrainConfig, identity: &WorkerIdentity, log: &RunLog, facts: &RunFacts) {
    log.file_only(&format!(
        "Config: {} | rank 0 of {} | {} intra-op thread(s) | device {}",
        serde_json::to_string(cfg).unwrap_or_default(),
        identity.world_size,
        facts.threads,
        facts.device
    ));
    for line in mnist_viz::console::startup_lines(cfg, facts) {
        log.info(&line);
    }
    // An evaluation reuses a training run's folder: its config.json stays that run's.
    if cfg.evaluate.is_none() {
        if let Err(e) = mnist_viz::console::write_config(cfg, facts) {
            log.info(&format!("Warning: {}", mnist_common::error_line(&e)));
        }
    }
}

/// Rank 0's curves, redrawn on a thread of their own after every epoch so that training does
/// not wait for the drawing and the file syncs. A failure is a warning in the log, never a
/// reason to stop training.
#[derive(Default)]
pub struct Curves {
    pending: Option<JoinHandle<Result<(), String>>>,
}

impl Curves {
    /// Start redrawing from the `metrics.jsonl` just appended (after the previous drawing).
    pub fn redraw(&mut self, cfg: &TrainConfig, log: &RunLog) {
        self.wait(log);
        let (dir, model) = (cfg.path.clone(), cfg.model.name());
        debug_assert!(dir.join(METRICS_FILE).exists());
        let spawned = std::thread::Builder::new()
            .name("curves".into())
            .spawn(move || {
                mnist_viz::curves::write(&dir, model)
                    .map(|_| ())
                    .map_err(|e| mnist_common::error_line(&e))
            });
        match spawned {
            Ok(h) => self.pending = Some(h),
            Err(e) => log.info(&format!("Warning: cannot start drawing the curves: {e}")),
        }
    }

    /// Wait for the drawing in progress, if any, and log its failure.
    pub fn wait(&mut self, log: &RunLog) {
        if let Some(h) = self.pending.take() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log.info(&format!("Warning: curves not drawn: {e}")),
                Err(_) => log.info("Warning: curves not drawn: the drawing thread panicked"),
            }
        }
    }
}

impl Drop for Curves {
    /// A run that ends early (an error) still lets a drawing in progress finish, so it leaves
    /// no temporary file behind.
    fn drop(&mut self) {
        if let Some(h) = self.pending.take() {
            let _ = h.join();
        }
    }
}

/// The end-of-run table, one log line per row, from `metrics.jsonl` and what the trainer knows.
pub fn summary(cfg: &TrainConfig, log: &RunLog, wall: Duration, bytes_sent: u64, resumed: bool) {
    let epochs = match mnist_viz::metrics::read_file(&cfg.path.join(METRICS_FILE)) {
        Ok(e) => e,
        Err(e) => {
            log.info(&format!(
                "Run summary unavailable: {}",
                mnist_common::error_line(&e)
            ));
            return;
        }
    };
    let end = mnist_viz::summary::RunEnd {
        dir: &cfg.path,
        wall_seconds: wall.as_secs_f64(),
        epochs_total: cfg.epochs,
        bytes_sent,
        resumed,
    };
    for line in mnist_viz::summary::lines(&end, &epochs) {
        log.info(&line);
    }
}

/// The trainer's reporting state: when the current epoch started (for the run's ETA) and the
/// curves being drawn.
#[derive(Default)]
pub struct Reporter {
    epoch_started: Option<Instant>,
    last_epoch: Option<f64>,
    curves: Curves,
}

impl Reporter {
    /// The progress bar's plan for `epoch` (0-based) of a run ending before `last_epoch`;
    /// also marks the epoch's start.
    pub fn start_epoch(
        &mut self,
        cfg: &TrainConfig,
        world: usize,
        epoch: usize,
        last_epoch: usize,
    ) -> BarPlan {
        let now = Instant::now();
        if let Some(t) = self.epoch_started.replace(now) {
            self.last_epoch = Some(now.duration_since(t).as_secs_f64());
        }
        BarPlan {
            images_per_step: (cfg.batch_size * world) as f64,
            epochs_after: last_epoch.saturating_sub(epoch + 1),
            last_epoch: self.last_epoch,
        }
    }

    /// Rank 0, after an epoch's record is in `metrics.jsonl`: redraw the curves.
    pub fn end_epoch(&mut self, cfg: &TrainConfig, log: &RunLog) {
        self.curves.redraw(cfg, log);
    }

    /// Rank 0, at the end: wait for the curves, then print the run summary (`resumed`: this
    /// process continued an earlier attempt, whose time the wall time leaves out).
    pub fn finish(
        &mut self,
        cfg: &TrainConfig,
        log: &RunLog,
        started: Instant,
        bytes_sent: u64,
        resumed: bool,
    ) {
        self.curves.wait(log);
        summary(cfg, log, started.elapsed(), bytes_sent, resumed);
    }
}

/// What the progress bar needs beyond indicatif's own count.
#[derive(Clone, Copy, Debug)]
pub struct BarPlan {
    /// Training images per step, all ranks together.
    pub images_per_step: f64,
    /// Epochs of this run after the one the bar shows.
    pub epochs_after: usize,
    /// Wall seconds the previous epoch took (training and evaluation), if one has run.
    pub last_epoch: Option<f64>,
}

/// Seconds left in the whole run: what is left of this epoch, plus the following epochs at the
/// previous epoch's wall time (or, before one has finished, at this epoch's step rate).
pub fn run_eta(plan: &BarPlan, epoch_eta: f64, steps_per_epoch: u64, steps_per_sec: f64) -> f64 {
    let per_epoch = plan.last_epoch.unwrap_or(if steps_per_sec > 0.0 {
        steps_per_epoch as f64 / steps_per_sec
    } else {
        0.0
    });
    epoch_eta + plan.epochs_after as f64 * per_epoch
}

/// `1:02:03` or `02:03`.
fn clock(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

/// The bar: `epoch 2/5 [=====>    ] 45% 4,310 images/s  eta 00:12 (run 01:10)  loss … acc …`.
pub fn bar_style(plan: BarPlan) -> ProgressStyle {
    ProgressStyle::with_template(
        "epoch {prefix} [{bar:25}] {percent:>3}% {images_per_sec} eta {eta_both} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key(
        "images_per_sec",
        move |st: &ProgressState, w: &mut dyn std::fmt::Write| {
            let rate = st.per_sec() * plan.images_per_step;
            let _ = write!(w, "{} images/s", mnist_viz::summary::thousands(rate));
        },
    )
    .with_key(
        "eta_both",
        move |st: &ProgressState, w: &mut dyn std::fmt::Write| {
            let epoch = st.eta().as_secs_f64();
            let run = run_eta(&plan, epoch, st.len().unwrap_or(0), st.per_sec());
            let _ = write!(w, "{} (run {})", clock(epoch), clock(run));
        },
    )
    .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_eta_adds_the_epochs_still_to_come() {
        let plan = BarPlan {
            images_per_step: 128.0,
            epochs_after: 2,
            last_epoch: Some(30.0),
        };
        assert_eq!(run_eta(&plan, 5.0, 100, 10.0), 65.0);
        let first = BarPlan {
            last_epoch: None,
            ..plan
        };
        // 100 steps at 10 steps/s: 10 s per epoch.
        assert_eq!(run_eta(&first, 5.0, 100, 10.0), 25.0);
        assert_eq!(clock(65.0), "01:05");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(device_name(Device::Cuda(1)), "cuda:1");
        assert_eq!(device_name(Device::Cpu), "CPU");
    }
}
