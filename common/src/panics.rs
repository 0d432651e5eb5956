//! Panics as one-line errors. tch reports libtorch errors (shape mismatches, out of memory)
//! by panicking; a panic hook would print a multi-line message and a backtrace. Instead the
//! binaries install [`install_quiet_hook`], which only remembers where the panic happened,
//! and [`catch`] turns a panic into a [`Panic`] value that the caller reports as an error —
//! libtorch's own message for a libtorch error ([`Panic::libtorch_message`]).

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// Where the last panic on this thread happened (`file:line`).
    static LAST_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replace the default panic hook (message and backtrace on stderr) by one that prints nothing
/// and records the panic's location for [`catch`] on the same thread.
pub fn install_quiet_hook() {
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        LAST_LOCATION.with(|c| *c.borrow_mut() = loc);
    }));
}

/// A caught panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panic {
    /// The panic message (the payload's text).
    pub message: String,
    /// `file:line` of the panic, when the quiet hook recorded it.
    pub location: Option<String>,
}

impl Panic {
    fn from_payload(payload: Box<dyn Any + Send>) -> Panic {
        let message = if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else {
            "(a panic without a message)".to_string()
        };
        Panic {
            message,
            location: LAST_LOCATION.with(|c| c.borrow_mut().take()),
        }
    }

    /// libtorch's own message, first line only, when the panic is tch unwrapping a libtorch
    /// error (`… Torch("<message>\nException raised from …")`).
    pub fn libtorch_message(&self) -> Option<String> {
        let start = self.message.find("Torch(\"")? + "Torch(\"".len();
        let rest = &self.message[start..];
        // The message is Debug-escaped: lines are separated by a literal `\n`.
        let end = [rest.find("\\n"), rest.find("\")")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(rest.len());
        let text = rest[..end].replace("\\\"", "\"").replace("\\'", "'");
        Some(text.trim().to_string())
    }

    /// One line: libtorch's message, or the panic message's first line and its location.
    pub fn one_line(&self) -> String {
        if let Some(m) = self.libtorch_message() {
            return m;
        }
        let first = self.message.lines().next().unwrap_or("").trim();
        match &self.location {
            Some(l) => format!("{first} (at {l})"),
            None => first.to_string(),
        }
    }
}

impl std::fmt::Display for Panic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Run `f`, returning its panic (if any) as a value instead of unwinding further.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Panic> {
    catch_unwind(AssertUnwindSafe(f)).map_err(Panic::from_payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_errors_become_their_first_line() {
        install_quiet_hook();
        let p = catch(|| {
            let r: Result<(), String> = Err(
                "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)\nException raised from x"
                    .into(),
            );
            #[derive(Debug)]
            #[allow(dead_code)]
            enum E {
                Torch(String),
            }
            r.map_err(E::Torch).unwrap();
        })
        .unwrap_err();
        assert_eq!(
            p.one_line(),
            "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"
        );
        let q = catch(|| panic!("plain\nsecond")).unwrap_err();
        assert!(q.one_line().starts_with("plain (at "), "{}", q.one_line());
        assert_eq!(catch(|| 7).unwrap(), 7);
    }
}
