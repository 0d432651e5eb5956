//! Helpers shared by the mnist-worker integration tests: generated data sets, running the
//! `mnist-worker` / `mnist-launch` binaries under a deadline, and reading what they write.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds any single command may run before the test kills it and fails.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The worker binary cargo built for these tests.
pub fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mnist-worker"))
}

/// The launcher binary, built next to the worker by `cargo test --workspace`.
pub fn launcher_bin() -> PathBuf {
    let p = worker_bin().with_file_name("mnist-launch");
    assert!(
        p.is_file(),
        "{} is missing: the launcher tests need it next to mnist-worker; run `cargo test --workspace` \
         (or `cargo build -p mnist-launch` first)",
        p.display()
    );
    p
}

/// `$MNIST_PYTHON` (Python with torch), or None after recording a visible skip
/// ([`mnist_testkit::python`]).
pub fn python(test: &str) -> Option<PathBuf> {
    mnist_testkit::python(test)
}

/// A script in `scripts/ref/`.
pub fn ref_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/ref")
        .join(name)
}

/// Write a learnable synthetic data set (`train` and `test` examples, raw IDX files under
/// the standard names) into `<dir>/data` and return that folder.
pub fn make_data(dir: &Path, train: usize, test: usize) -> PathBuf {
    let data = dir.join("data");
    mnist_data::write_split(
        &data,
        mnist_data::Split::Train,
        &mnist_data::synthetic(train, 11),
        false,
    )
    .unwrap();
    mnist_data::write_split(
        &data,
        mnist_data::Split::Test,
        &mnist_data::synthetic(test, 22),
        false,
    )
    .unwrap();
    data
}

/// Flags every test run uses: CPU, one intra-op thread, no progress bar.
pub const BASE: &[&str] = &["--device", "cpu", "--threads", "1", "--progress", "never"];

/// What a finished command did.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// Wall-clock seconds.
    pub secs: f64,
    /// When the command was seen to end.
    pub ended: Instant,
}

impl Output {
    /// Panic with both streams unless the command succeeded.
    pub fn ok(self, what: &str) -> Output {
        assert!(
            self.status.success(),
            "{what} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Start `cmd` with piped output; the pipes are drained on threads.
pub fn spawn(cmd: Command) -> Running {
    let what = format!("{cmd:?}");
    spawn_named(cmd, &what)
}

/// [`spawn`], naming the command `what` in failures. Its stderr is collected line by line, so
/// a test can read it while the command runs ([`Running::stderr_so_far`],
/// [`Running::wait_line`]).
pub fn spawn_named(mut cmd: Command, what: &str) -> Running {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    for v in [
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "MNIST_RENDEZVOUS",
        "MNIST_RUN_ID",
        "MNIST_GPUS",
        "MNIST_STORE",
    ] {
        cmd.env_remove(v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    });
    let err = Arc::new(Mutex::new(String::new()));
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let lines = err.clone();
    let err_thread = std::thread::spawn(move || {
        let mut line = Vec::new();
        while stderr.read_until(b'\n', &mut line).is_ok_and(|k| k > 0) {
            lines
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&line));
            line.clear();
        }
    });
    Running {
        child,
        out: Some(out),
        err,
        err_thread: Some(err_thread),
        start: Instant::now(),
        what: what.to_string(),
    }
}

/// A started command; dropping it unwaited (a failed test) kills it.
pub struct Running {
    /// The process.
    pub child: std::process::Child,
    out: Option<std::thread::JoinHandle<String>>,
    /// Its stderr so far (line by line).
    err: Arc<Mutex<String>>,
    err_thread: Option<std::thread::JoinHandle<()>>,
    start: Instant,
    what: String,
}

impl Running {
    /// What the command has written to stderr so far, line by line.
    pub fn stderr_so_far(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Wait for a stderr line containing `needle` and return it; fail the test after
    /// [`DEADLINE`].
    pub fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(l) = self.stderr_so_far().lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{}: no line with {needle:?} within {DEADLINE:?}:\n{}",
                self.what,
                self.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the command (at most [`DEADLINE`]) and fail the test, with both streams,
    /// unless it succeeded.
    pub fn ok(self) -> Output {
        let what = self.what.clone();
        self.wait(DEADLINE).ok(&what)
    }

    /// Wait for the command, killing it and failing the test after `deadline`.
    pub fn wait(mut self, deadline: Duration) -> Output {
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if self.start.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} ran longer than {deadline:?}; killed:\n{}",
                    self.what,
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ended = Instant::now();
        if let Some(t) = self.err_thread.take() {
            let _ = t.join();
        }
        Output {
            status,
            stdout: self
                .out
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default(),
            stderr: self.stderr_so_far(),
            secs: ended.duration_since(self.start).as_secs_f64(),
            ended,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `bin` with `args` (all as strings) to completion.
pub fn run(bin: &Path, args: Vec<String>) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    spawn(cmd).wait(DEADLINE)
}

/// Turn a list of displayable things into owned argument strings.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$(format!("{}", $a)),*] };
}

/// `BASE` followed by `extra`.
pub fn with_base(extra: Vec<String>) -> Vec<String> {
    BASE.iter().map(|s| s.to_string()).chain(extra).collect()
}

/// Run the worker with `BASE` plus `extra`.
pub fn worker(extra: Vec<String>) -> Output {
    run(&worker_bin(), with_base(extra))
}

/// True when `line` starts with the reference's `MM/DD HH:MM:SS AM | ` prefix.
pub fn has_log_prefix(line: &str) -> bool {
    let b = line.as_bytes();
    if b.len() < 21 {
        return false;
    }
    let digits = [0, 1, 3, 4, 6, 7, 9, 10, 12, 13];
    digits.iter().all(|&i| b[i].is_ascii_digit())
        && b[2] == b'/'
        && b[5] == b' '
        && b[8] == b':'
        && b[11] == b':'
        && b[14] == b' '
        && (&b[15..17] == b"AM" || &b[15..17] == b"PM")
        && &b[17..20] == b" | "
}

/// Evaluate `model` with `--evaluate`; returns (correct, count, loss) from its output.
pub fn evaluate(data: &Path, out: &Path, model: &Path) -> (u64, u64, f64) {
    let o = worker(args![
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--evaluate",
        model.display()
    ])
    .ok("--evaluate");
    assert!(
        !o.stdout.contains("Train Epoch"),
        "--evaluate trained:\n{}",
        o.stdout
    );
    last_test_line(&o.stdout).unwrap_or_else(|| panic!("no Test set line in:\n{}", o.stdout))
}

/// `(correct, count, average loss)` from the last `Test set: … Accuracy: c/N` line in `text`.
pub fn last_test_line(text: &str) -> Option<(u64, u64, f64)> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("Test set: Average loss: "))?;
    let loss: f64 = line
        .split("Average loss: ")
        .nth(1)?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()?;
    let acc = line.split("Accuracy: ").nth(1)?.split_whitespace().next()?;
    let (c, n) = acc.split_once('/')?;
    Some((c.parse().ok()?, n.trim_end_matches(',').parse().ok()?, loss))
}

/// The `metrics.jsonl` records in `dir`.
pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad metrics line {l:?}: {e}")))
        .collect()
}

/// The flat parameters stored in `<dir>/checkpoint.bin`.
pub fn checkpoint_params(dir: &Path) -> Vec<f32> {
    mnist_train::resume::load(&mnist_train::resume::path_in(dir))
        .unwrap()
        .params
}

/// The largest `|a - b|` and the largest `|a|`.
pub fn max_diff(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "parameter counts differ");
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let m = a.iter().map(|x| x.abs() as f64).fold(0.0, f64::max);
    (d, m)
}

/// A fresh temporary folder.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mnist-e2e-")
        .tempdir()
        .unwrap()
}

/// Processes whose command line holds `needle` (an argument), as (pid, argv).
pub fn processes_with(needle: &str) -> Vec<(u32, Vec<String>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        if argv.iter().any(|a| a == needle) {
            v.push((pid, argv));
        }
    }
    v
}

/// The `RANK` the launcher gave process `pid` (its identity is in its environment).
pub fn rank_of(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("RANK=").map(str::to_string))
}

/// Launcher flags of the several-node tests: `BASE` plus synthetic data `data`, CPU, output
/// `out`, a log line every `log_interval` steps, test batches of 100, a 2 s grace period, then
/// `extra`.
pub fn node_flags(data: &Path, out: &Path, log_interval: u32, extra: Vec<String>) -> Vec<String> {
    let mut a = with_base(args![
        "--backend",
        "cpu",
        "--data",
        data.display(),
        "--path",
        out.display(),
        "--log-interval",
        log_interval,
        "--test-batch-size",
        100,
        "--grace-period",
        2,
    ]);
    a.extend(extra);
    a
}

/// Wait (at most [`DEADLINE`]) until `file` contains `needle`.
pub fn wait_for_log(file: &Path, needle: &str) {
    let t0 = Instant::now();
    loop {
        let log = std::fs::read_to_string(file).unwrap_or_default();
        if log.contains(needle) {
            return;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "{needle:?} never appeared in {}:\n{log}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
