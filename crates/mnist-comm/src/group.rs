//! Joining the group: rank 0 listens and publishes the rendezvous file, every other rank
//! reads it, connects and says hello (with its node rank and the address of the data listener
//! it bound on the IP it reaches rank 0 from); rank 0 answers with the table of hosts, pids,
//! nodes and data addresses and the transport. The connections to rank 0 stay open as
//! liveness channels.

use crate::CommError;
use mnist_common::rendezvous::{ReadOutcome, RendezvousRecord, FORMAT_VERSION};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Messages exchanged while joining (bincode, each framed by a u32 length).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Msg {
    /// A rank introduces itself to rank 0.
    Hello {
        rank: u64,
        world_size: u64,
        run_id: String,
        host: String,
        pid: u32,
        /// Its node rank (`GROUP_RANK`).
        node: u64,
        /// `IP:PORT` of its data listener.
        data_addr: String,
    },
    /// Rank 0 accepts: everyone's host and pid, the shared-memory segment to map if the whole
    /// group is one node, the node index of every rank and every rank's data address.
    Welcome {
        hosts: Vec<String>,
        pids: Vec<u32>,
        shm: Option<String>,
        nodes: Vec<u64>,
        addrs: Vec<String>,
    },
    /// The first message on a data connection: who connects.
    Data { rank: u64, run_id: String },
    /// A node leader tells its node's ranks to map the node's segment.
    MapSegment { name: String },
    /// Rank 0 refuses or gave up.
    Reject { reason: String },
    /// A rank mapped the segment (or says why it could not).
    Ready { error: Option<String> },
}

/// A joined group, before the backend is chosen.
pub(crate) struct Group {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Host name of each rank.
    pub hosts: Vec<String>,
    /// Process id of each rank.
    pub pids: Vec<u32>,
    /// Rank 0: the connection to rank r at index r (None at 0). Others: rank 0's at index 0.
    pub socks: Vec<Option<TcpStream>>,
    /// Rank 0's payload.
    pub payload: Vec<u8>,
    /// Node rank each rank reported (rank 0: all; others: empty).
    pub node_keys: Vec<u64>,
    /// Node index of each rank (after the welcome; `0..nodes`, numbered by lowest rank).
    pub nodes: Vec<usize>,
    /// Data address of each rank (`IP:PORT` of its data listener).
    pub addrs: Vec<String>,
    /// This rank's data listener.
    pub listener: Option<TcpListener>,
}

fn rdv_err(rank: usize, detail: String) -> CommError {
    CommError::Rendezvous { rank, detail }
}

/// Send one framed message.
pub(crate) fn send_msg(rank: usize, s: &mut TcpStream, m: &Msg) -> Result<(), CommError> {
    let body = bincode::serialize(m).map_err(|e| rdv_err(rank, format!("encode: {e}")))?;
    let mut buf = (body.len() as u32).to_le_bytes().to_vec();
    buf.extend_from_slice(&body);
    s.write_all(&buf).map_err(|source| CommError::Io {
        rank,
        op: "rendezvous send".into(),
        source,
    })
}

/// Receive one framed message, waiting at most `wait`.
pub(crate) fn recv_msg<T: DeserializeOwned>(
    rank: usize,
    s: &mut TcpStream,
    wait: Duration,
    from: &str,
) -> Result<T, CommError> {
    s.set_read_timeout(Some(wait.max(Duration::from_millis(10))))
        .map_err(|source| CommError::Io {
            rank,
            op: "set read timeout".into(),
            source,
        })?;
    let mut len = [0u8; 4];
    let res = s.read_exact(&mut len).and_then(|_| {
        let n = u32::from_le_bytes(len) as usize;
        if n > 1 << 20 {
            return Err(std::io::Error::other(format!(
                "message of {n} bytes is too long"
            )));
        }
        let mut body = vec![0u8; n];
        s.read_exact(&mut body).map(|_| body)
    });
    let body = res.map_err(|e| {
        rdv_err(
            rank,
            format!(
                "no answer from {from} within {:.1} s: {e}",
                wait.as_secs_f64()
            ),
        )
    })?;
    bincode::deserialize(&body).map_err(|e| rdv_err(rank, format!("bad message from {from}: {e}")))
}

/// This machine's host name.
pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Address the other ranks can reach rank 0 at: `MNIST_RENDEZVOUS_ADDR` if set, else the
/// first non-loopback IPv4 address of the host name, else 127.0.0.1.
fn advertised_ip(all_local: bool, host: &str) -> String {
    if all_local {
        return "127.0.0.1".into();
    }
    if let Ok(a) = std::env::var(mnist_common::contract::ENV_RENDEZVOUS_ADDR) {
        return a;
    }
    (host, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.find(|a| a.is_ipv4() && !a.ip().is_loopback()))
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// Where rank 0 publishes its address and the others find it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Meeting<'a> {
    /// A rendezvous file (one machine, or a shared filesystem).
    File(&'a Path),
    /// A key-value store: ours at `HOST:PORT` (node 0's launcher, or global rank 0 under
    /// env:// semantics) or PyTorch's at `tcpstore://HOST:PORT/PREFIX` (torchrun's agent).
    Store(&'a str),
}

impl std::fmt::Display for Meeting<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Meeting::File(p) => write!(f, "rendezvous file {}", p.display()),
            Meeting::Store(ep) => write!(f, "rendezvous store at {ep}"),
        }
    }
}

/// The store key rank 0 publishes its [`RendezvousRecord`] under.
const GROUP_KEY: &str = "group";

/// Parameters of a join.
pub(crate) struct JoinSpec<'a> {
    pub rank: usize,
    pub node_rank: usize,
    pub world: usize,
    pub all_local_hint: bool,
    pub meeting: Meeting<'a>,
    pub run_id: &'a str,
    pub deadline: Instant,
    pub timeout: Duration,
    pub shm_plan: Option<String>,
    pub payload: Vec<u8>,
}

/// Bind a data listener on `ip`, port chosen by the OS; returns it and its `IP:PORT`.
fn data_listener(rank: usize, ip: std::net::IpAddr) -> Result<(TcpListener, String), CommError> {
    let l = TcpListener::bind((ip, 0)).map_err(|source| CommError::Io {
        rank,
        op: format!("bind the data listener on {ip}"),
        source,
    })?;
    let a = l.local_addr().map_err(|source| CommError::Io {
        rank,
        op: "data listener address".into(),
        source,
    })?;
    Ok((l, a.to_string()))
}

/// Removes the rendezvous file when rank 0 leaves the join, however it leaves.
struct FileGuard(PathBuf);
impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Rank 0: listen, publish, and wait for every hello. The file is removed on return.
pub(crate) fn host_join(spec: &JoinSpec) -> Result<Group, CommError> {
    let r = spec.rank;
    let host = hostname();
    let bind = if spec.all_local_hint {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    };
    let listener = TcpListener::bind(bind).map_err(|source| CommError::Io {
        rank: r,
        op: format!("bind {bind}"),
        source,
    })?;
    let port = listener
        .local_addr()
        .map_err(|source| CommError::Io {
            rank: r,
            op: "local_addr".into(),
            source,
        })?
        .port();
    let ip = advertised_ip(spec.all_local_hint, &host);
    let ip_addr: std::net::IpAddr = ip.parse().map_err(|e| {
        rdv_err(
            r,
            format!("advertised address {ip:?} is not an IP address: {e}"),
        )
    })?;
    let (data, data_addr) = data_listener(r, ip_addr)?;
    let rec = RendezvousRecord {
        format_version: FORMAT_VERSION,
        run_id: spec.run_id.to_string(),
        world_size: spec.world as u64,
        host: host.clone(),
        addr: format!("{ip}:{port}"),
        pid: std::process::id(),
        shm_name: spec.shm_plan.clone(),
        payload: spec.payload.clone(),
    };
    let _guard = match spec.meeting {
        Meeting::File(path) => {
            rec.publish(path).map_err(|e| rdv_err(r, e.to_string()))?;
            Some(FileGuard(path.to_path_buf()))
        }
        Meeting::Store(ep) => {
            let bytes = rec
                .encode()
                .map_err(|e| rdv_err(r, format!("cannot encode the rendezvous record: {e}")))?;
            mnist_rdzv::StoreEndpoint::parse(ep)
                .connect(spec.run_id, spec.deadline)
                .and_then(|mut c| c.set(GROUP_KEY, &bytes))
                .map_err(|e| rdv_err(r, e.to_string()))?;
            None
        }
    };
    listener
        .set_nonblocking(true)
        .map_err(|source| CommError::Io {
            rank: r,
            op: "listener nonblocking".into(),
            source,
        })?;
    let mut socks: Vec<Option<TcpStream>> = (0..spec.world).map(|_| None).collect();
    let mut hosts = vec![String::new(); spec.world];
    let mut pids = vec![0u32; spec.world];
    let mut node_keys = vec![0u64; spec.world];
    let mut addrs = vec![String::new(); spec.world];
    hosts[0] = host;
    pids[0] = std::process::id();
    node_keys[0] = spec.node_rank as u64;
    addrs[0] = data_addr;
    let mut joined = 1;
    let fail = |socks: &mut Vec<Option<TcpStream>>, reason: String| {
        for s in socks.iter_mut().flatten() {
            let _ = send_msg(
                r,
                s,
                &Msg::Reject {
                    reason: reason.clone(),
                },
            );
        }
        rdv_err(r, reason)
    };
    while joined < spec.world {
        let (mut s, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= spec.deadline {
                    let missing: Vec<usize> =
                        (1..spec.world).filter(|&i| socks[i].is_none()).collect();
                    let reason = format!(
                        "rank(s) {missing:?} did not join within {:.0} s ({})",
                        spec.timeout.as_secs_f64(),
                        spec.meeting
                    );
                    return Err(fail(&mut socks, reason));
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(source) => {
                return Err(CommError::Io {
                    rank: r,
                    op: "accept".into(),
                    source,
                })
            }
        };
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        let hello: Msg = match recv_msg(r, &mut s, Duration::from_secs(5), &format!("{peer}")) {
            Ok(m) => m,
            Err(_) => continue, // not one of ours, or too slow to speak: drop it
        };
        let Msg::Hello {
            rank,
            world_size,
            run_id,
            host,
            pid,
            node,
            data_addr,
        } = hello
        else {
            continue;
        };
        let rank = rank as usize;
        let problem = if run_id != spec.run_id {
            Some(format!(
                "rank {rank} (pid {pid}) belongs to run {run_id:?}, not {:?}",
                spec.run_id
            ))
        } else if world_size as usize != spec.world {
            Some(format!(
                "rank {rank} (pid {pid}) has world size {world_size}, rank 0 has {}",
                spec.world
            ))
        } else if rank == 0 || rank >= spec.world {
            Some(format!(
                "rank {rank} (pid {pid}) is out of range 1..{}",
                spec.world
            ))
        } else if socks[rank].is_some() {
            Some(format!(
                "rank {rank} joined twice (pids {} and {pid})",
                pids[rank]
            ))
        } else {
            None
        };
        if let Some(reason) = problem {
            let _ = send_msg(
                r,
                &mut s,
                &Msg::Reject {
                    reason: reason.clone(),
                },
            );
            return Err(fail(&mut socks, reason));
        }
        hosts[rank] = host;
        pids[rank] = pid;
        node_keys[rank] = node;
        addrs[rank] = data_addr;
        socks[rank] = Some(s);
        joined += 1;
    }
    Ok(Group {
        rank: r,
        world: spec.world,
        hosts,
        pids,
        socks,
        payload: spec.payload.clone(),
        node_keys,
        nodes: Vec::new(),
        addrs,
        listener: Some(data),
    })
}

/// Wait for rank 0's record in the rendezvous file.
fn read_file_record(spec: &JoinSpec, path: &Path) -> Result<RendezvousRecord, CommError> {
    let r = spec.rank;
    let mut warned_stale = false;
    loop {
        match RendezvousRecord::read(path, spec.run_id).map_err(|e| rdv_err(r, e.to_string()))? {
            ReadOutcome::Ready(rec) => return Ok(rec),
            ReadOutcome::Stale(why) if !warned_stale => {
                eprintln!(
                    "[mnist-comm] rank {r}: ignoring stale rendezvous file {}: {why}; waiting for this run's",
                    path.display()
                );
                warned_stale = true;
            }
            _ => {}
        }
        if Instant::now() >= spec.deadline {
            return Err(rdv_err(
                r,
                format!(
                    "rank 0 never published the rendezvous file {} within {:.0} s",
                    path.display(),
                    spec.timeout.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait for rank 0's record in the TCP rendezvous store at `ep`.
fn read_store_record(spec: &JoinSpec, ep: &str) -> Result<RendezvousRecord, CommError> {
    let r = spec.rank;
    let mut c = mnist_rdzv::StoreEndpoint::parse(ep)
        .connect(spec.run_id, spec.deadline)
        .map_err(|e| rdv_err(r, e.to_string()))?;
    let wait = spec.deadline.saturating_duration_since(Instant::now());
    let bytes = c
        .get(GROUP_KEY, wait)
        .map_err(|e| rdv_err(r, e.to_string()))?
        .ok_or_else(|| {
            rdv_err(
                r,
                format!(
                    "rank 0 never published its address in the rendezvous store at {ep} within {:.0} s",
                    spec.timeout.as_secs_f64()
                ),
            )
        })?;
    match RendezvousRecord::judge(&bytes, spec.run_id) {
        ReadOutcome::Ready(rec) => Ok(rec),
        ReadOutcome::Stale(why) => Err(rdv_err(
            r,
            format!("unusable record in the rendezvous store at {ep}: {why}"),
        )),
        ReadOutcome::Missing => Err(rdv_err(
            r,
            format!("no record in the rendezvous store at {ep}"),
        )),
    }
}

/// Other ranks: wait for the file, connect, say hello. Returns the group (hosts and pids are
/// filled in by [`await_welcome`]).
pub(crate) fn guest_join(spec: &JoinSpec) -> Result<(Group, TcpStream), CommError> {
    let r = spec.rank;
    let rec = match spec.meeting {
        Meeting::File(path) => read_file_record(spec, path)?,
        Meeting::Store(ep) => read_store_record(spec, ep)?,
    };
    let addr: SocketAddr = rec.addr.parse().map_err(|e| {
        rdv_err(
            r,
            format!("bad address {:?} in the {}: {e}", rec.addr, spec.meeting),
        )
    })?;
    let mut s = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= spec.deadline => {
                return Err(rdv_err(
                    r,
                    format!("cannot reach rank 0 at {addr} (pid {}): {e}", rec.pid),
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = s.set_nodelay(true);
    // The data listener goes on the address this rank reaches rank 0 from: the one the other
    // nodes can reach it on, too.
    let local_ip = s.local_addr().map_err(|source| CommError::Io {
        rank: r,
        op: "local address of the connection to rank 0".into(),
        source,
    })?;
    let (data, data_addr) = data_listener(r, local_ip.ip())?;
    let hello = Msg::Hello {
        rank: r as u64,
        world_size: spec.world as u64,
        run_id: spec.run_id.to_string(),
        host: hostname(),
        pid: std::process::id(),
        node: spec.node_rank as u64,
        data_addr,
    };
    send_msg(r, &mut s, &hello)?;
    let group = Group {
        rank: r,
        world: spec.world,
        hosts: Vec::new(),
        pids: Vec::new(),
        socks: Vec::new(),
        payload: rec.payload,
        node_keys: Vec::new(),
        nodes: Vec::new(),
        addrs: Vec::new(),
        listener: Some(data),
    };
    Ok((group, s))
}

/// Other ranks: wait for rank 0's welcome; returns the segment name to map, if any.
pub(crate) fn await_welcome(
    g: &mut Group,
    mut s: TcpStream,
    deadline: Instant,
) -> Result<Option<String>, CommError> {
    let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
    match recv_msg(g.rank, &mut s, wait, "rank 0")? {
        Msg::Welcome {
            hosts,
            pids,
            shm,
            nodes,
            addrs,
        } if [hosts.len(), pids.len(), nodes.len(), addrs.len()] == [g.world; 4] => {
            g.hosts = hosts;
            g.pids = pids;
            g.nodes = nodes.into_iter().map(|n| n as usize).collect();
            g.addrs = addrs;
            g.socks = vec![Some(s)];
            Ok(shm)
        }
        Msg::Reject { reason } => Err(rdv_err(g.rank, format!("rank 0 refused: {reason}"))),
        other => Err(rdv_err(
            g.rank,
            format!("unexpected message from rank 0: {other:?}"),
        )),
    }
}

/// Rank 0: send everyone the welcome.
pub(crate) fn send_welcome(g: &mut Group, shm: Option<String>) -> Result<(), CommError> {
    let m = Msg::Welcome {
        hosts: g.hosts.clone(),
        pids: g.pids.clone(),
        shm,
        nodes: g.nodes.iter().map(|&n| n as u64).collect(),
        addrs: g.addrs.clone(),
    };
    for s in g.socks.iter_mut().flatten() {
        send_msg(g.rank, s, &m)?;
    }
    Ok(())
}

/// Rank 0: wait until every rank reports it mapped the segment.
pub(crate) fn await_ready(g: &mut Group, wait: Duration) -> Result<(), CommError> {
    for (i, s) in g.socks.iter_mut().enumerate() {
        let Some(s) = s else { continue };
        match recv_msg(g.rank, s, wait, &format!("rank {i}"))? {
            Msg::Ready { error: None } => {}
            Msg::Ready { error: Some(e) } => {
                return Err(rdv_err(
                    g.rank,
                    format!("rank {i} could not map shared memory: {e}"),
                ))
            }
            other => {
                return Err(rdv_err(
                    g.rank,
                    format!("unexpected message from rank {i}: {other:?}"),
                ))
            }
        }
    }
    Ok(())
}
