//! One interface over both stores a worker may meet through: ours (`HOST:PORT`, served by
//! node 0's launcher or by global rank 0) and PyTorch's `TCPStore` under torchrun
//! (`tcpstore://HOST:PORT/PREFIX`). The syntax is that of `MNIST_STORE` / `--store`.

use crate::{RdzvError, StoreClient, TcpStoreClient};
use std::time::{Duration, Instant};

/// A connected key-value store with blocking reads.
pub trait KvStore {
    /// Set `key` to `value`.
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), RdzvError>;
    /// The value of `key`, waiting up to `wait` for it (`None` if it was not set in time).
    fn get(&mut self, key: &str, wait: Duration) -> Result<Option<Vec<u8>>, RdzvError>;
}

impl KvStore for StoreClient {
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), RdzvError> {
        StoreClient::set(self, key, value)
    }
    fn get(&mut self, key: &str, wait: Duration) -> Result<Option<Vec<u8>>, RdzvError> {
        StoreClient::get(self, key, wait)
    }
}

impl KvStore for TcpStoreClient {
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), RdzvError> {
        TcpStoreClient::set(self, key, value)
    }
    fn get(&mut self, key: &str, wait: Duration) -> Result<Option<Vec<u8>>, RdzvError> {
        TcpStoreClient::get(self, key, wait)
    }
}

/// Which store an endpoint names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEndpoint {
    /// Our store at `HOST:PORT`.
    Ours(String),
    /// A PyTorch `TCPStore` at `HOST:PORT`, keys under `prefix`.
    Torch {
        /// `HOST:PORT`.
        addr: String,
        /// Key prefix (may be empty).
        prefix: String,
    },
}

/// The scheme of a PyTorch `TCPStore` endpoint.
pub const TCPSTORE_SCHEME: &str = "tcpstore://";

impl StoreEndpoint {
    /// Parse `HOST:PORT` or `tcpstore://HOST:PORT[/PREFIX]`.
    pub fn parse(s: &str) -> StoreEndpoint {
        match s.strip_prefix(TCPSTORE_SCHEME) {
            Some(rest) => {
                // An IPv6 host is bracketed, so the first '/' ends HOST:PORT.
                let (addr, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                StoreEndpoint::Torch {
                    addr: addr.to_string(),
                    prefix: prefix.to_string(),
                }
            }
            None => StoreEndpoint::Ours(s.to_string()),
        }
    }

    /// Connect (retrying until `deadline`); `run_id` is checked by our store.
    pub fn connect(&self, run_id: &str, deadline: Instant) -> Result<Box<dyn KvStore>, RdzvError> {
        Ok(match self {
            StoreEndpoint::Ours(ep) => Box::new(StoreClient::connect(ep, run_id, deadline)?),
            StoreEndpoint::Torch { addr, prefix } => {
                Box::new(TcpStoreClient::connect(addr, prefix, deadline)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            StoreEndpoint::parse("10.0.0.1:29500"),
            StoreEndpoint::Ours("10.0.0.1:29500".into())
        );
        assert_eq!(
            StoreEndpoint::parse("tcpstore://[::1]:29500/mnist-ddp/run/x"),
            StoreEndpoint::Torch {
                addr: "[::1]:29500".into(),
                prefix: "mnist-ddp/run/x".into()
            }
        );
        assert_eq!(
            StoreEndpoint::parse("tcpstore://h:1"),
            StoreEndpoint::Torch {
                addr: "h:1".into(),
                prefix: String::new()
            }
        );
    }
}
