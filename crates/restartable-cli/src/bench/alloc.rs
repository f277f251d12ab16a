//! `restartable bench --alloc`: `PerCpuAlloc` against the system allocator (glibc `malloc`) and
//! mimalloc, side by side in one run, each allocator in processes of its own.
//!
//! The parent runs this binary again once per (round, workload, thread count, allocator), with
//! [`ALLOCATOR_ENV`] naming the child's global allocator (the [`Switch`], which reads the
//! variable at the process's first allocation, before `main`: every allocator pays alike for
//! its one predictable branch) and the hidden `bench --internal-alloc-cell CELL` naming the
//! measurement; the child prints one JSON object. Cells are interleaved (every allocator of a
//! cell runs before the next cell) and the tables show the median of the rounds. The two
//! producer/consumer workloads take a fifth of a second per cell and swing the most between runs
//! (which CPU each thread lands on), so they run [`SHORT_ROUNDS`] times the rounds.
//!
//! Workloads, at 1 thread and at 2x and 4x the CPUs (or `--threads`):
//!
//! 1. `pairs`: every thread allocates and frees at once blocks of 16, 32, .. 1024 bytes in
//!    turn (writing a byte of each), with one block of each size kept live throughout: million
//!    pairs per second, all threads together.
//! 2. `channel`: half the threads (at least one) allocate 64-byte boxes and send them over a
//!    bounded `std::sync::mpsc` channel each to a consumer of their own, which frees them:
//!    million boxes/s. The channel parks and wakes threads, which costs far more than any
//!    allocator here, so `queue` (2b) does the same over a lock-free bounded queue
//!    (`crossbeam_queue::ArrayQueue`, 256 slots; a full or empty side spins a little, then
//!    yields), where the allocator's share of the cost shows.
//! 3. `churn`: 10,000 short threads (as many at once as the thread count), each making 1,000
//!    allocations of 16 .. 1024 bytes and freeing them, except 16 it hands to the next thread
//!    of its lane, which frees those: seconds in all, and (3b) the CPU seconds of all the
//!    threads together (`getrusage`).
//! 4. `rss`: 256 threads (as many at once as the thread count) each allocate 4 MiB of small
//!    objects (16 .. 1024 bytes), free them all and exit; then the process's resident memory
//!    above what it had before the first thread: MiB, and (4b) the seconds the threads took.
//!    (With `RESTARTABLE_BENCH_TRIM=1` a `PerCpuAlloc<System>` child also prints its
//!    statistics and the figure after `trim()` on stderr.)
//!
//! `--scale F` multiplies the work of 1, 2, 2b and 3 (the figures are rates, or seconds per
//! full run, either way comparable across scales); 4 is always the whole 256 x 4 MiB.

use std::alloc::{Layout, alloc, dealloc};
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::report::Machine;
use crate::CmdResult;
use crate::reexec::Reexec;

/// The variable naming a child's allocator: an [`Allocator`] key.
pub const ALLOCATOR_ENV: &str = "RESTARTABLE_BENCH_ALLOCATOR";
/// The most a child may take before it counts as hung.
const CHILD_LIMIT: Duration = Duration::from_secs(600);
/// Channel and queue cells run this many times the rounds.
pub const SHORT_ROUNDS: usize = 5;

/// Whether this build's global allocator is the [`Switch`]: the default build. The
/// `count-allocations` and `percpu-alloc` features fix another one, and `bench --alloc` then
/// refuses to run.
pub const SWITCHED: bool = cfg!(not(any(feature = "count-allocations", feature = "percpu-alloc")));

/// The allocators compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// glibc's `malloc` (`std::alloc::System`).
    System,
    /// The `mimalloc` crate.
    Mimalloc,
    /// `PerCpuAlloc<System>`.
    Percpu,
    /// `PerCpuAlloc<MiMalloc>`.
    PercpuMimalloc,
}

/// Every allocator, in table order.
pub const ALLOCATORS: [Allocator; 4] =
    [Allocator::System, Allocator::Mimalloc, Allocator::Percpu, Allocator::PercpuMimalloc];

impl Allocator {
    /// The key ([`ALLOCATOR_ENV`]'s value, the JSON key).
    pub fn key(self) -> &'static str {
        match self {
            Allocator::System => "system",
            Allocator::Mimalloc => "mimalloc",
            Allocator::Percpu => "percpu",
            Allocator::PercpuMimalloc => "percpu-mimalloc",
        }
    }
    /// The name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Allocator::System => "System (glibc)",
            Allocator::Mimalloc => "mimalloc",
            Allocator::Percpu => "PerCpuAlloc<System>",
            Allocator::PercpuMimalloc => "PerCpuAlloc<MiMalloc>",
        }
    }
    fn from_key(key: &[u8]) -> Option<Allocator> {
        ALLOCATORS.into_iter().find(|a| a.key().as_bytes() == key)
    }
}

// ---------------------------------------------------------------------------------------------
// The child's allocator.

#[cfg(not(any(feature = "count-allocations", feature = "percpu-alloc")))]
mod switch {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

    use mimalloc::MiMalloc;
    use restartable::alloc::PerCpuAlloc;

    use super::{ALLOCATORS, Allocator};

    /// 0: not decided yet; else 1 + an index into [`ALLOCATORS`].
    static WHICH: AtomicU8 = AtomicU8::new(0);
    pub static PERCPU: PerCpuAlloc = PerCpuAlloc::new(System);
    static PERCPU_MI: PerCpuAlloc<MiMalloc> = PerCpuAlloc::new(MiMalloc);

    /// The allocator [`ALLOCATOR_ENV`](super::ALLOCATOR_ENV) names (System when unset or not a
    /// key), read once with `getenv`, which does not allocate.
    #[cold]
    fn decide() -> u8 {
        // SAFETY: a NUL-terminated name; the result is read before anything could change it
        // (this runs at the process's first allocation).
        let v = unsafe { libc::getenv(c"RESTARTABLE_BENCH_ALLOCATOR".as_ptr()) };
        let a = if v.is_null() {
            None
        } else {
            // SAFETY: getenv returns a NUL-terminated string.
            Allocator::from_key(unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes())
        };
        let w = ALLOCATORS.iter().position(|&x| Some(x) == a).map_or(1, |i| i as u8 + 1);
        WHICH.store(w, Relaxed);
        w
    }

    #[inline(always)]
    fn which() -> u8 {
        match WHICH.load(Relaxed) {
            0 => decide(),
            w => w,
        }
    }

    /// The allocator this process uses.
    pub fn chosen() -> Option<Allocator> {
        Some(ALLOCATORS[which() as usize - 1])
    }

    /// The global allocator of the default build: the one [`ALLOCATOR_ENV`](super::ALLOCATOR_ENV)
    /// names, for the whole process.
    pub struct Switch;

    macro_rules! dispatch {
        ($method:ident($($arg:expr),*)) => {
            // SAFETY: the caller's contract, forwarded to the one allocator this process uses
            // (decided before its first allocation, never changed).
            unsafe {
                match which() {
                    2 => MiMalloc.$method($($arg),*),
                    3 => PERCPU.$method($($arg),*),
                    4 => PERCPU_MI.$method($($arg),*),
                    _ => System.$method($($arg),*),
                }
            }
        };
    }

    // SAFETY: every call goes to the same allocator for the whole process.
    unsafe impl GlobalAlloc for Switch {
        #[inline]
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            dispatch!(alloc(l))
        }
        #[inline]
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            dispatch!(dealloc(p, l))
        }
        #[inline]
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            dispatch!(alloc_zeroed(l))
        }
        #[inline]
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            dispatch!(realloc(p, l, n))
        }
    }
}

#[cfg(not(any(feature = "count-allocations", feature = "percpu-alloc")))]
pub use switch::Switch;

#[cfg(any(feature = "count-allocations", feature = "percpu-alloc"))]
mod switch {
    /// A feature fixed this build's allocator: no switch.
    pub fn chosen() -> Option<super::Allocator> {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// The workloads (in the child).

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 1: alloc+free pairs in every thread.
    Pairs,
    /// 2: producers and consumers over std::sync::mpsc channels.
    Channel,
    /// 2b: producers and consumers over a lock-free queue.
    Queue,
    /// 3: 10,000 short threads (and 3b: their CPU time).
    Churn,
    /// 4: resident memory (and 4b: time) after 256 threads x 4 MiB.
    Rss,
}

/// Every workload, in table order.
pub const WORKLOADS: [Workload; 5] =
    [Workload::Pairs, Workload::Channel, Workload::Queue, Workload::Churn, Workload::Rss];

impl Workload {
    /// The key (`--workloads`, the JSON).
    pub fn key(self) -> &'static str {
        match self {
            Workload::Pairs => "pairs",
            Workload::Channel => "channel",
            Workload::Queue => "queue",
            Workload::Churn => "churn",
            Workload::Rss => "rss",
        }
    }
    fn number(self) -> &'static str {
        match self {
            Workload::Pairs => "1",
            Workload::Channel => "2",
            Workload::Queue => "2b",
            Workload::Churn => "3",
            Workload::Rss => "4",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Workload::Pairs => "alloc+free pairs, 16..1024 B",
            Workload::Channel => "producer/consumer, 64 B boxes over std channels",
            Workload::Queue => "producer/consumer, 64 B boxes over lock-free queues",
            Workload::Churn => "thread churn, 10,000 threads x 1,000 allocs",
            Workload::Rss => "resident memory after 256 threads x 4 MiB freed",
        }
    }
    fn unit(self) -> &'static str {
        match self {
            Workload::Pairs => "M pairs/s",
            Workload::Channel | Workload::Queue => "M boxes/s",
            Workload::Churn => "s",
            Workload::Rss => "MiB",
        }
    }
    fn higher_is_better(self) -> bool {
        matches!(self, Workload::Pairs | Workload::Channel | Workload::Queue)
    }
    fn rounds(self, rounds: usize) -> usize {
        match self {
            Workload::Channel | Workload::Queue => rounds * SHORT_ROUNDS,
            _ => rounds,
        }
    }
    fn from_key(k: &str) -> Option<Workload> {
        WORKLOADS.into_iter().find(|w| w.key() == k)
    }
    /// The table of the second figure a child reports, if the workload has one: 3b, the churn's
    /// CPU time (wall time there is set by the kernel's serialization of thread creation, CPU
    /// time by what each thread costs), and 4b, the rss workload's time; one row per thread count.
    fn second(self, thread_counts: usize) -> Option<Results> {
        let (number, key, title) = match self {
            Workload::Churn => ("3b", "churn-cpu", "CPU time of the thread churn, all threads together"),
            Workload::Rss => ("4b", "rss-time", "time of the resident-memory workload"),
            _ => return None,
        };
        Some(Results::new(number, key, title, "s", false, thread_counts))
    }
}

/// xorshift64*: sizes without allocating.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// 16 ..= 1024, a multiple of 16 (64 sizes).
    fn size(&mut self) -> usize {
        16 + (self.next() % 64) as usize * 16
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("16 ..= 1024 bytes at 8")
}

/// A block from the global allocator, written at its first byte; an allocation failure ends
/// the child as std does.
fn take(l: Layout, byte: u8) -> *mut u8 {
    // SAFETY: a non-zero size.
    let p = unsafe { alloc(l) };
    if p.is_null() {
        std::alloc::handle_alloc_error(l);
    }
    // SAFETY: within the block just allocated.
    unsafe { p.write(byte) };
    p
}

/// Free a block [`take`] made with `l`.
///
/// # Safety
/// `p` came from `take(l, _)` and is freed once.
unsafe fn give(p: *mut u8, l: Layout) {
    // SAFETY: the caller's contract.
    unsafe { dealloc(p, l) }
}

fn pairs(threads: usize, scale: f64) -> f64 {
    let per_thread = ((20_000_000.0 * scale) as usize / threads).max(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(move || {
                // One block of each size stays live throughout, so that no allocator sees a
                // page (or span) of a size empty out at every free and give it back each time.
                let keep: Vec<(*mut u8, Layout)> = (0..64)
                    .map(|i| {
                        let l = layout(16 + i * 16);
                        (take(l, 0), l)
                    })
                    .collect();
                for i in 0..per_thread {
                    let l = layout(16 + (i % 64) * 16);
                    let p = take(l, i as u8);
                    // SAFETY: allocated just above with `l`, freed once.
                    unsafe { give(black_box(p), l) };
                }
                for (p, l) in keep {
                    // SAFETY: allocated above with `l`, freed once.
                    unsafe { give(p, l) };
                }
            });
        }
    });
    (per_thread * threads) as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn channel(threads: usize, scale: f64) -> f64 {
    let lanes = (threads / 2).max(1);
    let per_lane = ((4_000_000.0 * scale) as usize / lanes).max(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..lanes {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Box<[u8; 64]>>(256);
            s.spawn(move || {
                for i in 0..per_lane {
                    tx.send(Box::new([i as u8; 64])).expect("the consumer outlives the producer");
                }
            });
            s.spawn(move || {
                let mut sum = 0u64;
                for b in rx {
                    sum += u64::from(b[63]);
                }
                black_box(sum);
            });
        }
    });
    (per_lane * lanes) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Wait for the other side of a queue: spin a little, then give the CPU up (there may be more
/// threads than CPUs).
fn pause(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn queue(threads: usize, scale: f64) -> f64 {
    let lanes = (threads / 2).max(1);
    let per_lane = ((4_000_000.0 * scale) as usize / lanes).max(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..lanes {
            let q = std::sync::Arc::new(crossbeam_queue::ArrayQueue::<Box<[u8; 64]>>::new(256));
            let tx = q.clone();
            s.spawn(move || {
                for i in 0..per_lane {
                    let mut b = Box::new([i as u8; 64]);
                    let mut spins = 0;
                    while let Err(back) = tx.push(b) {
                        b = back;
                        pause(&mut spins);
                    }
                }
            });
            s.spawn(move || {
                let (mut sum, mut got) = (0u64, 0);
                while got < per_lane {
                    let mut spins = 0;
                    let b = loop {
                        match q.pop() {
                            Some(b) => break b,
                            None => pause(&mut spins),
                        }
                    };
                    sum += u64::from(b[63]);
                    got += 1;
                }
                black_box(sum);
            });
        }
    });
    (per_lane * lanes) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// A block handed from one thread to the next.
struct Handed(*mut u8, Layout);
// SAFETY: the block is owned by whoever holds the `Handed`.
unsafe impl Send for Handed {}

/// CPU seconds this process has used: all its threads, live and ended, user and system time.
fn cpu_secs() -> f64 {
    // SAFETY: all-zero bytes are a valid `rusage`.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer; RUSAGE_SELF cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Seconds, and CPU seconds, per full run (10,000 threads), whatever the scale.
fn churn(threads: usize, scale: f64) -> (f64, f64) {
    let per_lane = ((10_000.0 * scale) as usize / threads).max(1);
    let (start, cpu) = (Instant::now(), cpu_secs());
    std::thread::scope(|s| {
        for lane in 0..threads {
            s.spawn(move || {
                let handed: Mutex<Vec<Handed>> = Mutex::new(Vec::new());
                for t in 0..per_lane {
                    let handed = &handed;
                    std::thread::scope(|s| {
                        s.spawn(move || {
                            churn_thread(((lane * per_lane + t) as u64 + 1) * 0x9e37_79b9_7f4a_7c15, handed)
                        });
                    });
                }
                for Handed(p, l) in handed.into_inner().unwrap_or_else(|e| e.into_inner()) {
                    // SAFETY: allocated with `l` by the lane's last thread, freed once.
                    unsafe { give(p, l) };
                }
            });
        }
    });
    let full = 10_000.0 / (per_lane * threads) as f64;
    (start.elapsed().as_secs_f64() * full, (cpu_secs() - cpu) * full)
}

/// One short thread of [`churn`]: free what the previous thread of the lane handed on, make
/// 1,000 allocations (32 live at a time), and hand 16 of them on.
fn churn_thread(seed: u64, handed: &Mutex<Vec<Handed>>) {
    let mut rng = Rng(seed);
    let got = std::mem::take(&mut *handed.lock().unwrap_or_else(|e| e.into_inner()));
    for Handed(p, l) in got {
        // SAFETY: allocated with `l` by the previous thread, freed once.
        unsafe { give(p, l) };
    }
    let mut live: [Option<(*mut u8, Layout)>; 32] = [None; 32];
    let mut hand_on = Vec::with_capacity(16);
    for i in 0..1000 {
        let l = layout(rng.size());
        let p = take(l, i as u8);
        if i % 64 == 0 && hand_on.len() < 16 {
            hand_on.push(Handed(p, l));
            continue;
        }
        if let Some((old, ol)) = live[i % 32].replace((p, l)) {
            // SAFETY: allocated above with `ol`, freed once.
            unsafe { give(old, ol) };
        }
    }
    for (p, l) in live.into_iter().flatten() {
        // SAFETY: as above.
        unsafe { give(p, l) };
    }
    *handed.lock().unwrap_or_else(|e| e.into_inner()) = hand_on;
}

/// Resident bytes of this process.
fn rss() -> Result<usize, String> {
    let statm =
        std::fs::read_to_string("/proc/self/statm").map_err(|e| format!("cannot read /proc/self/statm: {e}"))?;
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("/proc/self/statm says {statm:?}"))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    Ok(pages * page)
}

const MIB: f64 = (1 << 20) as f64;

/// Resident MiB after the threads, and the seconds they took.
fn rss_after_threads(threads: usize) -> Result<(f64, f64), String> {
    const THREADS: usize = 256;
    const BYTES: usize = 4 << 20;
    let before = rss()?;
    let start = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while next.fetch_add(1, Relaxed) < THREADS {
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            let mut rng = Rng(next.load(Relaxed) as u64 * 0x9e37_79b9_7f4a_7c15 + 1);
                            let mut blocks: Vec<(*mut u8, Layout)> = Vec::with_capacity(BYTES / 256);
                            let mut bytes = 0;
                            while bytes < BYTES {
                                let l = layout(rng.size());
                                let p = take(l, 1);
                                // SAFETY: within the block just allocated.
                                unsafe { p.write_bytes(1, l.size()) };
                                blocks.push((p, l));
                                bytes += l.size();
                            }
                            for (p, l) in blocks {
                                // SAFETY: allocated above, freed once.
                                unsafe { give(p, l) };
                            }
                        });
                    });
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let after = rss()?.saturating_sub(before) as f64 / MIB;
    #[cfg(not(any(feature = "count-allocations", feature = "percpu-alloc")))]
    if std::env::var_os("RESTARTABLE_BENCH_TRIM").is_some() && switch::chosen() == Some(Allocator::Percpu) {
        let s = switch::PERCPU.stats();
        eprintln!(
            "cached {} KiB (depot {} KiB), from_inner {} to_inner {}",
            s.cached_bytes() >> 10,
            s.depot_bytes >> 10,
            s.from_inner,
            s.to_inner
        );
        switch::PERCPU.trim();
        eprintln!("after trim: {:.1} MiB", rss()?.saturating_sub(before) as f64 / MIB);
    }
    Ok((after, secs))
}

/// `bench --internal-alloc-cell WORKLOAD:THREADS:SCALE`, the child's side: check that this
/// process runs the allocator [`ALLOCATOR_ENV`] names, measure, print one JSON object.
pub fn child(cell: &str) -> CmdResult {
    let bad = || format!("bad cell {cell:?} (expected WORKLOAD:THREADS:SCALE)");
    let mut it = cell.split(':');
    let (w, t, s) = match (it.next(), it.next(), it.next(), it.next()) {
        (Some(w), Some(t), Some(s), None) => (w, t, s),
        _ => return Err(bad().into()),
    };
    let w = Workload::from_key(w).ok_or_else(bad)?;
    let threads: usize = t.parse().ok().filter(|&t| t >= 1).ok_or_else(bad)?;
    let scale: f64 = s.parse().ok().filter(|s: &f64| s.is_finite() && *s > 0.0).ok_or_else(bad)?;
    let named = std::env::var(ALLOCATOR_ENV).ok().and_then(|v| Allocator::from_key(v.as_bytes()));
    let (Some(named), Some(chosen)) = (named, switch::chosen()) else {
        return Err(format!("this child's allocator is not switchable, or {ALLOCATOR_ENV} names none").into());
    };
    if named != chosen {
        return Err(format!("{ALLOCATOR_ENV} names {} but this process runs {}", named.key(), chosen.key()).into());
    }
    let (value, second) = match w {
        Workload::Pairs => (pairs(threads, scale), None),
        Workload::Channel => (channel(threads, scale), None),
        Workload::Queue => (queue(threads, scale), None),
        Workload::Churn => {
            let (secs, cpu) = churn(threads, scale);
            (secs, Some(cpu))
        }
        Workload::Rss => {
            let (mib, secs) = rss_after_threads(threads)?;
            (mib, Some(secs))
        }
    };
    println!(
        "{}",
        json!({ "allocator": chosen.key(), "workload": w.key(), "threads": threads, "value": value, "second": second })
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// What to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The workloads, in table order.
    pub workloads: Vec<Workload>,
    /// The thread counts.
    pub threads: Vec<usize>,
    /// Rounds per cell (times [`SHORT_ROUNDS`] for the channel and the queue).
    pub rounds: usize,
    /// The work of 1, 2, 2b and 3, as a fraction of the full run.
    pub scale: f64,
}

/// The default thread counts: 1, and 2x and 4x the [cores](crate::cpus::cores).
pub fn default_threads() -> Vec<usize> {
    let cores = crate::cpus::cores();
    super::args::dedup(&[1, 2 * cores, 4 * cores])
}

/// One table: a workload's (or 3b's, 4b's) runs, per thread count and allocator.
#[derive(Debug, Clone)]
pub struct Results {
    /// `1`, `2`, `2b`, `3`, `3b`, `4`, `4b`.
    pub number: &'static str,
    /// The JSON key.
    pub key: &'static str,
    /// What it measures.
    pub title: &'static str,
    /// The unit of the figures.
    pub unit: &'static str,
    /// Whether a larger figure is better.
    pub higher_is_better: bool,
    /// `runs[t][a]`: every run at thread count `t` of allocator `a` ([`ALLOCATORS`] order).
    pub runs: Vec<[Vec<f64>; 4]>,
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The `q` quantile of `v` (the nearest run below, so always one of the runs); NaN if empty.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

impl Results {
    fn new(
        number: &'static str,
        key: &'static str,
        title: &'static str,
        unit: &'static str,
        hib: bool,
        n: usize,
    ) -> Results {
        Results { number, key, title, unit, higher_is_better: hib, runs: vec![Default::default(); n] }
    }
    /// How many times better `PerCpuAlloc<System>` is than `rival` at thread index `t`, medians
    /// against medians (> 1 a win; for time and memory, the rival's figure over ours).
    pub fn ratio(&self, t: usize, rival: Allocator) -> f64 {
        let ours = median(&self.runs[t][2]);
        let theirs = median(&self.runs[t][rival as usize]);
        if self.higher_is_better { ours / theirs } else { theirs / ours }
    }
}

/// Measure `plan`: every round visits every workload, thread count and allocator.
pub fn measure(plan: &Plan) -> Result<Vec<Results>, String> {
    let nt = plan.threads.len();
    // Per workload: its table, and the table of its second figure (if any).
    let mut tables: Vec<(Results, Option<Results>)> = plan
        .workloads
        .iter()
        .map(|&w| (Results::new(w.number(), w.key(), w.title(), w.unit(), w.higher_is_better(), nt), w.second(nt)))
        .collect();
    let cells: usize = plan.workloads.iter().map(|w| w.rounds(plan.rounds) * nt * ALLOCATORS.len()).sum();
    let bar = crate::progress::bar(cells);
    for round in 0..plan.rounds * SHORT_ROUNDS {
        for (wi, &w) in plan.workloads.iter().enumerate() {
            if round >= w.rounds(plan.rounds) {
                continue;
            }
            for (ti, &t) in plan.threads.iter().enumerate() {
                for a in ALLOCATORS {
                    bar.set_message(format!("{} {t} threads {}", w.key(), a.key()));
                    let (v, second) = run_cell(a, w, t, plan.scale)?;
                    let (table, second_table) = &mut tables[wi];
                    table.runs[ti][a as usize].push(v);
                    if let (Some(x), Some(st)) = (second, second_table) {
                        st.runs[ti][a as usize].push(x);
                    }
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(tables.into_iter().flat_map(|(t, second)| std::iter::once(t).chain(second)).collect())
}

/// One measurement in a child: the figure, and the second one (3b, 4b) if the workload has one.
fn run_cell(a: Allocator, w: Workload, threads: usize, scale: f64) -> Result<(f64, Option<f64>), String> {
    let cell = format!("{}:{threads}:{scale}", w.key());
    let what = format!("{} at {threads} threads on {}", w.key(), a.key());
    let out = Reexec::new(["bench", "--internal-alloc-cell", &cell])
        .env(ALLOCATOR_ENV, a.key())
        .timeout(CHILD_LIMIT)
        .run()
        .map_err(|e| format!("{what}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{what}: the child failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: Value = serde_json::from_str(stdout.trim()).map_err(|e| format!("{what}: {e} in {stdout:?}"))?;
    let value = v["value"].as_f64().filter(|x| x.is_finite() && *x >= 0.0);
    let value = value.ok_or_else(|| format!("{what}: no figure in {stdout:?}"))?;
    Ok((value, v["second"].as_f64()))
}

/// `restartable bench --alloc`.
pub fn run(plan: &Plan, json: bool, svg: Option<&std::path::Path>) -> CmdResult {
    if !SWITCHED {
        return Err("bench --alloc needs the default build: this binary's global allocator is fixed by its \
                    `count-allocations` or `percpu-alloc` feature"
            .into());
    }
    let machine = Machine::detect();
    let tables = measure(plan)?;
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", to_json(plan, &machine, &tables))?;
    } else {
        write_text(&mut out, plan, &machine, &tables)?;
    }
    out.flush()?;
    if let Some(path) = svg {
        std::fs::write(path, to_svg(plan, &machine, &tables))
            .map_err(|e| format!("cannot write the SVG file {}: {e}", path.display()))?;
        if !json {
            eprintln!("chart written to {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn machine_line(m: &Machine) -> String {
    format!("{}, {} CPUs, kernel {}", m.cpu_model, m.cores, m.kernel)
}

fn runs(n: usize) -> String {
    if n == 1 { "1 run".into() } else { format!("{n} runs") }
}

/// A figure with three significant digits or so.
fn fig(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The tables (Markdown), then the chart of the ratio columns.
pub fn write_text(out: &mut impl Write, plan: &Plan, m: &Machine, tables: &[Results]) -> io::Result<()> {
    writeln!(out, "PerCpuAlloc against glibc and mimalloc on {}", machine_line(m))?;
    writeln!(
        out,
        "one process per measurement; each cell the median of {} ({} for 2 and 2b), [the middle half of the runs] \
         where there are 4 or more; ratio columns: how many times better PerCpuAlloc<System> is (> 1 a win)",
        runs(plan.rounds),
        runs(plan.rounds * SHORT_ROUNDS)
    )?;
    for r in tables {
        let better = if r.higher_is_better { "higher" } else { "lower" };
        writeln!(out, "\n{}. {} ({}, {better} is better)\n", r.number, r.title, r.unit)?;
        write!(out, "| threads |")?;
        for a in ALLOCATORS {
            write!(out, " {} |", a.name())?;
        }
        writeln!(out, " vs System | vs mimalloc |")?;
        writeln!(out, "|---:|{}---:|---:|", "---:|".repeat(ALLOCATORS.len()))?;
        for (ti, t) in plan.threads.iter().enumerate() {
            write!(out, "| {t} |")?;
            for a in ALLOCATORS {
                let runs = &r.runs[ti][a as usize];
                write!(out, " {}", fig(median(runs)))?;
                if runs.len() >= 4 {
                    write!(out, " [{}-{}]", fig(quantile(runs, 0.25)), fig(quantile(runs, 0.75)))?;
                }
                write!(out, " |")?;
            }
            writeln!(out, " {:.2}x | {:.2}x |", r.ratio(ti, Allocator::System), r.ratio(ti, Allocator::Mimalloc))?;
        }
    }
    writeln!(out, "\n{}", chart(plan, tables))
}

/// A text chart of the ratio columns: one bar per row and rival, `|` at 1x (a win reaches past it).
fn chart(plan: &Plan, tables: &[Results]) -> String {
    const PER_X: f64 = 16.0; // characters per 1x
    const MAX: usize = 64;
    let mut out = String::from("PerCpuAlloc<System>, how many times better (| = 1x, a win reaches past it)\n");
    for r in tables {
        for (ti, t) in plan.threads.iter().enumerate() {
            for rival in [Allocator::System, Allocator::Mimalloc] {
                let x = r.ratio(ti, rival);
                let len = if x.is_finite() { ((x * PER_X).round() as usize).min(MAX) } else { 0 };
                let mut bar: Vec<char> =
                    std::iter::repeat_n('#', len).chain(std::iter::repeat_n(' ', MAX - len)).collect();
                if bar[PER_X as usize] == ' ' {
                    bar[PER_X as usize] = '|';
                }
                let bar: String = bar.into_iter().collect();
                let _ = writeln!(
                    out,
                    "{:>3} {:<9} {t:>3} thr vs {:<8} {} {x:.2}x",
                    r.number,
                    r.key,
                    if rival == Allocator::System { "System" } else { "mimalloc" },
                    bar.trim_end()
                );
            }
        }
    }
    out
}

/// The chart as SVG: horizontal bars against System (blue) and mimalloc (orange), a line at 1x.
pub fn to_svg(plan: &Plan, m: &Machine, tables: &[Results]) -> String {
    let rows: Vec<(&Results, usize, usize)> =
        tables.iter().flat_map(|r| plan.threads.iter().enumerate().map(move |(ti, &t)| (r, ti, t))).collect();
    let (row, left, width, top) = (16.0, 190.0, 520.0, 40.0);
    let max = rows
        .iter()
        .flat_map(|&(r, ti, _)| [r.ratio(ti, Allocator::System), r.ratio(ti, Allocator::Mimalloc)])
        .filter(|v| v.is_finite())
        .fold(2.0f64, f64::max)
        .min(10.0);
    let x = |v: f64| left + width * v.min(max) / max;
    let height = top + row * 2.0 * rows.len() as f64 + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"16\" font-size=\"13\">PerCpuAlloc&lt;System&gt;: how many times better than System (blue) and mimalloc (orange)</text>\n\
         <text x=\"10\" y=\"30\" fill=\"#555\">{machine}; medians; the line is 1x (a win reaches past it)</text>\n",
        w = left + width + 60.0,
        machine = xml_escape(&machine_line(m)),
    );
    for (i, &(r, ti, t)) in rows.iter().enumerate() {
        let y = top + row * 2.0 * i as f64;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} {} ({t} thread{})</text>",
            left - 6.0,
            y + row,
            r.number,
            r.key,
            if t == 1 { "" } else { "s" }
        );
        for (k, (rival, color)) in
            [(Allocator::System, "#4878b0"), (Allocator::Mimalloc, "#e08030")].into_iter().enumerate()
        {
            let v = r.ratio(ti, rival);
            let yy = y + row * k as f64 + 2.0;
            if v.is_finite() {
                let _ = writeln!(
                    s,
                    "<rect x=\"{left}\" y=\"{yy}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{v:.2}x</text>",
                    x(v) - left,
                    row - 4.0,
                    x(v) + 4.0,
                    yy + row - 6.0
                );
            }
        }
    }
    let bottom = top + row * 2.0 * rows.len() as f64;
    let _ = write!(
        s,
        "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"black\"/>\n\
         <text x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\">1x</text>\n</svg>\n",
        x(1.0),
        bottom + 14.0
    );
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The JSON object of the whole run: `suite` ("alloc"), `machine`, `params`, `allocators`
/// (`key`, `name`), and `results`: per table `number`, `key`, `title`, `unit`,
/// `higher_is_better`, and per thread count `threads`, `median` and `runs` per allocator key,
/// `vs_system`, `vs_mimalloc`.
pub fn to_json(plan: &Plan, m: &Machine, tables: &[Results]) -> Value {
    let results: Vec<Value> = tables
        .iter()
        .map(|r| {
            let cells: Vec<Value> = plan
                .threads
                .iter()
                .enumerate()
                .map(|(ti, &t)| {
                    let median: serde_json::Map<String, Value> = ALLOCATORS
                        .iter()
                        .map(|&a| (a.key().to_string(), json!(median(&r.runs[ti][a as usize]))))
                        .collect();
                    let runs: serde_json::Map<String, Value> =
                        ALLOCATORS.iter().map(|&a| (a.key().to_string(), json!(r.runs[ti][a as usize]))).collect();
                    json!({
                        "threads": t,
                        "median": median,
                        "runs": runs,
                        "vs_system": r.ratio(ti, Allocator::System),
                        "vs_mimalloc": r.ratio(ti, Allocator::Mimalloc),
                    })
                })
                .collect();
            json!({
                "number": r.number,
                "key": r.key,
                "title": r.title,
                "unit": r.unit,
                "higher_is_better": r.higher_is_better,
                "cells": cells,
            })
        })
        .collect();
    json!({
        "suite": "alloc",
        "machine": m.to_json(),
        "params": {
            "threads": plan.threads,
            "rounds": plan.rounds,
            "short_rounds": plan.rounds * SHORT_ROUNDS,
            "scale": plan.scale,
            "workloads": plan.workloads.iter().map(|w| w.key()).collect::<Vec<_>>(),
        },
        "allocators": ALLOCATORS.iter().map(|a| json!({ "key": a.key(), "name": a.name() })).collect::<Vec<_>>(),
        "results": results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_runs() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0, 5.0], 0.25), 2.0);
        assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0, 5.0], 0.75), 4.0);
    }

    #[test]
    fn ratios_say_how_many_times_better() {
        let mut r = Results::new("1", "pairs", "t", "u", true, 1);
        r.runs[0] = [vec![100.0], vec![200.0], vec![300.0], vec![]];
        assert_eq!(r.ratio(0, Allocator::System), 3.0);
        assert_eq!(r.ratio(0, Allocator::Mimalloc), 1.5);
        r.higher_is_better = false;
        assert_eq!(r.ratio(0, Allocator::System), 1.0 / 3.0);
    }

    #[test]
    fn keys_round_trip() {
        for a in ALLOCATORS {
            assert_eq!(Allocator::from_key(a.key().as_bytes()), Some(a));
            assert_eq!(ALLOCATORS[a as usize], a);
        }
        for w in WORKLOADS {
            assert_eq!(Workload::from_key(w.key()), Some(w));
            assert_eq!(<Workload as clap::ValueEnum>::to_possible_value(&w).unwrap().get_name(), w.key());
        }
    }
}
