//! The shared-memory segment: a file in /dev/shm mapped by every rank, with a control header
//! of atomics (barrier epochs, collective headers, abort flag) and the data slots.
//!
//! ```text
//! offset 0      magic, world size
//!        64     abort flag (0 = none, else failing rank + 1)
//!        128    wake word (futex; bumped by every barrier arrival)
//!        192    sleepers (ranks blocked in futex_wait)
//!        256    epoch[r]         one cache line per rank: barriers passed by rank r
//!        ...    header[b][r]     two banks (seq parity) x one line per rank:
//!                                seq, op, dtype, count, extra
//!        ...    abort_msg[r]     256 bytes per rank: length + UTF-8 text
//!  data  page-aligned: for parity p in {0,1}: slot[p][0..world], SLOT_BYTES each
//! ```
//!
//! Other processes write this memory while we hold it, so no Rust reference to plain bytes
//! of it ever exists: the mapping is a [`memmap2::MmapRaw`] (raw pointers only, no `Deref`
//! to `[u8]`), control fields are atomics made with `Atomic*::from_ptr`, and data slots are
//! copied in and out with `ptr::copy_nonoverlapping` under the barrier protocol of
//! [`ShmComm`](super::ShmComm).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// Bytes per data slot; large buffers are processed in chunks of this size.
pub(crate) const SLOT_BYTES: usize = 4 << 20;
/// Bytes of all-reduce chunk: `MNIST_SHM_CHUNK` (for tuning, at most a slot), else 1 MiB.
pub(crate) fn chunk_bytes() -> usize {
    static CHUNK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CHUNK.get_or_init(|| {
        std::env::var(mnist_common::contract::ENV_SHM_CHUNK)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(1 << 20, |v| v.clamp(4096, SLOT_BYTES) / 64 * 64)
    })
}

/// Largest world the shared-memory backend accepts.
pub(crate) const MAX_WORLD: usize = 64;
/// Bytes of an abort message slot.
const MSG_BYTES: usize = 256;
const LINE: usize = 64;
const MAGIC: u64 = 0x4d4e_4953_5453_4d31;

/// The segment file name for a run id (part of the launcher ↔ worker contract, so the
/// launcher can remove a segment left behind by a crashed rank).
pub use mnist_common::contract::shm_name_for;
pub(crate) use mnist_common::contract::SHM_DIR;

/// Element types that may live in a data slot: plain numbers, valid for every bit pattern, so
/// copying bytes a peer wrote into one is never an invalid value.
///
/// # Safety
/// Implement only for `Copy` types without padding, for which every bit pattern is a valid
/// value, and whose alignment divides 64.
pub(crate) unsafe trait Plain: Copy {}
// SAFETY: plain integers and IEEE floats: no padding, every bit pattern valid, alignment <= 4.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}
// SAFETY: as above (a `u16` newtype).
unsafe impl Plain for half::f16 {}
// SAFETY: as above (a `u16` newtype).
unsafe impl Plain for half::bf16 {}

/// One field of a collective header.
#[derive(Clone, Copy)]
pub(crate) enum Field {
    Seq = 0,
    Op = 1,
    DType = 2,
    Count = 3,
    Extra = 4,
}

/// A mapped segment.
pub(crate) struct Segment {
    map: memmap2::MmapRaw,
    world: usize,
    path: PathBuf,
    linked: bool,
}

fn layout(world: usize) -> (usize, usize, usize, usize) {
    let epochs = 4 * LINE;
    let headers = epochs + world * LINE;
    let msgs = headers + 2 * world * LINE;
    let data = (msgs + world * MSG_BYTES).div_ceil(4096) * 4096;
    (epochs, headers, msgs, data)
}

impl Segment {
    /// Total bytes of a segment for `world` ranks.
    fn size(world: usize) -> usize {
        layout(world).3 + 2 * world * SLOT_BYTES
    }

    fn map(file: &File, world: usize, path: PathBuf, linked: bool) -> std::io::Result<Segment> {
        // A raw mapping: it hands out pointers only, never `&[u8]`/`&mut [u8]` to memory that
        // other processes write. The file is sized by its creator before any rank maps it and
        // never truncated while mapped.
        let map = memmap2::MmapOptions::new()
            .len(Self::size(world))
            .map_raw(file)?;
        Ok(Segment {
            map,
            world,
            path,
            linked,
        })
    }

    /// Create and map a fresh segment named `name` (replacing a leftover of the same name).
    pub(crate) fn create(name: &str, world: usize) -> std::io::Result<Segment> {
        let path = PathBuf::from(SHM_DIR).join(name);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
        };
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&path)?;
                open()?
            }
            r => r?,
        };
        let seg = file
            .set_len(Self::size(world) as u64)
            .and_then(|_| Self::map(&file, world, path.clone(), true));
        let seg = match seg {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        seg.u64_at(8).store(world as u64, Ordering::Relaxed);
        seg.u64_at(0).store(MAGIC, Ordering::Release);
        Ok(seg)
    }

    /// Map an existing segment created by rank 0.
    pub(crate) fn open(name: &str, world: usize) -> std::io::Result<Segment> {
        let path = PathBuf::from(SHM_DIR).join(name);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        if len < Self::size(world) as u64 {
            return Err(std::io::Error::other(format!(
                "{} has {len} bytes, expected {}",
                path.display(),
                Self::size(world)
            )));
        }
        let seg = Self::map(&file, world, path, false)?;
        let (magic, w) = (
            seg.u64_at(0).load(Ordering::Acquire),
            seg.u64_at(8).load(Ordering::Relaxed),
        );
        if magic != MAGIC || w != world as u64 {
            return Err(std::io::Error::other(format!(
                "{} is not a segment for {world} ranks (magic {magic:#x}, world {w})",
                seg.path.display()
            )));
        }
        Ok(seg)
    }

    /// Remove the file; the mappings stay valid until every rank drops them.
    pub(crate) fn unlink(&mut self) {
        if self.linked {
            let _ = std::fs::remove_file(&self.path);
            self.linked = false;
        }
    }

    /// Pointer to byte `off` of the mapping, checked to leave room for `len` bytes.
    fn at(&self, off: usize, len: usize) -> *mut u8 {
        assert!(
            off.checked_add(len)
                .is_some_and(|end| end <= self.map.len()),
            "segment access {off}+{len} past its {} bytes",
            self.map.len()
        );
        // SAFETY: `off <= map.len()` (asserted), so the result stays inside (or one past the
        // end of) the live mapping.
        unsafe { self.map.as_mut_ptr().add(off) }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off.is_multiple_of(8), "unaligned atomic at {off}");
        // SAFETY: the 8 bytes at `off` are in bounds (`at`) and 8-aligned (page-aligned mapping,
        // offset a multiple of 8); they stay mapped as long as `self` lives, which bounds the
        // returned borrow. Every process accesses control fields only atomically (through
        // these accessors), never with plain reads or writes.
        unsafe { AtomicU64::from_ptr(self.at(off, 8) as *mut u64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4), "unaligned atomic at {off}");
        // SAFETY: as in `u64_at`, for 4 bytes at a 4-aligned offset.
        unsafe { AtomicU32::from_ptr(self.at(off, 4) as *mut u32) }
    }

    fn u8_at(&self, off: usize) -> &AtomicU8 {
        // SAFETY: as in `u64_at`, for one byte (no alignment needed).
        unsafe { AtomicU8::from_ptr(self.at(off, 1)) }
    }

    /// The abort flag: 0, or the failing rank + 1.
    pub(crate) fn abort_flag(&self) -> &AtomicU32 {
        self.u32_at(LINE)
    }

    /// The futex word bumped by every barrier arrival.
    pub(crate) fn wake_word(&self) -> &AtomicU32 {
        self.u32_at(2 * LINE)
    }

    /// Count of ranks sleeping in `futex_wait`.
    pub(crate) fn sleepers(&self) -> &AtomicU32 {
        self.u32_at(3 * LINE)
    }

    /// Barriers rank `r` has arrived at.
    pub(crate) fn epoch(&self, r: usize) -> &AtomicU64 {
        self.u64_at(layout(self.world).0 + r * LINE)
    }

    /// A field of rank `r`'s collective header in bank `bank` (0 or 1).
    pub(crate) fn header(&self, bank: usize, r: usize, f: Field) -> &AtomicU64 {
        self.u64_at(layout(self.world).1 + (bank * self.world + r) * LINE + 8 * f as usize)
    }

    /// Store rank `r`'s abort message (truncated to fit).
    pub(crate) fn write_abort_msg(&self, r: usize, msg: &str) {
        let off = layout(self.world).2 + r * MSG_BYTES;
        let bytes = &msg.as_bytes()[..msg.len().min(MSG_BYTES - 8)];
        for (i, b) in bytes.iter().enumerate() {
            self.u8_at(off + 8 + i).store(*b, Ordering::Relaxed);
        }
        self.u32_at(off)
            .store(bytes.len() as u32, Ordering::Release);
    }

    /// Read rank `r`'s abort message.
    pub(crate) fn read_abort_msg(&self, r: usize) -> String {
        let off = layout(self.world).2 + r * MSG_BYTES;
        let n = (self.u32_at(off).load(Ordering::Acquire) as usize).min(MSG_BYTES - 8);
        let bytes: Vec<u8> = (0..n)
            .map(|i| self.u8_at(off + 8 + i).load(Ordering::Relaxed))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Pointer to `n` elements of `T` starting at element `at` of rank `idx`'s data slot of
    /// `parity` (bounds checked; aligned for the element types used, since slots are
    /// page-aligned). Reading or writing through it is subject to the barrier protocol: see
    /// [`Segment::write_slot`] and [`Segment::read_slot`].
    pub(crate) fn slot_ptr<T: Plain>(
        &self,
        parity: usize,
        idx: usize,
        at: usize,
        n: usize,
    ) -> *mut T {
        assert!(
            parity < 2 && idx < self.world,
            "slot [{parity}][{idx}] out of range"
        );
        let size = std::mem::size_of::<T>();
        let (start, len) = (at * size, n * size);
        assert!(
            start + len <= SLOT_BYTES,
            "{len} bytes at {start} overflow a {SLOT_BYTES}-byte slot"
        );
        let off = layout(self.world).3 + (parity * self.world + idx) * SLOT_BYTES + start;
        let p = self.at(off, len) as *mut T;
        debug_assert!(p.is_aligned());
        p
    }

    /// Copy `src` into rank `idx`'s data slot of `parity`, from element `at` on.
    ///
    /// # Safety
    /// Between the barriers around this call no other rank (or thread) reads or writes these
    /// bytes of the slot: the caller follows `ShmComm`'s barrier protocol.
    pub(crate) unsafe fn write_slot<T: Plain>(
        &self,
        parity: usize,
        idx: usize,
        at: usize,
        src: &[T],
    ) {
        let dst = self.slot_ptr::<T>(parity, idx, at, src.len());
        // SAFETY: `dst` has room for `src.len()` elements and is aligned (`slot_elems`); it is
        // shared memory, which `src` (a local buffer) cannot overlap; nobody else touches these
        // bytes now (this function's contract).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// Copy elements `at..at + dst.len()` of rank `idx`'s data slot of `parity` into `dst`.
    ///
    /// # Safety
    /// Whoever wrote these bytes did so before a barrier this rank has passed, and no rank
    /// writes them until the next barrier: the caller follows `ShmComm`'s barrier protocol.
    pub(crate) unsafe fn read_slot<T: Plain>(
        &self,
        parity: usize,
        idx: usize,
        at: usize,
        dst: &mut [T],
    ) {
        let src = self.slot_ptr::<T>(parity, idx, at, dst.len());
        // SAFETY: `src` holds `dst.len()` aligned elements (`slot_elems`); shared memory does
        // not overlap the local `dst`; no one writes them now (this function's contract). The
        // elements are plain numbers or bytes, valid for any bit pattern.
        unsafe { std::ptr::copy_nonoverlapping(src as *const T, dst.as_mut_ptr(), dst.len()) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// Block until `word` no longer holds `expected`, a wake-up, or `wait` passes. Works across
/// processes: no FUTEX_PRIVATE_FLAG.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, wait: Duration) {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as _,
    };
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 inside a live shared mapping, with a valid
    // timespec on our stack; the kernel only reads both.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wake every process blocked on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 inside a live shared mapping.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        );
    }
}
