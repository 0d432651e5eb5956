//! The launcher's side: [`join`] registers this node and waits for the [`Plan`]; the returned
//! [`NodeSession`] keeps heartbeats going both ways and reports an abort (another node failed
//! or was lost, or node 0 itself is gone) through [`NodeSession::abort_reason`].

use crate::net::connect_retry;
use crate::protocol::{FromNode, Hello, JoinRequest, Plan, ToNode};
use crate::store::handshake;
use crate::wire::{read_frame, write_frame};
use crate::{Heartbeat, RdzvError};
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A node that has joined a started job.
pub struct NodeSession {
    /// The job.
    pub plan: Plan,
    /// This node's rank.
    pub node_rank: usize,
    /// The address this node advertised.
    pub addr: String,
    endpoint: String,
    writer: Arc<Mutex<TcpStream>>,
    abort: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

fn lost_detail(e: &io::Error, hb: Heartbeat) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "no heartbeat for {:.0} s (node 0's launcher hung or the network is cut)",
            hb.timeout.as_secs_f64()
        ),
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => {
            "the connection closed (node 0's launcher is gone)".into()
        }
        _ => format!("the connection failed: {e}"),
    }
}

/// Register `req` with the rendezvous at `endpoint` (`HOST:PORT`, retried until `timeout`)
/// and wait for every node. An empty `req.addr` is filled with the local address of this
/// connection (the address the master sees this node at).
pub fn join(
    endpoint: &str,
    mut req: JoinRequest,
    timeout: Duration,
    hb: Heartbeat,
) -> Result<NodeSession, RdzvError> {
    let deadline = Instant::now() + timeout;
    let mut s = connect_retry(endpoint, deadline, "the rendezvous (node 0's launcher)")?;
    handshake(&mut s, endpoint)?;
    let lost = |detail: String| RdzvError::Lost {
        endpoint: endpoint.to_string(),
        detail,
    };
    if req.addr.is_empty() {
        req.addr = s
            .local_addr()
            .map_err(|e| lost(format!("no local address: {e}")))?
            .ip()
            .to_string();
    }
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    write_frame(&mut s, &Hello::Node(req.clone()))
        .map_err(|e| lost(format!("cannot register: {e}")))?;
    let writer = Arc::new(Mutex::new(
        s.try_clone()
            .map_err(|e| lost(format!("cannot clone the socket: {e}")))?,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (w, stop) = (writer.clone(), stop.clone());
        let _ = std::thread::Builder::new()
            .name("rdzv-ping".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(mut w) = w.lock() {
                        let _ = write_frame(&mut *w, &FromNode::Ping);
                    }
                    std::thread::sleep(hb.interval);
                }
            });
    }
    let stop_on_err = |e| {
        stop.store(true, Ordering::SeqCst);
        e
    };
    let _ = s.set_read_timeout(Some(hb.timeout));
    let plan = loop {
        match read_frame::<ToNode>(&mut s) {
            Ok(ToNode::Ping) => {}
            Ok(ToNode::Start(p)) => break p,
            Ok(ToNode::Reject(reason) | ToNode::Abort(reason)) => {
                return Err(stop_on_err(RdzvError::Refused {
                    endpoint: endpoint.to_string(),
                    reason,
                }))
            }
            Err(e) => {
                return Err(stop_on_err(lost(format!(
                    "while waiting for the other nodes: {}",
                    lost_detail(&e, hb)
                ))))
            }
        }
    };
    let abort = Arc::new(Mutex::new(None));
    {
        let (abort, stop, endpoint) = (abort.clone(), stop.clone(), endpoint.to_string());
        let _ = std::thread::Builder::new()
            .name("rdzv-watch".into())
            .spawn(move || loop {
                let why = match read_frame::<ToNode>(&mut s) {
                    Ok(ToNode::Ping | ToNode::Start(_)) => continue,
                    Ok(ToNode::Abort(r) | ToNode::Reject(r)) => r,
                    Err(e) => format!(
                        "lost node 0 (the rendezvous at {endpoint}): {}",
                        lost_detail(&e, hb)
                    ),
                };
                if !stop.load(Ordering::SeqCst) {
                    if let Ok(mut a) = abort.lock() {
                        a.get_or_insert(why);
                    }
                }
                return;
            });
    }
    Ok(NodeSession {
        plan,
        node_rank: req.node_rank,
        addr: req.addr,
        endpoint: endpoint.to_string(),
        writer,
        abort,
        stop,
    })
}

impl NodeSession {
    /// Why the job must stop, once another node failed or was lost, or node 0 is gone.
    pub fn abort_reason(&self) -> Option<String> {
        self.abort.lock().ok().and_then(|a| a.clone())
    }

    /// The rendezvous endpoint (`HOST:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Tell the server this node's workers have ended (`ok` false: they failed, `detail` says
    /// how; the server tells the other nodes). Heartbeats stop.
    pub fn leave(&self, ok: bool, detail: &str) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(mut w) = self.writer.lock() {
            let _ = write_frame(
                &mut *w,
                &FromNode::Leave {
                    ok,
                    detail: detail.to_string(),
                },
            );
        }
    }
}

impl Drop for NodeSession {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
