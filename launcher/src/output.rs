//! Per-rank output: every line a worker writes to stdout or stderr goes to
//! `<--path>/rank<N>.log`, rank 0's also to the launcher's own stdout/stderr, and the last
//! few lines of each rank stay in memory for the failure report. Each pipe is read on its own
//! thread, so a worker never blocks on a full pipe whatever the other ranks or streams do.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines of each rank kept for the failure report.
pub const TAIL_LINES: usize = 10;
/// Longest piece written at once; a longer line without a newline is passed on in pieces.
const MAX_CHUNK: u64 = 64 * 1024;
/// Longest tail line kept (characters).
const MAX_TAIL_CHARS: usize = 400;

/// Which of a worker's streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One rank's log file, console echo and tail.
pub struct RankLog {
    rank: usize,
    path: PathBuf,
    file: Mutex<BufWriter<File>>,
    tail: Mutex<VecDeque<String>>,
    echo: bool,
    write_failed: AtomicBool,
}

/// The log file of `rank` in `dir`.
pub fn rank_log_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(mnist_common::contract::rank_log_name(rank))
}

impl RankLog {
    /// Create (truncate) `<dir>/rank<rank>.log`; `echo` also copies lines to the console.
    pub fn create(dir: &Path, rank: usize, echo: bool) -> io::Result<Self> {
        let path = rank_log_path(dir, rank);
        let file = File::create(&path)?;
        Ok(Self::with_file(rank, path, file, echo))
    }

    /// Open `<dir>/rank<rank>.log` for appending after a restart, writing the line `marker`
    /// first so each round's output stays apart; the tail starts empty.
    pub fn append(dir: &Path, rank: usize, echo: bool, marker: &str) -> io::Result<Self> {
        use std::io::Write;
        let path = rank_log_path(dir, rank);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(file, "{marker}")?;
        Ok(Self::with_file(rank, path, file, echo))
    }

    fn with_file(rank: usize, path: PathBuf, file: File, echo: bool) -> Self {
        RankLog {
            rank,
            path,
            file: Mutex::new(BufWriter::new(file)),
            tail: Mutex::new(VecDeque::with_capacity(TAIL_LINES)),
            echo,
            write_failed: AtomicBool::new(false),
        }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last [`TAIL_LINES`] lines (both streams, in arrival order).
    pub fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Record one line (bytes as the worker wrote them, newline included if any) in the file
    /// and the tail, and echo it when this rank is echoed. `flush` pushes buffered bytes out,
    /// done whenever the worker has nothing more queued.
    pub fn write(&self, bytes: &[u8], stream: Stream, flush: bool) {
        self.record(bytes, flush);
        self.echo(bytes, stream, flush);
    }

    /// Copy bytes to the console as they come (when this rank is echoed), so a progress bar
    /// that redraws one line with `\r` shows live.
    pub fn echo(&self, bytes: &[u8], stream: Stream, flush: bool) {
        if self.echo {
            // A closed console must not stop the pumping: errors are ignored.
            let _ = match stream {
                Stream::Stdout => echo(io::stdout().lock(), bytes, flush),
                Stream::Stderr => echo(io::stderr().lock(), bytes, flush),
            };
        }
    }

    /// Record one line in the file and the tail. A line a progress bar redrew (`\r`, ANSI
    /// clear-line) is saved as what the terminal would show last.
    pub fn record(&self, bytes: &[u8], flush: bool) {
        if bytes.is_empty() {
            if flush {
                if let Ok(mut f) = self.file.lock() {
                    let _ = f.flush();
                }
            }
            return;
        }
        let redrawn = bytes.contains(&b'\r') || bytes.windows(2).any(|w| w == b"\x1b[");
        let cleaned;
        let bytes = if redrawn {
            let text = String::from_utf8_lossy(bytes);
            let last = text
                .trim_end_matches(['\n', '\r'])
                .rsplit('\r')
                .next()
                .unwrap_or_default();
            let last = strip_ansi(last);
            if last.trim().is_empty() {
                return;
            }
            cleaned = format!("{last}\n");
            cleaned.as_bytes()
        } else {
            bytes
        };
        if let Ok(mut f) = self.file.lock() {
            let r = f
                .write_all(bytes)
                .and_then(|()| if flush { f.flush() } else { Ok(()) });
            if let Err(e) = r {
                if !self.write_failed.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "mnist-launch: warning: cannot write {} (--path): {e}; rank {}'s output is no longer saved there",
                        self.path.display(),
                        self.rank
                    );
                }
            }
        }
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches(['\n', '\r']);
        // A progress bar redraws with '\r': keep what the terminal would show last.
        let shown = text.rsplit('\r').next().unwrap_or_default();
        let shown: String = shown.chars().take(MAX_TAIL_CHARS).collect();
        if let Ok(mut t) = self.tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(shown);
        }
    }
}

/// `text` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn echo(mut out: impl Write, bytes: &[u8], flush: bool) -> io::Result<()> {
    out.write_all(bytes)?;
    if flush {
        out.flush()?;
    }
    Ok(())
}

impl Drop for RankLog {
    fn drop(&mut self) {
        if let Ok(mut f) = self.file.lock() {
            let _ = f.flush();
        }
    }
}

/// The reader threads of all workers.
pub struct Pumps {
    handles: Vec<JoinHandle<()>>,
    done_tx: Sender<()>,
    done_rx: Receiver<()>,
}

/// Sends one message when dropped, i.e. when its thread ends, even by a panic.
struct Done(Sender<()>);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Default for Pumps {
    fn default() -> Self {
        Self::new()
    }
}

impl Pumps {
    /// No threads yet.
    pub fn new() -> Self {
        let (done_tx, done_rx) = channel();
        Pumps {
            handles: Vec::new(),
            done_tx,
            done_rx,
        }
    }

    /// Copy `reader` line by line into `log` on a new thread until end of file.
    pub fn attach(
        &mut self,
        reader: impl Read + Send + 'static,
        stream: Stream,
        log: Arc<RankLog>,
    ) -> io::Result<()> {
        let done = Done(self.done_tx.clone());
        let name = format!(
            "rank{}-{}",
            log.rank,
            if stream == Stream::Stdout {
                "out"
            } else {
                "err"
            }
        );
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let _done = done;
            pump(reader, stream, &log);
        })?;
        self.handles.push(handle);
        Ok(())
    }

    /// Wait up to `timeout` for every stream to reach end of file; true when all did. Threads
    /// still running then (a grandchild holding a pipe open) are left to finish on their own.
    pub fn finish(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut left = self.handles.len();
        while left > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(wait) {
                Ok(()) => left -= 1,
                Err(_) => return false,
            }
        }
        for h in self.handles {
            let _ = h.join();
        }
        true
    }
}

fn pump(reader: impl Read, stream: Stream, log: &RankLog) {
    let mut reader = BufReader::with_capacity(MAX_CHUNK as usize, reader);
    let mut line = Vec::new();
    loop {
        let chunk = match reader.fill_buf() {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let n = chunk.len();
        // Echo whatever arrived at once (partial lines too: progress bars), and record
        // whole lines in the file and the tail.
        log.echo(chunk, stream, true);
        for piece in chunk.split_inclusive(|&b| b == b'\n') {
            line.extend_from_slice(piece);
            if piece.ends_with(b"\n") || line.len() as u64 >= MAX_CHUNK {
                log.record(&line, false);
                line.clear();
            }
        }
        reader.consume(n);
        if reader.buffer().is_empty() {
            log.record(&[], true);
        }
    }
    if !line.is_empty() {
        log.record(&line, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_and_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(RankLog::create(dir.path(), 3, false).unwrap());
        let text: String =
            (0..25).map(|i| format!("line {i}\n")).collect::<String>() + "50%\r100%\nno newline";
        let mut pumps = Pumps::new();
        pumps
            .attach(
                io::Cursor::new(text.clone().into_bytes()),
                Stream::Stderr,
                log.clone(),
            )
            .unwrap();
        assert!(pumps.finish(Duration::from_secs(5)));
        let tail = log.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(
            tail[TAIL_LINES - 2..],
            ["100%".to_string(), "no newline".to_string()]
        );
        drop(log);
        // The redrawn line is saved as the terminal showed it last.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("rank3.log")).unwrap(),
            text.replace("50%\r100%", "100%")
        );
    }

    #[test]
    fn finish_gives_up_on_a_stream_that_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(RankLog::create(dir.path(), 0, false).unwrap());
        let (reader, writer) = io::pipe().unwrap();
        let mut pumps = Pumps::new();
        pumps.attach(reader, Stream::Stdout, log).unwrap();
        assert!(!pumps.finish(Duration::from_millis(50)));
        drop(writer);
    }
}
