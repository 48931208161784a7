//! Heap profiling: a global allocator that wraps another one (the system's
//! glibc malloc, which `stevedore_sys::malloc::tune` configures) and records
//! the stack of a random sample of allocations, as Go's runtime does
//! (`runtime.MemProfileRate`): on average one sample per `rate` bytes
//! allocated (512 KiB by default), chosen by an exponentially distributed byte
//! countdown per thread, so every byte has the same chance whatever the
//! allocation sizes.
//!
//! Cost when not sampling: one thread-local countdown per allocation, and a
//! probe of [`LIVE_SLOTS`]' table (one or two cache lines) per free while
//! samples are live. Memory: fixed tables in static storage (no allocation
//! inside the allocator); their pages are touched only as samples arrive:
//! stacks fill [`STACKS`] in order (~0.4 KiB each), live samples sit in a
//! 256 KiB hash table.
//!
//! What a profile holds (Go's heap profile): per stack, allocations and bytes
//! since start (`alloc_objects`, `alloc_space`) and those not freed yet
//! (`inuse_objects`, `inuse_space`), scaled from the samples by Go's
//! `scaleHeapSample` so totals estimate the true values.

use crate::proto::Builder;
use crate::symbols::{self, Symbolizer};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Go's default `MemProfileRate`.
pub const DEFAULT_RATE: usize = 512 * 1024;
/// Frames kept per sampled stack.
const DEPTH: usize = 48;
/// Distinct stacks recorded; later new stacks are counted as dropped.
const STACKS: usize = 4096;
/// Hash index over the stacks (power of two).
const STACK_INDEX: usize = 8192;
/// Live sampled allocations (power of two).
const LIVE_SLOTS: usize = 16384;
/// Slots probed per lookup in either table.
const PROBES: usize = 8;

static RATE: AtomicUsize = AtomicUsize::new(DEFAULT_RATE);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static LIVE_COUNT: AtomicUsize = AtomicUsize::new(0);

struct Stack {
    depth: AtomicUsize,
    ips: [AtomicUsize; DEPTH],
    alloc_objects: AtomicU64,
    alloc_bytes: AtomicU64,
    free_objects: AtomicU64,
    free_bytes: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_STACK: Stack = Stack {
    depth: AtomicUsize::new(0),
    ips: [ZERO; DEPTH],
    alloc_objects: AtomicU64::new(0),
    alloc_bytes: AtomicU64::new(0),
    free_objects: AtomicU64::new(0),
    free_bytes: AtomicU64::new(0),
};
static STACK_TABLE: [Stack; STACKS] = [EMPTY_STACK; STACKS];
/// Stacks in use (filled in order).
static STACKS_USED: AtomicUsize = AtomicUsize::new(0);
/// Per index slot: 0 empty, u32::MAX being written, else stack index + 1.
#[allow(clippy::declare_interior_mutable_const)]
const ZERO32: AtomicU32 = AtomicU32::new(0);
static STACK_INDEX_TABLE: [AtomicU32; STACK_INDEX] = [ZERO32; STACK_INDEX];
/// The stack hashes next to the index, to compare before the frames.
#[allow(clippy::declare_interior_mutable_const)]
const ZERO64: AtomicU64 = AtomicU64::new(0);
static STACK_HASHES: [AtomicU64; STACK_INDEX] = [ZERO64; STACK_INDEX];

/// A live sample: the address (0 when free) and `stack << 44 | size`.
struct Live {
    ptr: AtomicUsize,
    meta: AtomicU64,
}
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_LIVE: Live = Live {
    ptr: AtomicUsize::new(0),
    meta: AtomicU64::new(0),
};
static LIVE: [Live; LIVE_SLOTS] = [EMPTY_LIVE; LIVE_SLOTS];
const SIZE_BITS: u32 = 44;

thread_local! {
    /// Bytes left before this thread's next sample; i64::MIN until drawn.
    static COUNTDOWN: Cell<i64> = const { Cell::new(i64::MIN) };
    /// Set while this thread records a sample (the unwinder may allocate).
    static BUSY: Cell<bool> = const { Cell::new(false) };
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// The sampling allocator: `#[global_allocator] static A: Sampling<System> =
/// Sampling::new(System);`
pub struct Sampling<A> {
    inner: A,
}

impl<A> Sampling<A> {
    pub const fn new(inner: A) -> Sampling<A> {
        Sampling { inner }
    }
}

/// Set the mean bytes between samples (0 stops sampling).
pub fn set_rate(rate: usize) {
    RATE.store(rate, Ordering::Relaxed);
}

pub fn rate() -> usize {
    RATE.load(Ordering::Relaxed)
}

unsafe impl<A: GlobalAlloc> GlobalAlloc for Sampling<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.inner.alloc(layout);
        if !p.is_null() {
            maybe_sample(p, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.inner.alloc_zeroed(layout);
        if !p.is_null() {
            maybe_sample(p, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        forget(ptr);
        self.inner.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = self.inner.realloc(ptr, layout, new_size);
        if !p.is_null() {
            forget(ptr);
            maybe_sample(p, new_size);
        }
        p
    }
}

fn maybe_sample(p: *mut u8, size: usize) {
    let rate = RATE.load(Ordering::Relaxed);
    if rate == 0 {
        return;
    }
    let due = COUNTDOWN
        .try_with(|c| {
            let mut left = c.get();
            if left == i64::MIN {
                left = next_interval(rate);
            }
            left -= size as i64;
            if left > 0 {
                c.set(left);
                false
            } else {
                c.set(next_interval(rate));
                true
            }
        })
        .unwrap_or(false);
    if !due || BUSY.try_with(|b| b.replace(true)).unwrap_or(true) {
        return;
    }
    record(p as usize, size);
    let _ = BUSY.try_with(|b| b.set(false));
}

/// An exponentially distributed byte count with mean `rate`.
fn next_interval(rate: usize) -> i64 {
    let r = RNG
        .try_with(|s| {
            let mut x = s.get();
            if x == 0 {
                // seed from the thread-local's address and the clock
                x = (s as *const _ as u64) ^ 0x9e37_79b9_7f4a_7c15;
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
                x ^= ts.tv_nsec as u64;
                x |= 1;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        })
        .unwrap_or(0x1234_5678);
    // uniform in (0, 1]
    let u = ((r >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    (-(u.ln()) * rate as f64) as i64 + 1
}

fn record(ptr: usize, size: usize) {
    let mut ips = [0usize; DEPTH];
    let mut n = 0;
    // SAFETY: no other thread's unwinding state is shared; `trace` without
    // the lock is what the signal-free, reentrancy-guarded path allows
    unsafe {
        backtrace::trace_unsynchronized(|f| {
            ips[n] = f.ip() as usize;
            n += 1;
            n < DEPTH
        });
    }
    let Some(stack) = intern(&ips[..n]) else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let s = &STACK_TABLE[stack];
    s.alloc_objects.fetch_add(1, Ordering::Relaxed);
    s.alloc_bytes.fetch_add(size as u64, Ordering::Relaxed);
    let meta = ((stack as u64) << SIZE_BITS) | (size as u64 & ((1 << SIZE_BITS) - 1));
    let start = hash_ptr(ptr);
    for i in 0..PROBES {
        let slot = &LIVE[(start + i) & (LIVE_SLOTS - 1)];
        if slot
            .ptr
            .compare_exchange(0, ptr, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.meta.store(meta, Ordering::Release);
            LIVE_COUNT.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    // no room: count the allocation, never its free
    DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// Remove a freed pointer's live sample, if it has one.
fn forget(ptr: *mut u8) {
    if LIVE_COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let ptr = ptr as usize;
    let start = hash_ptr(ptr);
    for i in 0..PROBES {
        let slot = &LIVE[(start + i) & (LIVE_SLOTS - 1)];
        if slot.ptr.load(Ordering::Relaxed) == ptr {
            let meta = slot.meta.load(Ordering::Acquire);
            if slot
                .ptr
                .compare_exchange(ptr, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                LIVE_COUNT.fetch_sub(1, Ordering::Relaxed);
                let s = &STACK_TABLE[(meta >> SIZE_BITS) as usize];
                s.free_objects.fetch_add(1, Ordering::Relaxed);
                s.free_bytes
                    .fetch_add(meta & ((1 << SIZE_BITS) - 1), Ordering::Relaxed);
            }
            return;
        }
    }
}

fn hash_ptr(p: usize) -> usize {
    // allocations are 16-byte aligned: mix the bits above
    ((p as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize
}

fn hash_stack(ips: &[usize]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for ip in ips {
        h ^= *ip as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

/// The stack table index of these frames, adding them when new.
fn intern(ips: &[usize]) -> Option<usize> {
    let h = hash_stack(ips);
    let start = (h >> 20) as usize;
    for i in 0..PROBES {
        let at = (start + i) & (STACK_INDEX - 1);
        let entry = &STACK_INDEX_TABLE[at];
        match entry.load(Ordering::Acquire) {
            0 => {
                if entry
                    .compare_exchange(0, u32::MAX, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                let idx = STACKS_USED.fetch_add(1, Ordering::Relaxed);
                if idx >= STACKS {
                    STACKS_USED.store(STACKS, Ordering::Relaxed);
                    entry.store(0, Ordering::Release);
                    return None;
                }
                let s = &STACK_TABLE[idx];
                for (d, ip) in s.ips.iter().zip(ips) {
                    d.store(*ip, Ordering::Relaxed);
                }
                s.depth.store(ips.len(), Ordering::Relaxed);
                STACK_HASHES[at].store(h, Ordering::Relaxed);
                entry.store(idx as u32 + 1, Ordering::Release);
                return Some(idx);
            }
            // being written by another thread: a duplicate slot is harmless
            u32::MAX => continue,
            n => {
                if STACK_HASHES[at].load(Ordering::Relaxed) != h {
                    continue;
                }
                let idx = n as usize - 1;
                let s = &STACK_TABLE[idx];
                let same = s.depth.load(Ordering::Relaxed) == ips.len()
                    && s.ips
                        .iter()
                        .zip(ips)
                        .all(|(a, b)| a.load(Ordering::Relaxed) == *b);
                if same {
                    return Some(idx);
                }
            }
        }
    }
    None
}

/// Samples that found no room in the tables (their bytes are missing from
/// profiles).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Go's `scaleHeapSample`: the expected (count, bytes) that `count` samples
/// totalling `size` bytes stand for at this rate.
fn scale(count: u64, size: u64, rate: usize) -> (i64, i64) {
    if count == 0 || size == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count as i64, size as i64);
    }
    let avg = size as f64 / count as f64;
    let s = 1.0 / (1.0 - (-avg / rate as f64).exp());
    ((count as f64 * s) as i64, (size as f64 * s) as i64)
}

/// The heap profile (Go's `/debug/pprof/heap` format), gzip-compressed.
/// Symbol resolution runs here: call it on a blocking thread.
pub fn profile() -> Vec<u8> {
    let rate = rate();
    let mut b = Builder::new(
        &[
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ],
        ("space", "bytes"),
        rate as i64,
    );
    let mut sym = Symbolizer::new();
    let used = STACKS_USED.load(Ordering::Acquire).min(STACKS);
    for s in &STACK_TABLE[..used] {
        let depth = s.depth.load(Ordering::Relaxed).min(DEPTH);
        if depth == 0 {
            continue;
        }
        let ips: Vec<usize> = s.ips[..depth]
            .iter()
            .map(|i| i.load(Ordering::Relaxed))
            .collect();
        let ao = s.alloc_objects.load(Ordering::Relaxed);
        let ab = s.alloc_bytes.load(Ordering::Relaxed);
        let fo = s.free_objects.load(Ordering::Relaxed);
        let fb = s.free_bytes.load(Ordering::Relaxed);
        let (ao, ab) = scale(ao, ab, rate);
        let (io, ib) = scale(
            s.alloc_objects.load(Ordering::Relaxed).saturating_sub(fo),
            s.alloc_bytes.load(Ordering::Relaxed).saturating_sub(fb),
            rate,
        );
        let pcs = symbols::pcs(&ips);
        // the allocator's frames come first; the innermost of them (the
        // unwinder's, inlined) have short names: cut after the last match
        // among the first few
        let window = &pcs[..pcs.len().min(ALLOCATOR_DEPTH)];
        let skip = symbols::through(window, ALLOCATOR_FRAMES, 0);
        let locs = sym.stack(&mut b, &pcs[skip..]);
        b.sample(&locs, &[ao, ab, io, ib], &[]);
    }
    let out = b.finish();
    symbols::release();
    out
}

/// At most this many leading frames are the allocator's.
const ALLOCATOR_DEPTH: usize = 10;

/// Leading frames that are the allocator itself, not its caller.
const ALLOCATOR_FRAMES: &[&str] = &[
    "backtrace::",
    "stevedore_profile::heap::",
    "<stevedore_profile::heap::",
    "__rust_alloc",
    "__rust_dealloc",
    "__rust_realloc",
    "__rustc::__rust_",
    "__rdl_",
    "alloc::alloc::",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_scales_like_go() {
        // an object as large as the rate is sampled with p = 1 - 1/e
        let (c, b) = scale(1, DEFAULT_RATE as u64, DEFAULT_RATE);
        assert_eq!(c, 1);
        assert!(
            (b as f64 - DEFAULT_RATE as f64 * 1.582).abs() < 1000.0,
            "{b}"
        );
        assert_eq!(scale(0, 0, DEFAULT_RATE), (0, 0));
    }

    #[test]
    fn intervals_average_the_rate() {
        let n = 20_000;
        let sum: i64 = (0..n).map(|_| next_interval(1000)).sum();
        let mean = sum as f64 / n as f64;
        assert!((900.0..1100.0).contains(&mean), "{mean}");
    }

    #[test]
    fn stacks_intern_once() {
        let a = intern(&[1, 2, 3]).unwrap();
        assert_eq!(intern(&[1, 2, 3]), Some(a));
        assert_ne!(intern(&[1, 2, 4]), Some(a));
    }
}
