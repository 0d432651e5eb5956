//! A client of PyTorch's `TCPStore` (torch/csrc/distributed/c10d/TCPStore*.cpp), the store
//! torchrun's agent serves at `MASTER_ADDR:MASTER_PORT` for its workers
//! (`TORCHELASTIC_USE_AGENT_STORE=True`).
//!
//! The wire protocol, as the server (libuv and classic backends alike) parses it: integers in
//! the machine's byte order (little-endian on every platform PyTorch ships for), strings and
//! byte arrays as a `u64` length and the bytes; each request is one command byte and its
//! arguments.
//!
//! | command | request | answer |
//! |---|---|---|
//! | `VALIDATE` (0) | `u32` magic `0x3C85F7CE` (the first message of a connection) | none |
//! | `SET` (1) | key, value | none |
//! | `GET` (3) | key | value (empty if missing) |
//! | `WAIT` (6) | `u64` count, keys | `u8` 0 (`STOP_WAITING`) once all are set |
//! | `CANCEL_WAIT` (12) | — | `u8` 1 (`WAIT_CANCELED`) |
//! | `PING` (13) | `u32` nonce | the nonce |
//!
//! Keys travel with PyTorch's client-side prefix `/` (`TCPStore::keyPrefix_`), so a key `k`
//! set here is the key `k` of a Python `TCPStore` client and vice versa.
//!
//! Like PyTorch's own client, [`TcpStoreClient::get`] waits for the key and then reads it;
//! when the wait times out it cancels the wait so the connection stays usable.

use crate::net::connect_retry;
use crate::RdzvError;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The magic number a client validates itself with.
pub const VALIDATION_MAGIC: u32 = 0x3C85_F7CE;

const VALIDATE: u8 = 0;
const SET: u8 = 1;
const GET: u8 = 3;
const WAIT: u8 = 6;
const CANCEL_WAIT: u8 = 12;
const PING: u8 = 13;
const STOP_WAITING: u8 = 0;
const WAIT_CANCELED: u8 = 1;

/// What PyTorch's `TCPStore` client puts before every key on the wire.
const KEY_PREFIX: &str = "/";

/// Largest value accepted from the server.
const MAX_VALUE: u64 = 64 << 20;

/// A connection to a PyTorch `TCPStore`; every key is put under `prefix/`.
pub struct TcpStoreClient {
    s: TcpStream,
    endpoint: String,
    prefix: String,
}

fn put_bytes(b: &mut Vec<u8>, x: &[u8]) {
    b.extend_from_slice(&(x.len() as u64).to_le_bytes());
    b.extend_from_slice(x);
}

impl TcpStoreClient {
    /// Connect to the `TCPStore` at `endpoint` (`HOST:PORT`), retrying until `deadline`;
    /// validate and ping it, so a port that is not a `TCPStore` is named as such.
    pub fn connect(endpoint: &str, prefix: &str, deadline: Instant) -> Result<Self, RdzvError> {
        let s = connect_retry(
            endpoint,
            deadline,
            "torchrun's TCPStore (MASTER_ADDR:MASTER_PORT)",
        )?;
        let _ = s.set_nodelay(true);
        let mut c = TcpStoreClient {
            s,
            endpoint: endpoint.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
        };
        let mut b = vec![VALIDATE];
        b.extend_from_slice(&VALIDATION_MAGIC.to_le_bytes());
        let nonce = std::process::id() ^ 0x5EED_0000;
        b.push(PING);
        b.extend_from_slice(&nonce.to_le_bytes());
        c.s.write_all(&b).map_err(|e| c.lost("validate", e))?;
        c.s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| c.lost("validate", e))?;
        let mut answer = [0u8; 4];
        match c.s.read_exact(&mut answer) {
            Ok(()) if u32::from_le_bytes(answer) == nonce => Ok(c),
            _ => Err(RdzvError::Lost {
                endpoint: endpoint.to_string(),
                detail: "no PyTorch TCPStore answers there (its ping went unanswered): is MASTER_PORT torchrun's store?".into(),
            }),
        }
    }

    fn lost(&self, what: &str, e: io::Error) -> RdzvError {
        RdzvError::Lost {
            endpoint: self.endpoint.clone(),
            detail: format!("TCPStore {what} failed: {e}"),
        }
    }

    fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            format!("{KEY_PREFIX}{key}")
        } else {
            format!("{KEY_PREFIX}{}/{key}", self.prefix)
        }
    }

    /// Set `key` to `value`.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), RdzvError> {
        let mut b = vec![SET];
        put_bytes(&mut b, self.key(key).as_bytes());
        put_bytes(&mut b, value);
        self.s.write_all(&b).map_err(|e| self.lost("set", e))
    }

    /// The value of `key`, waiting up to `wait` for it to be set (`None` if it was not).
    pub fn get(&mut self, key: &str, wait: Duration) -> Result<Option<Vec<u8>>, RdzvError> {
        let full = self.key(key);
        let mut b = vec![WAIT];
        b.extend_from_slice(&1u64.to_le_bytes());
        put_bytes(&mut b, full.as_bytes());
        self.s.write_all(&b).map_err(|e| self.lost("wait", e))?;
        self.s
            .set_read_timeout(Some(wait.max(Duration::from_millis(10))))
            .map_err(|e| self.lost("wait", e))?;
        let mut r = [0u8; 1];
        match self.s.read_exact(&mut r) {
            Ok(()) if r[0] == STOP_WAITING => {}
            Ok(()) => {
                return Err(self.lost(
                    "wait",
                    io::Error::other(format!("unexpected answer byte {}", r[0])),
                ))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.cancel_wait()?;
                return Ok(None);
            }
            Err(e) => return Err(self.lost("wait", e)),
        }
        let mut b = vec![GET];
        put_bytes(&mut b, full.as_bytes());
        self.s.write_all(&b).map_err(|e| self.lost("get", e))?;
        self.s
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| self.lost("get", e))?;
        let mut len = [0u8; 8];
        self.s
            .read_exact(&mut len)
            .map_err(|e| self.lost("get", e))?;
        let n = u64::from_le_bytes(len);
        if n > MAX_VALUE {
            return Err(self.lost(
                "get",
                io::Error::other(format!("value of {n} bytes is too large")),
            ));
        }
        let mut v = vec![0u8; n as usize];
        self.s.read_exact(&mut v).map_err(|e| self.lost("get", e))?;
        Ok(Some(v))
    }

    /// After a timed-out wait: cancel it, reading up to the server's `WAIT_CANCELED` (a
    /// `STOP_WAITING` that crossed the cancel on the wire comes first).
    fn cancel_wait(&mut self) -> Result<(), RdzvError> {
        self.s
            .write_all(&[CANCEL_WAIT])
            .map_err(|e| self.lost("cancel wait", e))?;
        self.s
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| self.lost("cancel wait", e))?;
        loop {
            let mut r = [0u8; 1];
            self.s
                .read_exact(&mut r)
                .map_err(|e| self.lost("cancel wait", e))?;
            if r[0] == WAIT_CANCELED {
                return Ok(());
            }
        }
    }
}
