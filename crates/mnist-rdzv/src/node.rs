//! The launcher's side: [`join`] registers this node and waits for the [`Plan`]; the returned
//! [`NodeSession`] keeps heartbeats going both ways and reports an abort (another node failed
//! or was lost, or node 0 itself is gone) or a restart order (a new round, `--max-restarts`)
//! through [`NodeSession::event`].

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
    event: Arc<Mutex<Option<Event>>>,
    stop: Arc<AtomicBool>,
}

/// What the server told a started node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The job is over (another node failed or was lost, or node 0 is gone).
    Abort(String),
    /// Stop the workers and register again for round `round`.
    Restart {
        /// The next round.
        round: u32,
        /// What failed.
        reason: String,
    },
}

impl Event {
    /// The reason, for messages.
    pub fn reason(&self) -> &str {
        match self {
            Event::Abort(r) | Event::Restart { reason: r, .. } => r,
        }
    }
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
            Ok(ToNode::Reject(reason) | ToNode::Abort(reason) | ToNode::Restart { reason, .. }) => {
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
    let event = Arc::new(Mutex::new(None));
    {
        let (event, stop, endpoint) = (event.clone(), stop.clone(), endpoint.to_string());
        let _ = std::thread::Builder::new()
            .name("rdzv-watch".into())
            .spawn(move || loop {
                let ev = match read_frame::<ToNode>(&mut s) {
                    Ok(ToNode::Ping | ToNode::Start(_)) => continue,
                    Ok(ToNode::Abort(r) | ToNode::Reject(r)) => Event::Abort(r),
                    Ok(ToNode::Restart { round, reason }) => Event::Restart { round, reason },
                    Err(e) => Event::Abort(format!(
                        "lost node 0 (the rendezvous at {endpoint}): {}",
                        lost_detail(&e, hb)
                    )),
                };
                // After a restart order the connection is done with; its close is no news.
                let restart = matches!(ev, Event::Restart { .. });
                if !stop.load(Ordering::SeqCst) || restart {
                    if let Ok(mut a) = event.lock() {
                        a.get_or_insert(ev);
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
        event,
        stop,
    })
}

impl NodeSession {
    /// Why this node's workers must stop, once another node failed or was lost, node 0 is
    /// gone, or the server ordered a restart.
    pub fn abort_reason(&self) -> Option<String> {
        self.event().map(|e| e.reason().to_string())
    }

    /// What the server said, if anything yet.
    pub fn event(&self) -> Option<Event> {
        self.event.lock().ok().and_then(|a| a.clone())
    }

    /// Wait up to `max` for the server's word ([`NodeSession::event`]).
    pub fn wait_event(&self, max: Duration) -> Option<Event> {
        let deadline = Instant::now() + max;
        loop {
            if let Some(e) = self.event() {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The rendezvous endpoint (`HOST:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Tell the server this node's workers have ended (`ok` false: they failed, `detail` says
    /// how; the server tells the other nodes). Heartbeats stop.
    pub fn leave(&self, ok: bool, detail: &str) {
        self.stop.store(true, Ordering::SeqCst);
        self.send_leave(ok, detail, false);
    }

    /// Tell the server this node's workers failed (`detail` says how) and keep listening: the
    /// server answers with a restart order or an abort ([`NodeSession::wait_event`]).
    /// `restartable` false: starting them again cannot help (a worker refused its input).
    pub fn report_failure(&self, detail: &str, restartable: bool) {
        self.send_leave(false, detail, restartable);
    }

    fn send_leave(&self, ok: bool, detail: &str, restartable: bool) {
        if let Ok(mut w) = self.writer.lock() {
            let _ = write_frame(
                &mut *w,
                &FromNode::Leave {
                    ok,
                    detail: detail.to_string(),
                    restartable,
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
