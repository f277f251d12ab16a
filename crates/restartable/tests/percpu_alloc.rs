//! `PerCpuAlloc` as this test binary's global allocator, from the first allocation of the
//! process (the test harness's, before `main`) and of every thread.
//!
//! Every block a test makes carries an owner tag and a pattern that depends on it: a block
//! handed to two owners at once is caught by the second owner's pattern overwriting the first
//! one's (and, exactly, by a registry of live addresses); a block whose contents the allocator
//! disturbs is caught when its owner frees it. Then: realloc keeps contents, alloc_zeroed is
//! zeroed, every alignment up to 4096 is honoured, threads exit holding cached memory, a forked
//! child allocates, `trim_cpu` runs while CPUs allocate, allocation under a held guard and from a
//! signal handler nested in the allocator never deadlock, and all of it in every mode (glibc's
//! registration, our own, degraded) in child processes. Longer soaks: `PERCPU_ALLOC_SOAK=secs`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use restartable::alloc::{self, PerCpuAlloc};

#[global_allocator]
static GLOBAL: PerCpuAlloc = PerCpuAlloc::new(System);

/// Tests that trim `GLOBAL` hold this for reading; a test that counts on blocks staying in
/// `GLOBAL`'s caches holds it for writing, so no trim empties them under it.
static TRIMS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn trims_allowed() -> std::sync::RwLockReadGuard<'static, ()> {
    TRIMS.read().unwrap_or_else(|e| e.into_inner())
}

/// A small, fast, deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Live addresses of tagged blocks, sharded: an address handed out twice is caught at once.
struct Registry(Vec<Mutex<HashSet<usize>>>);

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry((0..64).map(|_| Mutex::new(HashSet::new())).collect()))
}

impl Registry {
    fn shard(&self, p: usize) -> &Mutex<HashSet<usize>> {
        &self.0[(p >> 4) % self.0.len()]
    }
    fn insert(&self, p: usize) {
        assert!(self.shard(p).lock().unwrap().insert(p), "block {p:#x} handed out while live");
    }
    fn remove(&self, p: usize) {
        assert!(self.shard(p).lock().unwrap().remove(&p), "block {p:#x} freed while not live");
    }
}

/// A block owned by a test: its layout, and a tag that decides its contents.
struct Tagged {
    ptr: *mut u8,
    layout: Layout,
    tag: u64,
}

// SAFETY: a `Tagged` owns its block; moving it moves the ownership.
unsafe impl Send for Tagged {}

fn byte(tag: u64, i: usize) -> u8 {
    (tag.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8
}

impl Tagged {
    fn new(layout: Layout, tag: u64) -> Tagged {
        // SAFETY: every layout used here has a non-zero size.
        let ptr = unsafe { GLOBAL.alloc(layout) };
        assert!(!ptr.is_null(), "allocation of {layout:?} failed");
        assert_eq!(ptr as usize % layout.align(), 0, "{layout:?} misaligned: {ptr:p}");
        registry().insert(ptr as usize);
        let t = Tagged { ptr, layout, tag };
        t.fill(0, layout.size());
        t
    }

    fn fill(&self, from: usize, to: usize) {
        for i in from..to {
            // SAFETY: `i < layout.size()`: inside the block.
            unsafe { self.ptr.add(i).write(byte(self.tag, i)) };
        }
    }

    fn check(&self, upto: usize) {
        for i in 0..upto {
            // SAFETY: inside the block.
            let b = unsafe { self.ptr.add(i).read() };
            assert_eq!(
                b,
                byte(self.tag, i),
                "block {:p} ({:?}, tag {:#x}) corrupted at byte {i}: another owner wrote it",
                self.ptr,
                self.layout,
                self.tag
            );
        }
    }

    /// Grow or shrink; the common prefix must survive.
    fn realloc(&mut self, new_size: usize) {
        let keep = self.layout.size().min(new_size);
        self.check(self.layout.size());
        registry().remove(self.ptr as usize);
        // SAFETY: `ptr` came from GLOBAL with `layout`; a non-zero new size.
        let p = unsafe { GLOBAL.realloc(self.ptr, self.layout, new_size) };
        assert!(!p.is_null());
        self.ptr = p;
        self.layout = Layout::from_size_align(new_size, self.layout.align()).unwrap();
        assert_eq!(p as usize % self.layout.align(), 0);
        registry().insert(p as usize);
        self.check(keep);
        self.fill(keep, new_size);
    }

    fn free(self) {
        self.check(self.layout.size());
        registry().remove(self.ptr as usize);
        // SAFETY: `ptr` came from GLOBAL with `layout` and is freed once.
        unsafe { GLOBAL.dealloc(self.ptr, self.layout) };
    }
}

/// A layout: mostly small classes (every size up to just past 1 KiB), some large, alignments up
/// to 4096.
fn layout(rng: &mut Rng) -> Layout {
    let size = match rng.below(20) {
        0 => 1 + rng.below(16 << 10) as usize,
        _ => 1 + rng.below(1100) as usize,
    };
    let align = match rng.below(16) {
        0 => 1 << rng.below(13), // 1 ..= 4096
        1 => 32,
        _ => 1 << rng.below(5), // 1 ..= 16
    };
    Layout::from_size_align(size, align).unwrap()
}

/// `threads` threads for `dur`: allocate, check and free, realloc, and hand blocks to other
/// threads (a shared pile), each block tagged with its owner, and at least [`CHURN_FLOOR`]
/// operations per thread however little CPU time a loaded machine gives it. Returns the
/// operations done.
fn churn(threads: usize, dur: Duration, seed: u64) -> u64 {
    let pile: Mutex<Vec<Tagged>> = Mutex::new(Vec::new());
    let ops = AtomicU64::new(0);
    let next_tag = AtomicU64::new(seed << 32);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (pile, ops, next_tag) = (&pile, &ops, &next_tag);
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ (t as u64 + 1));
                let mut live: Vec<Tagged> = Vec::new();
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < dur || n < CHURN_FLOOR {
                    for _ in 0..64 {
                        n += 1;
                        match rng.below(10) {
                            0..=3 => live.push(Tagged::new(layout(&mut rng), next_tag.fetch_add(1, Relaxed))),
                            4..=5 if !live.is_empty() => {
                                let i = rng.below(live.len() as u64) as usize;
                                live.swap_remove(i).free();
                            }
                            6 if !live.is_empty() => {
                                let i = rng.below(live.len() as u64) as usize;
                                let new_size = layout(&mut rng).size();
                                live[i].realloc(new_size);
                            }
                            7 if !live.is_empty() => {
                                let i = rng.below(live.len() as u64) as usize;
                                pile.lock().unwrap().push(live.swap_remove(i));
                            }
                            8 => {
                                if let Some(b) = pile.lock().unwrap().pop() {
                                    live.push(b);
                                }
                            }
                            _ => {
                                while live.len() > 256 {
                                    live.pop().unwrap().free();
                                }
                            }
                        }
                    }
                }
                live.into_iter().for_each(Tagged::free);
                ops.fetch_add(n, Relaxed);
            });
        }
    });
    pile.into_inner().unwrap().into_iter().for_each(Tagged::free);
    ops.load(Relaxed)
}

/// The fewest operations each `churn` thread does.
const CHURN_FLOOR: u64 = 1024;

/// A bound on waits for progress that only a hang would reach.
const HANG: Duration = Duration::from_secs(60);

fn soak() -> Option<Duration> {
    std::env::var("PERCPU_ALLOC_SOAK").ok().and_then(|s| s.parse::<f64>().ok()).map(Duration::from_secs_f64)
}

#[test]
fn tagged_blocks_survive_heavy_multi_thread_churn() {
    let dur = soak().unwrap_or(Duration::from_millis(400));
    let ops = churn(8, dur, 1);
    assert!(ops > 1000, "{ops}");
    let s = GLOBAL.stats();
    assert!(s.hits() > 0, "{s:?}");
    eprintln!("{ops} operations; {} hits, {} misses, cached {} B", s.hits(), s.misses(), s.cached_bytes());
}

#[test]
fn every_alignment_and_size_class_boundary() {
    let mut kept = Vec::new();
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in [1, 7, 15, 16, 17, 31, 33, 100, 127, 128, 129, 1000, 1023, 1024, 1025, 4096, 5000] {
            let t = Tagged::new(Layout::from_size_align(size, align).unwrap(), (shift * 10_000 + size) as u64);
            kept.push(t);
        }
    }
    kept.into_iter().for_each(Tagged::free);
}

/// Every block of a class carries the class's alignment (whole cache lines for the multiples of
/// 64), whichever path it came through: fresh from the inner allocator, from a CPU's cache,
/// from the depot after a flush, again after a trim.
#[test]
fn blocks_carry_their_class_alignment() {
    static A: PerCpuAlloc = PerCpuAlloc::new(System);
    assert_eq!(alloc::CLASS_ALIGN[alloc::CLASSES.iter().position(|&c| c == 64).unwrap()], 64);
    assert!(
        alloc::CLASSES.iter().zip(alloc::CLASS_ALIGN).all(|(&c, a)| a.is_power_of_two()
            && (16..=64).contains(&a)
            && c % a == 0
            && (a == 64 || c % (2 * a) != 0))
    );
    for round in 0..3 {
        for (k, &size) in alloc::CLASSES.iter().enumerate() {
            // A request of the class's size with alignment 1 (a `Box<[u8; N]>`).
            let l = Layout::from_size_align(size, 1).unwrap();
            // More than a CPU's cache holds, so that flushes to the depot and refills happen.
            let n = 2 * alloc::CAPACITY[k] + 3;
            // SAFETY: non-zero sizes; every block freed once with its layout.
            let blocks: Vec<*mut u8> = (0..n).map(|_| unsafe { A.alloc(l) }).collect();
            for &p in &blocks {
                assert!(!p.is_null());
                assert_eq!(p as usize % alloc::CLASS_ALIGN[k], 0, "class {size}, round {round}: {p:p}");
            }
            // SAFETY: as above.
            blocks.into_iter().for_each(|p| unsafe { A.dealloc(p, l) });
        }
        if round == 1 {
            A.trim();
        }
    }
}

#[test]
fn alloc_zeroed_is_zeroed_even_from_a_dirty_cache() {
    for size in [1usize, 8, 16, 24, 48, 100, 512, 1000, 1024, 2048, 100_000] {
        for align in [1usize, 8, 16, 64, 4096] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // Dirty blocks of this class first, so the zeroed one likely comes from the cache.
            let dirty: Vec<*mut u8> = (0..8)
                .map(|_| {
                    // SAFETY: non-zero size; each block is written within its size, freed once.
                    unsafe {
                        let p = GLOBAL.alloc(layout);
                        p.write_bytes(0xa5, size);
                        p
                    }
                })
                .collect();
            // SAFETY: as above.
            dirty.into_iter().for_each(|p| unsafe { GLOBAL.dealloc(p, layout) });
            // SAFETY: non-zero size; read within it, freed once.
            unsafe {
                let p = GLOBAL.alloc_zeroed(layout);
                assert!(!p.is_null() && (p as usize).is_multiple_of(align));
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0), "{layout:?} not zeroed");
                GLOBAL.dealloc(p, layout);
            }
        }
    }
}

#[test]
fn realloc_keeps_contents_across_classes_and_paths() {
    let mut rng = Rng::new(7);
    for align in [1usize, 8, 16, 32, 4096] {
        let mut t = Tagged::new(Layout::from_size_align(1, align).unwrap(), 99);
        // Up through every class, into the inner allocator, and back down.
        let sizes = [2, 16, 17, 100, 128, 129, 1000, 1024, 1025, 3000, 70_000, 1024, 500, 16, 1];
        for &s in &sizes {
            t.realloc(s);
        }
        for _ in 0..200 {
            let s = 1 + rng.below(3000) as usize;
            t.realloc(s);
        }
        t.free();
    }
    // In place inside a class: same address.
    let l = Layout::from_size_align(20, 8).unwrap();
    // SAFETY: non-zero sizes, freed once with the last layout.
    unsafe {
        let p = GLOBAL.alloc(l);
        let q = GLOBAL.realloc(p, l, 32);
        assert_eq!(p, q, "20 -> 32 bytes stays in class 32");
        GLOBAL.dealloc(q, Layout::from_size_align(32, 8).unwrap());
    }
}

#[test]
fn threads_exit_holding_cached_memory() {
    // Short threads free into the caches of the CPUs they ran on and exit; nothing of theirs is
    // per thread, so what they left is used by the next ones (and by this thread). No other
    // test trims `GLOBAL` meanwhile.
    let _no_trims = TRIMS.write().unwrap_or_else(|e| e.into_inner());
    let before = GLOBAL.stats();
    for round in 0..20u64 {
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                std::thread::spawn(move || {
                    let blocks: Vec<Tagged> = (0..200u64)
                        .map(|i| {
                            Tagged::new(
                                Layout::from_size_align(16 + (i as usize % 64) * 16, 8).unwrap(),
                                round << 20 | t << 10 | i,
                            )
                        })
                        .collect();
                    // Half freed here (into a cache), half handed back to the parent.
                    let (keep, give): (Vec<_>, Vec<_>) = blocks.into_iter().partition(|b| b.tag % 2 == 0);
                    keep.into_iter().for_each(Tagged::free);
                    give
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().into_iter().for_each(Tagged::free);
        }
    }
    let after = GLOBAL.stats();
    assert!(after.hits() > before.hits() + 10_000, "{before:?}\n{after:?}");
    assert!(after.cached_bytes() > 0, "the exited threads' blocks stay cached: {after:?}");
}

#[test]
fn trim_cpu_while_every_cpu_allocates() {
    let _trims = trims_allowed();
    let done = AtomicBool::new(false);
    let trimmed = AtomicUsize::new(0);
    let trims = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Relaxed) {
                for cpu in 0..restartable::possible_cpus() {
                    trimmed.fetch_add(GLOBAL.trim_cpu(cpu).unwrap(), Relaxed);
                    trims.fetch_add(1, Relaxed);
                }
            }
        });
        churn(4, soak().unwrap_or(Duration::from_millis(300)), 2);
        // More rounds until the trimmer has run and found blocks while threads allocate
        // (a loaded machine may have given it no time yet).
        let t0 = Instant::now();
        while (trims.load(Relaxed) <= 10 || trimmed.load(Relaxed) == 0) && t0.elapsed() < HANG {
            churn(4, Duration::from_millis(20), 3);
        }
        done.store(true, Relaxed);
    });
    assert!(trims.load(Relaxed) > 10);
    assert!(trimmed.load(Relaxed) > 0, "the trimmer found cached blocks to give back");
    assert!(GLOBAL.trim_cpu(restartable::possible_cpus()).is_err());
    let s = GLOBAL.stats();
    eprintln!("{} trims gave back {} B; {s:?}", trims.load(Relaxed), trimmed.load(Relaxed));
}

#[test]
fn trim_returns_everything_it_caches() {
    static A: PerCpuAlloc = PerCpuAlloc::new(System);
    let l = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: non-zero size; every block freed once.
    let blocks: Vec<*mut u8> = (0..5000).map(|_| unsafe { A.alloc(l) }).collect();
    // SAFETY: as above.
    blocks.into_iter().for_each(|p| unsafe { A.dealloc(p, l) });
    let s = A.stats();
    assert!(s.cached_bytes() > 0 && s.cached_bytes() <= alloc::DEPOT_BYTES + 2 * alloc::CPU_CACHE_BYTES * s.cpus.len());
    assert_eq!(s.from_inner - s.to_inner, (s.cached_bytes() / 64) as u64, "{s:?}");
    assert_eq!(A.trim(), s.cached_bytes(), "trim gives back exactly what was cached");
    let t = A.stats();
    assert_eq!(t.cached_bytes(), 0, "{t:?}");
    assert_eq!(t.from_inner, t.to_inner, "every block went back to the inner allocator: {t:?}");
}

#[test]
fn trim_cpu_empties_a_cpu_that_caches_more_than_one_stop_takes() {
    static A: PerCpuAlloc = PerCpuAlloc::new(System);
    // Every class filled to at least its capacity less a batch: more blocks than one stop of
    // `trim_cpu` collects (a buffer of the largest capacity), so it stops the CPU again.
    let least: usize = (0..alloc::NUM_CLASSES).map(|k| alloc::CAPACITY[k] - alloc::BATCH[k]).sum();
    assert!(least > alloc::CAPACITY[0], "{least}");
    let least_bytes: usize =
        (0..alloc::NUM_CLASSES).map(|k| (alloc::CAPACITY[k] - alloc::BATCH[k]) * alloc::CLASSES[k]).sum();
    std::thread::spawn(move || {
        // One CPU, one thread: nothing else touches this CPU's cache of `A` in between.
        let cpu = testkit::affinity::pin_to_one();
        for (k, &size) in alloc::CLASSES.iter().enumerate() {
            let l = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: non-zero sizes; every block freed once with its layout.
            let blocks: Vec<*mut u8> = (0..alloc::CAPACITY[k]).map(|_| unsafe { A.alloc(l) }).collect();
            // SAFETY: as above.
            blocks.into_iter().for_each(|p| unsafe { A.dealloc(p, l) });
        }
        let s = A.stats();
        let cached = s.cpus.iter().find(|c| c.cpu == cpu).map_or(0, |c| c.cached_bytes);
        assert!(cached >= least_bytes, "CPU {cpu} caches {cached} B, at least {least_bytes} expected: {s:?}");
        assert_eq!(A.trim_cpu(cpu).unwrap(), cached, "trim_cpu gives back exactly what the CPU cached");
        let t = A.stats();
        assert!(t.cpus.iter().all(|c| c.cached_bytes == 0), "{t:?}");
        assert_eq!(t.depot_bytes, s.depot_bytes, "the depot is not trim_cpu's: {t:?}");
        A.trim();
        let u = A.stats();
        assert_eq!(u.from_inner, u.to_inner, "every block went back to the inner allocator: {u:?}");
    })
    .join()
    .unwrap();
}

static INNER_ALLOCS: AtomicU64 = AtomicU64::new(0);
static INNER_FREES: AtomicU64 = AtomicU64::new(0);

/// Forwards to System, counting.
struct Counting;

// SAFETY: forwards to System with the caller's arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        INNER_ALLOCS.fetch_add(1, SeqCst);
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        INNER_FREES.fetch_add(1, SeqCst);
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
}

#[test]
fn a_dropped_instance_gives_everything_back() {
    let a = PerCpuAlloc::new(Counting);
    let mut rng = Rng::new(3);
    let mut live = Vec::new();
    for _ in 0..20_000 {
        let l = layout(&mut rng);
        // SAFETY: non-zero sizes; every block freed once with its layout.
        unsafe {
            live.push((a.alloc(l), l));
            if rng.below(2) == 0 {
                let (p, l) = live.swap_remove(rng.below(live.len() as u64) as usize);
                a.dealloc(p, l);
            }
        }
    }
    // SAFETY: as above.
    live.into_iter().for_each(|(p, l)| unsafe { a.dealloc(p, l) });
    assert!(a.stats().cached_bytes() > 0);
    assert!(INNER_ALLOCS.load(SeqCst) > INNER_FREES.load(SeqCst));
    drop(a);
    assert_eq!(INNER_ALLOCS.load(SeqCst), INNER_FREES.load(SeqCst), "a dropped allocator gives every block back");
}

static LEDGER_BLOCKS: AtomicI64 = AtomicI64::new(0);
static LEDGER_BYTES: AtomicI64 = AtomicI64::new(0);

/// Forwards to System, keeping the live blocks and bytes it handed out.
struct Ledger;

// SAFETY: forwards to System with the caller's arguments.
unsafe impl GlobalAlloc for Ledger {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LEDGER_BLOCKS.fetch_add(1, SeqCst);
            LEDGER_BYTES.fetch_add(l.size() as i64, SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LEDGER_BLOCKS.fetch_sub(1, SeqCst);
        LEDGER_BYTES.fetch_sub(l.size() as i64, SeqCst);
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
}

/// Many threads allocate, hand blocks to each other and free them while another thread trims
/// every CPU and the depot all the time. Every block carries its owner's pattern (a block handed
/// out twice is overwritten by its second owner and caught when the first frees it; a live-address
/// set catches it at once), and at the end the inner allocator's live bytes are exactly what the
/// caches and the depot report holding (a lost block would leave them above it, a block freed
/// twice below), then exactly zero after `trim`.
#[test]
fn blocks_and_bytes_are_conserved_while_trimming_under_many_threads() {
    static A: PerCpuAlloc<Ledger> = PerCpuAlloc::new(Ledger);
    let live: Mutex<HashSet<usize>> = Mutex::new(HashSet::new());
    let pile: Mutex<Vec<(usize, Layout, u8)>> = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let trims = AtomicUsize::new(0);
    let dur = soak().unwrap_or(Duration::from_millis(400));
    // Every block is allocated from A with its layout, written within its size, and freed once
    // with that layout by its one owner.
    let alloc = |l: Layout, tag: u8| -> (usize, Layout, u8) {
        // SAFETY: a non-zero size.
        let p = unsafe { A.alloc(l) };
        assert!(!p.is_null());
        assert!(live.lock().unwrap().insert(p as usize), "block {p:p} handed out while live");
        // SAFETY: `p` is valid for `l.size()` bytes, and ours.
        unsafe { p.write_bytes(tag, l.size()) };
        (p as usize, l, tag)
    };
    let free = |(p, l, tag): (usize, Layout, u8)| {
        // SAFETY: a live block of ours, written in full when allocated.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, l.size()) };
        assert!(bytes.iter().all(|&b| b == tag), "block {p:#x} ({l:?}) written by another owner");
        assert!(live.lock().unwrap().remove(&p));
        // SAFETY: allocated from A with `l`, freed once (its owner gave it up).
        unsafe { A.dealloc(p as *mut u8, l) };
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Relaxed) {
                for cpu in 0..restartable::possible_cpus() {
                    let _ = A.trim_cpu(cpu);
                }
                if trims.fetch_add(1, Relaxed).is_multiple_of(4) {
                    A.trim();
                }
                std::thread::yield_now();
            }
        });
        let workers: Vec<_> = (0..8u64)
            .map(|t| {
                let (alloc, free, pile, trims) = (&alloc, &free, &pile, &trims);
                s.spawn(move || {
                    let mut rng = Rng::new(500 + t);
                    let mut mine = Vec::new();
                    let start = Instant::now();
                    // At least `dur`, and on until the trimmer has run and the caches have
                    // served blocks (a loaded machine may starve either), short of a hang.
                    let more = || trims.load(Relaxed) <= 10 || A.stats().hits() <= 1000;
                    while start.elapsed() < dur || (more() && start.elapsed() < HANG) {
                        for _ in 0..64 {
                            match rng.below(8) {
                                0..=3 => {
                                    let size =
                                        if rng.below(16) == 0 { 1025 + rng.below(3000) } else { 1 + rng.below(1024) };
                                    let l = Layout::from_size_align(size as usize, 1 << rng.below(5)).unwrap();
                                    mine.push(alloc(l, rng.next() as u8));
                                }
                                4 | 5 if !mine.is_empty() => {
                                    free(mine.swap_remove(rng.below(mine.len() as u64) as usize))
                                }
                                6 if !mine.is_empty() => pile.lock().unwrap().push(mine.pop().unwrap()),
                                _ => mine.extend(pile.lock().unwrap().pop()),
                            }
                        }
                        while mine.len() > 300 {
                            free(mine.pop().unwrap());
                        }
                    }
                    mine.into_iter().for_each(free);
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        done.store(true, Relaxed);
    });
    pile.into_inner().unwrap().into_iter().for_each(free);
    assert!(trims.load(Relaxed) > 10);
    let s = A.stats();
    assert!(s.hits() > 1000, "{s:?}");
    assert_eq!(LEDGER_BYTES.load(SeqCst), s.cached_bytes() as i64, "inner live bytes vs cached: {s:?}");
    assert_eq!(LEDGER_BLOCKS.load(SeqCst), (s.from_inner - s.to_inner) as i64, "{s:?}");
    assert_eq!(A.trim(), s.cached_bytes());
    assert_eq!((LEDGER_BLOCKS.load(SeqCst), LEDGER_BYTES.load(SeqCst)), (0, 0), "{:?}", A.stats());
}

/// An allocation made while this thread holds a guard never waits for one: with a trimmer
/// stopping every CPU's cache all the time, the calls that find their cache stopped go to the
/// depot or the inner allocator instead.
#[test]
fn allocating_while_holding_a_guard_never_waits() {
    let _trims = trims_allowed();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Relaxed) {
                for cpu in 0..restartable::possible_cpus() {
                    let _ = GLOBAL.trim_cpu(cpu);
                }
            }
        });
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            let cpu = restartable::current_cpu();
            let stop = restartable::guard::stop::<restartable::ops::Cpu>(cpu).unwrap();
            assert!(restartable::guard::held() > 0);
            let blocks: Vec<Tagged> =
                (0..64).map(|i| Tagged::new(Layout::from_size_align(8 + i * 8, 8).unwrap(), n + i as u64)).collect();
            blocks.into_iter().for_each(Tagged::free);
            drop(stop);
            n += 64;
        }
        done.store(true, Relaxed);
    });
}

/// An inner allocator that calls back into the allocator it serves (re-entrancy through the
/// miss path: the refill calls the inner allocator outside every lock and guard).
struct Reentrant;

static REENTRANT: PerCpuAlloc<Reentrant> = PerCpuAlloc::new(Reentrant);
static REENTERED: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to System; the nested calls allocate and free a block of their own.
unsafe impl GlobalAlloc for Reentrant {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if REENTERED.fetch_add(1, Relaxed).is_multiple_of(7) {
            let small = Layout::from_size_align(48, 8).unwrap();
            // SAFETY: a nested allocation and free of the outer allocator.
            unsafe {
                let p = REENTRANT.alloc(small);
                assert!(!p.is_null());
                REENTRANT.dealloc(p, small);
            }
        }
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
}

#[test]
fn an_inner_allocator_may_call_back_into_the_allocator() {
    let mut rng = Rng::new(11);
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                let mut rng = Rng::new(100 + t);
                let mut live = Vec::new();
                for _ in 0..20_000 {
                    let l = Layout::from_size_align(1 + rng.below(1024) as usize, 8).unwrap();
                    // SAFETY: non-zero sizes; each block freed once with its layout.
                    unsafe {
                        let p = REENTRANT.alloc(l);
                        p.write_bytes(0x5a, l.size());
                        live.push((p, l));
                        if live.len() > 500 {
                            let (p, l) = live.swap_remove(rng.below(live.len() as u64) as usize);
                            assert_eq!(*p, 0x5a);
                            REENTRANT.dealloc(p, l);
                        }
                    }
                }
                // SAFETY: as above.
                live.into_iter().for_each(|(p, l)| unsafe { REENTRANT.dealloc(p, l) });
            });
        }
    });
    let _ = rng.next();
    assert!(REENTERED.load(Relaxed) > 0);
}

// ---------------------------------------------------------------------------------------------
// A signal handler nested in the allocator (with an async-signal-safe inner allocator).

/// A lock-free bump allocator over an anonymous mapping (async-signal-safe; never reuses).
struct Bump;

static BUMP_BASE: AtomicUsize = AtomicUsize::new(0);
static BUMP_NEXT: AtomicUsize = AtomicUsize::new(0);
const BUMP_LEN: usize = 1 << 30;

// SAFETY: hands out disjoint, aligned ranges of one mapping that is never unmapped.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let base = BUMP_BASE.load(Relaxed);
        let mut cur = BUMP_NEXT.load(Relaxed);
        loop {
            let start = (base + cur).next_multiple_of(l.align()) - base;
            if start + l.size() > BUMP_LEN {
                return std::ptr::null_mut();
            }
            match BUMP_NEXT.compare_exchange_weak(cur, start + l.size(), Relaxed, Relaxed) {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => cur = now,
            }
        }
    }
    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

static NESTED: PerCpuAlloc<Bump> = PerCpuAlloc::new(Bump);
static HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);
/// Null blocks the handler got while the bump mapping still had room (must stay 0).
static HANDLER_NULLS: AtomicU64 = AtomicU64::new(0);

/// Whether the bump mapping is past half used: the churn stops there (the trims hand every
/// cached block back to `Bump`, which never reuses memory), so that no allocation can fail.
fn bump_half_used() -> bool {
    BUMP_NEXT.load(Relaxed) > BUMP_LEN / 2
}

/// Whether `nested_handler` is armed (the test is not yet reading its counts).
static NESTED_ARMED: testkit::signal::Armed = testkit::signal::Armed::new();

extern "C" fn nested_handler(_: libc::c_int) {
    NESTED_ARMED.run(nested_handler_body);
}

fn nested_handler_body() {
    // Allocate, write, check and free a few blocks of every class inside whatever the
    // interrupted thread was doing (possibly inside NESTED itself, holding its guard or lock).
    let mut blocks = [(std::ptr::null_mut::<u8>(), 0usize); alloc::NUM_CLASSES];
    for (k, b) in blocks.iter_mut().enumerate() {
        let size = alloc::CLASSES[k];
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero size; written within it.
        let p = unsafe { NESTED.alloc(l) };
        if p.is_null() {
            // (No panic in a signal handler: it could deadlock on a lock the thread holds.
            // A null is only acceptable once the bump mapping is nearly exhausted.)
            if !bump_half_used() {
                HANDLER_NULLS.fetch_add(1, Relaxed);
            }
            return;
        }
        // SAFETY: as above.
        unsafe { p.write_bytes(k as u8, size) };
        *b = (p, size);
    }
    for (k, &(p, size)) in blocks.iter().enumerate() {
        // SAFETY: the block written above, freed once.
        unsafe {
            assert!(std::slice::from_raw_parts(p, size).iter().all(|&x| x == k as u8), "nested block clobbered");
            NESTED.dealloc(p, Layout::from_size_align(size, 8).unwrap());
        }
    }
    HANDLER_RUNS.fetch_add(1, Relaxed);
}

#[test]
fn signal_handler_nested_in_the_allocator_child() {
    if !testkit::is_child() {
        return;
    }
    // SAFETY: a fresh private anonymous mapping for the bump allocator.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            BUMP_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    BUMP_BASE.store(base as usize, Relaxed);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Another thread trims all the time, so the interrupted thread is often on a slow path
        // holding a guard (and the handler's own calls meet stopped caches).
        s.spawn(|| {
            while !done.load(Relaxed) {
                NESTED.trim();
                // Often (every ten timer ticks), not flat out: every trim hands the cached
                // blocks to `Bump`, which never reuses them.
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        // A handler that only uses NESTED (over the async-signal-safe Bump), every 100 us, aimed
        // at this thread so that it nests in this thread's calls into NESTED.
        testkit::signal::on_alarm(nested_handler);
        NESTED_ARMED.arm();
        let timer = testkit::signal::ThreadTimer::every(Duration::from_micros(100));
        let mut rng = Rng::new(5);
        let start = Instant::now();
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        // At least 700 ms, and on until the handler has run often enough (a loaded machine
        // gives this thread, hence its timer, few chances), short of a hang or the bump
        // mapping's half.
        while (start.elapsed() < Duration::from_millis(700) || HANDLER_RUNS.load(Relaxed) <= 100)
            && start.elapsed() < HANG
            && !bump_half_used()
        {
            let l = Layout::from_size_align(1 + rng.below(1024) as usize, 8).unwrap();
            let tag = rng.next() as u8;
            // SAFETY: non-zero sizes; blocks written within their size and freed once.
            unsafe {
                let p = NESTED.alloc(l);
                assert!(!p.is_null());
                p.write_bytes(tag, l.size());
                live.push((p, l, tag));
                if live.len() > 300 {
                    let (p, l, tag) = live.swap_remove(rng.below(live.len() as u64) as usize);
                    assert!(std::slice::from_raw_parts(p, l.size()).iter().all(|&x| x == tag), "block clobbered");
                    NESTED.dealloc(p, l);
                }
            }
        }
        drop(timer);
        NESTED_ARMED.disarm();
        done.store(true, Relaxed);
        // SAFETY: as above.
        live.into_iter().for_each(|(p, l, _)| unsafe { NESTED.dealloc(p, l) });
    });
    let runs = HANDLER_RUNS.load(Relaxed);
    assert!(runs > 100, "{runs} handler runs");
    let nulls = HANDLER_NULLS.load(Relaxed);
    assert_eq!(nulls, 0, "the handler got {nulls} null blocks while the inner allocator had room");
    println!(
        "NESTED-OK runs={runs} {:?} direct={} bump used={} MiB",
        restartable::mode(),
        NESTED.stats().direct,
        BUMP_NEXT.load(Relaxed) >> 20
    );
}

// ---------------------------------------------------------------------------------------------
// fork, and every mode.

/// Fork while other threads allocate, free and trim; the child allocates on threads of its own.
#[test]
fn fork_child_allocates_while_parent_threads_were_busy() {
    let _trims = trims_allowed();
    let done = AtomicBool::new(false);
    let status = std::thread::scope(|s| {
        for t in 0..3u64 {
            let done = &done;
            s.spawn(move || {
                let mut rng = Rng::new(40 + t);
                let mut v: Vec<Vec<u8>> = Vec::new();
                while !done.load(Relaxed) {
                    v.push(vec![t as u8; 1 + rng.below(1500) as usize]);
                    if v.len() > 100 {
                        v.swap_remove(rng.below(100) as usize);
                    }
                    if rng.below(1000) == 0 {
                        GLOBAL.trim();
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut statuses = Vec::new();
        for _ in 0..5 {
            // SAFETY: the child only allocates, runs threads and exits with `_exit`.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let code = std::panic::catch_unwind(|| {
                    let n = churn(3, Duration::from_millis(100), 9);
                    GLOBAL.trim();
                    let sum: usize = (0..1000).map(|i| vec![1u8; i % 1100 + 1].len()).sum();
                    assert!(n > 0 && sum > 0);
                })
                .map_or(1, |()| 0);
                // SAFETY: ends the child without running the parent's atexit handlers.
                unsafe { libc::_exit(code) };
            }
            assert!(pid > 0);
            let mut st = 0;
            let start = Instant::now();
            loop {
                // SAFETY: waits for our own child without blocking.
                let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
                if r == pid {
                    break;
                }
                if start.elapsed() > Duration::from_secs(60) {
                    // SAFETY: kills our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    panic!("forked child hung (deadlock after fork)");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            statuses.push(st);
        }
        done.store(true, Relaxed);
        statuses
    });
    for st in status {
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "child status {st:#x}");
    }
}

/// What each mode's child runs: churn with a trimmer, threads exiting, a fork.
#[test]
fn every_mode_child() {
    if !testkit::is_child() {
        return;
    }
    println!("MODE {}", restartable::mode());
    let _trims = trims_allowed();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Relaxed) {
                GLOBAL.trim();
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        churn(6, Duration::from_millis(300), 21);
        done.store(true, Relaxed);
    });
    let sums: Vec<usize> = (0..32)
        .map(|i| {
            std::thread::spawn(move || (0..500).map(|k| vec![0u8; (i * 37 + k) % 1024 + 1].len()).sum()).join().unwrap()
        })
        .collect();
    assert_eq!(sums.len(), 32);
    let s = GLOBAL.stats();
    assert!(s.hits() + s.direct > 0, "{s:?}");
    println!("EVERY-MODE-OK hits={} misses={} direct={}", s.hits(), s.misses(), s.direct);
}

#[test]
fn every_mode() {
    let modes: &[(&[(&str, &str)], &str)] = &[
        (&[], "fast"),
        (&[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], "fast"),
        (&[("RESTARTABLE_FORCE_DEGRADED", "1")], "degraded"),
        (&[("RESTARTABLE_FORCE_DEGRADED", "1"), ("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], "degraded"),
    ];
    for &(env, mode) in modes {
        for test in ["every_mode_child", "signal_handler_nested_in_the_allocator_child"] {
            let out = testkit::run_self_as_child_timeout(test, env, &[], Duration::from_secs(120));
            let text = testkit::describe(&out);
            assert!(out.status.success(), "{test} {env:?}:\n{text}");
            let mode = if cfg!(restartable_portable) { "degraded" } else { mode };
            assert!(text.contains(&format!("MODE {mode}")) || test != "every_mode_child", "{env:?}: {text}");
            assert!(text.contains("-OK"), "{test} {env:?}: {text}");
        }
    }
}

/// Under valgrind (no rseq: degraded mode; valgrind's own malloc as the inner allocator).
#[test]
fn valgrind_runs_the_allocator() {
    let mut cmd = std::process::Command::new("valgrind");
    cmd.args(["-q", "--error-exitcode=99"])
        .arg(std::env::current_exe().unwrap())
        .args(["every_mode_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(testkit::CHILD_ENV, "1");
    // A hang fails the test instead of hanging CI (valgrind missing: a failed status, 127).
    let out = testkit::output_with_timeout(cmd, std::time::Duration::from_secs(300));
    let text = testkit::describe(&out);
    assert!(out.status.success(), "valgrind run failed:\n{text}");
    assert!(text.contains("EVERY-MODE-OK") && text.contains("MODE degraded"), "{text}");
}
