//! Test-only in-process communicator: one thread per rank, a `Barrier` and shared slots.
//!
//! Each collective writes this rank's (operation, length, bytes) into its slot, waits for
//! everyone, reads all slots, and waits again before anyone may overwrite them. Reductions
//! add the ranks' values in rank order (16-bit values accumulated in f32), so every rank
//! computes the same bits. A rank that called a different operation or size makes every
//! rank return `CommError::Mismatch`. `bytes_sent` follows the trait's ring figures.

use half::{bf16, f16};
use mnist_comm::{CommError, Communicator, ReduceOp};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Slot {
    op: &'static str,
    len: usize,
    data: Vec<u8>,
}

struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Slot>>,
}

/// One rank's end of an in-process world.
pub struct ThreadComm {
    rank: usize,
    world: usize,
    seq: u64,
    bytes: u64,
    shared: Arc<Shared>,
}

impl ThreadComm {
    /// Communicators for ranks `0..world` sharing one world.
    pub fn world(world: usize) -> Vec<ThreadComm> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(world),
            slots: Mutex::new(vec![Slot::default(); world]),
        });
        (0..world)
            .map(|rank| ThreadComm {
                rank,
                world,
                seq: 0,
                bytes: 0,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    /// Post this rank's bytes, return everyone's (checking all called `op`, and the same
    /// `len` when `same_len`).
    fn exchange(
        &mut self,
        op: &'static str,
        len: usize,
        data: Vec<u8>,
        same_len: bool,
    ) -> Result<Vec<Slot>, CommError> {
        self.seq += 1;
        self.shared.slots.lock().expect("slots")[self.rank] = Slot { op, len, data };
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().expect("slots").clone();
        self.shared.barrier.wait();
        if all.iter().any(|s| s.op != op || (same_len && s.len != len)) {
            let detail = all
                .iter()
                .enumerate()
                .map(|(r, s)| format!("rank {r}: {}({})", s.op, s.len));
            return Err(CommError::Mismatch {
                rank: self.rank,
                seq: self.seq,
                detail: detail.collect::<Vec<_>>().join(", "),
            });
        }
        Ok(all)
    }

    fn ring_bytes(&mut self, payload: usize) {
        let w = self.world as u64;
        self.bytes += 2 * payload as u64 * (w - 1) / w;
    }

    /// All-reduce values of any element type through f32 accumulation, in rank order.
    fn reduce<T: Elem>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<(), CommError> {
        let data: Vec<u8> = buf.iter().flat_map(|&x| x.bytes()).collect();
        let all = self.exchange(T::OP, buf.len(), data, true)?;
        for (i, x) in buf.iter_mut().enumerate() {
            let mut acc = 0f32;
            for slot in &all {
                acc += T::read(&slot.data[i * T::WIDTH..(i + 1) * T::WIDTH]);
            }
            if op == ReduceOp::Average {
                acc /= self.world as f32;
            }
            *x = T::from_f32(acc);
        }
        self.ring_bytes(buf.len() * T::WIDTH);
        Ok(())
    }
}

/// An element type an all-reduce carries.
trait Elem: Copy {
    const OP: &'static str;
    const WIDTH: usize;
    fn bytes(self) -> Vec<u8>;
    fn read(b: &[u8]) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Elem for f32 {
    const OP: &'static str = "all_reduce_f32";
    const WIDTH: usize = 4;
    fn bytes(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn read(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Elem for f16 {
    const OP: &'static str = "all_reduce_f16";
    const WIDTH: usize = 2;
    fn bytes(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn read(b: &[u8]) -> f32 {
        f16::from_le_bytes([b[0], b[1]]).to_f32()
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Elem for bf16 {
    const OP: &'static str = "all_reduce_bf16";
    const WIDTH: usize = 2;
    fn bytes(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn read(b: &[u8]) -> f32 {
        bf16::from_le_bytes([b[0], b[1]]).to_f32()
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_f32(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        self.reduce(buf, op)
    }
    fn all_reduce_f16(&mut self, buf: &mut [f16], op: ReduceOp) -> Result<(), CommError> {
        self.reduce(buf, op)
    }
    fn all_reduce_bf16(&mut self, buf: &mut [bf16], op: ReduceOp) -> Result<(), CommError> {
        self.reduce(buf, op)
    }
    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<(), CommError> {
        let all = self.exchange("broadcast", buf.len(), buf.to_vec(), true)?;
        if self.rank == root {
            self.bytes += (buf.len() * (self.world - 1)) as u64;
        }
        let src = all.get(root).ok_or_else(|| CommError::Mismatch {
            rank: self.rank,
            seq: self.seq,
            detail: format!("broadcast root {root} ≥ world {}", self.world),
        })?;
        buf.copy_from_slice(&src.data);
        Ok(())
    }
    fn all_gather_bytes(&mut self, send: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
        let all = self.exchange("all_gather_bytes", send.len(), send.to_vec(), false)?;
        self.bytes += (send.len() * (self.world - 1)) as u64;
        Ok(all.into_iter().map(|s| s.data).collect())
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        self.exchange("barrier", 0, Vec::new(), true).map(|_| ())
    }
    fn bytes_sent(&self) -> u64 {
        self.bytes
    }
    fn abort(&mut self, _reason: &str) {}
}

/// Run `body(rank, comm)` on `world` threads and return the results in rank order. Fails
/// the test (instead of hanging) when a rank does not finish within 60 s.
pub fn run_ranks<T, F>(world: usize, body: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, &mut ThreadComm) -> T + Send + Sync + 'static,
{
    let body = Arc::new(body);
    let (tx, rx) = mpsc::channel();
    for (rank, mut comm) in ThreadComm::world(world).into_iter().enumerate() {
        let (body, tx) = (Arc::clone(&body), tx.clone());
        std::thread::spawn(move || {
            let out = body(rank, &mut comm);
            let _ = tx.send((rank, out));
        });
    }
    let mut results: Vec<Option<T>> = (0..world).map(|_| None).collect();
    for _ in 0..world {
        let (rank, out) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a rank panicked or hung (see its panic message above)");
        results[rank] = Some(out);
    }
    results
        .into_iter()
        .map(|r| r.expect("every rank reported"))
        .collect()
}

/// Deterministic pseudo-random values in [-scale, scale) for (rank, step, bucket).
pub fn grads(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale
        })
        .collect()
}
