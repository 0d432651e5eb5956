//! A store served by a worker itself: with env:// semantics (Slurm, `mpirun`, Kubeflow) no
//! launcher of ours runs, so global rank 0 serves the key-value store at
//! `MASTER_ADDR:MASTER_PORT` for the run's workers, with the same protocol as node 0's
//! launcher ([`crate::StoreClient`] talks to both).

use crate::kv::{serve_requests, Table};
use crate::net::{open_served, spawn_acceptor};
use crate::protocol::{Hello, StoreResponse, ToNode};
use crate::wire::{read_frame, write_frame};
use crate::RdzvError;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct Shared {
    run_id: String,
    table: Table,
    stop: AtomicBool,
}

/// A running store of one run; dropping it stops accepting (connections being served end
/// when their clients close them).
pub struct StoreServer {
    port: u16,
    shared: Arc<Shared>,
}

impl StoreServer {
    /// Listen on `port` on every interface (0: any free port) and serve run `run_id`.
    pub fn start(port: u16, run_id: &str) -> Result<StoreServer, RdzvError> {
        let bind_err = |e: io::Error| RdzvError::StoreBind {
            port,
            problem: if e.kind() == io::ErrorKind::AddrInUse {
                format!("port {port} is in use (another job or program): {e}")
            } else {
                e.to_string()
            },
        };
        let listener = TcpListener::bind(("0.0.0.0", port)).map_err(bind_err)?;
        let port = listener.local_addr().map_err(bind_err)?.port();
        listener.set_nonblocking(true).map_err(bind_err)?;
        let shared = Arc::new(Shared {
            run_id: run_id.to_string(),
            table: Table::default(),
            stop: AtomicBool::new(false),
        });
        let (sh, sh2) = (shared.clone(), shared.clone());
        spawn_acceptor(
            listener,
            "store-accept",
            "store-conn",
            move || !sh.stop.load(Ordering::SeqCst),
            move |s| serve(s, &sh2),
        )
        .map_err(|e| RdzvError::StoreBind {
            port,
            problem: format!("cannot start a thread: {e}"),
        })?;
        Ok(StoreServer { port, shared })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(mut s: TcpStream, sh: &Shared) {
    if !open_served(&mut s) {
        return;
    }
    match read_frame::<Hello>(&mut s) {
        Ok(Hello::Store { run_id }) if run_id == sh.run_id => {
            if write_frame(&mut s, &StoreResponse::Done).is_ok() {
                serve_requests(&mut s, &sh.table);
            }
        }
        Ok(Hello::Store { run_id }) => {
            let why = format!(
                "run id {run_id:?} is not the run this store serves ({:?}); a worker of another job on the same MASTER_PORT?",
                sh.run_id
            );
            let _ = write_frame(&mut s, &StoreResponse::Refused(why));
        }
        Ok(Hello::Node(_)) => {
            let why = "this port is a worker's store (env://), not node 0's launcher: mnist-launch and the worker disagree about MASTER_PORT".to_string();
            let _ = write_frame(&mut s, &ToNode::Reject(why));
        }
        Err(_) => {}
    }
}
