//! The key-value table behind the store, and the request loop of one store connection, shared
//! by node 0's launcher ([`crate::Server`]) and a worker serving the store itself
//! ([`crate::StoreServer`], env:// semantics).

use crate::protocol::{StoreRequest, StoreResponse};
use crate::wire::{read_frame, write_frame};
use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Keys and values, with a condition variable that wakes blocked readers on every set.
#[derive(Default)]
pub(crate) struct Table {
    map: Mutex<HashMap<String, Vec<u8>>>,
    changed: Condvar,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set `key` and wake every reader.
    pub(crate) fn set(&self, key: String, value: Vec<u8>) {
        self.lock().insert(key, value);
        self.changed.notify_all();
    }

    /// The value of `key`, waiting up to `wait` for it.
    pub(crate) fn get(&self, key: &str, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut g = self.lock();
        loop {
            if let Some(v) = g.get(key) {
                return Some(v.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Answer store requests on `s` until the client closes the connection.
pub(crate) fn serve_requests(s: &mut TcpStream, table: &Table) {
    let _ = s.set_read_timeout(None);
    while let Ok(req) = read_frame::<StoreRequest>(s) {
        let resp = match req {
            StoreRequest::Set { key, value } => {
                table.set(key, value);
                StoreResponse::Done
            }
            StoreRequest::Get { key, wait_ms } => {
                match table.get(&key, Duration::from_millis(wait_ms)) {
                    Some(v) => StoreResponse::Value(v),
                    None => StoreResponse::Timeout,
                }
            }
        };
        if write_frame(s, &resp).is_err() {
            return;
        }
    }
}
