//! The ring between node leaders over TCP: a bandwidth-optimal all-reduce (reduce-scatter then
//! all-gather), a pipelined chain broadcast and a ring all-gather of byte blobs.
//!
//! Member `i` of `n` sends to member `i + 1` and receives from member `i − 1` on two
//! connections (made when the group forms). The buffer is cut into `n` segments; in step
//! `t = 0 .. 2(n−1)` member `i` sends segment `(i − t) mod n` and receives segment
//! `(i − t − 1) mod n`: during the first `n − 1` steps it adds what it receives (after them it
//! holds the full sum of segment `i + 1`), during the last `n − 1` it copies. So every member
//! sends `2(n−1)/n` of the buffer, whatever `n` is:
//!
//! ```text
//!   n = 3, step:     0           1           2           3
//!   member 0 sends  seg 0       seg 2 (+)   seg 1 (Σ)   seg 0 (Σ)
//!   member 1 sends  seg 1       seg 0 (+)   seg 2 (Σ)   seg 1 (Σ)
//!   member 2 sends  seg 2       seg 1 (+)   seg 0 (Σ)   seg 2 (Σ)
//! ```
//!
//! Segments travel in chunks of [`CHUNK_BYTES`]; chunk `c` of step `t + 1` leaves as soon as
//! chunk `c` of step `t` has arrived, so a large buffer streams through the ring, and every
//! member sends and receives at the same time (full duplex). The all-reduce does both in one
//! loop that never waits on either socket alone, with no thread: frames leave straight from
//! the caller's buffer (partial sums are kept there, in its element type), and the all-gather
//! half lands straight in place. The other collectives write a frame
//! at once as far as the socket takes it without waiting and hand the rest, and everything
//! after it, to a sender thread. Every frame carries the collective's header (sequence, op,
//! dtype, count, extra), checked against the receiver's own before its payload is used; every
//! step sends at least one frame, so a mismatch is always seen.
//!
//! Failures travel the ring as error frames: the member that sees one first (a mismatch, a
//! closed connection, a timeout, a failure inside its node, an abort) sends an error frame to
//! its successor, and each member forwards the first one it receives, so every member stops
//! with the same cause, naming the failed rank and its address.

use crate::reduce::{as_bytes, as_bytes_mut, Elem, BLOCK};
use crate::shm::OpDesc;
use crate::CommError;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Payload bytes per frame of a pipelined collective (1 MiB measured faster than 256 KiB for
/// 1-4 MB buffers on loopback and keeps a 1 Gbit/s link as busy).
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

const MAGIC: u32 = 0x4d44_5052;
const KIND_DATA: u32 = 1;
const KIND_ERR: u32 = 2;
/// Error frame codes (in the op field).
const ERR_MISMATCH: u64 = 1;
const ERR_TIMEOUT: u64 = 2;
const ERR_PEER: u64 = 3;
/// Bytes of a frame header.
pub(crate) const HEADER: usize = 56;
/// Longest frame accepted.
const MAX_FRAME: u64 = 1 << 36;

/// A frame header: kind, sequence number, the collective's description, payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub kind: u32,
    pub seq: u64,
    pub d: OpDesc,
    pub len: u64,
}

impl Head {
    /// The 56 wire bytes: magic, kind (u32 LE), then seq, op, dtype, count, extra, len (u64 LE).
    pub(crate) fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.kind.to_le_bytes());
        let d = &self.d;
        for (i, v) in [self.seq, d.op, d.dtype, d.count, d.extra, self.len]
            .iter()
            .enumerate()
        {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Parse wire bytes; `None` when the magic is wrong.
    pub(crate) fn decode(b: &[u8; HEADER]) -> Option<Head> {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        if b[0..4] != MAGIC.to_le_bytes() {
            return None;
        }
        Some(Head {
            kind: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            seq: u64_at(8),
            d: OpDesc {
                op: u64_at(16),
                dtype: u64_at(24),
                count: u64_at(32),
                extra: u64_at(40),
            },
            len: u64_at(48),
        })
    }
}

/// Element range of segment `k` of `n` over `len` elements (balanced; empty when `len < n`).
pub(crate) fn segment(len: usize, n: usize, k: usize) -> (usize, usize) {
    (k * len / n, (k + 1) * len / n)
}

/// Chunks of a segment of `len` elements, `per` elements each; always at least one (possibly
/// empty) chunk, so every step carries a header.
pub(crate) fn chunks(start: usize, end: usize, per: usize) -> Vec<(usize, usize)> {
    if end <= start {
        return vec![(start, start)];
    }
    (start..end)
        .step_by(per.max(1))
        .map(|s| (s, (s + per).min(end)))
        .collect()
}

/// The segment member `i` of `n` sends in step `t` (it receives segment `send_seg(i, n, t + 1)`).
pub(crate) fn send_seg(i: usize, n: usize, t: usize) -> usize {
    (i + n * (t / n + 1) - t) % n
}

/// The payload of an [`Outgoing`] frame.
enum Body {
    /// Elements `a..b` of the all-reduce's buffer (their bytes are the wire bytes).
    Buf(usize, usize),
    /// Bytes of its own (the little-endian form of elements on a big-endian machine).
    Own(Vec<u8>),
}

impl Body {
    /// The payload's bytes, given the buffer that `Buf` ranges point into.
    fn bytes<'a, T: Elem>(&'a self, buf: &'a [T]) -> &'a [u8] {
        match self {
            Body::Buf(a, b) => as_bytes(&buf[*a..*b]),
            Body::Own(v) => v,
        }
    }
}

/// A frame of [`Ring::all_reduce`] waiting to leave: its header, then its body; `done` bytes
/// of the two are written.
struct Outgoing {
    head: [u8; HEADER],
    body: Body,
    done: usize,
}

impl Outgoing {
    /// A data frame of `#seq d` with `body` (`Buf` ranges of elements `esz` bytes wide).
    fn new(seq: u64, d: &OpDesc, body: Body, esz: usize) -> Outgoing {
        let len = match &body {
            Body::Buf(a, b) => (b - a) * esz,
            Body::Own(v) => v.len(),
        };
        let head = Head {
            kind: KIND_DATA,
            seq,
            d: *d,
            len: len as u64,
        }
        .encode();
        Outgoing {
            head,
            body,
            done: 0,
        }
    }
}

/// What the sender thread is asked to do.
enum Job {
    /// Write this frame (header included); data frames are skipped once cancelled.
    Frame { data: bool, bytes: Vec<u8> },
    /// Report [`Event::Flushed`] once everything before it is written.
    Flush(u64),
}

/// What the sender thread reports.
enum Event {
    /// A frame buffer to reuse.
    Spare(Vec<u8>),
    /// Everything up to this flush token is written.
    Flushed(u64),
    /// Writing failed; later frames are dropped.
    Failed(std::io::Error),
}

fn sender_loop(
    mut sock: TcpStream,
    jobs: Receiver<Job>,
    events: Sender<Event>,
    cancel: Arc<AtomicBool>,
) {
    let mut broken = false;
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Frame { data, bytes } => {
                let skip = broken || (data && cancel.load(Ordering::Acquire));
                if !skip {
                    if let Err(e) = sock.write_all(&bytes) {
                        broken = true;
                        let _ = events.send(Event::Failed(e));
                    }
                }
                let _ = events.send(Event::Spare(bytes));
            }
            Job::Flush(token) => {
                let _ = events.send(Event::Flushed(token));
            }
        }
    }
}

/// One member's end of the ring.
pub(crate) struct Ring {
    /// Global rank of this process.
    rank: usize,
    /// Position in the ring.
    index: usize,
    /// Global rank of each member.
    members: Vec<usize>,
    /// Data address of each member.
    addrs: Vec<String>,
    /// How long to wait for the predecessor.
    timeout: Duration,
    /// Extra wait before blaming the predecessor when it may itself be waiting on its node.
    slack: Duration,
    recv: TcpStream,
    /// A second handle on the outgoing connection: while the sender thread is idle, frames are
    /// written on it directly as far as the socket takes them without waiting (the rest goes
    /// to the thread), and it shows the successor closing the connection.
    send_probe: TcpStream,
    jobs: Option<Sender<Job>>,
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    spare: Vec<Vec<u8>>,
    inbuf: Vec<u8>,
    flush_token: u64,
    /// The first failure, once there was one: later calls fail at once, nothing is forwarded
    /// twice.
    failed: bool,
    /// Whether the predecessor already sent a frame of the current collective.
    prev_entered: bool,
    /// A write failure the sender reported and nobody handled yet.
    write_error: Option<std::io::Error>,
    /// Frames handed to the sender thread and not yet written.
    outstanding: usize,
}

impl Ring {
    /// Member `index` of the ring `members` (global ranks, their data addresses in `addrs`),
    /// sending on `send` (to member `index + 1`) and receiving on `recv` (from `index − 1`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        rank: usize,
        index: usize,
        members: Vec<usize>,
        addrs: Vec<String>,
        send: TcpStream,
        recv: TcpStream,
        timeout: Duration,
        slack: Duration,
    ) -> std::io::Result<Ring> {
        for s in [&send, &recv] {
            s.set_nodelay(true)?;
        }
        send.set_write_timeout(Some(timeout + slack))?;
        recv.set_read_timeout(Some(timeout + slack))?;
        let send_probe = send.try_clone()?;
        let (jobs, job_rx) = channel();
        let (ev_tx, events) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let c2 = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("ring-send".into())
            .spawn(move || sender_loop(send, job_rx, ev_tx, c2))?;
        Ok(Ring {
            rank,
            index,
            members,
            addrs,
            timeout,
            slack,
            recv,
            send_probe,
            jobs: Some(jobs),
            events,
            cancel,
            thread: Some(thread),
            spare: Vec::new(),
            inbuf: Vec::new(),
            flush_token: 0,
            failed: false,
            prev_entered: false,
            write_error: None,
            outstanding: 0,
        })
    }

    fn n(&self) -> usize {
        self.members.len()
    }
    fn prev(&self) -> usize {
        (self.index + self.n() - 1) % self.n()
    }
    fn next(&self) -> usize {
        (self.index + 1) % self.n()
    }
    /// "rank R (ADDR)" of ring member `m`.
    fn who(&self, m: usize) -> String {
        format!("{} ({})", self.members[m], self.addrs[m])
    }

    fn buffer(&mut self) -> Vec<u8> {
        while let Ok(ev) = self.events.try_recv() {
            self.note(ev);
        }
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b
    }

    /// Keep a frame buffer for reuse (at most 64).
    fn recycle(&mut self, b: Vec<u8>) {
        if self.spare.len() < 64 {
            self.spare.push(b);
        }
    }

    /// Handle an event from the sender; a write failure is kept in `write_error`.
    fn note(&mut self, ev: Event) {
        match ev {
            Event::Spare(b) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                self.recycle(b);
            }
            Event::Flushed(_) => {}
            Event::Failed(e) => {
                self.write_error.get_or_insert(e);
            }
        }
    }

    /// Queue a data frame with `payload` (little-endian elements) for the successor.
    fn queue(&mut self, mut bytes: Vec<u8>, seq: u64, d: &OpDesc) {
        let len = (bytes.len() - HEADER) as u64;
        let h = Head {
            kind: KIND_DATA,
            seq,
            d: *d,
            len,
        };
        bytes[..HEADER].copy_from_slice(&h.encode());
        while let Ok(ev) = self.events.try_recv() {
            self.note(ev);
        }
        if self.outstanding == 0 && self.write_error.is_none() {
            // The sender thread is idle: write what the socket takes now without waiting, and
            // hand only the rest (if any) to the thread.
            let sent = self.send_now(&bytes, &[]);
            if sent == bytes.len() {
                self.recycle(bytes);
                return;
            }
            if sent > 0 {
                // The rest of a frame already begun must go out even after a cancel, or the
                // stream would lose its framing.
                bytes.drain(..sent);
                if let Some(j) = &self.jobs {
                    self.outstanding += 1;
                    let _ = j.send(Job::Frame { data: false, bytes });
                }
                return;
            }
        }
        if let Some(j) = &self.jobs {
            self.outstanding += 1;
            let _ = j.send(Job::Frame { data: true, bytes });
        }
    }

    /// Write `head` then `body` to the successor as far as the socket takes them without
    /// waiting; returns the bytes written. A failure other than a full socket is kept in
    /// `write_error` and counts as everything written (the frame is dropped).
    fn send_now(&mut self, head: &[u8], body: &[u8]) -> usize {
        let total = head.len() + body.len();
        let mut sent = 0;
        while sent < total {
            match send_nb(self.send_probe.as_raw_fd(), head, body, sent) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.write_error = Some(e);
                    return total;
                }
            }
        }
        sent
    }

    /// A frame buffer with room for the header, ready for the payload.
    fn frame_buffer(&mut self) -> Vec<u8> {
        let mut b = self.buffer();
        b.resize(HEADER, 0);
        b
    }

    fn peer_failed(&self, d: &OpDesc, m: usize, what: String) -> CommError {
        CommError::PeerFailed {
            rank: self.rank,
            op: d.describe(),
            peer: self.members[m],
            what: format!("({}) {what}", self.addrs[m]),
        }
    }

    /// Wait for the next frame from the predecessor and read its payload into `inbuf`;
    /// checks liveness of both neighbours and the sender while waiting. Error frames become
    /// errors (and are forwarded once).
    fn recv_frame(&mut self, seq: u64, d: &OpDesc) -> Result<Head, CommError> {
        let start = Instant::now();
        let limit = self.recv_limit();
        loop {
            while let Ok(ev) = self.events.try_recv() {
                self.note(ev);
            }
            if let Some(e) = self.write_error.take() {
                return Err(self.successor_lost(d, format!("did not take data: {e}")));
            }
            let mut fd = libc::pollfd {
                fd: self.recv.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut fd, 1, 100) };
            if n > 0 {
                break;
            }
            // A closed successor is not checked here: once it has everything it needs from
            // this op it may finish and close while this rank still waits for its last frame
            // from the predecessor (a barrier's last step). A successor that really failed is
            // reported by a failed write (`write_error`), or by the error frame its own successor
            // sends round the ring.
            let waited = start.elapsed();
            if waited >= limit {
                return Err(self.prev_timed_out(d, waited));
            }
        }
        let mut hb = [0u8; HEADER];
        if let Err(e) = self.recv.read_exact(&mut hb) {
            return Err(self.lost_prev(d, e));
        }
        let h = self.check_head(&hb, seq, d)?;
        self.prev_entered = true;
        self.inbuf.resize(h.len as usize, 0);
        if let Err(e) = self.recv.read_exact(&mut self.inbuf) {
            return Err(self.lost_prev(d, e));
        }
        Ok(h)
    }

    /// Whether `h` is a data frame of the collective `#seq d` that this member runs.
    fn expected(h: &Head, seq: u64, d: &OpDesc) -> bool {
        h.kind == KIND_DATA
            && h.len <= MAX_FRAME
            && h.seq == seq
            && h.d.op == d.op
            && h.d.dtype == d.dtype
            && h.d.extra == d.extra
            && (h.d.count == d.count || d.op == crate::shm::OP_ALL_GATHER)
    }

    /// The header `hb` just read from the predecessor, when it is a data frame of `#seq d`;
    /// else the error it means: a bad or too long frame (the predecessor is lost), an error
    /// frame (read whole and forwarded once), or a mismatch (sent round the ring).
    fn check_head(&mut self, hb: &[u8; HEADER], seq: u64, d: &OpDesc) -> Result<Head, CommError> {
        let h = match Head::decode(hb) {
            None => return Err(self.lost_prev(d, std::io::Error::other("bad frame magic"))),
            Some(h) if h.len > MAX_FRAME => {
                let e = std::io::Error::other(format!("frame of {} bytes is too long", h.len));
                return Err(self.lost_prev(d, e));
            }
            Some(h) => h,
        };
        if h.kind == KIND_ERR {
            self.inbuf.resize(h.len as usize, 0);
            if let Err(e) = self.recv.read_exact(&mut self.inbuf) {
                return Err(self.lost_prev(d, e));
            }
            return Err(self.error_frame(&h, d));
        }
        if !Self::expected(&h, seq, d) {
            let detail = format!(
                "rank {}: #{} {}; rank {}: #{} {}",
                self.members[self.prev()],
                h.seq,
                h.d.describe(),
                self.rank,
                seq,
                d.describe()
            );
            let err = CommError::Mismatch {
                rank: self.rank,
                seq,
                detail,
            };
            return Err(self.fail_out(&err));
        }
        self.prev_entered = true;
        Ok(h)
    }

    /// How long to wait for the predecessor's next frame: once it has sent a frame of this
    /// collective it may be waiting on its own node or predecessor, so longer.
    fn recv_limit(&self) -> Duration {
        if self.prev_entered {
            2 * self.timeout + self.slack + Duration::from_secs(5)
        } else {
            self.timeout + self.slack
        }
    }

    /// Nothing came from the predecessor for `waited`: tell the ring and return the error.
    fn prev_timed_out(&mut self, d: &OpDesc, waited: Duration) -> CommError {
        let err = CommError::Timeout {
            rank: self.rank,
            op: format!("{} from {}", d.describe(), self.who(self.prev())),
            seconds: waited.as_secs_f64(),
            missing: vec![self.members[self.prev()]],
        };
        self.fail_out(&err)
    }

    /// The predecessor's connection failed while reading from it.
    fn lost_prev(&mut self, d: &OpDesc, e: std::io::Error) -> CommError {
        let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "closed its connection".to_string()
        } else {
            format!("connection failed: {e}")
        };
        let err = self.peer_failed(d, self.prev(), what);
        self.fail_out(&err)
    }

    /// Turn a received error frame into the error it reports, forwarding it once unless the
    /// successor sent it first.
    fn error_frame(&mut self, h: &Head, d: &OpDesc) -> CommError {
        let msg = String::from_utf8_lossy(&self.inbuf).into_owned();
        let origin = h.d.dtype as usize;
        if !self.failed && origin != self.next() {
            self.failed = true;
            self.send_err(h.d, &msg);
        }
        self.failed = true;
        let about = h.d.extra as usize;
        match h.d.op {
            ERR_MISMATCH => CommError::Mismatch {
                rank: self.rank,
                seq: h.seq,
                detail: msg,
            },
            ERR_TIMEOUT => CommError::Timeout {
                rank: self.rank,
                op: d.describe(),
                seconds: h.d.count as f64 / 1000.0,
                missing: vec![about],
            },
            _ => CommError::PeerFailed {
                rank: self.rank,
                op: d.describe(),
                peer: about,
                what: msg,
            },
        }
    }

    fn send_err(&mut self, d: OpDesc, msg: &str) {
        self.cancel.store(true, Ordering::Release);
        let h = Head {
            kind: KIND_ERR,
            seq: 0,
            d,
            len: msg.len() as u64,
        };
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(msg.as_bytes());
        if let Some(j) = &self.jobs {
            self.outstanding += 1;
            let _ = j.send(Job::Frame { data: false, bytes });
        }
        self.flush(Duration::from_secs(2));
    }

    /// Wait (at most `wait`) until everything queued is written; returns a write failure.
    fn flush(&mut self, wait: Duration) -> Option<std::io::Error> {
        self.flush_token += 1;
        let token = self.flush_token;
        if let Some(j) = &self.jobs {
            let _ = j.send(Job::Flush(token));
        }
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Flushed(t)) if t == token => return self.write_error.take(),
                Ok(ev) => self.note(ev),
                Err(_) => {
                    return Some(self.write_error.take().unwrap_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "send did not finish")
                    }))
                }
            }
        }
    }

    /// Tell the ring about `err` (once; it originates here) and return it.
    pub(crate) fn fail_out(&mut self, err: &CommError) -> CommError {
        let out = clone_err(err);
        if self.failed {
            return out;
        }
        self.failed = true;
        let (code, about, count) = match err {
            CommError::Mismatch { .. } => (ERR_MISMATCH, self.rank, 0),
            CommError::Timeout {
                missing, seconds, ..
            } => (
                ERR_TIMEOUT,
                missing.first().copied().unwrap_or(self.rank),
                (seconds * 1000.0) as u64,
            ),
            CommError::PeerFailed { peer, .. } => (ERR_PEER, *peer, 0),
            _ => (ERR_PEER, self.rank, 0),
        };
        let msg = match err {
            CommError::Mismatch { detail, .. } => detail.clone(),
            CommError::PeerFailed { what, .. } => what.clone(),
            other => format!("rank {} failed: {other}", self.rank),
        };
        let d = OpDesc {
            op: code,
            dtype: self.index as u64,
            count,
            extra: about as u64,
        };
        self.send_err(d, &msg);
        out
    }

    /// This member is failing for its own reason: tell the ring (best effort, at most ~2 s).
    pub(crate) fn abort(&mut self, msg: &str) {
        let err = CommError::PeerFailed {
            rank: self.rank,
            op: "abort".into(),
            peer: self.rank,
            what: msg.to_string(),
        };
        let _ = self.fail_out(&err);
    }

    fn begin(&mut self) -> Result<(), CommError> {
        if self.failed {
            return Err(CommError::Poisoned {
                rank: self.rank,
                first: "the ring failed earlier".into(),
            });
        }
        self.prev_entered = false;
        Ok(())
    }

    /// Everything queued must be written before the collective returns (later frames would
    /// otherwise be reordered with error frames, and a dead successor must show up here).
    fn finish(&mut self, d: &OpDesc) -> Result<(), CommError> {
        let pending = if self.outstanding == 0 {
            self.write_error.take()
        } else {
            self.flush(self.timeout + self.slack)
        };
        if let Some(e) = pending {
            return Err(self.successor_lost(d, format!("did not take data: {e}")));
        }
        Ok(())
    }

    /// The successor's connection failed. A successor that stopped because of an error of its
    /// own sent that error around the ring, so wait briefly (2 s) for it from the predecessor
    /// and report it rather than the broken connection; else report the successor, with
    /// `what` happened. Called only between frames (the incoming stream is at a frame start).
    fn successor_lost(&mut self, d: &OpDesc, what: String) -> CommError {
        let until = Instant::now() + Duration::from_secs(2);
        while !self.failed && Instant::now() < until {
            let mut fd = libc::pollfd {
                fd: self.recv.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&mut fd, 1, 100) } <= 0 {
                continue;
            }
            let mut hb = [0u8; HEADER];
            if self.recv.read_exact(&mut hb).is_err() {
                break;
            }
            let Some(h) = Head::decode(&hb).filter(|h| h.len <= MAX_FRAME) else {
                break;
            };
            self.inbuf.resize(h.len as usize, 0);
            if self.recv.read_exact(&mut self.inbuf).is_err() {
                break;
            }
            if h.kind == KIND_ERR {
                return self.error_frame(&h, d);
            }
        }
        let err = self.peer_failed(d, self.next(), what);
        self.fail_out(&err)
    }

    /// All-reduce `buf` (the sum over the members); with `divide` the sum is divided by it
    /// before the final rounding to `T`. Partial sums and final values both travel as `T`, so
    /// an f16 or bf16 all-reduce sends half the bytes of an f32 one (what `--compression fp16`
    /// is for). Each step adds in f32 and rounds once to `T`, as NCCL's and gloo's rings do:
    /// two members round once (the partial sent is the member's own elements), `n` members
    /// `n − 1` times.
    ///
    /// One loop sends and receives without waiting on either socket alone (it sleeps in
    /// `poll` on both when neither can move); no sender thread. Frames whose wire bytes are
    /// elements of `buf` (partial sums added in place, final values; on a little-endian
    /// machine) leave straight from `buf`, and the all-gather half is read straight into
    /// place. A frame leaves from a region only after its last change there, and a region is
    /// received into only after the frame sent from it has left: what arrives there depends
    /// on what this member sent from it.
    pub(crate) fn all_reduce<T: Elem>(
        &mut self,
        buf: &mut [T],
        seq: u64,
        d: &OpDesc,
        divide: Option<usize>,
    ) -> Result<(), CommError> {
        self.begin()?;
        if self.outstanding > 0 || self.write_error.is_some() {
            // Not after a finished collective; kept so the two ways of sending never interleave.
            self.finish(d)?;
        }
        let le = cfg!(target_endian = "little");
        let esz = std::mem::size_of::<T>();
        let (n, i) = (self.n(), self.index);
        let per = (CHUNK_BYTES / esz).max(1);
        let steps = 2 * (n - 1);
        let (s0, e0) = segment(buf.len(), n, send_seg(i, n, 0));
        let mut out: VecDeque<Outgoing> = VecDeque::new();
        for (a, b) in chunks(s0, e0, per) {
            // Step 0: our own segment, the first partial sums.
            let body = if le {
                Body::Buf(a, b)
            } else {
                let mut v = self.buffer();
                T::to_le(&buf[a..b], &mut v);
                Body::Own(v)
            };
            out.push_back(Outgoing::new(seq, d, body, esz));
        }
        // Every frame to receive, in order: (step, first element, end).
        let plan: Vec<(usize, usize, usize)> = (0..steps)
            .flat_map(|t| {
                let (s, e) = segment(buf.len(), n, send_seg(i, n, t + 1));
                chunks(s, e, per).into_iter().map(move |(a, b)| (t, a, b))
            })
            .collect();
        let most = plan
            .iter()
            .map(|&(_, a, b)| (b - a) * esz)
            .max()
            .unwrap_or(0);
        if self.inbuf.len() < most {
            self.inbuf.resize(most, 0);
        }
        let (sfd, rfd) = (self.send_probe.as_raw_fd(), self.recv.as_raw_fd());
        let mut next = 0;
        let mut hb = [0u8; HEADER];
        // Bytes of the current frame's header, then (once `in_body`) of its payload.
        let mut got = 0;
        let mut in_body = false;
        let mut last_in = Instant::now();
        let mut last_out = Instant::now();
        while next < plan.len() || !out.is_empty() {
            let mut moved = false;
            while let Some(f) = out.front_mut() {
                let body = f.body.bytes(buf);
                match send_nb(sfd, &f.head, body, f.done) {
                    Ok(k) => {
                        f.done += k;
                        moved = true;
                        last_out = Instant::now();
                        if f.done == HEADER + body.len() {
                            if let Some(Body::Own(v)) = out.pop_front().map(|f| f.body) {
                                self.recycle(v);
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        return Err(self.successor_lost(d, format!("did not take data: {e}")));
                    }
                }
            }
            if let Some(&(t, a, b)) = plan.get(next) {
                let reducing = t + 1 < n;
                let direct = !reducing && le;
                let len = (b - a) * esz;
                let want = if in_body { len } else { HEADER };
                if got < want {
                    let dst = if !in_body {
                        &mut hb[got..]
                    } else if direct {
                        &mut as_bytes_mut(&mut buf[a..b])[got..]
                    } else {
                        &mut self.inbuf[got..len]
                    };
                    match recv_nb(rfd, dst) {
                        Ok(0) => {
                            self.hand_over(&mut out, buf);
                            let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                            return Err(self.lost_prev(d, e));
                        }
                        Ok(k) => {
                            got += k;
                            moved = true;
                            last_in = Instant::now();
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            self.hand_over(&mut out, buf);
                            return Err(self.lost_prev(d, e));
                        }
                    }
                }
                if !in_body && got == HEADER {
                    if !Head::decode(&hb).is_some_and(|h| Self::expected(&h, seq, d)) {
                        self.hand_over(&mut out, buf);
                    }
                    let h = self.check_head(&hb, seq, d)?;
                    if h.len != len as u64 {
                        self.hand_over(&mut out, buf);
                        return Err(self.wrong_chunk(seq, h.len, b - a));
                    }
                    in_body = true;
                    got = 0;
                    moved = true;
                }
                if in_body && got == len {
                    let more = t + 1 < steps;
                    let body = if reducing {
                        let div = divide.filter(|_| t + 2 == n);
                        match reduce_into(&mut buf[a..b], &self.inbuf[..len], div, &mut self.spare)
                        {
                            None => Body::Buf(a, b),
                            Some(v) => Body::Own(v),
                        }
                    } else if direct {
                        Body::Buf(a, b)
                    } else {
                        // Big-endian: the wire bytes go on as they came.
                        T::from_le(&self.inbuf[..len], &mut buf[a..b]);
                        let mut v = self.buffer();
                        v.extend_from_slice(&self.inbuf[..len]);
                        Body::Own(v)
                    };
                    match body {
                        Body::Own(v) if !more => self.recycle(v),
                        body if more => out.push_back(Outgoing::new(seq, d, body, esz)),
                        _ => {}
                    }
                    next += 1;
                    in_body = false;
                    got = 0;
                    moved = true;
                }
            }
            if moved {
                continue;
            }
            // A socket this member no longer waits on is left out (a negative fd), so a hang-up
            // there cannot wake the loop over and over; the deadlines below are checked after
            // every wake-up, so a socket that keeps waking it without moving still times out.
            let mut fds = [
                libc::pollfd {
                    fd: if next < plan.len() { rfd } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: if out.is_empty() { -1 } else { sfd },
                    events: libc::POLLOUT,
                    revents: 0,
                },
            ];
            // SAFETY: two pollfds, valid for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
            let waited = last_in.elapsed();
            if next < plan.len() && waited >= self.recv_limit() {
                self.hand_over(&mut out, buf);
                return Err(self.prev_timed_out(d, waited));
            }
            if !out.is_empty() && last_out.elapsed() >= self.timeout + self.slack {
                self.hand_over(&mut out, buf);
                let what = "did not take data: timed out".to_string();
                return Err(self.successor_lost(d, what));
            }
        }
        self.finish(d)
    }

    /// Before an error frame can follow, the rest of a frame the loop of
    /// [`Ring::all_reduce`] has begun to send goes to the sender thread (the stream would
    /// lose its framing otherwise); frames not begun are dropped.
    fn hand_over<T: Elem>(&mut self, out: &mut VecDeque<Outgoing>, buf: &[T]) {
        if let Some(f) = out.front().filter(|f| f.done > 0) {
            let body = f.body.bytes(buf);
            let mut bytes = self.buffer();
            if f.done < HEADER {
                bytes.extend_from_slice(&f.head[f.done..]);
                bytes.extend_from_slice(body);
            } else {
                bytes.extend_from_slice(&body[f.done - HEADER..]);
            }
            if let Some(j) = &self.jobs {
                self.outstanding += 1;
                let _ = j.send(Job::Frame { data: false, bytes });
            }
        }
        out.clear();
    }

    /// The predecessor sent `got` bytes for a chunk of `elems` elements.
    fn wrong_chunk(&mut self, seq: u64, got: u64, elems: usize) -> CommError {
        let err = CommError::Mismatch {
            rank: self.rank,
            seq,
            detail: format!(
                "rank {} sent {got} bytes for a chunk of {elems} elements",
                self.members[self.prev()],
            ),
        };
        self.fail_out(&err)
    }

    /// Copy member `root`'s `buf` into every member's `buf` (a pipelined chain along the
    /// ring, starting at `root`).
    pub(crate) fn broadcast(
        &mut self,
        buf: &mut [u8],
        root: usize,
        seq: u64,
        d: &OpDesc,
    ) -> Result<(), CommError> {
        self.begin()?;
        let n = self.n();
        let forwards = self.next() != root;
        for (a, b) in chunks(0, buf.len(), CHUNK_BYTES) {
            if self.index != root {
                self.recv_frame(seq, d)?;
                if self.inbuf.len() != b - a {
                    let err = CommError::Mismatch {
                        rank: self.rank,
                        seq,
                        detail: format!(
                            "rank {} sent {} bytes of a broadcast chunk of {}",
                            self.members[self.prev()],
                            self.inbuf.len(),
                            b - a
                        ),
                    };
                    return Err(self.fail_out(&err));
                }
                buf[a..b].copy_from_slice(&self.inbuf);
            }
            if n > 1 && forwards {
                let mut f = self.frame_buffer();
                f.extend_from_slice(&buf[a..b]);
                self.queue(f, seq, d);
            }
        }
        self.finish(d)
    }

    /// Every member's `blob`: index m holds member m's.
    pub(crate) fn all_gather(
        &mut self,
        blob: Vec<u8>,
        seq: u64,
        d: &OpDesc,
    ) -> Result<Vec<Vec<u8>>, CommError> {
        self.begin()?;
        let (n, i) = (self.n(), self.index);
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); n];
        out[i] = blob;
        for t in 0..n - 1 {
            let mine = (i + n - t) % n;
            let mut f = self.frame_buffer();
            f.extend_from_slice(&out[mine]);
            self.queue(f, seq, d);
            self.recv_frame(seq, d)?;
            let theirs = (i + n - t - 1) % n;
            out[theirs] = std::mem::take(&mut self.inbuf);
        }
        self.finish(d)?;
        Ok(out)
    }

    /// Wait until every member has arrived.
    pub(crate) fn barrier(&mut self, seq: u64, d: &OpDesc) -> Result<(), CommError> {
        self.all_gather(Vec::new(), seq, d).map(|_| ())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Closing the job channel ends the sender once it has written what is queued (bounded
        // by the write timeout).
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One `sendmsg` of `head` then `body`, skipping their first `from` bytes, without waiting:
/// the bytes written (at least one), `WouldBlock` when the socket is full, or the error.
fn send_nb(fd: i32, head: &[u8], body: &[u8], from: usize) -> std::io::Result<usize> {
    let (h, b) = if from < head.len() {
        (&head[from..], body)
    } else {
        (&head[..0], &body[from - head.len()..])
    };
    let iov = [
        libc::iovec {
            iov_base: h.as_ptr() as *mut libc::c_void,
            iov_len: h.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
    ];
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: sendmsg on a connected socket; both iovecs point into live buffers of the
        // given lengths, which the kernel only reads during the call; MSG_DONTWAIT never blocks.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n > 0 {
            return Ok(n as usize);
        }
        let e = if n == 0 {
            std::io::Error::new(std::io::ErrorKind::WriteZero, "socket took nothing")
        } else {
            std::io::Error::last_os_error()
        };
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One `recv` into `dst` without waiting: the bytes read (0 when the peer closed the
/// connection), `WouldBlock` when nothing is there yet, or the error.
fn recv_nb(fd: i32, dst: &mut [u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: recv writes at most `dst.len()` bytes into the live buffer `dst`.
        let n = unsafe {
            libc::recv(
                fd,
                dst.as_mut_ptr() as *mut libc::c_void,
                dst.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One reduce-scatter step on a chunk `buf` of the all-reduce's buffer: the predecessor's
/// partial sums `partial` (little-endian `T`) plus our elements, added in f32, divided by
/// `divide` when given (the last step of an average), and rounded once into `buf`. Returns the
/// frame to send on when its bytes are not `buf`'s own (on a big-endian machine; from `spare`
/// when it has one), else `None`.
fn reduce_into<T: Elem>(
    buf: &mut [T],
    partial: &[u8],
    divide: Option<usize>,
    spare: &mut Vec<Vec<u8>>,
) -> Option<Vec<u8>> {
    let le = cfg!(target_endian = "little");
    let esz = std::mem::size_of::<T>();
    if le {
        if let Some(v) = T::as_f32_mut(buf) {
            add_le_in_place(v, partial, divide);
            return None;
        }
    }
    let divide = divide.map(|w| w as f32);
    let mut acc = [0f32; BLOCK];
    let mut theirs = [T::default(); BLOCK];
    let mut at = 0;
    while at < buf.len() {
        let m = (buf.len() - at).min(BLOCK);
        T::from_le(&partial[at * esz..(at + m) * esz], &mut theirs[..m]);
        T::load(&mut acc[..m], &theirs[..m]);
        T::add(&mut acc[..m], &buf[at..at + m]);
        if let Some(w) = divide {
            acc[..m].iter_mut().for_each(|v| *v /= w);
        }
        T::store(&mut buf[at..at + m], &acc[..m]);
        at += m;
    }
    (!le).then(|| {
        let mut f = spare.pop().unwrap_or_default();
        f.clear();
        T::to_le(buf, &mut f);
        f
    })
}

/// `dst[k] += src[k]` for the little-endian f32 values in `src`, then divided by `divide`
/// when given: `(dst + src) / w` rounded as the general path rounds `(src + dst) / w`.
fn add_le_in_place(dst: &mut [f32], src: &[u8], divide: Option<usize>) {
    debug_assert_eq!(src.len(), dst.len() * 4);
    let w = divide.map(|w| w as f32);
    // SAFETY: every bit pattern is a valid f32; `align_to` only hands out the aligned middle.
    let (pre, mid, post) = unsafe { src.align_to::<f32>() };
    if cfg!(target_endian = "little") && pre.is_empty() && post.is_empty() {
        match w {
            None => dst.iter_mut().zip(mid).for_each(|(v, r)| *v += *r),
            Some(w) => dst
                .iter_mut()
                .zip(mid)
                .for_each(|(v, r)| *v = (*v + *r) / w),
        }
    } else {
        for (v, r) in dst.iter_mut().zip(src.chunks_exact(4)) {
            let r = f32::from_le_bytes([r[0], r[1], r[2], r[3]]);
            *v = match w {
                None => *v + r,
                Some(w) => (*v + r) / w,
            };
        }
    }
}

/// A copy of `e` for returning while the original is also forwarded (I/O sources become text).
fn clone_err(e: &CommError) -> CommError {
    match e {
        CommError::PeerFailed {
            rank,
            op,
            peer,
            what,
        } => CommError::PeerFailed {
            rank: *rank,
            op: op.clone(),
            peer: *peer,
            what: what.clone(),
        },
        CommError::Timeout {
            rank,
            op,
            seconds,
            missing,
        } => CommError::Timeout {
            rank: *rank,
            op: op.clone(),
            seconds: *seconds,
            missing: missing.clone(),
        },
        CommError::Mismatch { rank, seq, detail } => CommError::Mismatch {
            rank: *rank,
            seq: *seq,
            detail: detail.clone(),
        },
        other => CommError::Poisoned {
            rank: 0,
            first: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::DType;
    use std::sync::atomic::AtomicU64;

    /// The schedule alone: simulate `n` members exchanging segments step by step (what member
    /// i sends in step t arrives at member i + 1) and check that every member ends with the
    /// exact sum of every element, and sends 2(n−1) segments' worth.
    fn simulate(n: usize, len: usize) {
        let inputs: Vec<Vec<f32>> = (0..n)
            .map(|r| (0..len).map(|k| ((r * 131 + k * 7) % 97) as f32).collect())
            .collect();
        let expect: Vec<f32> = (0..len)
            .map(|k| inputs.iter().map(|v| v[k]).sum())
            .collect();
        let mut bufs = inputs.clone();
        let mut sent = vec![0usize; n];
        for t in 0..2 * (n - 1) {
            let msgs: Vec<(usize, usize, Vec<f32>)> = (0..n)
                .map(|i| {
                    let k = send_seg(i, n, t);
                    let (s, e) = segment(len, n, k);
                    sent[i] += e - s;
                    ((i + 1) % n, k, bufs[i][s..e].to_vec())
                })
                .collect();
            for (to, k, data) in msgs {
                assert_eq!(
                    k,
                    send_seg(to, n, t + 1),
                    "n={n} t={t}: member {to} expects another segment"
                );
                let (s, _) = segment(len, n, k);
                for (j, v) in data.into_iter().enumerate() {
                    if t + 1 < n {
                        bufs[to][s + j] += v;
                    } else {
                        bufs[to][s + j] = v;
                    }
                }
            }
        }
        for (i, b) in bufs.iter().enumerate() {
            assert_eq!(b, &expect, "n={n} len={len}: member {i}");
        }
        for s in sent {
            // 2(n-1) segments of about len/n elements.
            assert!(
                s <= 2 * (n - 1) * len.div_ceil(n),
                "n={n} len={len}: sent {s}"
            );
        }
    }

    #[test]
    fn ring_schedule_sums_exactly_for_every_size() {
        for n in 2..=8 {
            for len in [0, 1, 2, n - 1, n, n + 1, 7, 97, 1001, 4099] {
                simulate(n, len);
            }
        }
    }

    #[test]
    fn segments_and_chunks_cover_the_buffer() {
        for n in 1..=8 {
            for len in [0usize, 1, 5, 8, 9, 1000] {
                let mut next = 0;
                for k in 0..n {
                    let (s, e) = segment(len, n, k);
                    assert_eq!(s, next);
                    next = e;
                    let cs = chunks(s, e, 3);
                    assert!(!cs.is_empty());
                    assert_eq!(cs[0].0, s);
                    assert_eq!(cs.last().unwrap().1, e.max(s));
                    for w in cs.windows(2) {
                        assert_eq!(w[0].1, w[1].0);
                    }
                }
                assert_eq!(next, len);
            }
        }
    }

    /// Run `f(index, ring)` for every member on a thread of its own.
    fn each_member<R: Send + 'static>(
        rs: Vec<Ring>,
        f: impl Fn(usize, Ring) -> R + Send + Sync + 'static,
    ) -> Vec<std::thread::JoinHandle<R>> {
        let f = Arc::new(f);
        rs.into_iter()
            .enumerate()
            .map(|(i, ring)| {
                let f = f.clone();
                std::thread::spawn(move || f(i, ring))
            })
            .collect()
    }

    /// Real rings of `n` members on loopback sockets (one thread per member).
    fn rings(n: usize, timeout: Duration) -> Vec<Ring> {
        rings_through(n, timeout, |_, to| TcpStream::connect(to).unwrap())
    }

    /// Rings whose every link runs through a relay that counts the bytes member `i` sends
    /// (`counts[i]`).
    fn counted_rings(n: usize, timeout: Duration) -> (Vec<Ring>, Vec<Arc<AtomicU64>>) {
        let counts: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::default()).collect();
        let relay_counts = counts.clone();
        let rs = rings_through(n, timeout, move |i, to| {
            let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let send = TcpStream::connect(relay.local_addr().unwrap()).unwrap();
            let (mut from, _) = relay.accept().unwrap();
            let mut onward = TcpStream::connect(to).unwrap();
            let count = relay_counts[i].clone();
            std::thread::spawn(move || {
                let mut b = vec![0u8; 1 << 16];
                while let Ok(k @ 1..) = from.read(&mut b) {
                    count.fetch_add(k as u64, Ordering::SeqCst);
                    if onward.write_all(&b[..k]).is_err() {
                        break;
                    }
                }
            });
            send
        });
        (rs, counts)
    }

    /// Rings whose member `i` sends on `connect(i, address of member i + 1)`.
    fn rings_through(
        n: usize,
        timeout: Duration,
        mut connect: impl FnMut(usize, &str) -> TcpStream,
    ) -> Vec<Ring> {
        let ls: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<String> = ls
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let sends: Vec<TcpStream> = (0..n).map(|i| connect(i, &addrs[(i + 1) % n])).collect();
        sends
            .into_iter()
            .enumerate()
            .map(|(i, send)| {
                let (recv, _) = ls[i].accept().unwrap();
                let members = (0..n).map(|m| m * 10).collect();
                Ring::new(
                    i * 10,
                    i,
                    members,
                    addrs.clone(),
                    send,
                    recv,
                    timeout,
                    Duration::ZERO,
                )
                .unwrap()
            })
            .collect()
    }

    fn desc(len: usize) -> OpDesc {
        desc_of(DType::F32, len)
    }

    /// An all-reduce of `len` elements of type `dtype`.
    fn desc_of(dtype: DType, len: usize) -> OpDesc {
        OpDesc {
            op: crate::shm::OP_ALL_REDUCE,
            dtype: dtype as u64,
            count: len as u64,
            extra: 0,
        }
    }

    /// Integer-valued floats: every sum is exact, so every member must hold exactly the
    /// serial reference, for every ring size 2..=8 and lengths below n, odd, and over a chunk.
    #[test]
    fn ring_all_reduce_over_sockets_is_exact() {
        for n in 2..=8 {
            let lens = [0usize, 1, n - 1, n + 1, 1001, CHUNK_BYTES / 4 * 2 + 3];
            let rs = rings(n, Duration::from_secs(60));
            let handles = each_member(rs, move |i, mut ring| {
                let mut outs = Vec::new();
                for (c, &len) in lens.iter().enumerate() {
                    let mut b: Vec<f32> = (0..len)
                        .map(|k| ((i * 31 + k * 7 + c) % 101) as f32)
                        .collect();
                    ring.all_reduce(&mut b, c as u64 + 1, &desc(len), None)
                        .unwrap();
                    // The same sums in half precision (integers below 2048: every
                    // partial sum and every result is exact in f16).
                    let mut h: Vec<half::f16> = b.iter().map(|_| half::f16::ZERO).collect();
                    h.iter_mut().enumerate().for_each(|(k, v)| {
                        *v = half::f16::from_f32(((i * 31 + k * 7 + c) % 101) as f32)
                    });
                    let hd = desc_of(DType::F16, len);
                    ring.all_reduce(&mut h, c as u64 + 50, &hd, None).unwrap();
                    assert!(
                        h.iter().zip(&b).all(|(x, y)| x.to_f32() == *y),
                        "n={n} len={len}: f16 differs from f32 on member {i}"
                    );
                    outs.push(b);
                }
                let mut b = vec![0u8; 1 << 20 | 5];
                if i == n - 1 {
                    b.iter_mut()
                        .enumerate()
                        .for_each(|(k, v)| *v = (k % 251) as u8);
                }
                let bd = OpDesc {
                    op: crate::shm::OP_BROADCAST,
                    dtype: 1,
                    count: b.len() as u64,
                    extra: 0,
                };
                ring.broadcast(&mut b, n - 1, 99, &bd).unwrap();
                let gd = OpDesc {
                    op: crate::shm::OP_ALL_GATHER,
                    dtype: 1,
                    count: 0,
                    extra: 0,
                };
                let g = ring.all_gather(vec![i as u8; i * 3], 100, &gd).unwrap();
                (outs, b, g)
            });
            for (i, h) in handles.into_iter().enumerate() {
                let (outs, b, g) = h.join().unwrap();
                for (c, (&len, got)) in lens.iter().zip(outs).enumerate() {
                    let expect: Vec<f32> = (0..len)
                        .map(|k| (0..n).map(|r| ((r * 31 + k * 7 + c) % 101) as f32).sum())
                        .collect();
                    assert!(got == expect, "n={n} len={len}: member {i} differs");
                }
                assert!(
                    b.iter().enumerate().all(|(k, v)| *v == (k % 251) as u8),
                    "broadcast n={n}"
                );
                for (m, part) in g.iter().enumerate() {
                    assert_eq!(part, &vec![m as u8; m * 3], "all_gather n={n} member {i}");
                }
            }
        }
    }

    /// Half precision halves the bytes on the wire: every frame of an f16 or bf16 all-reduce,
    /// the partial sums of the reduce-scatter half included, carries 2-byte elements (counted
    /// by relays on the links, headers included). Two members round once, so f16 sums of
    /// inexact values equal their f32 sum rounded to f16.
    #[test]
    fn ring_half_precision_sends_half_the_bytes() {
        for n in [2usize, 3] {
            let len = CHUNK_BYTES / 2 + 5 * n + 1;
            let (rs, counts) = counted_rings(n, Duration::from_secs(60));
            let handles = each_member(rs, move |i, mut ring| {
                let v = |k: usize| ((i * 7 + k) % 1000) as f32 / 997.0 + 0.1;
                let mut b: Vec<f32> = (0..len).map(v).collect();
                ring.all_reduce(&mut b, 1, &desc(len), None).unwrap();
                let mut h: Vec<half::f16> = (0..len).map(|k| half::f16::from_f32(v(k))).collect();
                let hd = desc_of(DType::F16, len);
                ring.all_reduce(&mut h, 2, &hd, None).unwrap();
                let mut g: Vec<half::bf16> = (0..len).map(|k| half::bf16::from_f32(v(k))).collect();
                let gd = desc_of(DType::Bf16, len);
                ring.all_reduce(&mut g, 3, &gd, None).unwrap();
                (ring, h)
            });
            let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            // Every frame of member i: a header and its chunk's elements.
            let wire = |i: usize, esz: usize| -> u64 {
                (0..2 * (n - 1))
                    .flat_map(|t| {
                        let (s, e) = segment(len, n, send_seg(i, n, t));
                        chunks(s, e, CHUNK_BYTES / esz)
                    })
                    .map(|(a, b)| (HEADER + (b - a) * esz) as u64)
                    .sum()
            };
            for (i, count) in counts.iter().enumerate() {
                let sent = count.load(Ordering::SeqCst);
                let expect = wire(i, 4) + 2 * wire(i, 2);
                assert_eq!(sent, expect, "n={n} member {i}: bytes on the wire");
            }
            for (i, (_, h)) in outs.iter().enumerate() {
                assert_eq!(h, &outs[0].1, "n={n}: member {i} differs from member 0");
                if n == 2 {
                    for (k, x) in h.iter().enumerate() {
                        let r = |m: usize| {
                            half::f16::from_f32(((m * 7 + k) % 1000) as f32 / 997.0 + 0.1)
                        };
                        let once = half::f16::from_f32(r(0).to_f32() + r(1).to_f32());
                        assert_eq!(
                            *x, once,
                            "n=2 member {i} element {k}: rounded more than once"
                        );
                    }
                }
            }
        }
    }

    /// Averages (`divide`) are divided once, after the last partial sum, on every member and
    /// every chunk; values are multiples of `n` so every average is exact. Half precision
    /// takes the general path (partial sums widened to f32 and rounded back) and must agree.
    #[test]
    fn ring_average_divides_once_for_f32_and_halves() {
        for n in [2usize, 3, 5] {
            let len = CHUNK_BYTES / 4 + 7 * n + 1;
            let rs = rings(n, Duration::from_secs(60));
            let handles = each_member(rs, move |i, mut ring| {
                let mut b: Vec<f32> = (0..len).map(|k| (n * ((i + k) % 13)) as f32).collect();
                ring.all_reduce(&mut b, 1, &desc(len), Some(n)).unwrap();
                let mut h: Vec<half::f16> = (0..len)
                    .map(|k| half::f16::from_f32((n * ((i + k) % 13)) as f32))
                    .collect();
                let hd = desc_of(DType::F16, len);
                ring.all_reduce(&mut h, 2, &hd, Some(n)).unwrap();
                (b, h)
            });
            for (i, h) in handles.into_iter().enumerate() {
                let (b, hb) = h.join().unwrap();
                for k in 0..len {
                    let expect: usize = (0..n).map(|r| (r + k) % 13).sum();
                    assert_eq!(b[k], expect as f32, "n={n} member {i} element {k}");
                    assert_eq!(
                        hb[k].to_f32(),
                        expect as f32,
                        "f16 n={n} member {i} element {k}"
                    );
                }
            }
        }
    }

    /// A member whose header differs is a mismatch on every member, never a hang; a member
    /// that goes away is named, with its address, by the others.
    #[test]
    fn ring_mismatch_and_lost_member_are_errors_everywhere() {
        let rs = rings(3, Duration::from_secs(20));
        let handles = each_member(rs, move |i, mut ring| {
            let len = if i == 1 { 11 } else { 10 };
            let mut b = vec![1f32; len];
            ring.all_reduce(&mut b, 1, &desc(len), None)
                .unwrap_err()
                .to_string()
        });
        for h in handles {
            let e = h.join().unwrap();
            assert!(
                e.contains("mismatch") && e.contains("rank 10: #1 all_reduce(11 x f32"),
                "{e}"
            );
        }
        let mut rs = rings(3, Duration::from_secs(20));
        drop(rs.remove(1));
        let handles = each_member(rs, move |_, mut ring| {
            let mut b = vec![1f32; 100];
            ring.all_reduce(&mut b, 1, &desc(100), None)
                .unwrap_err()
                .to_string()
        });
        for h in handles {
            let e = h.join().unwrap();
            assert!(e.contains("peer rank 10 (127.0.0.1:"), "{e}");
        }
    }

    /// A mismatch found while this member's own frames are still half written: the rest of
    /// the half-written frame goes out before the error frame, so every member reads the
    /// error (not a broken stream) and names the mismatch.
    #[test]
    fn ring_mismatch_with_frames_in_flight_keeps_the_stream_framed() {
        let n = 3;
        let len = 3 * n * CHUNK_BYTES / 4;
        let rs = rings(n, Duration::from_secs(20));
        let handles = each_member(rs, move |i, mut ring| {
            let mut b = vec![1f32; len];
            ring.all_reduce(&mut b, 1, &desc(len), None).unwrap();
            let extra = if i == 1 { 5 } else { 0 };
            let d = OpDesc { extra, ..desc(len) };
            ring.all_reduce(&mut b, 2, &d, None)
                .unwrap_err()
                .to_string()
        });
        for h in handles {
            let e = h.join().unwrap();
            assert!(e.contains("mismatch") && e.contains("#2 all_reduce"), "{e}");
        }
    }

    /// A member that never enters the all-reduce (alive, connections open) is named by every
    /// other member after the timeout, with frames of a large buffer still unsent: nobody
    /// hangs, and the one that waited on it says which rank it waited for.
    #[test]
    fn ring_member_that_never_comes_times_out_everywhere() {
        let n = 3;
        let len = 2 * n * CHUNK_BYTES / 4;
        let mut rs = rings(n, Duration::from_secs(1));
        let idle = rs.pop().unwrap();
        let started = Instant::now();
        let handles = each_member(rs, move |_, mut ring| {
            let mut b = vec![1f32; len];
            ring.all_reduce(&mut b, 1, &desc(len), None)
                .unwrap_err()
                .to_string()
        });
        let errs: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(started.elapsed() < Duration::from_secs(15), "{errs:?}");
        for e in &errs {
            assert!(e.contains("timed out") && e.contains("[20]"), "{e}");
        }
        assert!(errs[0].contains("from 20 (127.0.0.1:"), "{}", errs[0]);
        drop(idle);
    }

    #[test]
    fn headers_round_trip() {
        let h = Head {
            kind: KIND_DATA,
            seq: 7,
            d: OpDesc {
                op: 1,
                dtype: 2,
                count: 3,
                extra: 4,
            },
            len: 5,
        };
        assert_eq!(Head::decode(&h.encode()), Some(h));
        let mut bad = h.encode();
        bad[0] ^= 1;
        assert_eq!(Head::decode(&bad), None);
    }
}
