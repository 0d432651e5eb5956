//! A stand-in for `mnist-worker` in the launcher's tests. It accepts and ignores every flag,
//! takes its rank from the environment (RANK, WORLD_SIZE), prints `rank R of W …`, and then
//! behaves as the FAKE_* environment variables say:
//!
//! - `FAKE_PID_DIR=dir`: write its pid to `dir/rank<R>.pid` (atomically) once it has printed
//!   its greetings, so a pid file means "up, signal dispositions set, greeting in the log".
//! - `FAKE_IGNORE_TERM=1`: ignore SIGTERM (so only SIGKILL stops it).
//! - `FAKE_SPAM=N`: write N lines to stdout and N to stderr as fast as it can.
//! - `FAKE_EXIT_RANK=r` + `FAKE_EXIT_CODE=c`: rank r exits with code c.
//! - `FAKE_SIGNAL_RANK=r` + `FAKE_SIGNAL=SIGSEGV`: rank r kills itself with that signal.
//!   Both wait until every rank wrote its pid file (with FAKE_PID_DIR; that is the ordering
//!   the tests rely on), then FAKE_DELAY_MS (default 0).
//! - `FAKE_OOM_RANK=r` + `FAKE_OOM_CGROUP=dir`: rank r moves itself into the memory cgroup
//!   `dir` (its `cgroup.procs`; the test set a small limit) and allocates until the kernel's
//!   out-of-memory killer stops it (it gives up with code 99 after 4 GiB, and never allocates
//!   outside the cgroup).
//! - `FAKE_HANG=1`: the other ranks sleep forever.
//! - `FAKE_SLEEP_MS=n`: sleep n ms before exiting 0.

use mnist_common::contract;
use nix::sys::signal::{raise, signal, SigHandler, Signal};
use std::io::Write;
use std::str::FromStr;
use std::time::{Duration, Instant};

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn num<T: FromStr>(k: &str) -> Option<T> {
    var(k).and_then(|v| v.parse().ok())
}

fn wait_for_pid_files(world: usize) {
    let Some(dir) = var("FAKE_PID_DIR") else {
        return;
    };
    // Generous: starting every rank can take a while on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && !(0..world).all(|r| {
            std::path::Path::new(&dir)
                .join(format!("rank{r}.pid"))
                .exists()
        })
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() {
    let rank: usize = num(contract::ENV_RANK).unwrap_or(0);
    let world: usize = num(contract::ENV_WORLD_SIZE).unwrap_or(1);
    if var("FAKE_IGNORE_TERM").is_some() {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }.expect("ignore SIGTERM");
    }
    let env = |k: &str| var(k).unwrap_or_default();
    println!(
        "rank {rank} of {world} pid={} rendezvous={} run_id={} omp={} gpus={} args={}",
        std::process::id(),
        env(contract::ENV_RENDEZVOUS),
        env(contract::ENV_RUN_ID),
        env(contract::ENV_OMP_NUM_THREADS),
        env(contract::ENV_GPUS),
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    eprintln!("rank {rank}: hello on stderr");
    if let Some(dir) = var("FAKE_PID_DIR") {
        let dir = std::path::Path::new(&dir);
        let pid = std::process::id().to_string();
        mnist_common::atomic_file::write_atomic(&dir.join(format!("rank{rank}.pid")), |f| {
            std::io::Write::write_all(f, pid.as_bytes())
        })
        .expect("write pid file");
    }
    if let Some(n) = num::<usize>("FAKE_SPAM") {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        for i in 0..n {
            let _ = writeln!(out, "rank {rank} stdout line {i}");
            let _ = writeln!(err, "rank {rank} stderr line {i}");
        }
    }
    let delay = Duration::from_millis(num("FAKE_DELAY_MS").unwrap_or(0));
    if num::<usize>("FAKE_EXIT_RANK") == Some(rank) {
        wait_for_pid_files(world);
        std::thread::sleep(delay);
        let code: i32 = num("FAKE_EXIT_CODE").unwrap_or(1);
        println!("rank {rank}: failing on purpose with code {code}");
        std::process::exit(code);
    }
    if num::<usize>("FAKE_SIGNAL_RANK") == Some(rank) {
        wait_for_pid_files(world);
        std::thread::sleep(delay);
        let sig = var("FAKE_SIGNAL")
            .and_then(|s| Signal::from_str(&s).ok())
            .unwrap_or(Signal::SIGSEGV);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit only reads the struct passed by reference.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        // Rust's runtime handles SIGSEGV/SIGBUS itself (stack overflow detection): undo that.
        // SAFETY: SIG_DFL installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
        println!("rank {rank}: raising {sig}");
        let _ = std::io::stdout().flush();
        let _ = raise(sig);
        std::thread::sleep(Duration::from_secs(5));
        std::process::exit(99);
    }
    if num::<usize>("FAKE_OOM_RANK") == Some(rank) {
        wait_for_pid_files(world);
        let Some(cgroup) = var("FAKE_OOM_CGROUP") else {
            eprintln!("rank {rank}: FAKE_OOM_RANK needs FAKE_OOM_CGROUP");
            std::process::exit(98);
        };
        let procs = std::path::Path::new(&cgroup).join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
            eprintln!("rank {rank}: cannot join {}: {e}", procs.display());
            std::process::exit(98);
        }
        println!("rank {rank}: allocating until the out-of-memory killer stops me");
        let _ = std::io::stdout().flush();
        let mut hog: Vec<Vec<u8>> = Vec::new();
        while hog.len() < 256 {
            // Non-zero, so every page is written (and charged), not mapped from the zero page.
            hog.push(vec![1u8; 16 << 20]);
        }
        std::process::exit(99);
    }
    if var("FAKE_HANG").is_some() {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if let Some(ms) = num("FAKE_SLEEP_MS") {
        std::thread::sleep(Duration::from_millis(ms));
    }
    println!("rank {rank} done");
}
