//! End-to-end tests of `mnist-launch` with the `fake-worker` binary standing in for
//! `mnist-worker`: success, worker failures, signals to the launcher, output pumping, bad
//! `--path`, concurrent runs. This test process makes itself a child subreaper, so a worker
//! the launcher failed to reap (or left running) is re-parented here and caught by
//! [`assert_all_gone`] instead of vanishing into init.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

const LAUNCH: &str = env!("CARGO_BIN_EXE_mnist-launch");
/// How long anything here may take before the test gives up: generous for a loaded 2-core
/// machine. Tests check what happened (exit codes, signals, messages), never how fast.
const DEADLINE: Duration = Duration::from_secs(60);
const FAKE: &str = env!("CARGO_BIN_EXE_fake-worker");

/// A temp folder with `pids/` (the workers' pid files) and `logs/` (`--path`).
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        static SUBREAPER: Once = Once::new();
        SUBREAPER.call_once(|| {
            nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER")
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pids")).unwrap();
        Case { dir }
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The launcher with `nproc` fake workers, a 1 s grace period and `env` for the workers.
    fn command(&self, nproc: usize, env: &[(&str, &str)]) -> Command {
        self.command_at(nproc, env, &self.logs())
    }

    /// [`Case::command`] with `--path` set to `path`.
    fn command_at(&self, nproc: usize, env: &[(&str, &str)], path: &Path) -> Command {
        let mut c = Command::new(LAUNCH);
        c.args([
            "--worker-bin",
            FAKE,
            "--grace-period",
            "1",
            "--device",
            "cpu",
            "--nproc",
        ])
        .arg(nproc.to_string())
        .arg("--path")
        .arg(path)
        .env("FAKE_PID_DIR", self.dir.path().join("pids"))
        .envs(env.iter().copied());
        // The launcher keeps signals that were ignored when it started (nohup, or a shell's
        // background job ignoring SIGINT), as it should; the tests must not depend on how the
        // test runner itself was started, so the launcher starts with default dispositions.
        // SAFETY: only async-signal-safe calls (sigaction) between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
                let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
                for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
                    sigaction(sig, &dfl).map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        c
    }

    fn spawn(&self, nproc: usize, env: &[(&str, &str)]) -> Child {
        self.command(nproc, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `(rank, pid)` from the pid files written so far.
    fn worker_pids(&self) -> Vec<(usize, i32)> {
        let mut v: Vec<(usize, i32)> = std::fs::read_dir(self.dir.path().join("pids"))
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let rank = name
                    .strip_prefix("rank")?
                    .strip_suffix(".pid")?
                    .parse()
                    .ok()?;
                let pid = std::fs::read_to_string(self.dir.path().join("pids").join(&name)).ok()?;
                Some((rank, pid.trim().parse().ok()?))
            })
            .collect();
        v.sort();
        v
    }

    fn wait_for_workers(&self, n: usize) -> Vec<(usize, i32)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let pids = self.worker_pids();
            if pids.len() == n {
                return pids;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} workers started",
                pids.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self, rank: usize) -> String {
        std::fs::read_to_string(self.logs().join(format!("rank{rank}.log"))).unwrap()
    }
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// Every pid must stop existing (ESRCH): not running, and not a zombie (a zombie left by the
/// launcher would be re-parented to this subreaper and stay visible, as would a worker left
/// running: the fake workers here hang until killed, so waiting longer never hides either).
fn assert_all_gone(pids: &[(usize, i32)]) {
    assert!(!pids.is_empty());
    let deadline = Instant::now() + DEADLINE;
    for &(rank, pid) in pids {
        while kill(Pid::from_raw(pid), None) != Err(nix::errno::Errno::ESRCH) {
            if Instant::now() > deadline {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                panic!("worker rank {rank} (pid {pid}) still exists after the launcher exited");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The launcher's output; a launcher still alive after [`DEADLINE`] is killed (the test then
/// fails on its exit status) so that the suite never hangs.
fn output_within_deadline(child: Child) -> Output {
    let launcher = Pid::from_raw(child.id() as i32);
    // `done` keeps the watchdog off a pid reused after the reap.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(launcher, Signal::SIGKILL);
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    out
}

fn error_lines(o: &Output) -> Vec<String> {
    text(&o.stderr)
        .lines()
        .filter(|l| l.starts_with("mnist-launch: error:"))
        .map(String::from)
        .collect()
}

#[test]
fn all_workers_succeed() {
    let case = Case::new();
    let out = case
        .command(3, &[("FAKE_SLEEP_MS", "100")])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for r in 0..3 {
        let log = case.log(r);
        assert!(log.contains(&format!("rank {r} of 3 ")), "{log}");
        assert!(
            log.contains(&format!("rank {r}: hello on stderr")) && log.contains("done"),
            "{log}"
        );
    }
    // Rank 0 is echoed to the console, stdout to stdout and stderr to stderr; others are not.
    assert!(
        stdout.contains("rank 0 of 3") && !stdout.contains("rank 1 of 3"),
        "{stdout}"
    );
    assert!(
        stderr.contains("rank 0: hello on stderr") && !stderr.contains("rank 2: hello"),
        "{stderr}"
    );
    assert!(stderr.contains("starting 3 worker(s)"), "{stderr}");
    // The rendezvous file is per run and gone afterwards.
    let rdzv = stdout
        .split("rendezvous=")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap();
    assert!(
        rdzv.contains("mnist-ddp-") && case.log(2).contains(rdzv),
        "{stdout}"
    );
    assert!(!Path::new(rdzv).exists());
    assert_all_gone(&case.worker_pids());
}

#[test]
fn single_worker_logs_and_has_no_rendezvous() {
    let case = Case::new();
    let out = case.command(1, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("rank 0 of 1 pid="));
    assert!(
        case.log(0).contains("rendezvous= run_id="),
        "{}",
        case.log(0)
    );
}

#[test]
fn first_failure_is_reported_and_the_rest_are_stopped() {
    let case = Case::new();
    let env = [
        ("FAKE_EXIT_RANK", "1"),
        ("FAKE_EXIT_CODE", "7"),
        ("FAKE_HANG", "1"),
    ];
    // The other ranks hang until stopped: the launcher returning at all (and the SIGTERM
    // below) shows it stopped them.
    let out = output_within_deadline(case.spawn(3, &env));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let pids = case.worker_pids();
    assert_eq!(pids.len(), 3);
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!(
            "worker rank 1 (pid {}) exited with code 7",
            pids[1].1
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("[rank1] rank 1: failing on purpose with code 7"),
        "{stderr}"
    );
    assert!(
        stderr.contains("worker rank 0")
            && stderr.contains("killed by signal SIGTERM (stopped by the launcher)")
    );
    assert_all_gone(&pids);
}

#[test]
fn death_by_signal_names_the_signal() {
    let case = Case::new();
    let env = [
        ("FAKE_SIGNAL_RANK", "1"),
        ("FAKE_SIGNAL", "SIGSEGV"),
        ("FAKE_HANG", "1"),
    ];
    let out = output_within_deadline(case.spawn(2, &env));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let pids = case.worker_pids();
    let errors = error_lines(&out);
    assert!(
        errors[0].contains(&format!(
            "worker rank 1 (pid {}) killed by signal SIGSEGV",
            pids[1].1
        )),
        "{stderr}"
    );
    assert!(stderr.contains("rank 1: raising SIGSEGV"), "{stderr}");
    assert_all_gone(&pids);
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_after_the_grace_period() {
    let case = Case::new();
    let start = Instant::now();
    let env = [
        ("FAKE_EXIT_RANK", "1"),
        ("FAKE_EXIT_CODE", "5"),
        ("FAKE_HANG", "1"),
        ("FAKE_IGNORE_TERM", "1"),
    ];
    let out = output_within_deadline(case.spawn(2, &env));
    let elapsed = start.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // The grace period (1 s) was honoured before SIGKILL; no upper bound on a loaded machine.
    assert!(elapsed >= Duration::from_secs(1), "took {elapsed:?}");
    assert!(stderr.contains("exited with code 5"), "{stderr}");
    assert!(
        stderr.contains("killed by signal SIGKILL (stopped by the launcher)"),
        "{stderr}"
    );
    assert_all_gone(&case.worker_pids());
}

#[test]
fn stop_signals_to_the_launcher_stop_the_workers() {
    for (sig, code) in [
        (Signal::SIGTERM, 143),
        (Signal::SIGINT, 130),
        (Signal::SIGHUP, 129),
    ] {
        let case = Case::new();
        let child = case.spawn(2, &[("FAKE_HANG", "1")]);
        let pids = case.wait_for_workers(2);
        let launcher = Pid::from_raw(child.id() as i32);
        kill(launcher, sig).unwrap();
        let out = output_within_deadline(child);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{sig}: {stderr}");
        assert!(
            error_lines(&out)[0].contains(&format!("stopped by {}", sig.as_str())),
            "{stderr}"
        );
        assert_all_gone(&pids);
    }
}

#[test]
fn workers_die_with_a_sigkilled_launcher() {
    let case = Case::new();
    let mut child = case.spawn(2, &[("FAKE_HANG", "1")]);
    let pids = case.wait_for_workers(2);
    child.kill().unwrap();
    child.wait().unwrap();
    // The orphans are re-parented to this subreaper: reap them to see how they ended.
    let deadline = Instant::now() + DEADLINE;
    let kill_all = |pids: &[(usize, i32)]| {
        for &(_, pid) in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    };
    for &(rank, pid) in &pids {
        loop {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    assert_eq!(sig, Signal::SIGTERM, "rank {rank}");
                    break;
                }
                other => {
                    kill_all(&pids);
                    panic!(
                        "worker rank {rank} (pid {pid}) after the launcher's SIGKILL: {other:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn heavy_output_on_both_streams_does_not_block() {
    let case = Case::new();
    let n = 200_000;
    let out = case
        .command(2, &[("FAKE_SPAM", &n.to_string())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for r in 0..2 {
        // The rank line, the stderr greeting, n lines per stream, "done".
        assert_eq!(case.log(r).lines().count(), 2 * n + 3, "rank {r}");
    }
    assert_eq!(text(&out.stdout).lines().count(), n + 2);
    assert!(text(&out.stdout).contains(&format!("rank 0 stdout line {}\n", n - 1)));
    assert_all_gone(&case.worker_pids());
}

#[test]
fn unusable_path_is_one_clear_error() {
    let case = Case::new();
    let file = case.dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = case.command_at(2, &[], &file.join("sub")).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("--path") && errors[0].contains("a-file/sub"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(case.worker_pids().is_empty(), "no worker may start");
}

#[test]
fn bad_flags_exit_with_usage_code() {
    let case = Case::new();
    let out = case.command(0, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        error_lines(&out),
        ["mnist-launch: error: invalid value 0 for --nproc: expected an integer ≥ 1"]
    );
}

#[test]
fn gpus_reach_the_workers() {
    let case = Case::new();
    let mut c = case.command(2, &[("CUDA_VISIBLE_DEVICES", "4,5,6")]);
    let out = c.args(["--gpus", "2,0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(case.log(1).contains("gpus=2,0 "), "{}", case.log(1));
}

#[test]
fn concurrent_runs_use_different_rendezvous_files() {
    let (a, b) = (Case::new(), Case::new());
    let env = [("FAKE_SLEEP_MS", "300")];
    let (ca, cb) = (a.spawn(2, &env), b.spawn(2, &env));
    let (oa, ob) = (
        ca.wait_with_output().unwrap(),
        cb.wait_with_output().unwrap(),
    );
    assert!(oa.status.success() && ob.status.success());
    let rdzv = |case: &Case, rank| {
        let log = case.log(rank);
        log.split("rendezvous=")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap()
            .to_string()
    };
    assert_eq!(rdzv(&a, 0), rdzv(&a, 1));
    assert_eq!(rdzv(&b, 0), rdzv(&b, 1));
    assert_ne!(rdzv(&a, 0), rdzv(&b, 0));
}

#[test]
fn a_worker_refusing_its_input_makes_the_launcher_exit_with_the_usage_code() {
    let case = Case::new();
    let env = [
        ("FAKE_EXIT_RANK", "0"),
        ("FAKE_EXIT_CODE", "2"),
        ("FAKE_HANG", "1"),
    ];
    let out = output_within_deadline(case.spawn(2, &env));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors = error_lines(&out);
    assert!(
        errors[0].contains("worker rank 0") && errors[0].contains("exited with code 2 (bad input)"),
        "{stderr}"
    );
}

/// A memory cgroup with a limit, for one test (cgroup v1's memory controller or cgroup v2);
/// removed on drop once its processes are gone.
struct MemCgroup {
    dir: PathBuf,
}

impl MemCgroup {
    /// `None` (with the reason) when no memory cgroup can be made here.
    fn create(limit: u64) -> Result<MemCgroup, String> {
        let name = format!("mnist-launch-test-{}", std::process::id());
        let tries = [
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes"),
            ("/sys/fs/cgroup", "memory.max"),
        ];
        let mut why = Vec::new();
        for (root, limit_file) in tries {
            if !Path::new(root).join(limit_file).exists()
                && !Path::new(root).join("cgroup.controllers").exists()
            {
                why.push(format!("{root}: no memory controller"));
                continue;
            }
            let dir = Path::new(root).join(&name);
            if let Err(e) = std::fs::create_dir(&dir) {
                why.push(format!("{}: {e}", dir.display()));
                continue;
            }
            let cg = MemCgroup { dir };
            match std::fs::write(cg.dir.join(limit_file), limit.to_string()) {
                Ok(()) => return Ok(cg),
                Err(e) => why.push(format!("{}: {e}", cg.dir.join(limit_file).display())),
            }
        }
        Err(why.join("; "))
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // Killed processes leave the cgroup as they are reaped; give them time.
        let deadline = Instant::now() + DEADLINE;
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The OOM-kill count is machine-wide: the two tests that read it do not run side by side.
static OOM_COUNTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_worker_killed_by_the_oom_killer_is_reported_as_such() {
    const TEST: &str = "a_worker_killed_by_the_oom_killer_is_reported_as_such";
    let _one_at_a_time = OOM_COUNTER.lock().unwrap_or_else(|p| p.into_inner());
    if !mnist_testkit::root(TEST, "creates a memory cgroup") {
        return;
    }
    let cgroup = match MemCgroup::create(64 << 20) {
        Ok(c) => c,
        Err(why) => {
            mnist_testkit::skip(TEST, "memcg", &why);
            return;
        }
    };
    let case = Case::new();
    let dir = cgroup.dir.display().to_string();
    let env = [
        ("FAKE_OOM_RANK", "1"),
        ("FAKE_OOM_CGROUP", dir.as_str()),
        ("FAKE_HANG", "1"),
    ];
    let out = output_within_deadline(case.spawn(2, &env));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors = error_lines(&out);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("worker rank 1")
            && errors[0].contains("killed by signal SIGKILL")
            && errors[0].contains("out-of-memory killer"),
        "{stderr}"
    );
    assert!(stderr.contains("allocating until"), "{stderr}");
    println!("{}", errors[0]);
    assert_all_gone(&case.worker_pids());
    drop(cgroup);
}

#[test]
fn a_worker_killed_by_a_plain_sigkill_is_not_blamed_on_memory() {
    let _one_at_a_time = OOM_COUNTER.lock().unwrap_or_else(|p| p.into_inner());
    let case = Case::new();
    let env = [
        ("FAKE_SIGNAL_RANK", "1"),
        ("FAKE_SIGNAL", "SIGKILL"),
        ("FAKE_HANG", "1"),
    ];
    let out = output_within_deadline(case.spawn(2, &env));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors = error_lines(&out);
    assert!(errors[0].contains("killed by signal SIGKILL"), "{stderr}");
    assert!(!errors[0].contains("out-of-memory"), "{stderr}");
}
