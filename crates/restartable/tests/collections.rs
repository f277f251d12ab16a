//! Conservation under contention for every collection: 6 x cores threads work on the current
//! CPU's data while another thread drains (or takes, or locks) random CPUs remotely through the
//! guard. Counter totals are exact; the multiset of items pushed equals popped + drained + left
//! (+ given back when full), with no item seen twice. Drop counts every item exactly once.
//!
//! `degraded_mode_too` re-runs this whole binary with `RESTARTABLE_FORCE_DEGRADED=1`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use restartable::ops::{Cpu, Index, MmCid};
use restartable::{Buffer, Counter, MemcpyBuffer, SpinLock, Stack};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

fn threads() -> usize {
    6 * std::thread::available_parallelism().map_or(2, |n| n.get())
}
const REPS: u64 = 20_000;

/// A tiny xorshift, so the remote thread picks CPUs without a dependency.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Run `work(thread, mid)` on `threads()` threads while `remote(seed)` runs in a loop on
/// another. Each worker calls `mid()` halfway through its work, which waits (up to 60 s) until
/// the remote thread has completed 3 more operations since the workers started: remote
/// operations provably overlap the fast paths, however the scheduler treats the remote thread.
fn contend(work: impl Fn(u64, &dyn Fn()) + Sync, remote: impl Fn(&mut u64) + Send) {
    let done = &AtomicBool::new(false);
    let remote_runs = &AtomicU64::new(0);
    std::thread::scope(|s| {
        let r = s.spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15;
            while !done.load(Relaxed) {
                remote(&mut seed);
                remote_runs.fetch_add(1, Relaxed);
            }
        });
        while remote_runs.load(Relaxed) == 0 {
            std::thread::yield_now();
        }
        let start = remote_runs.load(Relaxed);
        let mid = move || {
            let t0 = std::time::Instant::now();
            while remote_runs.load(Relaxed) < start + 3 {
                // Only a hang reaches this: a loaded machine (CI runs suites side by side) may
                // leave the remote thread unscheduled for seconds.
                assert!(t0.elapsed().as_secs() < 60, "the remote thread made no progress in 60 s");
                std::thread::yield_now();
            }
        };
        let workers: Vec<_> = (0..threads() as u64)
            .map(|t| {
                let work = &work;
                s.spawn(move || work(t, &mid))
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        done.store(true, Relaxed);
        r.join().unwrap();
    });
}

fn counter<I: Index>() {
    let c: Counter<I> = Counter::default();
    let taken = AtomicU64::new(0);
    contend(
        |t, mid| {
            for k in 0..REPS {
                if k == REPS / 2 {
                    mid();
                }
                if k % 512 == 0 {
                    std::thread::yield_now(); // let the remote thread in
                }
                c.add(1 + (k + t) % 3);
            }
        },
        |seed| {
            let cpu = (rng(seed) % restartable::possible_cpus() as u64) as usize;
            taken.fetch_add(c.take_cpu(cpu).unwrap(), Relaxed);
        },
    );
    let expected: u64 = (0..threads() as u64).map(|t| (0..REPS).map(|k| 1 + (k + t) % 3).sum::<u64>()).sum();
    let left = c.take();
    assert_eq!(taken.load(Relaxed) + left, expected, "lost or doubled adds");
    assert_eq!(c.sum(), 0);
    eprintln!("counter<{}>: {expected} added, {} taken remotely", I::NAME, taken.load(Relaxed));
}

#[test]
fn counter_cpu() {
    counter::<Cpu>();
}
#[test]
fn counter_mm_cid() {
    counter::<MmCid>();
}

fn stack<I: Index>() {
    let s: Stack<u64, I> = Stack::new();
    let popped = std::sync::Mutex::new(Vec::new());
    let drained = std::sync::Mutex::new(Vec::new());
    contend(
        |t, mid| {
            let mut mine = Vec::new();
            for k in 0..REPS {
                if k == REPS / 2 {
                    mid();
                }
                if k % 512 == 0 {
                    std::thread::yield_now(); // let the remote thread in
                }
                s.push(t * REPS + k);
                if k % 3 == 0 {
                    mine.extend(s.pop());
                }
            }
            popped.lock().unwrap().extend(mine);
        },
        |seed| {
            let cpu = (rng(seed) % restartable::possible_cpus() as u64) as usize;
            let d = s.drain_cpu(cpu).unwrap();
            drained.lock().unwrap().extend(d);
        },
    );
    let left = s.drain_all();
    let (p, d) = (popped.into_inner().unwrap(), drained.into_inner().unwrap());
    check_multiset(&[&p, &d, &left], threads() as u64 * REPS, &format!("stack<{}>", I::NAME));
}

/// Every id in 0..n appears exactly once across the parts.
fn check_multiset(parts: &[&Vec<u64>], n: u64, what: &str) {
    let mut seen = HashSet::with_capacity(n as usize);
    for part in parts {
        for &id in part.iter() {
            assert!(id < n, "{what}: unknown item {id}");
            assert!(seen.insert(id), "{what}: item {id} seen twice");
        }
    }
    assert_eq!(seen.len() as u64, n, "{what}: {} items lost", n - seen.len() as u64);
    eprintln!(
        "{what}: {n} items conserved ({} parts: {:?})",
        parts.len(),
        parts.iter().map(|p| p.len()).collect::<Vec<_>>()
    );
}

#[test]
fn stack_cpu() {
    stack::<Cpu>();
}
#[test]
fn stack_mm_cid() {
    stack::<MmCid>();
}

fn buffer<I: Index>() {
    let b: Buffer<u64, I> = Buffer::with_capacity(64);
    let out = std::sync::Mutex::new(Vec::new());
    let drained = std::sync::Mutex::new(Vec::new());
    contend(
        |t, mid| {
            let mut mine = Vec::new();
            for k in 0..REPS {
                if k == REPS / 2 {
                    mid();
                }
                if k % 512 == 0 {
                    std::thread::yield_now(); // let the remote thread in
                }
                if let Err(back) = b.push(Box::new(t * REPS + k)) {
                    mine.push(*back); // full: the item came back to us
                }
                if k % 2 == 0 {
                    mine.extend(b.pop().map(|x| *x));
                }
            }
            out.lock().unwrap().extend(mine);
        },
        |seed| {
            let cpu = (rng(seed) % restartable::possible_cpus() as u64) as usize;
            let d = b.drain_cpu(cpu).unwrap();
            drained.lock().unwrap().extend(d.into_iter().map(|x| *x));
        },
    );
    let left: Vec<u64> = b.drain_all().into_iter().map(|x| *x).collect();
    let (o, d) = (out.into_inner().unwrap(), drained.into_inner().unwrap());
    check_multiset(&[&o, &d, &left], threads() as u64 * REPS, &format!("buffer<{}>", I::NAME));
}

#[test]
fn buffer_cpu() {
    buffer::<Cpu>();
}
#[test]
fn buffer_mm_cid() {
    buffer::<MmCid>();
}

/// An item whose halves must agree: a torn copy would be caught.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Item {
    id: u64,
    check: u64,
    pad: [u8; 40],
}

impl Item {
    fn new(id: u64) -> Self {
        Item { id, check: !id, pad: [id as u8; 40] }
    }
    fn id(self) -> u64 {
        assert_eq!(self.check, !self.id, "torn item");
        assert!(self.pad.iter().all(|&b| b == self.id as u8), "torn item");
        self.id
    }
}

fn memcpy_buffer<I: Index>() {
    let b: MemcpyBuffer<Item, I> = MemcpyBuffer::with_capacity(32);
    let out = std::sync::Mutex::new(Vec::new());
    let drained = std::sync::Mutex::new(Vec::new());
    contend(
        |t, mid| {
            let mut mine = Vec::new();
            for k in 0..REPS {
                if k == REPS / 2 {
                    mid();
                }
                if k % 512 == 0 {
                    std::thread::yield_now(); // let the remote thread in
                }
                if let Err(back) = b.push(Item::new(t * REPS + k)) {
                    mine.push(back.id());
                }
                if k % 2 == 0 {
                    mine.extend(b.pop().map(Item::id));
                }
            }
            out.lock().unwrap().extend(mine);
        },
        |seed| {
            let cpu = (rng(seed) % restartable::possible_cpus() as u64) as usize;
            let d = b.drain_cpu(cpu).unwrap();
            drained.lock().unwrap().extend(d.into_iter().map(Item::id));
        },
    );
    let left: Vec<u64> = b.drain_all().into_iter().map(Item::id).collect();
    let (o, d) = (out.into_inner().unwrap(), drained.into_inner().unwrap());
    check_multiset(&[&o, &d, &left], threads() as u64 * REPS, &format!("memcpy_buffer<{}>", I::NAME));
}

#[test]
fn memcpy_buffer_cpu() {
    memcpy_buffer::<Cpu>();
}
#[test]
fn memcpy_buffer_mm_cid() {
    memcpy_buffer::<MmCid>();
}

fn spinlock<I: Index>() {
    // A non-atomic counter per CPU, and a flag that must never be seen set on entry.
    let l: SpinLock<(u64, bool), I> = SpinLock::new(|_| (0, false));
    let remote = AtomicU64::new(0);
    contend(
        |_, mid| {
            for k in 0..REPS / 4 {
                if k == REPS / 8 {
                    mid();
                }
                let mut g = l.lock();
                assert!(!g.1, "two holders of CPU {}'s lock", g.cpu());
                g.1 = true;
                g.0 += 1;
                g.1 = false;
            }
        },
        |seed| {
            let cpu = (rng(seed) % restartable::possible_cpus() as u64) as usize;
            let mut g = l.lock_cpu(cpu);
            assert!(!g.1, "two holders of CPU {cpu}'s lock");
            g.0 += 1;
            remote.fetch_add(1, Relaxed);
        },
    );
    let total: u64 = (0..l.len()).map(|c| l.lock_cpu(c).0).sum();
    assert_eq!(total, threads() as u64 * (REPS / 4) + remote.load(Relaxed), "lost increments under the lock");
}

#[test]
fn spinlock_cpu() {
    spinlock::<Cpu>();
}
#[test]
fn spinlock_mm_cid() {
    spinlock::<MmCid>();
}

/// Counts its drops.
struct Tracked(Arc<AtomicUsize>, #[allow(dead_code)] u64);
impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Relaxed);
    }
}

#[test]
fn every_item_dropped_exactly_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let n = 1000;
    {
        let s: Stack<Tracked> = Stack::new();
        (0..n).for_each(|i| s.push(Tracked(drops.clone(), i)));
        for _ in 0..100 {
            drop(s.pop()); // popped items are dropped by their new owner
        }
    } // dropped non-empty
    assert_eq!(drops.load(Relaxed), n as usize, "stack");

    drops.store(0, Relaxed);
    let mut rejected = 0;
    {
        let b: Buffer<Tracked> = Buffer::with_capacity(300);
        for i in 0..n {
            if let Err(back) = b.push(Box::new(Tracked(drops.clone(), i))) {
                rejected += 1;
                drop(back);
            }
        }
        drop(b.pop());
        assert!(drops.load(Relaxed) >= rejected);
    }
    assert_eq!(drops.load(Relaxed), n as usize, "buffer");

    drops.store(0, Relaxed);
    {
        let s: Stack<Tracked> = Stack::new();
        (0..n).for_each(|i| s.push(Tracked(drops.clone(), i)));
        let all = s.drain_all();
        assert_eq!(all.len(), n as usize);
        assert_eq!(drops.load(Relaxed), 0, "drain moves items out, drops none");
    }
    assert_eq!(drops.load(Relaxed), n as usize, "drained items dropped by their owner");

    drops.store(0, Relaxed);
    {
        let l: SpinLock<Vec<Tracked>> = SpinLock::new(|_| Vec::new());
        l.lock().push(Tracked(drops.clone(), 0));
        l.lock_cpu(0).push(Tracked(drops.clone(), 1));
    }
    assert_eq!(drops.load(Relaxed), 2, "spinlock values dropped with the lock");
}

#[test]
fn full_and_empty_are_answers() {
    let b: Buffer<u32> = Buffer::with_capacity(0);
    assert_eq!(b.push(Box::new(5)), Err(Box::new(5)));
    assert_eq!(b.pop(), None);
    let b: Buffer<u32> = Buffer::with_capacity(3);
    assert_eq!(b.pop(), None);
    let m: MemcpyBuffer<[u8; 4096]> = MemcpyBuffer::with_capacity(1); // the largest allowed item
    assert!(m.pop().is_none());
    m.push([7; 4096]).unwrap();
    assert_eq!(m.drain_all(), vec![[7u8; 4096]]);
    let z: MemcpyBuffer<u64> = MemcpyBuffer::with_capacity(0);
    assert_eq!(z.push(9), Err(9));
    let s: Stack<String> = Stack::new();
    assert_eq!(s.pop(), None);
    assert!(s.drain_cpu(restartable::possible_cpus()).is_err(), "out-of-range CPU is an error");
    let c: Counter = Counter::default();
    assert!(c.take_cpu(usize::MAX).is_err());
    assert!(format!("{c:?}").contains("sum: 0"));
}

#[test]
fn send_and_sync_exactly_when_sound() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Counter>();
    send_sync::<Counter<MmCid>>();
    send_sync::<Stack<String>>();
    send_sync::<Buffer<Vec<u8>>>();
    send_sync::<MemcpyBuffer<u64>>();
    send_sync::<SpinLock<std::cell::Cell<u64>>>(); // a lock makes a Send-only T shareable
    send_sync::<restartable::PerCpu<AtomicU64>>();
    // The negative cases (Stack<Rc<_>>, SpinLock<Rc<_>>) are compile_fail doctests in the
    // `collections` module.
}

/// Run every other test of this binary in a child process with `env` set and system calls
/// denied by seccomp (`rules`); the child must pass all of them in the expected mode.
fn whole_suite_in_child(env: &[(&str, &str)], rules: &[(i64, i32)], expect_mode: &str) {
    if std::env::var_os("RESTARTABLE_SUITE_CHILD").is_some() {
        return; // never recurse: a child runs the suite, not these parents
    }
    // A build with the portable architecture module has no critical sections: whatever the
    // environment offers, its mode is that (unless degraded mode is forced, which says so first).
    let forced = env.iter().any(|(k, v)| *k == "RESTARTABLE_FORCE_DEGRADED" && *v == "1");
    let expect_mode =
        if cfg!(restartable_portable) && !forced { "degraded: built without critical sections" } else { expect_mode };
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--skip",
        "degraded_mode_too",
        "--skip",
        "seccomp_",
        "--skip",
        "own_registration_too",
        "--test-threads=2",
        "--nocapture",
    ])
    .env("RESTARTABLE_SUITE_CHILD", expect_mode)
    .envs(env.iter().copied());
    if !rules.is_empty() {
        testkit::deny_syscalls_command(&mut cmd, rules);
    }
    let out = cmd.output().unwrap();
    let text = testkit::describe(&out);
    assert!(out.status.success(), "the suite failed in a child ({expect_mode}):\n{text}");
    assert!(text.contains("test result: ok"), "{text}");
    assert!(text.contains(&format!("MODE-OK {expect_mode}")), "the child ran in the wrong mode:\n{text}");
}

/// In a suite child: the mode is what the parent expected (printed for the parent to check).
#[test]
fn mode_is_as_expected() {
    let Ok(expect) = std::env::var("RESTARTABLE_SUITE_CHILD") else { return };
    let mode = restartable::mode().to_string();
    assert!(mode.contains(&expect), "mode {mode:?} does not contain {expect:?}");
    println!("MODE-OK {expect}");
}

#[test]
fn degraded_mode_too() {
    whole_suite_in_child(&[("RESTARTABLE_FORCE_DEGRADED", "1")], &[], "degraded: forced");
}

#[test]
fn seccomp_rseq_enosys() {
    whole_suite_in_child(&[], &[(testkit::SYS_RSEQ, libc::ENOSYS)], "degraded: rseq unavailable (ENOSYS");
}

#[test]
fn seccomp_rseq_eperm() {
    whole_suite_in_child(&[], &[(testkit::SYS_RSEQ, libc::EPERM)], "degraded: rseq unavailable (EPERM");
}

#[test]
fn seccomp_membarrier_enosys() {
    whole_suite_in_child(
        &[],
        &[(testkit::SYS_MEMBARRIER, libc::ENOSYS)],
        "degraded: membarrier rseq fence unavailable (ENOSYS",
    );
}

#[test]
fn own_registration_too() {
    whole_suite_in_child(&[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], &[], "fast");
}
