//! Whether the kernel's out-of-memory killer ran while the workers did: a worker it kills just
//! dies of SIGKILL, which says nothing by itself. The kernel counts every OOM kill (of the
//! whole machine or of a memory cgroup) in `/proc/vmstat`'s `oom_kill` (Linux 4.13 and later);
//! the launcher reads it before starting the workers and again when one dies of SIGKILL.
//! Another process killed at the same moment would be counted too, so the message says
//! "likely" and gives the figures.

use std::path::Path;

/// The kernel's count of OOM kills.
pub const VMSTAT: &str = "/proc/vmstat";

/// The `oom_kill` count in a `/proc/vmstat`-style file, `None` when it cannot be read.
pub fn oom_kills(vmstat: &Path) -> Option<u64> {
    std::fs::read_to_string(vmstat)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// The OOM-kill count when the launch started.
#[derive(Clone, Copy, Debug)]
pub struct OomWatch(Option<u64>);

impl OomWatch {
    /// Read the count now.
    pub fn start() -> OomWatch {
        OomWatch(oom_kills(Path::new(VMSTAT)))
    }

    /// A note for a worker killed by SIGKILL that the launcher did not send, when the count
    /// rose since [`OomWatch::start`].
    pub fn note(&self) -> Option<String> {
        Self::compare(self.0, oom_kills(Path::new(VMSTAT)))
    }

    fn compare(before: Option<u64>, now: Option<u64>) -> Option<String> {
        match (before, now) {
            (Some(b), Some(n)) if n > b => Some(format!(
                "likely by the kernel's out-of-memory killer: {} OOM kill(s) during this launch \
                 ({VMSTAT} oom_kill {b} -> {n}); the machine or its memory cgroup ran out of memory",
                n - b
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_is_read_and_a_rise_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vmstat");
        std::fs::write(&f, "nr_free_pages 5\noom_kill 3\npgfault 9\n").unwrap();
        assert_eq!(oom_kills(&f), Some(3));
        assert_eq!(oom_kills(&dir.path().join("missing")), None);
        let note = OomWatch::compare(Some(3), Some(4)).unwrap();
        assert!(
            note.contains("out-of-memory killer") && note.contains("3 -> 4"),
            "{note}"
        );
        assert_eq!(OomWatch::compare(Some(3), Some(3)), None);
        assert_eq!(OomWatch::compare(None, Some(3)), None);
        // This machine's kernel has the counter (Linux >= 4.13).
        assert!(
            oom_kills(Path::new(VMSTAT)).is_some(),
            "no oom_kill in {VMSTAT}"
        );
    }
}
