//! Single-thread semantics of every op, for each index mode and commit ordering: every outcome
//! an op can reach (Committed, CompareFailed, Stopped) and the memory after it.
//!
//! Tests in this binary run in parallel, so a section may also end `Aborted` (preemption) or
//! `Stopped` (another test holds a guard); `drive` retries those, as real callers do.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

use restartable::guard;
use restartable::ops::{self, Cpu, Index, MmCid, Order, Outcome, Relaxed as R, Release};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

/// Run `op(index)` until it ends Committed or CompareFailed (bounded: never hangs).
fn drive<I: Index>(mut op: impl FnMut(usize) -> Outcome) -> Option<Outcome> {
    if !restartable::mode().is_fast() {
        return None;
    }
    for _ in 0..10_000_000 {
        let index = I::current()?;
        match op(index) {
            Outcome::Aborted | Outcome::Stopped => std::thread::yield_now(),
            o => return Some(o),
        }
    }
    panic!("op never completed");
}

/// Run `op(index)` while this thread holds `index`'s guard: it must end Stopped, storing nothing.
fn stopped<I: Index>(mut op: impl FnMut(usize) -> Outcome) {
    if !restartable::mode().is_fast() {
        return;
    }
    for _ in 0..1_000_000 {
        let Some(index) = I::current() else { return };
        let stop = guard::stop::<I>(index).expect("stop");
        let o = op(index);
        drop(stop);
        match o {
            Outcome::Aborted => continue,
            o => return assert_eq!(o, Outcome::Stopped),
        }
    }
    panic!("never reached the guard check");
}

fn slots() -> Vec<AtomicUsize> {
    (0..restartable::possible_cpus().max(64)).map(|_| AtomicUsize::new(0)).collect()
}

macro_rules! for_modes {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn cpu() {
                super::$body::<restartable::ops::Cpu>();
            }
            #[test]
            fn mm_cid() {
                super::$body::<restartable::ops::MmCid>();
            }
        }
    };
    ($name:ident, $body:ident, ordered) => {
        mod $name {
            use restartable::ops::{Cpu, MmCid, Relaxed, Release};
            #[test]
            fn cpu_relaxed() {
                super::$body::<Cpu, Relaxed>();
            }
            #[test]
            fn cpu_release() {
                super::$body::<Cpu, Release>();
            }
            #[test]
            fn mm_cid_relaxed() {
                super::$body::<MmCid, Relaxed>();
            }
            #[test]
            fn mm_cid_release() {
                super::$body::<MmCid, Release>();
            }
        }
    };
}

fn cbne_store<I: Index>() {
    let v = slots();
    v.iter().for_each(|s| s.store(7, Relaxed));
    // SAFETY (all ops in this file): `index` comes from `I::current()`, `v[index]` and the other
    // locations are only touched by this thread, pointers come from live references.
    let o = drive::<I>(|i| unsafe { ops::load_cbne_store::<I>(&v[i], 7, 9, i) });
    if o.is_none() {
        return;
    }
    assert_eq!(o, Some(Outcome::Committed));
    assert_eq!(v.iter().filter(|s| s.load(Relaxed) == 9).count(), 1);
    let before: Vec<usize> = v.iter().map(|s| s.load(Relaxed)).collect();
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    let o = drive::<I>(|i| unsafe { ops::load_cbne_store::<I>(&v[i], 12345, 1, i) });
    assert_eq!(o, Some(Outcome::CompareFailed));
    assert_eq!(before, v.iter().map(|s| s.load(Relaxed)).collect::<Vec<_>>());
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    stopped::<I>(|i| unsafe { ops::load_cbne_store::<I>(&v[i], v[i].load(Relaxed), 1000, i) });
    assert!(v.iter().all(|s| s.load(Relaxed) != 1000));
}
for_modes!(load_cbne_store, cbne_store);

fn add_store<I: Index>() {
    let v = slots();
    let mut n = 0;
    for k in 1..=100usize {
        // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
        if drive::<I>(|i| unsafe { ops::load_add_store::<I>(&v[i], k, i) }).is_none() {
            return;
        }
        n += k;
    }
    assert_eq!(v.iter().map(|s| s.load(Relaxed)).sum::<usize>(), n);
    // Wrapping add.
    let w = AtomicUsize::new(usize::MAX);
    let ws: Vec<&AtomicUsize> = vec![&w; restartable::possible_cpus().max(64)];
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    assert_eq!(drive::<I>(|i| unsafe { ops::load_add_store::<I>(ws[i], 2, i) }), Some(Outcome::Committed));
    assert_eq!(w.load(Relaxed), 1);
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    stopped::<I>(|i| unsafe { ops::load_add_store::<I>(&v[i], 1_000_000, i) });
    assert_eq!(v.iter().map(|s| s.load(Relaxed)).sum::<usize>(), n);
}
for_modes!(load_add_store, add_store);

/// A node of an intrusive list: `next` at offset 0, then a payload.
#[repr(C)]
struct Node {
    next: usize,
    payload: usize,
}

fn cbeq_pop<I: Index>() {
    // A two-node list per slot: head -> a -> b -> 0.
    let b = Box::new(Node { next: 0, payload: 2 });
    let a = Box::new(Node { next: &*b as *const Node as usize, payload: 1 });
    let heads = slots();
    heads.iter().for_each(|h| h.store(&*a as *const Node as usize, Relaxed));
    let off = std::mem::offset_of!(Node, next);
    let mut out = 0usize;
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    let o = drive::<I>(|i| unsafe { ops::load_cbeq_store_add_load_store::<I>(&heads[i], 0, off, &mut out, i) });
    if o.is_none() {
        return;
    }
    assert_eq!(o, Some(Outcome::Committed));
    assert_eq!(out, &*a as *const Node as usize);
    let popped = heads.iter().position(|h| h.load(Relaxed) == &*b as *const Node as usize);
    assert!(popped.is_some(), "one head advanced to b");
    // Pop until a slot is empty: the empty marker 0 gives CompareFailed. Pops go to whichever
    // slot is current, and the thread may move between them, so count pops per slot: no slot
    // gives more than its two nodes, and the slot found empty gave exactly both.
    let mut pops = vec![0usize; heads.len()];
    pops[popped.unwrap()] = 1;
    let mut last = usize::MAX;
    let end = loop {
        let o = drive::<I>(|i| {
            last = i;
            // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
            unsafe { ops::load_cbeq_store_add_load_store::<I>(&heads[i], 0, off, &mut out, i) }
        });
        match o {
            Some(Outcome::Committed) => pops[last] += 1,
            Some(Outcome::CompareFailed) => break last,
            o => panic!("{o:?}"),
        }
        assert!(pops[last] <= 2, "slot {last} has only two nodes");
        assert!(pops.iter().sum::<usize>() <= 2 * heads.len(), "bounded");
    };
    assert_eq!((pops[end], heads[end].load(Relaxed)), (2, 0), "the empty slot gave both nodes");
    let (a_addr, b_addr) = (&*a as *const Node as usize, &*b as *const Node as usize);
    for (k, h) in heads.iter().enumerate() {
        assert_eq!(h.load(Relaxed), [a_addr, b_addr, 0][pops[k]], "slot {k} after {} pops", pops[k]);
    }
    let before: Vec<usize> = heads.iter().map(|h| h.load(Relaxed)).collect();
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    stopped::<I>(|i| unsafe { ops::load_cbeq_store_add_load_store::<I>(&heads[i], 0, off, &mut out, i) });
    assert_eq!(before, heads.iter().map(|h| h.load(Relaxed)).collect::<Vec<_>>());
    assert_eq!(a.payload + b.payload, 3);
}
for_modes!(load_cbeq_store_add_load_store, cbeq_pop);

fn add_through_pointer<I: Index>() {
    // p -> [array of counters]; the op adds to *(*p + off).
    let counters = slots();
    let table: Vec<AtomicUsize> = counters.iter().map(|c| AtomicUsize::new(c as *const AtomicUsize as usize)).collect();
    let p: Vec<AtomicUsize> = (0..table.len()).map(|_| AtomicUsize::new(table.as_ptr() as usize)).collect();
    let mut n = 0;
    for k in 1..=50 {
        // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
        let o = drive::<I>(|i| unsafe { ops::load_add_load_load_add_store::<I>(&p[i], i * 8, k, i) });
        if o.is_none() {
            return;
        }
        assert_eq!(o, Some(Outcome::Committed));
        n += k;
    }
    assert_eq!(counters.iter().map(|c| c.load(Relaxed)).sum::<usize>(), n);
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    stopped::<I>(|i| unsafe { ops::load_add_load_load_add_store::<I>(&p[i], i * 8, 1000, i) });
    assert_eq!(counters.iter().map(|c| c.load(Relaxed)).sum::<usize>(), n);
}
for_modes!(load_add_load_load_add_store, add_through_pointer);

fn double_compare<I: Index>() {
    let v = slots();
    let v2 = slots();
    v.iter().for_each(|s| s.store(1, Relaxed));
    v2.iter().for_each(|s| s.store(2, Relaxed));
    // First compare fails, second compare fails, both succeed.
    for (e, e2, want) in [(5, 2, Outcome::CompareFailed), (1, 5, Outcome::CompareFailed), (1, 2, Outcome::Committed)] {
        // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
        let o = drive::<I>(|i| unsafe { ops::load_cbne_load_cbne_store::<I>(&v[i], e, &v2[i], e2, 3, i) });
        if o.is_none() {
            return;
        }
        assert_eq!(o, Some(want));
    }
    assert_eq!(v.iter().filter(|s| s.load(Relaxed) == 3).count(), 1);
    assert!(v2.iter().all(|s| s.load(Relaxed) == 2));
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    stopped::<I>(|i| unsafe { ops::load_cbne_load_cbne_store::<I>(&v[i], v[i].load(Relaxed), &v2[i], 2, 99, i) });
    assert!(v.iter().all(|s| s.load(Relaxed) != 99));
}
for_modes!(load_cbne_load_cbne_store, double_compare);

fn store_store<I: Index, O: Order>() {
    let count = slots();
    let item = slots();
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    let o = drive::<I>(|i| unsafe { ops::load_cbne_store_store::<I, O>(&count[i], 1, &item[i], 42, 2, i) });
    if o.is_none() {
        return;
    }
    assert_eq!(o, Some(Outcome::CompareFailed));
    assert!(item.iter().all(|s| s.load(Relaxed) == 0), "nothing stored on compare failure");
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    let o = drive::<I>(|i| unsafe { ops::load_cbne_store_store::<I, O>(&count[i], 0, &item[i], 42, 1, i) });
    assert_eq!(o, Some(Outcome::Committed));
    let c = count.iter().position(|s| s.load(Relaxed) == 1).expect("committed count");
    assert_eq!(item[c].load(Relaxed), 42);
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    stopped::<I>(|i| unsafe {
        ops::load_cbne_store_store::<I, O>(&count[i], count[i].load(Relaxed), &item[i], 7, 77, i)
    });
    assert!(count.iter().all(|s| s.load(Relaxed) != 77));
}
for_modes!(load_cbne_store_store, store_store, ordered);

fn memcpy_store<I: Index, O: Order>() {
    const LEN: usize = 300;
    let count = slots();
    let bufs: Vec<Vec<AtomicU8>> =
        (0..count.len()).map(|_| (0..LEN + 1).map(|_| AtomicU8::new(0xee)).collect()).collect();
    let src: Vec<u8> = (0..LEN as u32).map(|x| (x * 7 + 3) as u8).collect();
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    let o = drive::<I>(|i| unsafe {
        ops::load_cbne_memcpy_store::<I, O>(&count[i], 5, bufs[i].as_ptr(), src.as_ptr(), LEN, 1, i)
    });
    if o.is_none() {
        return;
    }
    assert_eq!(o, Some(Outcome::CompareFailed));
    assert!(bufs.iter().flatten().all(|b| b.load(Relaxed) == 0xee));
    for len in [0, 1, 8, LEN] {
        // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
        let o = drive::<I>(|i| unsafe {
            ops::load_cbne_memcpy_store::<I, O>(
                &count[i],
                count[i].load(Relaxed),
                bufs[i].as_ptr(),
                src.as_ptr(),
                len,
                len + 1000,
                i,
            )
        });
        assert_eq!(o, Some(Outcome::Committed));
        let c = count.iter().position(|s| s.load(Relaxed) == len + 1000).expect("committed");
        let got: Vec<u8> = bufs[c][..len].iter().map(|b| b.load(Relaxed)).collect();
        assert_eq!(got, &src[..len]);
        assert_eq!(bufs[c][LEN].load(Relaxed), 0xee, "no byte past len is written");
    }
    // SAFETY: as stated at `cbne_store`: `i` comes from `I::current()` and the memory is local.
    stopped::<I>(|i| unsafe {
        ops::load_cbne_memcpy_store::<I, O>(&count[i], count[i].load(Relaxed), bufs[i].as_ptr(), src.as_ptr(), 1, 5, i)
    });
    assert!(count.iter().all(|s| s.load(Relaxed) != 5));
}
for_modes!(load_cbne_memcpy_store, memcpy_store, ordered);

#[test]
fn out_of_range_index_is_stopped_not_a_crash() {
    let v = AtomicUsize::new(0);
    // SAFETY: `v` is live; the index is deliberately invalid, which the op must refuse.
    let o = unsafe { ops::load_add_store::<Cpu>(&v, 1, guard::MAX_CPUS + 5) };
    assert_eq!(o, Outcome::Stopped);
    assert_eq!(v.load(Relaxed), 0);
}

#[test]
fn wrong_index_aborts() {
    if !restartable::mode().is_fast() {
        return;
    }
    let v = AtomicUsize::new(0);
    // An index the thread is certainly not on (beyond the possible CPUs, but inside the guard
    // array): the in-section check fails and nothing is stored.
    let i = restartable::possible_cpus();
    // SAFETY: `v` is live and only used by this thread.
    assert_eq!(unsafe { ops::load_add_store::<Cpu>(&v, 1, i) }, Outcome::Aborted);
    // SAFETY: as above.
    assert_eq!(unsafe { ops::load_add_store::<MmCid>(&v, 1, i) }, Outcome::Aborted);
    assert_eq!(v.load(Relaxed), 0);
}

#[test]
fn mm_cid_is_available_on_this_kernel() {
    // Kernel 6.3+ with a registration that covers mm_cid (true here: 6.18, usable 28 bytes).
    let s = restartable::status();
    if s.mode.is_fast() && s.rseq_feature_size.unwrap_or(0) >= 28 {
        let cid = restartable::current_mm_cid().expect("mm_cid");
        assert!(cid < restartable::possible_cpus());
    }
    let _ = (R, Release);
}

/// A build with the portable architecture module (`--cfg restartable_portable`, which CI runs the
/// library's tests with on x86_64) has no critical sections: degraded mode, whatever the kernel
/// offers, every op `Stopped` and storing nothing, and every collection still exact (the rest of
/// the suite runs in this build too).
#[test]
fn portable_build_has_no_fast_path() {
    if !cfg!(restartable_portable) {
        return;
    }
    assert_eq!(*restartable::mode(), restartable::Mode::Degraded(restartable::Degraded::Portable));
    assert!(matches!(restartable::registration(), restartable::Registration::Unavailable(_)));
    let v = AtomicUsize::new(7);
    let cpu = restartable::current_cpu();
    assert!(cpu < restartable::possible_cpus());
    // SAFETY: `v` is a live local that only this thread touches.
    assert_eq!(unsafe { ops::load_add_store::<Cpu>(&v, 1, cpu) }, Outcome::Stopped);
    assert_eq!(v.load(Relaxed), 7);
    let c = restartable::Counter::new();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| (0..10_000).for_each(|_| c.add(1)));
        }
    });
    assert_eq!(c.take(), 40_000);
}
