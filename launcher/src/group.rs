//! The workers as one group, like torchrun's `SubprocessContext`: they are started together,
//! watched together, and when one fails (or the launcher is told to stop) the rest are
//! stopped with SIGTERM, a shared grace period, then SIGKILL, and every one is reaped.
//!
//! Process tree decisions:
//! - Workers stay in the launcher's process group, so a terminal's Ctrl-C reaches all of them
//!   at once; the launcher also forwards SIGTERM itself, which covers signals sent to the
//!   launcher alone (`kill <pid>`, a batch scheduler).
//! - Each worker asks the kernel for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`), so a
//!   launcher killed with SIGKILL leaves no orphans. The kernel ties this to the *thread* that
//!   forked, so [`ProcessGroup::spawn`] must be called from a thread that outlives the workers
//!   (the launcher uses its main thread).
//! - A [`Drop`] of the group SIGKILLs and reaps whatever is still running, so an early error
//!   or a panic leaves neither orphans nor zombies.

use crate::signals::SignalGuard;
use crate::spec::WorkerSpec;
use mnist_common::contract::EXIT_PEER_FAILED;
use mnist_common::FailureKind;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{getpid, getppid, Pid};
use std::fmt;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often the supervision loop looks at the workers.
const POLL: Duration = Duration::from_millis(20);
/// When the first failure is only "a peer failed", how long to look for the peer's own exit.
const ROOT_CAUSE_WINDOW: Duration = Duration::from_millis(300);

/// The most time given to workers between SIGTERM and SIGKILL when another node failed or was
/// lost (with a 5 s heartbeat timeout, the node stops within 10 s of the loss).
pub const ABORT_GRACE: Duration = Duration::from_secs(2);

/// How a worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal {
        /// The signal number.
        signo: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// Waiting for it failed (should not happen).
    Unknown(String),
}

impl Exit {
    /// Translate a wait status.
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(signo)) => Exit::Signal {
                signo,
                core_dumped: status.core_dumped(),
            },
            (None, None) => Exit::Unknown(format!("{status}")),
        }
    }

    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => {
                write!(f, "exited with code {c}")?;
                match FailureKind::from_exit_code(*c) {
                    Some(FailureKind::BadInput) => write!(f, " (bad input)"),
                    Some(FailureKind::PeerFailed) => write!(f, " (a peer failed)"),
                    _ => Ok(()),
                }
            }
            Exit::Signal { signo, core_dumped } => {
                match Signal::try_from(*signo) {
                    Ok(s) => write!(f, "killed by signal {}", s.as_str())?,
                    Err(_) => write!(f, "killed by signal {signo}")?,
                }
                if *core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
            Exit::Unknown(why) => write!(f, "ended in an unknown way ({why})"),
        }
    }
}

/// A worker that has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exited {
    /// Its rank.
    pub rank: usize,
    /// Its process id.
    pub pid: u32,
    /// How it ended.
    pub exit: Exit,
    /// Whether the launcher stopped it (SIGTERM/SIGKILL after another failure or a signal).
    pub stopped: bool,
    /// Set when it was still running at the end of the grace period after SIGTERM and had to
    /// be killed: why it did not stop ([`Unresponsive`]).
    pub unresponsive: Option<Unresponsive>,
}

/// Why a worker ignored the launcher's SIGTERM until the SIGKILL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unresponsive {
    /// It was stopped (SIGSTOP, SIGTSTP; `/proc/<pid>/stat` state `T`) or traced (`t`).
    Stopped,
    /// It was running or asleep but did not end within the grace period: stuck (deadlocked,
    /// blocked forever) or ignoring SIGTERM.
    NoProgress,
}

impl fmt::Display for Unresponsive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unresponsive::Stopped => write!(f, "it was stopped (SIGSTOP)"),
            Unresponsive::NoProgress => {
                write!(
                    f,
                    "it made no progress and ignored SIGTERM for the grace period"
                )
            }
        }
    }
}

/// The state letter of process `pid` in `/proc/<pid>/stat` (`R`, `S`, `D`, `T`, `t`, `Z`…).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S …`: the command may hold spaces and parentheses; the state follows the
    // last `)`.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// How supervision ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every worker exited with code 0.
    Success,
    /// A worker failed first (the root cause); the others were stopped.
    Failed(Exited),
    /// The launcher received this signal; the workers were stopped.
    Interrupted(Signal),
    /// The job was aborted from outside (another node failed or was lost); the workers were
    /// stopped. The reason names the node.
    Aborted(String),
}

struct Member {
    rank: usize,
    pid: u32,
    child: Child,
    exit: Option<Exit>,
    stopped: bool,
    unresponsive: Option<Unresponsive>,
}

/// The running workers.
#[derive(Default)]
pub struct ProcessGroup {
    members: Vec<Member>,
}

impl ProcessGroup {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start one worker with exactly `spec`'s arguments and environment, stdin from
    /// `/dev/null` and stdout/stderr piped; returns the pipes to read.
    pub fn spawn(&mut self, spec: &WorkerSpec) -> io::Result<(ChildStdout, ChildStderr)> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let launcher = getpid();
        // SAFETY: the closure runs in the forked child before exec. It calls only prctl(2) and
        // getppid(2), both async-signal-safe, and builds its error from an errno without
        // allocating.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)?;
                // The launcher may have died before prctl took effect: then nobody would
                // send the signal, so give up now.
                if getppid() != launcher {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pipes = (child.stdout.take(), child.stderr.take());
        self.members.push(Member {
            rank: spec.identity.rank,
            pid: child.id(),
            child,
            exit: None,
            stopped: false,
            unresponsive: None,
        });
        match pipes {
            (Some(out), Some(err)) => Ok((out, err)),
            _ => Err(io::Error::other(
                "the worker's stdout/stderr pipes are missing",
            )),
        }
    }

    /// `(rank, pid)` of every worker started.
    pub fn pids(&self) -> Vec<(usize, u32)> {
        self.members.iter().map(|m| (m.rank, m.pid)).collect()
    }

    /// How every worker that has ended, ended.
    pub fn exits(&self) -> Vec<Exited> {
        self.members.iter().filter_map(Self::exited).collect()
    }

    /// Workers not yet reaped.
    pub fn running(&self) -> usize {
        self.members.iter().filter(|m| m.exit.is_none()).count()
    }

    fn exited(m: &Member) -> Option<Exited> {
        let exit = m.exit.clone()?;
        Some(Exited {
            rank: m.rank,
            pid: m.pid,
            exit,
            stopped: m.stopped,
            unresponsive: m.unresponsive,
        })
    }

    /// Reap every worker that has ended since the last call, without blocking.
    fn reap(&mut self) -> Vec<Exited> {
        let mut newly = Vec::new();
        for m in self.members.iter_mut().filter(|m| m.exit.is_none()) {
            let exit = match m.child.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => Exit::from_status(status),
                Err(e) => Exit::Unknown(e.to_string()),
            };
            m.exit = Some(exit);
            newly.extend(Self::exited(m));
        }
        newly
    }

    /// Watch the workers until all succeed, one fails, or `signals` reports a stop signal;
    /// in the latter cases stop the rest (see [`ProcessGroup::stop`]). A second signal during
    /// the grace period skips to SIGKILL. `abort` is asked on every look: `Some(reason)` stops
    /// every worker ([`Outcome::Aborted`]; another node failed or was lost).
    pub fn supervise(
        &mut self,
        grace: Duration,
        signals: &SignalGuard,
        abort: &dyn Fn() -> Option<String>,
    ) -> Outcome {
        loop {
            if let Some(sig) = signals.received() {
                let seen = signals.count();
                self.stop(grace, &|| signals.count() > seen);
                return Outcome::Interrupted(sig);
            }
            if let Some(reason) = abort() {
                let seen = signals.count();
                // Workers blocked on a vanished peer cannot finish a step: do not wait long.
                self.stop(grace.min(ABORT_GRACE), &|| signals.count() > seen);
                return Outcome::Aborted(reason);
            }
            let mut failures: Vec<Exited> = self
                .reap()
                .into_iter()
                .filter(|e| !e.exit.success())
                .collect();
            if !failures.is_empty() {
                // "A peer failed" is a symptom: give the peer a moment to show its own exit.
                let deadline = Instant::now() + ROOT_CAUSE_WINDOW;
                while failures.iter().all(is_peer_failed) && Instant::now() < deadline {
                    std::thread::sleep(POLL);
                    failures.extend(self.reap().into_iter().filter(|e| !e.exit.success()));
                }
                let root = failures
                    .iter()
                    .find(|e| !is_peer_failed(e))
                    .unwrap_or(&failures[0])
                    .clone();
                let seen = signals.count();
                self.stop(grace, &|| signals.count() > seen);
                // A terminal's Ctrl-C reaches the workers too; then the signal is the cause.
                return match signals.received() {
                    Some(sig) => Outcome::Interrupted(sig),
                    None => Outcome::Failed(root),
                };
            }
            if self.running() == 0 {
                return Outcome::Success;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Send SIGTERM to every running worker, wait up to `grace` (or until `hurry()`), then
    /// SIGKILL the rest, and reap all of them.
    pub fn stop(&mut self, grace: Duration, hurry: &dyn Fn() -> bool) {
        for m in self.members.iter_mut().filter(|m| m.exit.is_none()) {
            m.stopped = true;
            // Not yet reaped, so the pid cannot have been reused.
            if let Ok(pid) = i32::try_from(m.pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        let mut hurried = false;
        while self.running() > 0 && Instant::now() < deadline {
            if hurry() {
                hurried = true;
                break;
            }
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
            self.reap();
        }
        if !hurried {
            // Whoever is still here ignored SIGTERM for the whole grace period: note why.
            for m in self.members.iter_mut().filter(|m| m.exit.is_none()) {
                m.unresponsive = Some(match proc_state(m.pid) {
                    Some('T' | 't') => Unresponsive::Stopped,
                    _ => Unresponsive::NoProgress,
                });
            }
        }
        self.kill_all();
    }

    /// SIGKILL and reap every worker still running.
    fn kill_all(&mut self) {
        for m in self.members.iter_mut().filter(|m| m.exit.is_none()) {
            m.stopped = true;
            let _ = m.child.kill();
        }
        for m in self.members.iter_mut().filter(|m| m.exit.is_none()) {
            m.exit = Some(match m.child.wait() {
                Ok(status) => Exit::from_status(status),
                Err(e) => Exit::Unknown(e.to_string()),
            });
        }
    }
}

fn is_peer_failed(e: &Exited) -> bool {
    e.exit == Exit::Code(EXIT_PEER_FAILED)
}

impl Drop for ProcessGroup {
    /// Workers nobody waited for (an early error, a panic) are killed and reaped here.
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions() {
        assert_eq!(Exit::Code(7).to_string(), "exited with code 7");
        let segv = Exit::Signal {
            signo: libc::SIGSEGV,
            core_dumped: true,
        };
        assert_eq!(segv.to_string(), "killed by signal SIGSEGV (core dumped)");
        assert_eq!(
            Exit::from_status(ExitStatus::from_raw(9)).to_string(),
            "killed by signal SIGKILL"
        );
        assert_eq!(
            Exit::from_status(ExitStatus::from_raw(3 << 8)),
            Exit::Code(3)
        );
        assert!(Exit::Code(0).success() && !Exit::Code(1).success());
    }

    #[test]
    fn drop_kills_and_reaps() {
        let spec = WorkerSpec {
            identity: mnist_common::contract::WorkerIdentity::single(),
            program: "/bin/sleep".into(),
            args: vec!["30".into()],
            env: vec![],
        };
        let mut g = ProcessGroup::new();
        let _pipes = g.spawn(&spec).unwrap();
        let pid = Pid::from_raw(g.pids()[0].1 as i32);
        assert!(kill(pid, None).is_ok());
        drop(g);
        // Reaped, not a zombie: the pid no longer exists.
        assert_eq!(kill(pid, None), Err(nix::errno::Errno::ESRCH));
    }

    #[test]
    fn a_stopped_worker_is_told_from_a_stuck_one() {
        let spec = |prog: &str, args: &[&str]| WorkerSpec {
            identity: mnist_common::contract::WorkerIdentity::single(),
            program: prog.into(),
            args: args.iter().map(Into::into).collect(),
            env: vec![],
        };
        let mut g = ProcessGroup::new();
        // One ignores SIGTERM (a stuck rank), one is stopped, one stops when asked.
        let _a = g
            .spawn(&spec(
                "/bin/sh",
                &["-c", "trap '' TERM; while :; do sleep 1; done"],
            ))
            .unwrap();
        let _b = g.spawn(&spec("/bin/sleep", &["30"])).unwrap();
        let _c = g.spawn(&spec("/bin/sleep", &["30"])).unwrap();
        let pids = g.pids();
        let stopped = Pid::from_raw(pids[1].1 as i32);
        kill(stopped, Signal::SIGSTOP).unwrap();
        // Wait until the shell has set its trap and the stop has taken effect (events, not a
        // sleep: the trap is in place once the shell runs `sleep`).
        let t0 = Instant::now();
        while !(proc_state(pids[1].1) == Some('T')
            && std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                std::fs::read_to_string(e.path().join("stat"))
                    .is_ok_and(|s| s.contains("(sleep)") && s.contains(&format!(" {} ", pids[0].1)))
            }))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "set-up did not finish"
            );
            std::thread::sleep(POLL);
        }
        g.stop(Duration::from_secs(1), &|| false);
        let exits = g.exits();
        assert_eq!(
            exits[0].unresponsive,
            Some(Unresponsive::NoProgress),
            "{exits:?}"
        );
        assert_eq!(
            exits[1].unresponsive,
            Some(Unresponsive::Stopped),
            "{exits:?}"
        );
        assert_eq!(exits[2].unresponsive, None, "{exits:?}");
        assert!(exits.iter().all(|e| e.stopped));
    }
}
