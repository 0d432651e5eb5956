//! The rendezvous of a job spanning several machines, served by node 0's launcher on the
//! master port (torchrun's static rendezvous, with PyTorch's `TCPStore` as the model):
//!
//! - **Nodes** ([`node::join`]): every launcher connects, registers its node rank, process
//!   count, advertised address and a [`Fingerprint`] of everything that must agree; the
//!   server ([`server::Server`]) decides with a [`Coordinator`]: once every node is there each
//!   gets the same [`Plan`] (global ranks in node-rank order); a mismatch, a duplicate node
//!   rank, a node of another job, a late node or a timeout is named in one line on every node.
//!   The launchers' connections then carry heartbeats both ways: a node that is lost (its
//!   launcher killed, its network cut) makes the server tell every other node, naming it.
//! - **Rounds** (`--max-restarts`, `--nnodes MIN:MAX`): after a failed worker or a lost node
//!   the server may order a restart ([`Event::Restart`]); the nodes register again and the
//!   next round forms from the survivors (and nodes held since they came late), with a new run
//!   id and store. Node 0's server outlives the rounds; losing node 0 ends the job.
//! - **Store** ([`store::StoreClient`]): a key-value store with blocking reads for the workers
//!   of a started run (rank 0 publishes its group address, the others wait for it).
//!
//! Every connection starts with a versioned preamble ([`wire`]), so two program versions
//! never misread each other.

pub mod coordinator;
pub mod endpoint;
mod kv;
pub mod net;
pub mod node;
pub mod protocol;
pub mod server;
pub mod store;
pub mod store_server;
pub mod tcpstore;
pub mod wire;

pub use coordinator::{Coordinator, Verdict};
pub use endpoint::{KvStore, StoreEndpoint};
pub use node::{join, Event, NodeSession};
pub use protocol::{Fingerprint, JoinRequest, NodeEntry, Plan};
pub use server::{ResumeProbe, Server, ServerConfig};
pub use store::StoreClient;
pub use store_server::StoreServer;
pub use tcpstore::TcpStoreClient;

use std::time::Duration;

/// Heartbeat timing between the launchers and the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often each side sends a ping.
    pub interval: Duration,
    /// Silence after which the other side counts as lost.
    pub timeout: Duration,
}

impl Default for Heartbeat {
    /// A ping a second; lost after 5 s of silence (so a lost node stops the others within
    /// 10 s together with the workers' grace period).
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A rendezvous that failed; every message names the endpoint or the flag involved.
#[derive(Debug, thiserror::Error)]
pub enum RdzvError {
    /// The master port cannot be bound.
    #[error("cannot serve the rendezvous on port {port} (--master-port): {problem}")]
    Bind {
        /// The port.
        port: u16,
        /// What went wrong ("port 29500 is in use …").
        problem: String,
    },
    /// A worker cannot serve the store (env://: global rank 0 on `MASTER_PORT`).
    #[error("cannot serve the store on port {port}: {problem}")]
    StoreBind {
        /// The port.
        port: u16,
        /// What went wrong.
        problem: String,
    },
    /// The rendezvous could not be reached before the deadline.
    #[error("cannot reach {what} at {endpoint} within {secs:.0} s: {last}")]
    Unreachable {
        /// `HOST:PORT`.
        endpoint: String,
        /// What was being reached ("the rendezvous (node 0's launcher)").
        what: String,
        /// Seconds tried.
        secs: f64,
        /// The last failure (refused, no route, timed out, name not resolved).
        last: String,
    },
    /// Something on that port is not a rendezvous of this program.
    #[error("{endpoint} is not an mnist-ddp rendezvous (wrong --master-port or --master-addr?)")]
    Foreign {
        /// `HOST:PORT`.
        endpoint: String,
    },
    /// The other side speaks another protocol version.
    #[error("the rendezvous at {endpoint} speaks protocol version {theirs}, this program {ours} (use the same mnist-ddp version on every node)")]
    Version {
        /// `HOST:PORT`.
        endpoint: String,
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// The rendezvous refused this node or the job (the reason names what is wrong).
    #[error("rendezvous at {endpoint}: {reason}")]
    Refused {
        /// `HOST:PORT`.
        endpoint: String,
        /// The server's reason.
        reason: String,
    },
    /// The connection broke.
    #[error("rendezvous at {endpoint}: {detail}")]
    Lost {
        /// `HOST:PORT`.
        endpoint: String,
        /// What happened.
        detail: String,
    },
    /// `MNIST_SOCKET_IFNAME` names an unusable interface.
    #[error("network interface {name:?} (MNIST_SOCKET_IFNAME) {problem}")]
    Interface {
        /// The interface name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl RdzvError {
    /// A second line with what to check, where there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            RdzvError::Unreachable { .. } => Some(
                "check that node 0's launcher runs (--node-rank 0), that --master-addr/--master-port (or --rdzv-endpoint) name it, and that no firewall blocks the port"
                    .into(),
            ),
            RdzvError::Bind { .. } => Some(
                "another job on this machine may use that port: give each job its own --master-port"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}
