//! The depot shared by every CPU's cache: per class, magazines of up to [`BATCH`]`[k]` block
//! pointers on two lock-free stacks, one of full (non-empty) magazines and one of empty ones.
//!
//! A flush takes an empty magazine (one compare-exchange), fills it (memory it now owns, no
//! other thread looks at it) and pushes it on the full stack (one compare-exchange); a refill
//! pops a full magazine, copies its pointers out and pushes it back on the empty stack. A
//! transfer is O(1) shared-memory operations whatever its size, takes no lock (a thread
//! preempted in the middle of one stops nobody, a signal handler nested in one can use the depot
//! itself), and a refill takes the batch the last flush produced (LIFO: the most recently
//! touched blocks). A class holds at most [`DEPOT_CLASS_BYTES`] worth of magazines, and all
//! classes together at most [`DEPOT_BYTES`] (a byte budget reserved before a magazine is
//! filled); a flush that finds no empty magazine or no budget gives its blocks to the inner
//! allocator instead (the bounds that return memory).
//!
//! Every stack head is one 64-bit word: the low 32 bits are the top magazine's index + 1 (0:
//! empty), the upper 32 bits a tag that every successful push and pop increments, so a pop that
//! read a top and its link and then lost the race to a pop + push of the same magazine fails its
//! compare-exchange (ABA). Magazines are carved from an anonymous mapping on first need
//! (`fresh`), so only the pages of magazines ever used are resident, and are never unmapped
//! while the depot lives, so a stale read of a link is harmless. Each stack operation commits
//! with its one compare-exchange: after `fork`, a child finds both stacks consistent, and a
//! magazine that a thread absent in the child was holding is lost there (its blocks leak, none
//! is handed out twice).

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

use super::{BATCH, CLASSES, DEPOT_BYTES, DEPOT_CLASS_BYTES, NUM_CLASSES};

/// Words of one magazine of class `k`: the link, the count, then the pointers.
const MAG_WORDS: [usize; NUM_CLASSES] = {
    let mut w = [0; NUM_CLASSES];
    let mut k = 0;
    while k < NUM_CLASSES {
        w[k] = 2 + BATCH[k];
        k += 1;
    }
    w
};

/// Magazines of each class (at least one).
const MAGAZINES: [usize; NUM_CLASSES] = {
    let mut m = [0; NUM_CLASSES];
    let mut k = 0;
    while k < NUM_CLASSES {
        let n = DEPOT_CLASS_BYTES / CLASSES[k] / BATCH[k];
        m[k] = if n == 0 { 1 } else { n };
        k += 1;
    }
    m
};

/// Per class: the word offset of its first magazine in the mapping.
const AT: [usize; NUM_CLASSES] = {
    let mut off = [0; NUM_CLASSES];
    let (mut at, mut k) = (0, 0);
    while k < NUM_CLASSES {
        off[k] = at;
        at += MAGAZINES[k] * MAG_WORDS[k];
        k += 1;
    }
    off
};

/// Bytes of the mapping.
const MAP: usize = (AT[NUM_CLASSES - 1] + MAGAZINES[NUM_CLASSES - 1] * MAG_WORDS[NUM_CLASSES - 1]) * 8;

const _: () = {
    let mut k = 0;
    while k < NUM_CLASSES {
        assert!(MAGAZINES[k] < u32::MAX as usize);
        k += 1;
    }
};

/// The low half of a head: the top magazine's index + 1.
const TOP: u64 = 0xffff_ffff;
/// One increment of a head's tag.
const TAG: u64 = 1 << 32;

/// One class: its two stacks and counts.
struct Class {
    /// Full (non-empty) magazines.
    full: AtomicU64,
    /// Empty magazines.
    empty: AtomicU64,
    /// Magazines carved from the mapping so far (those at indices `0..fresh`, capped at
    /// `MAGAZINES[k]`).
    fresh: AtomicUsize,
    /// Blocks held: raised before a magazine is published and lowered after one is taken, so it
    /// is never below the truth; for statistics only.
    len: AtomicUsize,
}

/// See the [module](self) docs.
pub(super) struct Depot {
    /// The magazines (one anonymous mapping), or null before [`map`](Self::map).
    mem: AtomicPtr<AtomicUsize>,
    /// Bytes of blocks held or reserved, all classes: at most [`DEPOT_BYTES`].
    bytes: CachePadded<AtomicUsize>,
    classes: [CachePadded<Class>; NUM_CLASSES],
}

impl Depot {
    pub(super) const fn new() -> Self {
        Depot {
            mem: AtomicPtr::new(ptr::null_mut()),
            bytes: CachePadded::new(AtomicUsize::new(0)),
            classes: [const {
                CachePadded::new(Class {
                    full: AtomicU64::new(0),
                    empty: AtomicU64::new(0),
                    fresh: AtomicUsize::new(0),
                    len: AtomicUsize::new(0),
                })
            }; NUM_CLASSES],
        }
    }

    /// Make the mapping (nothing is allocated through the global allocator); false if `mmap`
    /// failed. Called once, by the thread that makes the caches, before any other method can run.
    pub(super) fn map(&self) -> bool {
        // SAFETY: a new private anonymous mapping; no existing memory is affected.
        let m = unsafe {
            libc::mmap(
                ptr::null_mut(),
                MAP,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if m == libc::MAP_FAILED {
            return false;
        }
        self.mem.store(m.cast(), Ordering::Release);
        true
    }

    /// Unmap the magazines (whatever they hold is forgotten).
    ///
    /// # Safety
    /// No thread uses the depot any more (the owner is being dropped).
    pub(super) unsafe fn unmap(&self) {
        let m = self.mem.swap(ptr::null_mut(), Ordering::Relaxed);
        if !m.is_null() {
            // SAFETY: the mapping made by `map`, no longer used (the caller's contract).
            unsafe { libc::munmap(m.cast(), MAP) };
        }
    }

    /// Magazine `i` of class `k` (its link, its count, then its pointers), or `None` before the
    /// mapping exists.
    #[inline(always)]
    fn magazine(&self, k: usize, i: usize) -> Option<&[AtomicUsize]> {
        let m = self.mem.load(Ordering::Acquire);
        if m.is_null() || i >= MAGAZINES[k] {
            return None;
        }
        // SAFETY: `i < MAGAZINES[k]`: the magazine's `MAG_WORDS[k]` words are inside the
        // mapping, which lives as long as `self` (only `unmap`, once no thread uses the depot,
        // removes it); aligned, and only ever accessed atomically.
        Some(unsafe { core::slice::from_raw_parts(m.add(AT[k] + i * MAG_WORDS[k]), MAG_WORDS[k]) })
    }

    /// Push magazine `i` of class `k` on `head`.
    fn push_on(&self, head: &AtomicU64, k: usize, i: usize) {
        let Some(mag) = self.magazine(k, i) else { return };
        let link = &mag[0];
        let mut h = head.load(Ordering::Relaxed);
        loop {
            link.store((h & TOP) as usize, Ordering::Relaxed);
            let new = (h & !TOP).wrapping_add(TAG) | (i as u64 + 1);
            // Release: the magazine's link, count and pointers are visible to its next popper.
            match head.compare_exchange_weak(h, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => h = now,
            }
        }
    }

    /// Pop a magazine of class `k` from `head`: its index.
    fn pop_from(&self, head: &AtomicU64, k: usize) -> Option<usize> {
        let mut h = head.load(Ordering::Acquire);
        loop {
            let top = (h & TOP) as usize;
            if top == 0 {
                return None;
            }
            // The link as pushed (Acquire above); if the magazine was popped and pushed again
            // meanwhile the tag moved and the exchange fails.
            let next = self.magazine(k, top - 1)?[0].load(Ordering::Relaxed) as u64;
            let new = (h & !TOP).wrapping_add(TAG) | next;
            match head.compare_exchange_weak(h, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some(top - 1),
                Err(now) => h = now,
            }
        }
    }

    /// An empty magazine of class `k` to fill, or `None` when the class is at its bound.
    fn take_empty(&self, k: usize) -> Option<usize> {
        let c = &self.classes[k];
        if let Some(i) = self.pop_from(&c.empty, k) {
            return Some(i);
        }
        let mut f = c.fresh.load(Ordering::Relaxed);
        while f < MAGAZINES[k] {
            match c.fresh.compare_exchange_weak(f, f + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(f),
                Err(now) => f = now,
            }
        }
        None
    }

    /// Move up to `src.len()` blocks of class `k` into the depot, the first ones, as many
    /// magazines as needed and free; how many it took (the rest are the caller's to free).
    pub(super) fn push(&self, k: usize, src: &[usize]) -> usize {
        let c = &self.classes[k];
        let mut done = 0;
        while done < src.len() {
            let m = (src.len() - done).min(BATCH[k]);
            if !self.reserve(m * CLASSES[k]) {
                break;
            }
            let Some((i, mag)) = self.take_empty(k).and_then(|i| Some((i, self.magazine(k, i)?))) else {
                self.bytes.fetch_sub(m * CLASSES[k], Ordering::Relaxed);
                break;
            };
            // Magazine `i` is ours alone until published below.
            for (w, &p) in mag[2..2 + m].iter().zip(&src[done..done + m]) {
                w.store(p, Ordering::Relaxed);
            }
            mag[1].store(m, Ordering::Relaxed);
            c.len.fetch_add(m, Ordering::Relaxed);
            self.push_on(&c.full, k, i);
            done += m;
        }
        done
    }

    /// Move the blocks of one magazine of class `k` to `dst` (at least [`BATCH`]`[k]` long);
    /// how many (0 when the class is empty).
    pub(super) fn pop(&self, k: usize, dst: &mut [usize]) -> usize {
        let c = &self.classes[k];
        debug_assert!(dst.len() >= BATCH[k]);
        if c.full.load(Ordering::Relaxed) & TOP == 0 {
            return 0;
        }
        let Some(i) = self.pop_from(&c.full, k) else { return 0 };
        let Some(mag) = self.magazine(k, i) else { return 0 };
        // Published with the magazine (its push's Release, our pop's Acquire); at most BATCH[k].
        let n = mag[1].load(Ordering::Relaxed);
        for (d, w) in dst[..n].iter_mut().zip(&mag[2..2 + n]) {
            *d = w.load(Ordering::Relaxed);
        }
        c.len.fetch_sub(n, Ordering::Relaxed);
        self.push_on(&c.empty, k, i);
        self.bytes.fetch_sub(n * CLASSES[k], Ordering::Relaxed);
        n
    }

    /// Reserve `b` bytes of the budget; false (nothing reserved) when it would pass
    /// [`DEPOT_BYTES`].
    fn reserve(&self, b: usize) -> bool {
        let mut cur = self.bytes.load(Ordering::Relaxed);
        loop {
            if cur + b > DEPOT_BYTES {
                return false;
            }
            match self.bytes.compare_exchange_weak(cur, cur + b, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Bytes held by all classes (reserved included).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Blocks of class `k` held (at least as many as are: see [`Class::len`]).
    pub(super) fn len(&self, k: usize) -> usize {
        self.classes[k].len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    /// One step of a thread moving tokens through the depot: with `give`, offer the last `give`
    /// of `mine` (at least one, at most all; the depot takes the first `took` of them and the
    /// rest stays ours), else take a magazine's worth into `mine`.
    fn step(d: &Depot, k: usize, mine: &mut Vec<usize>, buf: &mut [usize], give: Option<usize>) {
        match give {
            Some(m) if !mine.is_empty() => {
                let from = mine.len() - m.clamp(1, mine.len());
                let took = d.push(k, &mine[from..]);
                mine.drain(from..from + took);
            }
            _ => {
                let n = d.pop(k, buf);
                mine.extend_from_slice(&buf[..n]);
            }
        }
    }

    /// Tokens: thread (or handler) number in the upper half, a sequence number in the lower; never
    /// 0. A lost token is missing at the end, a duplicated one is seen twice.
    fn tokens(owner: usize, n: usize) -> Vec<usize> {
        (1..=n).map(|i| owner << 32 | i).collect()
    }

    /// Every token exactly once in `held`, the depot (drained here) and `extra`.
    fn assert_conserved(d: &Depot, k: usize, mut held: Vec<usize>, expected: &[usize]) {
        let mut buf = [0usize; 256];
        loop {
            let n = d.pop(k, &mut buf);
            if n == 0 {
                break;
            }
            held.extend_from_slice(&buf[..n]);
        }
        assert_eq!(d.len(k), 0, "the count returns to zero once drained");
        let mut seen = HashSet::new();
        for &t in &held {
            assert!(seen.insert(t), "token {t:#x} came out twice");
        }
        let want: HashSet<usize> = expected.iter().copied().collect();
        assert_eq!(seen.len(), held.len());
        assert_eq!(seen, want, "tokens lost or invented");
    }

    #[test]
    fn bound_and_order_single_thread() {
        let d = Depot::new();
        assert!(d.map());
        for k in [0, 3, NUM_CLASSES - 1] {
            let all = tokens(1, MAGAZINES[k] * BATCH[k] + 3 * BATCH[k] + 1);
            let took = d.push(k, &all);
            assert_eq!(took, MAGAZINES[k] * BATCH[k], "class {k}: exactly the bound");
            assert_eq!(d.len(k), took);
            // LIFO: the last magazine pushed comes out first, its blocks in order.
            let mut buf = [0usize; 256];
            let n = d.pop(k, &mut buf);
            assert_eq!(&buf[..n], &all[took - BATCH[k]..took]);
            // Put it back (partially: a short magazine), then everything is conserved.
            assert_eq!(d.push(k, &buf[..n - 1]), n - 1);
            let mut held = all[took..].to_vec();
            held.push(buf[n - 1]);
            assert_conserved(&d, k, held, &all);
        }
        assert_eq!(d.bytes(), 0);
        // The budget across classes: fill every class from the largest down until it is hit.
        let mut held = Vec::new();
        let mut all = Vec::new();
        for k in (0..NUM_CLASSES).rev() {
            let t = tokens(100 + k, MAGAZINES[k] * BATCH[k]);
            let took = d.push(k, &t);
            assert!(d.bytes() <= DEPOT_BYTES, "over the budget: {}", d.bytes());
            held.push((k, t[took..].to_vec()));
            all.push((k, t));
        }
        assert!(d.bytes() > DEPOT_BYTES - BATCH[0] * CLASSES[NUM_CLASSES - 1], "the budget was used: {}", d.bytes());
        assert!(held.iter().any(|(_, h)| !h.is_empty()), "the budget refused some");
        for ((k, h), (_, t)) in held.into_iter().zip(all) {
            assert_conserved(&d, k, h, &t);
        }
        assert_eq!(d.bytes(), 0);
        // SAFETY: nothing uses `d` any more.
        unsafe { d.unmap() };
    }

    #[test]
    fn many_threads_conserve_every_block() {
        static D: Depot = Depot::new();
        assert!(D.map());
        let threads = 8;
        let per = 3000;
        // Class 19 has few magazines (its bound is hit all the time), class 3 many.
        for k in [3, NUM_CLASSES - 1] {
            let held: Vec<Vec<usize>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|t| {
                        s.spawn(move || {
                            let mut mine = tokens(t + 1, per);
                            let mut buf = [0usize; 256];
                            let mut rng = (t as u64 + 1) * 0x9e37_79b9_7f4a_7c15;
                            for _ in 0..50_000 {
                                rng ^= rng << 13;
                                rng ^= rng >> 7;
                                rng ^= rng << 17;
                                let give = rng.is_multiple_of(2).then(|| (rng as usize >> 8) % (2 * BATCH[k] + 2) + 1);
                                step(&D, k, &mut mine, &mut buf, give);
                            }
                            mine
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let expected: Vec<usize> = (0..threads).flat_map(|t| tokens(t + 1, per)).collect();
            assert_conserved(&D, k, held.concat(), &expected);
        }
    }

    /// The depot used by the signal test and its handler.
    static SIG: Depot = Depot::new();
    /// Tokens the handler could not put back (the bound was hit meanwhile): never lost.
    static STASH: [AtomicUsize; 1024] = [const { AtomicUsize::new(0) }; 1024];
    static HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);
    static STASH_FULL: AtomicBool = AtomicBool::new(false);
    /// Whether the handler is armed (the test is not yet counting the tokens).
    static ARMED: testkit::signal::Armed = testkit::signal::Armed::new();
    const SIG_CLASS: usize = 5;

    extern "C" fn handler(_: libc::c_int) {
        // (The test's `disarm` waits for the handler's moves of tokens.)
        ARMED.run(|| {
            // Interrupts its thread anywhere, possibly between the load and the
            // compare-exchange of a pop or push of this very class: take a magazine out and put
            // its blocks back.
            let mut buf = [0usize; MAX];
            let n = SIG.pop(SIG_CLASS, &mut buf);
            let took = SIG.push(SIG_CLASS, &buf[..n]);
            for &t in &buf[took..n] {
                if !STASH.iter().any(|s| s.compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed).is_ok()) {
                    STASH_FULL.store(true, Ordering::Relaxed);
                }
            }
            HANDLER_RUNS.fetch_add(1, Ordering::Relaxed);
        });
    }
    const MAX: usize = 64;

    #[test]
    fn signal_handlers_nested_in_depot_operations_conserve_every_block() {
        assert!(BATCH[SIG_CLASS] <= MAX);
        assert!(SIG.map());
        // A handler that only uses SIG, STASH and atomic counters (lock-free, no allocation);
        // it stays installed (disarmed) after the test. Each worker aims a timer at itself, so
        // that the handler nests in its depot operations.
        testkit::signal::on_alarm(handler);
        ARMED.arm();
        let threads = 4;
        let per = 2000;
        let start = std::time::Instant::now();
        let held: Vec<Vec<usize>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        let timer = testkit::signal::ThreadTimer::every(std::time::Duration::from_micros(50));
                        let mut mine = tokens(t + 1, per);
                        let mut buf = [0usize; 256];
                        let mut i = 0usize;
                        // At least 300 ms, and until the handlers have run often enough (on a
                        // loaded machine a thread that rarely runs sees few signals); the minute
                        // is only a hang detector (the count is asserted below).
                        while (start.elapsed() < std::time::Duration::from_millis(300)
                            || HANDLER_RUNS.load(Ordering::Relaxed) <= 50)
                            && start.elapsed() < std::time::Duration::from_secs(60)
                        {
                            i += 1;
                            let give = i.is_multiple_of(2).then(|| i % (2 * BATCH[SIG_CLASS]));
                            step(&SIG, SIG_CLASS, &mut mine, &mut buf, give);
                        }
                        drop(timer);
                        mine
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Disarm, and wait for any handler still moving tokens before counting them. (The
        // timers signalled only the workers, which are done; the wait keeps the count exact for
        // a handler on any other thread too, e.g. run by a SIGALRM sent to the whole process.)
        ARMED.disarm();
        assert!(!STASH_FULL.load(Ordering::Relaxed));
        assert!(HANDLER_RUNS.load(Ordering::Relaxed) > 50, "{} handler runs", HANDLER_RUNS.load(Ordering::Relaxed));
        let mut all = held.concat();
        all.extend(STASH.iter().map(|s| s.swap(0, Ordering::Relaxed)).filter(|&t| t != 0));
        let expected: Vec<usize> = (0..threads).flat_map(|t| tokens(t + 1, per)).collect();
        assert_conserved(&SIG, SIG_CLASS, all, &expected);
    }
}
