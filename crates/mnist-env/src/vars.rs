//! Reading variables: typed getters that remember what they read, so the first log line can
//! show the evidence and errors can name the variable and its value.

use crate::EnvError;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// A process environment as a sorted map (`std::env::vars()` collected, or a test fixture).
pub type Env = BTreeMap<String, String>;

/// The environment plus the list of variables read so far.
pub(crate) struct Vars<'a> {
    env: &'a Env,
    used: RefCell<Vec<(String, String)>>,
}

impl<'a> Vars<'a> {
    pub(crate) fn new(env: &'a Env) -> Self {
        Vars {
            env,
            used: RefCell::new(Vec::new()),
        }
    }

    /// Whether `k` is set (to anything, even empty); not recorded.
    pub(crate) fn has(&self, k: &str) -> bool {
        self.env.contains_key(k)
    }

    /// The value of `k`, recorded as evidence.
    pub(crate) fn get(&self, k: &str) -> Option<&'a str> {
        let v = self.env.get(k)?;
        let mut used = self.used.borrow_mut();
        if !used.iter().any(|(n, _)| n == k) {
            used.push((k.to_string(), v.clone()));
        }
        Some(v.as_str())
    }

    /// `k` as a non-negative integer, if set.
    pub(crate) fn num(&self, k: &str) -> Result<Option<usize>, EnvError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| EnvError::Invalid {
                    var: k.to_string(),
                    value: v.to_string(),
                    expected: "a non-negative integer".into(),
                }),
        }
    }

    /// `k` as a non-negative integer; an error naming `engine` when it is missing.
    pub(crate) fn need(&self, engine: &str, k: &str, why: &str) -> Result<usize, EnvError> {
        self.num(k)?.ok_or_else(|| EnvError::Missing {
            engine: engine.to_string(),
            missing: k.to_string(),
            why: why.to_string(),
        })
    }

    /// `k` as a TCP port (1..=65535), if set.
    pub(crate) fn port(&self, k: &str) -> Result<Option<u16>, EnvError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => Ok(Some(p)),
                _ => Err(EnvError::Invalid {
                    var: k.to_string(),
                    value: v.to_string(),
                    expected: "a TCP port 1-65535".into(),
                }),
            },
        }
    }

    /// `k` as a non-empty string, if set.
    pub(crate) fn text(&self, k: &str) -> Result<Option<&'a str>, EnvError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Err(EnvError::Invalid {
                var: k.to_string(),
                value: v.to_string(),
                expected: "a non-empty value".into(),
            }),
            Some(v) => Ok(Some(v.trim())),
        }
    }

    /// Everything read so far, in reading order.
    pub(crate) fn evidence(&self) -> Vec<(String, String)> {
        self.used.borrow().clone()
    }
}

/// FNV-1a, 64 bits: a stable hash (std's hashers are randomly keyed per process).
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
