//! Batch operations (one critical section moves many items) and the stack's node recycling:
//! conservation under contention (6 x cores threads mixing single and batch operations while
//! another thread drains random CPUs through the guard: every item exactly once), the edges
//! (a batch larger than the room moves what fits, `max = 0` moves nothing), and the bound on
//! recycled chunks. In degraded mode too (a child re-runs this binary).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use restartable::ops::{Cpu, Index, MmCid};
use restartable::{Buffer, MemcpyBuffer, Stack};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

fn threads() -> usize {
    6 * std::thread::available_parallelism().map_or(2, |n| n.get())
}
const REPS: u64 = 20_000;

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// `work(thread)` on `threads()` threads while `remote(seed)` runs in a loop (at least once
/// after every worker has started).
fn contend(work: impl Fn(u64) + Sync, remote: impl Fn(&mut u64) + Send) {
    let done = AtomicBool::new(false);
    let runs = AtomicU64::new(0);
    std::thread::scope(|s| {
        let (done, runs) = (&done, &runs);
        s.spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15;
            while !done.load(Relaxed) || runs.load(Relaxed) == 0 {
                remote(&mut seed);
                runs.fetch_add(1, Relaxed);
            }
        });
        let workers: Vec<_> = (0..threads() as u64)
            .map(|t| {
                s.spawn({
                    let work = &work;
                    move || work(t)
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        done.store(true, Relaxed);
    });
    assert!(runs.load(Relaxed) > 0);
}

/// Every id in 0..n exactly once across the parts.
fn check(parts: &[&[u64]], n: u64, what: &str) {
    let mut seen = HashSet::with_capacity(n as usize);
    for part in parts {
        for &id in *part {
            assert!(id < n, "{what}: unknown item {id}");
            assert!(seen.insert(id), "{what}: item {id} seen twice");
        }
    }
    assert_eq!(seen.len() as u64, n, "{what}: {} items lost", n - seen.len() as u64);
}

fn random_cpu(seed: &mut u64) -> usize {
    (rng(seed) % restartable::possible_cpus() as u64) as usize
}

fn stack_batches<I: Index>() {
    // A cache of one chunk: pops that empty chunks give them back often.
    let s: Stack<u64, I> = Stack::with_chunk_cache(1);
    let (out, drained) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    contend(
        |t| {
            let mut mine = Vec::new();
            let mut k = 0;
            while k < REPS {
                let n = (k % 17).min(REPS - k);
                if k % 3 == 0 {
                    s.push_batch((k..k + n).map(|i| t * REPS + i).collect());
                    k += n.max(1);
                    if n == 0 {
                        s.push(t * REPS + k - 1);
                    }
                } else {
                    s.push(t * REPS + k);
                    k += 1;
                }
                match k % 4 {
                    0 => mine.extend(s.pop_batch((k % 23) as usize)),
                    1 => mine.extend(s.pop()),
                    _ => {}
                }
            }
            out.lock().unwrap().extend(mine);
        },
        |seed| drained.lock().unwrap().extend(s.drain_cpu(random_cpu(seed)).unwrap()),
    );
    let cached: usize = s.cached_chunks_per_cpu().iter().sum();
    // A pop trims beyond the cache; a CPU whose last pop emptied no chunk may hold one more.
    assert!(cached <= 2 * restartable::possible_cpus(), "the chunk caches are bounded ({cached})");
    let left = s.drain_all();
    assert_eq!(s.cached_chunks_per_cpu().iter().sum::<usize>(), 0, "drain_all gives every chunk back");
    let (o, d) = (out.into_inner().unwrap(), drained.into_inner().unwrap());
    check(&[&o, &d, &left], threads() as u64 * REPS, &format!("stack batches <{}>", I::NAME));
}

#[test]
fn stack_batches_cpu() {
    stack_batches::<Cpu>();
}
#[test]
fn stack_batches_mm_cid() {
    stack_batches::<MmCid>();
}

fn buffer_batches<I: Index>() {
    let b: Buffer<u64, I> = Buffer::with_capacity(48);
    let (out, drained) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    contend(
        |t| {
            let mut mine: Vec<u64> = Vec::new();
            let mut pending: Vec<Box<u64>> = Vec::new();
            let mut popped: Vec<Box<u64>> = Vec::new();
            for k in 0..REPS {
                pending.push(Box::new(t * REPS + k));
                if k % 5 == 4 {
                    let before = pending.len();
                    let moved = b.push_batch(&mut pending);
                    assert_eq!(pending.len(), before - moved, "push_batch takes what it moves");
                }
                if k % 7 == 6 {
                    let before = popped.len();
                    let moved = b.pop_batch((k % 19) as usize, &mut popped);
                    assert_eq!(popped.len(), before + moved);
                }
            }
            // Whatever did not fit stays ours.
            mine.extend(pending.into_iter().map(|x| *x));
            mine.extend(popped.into_iter().map(|x| *x));
            out.lock().unwrap().extend(mine);
        },
        |seed| drained.lock().unwrap().extend(b.drain_cpu(random_cpu(seed)).unwrap().into_iter().map(|x| *x)),
    );
    let left: Vec<u64> = b.drain_all().into_iter().map(|x| *x).collect();
    let (o, d) = (out.into_inner().unwrap(), drained.into_inner().unwrap());
    check(&[&o, &d, &left], threads() as u64 * REPS, &format!("buffer batches <{}>", I::NAME));
}

#[test]
fn buffer_batches_cpu() {
    buffer_batches::<Cpu>();
}
#[test]
fn buffer_batches_mm_cid() {
    buffer_batches::<MmCid>();
}

/// An item whose 8 words all derive from its id: a torn copy shows.
fn item(id: u64) -> [u64; 8] {
    core::array::from_fn(|k| id.rotate_left(k as u32 * 8) ^ k as u64)
}

fn id_of(x: &[u64; 8]) -> u64 {
    assert_eq!(*x, item(x[0]), "a torn item");
    x[0]
}

fn memcpy_batches<I: Index>() {
    let b: MemcpyBuffer<[u64; 8], I> = MemcpyBuffer::with_capacity(48);
    let (out, drained) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    contend(
        |t| {
            let mut mine: Vec<u64> = Vec::new();
            let mut pending: Vec<[u64; 8]> = Vec::new();
            let mut popped: Vec<[u64; 8]> = Vec::new();
            for k in 0..REPS {
                pending.push(item(t * REPS + k));
                if k % 5 == 4 {
                    let moved = b.push_batch(&pending);
                    pending.drain(..moved);
                }
                if k % 7 == 6 {
                    b.pop_batch((k % 19) as usize, &mut popped);
                }
            }
            mine.extend(pending.iter().map(id_of));
            mine.extend(popped.iter().map(id_of));
            out.lock().unwrap().extend(mine);
        },
        |seed| drained.lock().unwrap().extend(b.drain_cpu(random_cpu(seed)).unwrap().iter().map(id_of)),
    );
    let left: Vec<u64> = b.drain_all().iter().map(id_of).collect();
    let (o, d) = (out.into_inner().unwrap(), drained.into_inner().unwrap());
    check(&[&o, &d, &left], threads() as u64 * REPS, &format!("memcpy batches <{}>", I::NAME));
}

#[test]
fn memcpy_batches_cpu() {
    memcpy_batches::<Cpu>();
}
#[test]
fn memcpy_batches_mm_cid() {
    memcpy_batches::<MmCid>();
}

#[test]
fn batch_edges() {
    // A batch larger than the room moves what fits, from the end of the Vec; max = 0 moves
    // nothing; an empty batch moves nothing. (Pinned, so every call sees the same CPU's array.)
    let _cpu = testkit::affinity::pin_to_one();
    let b: Buffer<u32> = Buffer::with_capacity(4);
    let mut items: Vec<Box<u32>> = (0..10).map(Box::new).collect();
    assert_eq!(b.push_batch(&mut items), 4);
    assert_eq!(items.iter().map(|x| **x).collect::<Vec<_>>(), (0..6).collect::<Vec<_>>(), "the last 4 moved");
    assert_eq!(b.push_batch(&mut items), 0, "full: nothing moves");
    assert_eq!(b.push_batch(&mut Vec::new()), 0);
    let mut out = Vec::new();
    assert_eq!(b.pop_batch(0, &mut out), 0);
    assert_eq!(b.pop_batch(usize::MAX, &mut out), 4, "max beyond the capacity is fine");
    assert_eq!(out.iter().map(|x| **x).collect::<Vec<_>>(), [6, 7, 8, 9], "in the order pushed");
    assert_eq!(b.pop_batch(3, &mut out), 0, "empty");

    let m: MemcpyBuffer<u16> = MemcpyBuffer::with_capacity(3);
    assert_eq!(m.push_batch(&[1, 2, 3, 4, 5]), 3, "the first 3 of the slice");
    let mut got = Vec::new();
    assert_eq!(m.pop_batch(2, &mut got), 2);
    assert_eq!(got, [2, 3], "the last two pushed, in the order pushed");
    assert_eq!(m.drain_all(), [1]);
    let z: MemcpyBuffer<()> = MemcpyBuffer::with_capacity(2);
    assert_eq!(z.push_batch(&[(), (), ()]), 2);
    let mut units = Vec::new();
    assert_eq!(z.pop_batch(5, &mut units), 2);

    let s: Stack<u32> = Stack::new();
    s.push_batch((0..5).collect());
    assert!(s.pop_batch(0).is_empty());
    assert_eq!(s.pop_batch(3), [4, 3, 2], "the last pushed on top");
    assert_eq!(s.pop_batch(10), [1, 0]);
    s.push_batch(Vec::new());
    assert!(s.drain_all().is_empty());
}

/// Batches and single operations across chunk boundaries: items of 240 bytes, four to a chunk,
/// so that every batch crosses chunks, and a cache of two chunks, so that pops give chunks back.
#[test]
fn stack_chunk_boundaries() {
    let cpu = testkit::affinity::pin_to_one();
    type Big = [u64; 30];
    let big = |i: u64| -> Big { std::array::from_fn(|k| i * 100 + k as u64) };
    let s: Stack<Big> = Stack::with_chunk_cache(2);
    assert_eq!(Stack::<Big>::ITEMS_PER_CHUNK, 4);
    let on_cpu = |v: Vec<usize>| v[cpu];
    s.push_batch((0..10).map(big).collect()); // chunks 1-3, top in the third
    assert_eq!(on_cpu(s.len_per_cpu()), 10);
    assert_eq!(on_cpu(s.cached_chunks_per_cpu()), 0);
    s.push(big(10));
    s.push(big(11));
    s.push(big(12)); // the fourth chunk
    assert_eq!(on_cpu(s.len_per_cpu()), 13);
    assert_eq!(s.pop(), Some(big(12)), "across a chunk boundary");
    assert_eq!(on_cpu(s.cached_chunks_per_cpu()), 1, "the emptied chunk is kept");
    assert_eq!(s.pop_batch(6), (6..12).rev().map(big).collect::<Vec<_>>());
    // Chunks 3 and 4 are free now: within the cache of two.
    assert_eq!(on_cpu(s.cached_chunks_per_cpu()), 2);
    assert_eq!(s.pop_batch(3), [big(5), big(4), big(3)]);
    // A third free chunk is over the cache: trimmed to half of it.
    assert_eq!(on_cpu(s.cached_chunks_per_cpu()), 1);
    let mut again: Vec<Big> = (20..29).map(big).collect();
    s.append(&mut again);
    assert!(again.is_empty());
    assert_eq!(on_cpu(s.len_per_cpu()), 12);
    let mut out = Vec::new();
    assert_eq!(s.pop_batch_into(100, &mut out), 12);
    let expect: Vec<Big> = (20..29).rev().chain([2, 1, 0]).map(big).collect();
    assert_eq!(out, expect, "LIFO across every boundary");
    assert_eq!(s.pop(), None);
    // Zero-sized items still take a slot each.
    let z: Stack<()> = Stack::new();
    z.push_batch(vec![(); 1000]);
    assert_eq!(on_cpu(z.len_per_cpu()), 1000);
    assert_eq!(z.pop_batch(usize::MAX).len(), 1000);
}

/// Items are dropped exactly once through batches, also when a Stack or Buffer holding batched
/// items is dropped.
#[test]
fn batches_drop_everything_once() {
    static DROPS: AtomicU64 = AtomicU64::new(0);
    struct D;
    impl Drop for D {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Relaxed);
        }
    }
    let s: Stack<D> = Stack::new();
    s.push_batch((0..100).map(|_| D).collect());
    drop(s.pop_batch(10));
    drop(s);
    let b: Buffer<D> = Buffer::with_capacity(50);
    let mut v: Vec<Box<D>> = (0..100).map(|_| Box::new(D)).collect();
    b.push_batch(&mut v);
    drop(v);
    drop(b);
    assert_eq!(DROPS.load(Relaxed), 200);
}

#[test]
fn degraded_mode_too() {
    if testkit::is_child() {
        return;
    }
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--skip", "degraded_mode_too", "--test-threads=2"])
        .env(testkit::CHILD_ENV, "1")
        .env("RESTARTABLE_FORCE_DEGRADED", "1");
    let out = testkit::output_with_timeout(cmd, std::time::Duration::from_secs(300));
    let text = testkit::describe(&out);
    assert!(out.status.success() && text.contains("test result: ok"), "{text}");
}
