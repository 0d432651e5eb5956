//! The fault-injection test hook: `MNIST_FAULT` ([`crate::contract::ENV_FAULT`]) names faults
//! that a worker injects into itself at an exact global step, so tests (and people) can place
//! a crash, a hang or a straggler precisely. Nothing of it runs unless the variable is set.
//!
//! Syntax: one or more faults separated by `,`, each `<rank>:<step>:<kind>[=value][@<round>]`:
//!
//! | kind | what rank `<rank>` does at global step `<step>` |
//! |---|---|
//! | `crash` | dies by SIGSEGV (as a segmentation fault would) |
//! | `abort` | calls `abort()` (SIGABRT, as a failed assertion in C++ would) |
//! | `exit-code[=N]` | exits at once with code N (default 1; 0..=255) |
//! | `hang` | blocks forever without exiting or closing its connections (a stuck rank; it ignores SIGTERM's request to stop between steps) |
//! | `slow[=D]` | sleeps D before the forward pass of *every* step from `<step>` on (a straggler); D is `50ms`, `2s`, or plain milliseconds; default `100ms` |
//! | `corrupt-gradient` | overwrites its local gradient with NaN after the backward pass, before the all-reduce |
//! | `crash-in-checkpoint` | at the first resumable checkpoint it writes from `<step>` on (rank 0 writes them), dies by SIGSEGV after writing the temporary file, before the rename |
//!
//! `<step>` counts optimizer steps from the start of training (0 is the first step of the
//! first epoch; it keeps counting across epochs and after `--resume`); the fault fires when
//! that many steps are done, before the next one begins. `@<round>` is the launcher's restart
//! round in which the fault acts ([`crate::contract::ENV_RESTART_ROUND`]; default `@0`: only
//! the first attempt, so a job with `--max-restarts` recovers from it), or `@*` for every round.
//! Examples: `1:0:slow=50ms`, `0:30:exit-code=7`, `1:12:hang,2:0:slow=20`, `1:5:crash@*`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What an injected fault does (see the module documentation for the syntax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Die by SIGSEGV.
    Crash,
    /// `abort()`: die by SIGABRT.
    Abort,
    /// Exit at once with this code.
    ExitCode(u8),
    /// Block forever, alive, connections open.
    Hang,
    /// Sleep this long before every step from the fault's step on.
    Slow(Duration),
    /// Fill the local gradient with NaN before the all-reduce.
    CorruptGradient,
    /// Die by SIGSEGV inside the first checkpoint write from the fault's step on, between
    /// writing the temporary file and renaming it.
    CrashInCheckpoint,
}

/// `slow` without a value sleeps this long per step.
pub const DEFAULT_SLOW: Duration = Duration::from_millis(100);

/// In which restart rounds of the launcher a fault acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounds {
    /// Only in this round (`@N`; default `@0`, the first attempt).
    Only(u32),
    /// In every round (`@*`).
    Every,
}

/// One fault: which rank, from which global step, what, in which restart rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Global rank that injects it.
    pub rank: usize,
    /// Global step (optimizer steps done) at which it fires.
    pub step: u64,
    /// What happens.
    pub kind: FaultKind,
    /// The restart rounds it acts in.
    pub rounds: Rounds,
}

/// The faults `MNIST_FAULT` asks for (empty when it is unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// In the order written.
    pub faults: Vec<Fault>,
}

/// `MNIST_FAULT` cannot be understood; the message quotes the whole value and the part at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}={value}: {detail} (expected <rank>:<step>:<kind>[=value] separated by ',', kinds: crash, abort, exit-code[=N], hang, slow[=MS|Dms|Ds], corrupt-gradient, crash-in-checkpoint; optional @<restart round> or @*)", var = crate::contract::ENV_FAULT)]
pub struct FaultError {
    /// The variable's whole value.
    pub value: String,
    /// What is wrong with it.
    pub detail: String,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Crash => write!(f, "crash"),
            FaultKind::Abort => write!(f, "abort"),
            FaultKind::ExitCode(n) => write!(f, "exit-code={n}"),
            FaultKind::Hang => write!(f, "hang"),
            FaultKind::Slow(d) => write!(f, "slow={}ms", d.as_millis()),
            FaultKind::CorruptGradient => write!(f, "corrupt-gradient"),
            FaultKind::CrashInCheckpoint => write!(f, "crash-in-checkpoint"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.rank, self.step, self.kind)?;
        match self.rounds {
            Rounds::Only(0) => Ok(()),
            Rounds::Only(r) => write!(f, "@{r}"),
            Rounds::Every => write!(f, "@*"),
        }
    }
}

/// Parse one `<rank>:<step>:<kind>[=value]`; the error is the detail only.
fn parse_one(s: &str) -> Result<Fault, String> {
    let parts: Vec<&str> = s.trim().splitn(3, ':').collect();
    let [rank, step, kind] = parts[..] else {
        return Err(format!("`{s}` has not three ':'-separated fields"));
    };
    let rank = rank
        .trim()
        .parse()
        .map_err(|_| format!("rank `{rank}` in `{s}` is not a whole number"))?;
    let step = step
        .trim()
        .parse()
        .map_err(|_| format!("step `{step}` in `{s}` is not a whole number"))?;
    let (kind, rounds) = match kind.rsplit_once('@') {
        None => (kind, Rounds::Only(0)),
        Some((k, "*")) => (k, Rounds::Every),
        Some((k, r)) => (
            k,
            Rounds::Only(r.trim().parse().map_err(|_| {
                format!("restart round `@{r}` in `{s}` is not a whole number or `*`")
            })?),
        ),
    };
    let (name, value) = match kind.trim().split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (kind.trim(), None),
    };
    let no_value = |k: FaultKind| match value {
        None => Ok(k),
        Some(v) => Err(format!("`{name}` takes no value (got `={v}` in `{s}`)")),
    };
    let kind = match name {
        "crash" => no_value(FaultKind::Crash)?,
        "abort" => no_value(FaultKind::Abort)?,
        "hang" => no_value(FaultKind::Hang)?,
        "corrupt-gradient" => no_value(FaultKind::CorruptGradient)?,
        "crash-in-checkpoint" => no_value(FaultKind::CrashInCheckpoint)?,
        "exit-code" => FaultKind::ExitCode(match value {
            None => 1,
            Some(v) => v
                .parse()
                .map_err(|_| format!("exit code `{v}` in `{s}` is not a number in 0..=255"))?,
        }),
        "slow" => FaultKind::Slow(match value {
            None => DEFAULT_SLOW,
            Some(v) => parse_duration(v).ok_or_else(|| {
                format!("duration `{v}` in `{s}` is not like 50ms, 2s or 50 (milliseconds)")
            })?,
        }),
        other => return Err(format!("unknown kind `{other}` in `{s}`")),
    };
    Ok(Fault {
        rank,
        step,
        kind,
        rounds,
    })
}

/// `50ms`, `2s`, `0.5s`, `50` (milliseconds); at most an hour.
fn parse_duration(v: &str) -> Option<Duration> {
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        (v, 1e-3)
    };
    let x: f64 = num.trim().parse().ok()?;
    let secs = x * scale;
    (secs.is_finite() && (0.0..=3600.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

impl FromStr for FaultPlan {
    type Err = FaultError;

    fn from_str(s: &str) -> Result<FaultPlan, FaultError> {
        let err = |detail: String| FaultError {
            value: s.to_string(),
            detail,
        };
        if s.trim().is_empty() {
            return Ok(FaultPlan::default());
        }
        let faults = s
            .split(',')
            .map(|one| parse_one(one).map_err(err))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FaultPlan { faults })
    }
}

impl FaultPlan {
    /// The plan in `MNIST_FAULT` (empty when unset or empty).
    pub fn from_env() -> Result<FaultPlan, FaultError> {
        match std::env::var(crate::contract::ENV_FAULT) {
            Ok(v) => v.parse(),
            Err(std::env::VarError::NotPresent) => Ok(FaultPlan::default()),
            Err(std::env::VarError::NotUnicode(v)) => Err(FaultError {
                value: v.to_string_lossy().into_owned(),
                detail: "not valid UTF-8".into(),
            }),
        }
    }

    /// An error when a fault names a rank the job does not have (it could never fire).
    pub fn check_world(&self, world_size: usize) -> Result<(), FaultError> {
        match self.faults.iter().find(|f| f.rank >= world_size) {
            Some(f) => Err(FaultError {
                value: self.to_string(),
                detail: format!(
                    "rank {} in `{f}` is not below the world size {world_size}",
                    f.rank
                ),
            }),
            None => Ok(()),
        }
    }

    /// The faults that `rank` injects in restart round `round`.
    pub fn for_process(&self, rank: usize, round: u32) -> FaultPlan {
        FaultPlan {
            faults: self
                .faults
                .iter()
                .filter(|f| f.rank == rank)
                .filter(|f| match f.rounds {
                    Rounds::Only(r) => r == round,
                    Rounds::Every => true,
                })
                .copied()
                .collect(),
        }
    }

    /// Whether there is nothing to inject.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// The faults of this plan that fire once, exactly at `step` (all but `slow` and
    /// `crash-in-checkpoint`), in the order written.
    pub fn firing_at(&self, step: u64) -> impl Iterator<Item = &Fault> + '_ {
        self.faults.iter().filter(move |f| {
            f.step == step && !matches!(f.kind, FaultKind::Slow(_) | FaultKind::CrashInCheckpoint)
        })
    }

    /// Whether a `crash-in-checkpoint` fault is in effect at `step` (placed at or before it).
    pub fn crashes_in_checkpoint(&self, step: u64) -> bool {
        self.faults
            .iter()
            .any(|f| f.kind == FaultKind::CrashInCheckpoint && f.step <= step)
    }

    /// How long to sleep before `step`: the sum of every `slow` fault in effect (from its step
    /// on).
    pub fn slow_before(&self, step: u64) -> Duration {
        self.faults
            .iter()
            .filter(|f| f.step <= step)
            .filter_map(|f| match f.kind {
                FaultKind::Slow(d) => Some(d),
                _ => None,
            })
            .sum()
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, x) in self.faults.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(s: &str) -> Vec<Fault> {
        s.parse::<FaultPlan>().unwrap().faults
    }

    fn err(s: &str) -> String {
        s.parse::<FaultPlan>().unwrap_err().to_string()
    }

    #[test]
    fn every_kind_parses() {
        let f = |rank, step, kind| Fault {
            rank,
            step,
            kind,
            rounds: Rounds::Only(0),
        };
        assert_eq!(plan("1:0:crash"), [f(1, 0, FaultKind::Crash)]);
        assert_eq!(plan("0:3:abort"), [f(0, 3, FaultKind::Abort)]);
        assert_eq!(plan("0:30:exit-code=7"), [f(0, 30, FaultKind::ExitCode(7))]);
        assert_eq!(plan("0:30:exit-code"), [f(0, 30, FaultKind::ExitCode(1))]);
        assert_eq!(plan("2:5:hang"), [f(2, 5, FaultKind::Hang)]);
        assert_eq!(
            plan("1:0:corrupt-gradient"),
            [f(1, 0, FaultKind::CorruptGradient)]
        );
        let ms = |n| FaultKind::Slow(Duration::from_millis(n));
        assert_eq!(plan("1:0:slow=50ms"), [f(1, 0, ms(50))]);
        assert_eq!(plan("1:0:slow=50"), [f(1, 0, ms(50))]);
        assert_eq!(plan("1:0:slow=2s"), [f(1, 0, ms(2000))]);
        assert_eq!(plan("1:0:slow=0.25s"), [f(1, 0, ms(250))]);
        assert_eq!(plan("1:0:slow"), [f(1, 0, FaultKind::Slow(DEFAULT_SLOW))]);
        assert_eq!(
            plan(" 1:12:hang , 2:0:slow=20 "),
            [f(1, 12, FaultKind::Hang), f(2, 0, ms(20))]
        );
        assert!(plan("").is_empty());
    }

    #[test]
    fn display_round_trips() {
        let s = "1:0:slow=50ms,0:30:exit-code=7,2:5:hang,0:1:crash,1:1:abort,0:0:corrupt-gradient,0:9:crash-in-checkpoint,1:5:crash@*,1:6:exit-code=3@2";
        let p: FaultPlan = s.parse().unwrap();
        assert_eq!(p.to_string(), s);
        assert_eq!(p.to_string().parse::<FaultPlan>().unwrap(), p);
    }

    #[test]
    fn bad_values_are_named() {
        let e = err("1:x:crash");
        assert!(e.starts_with("MNIST_FAULT=1:x:crash: step `x`"), "{e}");
        assert!(e.contains("expected <rank>:<step>:<kind>"), "{e}");
        assert!(err("1:0").contains("not three ':'-separated fields"));
        assert!(err("-1:0:crash").contains("rank `-1`"));
        assert!(err("0:0:explode").contains("unknown kind `explode`"));
        assert!(err("0:0:crash=3").contains("`crash` takes no value"));
        assert!(err("0:0:exit-code=300").contains("exit code `300`"));
        assert!(err("0:0:slow=fast").contains("duration `fast`"));
        assert!(err("0:0:slow=-5ms").contains("duration `-5ms`"));
        assert!(err("0:0:slow=2h").contains("duration `2h`"));
        assert!(err("0:0:crash@x").contains("restart round `@x`"));
        let e = err("0:0:crash,1:0:oops");
        assert!(
            e.starts_with("MNIST_FAULT=0:0:crash,1:0:oops: unknown kind `oops`"),
            "{e}"
        );
    }

    #[test]
    fn ranks_steps_and_slowness_select_what_fires() {
        let p: FaultPlan = "1:2:slow=10,1:4:slow=5,1:3:exit-code=4,0:3:crash"
            .parse()
            .unwrap();
        let mine = p.for_process(1, 0);
        assert_eq!(mine.faults.len(), 3);
        assert_eq!(mine.slow_before(1), Duration::ZERO);
        assert_eq!(mine.slow_before(2), Duration::from_millis(10));
        assert_eq!(mine.slow_before(9), Duration::from_millis(15));
        let at3: Vec<_> = mine.firing_at(3).collect();
        assert_eq!(at3.len(), 1);
        assert_eq!(at3[0].kind, FaultKind::ExitCode(4));
        assert_eq!(mine.firing_at(2).count(), 0, "slow never fires once");
        let ck: FaultPlan = "0:5:crash-in-checkpoint".parse().unwrap();
        assert_eq!(ck.firing_at(5).count(), 0);
        assert!(!ck.crashes_in_checkpoint(4));
        assert!(ck.crashes_in_checkpoint(5) && ck.crashes_in_checkpoint(6));
        assert!(p.check_world(2).is_ok());
        let e = p.check_world(1).unwrap_err().to_string();
        assert!(
            e.contains("rank 1 in `1:2:slow=10ms` is not below the world size 1"),
            "{e}"
        );
    }

    #[test]
    fn faults_act_in_their_restart_rounds() {
        let p: FaultPlan = "1:5:crash,1:6:abort@2,1:7:hang@*".parse().unwrap();
        let kinds = |round| -> Vec<FaultKind> {
            p.for_process(1, round)
                .faults
                .iter()
                .map(|f| f.kind)
                .collect()
        };
        assert_eq!(kinds(0), [FaultKind::Crash, FaultKind::Hang]);
        assert_eq!(kinds(1), [FaultKind::Hang]);
        assert_eq!(kinds(2), [FaultKind::Abort, FaultKind::Hang]);
        assert!(p.for_process(0, 0).is_empty());
    }
}
