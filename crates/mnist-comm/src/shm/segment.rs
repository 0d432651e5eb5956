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
    map: memmap2::MmapMut,
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
        // SAFETY: the file is our run's segment in /dev/shm, sized by the creator before any
        // rank maps it and never truncated; other processes write it concurrently, which is why
        // every shared field is accessed through atomics, and data slots only under the
        // barrier protocol of `ShmComm` (no two ranks touch the same bytes between barriers).
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(Self::size(world))
                .map_mut(file)?
        };
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

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= self.map.len());
        // SAFETY: `off` is 8-aligned (page-aligned mapping, offsets from `layout`) and in
        // bounds; AtomicU64 has the layout of u64, and the memory lives as long as `self`.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off + 4 <= self.map.len());
        // SAFETY: as in `u64_at`, for a 4-aligned u32.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU32) }
    }

    fn u8_at(&self, off: usize) -> &AtomicU8 {
        debug_assert!(off < self.map.len());
        // SAFETY: in bounds; AtomicU8 has the layout of u8 and no alignment requirement.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU8) }
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

    /// Start of rank `idx`'s data slot of `parity`.
    pub(crate) fn slot_ptr(&self, parity: usize, idx: usize) -> *mut u8 {
        debug_assert!(parity < 2 && idx < self.world);
        let off = layout(self.world).3 + (parity * self.world + idx) * SLOT_BYTES;
        // SAFETY: in bounds by construction of `size`; callers uphold the barrier protocol.
        unsafe { self.map.as_ptr().add(off) as *mut u8 }
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
