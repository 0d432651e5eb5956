//! The TCP backend: a star through rank 0 over the rendezvous connections. Every rank sends
//! rank 0 a frame carrying (seq, op, dtype, count, extra) and its data; rank 0 checks that the
//! headers agree, computes the answer and sends it back (or an error frame that every rank
//! turns into the same error).
//!
//! ```text
//!   rank 1 ──frame──►┐                 ┌──result──► rank 1
//!   rank 2 ──frame──►├─ rank 0 checks ─┼──result──► rank 2
//!   rank 3 ──frame──►┘  and reduces    └──result──► rank 3
//! ```

use crate::group::Group;
use crate::reduce::{reduce_into, DType, Elem};
use crate::shm::{OpDesc, OP_ALL_GATHER, OP_ALL_REDUCE, OP_BARRIER};
use crate::{CommError, Communicator, ReduceOp};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const MAGIC: u32 = 0x4d44_5031;
const KIND_DATA: u32 = 1;
const KIND_ERR: u32 = 2;
const ERR_MISMATCH: u64 = 1;
const ERR_TIMEOUT: u64 = 2;
const ERR_PEER: u64 = 3;
const HEADER: usize = 56;

/// A frame header: kind, sequence number, the collective's description, payload length.
#[derive(Clone, Copy, Debug)]
struct Head {
    kind: u32,
    seq: u64,
    d: OpDesc,
    len: u64,
}

fn encode_head(h: &Head) -> [u8; HEADER] {
    let mut b = [0u8; HEADER];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&h.kind.to_le_bytes());
    for (i, v) in [h.seq, h.d.op, h.d.dtype, h.d.count, h.d.extra, h.len]
        .iter()
        .enumerate()
    {
        b[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    b
}

fn decode_head(b: &[u8; HEADER]) -> Option<Head> {
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    if u32_at(0) != MAGIC {
        return None;
    }
    let d = OpDesc {
        op: u64_at(16),
        dtype: u64_at(24),
        count: u64_at(32),
        extra: u64_at(40),
    };
    Some(Head {
        kind: u32_at(4),
        seq: u64_at(8),
        d,
        len: u64_at(48),
    })
}

/// Communicator over TCP, star-shaped through rank 0.
pub struct TcpComm {
    rank: usize,
    world: usize,
    group: Group,
    timeout: Duration,
    seq: u64,
    sent: u64,
    poisoned: Option<String>,
    /// Outgoing payload / rank 0's answer.
    out: Vec<u8>,
    /// Rank 0: the payload each rank sent; others: rank 0's answer at index 0.
    inbox: Vec<Vec<u8>>,
    heads: Vec<Option<Head>>,
}

impl TcpComm {
    /// Use the rendezvous connections of `group` for collectives.
    pub(crate) fn new(group: Group, timeout: Duration) -> TcpComm {
        for s in group.socks.iter().flatten() {
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_write_timeout(Some(timeout));
        }
        let world = group.world;
        TcpComm {
            rank: group.rank,
            world,
            group,
            timeout,
            seq: 0,
            sent: 0,
            poisoned: None,
            out: Vec::new(),
            inbox: vec![Vec::new(); world],
            heads: vec![None; world],
        }
    }

    fn io_err(&self, peer: usize, d: &OpDesc, e: std::io::Error) -> CommError {
        CommError::PeerFailed {
            rank: self.rank,
            op: d.describe(),
            peer,
            what: format!("connection failed: {e}"),
        }
    }

    fn send(
        &mut self,
        peer: usize,
        h: Head,
        payload_from_out: bool,
        d: &OpDesc,
    ) -> Result<(), CommError> {
        let idx = if self.rank == 0 { peer } else { 0 };
        let head = encode_head(&h);
        let Some(Some(s)) = self.group.socks.get_mut(idx) else {
            return Ok(());
        };
        let r = s.write_all(&head).and_then(|_| {
            if payload_from_out {
                s.write_all(&self.out)
            } else {
                Ok(())
            }
        });
        r.map_err(|e| self.io_err(peer, d, e))
    }

    fn send_err(&mut self, peer: usize, code: u64, about: usize, msg: &str) {
        let d = OpDesc {
            op: code,
            dtype: 0,
            count: 0,
            extra: about as u64,
        };
        let head = encode_head(&Head {
            kind: KIND_ERR,
            seq: self.seq,
            d,
            len: msg.len() as u64,
        });
        let idx = if self.rank == 0 { peer } else { 0 };
        if let Some(Some(s)) = self.group.socks.get_mut(idx) {
            let _ = s.write_all(&head).and_then(|_| s.write_all(msg.as_bytes()));
        }
    }

    /// Rank 0: tell every other rank (except `skip`) about a failure.
    fn broadcast_err(&mut self, skip: Option<usize>, code: u64, about: usize, msg: &str) {
        for r in (1..self.world).filter(|&r| Some(r) != skip) {
            self.send_err(r, code, about, msg);
        }
    }

    /// Read one frame from socket `idx` into `inbox[slot]`.
    fn read_frame(&mut self, idx: usize, slot: usize) -> Result<Head, std::io::Error> {
        let Some(Some(s)) = self.group.socks.get_mut(idx) else {
            return Err(std::io::Error::other("no connection"));
        };
        let mut hb = [0u8; HEADER];
        s.read_exact(&mut hb)?;
        let h = decode_head(&hb).ok_or_else(|| std::io::Error::other("bad frame magic"))?;
        if h.len > 1 << 36 {
            return Err(std::io::Error::other(format!(
                "frame of {} bytes is too long",
                h.len
            )));
        }
        let buf = &mut self.inbox[slot];
        buf.resize(h.len as usize, 0);
        s.read_exact(buf)?;
        Ok(h)
    }

    /// Wait until one of `pending` sockets is readable (or `wait` passes); returns them.
    fn poll_ready(&self, pending: &[usize], wait: Duration) -> Vec<usize> {
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .filter_map(|&r| self.group.socks.get(r).and_then(|s| s.as_ref()))
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = wait.as_millis().min(100) as i32;
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n <= 0 {
            return Vec::new();
        }
        pending
            .iter()
            .zip(&fds)
            .filter(|(_, f)| f.revents != 0)
            .map(|(r, _)| *r)
            .collect()
    }

    /// Turn an error frame in `inbox[slot]` into the error it reports.
    fn err_from_frame(&self, h: &Head, slot: usize, from: usize, d: &OpDesc) -> CommError {
        let msg = String::from_utf8_lossy(&self.inbox[slot]).into_owned();
        let about = h.d.extra as usize;
        match h.d.op {
            ERR_MISMATCH => CommError::Mismatch {
                rank: self.rank,
                seq: self.seq,
                detail: msg,
            },
            ERR_TIMEOUT => CommError::Timeout {
                rank: self.rank,
                op: d.describe(),
                seconds: self.timeout.as_secs_f64(),
                missing: msg
                    .split(',')
                    .filter_map(|t| t.trim().parse().ok())
                    .collect(),
            },
            _ => CommError::PeerFailed {
                rank: self.rank,
                op: d.describe(),
                peer: if h.d.op == ERR_PEER { about } else { from },
                what: msg,
            },
        }
    }

    /// One exchange: everyone's frame to rank 0; rank 0 checks the headers and calls
    /// `answer` (which fills `self.out`), then sends it back. Afterwards every rank's answer
    /// is in `self.out` (rank 0) or `self.inbox[0]` (others).
    fn exchange(
        &mut self,
        d: &OpDesc,
        answer: &mut dyn FnMut(&mut TcpComm) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        if let Some(first) = &self.poisoned {
            return Err(CommError::Poisoned {
                rank: self.rank,
                first: first.clone(),
            });
        }
        self.seq += 1;
        let me = Head {
            kind: KIND_DATA,
            seq: self.seq,
            d: *d,
            len: self.out.len() as u64,
        };
        let r = if self.rank == 0 {
            self.serve(d, me, answer)
        } else {
            self.ask(d, me)
        };
        if let Err(e) = &r {
            self.poisoned.get_or_insert_with(|| e.to_string());
        }
        r
    }

    fn ask(&mut self, d: &OpDesc, me: Head) -> Result<(), CommError> {
        if let Err(e) = self.send(0, me, true, d) {
            // Rank 0 may have closed after telling us why: prefer its error frame.
            if !self.poll_ready(&[0], Duration::from_millis(100)).is_empty() {
                if let Ok(h) = self.read_frame(0, 0) {
                    if h.kind == KIND_ERR {
                        return Err(self.err_from_frame(&h, 0, 0, d));
                    }
                }
            }
            return Err(e);
        }
        let start = Instant::now();
        let limit = self.timeout + Duration::from_secs(2);
        loop {
            if !self.poll_ready(&[0], limit).is_empty() {
                break;
            }
            if start.elapsed() >= limit {
                return Err(CommError::Timeout {
                    rank: self.rank,
                    op: d.describe(),
                    seconds: start.elapsed().as_secs_f64(),
                    missing: vec![0],
                });
            }
        }
        let h = self.read_frame(0, 0).map_err(|e| self.io_err(0, d, e))?;
        if h.kind == KIND_ERR {
            return Err(self.err_from_frame(&h, 0, 0, d));
        }
        Ok(())
    }

    fn serve(
        &mut self,
        d: &OpDesc,
        me: Head,
        answer: &mut dyn FnMut(&mut TcpComm) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        std::mem::swap(&mut self.inbox[0], &mut self.out);
        self.heads[0] = Some(me);
        let mut pending: Vec<usize> = (1..self.world).collect();
        let start = Instant::now();
        while !pending.is_empty() {
            let left = self.timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                let list = pending
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                self.broadcast_err(None, ERR_TIMEOUT, 0, &list);
                return Err(CommError::Timeout {
                    rank: 0,
                    op: d.describe(),
                    seconds: start.elapsed().as_secs_f64(),
                    missing: pending,
                });
            }
            for r in self.poll_ready(&pending, left) {
                pending.retain(|&p| p != r);
                let h = match self.read_frame(r, r) {
                    Ok(h) => h,
                    Err(e) => {
                        let msg = format!("connection lost ({e})");
                        self.broadcast_err(Some(r), ERR_PEER, r, &msg);
                        return Err(CommError::PeerFailed {
                            rank: 0,
                            op: d.describe(),
                            peer: r,
                            what: msg,
                        });
                    }
                };
                if h.kind == KIND_ERR {
                    let e = self.err_from_frame(&h, r, r, d);
                    let msg = String::from_utf8_lossy(&self.inbox[r]).into_owned();
                    self.broadcast_err(Some(r), ERR_PEER, r, &msg);
                    return Err(e);
                }
                self.heads[r] = Some(h);
            }
        }
        let agree = self.heads.iter().flatten().all(|h| {
            h.seq == me.seq
                && h.d.op == d.op
                && h.d.dtype == d.dtype
                && h.d.extra == d.extra
                && (h.d.count == d.count || d.op == OP_ALL_GATHER)
        });
        if !agree {
            let detail = self
                .heads
                .iter()
                .enumerate()
                .map(|(r, h)| {
                    h.map_or(format!("rank {r}: ?"), |h| {
                        format!("rank {r}: #{} {}", h.seq, h.d.describe())
                    })
                })
                .collect::<Vec<_>>()
                .join("; ");
            self.broadcast_err(None, ERR_MISMATCH, 0, &detail);
            return Err(CommError::Mismatch {
                rank: 0,
                seq: self.seq,
                detail,
            });
        }
        answer(self)?;
        let reply = Head {
            kind: KIND_DATA,
            seq: self.seq,
            d: *d,
            len: self.out.len() as u64,
        };
        for r in 1..self.world {
            self.send(r, reply, true, d)?;
        }
        Ok(())
    }

    fn all_reduce<T: Elem>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<(), CommError> {
        let d = OpDesc {
            op: OP_ALL_REDUCE,
            dtype: T::DTYPE as u64,
            count: buf.len() as u64,
            extra: u64::from(op == ReduceOp::Average),
        };
        self.out.clear();
        if self.rank != 0 {
            T::to_le(buf, &mut self.out);
        }
        let n = buf.len();
        let nbytes = std::mem::size_of_val(buf);
        let world = self.world;
        let mut own = Some(buf);
        self.exchange(&d, &mut |c: &mut TcpComm| {
            let Some(buf) = own.take() else { return Ok(()) };
            let parsed: Vec<Vec<T>> = (1..world)
                .map(|r| {
                    let mut v = vec![T::default(); n];
                    let src = c.inbox[r]
                        .get(..nbytes)
                        .ok_or_else(|| short(c.rank, r, c.seq))?;
                    T::from_le(src, &mut v);
                    Ok(v)
                })
                .collect::<Result<_, CommError>>()?;
            let mut srcs: Vec<&[T]> = vec![&*buf];
            srcs.extend(parsed.iter().map(|v| v.as_slice()));
            let mut res = vec![T::default(); n];
            reduce_into(&mut res, &srcs, op, world);
            buf.copy_from_slice(&res);
            c.out.clear();
            T::to_le(&res, &mut c.out);
            Ok(())
        })?;
        if let Some(buf) = own {
            let src = self.inbox[0]
                .get(..nbytes)
                .ok_or_else(|| short(self.rank, 0, self.seq))?;
            T::from_le(src, buf);
        }
        self.sent += 2 * nbytes as u64 * (world as u64 - 1) / world as u64;
        Ok(())
    }
}

/// A data frame shorter than its header promised.
fn short(rank: usize, from: usize, seq: u64) -> CommError {
    CommError::Mismatch {
        rank,
        seq,
        detail: format!("rank {from} sent fewer bytes than its header announced"),
    }
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    crate::typed_all_reduce_via_generic!();
    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<(), CommError> {
        let d = OpDesc::broadcast(self.rank, self.world, buf.len(), root)?;
        self.out.clear();
        if self.rank == root {
            self.out.extend_from_slice(buf);
        }
        let n = buf.len();
        self.exchange(&d, &mut |c: &mut TcpComm| {
            let src = std::mem::take(&mut c.inbox[root]);
            c.out.clear();
            c.out.extend_from_slice(&src[..n.min(src.len())]);
            c.inbox[root] = src;
            Ok(())
        })?;
        let got = if self.rank == 0 {
            &self.out
        } else {
            &self.inbox[0]
        };
        if got.len() == n {
            buf.copy_from_slice(got);
        }
        if self.rank == root {
            self.sent += (n * (self.world - 1)) as u64;
        }
        Ok(())
    }
    fn all_gather_bytes(&mut self, send: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        let d = OpDesc {
            op: OP_ALL_GATHER,
            dtype: DType::U8 as u64,
            count: send.len() as u64,
            extra: 0,
        };
        self.out.clear();
        self.out.extend_from_slice(send);
        self.exchange(&d, &mut |c: &mut TcpComm| {
            let mut all = Vec::new();
            for part in &c.inbox {
                all.extend_from_slice(&(part.len() as u64).to_le_bytes());
                all.extend_from_slice(part);
            }
            c.out = all;
            Ok(())
        })?;
        let all = if self.rank == 0 {
            &self.out
        } else {
            &self.inbox[0]
        };
        let mut parts = Vec::with_capacity(self.world);
        let mut at = 0usize;
        for r in 0..self.world {
            let bad = || CommError::Mismatch {
                rank: self.rank,
                seq: self.seq,
                detail: format!("all_gather answer truncated at rank {r}"),
            };
            let lb = all.get(at..at + 8).ok_or_else(bad)?;
            let n = u64::from_le_bytes(lb.try_into().map_err(|_| bad())?) as usize;
            parts.push(all.get(at + 8..at + 8 + n).ok_or_else(bad)?.to_vec());
            at += 8 + n;
        }
        self.sent += (send.len() * (self.world - 1)) as u64;
        Ok(parts)
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        let d = OpDesc {
            op: OP_BARRIER,
            dtype: DType::U8 as u64,
            count: 0,
            extra: 0,
        };
        self.out.clear();
        self.exchange(&d, &mut |c: &mut TcpComm| {
            c.out.clear();
            Ok(())
        })
    }
    fn bytes_sent(&self) -> u64 {
        self.sent
    }
    fn abort(&mut self, reason: &str) {
        let msg = format!("rank {} aborted: {reason}", self.rank);
        if self.rank == 0 {
            self.broadcast_err(None, ERR_PEER, 0, &msg);
        } else {
            self.send_err(0, ERR_PEER, self.rank, &msg);
        }
        self.poisoned.get_or_insert(msg);
    }
}
