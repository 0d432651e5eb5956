//! The rendezvous server node 0's launcher runs on the master port: node registration (decided
//! by a [`Coordinator`]), heartbeats with every launcher, and the workers' key-value store.
//! One thread accepts, one per connection serves it, one sends heartbeats and enforces the
//! rendezvous deadline.
//!
//! Rounds (`--max-restarts`, `--nnodes MIN:MAX`): when a node reports a failed worker or is
//! lost while restarts remain (and, after a loss, at least MIN nodes survive), the server
//! tells every remaining node to restart ([`ToNode::Restart`]) and forms the next round from
//! the nodes that register again (each on a new connection); the round's plan has a new run
//! id, its own store, and says whether to resume ([`ResumeProbe`]). Node 0's server stays up
//! between rounds, so losing node 0 ends the job.

use crate::coordinator::{Coordinator, Verdict};
use crate::kv::{serve_requests, Table};
use crate::net::{open_served, spawn_acceptor};
use crate::protocol::{Fingerprint, FromNode, Hello, JoinRequest, StoreResponse, ToNode};
use crate::wire::{read_frame, write_frame};
use crate::{Heartbeat, RdzvError};
use std::collections::{BTreeMap, BTreeSet};
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
    /// Makes the run id when a round starts.
    pub new_run_id: fn() -> String,
    /// `--nnodes MIN:MAX`: the fewest nodes a round may run with (`nnodes` for a fixed count).
    pub min_nodes: usize,
    /// `--max-restarts`: how many times a failed round may be followed by a new one.
    pub max_restarts: u32,
    /// Whether a restarted round resumes from a checkpoint.
    pub resume: ResumeProbe,
}

/// Asked when a later round forms: whether the job has a checkpoint to resume from (node 0's
/// launcher looks at its `checkpoint.bin`).
#[derive(Clone)]
pub struct ResumeProbe(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl ResumeProbe {
    /// Never resume (a job without restarts, tests).
    pub fn never() -> Self {
        ResumeProbe(Arc::new(|| false))
    }
}

impl std::fmt::Debug for ResumeProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeProbe(..)")
    }
}

struct NodeConn {
    /// Tells this connection from a later one of the same node (a new round).
    id: u64,
    writer: TcpStream,
    who: String,
    left: bool,
    lost: bool,
    /// Came while a round ran (elastic): waits for the next round.
    held: bool,
}

struct Inner {
    coord: Coordinator,
    /// The connections of the current round (and held nodes), by node rank.
    nodes: BTreeMap<usize, NodeConn>,
    failure: Option<String>,
    /// Launcher connections being served.
    open: usize,
    next_id: u64,
    /// Restarts done.
    restarts: u32,
    /// Nodes of the running round that were lost.
    lost: BTreeSet<usize>,
    /// A node of the running round finished successfully (no restart after that).
    finished_ok: bool,
    /// The running round's key-value store.
    store: Arc<Table>,
    /// When the forming round gives up waiting.
    deadline: Instant,
}

struct Shared {
    cfg: ServerConfig,
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

    /// Whether `id` is node `n`'s connection of the current round.
    fn is_current(&self, n: usize, id: u64) -> bool {
        self.nodes.get(&n).is_some_and(|c| c.id == id)
    }

    /// A round is complete: give it a store, decide about resuming, and start its nodes.
    fn start_round(&mut self, mut plan: crate::Plan, cfg: &ServerConfig) {
        plan.resume = plan.round > 0 && (cfg.resume.0)();
        self.store = Arc::new(Table::default());
        self.lost.clear();
        self.finished_ok = false;
        if plan.round > 0 {
            let ranks: Vec<String> = plan.nodes.iter().map(|n| n.node_rank.to_string()).collect();
            eprintln!(
                "mnist-launch: rendezvous: round {} starts with {} node(s) ({}), {} processes{}",
                plan.round,
                plan.nodes.len(),
                ranks.join(", "),
                plan.world_size,
                if plan.resume {
                    ", resuming from the checkpoint"
                } else {
                    ""
                }
            );
        }
        for e in &plan.nodes {
            if let Some(c) = self.nodes.get_mut(&e.node_rank) {
                c.held = false;
                send(&mut c.writer, &ToNode::Start(plan.clone()));
            }
        }
    }

    /// Act on what a verdict of the coordinator asks for.
    fn apply(&mut self, v: Verdict, cfg: &ServerConfig) {
        match v {
            Verdict::Complete(plan) => self.start_round(plan, cfg),
            Verdict::FailAll(r) => self.reject_all(&r),
            Verdict::Wait | Verdict::Held(_) | Verdict::RejectOne(_) => {}
        }
    }

    /// A worker failed or a node was lost in the running round (`reason` names it): restart
    /// the job in a new round if restarts remain and enough nodes survive, else end it.
    fn restart_or_abort(&mut self, reason: &str, restartable: bool, cfg: &ServerConfig) {
        let survivors = self.coord.survivors(&self.lost);
        let min = self.coord.min_nodes();
        // Already failed, a worker refused its input, or a node finished: no new round.
        let why_not = if self.failure.is_some() || !restartable || self.finished_ok {
            Some(String::new())
        } else if self.restarts >= cfg.max_restarts {
            (cfg.max_restarts > 0)
                .then(|| format!(" (--max-restarts {} used up)", cfg.max_restarts))
                .or(Some(String::new()))
        } else if survivors.len() < min {
            Some(format!(
                "; {} node(s) remain and --nnodes needs at least {min}: not restarting",
                survivors.len()
            ))
        } else {
            None
        };
        if let Some(note) = why_not {
            let r = format!("{reason}{note}");
            self.coord.fail(&r);
            self.abort_all(&r, None);
            return;
        }
        self.restarts += 1;
        let round = self.coord.round() + 1;
        let list: Vec<String> = survivors.iter().map(|n| n.to_string()).collect();
        eprintln!(
            "mnist-launch: rendezvous: {reason}; restart {} of {} (--max-restarts): round {round} waits for node(s) {}",
            self.restarts,
            cfg.max_restarts,
            list.join(", ")
        );
        for c in self.nodes.values_mut().filter(|c| !c.lost && !c.held) {
            send(
                &mut c.writer,
                &ToNode::Restart {
                    round,
                    reason: reason.to_string(),
                },
            );
        }
        self.nodes.retain(|_, c| c.held);
        self.coord.next_round(survivors);
        self.deadline = Instant::now() + cfg.timeout;
    }

    /// Every node of the running round has left or is lost.
    fn round_over(&self) -> bool {
        self.coord.started().is_some_and(|p| {
            p.nodes.iter().all(|n| {
                self.nodes
                    .get(&n.node_rank)
                    .is_none_or(|c| c.left || c.lost)
            })
        })
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
                coord: Coordinator::new(&cfg.rdzv_id, cfg.nnodes, cfg.reference.clone())
                    .with_min_nodes(cfg.min_nodes),
                nodes: BTreeMap::new(),
                failure: None,
                open: 0,
                next_id: 0,
                restarts: 0,
                lost: BTreeSet::new(),
                finished_ok: false,
                store: Arc::new(Table::default()),
                deadline: Instant::now() + cfg.timeout,
            }),
            cfg,
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
            let done = g.round_over() || g.failure.is_some();
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
    while !sh.stop.load(Ordering::SeqCst) {
        {
            let mut g = sh.lock();
            if Instant::now() >= g.deadline {
                if let Some(v) = g
                    .coord
                    .expire(sh.cfg.timeout.as_secs_f64(), sh.cfg.new_run_id)
                {
                    g.apply(v, &sh.cfg);
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
    let id;
    {
        let mut g = sh.lock();
        let verdict = g.coord.offer(&req, sh.cfg.new_run_id);
        let Ok(writer) = s.try_clone() else { return };
        g.next_id += 1;
        id = g.next_id;
        let conn = NodeConn {
            id,
            writer,
            who: req.who(),
            left: false,
            lost: false,
            held: false,
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
            Verdict::Held(why) => {
                eprintln!("mnist-launch: rendezvous: {why}");
                g.nodes.insert(n, NodeConn { held: true, ..conn });
            }
            Verdict::Complete(plan) => {
                g.nodes.insert(n, conn);
                g.start_round(plan, &sh.cfg);
            }
        }
        sh.changed.notify_all();
    }
    let _ = s.set_read_timeout(Some(sh.cfg.heartbeat.timeout));
    let why = loop {
        match read_frame::<FromNode>(&mut s) {
            Ok(FromNode::Ping) => {}
            Ok(FromNode::Leave {
                ok,
                detail,
                restartable,
            }) => {
                let mut g = sh.lock();
                if !g.is_current(n, id) {
                    // A connection of an earlier round: its news is stale.
                    return;
                }
                let who = match g.nodes.get_mut(&n) {
                    Some(c) => {
                        c.left = true;
                        c.who.clone()
                    }
                    None => req.who(),
                };
                if ok {
                    g.finished_ok = true;
                } else {
                    g.restart_or_abort(&format!("{who} failed: {detail}"), restartable, &sh.cfg);
                }
                if g.round_over() {
                    // Held nodes never got a round: the job is over.
                    for w in g.coord.take_waiting() {
                        if let Some(c) = g.nodes.get_mut(&w) {
                            send(
                                &mut c.writer,
                                &ToNode::Reject(
                                    "the job ended before another rendezvous round began".into(),
                                ),
                            );
                            c.left = true;
                        }
                    }
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
    if !g.is_current(n, id) {
        return;
    }
    let Some(c) = g.nodes.get_mut(&n) else { return };
    if c.left || c.lost {
        return;
    }
    c.lost = true;
    let (who, held) = (c.who.clone(), c.held);
    if held {
        g.nodes.remove(&n);
        let _ = g.coord.left_early(n, &why, sh.cfg.new_run_id);
        eprintln!("mnist-launch: rendezvous: lost held {who}: {why}");
    } else if let Some(v) = g.coord.left_early(n, &why, sh.cfg.new_run_id) {
        g.apply(v, &sh.cfg);
    } else if g
        .coord
        .started()
        .is_some_and(|p| p.nodes.iter().any(|e| e.node_rank == n))
    {
        let r = format!("lost {who}: {why}");
        eprintln!("mnist-launch: rendezvous: {r}");
        g.lost.insert(n);
        g.restart_or_abort(&r, true, &sh.cfg);
    }
    sh.changed.notify_all();
}

fn serve_store(mut s: TcpStream, run_id: &str, sh: &Shared) {
    let (current, table) = {
        let g = sh.lock();
        (g.coord.started().map(|p| p.run_id.clone()), g.store.clone())
    };
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
    serve_requests(&mut s, &table);
}
