//! The rendezvous server node 0's launcher runs on the master port: node registration (decided
//! by a [`Coordinator`]), heartbeats with every launcher, and the workers' key-value store.
//! One thread accepts, one per connection serves it, one sends heartbeats and enforces the
//! rendezvous deadline.

use crate::kv::{serve_requests, Table};
use crate::net::{open_served, spawn_acceptor};
use crate::protocol::{
    Coordinator, Fingerprint, FromNode, Hello, JoinRequest, StoreResponse, ToNode, Verdict,
};
use crate::wire::{read_frame, write_frame};
use crate::{Heartbeat, RdzvError};
use std::collections::BTreeMap;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the server needs to know.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Port to listen on, on every interface (0: any free port, see [`Server::port`]).
    pub port: u16,
    /// The job's rendezvous id (`--rdzv-id`).
    pub rdzv_id: String,
    /// Number of nodes.
    pub nnodes: usize,
    /// Node 0's fingerprint, which every node must match.
    pub reference: Fingerprint,
    /// How long to wait for every node.
    pub timeout: Duration,
    /// Heartbeat timing.
    pub heartbeat: Heartbeat,
    /// Makes the run id when the job starts.
    pub new_run_id: fn() -> String,
}

struct NodeConn {
    writer: TcpStream,
    who: String,
    left: bool,
    lost: bool,
}

struct Inner {
    coord: Coordinator,
    nodes: BTreeMap<usize, NodeConn>,
    failure: Option<String>,
    /// Launcher connections being served.
    open: usize,
}

struct Shared {
    cfg: ServerConfig,
    store: Table,
    inner: Mutex<Inner>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running rendezvous server; dropping it stops accepting.
pub struct Server {
    port: u16,
    shared: Arc<Shared>,
}

fn send(s: &mut TcpStream, m: &ToNode) {
    // A node that cannot be written to is found lost by its reader thread.
    let _ = write_frame(s, m);
}

impl Inner {
    /// Tell every node still taking part (except `except`) that the job is over.
    fn abort_all(&mut self, reason: &str, except: Option<usize>) {
        if self.failure.is_none() {
            self.failure = Some(reason.to_string());
        }
        for (n, c) in self.nodes.iter_mut() {
            if Some(*n) != except && !c.left && !c.lost {
                send(&mut c.writer, &ToNode::Abort(reason.to_string()));
            }
        }
    }

    fn reject_all(&mut self, reason: &str) {
        if self.failure.is_none() {
            self.failure = Some(reason.to_string());
        }
        for c in self.nodes.values_mut() {
            send(&mut c.writer, &ToNode::Reject(reason.to_string()));
            c.left = true;
        }
    }
}

impl Server {
    /// Listen on `cfg.port` on every interface and start serving.
    pub fn start(cfg: ServerConfig) -> Result<Server, RdzvError> {
        let port = cfg.port;
        let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| RdzvError::Bind {
            port,
            problem: if e.kind() == io::ErrorKind::AddrInUse {
                format!("port {port} is in use (another job or program; choose another --master-port): {e}")
            } else {
                e.to_string()
            },
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| RdzvError::Bind {
                port,
                problem: e.to_string(),
            })?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| RdzvError::Bind {
                port,
                problem: e.to_string(),
            })?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                coord: Coordinator::new(&cfg.rdzv_id, cfg.nnodes, cfg.reference.clone()),
                nodes: BTreeMap::new(),
                failure: None,
                open: 0,
            }),
            cfg,
            store: Table::default(),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let (sh, sh2) = (shared.clone(), shared.clone());
        spawn_acceptor(
            listener,
            "rdzv-accept",
            "rdzv-conn",
            move || !sh.stop.load(Ordering::SeqCst),
            move |s| serve(s, sh2.clone()),
        )
        .map_err(|e| RdzvError::Bind {
            port,
            problem: format!("cannot start a thread: {e}"),
        })?;
        let sh = shared.clone();
        let _ = std::thread::Builder::new()
            .name("rdzv-heartbeat".into())
            .spawn(move || heartbeat_loop(sh));
        Ok(Server { port, shared })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Why the job failed or was aborted, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failure.clone()
    }

    /// Wait until every node of the started job has left or been lost (or the rendezvous
    /// failed), at most `max`; true if that happened.
    pub fn wait_finished(&self, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        let mut g = self.shared.lock();
        loop {
            let done = match g.coord.started() {
                Some(p) => p
                    .nodes
                    .iter()
                    .all(|n| g.nodes.get(&n.node_rank).is_none_or(|c| c.left || c.lost)),
                None => g.failure.is_some(),
            };
            if done {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .shared
                .changed
                .wait_timeout(g, left.min(Duration::from_millis(200)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Server {
    /// Wait until every launcher connection has closed, at most `max`: after a failed
    /// rendezvous node 0 must not exit before the others have read why (closing a socket with
    /// unread input resets it, which can destroy the message in flight).
    pub fn wait_closed(&self, max: Duration) {
        let deadline = Instant::now() + max;
        let mut g = self.shared.lock();
        while g.open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            g = self
                .shared
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Counts a served launcher connection while it lives.
struct OpenGuard<'a>(&'a Shared);

impl<'a> OpenGuard<'a> {
    fn new(sh: &'a Shared) -> Self {
        sh.lock().open += 1;
        OpenGuard(sh)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().open -= 1;
        self.0.changed.notify_all();
    }
}

/// Read until the peer closes (or stays silent past `wait`), so our close never resets a
/// connection whose peer has not yet read our last message.
fn drain(s: &mut TcpStream, wait: Duration) {
    let _ = s.set_read_timeout(Some(wait));
    while read_frame::<FromNode>(s).is_ok() {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn heartbeat_loop(sh: Arc<Shared>) {
    let deadline = Instant::now() + sh.cfg.timeout;
    while !sh.stop.load(Ordering::SeqCst) {
        {
            let mut g = sh.lock();
            if Instant::now() >= deadline {
                if let Some(r) = g.coord.expire(sh.cfg.timeout.as_secs_f64()) {
                    g.reject_all(&r);
                    sh.changed.notify_all();
                }
            }
            for c in g.nodes.values_mut().filter(|c| !c.left && !c.lost) {
                send(&mut c.writer, &ToNode::Ping);
            }
        }
        std::thread::sleep(sh.cfg.heartbeat.interval);
    }
}

fn serve(mut s: TcpStream, sh: Arc<Shared>) {
    if !open_served(&mut s) {
        return;
    }
    match read_frame::<Hello>(&mut s) {
        Ok(Hello::Node(req)) => serve_node(s, req, &sh),
        Ok(Hello::Store { run_id }) => serve_store(s, &run_id, &sh),
        Err(_) => {}
    }
}

fn serve_node(mut s: TcpStream, req: JoinRequest, sh: &Shared) {
    let n = req.node_rank;
    let _open = OpenGuard::new(sh);
    {
        let mut g = sh.lock();
        let verdict = g.coord.offer(&req, sh.cfg.new_run_id);
        let Ok(writer) = s.try_clone() else { return };
        let conn = NodeConn {
            writer,
            who: req.who(),
            left: false,
            lost: false,
        };
        match verdict {
            Verdict::RejectOne(r) => {
                eprintln!("mnist-launch: rendezvous: refused {}: {r}", req.who());
                send(&mut s, &ToNode::Reject(r));
                drop(g);
                drain(&mut s, sh.cfg.heartbeat.timeout);
                return;
            }
            Verdict::FailAll(r) => {
                g.nodes.entry(n).or_insert(conn);
                send(&mut s, &ToNode::Reject(r.clone()));
                g.reject_all(&r);
                sh.changed.notify_all();
                drop(g);
                drain(&mut s, sh.cfg.heartbeat.timeout);
                return;
            }
            Verdict::Wait => {
                g.nodes.insert(n, conn);
            }
            Verdict::Complete(plan) => {
                g.nodes.insert(n, conn);
                for c in g.nodes.values_mut() {
                    send(&mut c.writer, &ToNode::Start(plan.clone()));
                }
            }
        }
        sh.changed.notify_all();
    }
    let _ = s.set_read_timeout(Some(sh.cfg.heartbeat.timeout));
    let why = loop {
        match read_frame::<FromNode>(&mut s) {
            Ok(FromNode::Ping) => {}
            Ok(FromNode::Leave { ok, detail }) => {
                let mut g = sh.lock();
                let who = match g.nodes.get_mut(&n) {
                    Some(c) => {
                        c.left = true;
                        c.who.clone()
                    }
                    None => req.who(),
                };
                if !ok {
                    g.abort_all(&format!("{who} failed: {detail}"), Some(n));
                }
                sh.changed.notify_all();
                return;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break format!(
                    "no heartbeat for {:.0} s (its launcher hung or its network is cut)",
                    sh.cfg.heartbeat.timeout.as_secs_f64()
                )
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                break "its launcher's connection closed (killed?)".to_string()
            }
            Err(e) => break format!("its launcher's connection failed: {e}"),
        }
    };
    let mut g = sh.lock();
    let Some(c) = g.nodes.get_mut(&n) else { return };
    if c.left || c.lost {
        return;
    }
    c.lost = true;
    let who = c.who.clone();
    if let Some(r) = g.coord.left_early(n, &why) {
        g.reject_all(&r);
    } else if g.coord.started().is_some() {
        let r = format!("lost {who}: {why}");
        eprintln!("mnist-launch: rendezvous: {r}");
        g.abort_all(&r, Some(n));
    }
    sh.changed.notify_all();
}

fn serve_store(mut s: TcpStream, run_id: &str, sh: &Shared) {
    let current = sh.lock().coord.started().map(|p| p.run_id.clone());
    if current.as_deref() != Some(run_id) {
        let why = match current {
            Some(c) => format!("run id {run_id:?} is not the run this rendezvous serves ({c:?}); a worker of another run?"),
            None => format!("run {run_id:?}: the job has not started here"),
        };
        let _ = write_frame(&mut s, &StoreResponse::Refused(why));
        return;
    }
    if write_frame(&mut s, &StoreResponse::Done).is_err() {
        return;
    }
    serve_requests(&mut s, &sh.store);
}
