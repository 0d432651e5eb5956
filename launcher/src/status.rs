//! The console of a node without global rank 0: instead of silence, a short status line every
//! few seconds (its ranks, how long they run, the link rate of the interface it advertises,
//! the last line its first worker wrote).

use crate::multinode::Node;
use crate::output::RankLog;
use std::ops::Range;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Seconds between status lines (`MNIST_STATUS_SECS` overrides; default 10).
pub const ENV_STATUS_SECS: &str = "MNIST_STATUS_SECS";

/// A running status printer; dropping it stops it.
pub struct StatusLine {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn counters(iface: &str) -> Option<(u64, u64)> {
    let read = |what: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/net/{iface}/statistics/{what}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("rx_bytes")?, read("tx_bytes")?))
}

fn rate(bytes: u64, secs: f64) -> String {
    let r = bytes as f64 / secs.max(1e-3);
    if r >= 1e6 {
        format!("{:.1} MB/s", r / 1e6)
    } else {
        format!("{:.1} kB/s", r / 1e3)
    }
}

impl StatusLine {
    /// Start printing for `node`, whose workers are the global `ranks`; `first` is the log of
    /// its first worker.
    pub fn start(node: &Node, ranks: Range<usize>, first: Option<Arc<RankLog>>) -> Self {
        let every = std::env::var(ENV_STATUS_SECS)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(Duration::from_secs(10), Duration::from_secs_f64);
        let node_rank = node.multi.node_rank;
        let world = node.session.plan.world_size;
        let iface = mnist_rdzv::net::interface_of(&node.session.addr);
        let (tx, rx) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("status-line".into())
            .spawn(move || {
                let t0 = Instant::now();
                let mut last = (Instant::now(), iface.as_deref().and_then(counters));
                loop {
                    match rx.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let now = (Instant::now(), iface.as_deref().and_then(counters));
                    let link = match (&iface, last.1, now.1) {
                        (Some(i), Some((r0, t0b)), Some((r1, t1b))) => {
                            let secs = now.0.duration_since(last.0).as_secs_f64();
                            format!(
                                "; {i} rx {} tx {}",
                                rate(r1.saturating_sub(r0), secs),
                                rate(t1b.saturating_sub(t0b), secs)
                            )
                        }
                        _ => String::new(),
                    };
                    last = now;
                    let said = first
                        .as_ref()
                        .and_then(|l| l.tail().last().cloned())
                        // Without the log's time-stamp prefix ("MM/DD HH:MM:SS AM | ").
                        .map(|l| match l.split_once(" | ") {
                            Some((_, rest)) => rest.to_string(),
                            None => l,
                        })
                        .map(|l| format!("; last: {l}"))
                        .unwrap_or_default();
                    eprintln!(
                        "mnist-launch: node {node_rank}: ranks {}-{} of {world} running {:.0} s{link}{said}",
                        ranks.start,
                        ranks.end.saturating_sub(1),
                        t0.elapsed().as_secs_f64()
                    );
                }
            })
            .ok();
        StatusLine {
            stop: Some(tx),
            thread,
        }
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
