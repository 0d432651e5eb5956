//! The reference's log lines: `MM/DD HH:MM:SS AM | message`, written to the console and to
//! `<path>/mnist_train.log` (Python's `%m/%d %I:%M:%S %p` date format).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Format one log line with the reference's timestamp prefix, without a newline.
pub fn format_line(time: &chrono::DateTime<chrono::Local>, message: &str) -> String {
    format!("{} | {}", time.format("%m/%d %I:%M:%S %p"), message)
}

/// A log that writes each line to stdout and, when opened with a file, appends it there.
pub struct RunLog {
    file: Option<Mutex<File>>,
    path: Option<PathBuf>,
    console: bool,
}

impl RunLog {
    /// A log to stdout only.
    pub fn console() -> Self {
        RunLog {
            file: None,
            path: None,
            console: true,
        }
    }

    /// A log that writes nowhere (ranks other than 0 when nothing should be printed).
    pub fn silent() -> Self {
        RunLog {
            file: None,
            path: None,
            console: false,
        }
    }

    /// A log to stdout and to `file` (appended, created if missing).
    pub fn open(file: &Path) -> io::Result<Self> {
        let f = OpenOptions::new().create(true).append(true).open(file)?;
        Ok(RunLog {
            file: Some(Mutex::new(f)),
            path: Some(file.to_path_buf()),
            console: true,
        })
    }

    /// The log file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Write one line, stamped with the current local time.
    pub fn info(&self, message: &str) {
        self.write(message, self.console);
    }

    /// Write one line to the log file only (while a progress bar owns the console).
    pub fn file_only(&self, message: &str) {
        self.write(message, false);
    }

    fn write(&self, message: &str, console: bool) {
        let line = format_line(&chrono::Local::now(), message);
        if console {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn prefix_matches_python_logging_format() {
        let t = chrono::Local
            .with_ymd_and_hms(2024, 3, 7, 15, 4, 5)
            .unwrap();
        assert_eq!(format_line(&t, "hi"), "03/07 03:04:05 PM | hi");
    }

    #[test]
    fn writes_to_the_file() {
        let dir = std::env::temp_dir().join(format!("runlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.log");
        let log = RunLog::open(&p).unwrap();
        log.info("hello");
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.ends_with(" | hello\n"), "{s}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
