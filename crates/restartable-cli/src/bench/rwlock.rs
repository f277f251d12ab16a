//! The read-mostly suite (`bench --rwlock`): `restartable::RwLock<T>` against the usual
//! reader-writer locks and an RCU-style pointer, each doing the same operation and checking
//! what it read and wrote.
//!
//! One operation is **a read lock, a look at two fields, and the unlock** (`ArcSwap`: a `load`
//! and a look through the guard), except that in the `0.1%` and `1%` rows every 1000th / 100th
//! operation of each thread is **a write lock, +1 and +2 to the two fields, and the unlock**
//! (`ArcSwap`: an `rcu` that stores a new `Arc`). Writers keep `b == 2a`; every read checks it,
//! and at the end `a` must equal the writes performed: a torn read or a lost write is an error,
//! not a fast number. The rows:
//!
//! - `rwlock-*`: `restartable::RwLock<T>` (per-CPU reader counts: one rseq section to lock and
//!   one to unlock; a writer fences every CPU and waits for the readers to drain);
//! - `std-rwlock-*`: `std::sync::RwLock<T>` (one shared lock word);
//! - `parking-lot-rwlock-*`: `parking_lot::RwLock<T>` (one shared lock word);
//! - `sharded-lock-*`: `crossbeam_utils::sync::ShardedLock<T>` (a lock per shard, picked by
//!   thread: an atomic read-modify-write on the reader's own shard);
//! - `arc-swap-*`: `arc_swap::ArcSwap<T>` (`load`: a thread-local debt slot and an atomic swap
//!   or two; the RCU-style alternative, whose writers copy);
//! - `rwlock-degraded`: `RwLock<T>` read-only in a child process forced into degraded mode (every
//!   reader count update a `lock`-prefixed atomic on the current CPU's count).
//!
//! After the table, the latency of one uncontended write lock + unlock (a single thread, no
//! reader), median and p99 of single timed calls, with the timer's own cost as a reference row.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{PoisonError, RwLock as StdRwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_utils::sync::ShardedLock;
use restartable::RwLock;

use super::report::{Latencies, Latency, Library, Sample, Table};
use super::rounds::Schedule;
use super::suite::{Implementation, run_threads, spin};

/// Measure the suite as `schedule` says, then the uncontended write latency.
pub fn table(schedule: &Schedule) -> Result<Table, String> {
    let mut table = schedule.run::<Impl>()?;
    table.latencies = Some(write_latencies(WRITE_CALLS)?);
    table.library = Library::now();
    Ok(table)
}

/// The locks compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// `restartable::RwLock<T>`.
    Restartable,
    /// `std::sync::RwLock<T>`.
    Std,
    /// `parking_lot::RwLock<T>`.
    ParkingLot,
    /// `crossbeam_utils::sync::ShardedLock<T>`.
    Sharded,
    /// `arc_swap::ArcSwap<T>`.
    ArcSwap,
}

/// One row: a lock, and how many operations in a thousand are writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Impl {
    /// The lock.
    pub lock: Lock,
    /// Writes per thousand operations: 0, 1 or 10.
    pub per_mille: u64,
    /// Measured in a child process with degraded mode forced.
    pub degraded: bool,
    key: &'static str,
    name: &'static str,
}

const fn row(lock: Lock, per_mille: u64, key: &'static str, name: &'static str) -> Impl {
    Impl { lock, per_mille, degraded: false, key, name }
}

impl Impl {
    /// Every implementation, in table order.
    pub const ALL: [Impl; 16] = [
        row(Lock::Restartable, 0, "rwlock-0", "restartable RwLock, 0% writes"),
        row(Lock::Std, 0, "std-rwlock-0", "std RwLock, 0% writes"),
        row(Lock::ParkingLot, 0, "parking-lot-rwlock-0", "parking_lot RwLock, 0% writes"),
        row(Lock::Sharded, 0, "sharded-lock-0", "ShardedLock, 0% writes"),
        row(Lock::ArcSwap, 0, "arc-swap-0", "ArcSwap load, 0% writes"),
        row(Lock::Restartable, 1, "rwlock-0.1", "restartable RwLock, 0.1% writes"),
        row(Lock::Std, 1, "std-rwlock-0.1", "std RwLock, 0.1% writes"),
        row(Lock::ParkingLot, 1, "parking-lot-rwlock-0.1", "parking_lot RwLock, 0.1% writes"),
        row(Lock::Sharded, 1, "sharded-lock-0.1", "ShardedLock, 0.1% writes"),
        row(Lock::ArcSwap, 1, "arc-swap-0.1", "ArcSwap load, 0.1% writes (rcu)"),
        row(Lock::Restartable, 10, "rwlock-1", "restartable RwLock, 1% writes"),
        row(Lock::Std, 10, "std-rwlock-1", "std RwLock, 1% writes"),
        row(Lock::ParkingLot, 10, "parking-lot-rwlock-1", "parking_lot RwLock, 1% writes"),
        row(Lock::Sharded, 10, "sharded-lock-1", "ShardedLock, 1% writes"),
        row(Lock::ArcSwap, 10, "arc-swap-1", "ArcSwap load, 1% writes (rcu)"),
        Impl::DEGRADED,
    ];

    /// `RwLock` reads in degraded mode (a child process).
    pub const DEGRADED: Impl = Impl {
        lock: Lock::Restartable,
        per_mille: 0,
        degraded: true,
        key: "rwlock-degraded",
        name: "restartable RwLock, 0%, degraded mode",
    };
}

impl Implementation for Impl {
    const SUITE: &'static str = "rwlock";
    const OP: &'static str =
        "read lock, look at two fields, unlock (in the 0.1% / 1% rows every 1000th / 100th op of a thread writes them)";

    fn all() -> &'static [Impl] {
        &Impl::ALL
    }

    fn key(self) -> &'static str {
        self.key
    }

    fn name(self) -> &'static str {
        self.name
    }

    fn in_degraded_child(self) -> bool {
        self.degraded
    }

    fn measure(self, threads: usize, duration: Duration) -> Result<Sample, String> {
        if self.degraded && restartable::mode().is_fast() {
            return Err(format!(
                "{} must run in degraded mode (RESTARTABLE_FORCE_DEGRADED=1), but this process is in mode: {}",
                self.key,
                restartable::mode()
            ));
        }
        let every = (self.per_mille != 0).then(|| 1000 / self.per_mille);
        match self.lock {
            Lock::Restartable => read_mostly(RwLock::new(Pair::default()), threads, duration, every),
            Lock::Std => read_mostly(StdRwLock::new(Pair::default()), threads, duration, every),
            Lock::ParkingLot => read_mostly(parking_lot::RwLock::new(Pair::default()), threads, duration, every),
            Lock::Sharded => read_mostly(ShardedLock::new(Pair::default()), threads, duration, every),
            Lock::ArcSwap => read_mostly(ArcSwap::from_pointee(Pair::default()), threads, duration, every),
        }
        .map_err(|e| format!("{}: {e}", self.name))
    }
}

/// The protected value: writers keep `b == 2 * a`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    a: u64,
    b: u64,
}

impl Pair {
    /// The write.
    #[inline(always)]
    fn bump(&mut self) {
        self.a += 1;
        self.b += 2;
    }

    /// Whether a reader sees it whole.
    #[inline(always)]
    fn whole(&self) -> bool {
        black_box(self.b) == 2 * black_box(self.a)
    }
}

/// A reader-writer lock (or an RCU pointer) of a [`Pair`].
pub trait ReadMostly: Sync {
    /// Read-lock, report whether the pair was whole, unlock.
    fn read_whole(&self) -> bool;
    /// Write-lock, [bump](Pair::bump), unlock.
    fn write(&self);
    /// The pair, once the threads have ended.
    fn value(&mut self) -> Pair;
}

impl ReadMostly for RwLock<Pair> {
    #[inline(always)]
    fn read_whole(&self) -> bool {
        self.read().whole()
    }
    #[inline(always)]
    fn write(&self) {
        RwLock::write(self).bump();
    }
    fn value(&mut self) -> Pair {
        *self.get_mut()
    }
}

impl ReadMostly for StdRwLock<Pair> {
    #[inline(always)]
    fn read_whole(&self) -> bool {
        self.read().unwrap_or_else(PoisonError::into_inner).whole()
    }
    #[inline(always)]
    fn write(&self) {
        StdRwLock::write(self).unwrap_or_else(PoisonError::into_inner).bump();
    }
    fn value(&mut self) -> Pair {
        *self.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReadMostly for parking_lot::RwLock<Pair> {
    #[inline(always)]
    fn read_whole(&self) -> bool {
        self.read().whole()
    }
    #[inline(always)]
    fn write(&self) {
        parking_lot::RwLock::write(self).bump();
    }
    fn value(&mut self) -> Pair {
        *self.get_mut()
    }
}

impl ReadMostly for ShardedLock<Pair> {
    #[inline(always)]
    fn read_whole(&self) -> bool {
        self.read().unwrap_or_else(PoisonError::into_inner).whole()
    }
    #[inline(always)]
    fn write(&self) {
        ShardedLock::write(self).unwrap_or_else(PoisonError::into_inner).bump();
    }
    fn value(&mut self) -> Pair {
        *self.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReadMostly for ArcSwap<Pair> {
    #[inline(always)]
    fn read_whole(&self) -> bool {
        self.load().whole()
    }
    #[inline(always)]
    fn write(&self) {
        self.rcu(|p| {
            let mut n = **p;
            n.bump();
            n
        });
    }
    fn value(&mut self) -> Pair {
        **self.load()
    }
}

/// Each thread runs operations (a write every `every`-th, staggered between threads, else a
/// read); every read must see the pair whole, and the pair must count every write once.
pub fn read_mostly<L: ReadMostly>(
    mut lock: L,
    threads: usize,
    duration: Duration,
    every: Option<u64>,
) -> Result<Sample, String> {
    let (writes, torn, next) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let every = every.unwrap_or(u64::MAX).max(1);
    let s = run_threads(threads, duration, |stop| {
        // Threads write at different points of their count (not all in the same instant). A
        // countdown, not a division per operation (a `div` would cost as much as a read).
        let me = next.fetch_add(1, Relaxed);
        let mut left = every - (me * (every / threads.max(1) as u64)) % every;
        let (mut w, mut t) = (0u64, 0u64);
        let n = spin(stop, || {
            left -= 1;
            if left == 0 {
                left = every;
                lock.write();
                w += 1;
            } else if !lock.read_whole() {
                t += 1;
            }
        });
        writes.fetch_add(w, Relaxed);
        torn.fetch_add(t, Relaxed);
        n
    });
    let (writes, torn) = (writes.load(Relaxed), torn.load(Relaxed));
    if torn != 0 {
        return Err(format!("{torn} reads saw b != 2a (a reader beside a writer)"));
    }
    let v = lock.value();
    if v != (Pair { a: writes, b: 2 * writes }) {
        return Err(format!("{writes} writes, but the pair says a = {}, b = {} (a lost or doubled write)", v.a, v.b));
    }
    Ok(s)
}

/// Timed write lock + unlock calls per implementation (after a warm-up of as many).
pub const WRITE_CALLS: usize = 2000;

/// The latency of one uncontended write lock + unlock of each lock (no reader, one thread: the
/// calling one), `calls` single timed calls each, and of the timer alone.
pub fn write_latencies(calls: usize) -> Result<Latencies, String> {
    let mut rows = vec![
        ("restartable RwLock::write", "rwlock", timed(calls, &RwLock::new(Pair::default()))?),
        ("std RwLock::write", "std-rwlock", timed(calls, &StdRwLock::new(Pair::default()))?),
        ("parking_lot RwLock::write", "parking-lot-rwlock", timed(calls, &parking_lot::RwLock::new(Pair::default()))?),
        ("ShardedLock::write", "sharded-lock", timed(calls, &ShardedLock::new(Pair::default()))?),
        ("ArcSwap::rcu", "arc-swap", timed(calls, &ArcSwap::from_pointee(Pair::default()))?),
    ];
    let timer: Vec<(u64, u64)> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            (u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX), 1)
        })
        .collect();
    rows.push(("ref: the timer alone", "timer", Latency::of(&timer)));
    Ok(Latencies { title: "uncontended write lock + unlock (one thread, no reader; single timed calls)".into(), rows })
}

/// `calls` timed writes of `lock` (after as many untimed), checked.
fn timed<L: ReadMostly>(calls: usize, lock: &L) -> Result<Latency, String> {
    // Warm up: the lock's first use (per-CPU counts, the membarrier registration), caches.
    for _ in 0..calls {
        lock.write();
        if !lock.read_whole() {
            return Err("a read after a write saw b != 2a".into());
        }
    }
    let ns: Vec<(u64, u64)> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            lock.write();
            (u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX), 1)
        })
        .collect();
    if !lock.read_whole() {
        return Err("a read after the writes saw b != 2a".into());
    }
    Ok(Latency::of(&ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::suite::BATCH;

    #[test]
    fn every_impl_checks_its_reads_and_writes() {
        for i in Impl::ALL.iter().filter(|i| !i.degraded) {
            for threads in [1, 3] {
                let s = i.measure(threads, Duration::from_millis(5)).unwrap();
                assert_eq!(s.threads, threads);
                assert!(s.ops >= BATCH * threads as u64, "{i:?}: {s:?}");
            }
        }
        assert!(Impl::DEGRADED.measure(1, Duration::from_millis(1)).is_err() || !restartable::mode().is_fast());
    }

    #[test]
    fn unique_keys() {
        let mut keys: Vec<_> = Impl::ALL.iter().map(|i| i.key()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), Impl::ALL.len());
    }

    /// A "lock" that lets a reader see a half-written pair, and one that loses writes.
    #[test]
    fn checks_catch_torn_reads_and_lost_writes() {
        struct Torn(std::sync::Mutex<Pair>);
        impl ReadMostly for Torn {
            fn read_whole(&self) -> bool {
                let p = *self.0.lock().unwrap();
                Pair { a: p.a + 1, ..p }.whole()
            }
            fn write(&self) {
                self.0.lock().unwrap().bump();
            }
            fn value(&mut self) -> Pair {
                *self.0.get_mut().unwrap()
            }
        }
        let e = read_mostly(Torn(Default::default()), 2, Duration::from_millis(2), Some(10)).unwrap_err();
        assert!(e.contains("b != 2a"), "{e}");
        struct Lossy(std::sync::Mutex<Pair>);
        impl ReadMostly for Lossy {
            fn read_whole(&self) -> bool {
                self.0.lock().unwrap().whole()
            }
            fn write(&self) {}
            fn value(&mut self) -> Pair {
                *self.0.get_mut().unwrap()
            }
        }
        let e = read_mostly(Lossy(Default::default()), 2, Duration::from_millis(2), Some(10)).unwrap_err();
        assert!(e.contains("lost or doubled"), "{e}");
    }

    #[test]
    fn write_latencies_are_measured() {
        let l = write_latencies(50).unwrap();
        assert_eq!(l.rows.len(), 6);
        for (name, _, lat) in &l.rows {
            assert_eq!(lat.samples, 50, "{name}");
            assert!(lat.p99_us >= lat.median_us, "{name}");
        }
    }
}
