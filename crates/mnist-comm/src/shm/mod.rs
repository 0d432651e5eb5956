//! The shared-memory backend: ranks on one host exchange data through one mapped segment and
//! synchronise with epoch barriers on atomics (spin briefly, then futex).
//!
//! All-reduce of one chunk (buffers larger than a chunk go chunk by chunk; chunks alternate
//! between two slot sets, "parities", so a fast rank can fill the next chunk while a slow one
//! still reads the previous result). The chunk is cut into one segment per rank; rank r
//! reduces segment r and leaves the result in segment r of its own slot:
//!
//! ```text
//!              seg 0   seg 1   seg 2          1. copy in: each rank copies its buffer into its
//!  slot[p][0] [ a0  ][ a1  ][ a2  ]              slot, except its own segment (it reads that
//!  slot[p][1] [ b0  ][ b1  ][ b2  ]              from its buffer in step 3)
//!  slot[p][2] [ c0  ][ c1  ][ c2  ]           2. barrier (headers compared here)
//!                       │                     3. rank 1: slot[p][1] seg 1 = a1 + b1 + c1
//!                       ▼                        (f32, rank order), also into its buffer
//!  slot[p][1] [     ][ Σ1  ][     ]           4. barrier
//!                                             5. copy out: every rank copies seg r from
//!                                                slot[p][r] for every other rank r
//! ```
//!
//! Every collective first writes its header (sequence, op, dtype, count, extra) into bank
//! `seq % 2`; after the first barrier every rank compares all headers, so a mismatch is seen by
//! every rank alike. While waiting, a rank watches the abort flag, checks every 100 ms that its
//! peers' processes and rendezvous sockets are alive, and gives up after the timeout naming the
//! ranks that did not arrive.

mod segment;

pub use segment::shm_name_for;
pub(crate) use segment::{Plain, Segment};

use crate::group::Group;
use crate::liveness::{pid_alive, socket_closed};
use crate::reduce::{reduce_raw, DType, Elem};
use crate::{CommError, Communicator, ReduceOp};
use segment::{chunk_bytes, futex_wait, futex_wake_all, Field, MAX_WORLD, SLOT_BYTES};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(crate) use segment::MAX_WORLD as SHM_MAX_WORLD;

/// How long a waiting rank spins before it sleeps on the futex: `MNIST_SHM_SPIN_US` (for
/// tuning), else 50 µs.
fn spin_for() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var(mnist_common::contract::ENV_SHM_SPIN_US)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        Duration::from_micros(us)
    })
}
/// How long a waiting rank keeps yielding before it sleeps on the futex:
/// `MNIST_SHM_YIELD_US` (for tuning), else 0: on a busy machine sleeping on the futex lets the
/// scheduler run a woken peer at once, while a yielding one waits for its next time slice.
fn yield_for() -> Duration {
    static YIELD: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *YIELD.get_or_init(|| {
        let us = std::env::var(mnist_common::contract::ENV_SHM_YIELD_US)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Duration::from_micros(us)
    })
}

/// How often a waiting rank checks that its peers are alive.
const LIVENESS_EVERY: Duration = Duration::from_millis(100);

pub(crate) const OP_ALL_REDUCE: u64 = 1;
pub(crate) const OP_BROADCAST: u64 = 2;
pub(crate) const OP_ALL_GATHER: u64 = 3;
pub(crate) const OP_BARRIER: u64 = 4;

/// What a collective is, as written in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpDesc {
    pub op: u64,
    pub dtype: u64,
    pub count: u64,
    pub extra: u64,
}

impl OpDesc {
    /// The descriptor of a broadcast of `len` bytes from `root`, checked by `rank` against
    /// `world`: a root outside the group is an error naming the operation.
    pub(crate) fn broadcast(
        rank: usize,
        world: usize,
        len: usize,
        root: usize,
    ) -> Result<OpDesc, CommError> {
        let d = OpDesc {
            op: OP_BROADCAST,
            dtype: DType::U8 as u64,
            count: len as u64,
            extra: root as u64,
        };
        if root >= world {
            return Err(CommError::InvalidArgument {
                rank,
                op: d.describe(),
                detail: format!("root {root} is not below world size {world}"),
            });
        }
        Ok(d)
    }

    /// Readable form for error messages.
    pub(crate) fn describe(&self) -> String {
        let name = match self.op {
            OP_ALL_REDUCE => "all_reduce",
            OP_BROADCAST => "broadcast",
            OP_ALL_GATHER => "all_gather",
            OP_BARRIER => "barrier",
            _ => "unknown-op",
        };
        match self.op {
            OP_ALL_REDUCE => format!(
                "{name}({} x {}, {})",
                self.count,
                DType::name(self.dtype as u32),
                if self.extra == 1 { "avg" } else { "sum" }
            ),
            OP_BROADCAST => format!("{name}({} bytes from rank {})", self.count, self.extra),
            OP_ALL_GATHER => format!("{name}({} bytes)", self.count),
            _ => name.to_string(),
        }
    }
}

/// Communicator over a shared-memory segment (all ranks on one host).
pub struct ShmComm {
    rank: usize,
    world: usize,
    seg: Segment,
    group: Group,
    timeout: Duration,
    seq: u64,
    phase: u64,
    epoch: u64,
    sent: u64,
    poisoned: Option<String>,
    /// Global rank of each member (a node's segment serves only that node's ranks).
    names: Vec<usize>,
}

/// Element range of segment `r` of a chunk of `len` elements, aligned to 16 elements.
fn segment_range(len: usize, r: usize, world: usize) -> (usize, usize) {
    let per = len.div_ceil(world).div_ceil(16) * 16;
    let s = (r * per).min(len);
    (s, (s + per).min(len))
}

impl ShmComm {
    /// Wrap a mapped segment; `group` supplies pids and liveness sockets.
    pub(crate) fn new(group: Group, seg: Segment, timeout: Duration) -> ShmComm {
        let world = group.world;
        ShmComm {
            rank: group.rank,
            world: group.world,
            seg,
            group,
            timeout,
            seq: 0,
            phase: 0,
            epoch: 0,
            sent: 0,
            poisoned: None,
            names: (0..world).collect(),
        }
    }

    /// Name the members by these global ranks in errors (member i is rank `names[i]`).
    pub(crate) fn with_names(mut self, names: Vec<usize>) -> ShmComm {
        assert_eq!(names.len(), self.world, "one global rank per member");
        self.names = names;
        self
    }

    /// This member's global rank.
    fn me(&self) -> usize {
        self.names[self.rank]
    }

    /// Rank 0 unlinks the segment file once everyone mapped it.
    pub(crate) fn unlink(&mut self) {
        self.seg.unlink();
    }

    fn all_arrived(&self, target: u64) -> bool {
        (0..self.world).all(|r| self.seg.epoch(r).load(Ordering::Acquire) >= target)
    }

    fn check_abort(&self, d: &OpDesc) -> Result<(), CommError> {
        let flag = self.seg.abort_flag().load(Ordering::Acquire);
        if flag == 0 {
            return Ok(());
        }
        let peer = flag as usize - 1;
        Err(CommError::PeerFailed {
            rank: self.me(),
            op: d.describe(),
            peer: self.names.get(peer).copied().unwrap_or(peer),
            what: format!("aborted: {}", self.seg.read_abort_msg(peer)),
        })
    }

    fn check_peers(&self, d: &OpDesc, target: u64) -> Result<(), CommError> {
        for r in (0..self.world).filter(|&r| r != self.rank) {
            if self.seg.epoch(r).load(Ordering::Acquire) >= target {
                continue;
            }
            let pid = self.group.pids[r];
            let sock = if self.rank == 0 {
                self.group.socks.get(r)
            } else if r == 0 {
                self.group.socks.first()
            } else {
                None
            };
            let sock_dead = sock.and_then(|s| s.as_ref()).is_some_and(socket_closed);
            if !pid_alive(pid) || sock_dead {
                return Err(CommError::PeerFailed {
                    rank: self.me(),
                    op: d.describe(),
                    peer: self.names[r],
                    what: format!("(pid {pid}) exited or closed its connection"),
                });
            }
        }
        Ok(())
    }

    /// Arrive at the next barrier and wait for every rank.
    fn barrier_wait(&mut self, d: &OpDesc) -> Result<(), CommError> {
        self.epoch += 1;
        let target = self.epoch;
        self.seg.epoch(self.rank).store(target, Ordering::SeqCst);
        self.seg.wake_word().fetch_add(1, Ordering::SeqCst);
        if self.seg.sleepers().load(Ordering::SeqCst) > 0 {
            futex_wake_all(self.seg.wake_word());
        }
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                if self.all_arrived(target) {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            self.check_abort(d)?;
            let spent = start.elapsed();
            if spent > spin_for().max(yield_for()) {
                break;
            }
            if spent > spin_for() {
                // The peer may be waiting for this core: let it run before we sleep.
                std::thread::yield_now();
            }
        }
        let mut last_check = start;
        loop {
            let sleepers = self.seg.sleepers();
            sleepers.fetch_add(1, Ordering::SeqCst);
            let w = self.seg.wake_word().load(Ordering::SeqCst);
            if !self.all_arrived(target) && self.seg.abort_flag().load(Ordering::SeqCst) == 0 {
                futex_wait(self.seg.wake_word(), w, Duration::from_millis(10));
            }
            sleepers.fetch_sub(1, Ordering::SeqCst);
            if self.all_arrived(target) {
                return Ok(());
            }
            self.check_abort(d)?;
            let now = Instant::now();
            if now.duration_since(last_check) >= LIVENESS_EVERY {
                last_check = now;
                self.check_peers(d, target)?;
            }
            if now.duration_since(start) >= self.timeout {
                let missing = (0..self.world)
                    .filter(|&r| self.seg.epoch(r).load(Ordering::Acquire) < target)
                    .map(|r| self.names[r])
                    .collect();
                return Err(CommError::Timeout {
                    rank: self.me(),
                    op: d.describe(),
                    seconds: now.duration_since(start).as_secs_f64(),
                    missing,
                });
            }
        }
    }

    /// Start a collective: bump the sequence number and publish the header.
    fn begin(&mut self, d: &OpDesc) -> Result<(), CommError> {
        if let Some(first) = &self.poisoned {
            return Err(CommError::Poisoned {
                rank: self.me(),
                first: first.clone(),
            });
        }
        self.seq += 1;
        let bank = (self.seq % 2) as usize;
        let h = |f| self.seg.header(bank, self.rank, f);
        h(Field::Op).store(d.op, Ordering::Relaxed);
        h(Field::DType).store(d.dtype, Ordering::Relaxed);
        h(Field::Count).store(d.count, Ordering::Relaxed);
        h(Field::Extra).store(d.extra, Ordering::Relaxed);
        h(Field::Seq).store(self.seq, Ordering::Relaxed);
        Ok(())
    }

    /// After the first barrier: every rank compares every header (identically on all ranks).
    fn check_headers(&self, _d: &OpDesc) -> Result<(), CommError> {
        let bank = (self.seq % 2) as usize;
        let read = |r: usize| {
            let h = |f| self.seg.header(bank, r, f).load(Ordering::Relaxed);
            (
                h(Field::Seq),
                OpDesc {
                    op: h(Field::Op),
                    dtype: h(Field::DType),
                    count: h(Field::Count),
                    extra: h(Field::Extra),
                },
            )
        };
        let (seq0, h0) = read(0);
        let same = |(s, h): (u64, OpDesc)| {
            s == seq0
                && h.op == h0.op
                && h.dtype == h0.dtype
                && h.extra == h0.extra
                && (h.count == h0.count || h.op == OP_ALL_GATHER)
        };
        if (1..self.world).all(|r| same(read(r))) {
            return Ok(());
        }
        let detail = (0..self.world)
            .map(|r| {
                let (s, h) = read(r);
                format!("rank {}: #{s} {}", self.names[r], h.describe())
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(CommError::Mismatch {
            rank: self.me(),
            seq: self.seq,
            detail,
        })
    }

    fn finish<T>(&mut self, r: Result<T, CommError>) -> Result<T, CommError> {
        if let Err(e) = &r {
            if self.poisoned.is_none() {
                self.poisoned = Some(e.to_string());
            }
        }
        r
    }

    fn next_parity(&mut self) -> usize {
        self.phase += 1;
        (self.phase % 2) as usize
    }

    fn all_reduce<T: Elem>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<(), CommError> {
        let d = OpDesc {
            op: OP_ALL_REDUCE,
            dtype: T::DTYPE as u64,
            count: buf.len() as u64,
            extra: u64::from(op == ReduceOp::Average),
        };
        self.begin(&d)?;
        let r = self.all_reduce_inner(buf, op, &d, false);
        self.finish(r)
    }

    /// The sum of every member's `buf` into member 0's `buf` (the others' are left partly
    /// summed); `d` is the caller's collective, compared between the members.
    pub(crate) fn reduce_sum_to_first<T: Elem>(
        &mut self,
        buf: &mut [T],
        d: &OpDesc,
    ) -> Result<(), CommError> {
        self.begin(d)?;
        let r = self.all_reduce_inner(buf, ReduceOp::Sum, d, true);
        self.finish(r)
    }

    /// Member `root`'s bytes into every member's `buf`, under the caller's collective `d`.
    pub(crate) fn broadcast_as(
        &mut self,
        buf: &mut [u8],
        root: usize,
        d: &OpDesc,
    ) -> Result<(), CommError> {
        self.begin(d)?;
        let r = self.broadcast_inner(buf, root, d);
        self.finish(r)
    }

    /// Every member's bytes, under the caller's collective `d` (an all-gather: sizes may
    /// differ).
    pub(crate) fn all_gather_as(
        &mut self,
        send: &[u8],
        d: &OpDesc,
    ) -> Result<Vec<Vec<u8>>, CommError> {
        let d = OpDesc {
            count: send.len() as u64,
            ..*d
        };
        self.begin(&d)?;
        let r = self.all_gather_inner(send, &d);
        self.finish(r)
    }

    /// A barrier under the caller's collective `d`.
    pub(crate) fn barrier_as(&mut self, d: &OpDesc) -> Result<(), CommError> {
        self.begin(d)?;
        let r = self.barrier_wait(d).and_then(|_| self.check_headers(d));
        self.finish(r)
    }

    fn all_reduce_inner<T: Elem>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
        d: &OpDesc,
        only_first: bool,
    ) -> Result<(), CommError> {
        let chunk = chunk_bytes() / std::mem::size_of::<T>();
        let (w, me) = (self.world, self.rank);
        let mut off = 0;
        let mut first = true;
        loop {
            let len = chunk.min(buf.len() - off);
            let p = self.next_parity();
            let (s, e) = segment_range(len, me, w);
            // SAFETY: (this and the slot accesses below) between two barriers each byte of
            // slot[p][*] has one writer and no other reader, or readers only: phase 1
            // every rank writes its own slot outside its own segment; phase 2 rank r reads
            // segment r of every slot and writes segment r of its own; phase 3 everyone reads
            // the result segments. Parities alternate, so the next chunk's writes go to the
            // other slot set until everyone passed this chunk's last barrier.
            unsafe {
                self.seg.write_slot(p, me, 0, &buf[off..off + s]);
                self.seg.write_slot(p, me, e, &buf[off + e..off + len]);
            }
            self.barrier_wait(d)?;
            if first {
                self.check_headers(d)?;
                first = false;
            }
            if len == 0 {
                break;
            }
            if s < e {
                let mine = buf[off + s..off + e].as_mut_ptr();
                let mut srcs = [std::ptr::null::<T>(); MAX_WORLD];
                for (r, src) in srcs.iter_mut().enumerate().take(w) {
                    *src = if r == me {
                        mine as *const T
                    } else {
                        self.seg.slot_ptr::<T>(p, r, s, e - s) as *const T
                    };
                }
                // SAFETY: every source holds `e - s` elements: rank r's slot segment (written
                // before the barrier, read only by us until the next one) or our own buffer's
                // segment, which is also the destination (allowed: the same pointer).
                unsafe { reduce_raw(mine, &srcs[..w], e - s, op, w) };
                // SAFETY: segment [s, e) of our own slot is ours to write in this phase.
                unsafe { self.seg.write_slot(p, me, s, &buf[off + s..off + e]) };
            }
            self.barrier_wait(d)?;
            let readers = if only_first && me != 0 { 0 } else { w };
            for r in (0..readers).filter(|&r| r != me) {
                let (rs, re) = segment_range(len, r, w);
                // SAFETY: rank r wrote its result segment before the barrier; until the next
                // phase's barrier every rank only reads it.
                unsafe { self.seg.read_slot(p, r, rs, &mut buf[off + rs..off + re]) };
            }
            off += len;
            if off >= buf.len() {
                break;
            }
        }
        let bytes = std::mem::size_of_val(buf) as u64;
        self.sent += 2 * bytes * (w as u64 - 1) / w as u64;
        Ok(())
    }

    fn broadcast_inner(
        &mut self,
        buf: &mut [u8],
        root: usize,
        d: &OpDesc,
    ) -> Result<(), CommError> {
        let mut off = 0;
        let mut first = true;
        loop {
            let len = SLOT_BYTES.min(buf.len() - off);
            let p = self.next_parity();
            if self.rank == root {
                // SAFETY: only the root touches slot[p][root] in this phase.
                unsafe { self.seg.write_slot(p, root, 0, &buf[off..off + len]) };
            }
            self.barrier_wait(d)?;
            if first {
                self.check_headers(d)?;
                first = false;
            }
            if self.rank != root {
                // SAFETY: written before the barrier, only read until the next phase's barrier.
                unsafe { self.seg.read_slot(p, root, 0, &mut buf[off..off + len]) };
            }
            off += len;
            if off >= buf.len() {
                break;
            }
        }
        if self.rank == root {
            self.sent += (buf.len() * (self.world - 1)) as u64;
        }
        Ok(())
    }

    fn all_gather_inner(&mut self, send: &[u8], d: &OpDesc) -> Result<Vec<Vec<u8>>, CommError> {
        self.barrier_wait(d)?;
        self.check_headers(d)?;
        let bank = (self.seq % 2) as usize;
        let lens: Vec<usize> = (0..self.world)
            .map(|r| {
                self.seg
                    .header(bank, r, Field::Count)
                    .load(Ordering::Relaxed) as usize
            })
            .collect();
        let mut out: Vec<Vec<u8>> = lens.iter().map(|&n| Vec::with_capacity(n)).collect();
        let rounds = lens.iter().max().copied().unwrap_or(0).div_ceil(SLOT_BYTES);
        for k in 0..rounds {
            let p = self.next_parity();
            let lo = (k * SLOT_BYTES).min(send.len());
            let hi = ((k + 1) * SLOT_BYTES).min(send.len());
            // SAFETY: only this rank touches its own slot in this phase.
            unsafe { self.seg.write_slot(p, self.rank, 0, &send[lo..hi]) };
            self.barrier_wait(d)?;
            for (r, o) in out.iter_mut().enumerate() {
                let n = lens[r].saturating_sub(k * SLOT_BYTES).min(SLOT_BYTES);
                let have = o.len();
                o.resize(have + n, 0);
                // SAFETY: rank r wrote these n bytes before the barrier; read-only until the
                // next phase's barrier.
                unsafe { self.seg.read_slot(p, r, 0, &mut o[have..]) };
            }
        }
        self.sent += (send.len() * (self.world - 1)) as u64;
        Ok(out)
    }
}

impl Communicator for ShmComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    crate::typed_all_reduce_via_generic!();
    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<(), CommError> {
        let d = OpDesc::broadcast(self.me(), self.world, buf.len(), root)?;
        self.begin(&d)?;
        let r = self.broadcast_inner(buf, root, &d);
        self.finish(r)
    }
    fn all_gather_bytes(&mut self, send: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        let d = OpDesc {
            op: OP_ALL_GATHER,
            dtype: DType::U8 as u64,
            count: send.len() as u64,
            extra: 0,
        };
        self.begin(&d)?;
        let r = self.all_gather_inner(send, &d);
        self.finish(r)
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        let d = OpDesc {
            op: OP_BARRIER,
            dtype: DType::U8 as u64,
            count: 0,
            extra: 0,
        };
        self.begin(&d)?;
        let r = self.barrier_wait(&d).and_then(|_| self.check_headers(&d));
        self.finish(r)
    }
    fn bytes_sent(&self) -> u64 {
        self.sent
    }
    fn abort(&mut self, reason: &str) {
        self.seg.write_abort_msg(self.rank, reason);
        let _ = self.seg.abort_flag().compare_exchange(
            0,
            self.rank as u32 + 1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.seg.wake_word().fetch_add(1, Ordering::SeqCst);
        futex_wake_all(self.seg.wake_word());
        if self.poisoned.is_none() {
            self.poisoned = Some(format!("this rank aborted: {reason}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::segment_range;

    #[test]
    fn segments_cover_the_chunk_without_overlap() {
        for len in [0usize, 1, 15, 16, 17, 1000, 262_144] {
            for w in 1..6 {
                let mut next = 0;
                for r in 0..w {
                    let (s, e) = segment_range(len, r, w);
                    assert_eq!(s, next.min(len));
                    assert!(e >= s);
                    next = e;
                }
                assert_eq!(next, len);
            }
        }
    }
}
