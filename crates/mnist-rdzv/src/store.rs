//! The workers' side of the key-value store: connect with the run id, `set`, and `get` that
//! waits until the key is set (like `TCPStore.get`).

use crate::net::connect_retry;
use crate::protocol::{Hello, StoreRequest, StoreResponse};
use crate::wire::{
    read_frame, read_preamble, write_frame, write_preamble, Preamble, PROTOCOL_VERSION,
};
use crate::RdzvError;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A connection to the store of one run.
pub struct StoreClient {
    s: TcpStream,
    endpoint: String,
}

/// Exchange preambles on a fresh connection to `endpoint`.
pub(crate) fn handshake(s: &mut TcpStream, endpoint: &str) -> Result<(), RdzvError> {
    let lost = |e: std::io::Error| RdzvError::Lost {
        endpoint: endpoint.to_string(),
        detail: format!("handshake failed: {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(lost)?;
    write_preamble(s).map_err(lost)?;
    match read_preamble(s) {
        Ok(Preamble::Ok) => Ok(()),
        Ok(Preamble::Version(theirs)) => Err(RdzvError::Version {
            endpoint: endpoint.to_string(),
            ours: PROTOCOL_VERSION,
            theirs,
        }),
        Ok(Preamble::Foreign) | Err(_) => Err(RdzvError::Foreign {
            endpoint: endpoint.to_string(),
        }),
    }
}

impl StoreClient {
    /// Connect to the store at `endpoint` for run `run_id`, retrying until `deadline`.
    pub fn connect(endpoint: &str, run_id: &str, deadline: Instant) -> Result<Self, RdzvError> {
        let mut s = connect_retry(
            endpoint,
            deadline,
            "the rendezvous store (node 0's launcher)",
        )?;
        handshake(&mut s, endpoint)?;
        let mut c = StoreClient {
            s,
            endpoint: endpoint.to_string(),
        };
        let hello = Hello::Store {
            run_id: run_id.to_string(),
        };
        write_frame(&mut c.s, &hello).map_err(|e| c.lost(e))?;
        match c.recv(Duration::from_secs(10))? {
            StoreResponse::Done => Ok(c),
            other => Err(c.unexpected(other)),
        }
    }

    fn lost(&self, e: std::io::Error) -> RdzvError {
        RdzvError::Lost {
            endpoint: self.endpoint.clone(),
            detail: format!("store connection failed: {e}"),
        }
    }

    fn unexpected(&self, r: StoreResponse) -> RdzvError {
        match r {
            StoreResponse::Refused(reason) => RdzvError::Refused {
                endpoint: self.endpoint.clone(),
                reason,
            },
            other => RdzvError::Lost {
                endpoint: self.endpoint.clone(),
                detail: format!("unexpected store answer {other:?}"),
            },
        }
    }

    fn recv(&mut self, wait: Duration) -> Result<StoreResponse, RdzvError> {
        self.s
            .set_read_timeout(Some(wait.max(Duration::from_millis(10))))
            .map_err(|e| self.lost(e))?;
        read_frame(&mut self.s).map_err(|e| self.lost(e))
    }

    /// Set `key` to `value`.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), RdzvError> {
        let req = StoreRequest::Set {
            key: key.to_string(),
            value: value.to_vec(),
        };
        write_frame(&mut self.s, &req).map_err(|e| self.lost(e))?;
        match self.recv(Duration::from_secs(30))? {
            StoreResponse::Done => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    /// The value of `key`, waiting up to `wait` for it to be set (`None` if it was not).
    pub fn get(&mut self, key: &str, wait: Duration) -> Result<Option<Vec<u8>>, RdzvError> {
        let req = StoreRequest::Get {
            key: key.to_string(),
            wait_ms: wait.as_millis().min(u64::MAX as u128) as u64,
        };
        write_frame(&mut self.s, &req).map_err(|e| self.lost(e))?;
        match self.recv(wait + Duration::from_secs(30))? {
            StoreResponse::Value(v) => Ok(Some(v)),
            StoreResponse::Timeout => Ok(None),
            other => Err(self.unexpected(other)),
        }
    }
}
