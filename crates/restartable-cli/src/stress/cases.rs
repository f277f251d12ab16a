//! The seven stress tests. Each runs the workers of a [`Config`] on one collection while the
//! remote thread drains, takes or locks other CPUs' data through the guard, and then checks
//! conservation exactly:
//!
//! - `counter`: everything added == everything taken remotely (`take_cpu`) + what is left;
//! - `spinlock`: per-CPU pairs of plain (non-atomic) counters updated under the lock; every
//!   remote look sees `b == 2a`, and the totals moved out + left == the lock acquisitions;
//! - `stack`, `buffer`, `memcpy`: the multiset of items pushed == popped + drained + left
//!   (+ given back when a buffer is full): every item exactly once, none unknown; `memcpy`
//!   items also carry a checksum in every word, so a torn copy is caught;
//! - `rwlock`: one `RwLock` over a pair that writers keep at `b == 2a` (with a gap between the
//!   two stores); readers check it twice, with the periodic disturbances (sleep, signals,
//!   yield) landing while they hold the lock half of the time; the remote thread writes in a
//!   loop, workers write once in 64 operations, the `--signal-ops` handler tries both locks. A
//!   probe of who is inside catches a reader beside a writer; the final data must count every
//!   write exactly once, and a final `try_write` must find the readers' sum back at zero;
//! - `remote`: per CPU, a pointer selects the active one of two copies of an array; workers add
//!   through it (`load_add_load_load_add_store`, the slow path an [`OpVec`] under the stop);
//!   the remote thread swaps the copies with an op vector (or under a `CpuStop` it holds),
//!   then checks that the now-inactive copy never changes while it sums and resets it, and
//!   drains the active copy with an op vector (memcpy out + and 0). Totals must match.
//!
//! # Adding a test
//!
//! A variant of [`Test`] (its doc comment is its line in `stress --help`, its kebab-case name
//! the value of `--test`), its name in [`Test::name`], and one function here that takes the
//! [`Config`], runs [`drive`] and returns what it [`Found`], called from [`run`]. `--test all`,
//! the matrix, the tour and the reports pick it up from [`Test::all`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

use restartable::guard;
use restartable::ops::{self, Index, Outcome};
use restartable::opv::OpVec;
use restartable::retry::{self, Path};
use restartable::{Buffer, Counter, MemcpyBuffer, PerCpu, RwLock, SpinLock, Stack};

use clap::ValueEnum;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use super::Config;
use super::disturbance::{Hooks, with_hooks};
use super::harness::{Pacer, drive};

/// One stress test: the value of `--test` (which also takes `all`: see [`selection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Test {
    /// Counter: add on the current CPU, `take_cpu` remotely; totals must match.
    Counter,
    /// SpinLock: plain counters under per-CPU locks, locked remotely too.
    Spinlock,
    /// Stack: push/pop unique items, single and in batches, drain remotely; every item exactly once.
    Stack,
    /// Buffer: push/pop boxed items, single and in batches, in small per-CPU buffers (full ones give items back).
    Buffer,
    /// MemcpyBuffer: 128-byte items with a checksum in every word, single and in batches (torn copies are caught).
    Memcpy,
    /// Two copies of a per-CPU array behind a pointer, swapped and drained with op vectors.
    Remote,
    /// RwLock: readers check a two-field invariant that writers keep, holding the lock across
    /// disturbances; every write counted once.
    Rwlock,
}

impl Test {
    /// Every test, in the order `--test all` runs them (the order of the variants).
    pub fn all() -> &'static [Test] {
        Test::value_variants()
    }

    /// The name `--test` takes.
    pub fn name(self) -> &'static str {
        match self {
            Test::Counter => "counter",
            Test::Spinlock => "spinlock",
            Test::Stack => "stack",
            Test::Buffer => "buffer",
            Test::Memcpy => "memcpy",
            Test::Remote => "remote",
            Test::Rwlock => "rwlock",
        }
    }
}

/// The parser of `--test`: a test's name, or `all` (`None`: every test).
pub fn selection() -> impl TypedValueParser<Value = Option<Test>> {
    let tests = Test::all().iter().filter_map(ValueEnum::to_possible_value);
    let all = PossibleValue::new("all").help("Every test above, one after the other");
    PossibleValuesParser::new(tests.chain([all])).map(|s| Test::from_str(&s, false).ok())
}

/// What a test found.
#[derive(Debug, Default)]
pub struct Found {
    /// Worker operations.
    pub ops: u64,
    /// Rounds of the remote thread (each visits every CPU index once).
    pub remote_rounds: u64,
    /// Invariant checks that held.
    pub checks_passed: u64,
    /// Broken invariants (at most [`MAX_FAILURES`] messages; `failed` counts them all).
    pub failures: Vec<String>,
    /// Number of broken invariants.
    pub failed: u64,
}

/// Failure messages kept per test.
pub const MAX_FAILURES: usize = 10;

impl Found {
    /// What a run itself found: its counts, and what the disturbances' threads checked.
    fn of<R>(run: &super::harness::Run<R>) -> Found {
        let mut f = Found { ops: run.ops, remote_rounds: run.remote_rounds, ..Found::default() };
        f.checks_passed = run.checks_passed;
        for msg in &run.failures {
            f.fail(msg.clone());
        }
        f
    }

    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if ok {
            self.checks_passed += 1;
        } else {
            self.fail(msg());
        }
    }

    fn fail(&mut self, msg: String) {
        self.failed += 1;
        if self.failures.len() < MAX_FAILURES {
            self.failures.push(msg);
        }
    }

    fn merge(&mut self, other: Found) {
        self.checks_passed += other.checks_passed;
        self.failed += other.failed;
        for m in other.failures {
            if self.failures.len() < MAX_FAILURES {
                self.failures.push(m);
            }
        }
    }
}

/// Run `test` as `cfg` says, with index mode `I`. `cfg.sabotage` makes the counter test use
/// the library's deliberately broken op (inject builds only); the other tests ignore it.
pub fn run<I: Index>(test: Test, cfg: &Config) -> std::io::Result<Found> {
    match test {
        Test::Counter if cfg.sabotage => broken_counter(cfg),
        Test::Counter => counter::<I>(cfg),
        Test::Spinlock => spinlock::<I>(cfg),
        Test::Stack => stack::<I>(cfg),
        Test::Buffer => buffer::<I>(cfg),
        Test::Memcpy => memcpy::<I>(cfg),
        Test::Remote => remote::<I>(cfg),
        Test::Rwlock => rwlock::<I>(cfg),
    }
}

fn limit() -> usize {
    guard::limit()
}

// ---------------------------------------------------------------------------------------------
// counter

fn counter<I: Index>(cfg: &Config) -> std::io::Result<Found> {
    let c = Counter::<I>::default();
    let mut taken = 0u64;
    let mut remote = Found::default();
    // --signal-ops: the handler adds (and sometimes sums and resets), and counts what it did.
    let (handler_added, handler_taken) = (AtomicU64::new(0), AtomicU64::new(0));
    let in_handler = || {
        c.add(1);
        if handler_added.fetch_add(1, Relaxed) % 16 == 15 {
            handler_taken.fetch_add(c.take(), Relaxed);
        }
    };
    // --fork: in the child, sum-and-reset (stopping every CPU) around a known number of adds.
    let in_child = || {
        let _ = c.try_take().map_err(|e| e.to_string())?;
        (0..1000).for_each(|_| c.add(1));
        match c.try_take() {
            Ok(1000) => Ok(()),
            other => Err(format!("counter in a forked child: 1000 adds, took {other:?}")),
        }
    };
    let hooks = Hooks { in_handler: Some(&in_handler), in_child: Some(&in_child) };
    let run = with_hooks(hooks, || {
        drive(
            cfg,
            |_, p: &mut Pacer<'_>| {
                let mut added = 0u64;
                while p.next() {
                    let n = p.k() % 7 + 1;
                    c.add(n);
                    added += n;
                }
                added
            },
            || {
                for cpu in 0..limit() {
                    match c.take_cpu(cpu) {
                        Ok(v) => taken = taken.wrapping_add(v),
                        Err(e) => remote.fail(format!("take_cpu({cpu}) failed: {e}")),
                    }
                }
            },
        )
    })?;
    let mut f = Found::of(&run);
    f.merge(remote);
    let added: u64 = run.results.iter().sum::<u64>() + handler_added.load(Relaxed);
    let taken = taken.wrapping_add(handler_taken.load(Relaxed));
    match c.try_take() {
        Ok(left) => {
            let got = taken.wrapping_add(left);
            f.check(got == added, || {
                format!("counter: added {added}, but taken remotely {taken} + left {left} = {got}")
            });
            f.check(c.sum() == 0, || format!("counter: {} left after the final take", c.sum()));
        }
        Err(e) => f.fail(format!("the final take failed: {e}")),
    }
    Ok(f)
}

/// The counter test on raw per-CPU slots with a deliberately broken op that commits twice:
/// it must fail (this is how the tests show that the harness can fail).
#[cfg(feature = "inject")]
fn broken_counter(cfg: &Config) -> std::io::Result<Found> {
    use restartable::ops::Cpu;
    let slots: PerCpu<AtomicUsize, Cpu> = PerCpu::new(|_| AtomicUsize::new(0));
    let mut taken = 0u64;
    let mut remote = Found::default();
    let run = drive(
        cfg,
        |_, p: &mut Pacer<'_>| {
            let mut added = 0u64;
            while p.next() {
                let n = p.k() % 7 + 1;
                let _ = retry::run::<Cpu, ()>(
                    |i| match slots.get(i) {
                        // SAFETY: slot `i` is written only by ops indexed by `i` and under guard
                        // `i` (the broken op's second add is the bug being demonstrated).
                        Some(s) => unsafe {
                            restartable::ops::sabotage::load_add_store_commits_twice(s, n as usize, i)
                        },
                        None => Outcome::Stopped,
                    },
                    |stop| {
                        if let Some(s) = slots.get(stop.index()) {
                            s.store(s.load(Relaxed).wrapping_add(n as usize), Relaxed);
                        }
                    },
                );
                added += n;
            }
            added
        },
        || {
            for cpu in 0..limit() {
                match guard::stop::<Cpu>(cpu) {
                    Ok(_stop) => taken = taken.wrapping_add(slots.get(cpu).map_or(0, |s| s.swap(0, Relaxed)) as u64),
                    Err(e) => remote.fail(format!("stop({cpu}) failed: {e}")),
                }
            }
        },
    )?;
    let mut f = Found::of(&run);
    f.merge(remote);
    let added: u64 = run.results.iter().sum();
    let left: u64 = slots.iter().map(|(_, s)| s.load(Relaxed) as u64).fold(0, u64::wrapping_add);
    let got = taken.wrapping_add(left);
    f.check(got == added, || {
        format!("counter (sabotaged op): added {added}, but taken remotely {taken} + left {left} = {got}")
    });
    Ok(f)
}

#[cfg(not(feature = "inject"))]
fn broken_counter(_: &Config) -> std::io::Result<Found> {
    Err(std::io::Error::other("--sabotage needs the inject feature"))
}

// ---------------------------------------------------------------------------------------------
// spinlock

/// Plain counters guarded by the lock: `b` is always `2 * a` when the lock is free.
#[derive(Debug, Default)]
struct Pair {
    a: u64,
    b: u64,
}

fn spinlock<I: Index>(cfg: &Config) -> std::io::Result<Found> {
    let lock = SpinLock::<Pair, I>::default();
    let (mut moved_a, mut moved_b) = (0u64, 0u64);
    let mut remote = Found::default();
    let run = drive(
        cfg,
        |_, p: &mut Pacer<'_>| {
            while p.next() {
                let mut g = lock.lock();
                // Two read-modify-writes with a gap: lost updates show if the lock is broken.
                let a = g.a;
                g.a = std::hint::black_box(a) + 1;
                let b = g.b;
                g.b = std::hint::black_box(b) + 2;
            }
        },
        || {
            for cpu in 0..limit() {
                match lock.try_lock_cpu(cpu) {
                    Ok(mut g) => {
                        let (a, b) = (g.a, g.b);
                        remote.check(b == 2 * a, || format!("spinlock CPU {cpu}: b = {b} but a = {a} (b != 2a)"));
                        moved_a += a;
                        moved_b += b;
                        g.a = 0;
                        g.b = 0;
                    }
                    Err(e) => remote.fail(format!("lock_cpu({cpu}) failed: {e}")),
                }
            }
        },
    )?;
    let mut f = Found::of(&run);
    f.merge(remote);
    let (mut left_a, mut left_b) = (0u64, 0u64);
    for cpu in 0..limit() {
        match lock.try_lock_cpu(cpu) {
            Ok(g) => {
                left_a += g.a;
                left_b += g.b;
            }
            Err(e) => f.fail(format!("final lock_cpu({cpu}) failed: {e}")),
        }
    }
    let ops = run.ops;
    f.check(moved_a + left_a == ops, || {
        format!("spinlock: {ops} increments of a, but moved {moved_a} + left {left_a} = {}", moved_a + left_a)
    });
    f.check(moved_b + left_b == 2 * ops, || {
        format!("spinlock: {} added to b, but moved {moved_b} + left {left_b} = {}", 2 * ops, moved_b + left_b)
    });
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// rwlock

/// Who is inside an `RwLock`, as its holders say (`SeqCst`: of a reader and a writer inside at
/// once, at least one sees the other), and what they found.
#[derive(Default)]
struct Inside {
    readers: AtomicUsize,
    writers: AtomicUsize,
    checks: AtomicU64,
    failed: AtomicU64,
    first: std::sync::Mutex<Vec<String>>,
}

impl Inside {
    fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if ok {
            self.checks.fetch_add(1, Relaxed);
            return;
        }
        self.failed.fetch_add(1, Relaxed);
        let mut v = self.first.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if v.len() < MAX_FAILURES {
            v.push(msg());
        }
    }

    /// A writer (holding the write lock) updates the pair: no other writer, no reader inside.
    fn write(&self, p: &mut Pair) {
        let w = self.writers.fetch_add(1, SeqCst);
        self.check(w == 0, || format!("rwlock: {w} other writers inside with a writer"));
        let r = self.readers.load(SeqCst);
        self.check(r == 0, || format!("rwlock: a writer found {r} readers inside"));
        write_pair(p);
        self.writers.fetch_sub(1, SeqCst);
    }

    /// A reader (holding a read lock) enters: no writer inside, and the pair is whole.
    fn enter(&self, p: &Pair) {
        self.readers.fetch_add(1, SeqCst);
        let w = self.writers.load(SeqCst);
        self.check(w == 0, || format!("rwlock: a reader found {w} writers inside"));
        self.look(p);
    }

    /// A reader looks at the pair again and leaves.
    fn leave(&self, p: &Pair) {
        self.look(p);
        self.readers.fetch_sub(1, SeqCst);
    }

    fn look(&self, p: &Pair) {
        let (a, b) = read_pair(p);
        self.check(b == 2 * a, || format!("rwlock: a reader saw a = {a}, b = {b} (b != 2a: a writer was inside)"));
    }
}

/// `a += 1`, a gap, `b += 2` (volatile: the torn state really is in memory during the gap).
fn write_pair(p: &mut Pair) {
    // SAFETY: plain accesses to the fields of a pair the caller holds exclusively.
    unsafe {
        std::ptr::write_volatile(&mut p.a, std::ptr::read_volatile(&p.a) + 1);
        for _ in 0..std::hint::black_box(30) {
            std::hint::spin_loop();
        }
        std::ptr::write_volatile(&mut p.b, std::ptr::read_volatile(&p.b) + 2);
    }
}

/// `(a, b)` with a gap between the two loads (volatile: real loads).
fn read_pair(p: &Pair) -> (u64, u64) {
    // SAFETY: plain reads of the fields of a pair the caller may read.
    let a = unsafe { std::ptr::read_volatile(&p.a) };
    for _ in 0..std::hint::black_box(10) {
        std::hint::spin_loop();
    }
    // SAFETY: as above.
    (a, unsafe { std::ptr::read_volatile(&p.b) })
}

fn rwlock<I: Index>(cfg: &Config) -> std::io::Result<Found> {
    let lock = RwLock::<Pair, I>::default();
    let inside = Inside::default();
    let mut remote_writes = 0u64;
    // --signal-ops: the handler tries a read (and checks it) and, every fourth time, a write
    // (counted): both never wait, whatever its thread holds.
    let (handled, handler_writes) = (AtomicU64::new(0), AtomicU64::new(0));
    let in_handler = || {
        if let Some(g) = lock.try_read() {
            inside.enter(&g);
            inside.leave(&g);
        }
        if handled.fetch_add(1, Relaxed) % 4 == 0
            && let Some(mut g) = lock.try_write()
        {
            inside.write(&mut g);
            handler_writes.fetch_add(1, Relaxed);
        }
    };
    // --fork: in the child only the forking thread exists, and the locks other threads held stay
    // held (their counts, a writer's bit): the child only tries, and checks what it reads.
    let in_child = || match lock.try_read() {
        Some(g) => {
            let (a, b) = read_pair(&g);
            if b == 2 * a { Ok(()) } else { Err(format!("rwlock in a forked child: a = {a}, b = {b}")) }
        }
        None => Ok(()),
    };
    let hooks = Hooks { in_handler: Some(&in_handler), in_child: Some(&in_child) };
    let run = with_hooks(hooks, || {
        drive(
            cfg,
            |_, p: &mut Pacer<'_>| {
                let mut writes = 0u64;
                let mut more = p.next();
                while more {
                    let k = p.k();
                    if k % 64 == 63 {
                        inside.write(&mut lock.write());
                        writes += 1;
                    } else if k.is_multiple_of(2) {
                        // Hold the read lock across the pacer: its disturbances (sleep, signals,
                        // yield) happen while this reader is inside.
                        let g = lock.read();
                        inside.enter(&g);
                        more = p.next();
                        inside.leave(&g);
                        drop(g);
                        continue;
                    } else {
                        let g = lock.read();
                        inside.enter(&g);
                        inside.leave(&g);
                    }
                    more = p.next();
                }
                writes
            },
            || {
                inside.write(&mut lock.write());
                remote_writes += 1;
            },
        )
    })?;
    let mut f = Found::of(&run);
    f.checks_passed += inside.checks.load(Relaxed);
    let first = std::mem::take(&mut *inside.first.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    f.failed += inside.failed.load(Relaxed) - first.len() as u64;
    first.into_iter().for_each(|m| f.fail(m));
    let writes = run.results.iter().sum::<u64>() + remote_writes + handler_writes.load(Relaxed);
    match lock.try_write() {
        Some(g) => f.check((g.a, g.b) == (writes, 2 * writes), || {
            format!("rwlock: {writes} writes, but the pair says a = {}, b = {}", g.a, g.b)
        }),
        None => f.fail("rwlock: the lock is still held after the run (the readers' sum is not zero)".into()),
    }
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// items: stack, buffer, memcpy

/// A unique item: the worker in the high bits, its push number below.
fn item_id(worker: usize, seq: u64) -> u64 {
    ((worker as u64) << 40) | seq
}

/// Accounts for every item pushed: each must be seen exactly once.
struct Ledger {
    seen: Vec<Vec<bool>>,
    duplicates: u64,
    unknown: u64,
    examples: Vec<String>,
}

impl Ledger {
    fn new(pushed: &[u64]) -> Self {
        Ledger {
            seen: pushed.iter().map(|&n| vec![false; n as usize]).collect(),
            duplicates: 0,
            unknown: 0,
            examples: Vec::new(),
        }
    }

    fn see(&mut self, id: u64, how: &str) {
        let (w, seq) = ((id >> 40) as usize, (id & ((1 << 40) - 1)) as usize);
        match self.seen.get_mut(w).and_then(|v| v.get_mut(seq)) {
            Some(s) if !*s => *s = true,
            Some(_) => {
                self.duplicates += 1;
                if self.examples.len() < 3 {
                    self.examples.push(format!("item {id:#x} (worker {w}, push {seq}) seen twice, again {how}"));
                }
            }
            None => {
                self.unknown += 1;
                if self.examples.len() < 3 {
                    self.examples.push(format!("unknown item {id:#x} {how}"));
                }
            }
        }
    }

    /// Three checks: no duplicate, no unknown item, none missing.
    fn finish(self, what: &str, f: &mut Found) {
        let pushed: usize = self.seen.iter().map(Vec::len).sum();
        let missing: usize = self.seen.iter().map(|v| v.iter().filter(|s| !**s).count()).sum();
        let ex = self.examples.join("; ");
        f.check(self.duplicates == 0, || format!("{what}: {} items seen twice ({ex})", self.duplicates));
        f.check(self.unknown == 0, || format!("{what}: {} unknown items ({ex})", self.unknown));
        f.check(missing == 0, || {
            let first = self
                .seen
                .iter()
                .enumerate()
                .find_map(|(w, v)| v.iter().position(|s| !*s).map(|seq| item_id(w, seq as u64)))
                .unwrap_or(0);
            format!("{what}: {missing} of {pushed} pushed items lost (first: {first:#x})")
        });
    }
}

/// What an item-moving worker saw.
#[derive(Default)]
struct Moved {
    pushed: u64,
    popped: Vec<u64>,
    given_back: Vec<u64>,
    torn: Vec<String>,
}

/// Items a batch push moves (and a batch pop asks for, plus one).
const BATCH: usize = 4;

/// An item worker's loop, six operations in turn: two single pushes of a new unique item
/// (`push` gets its id), a single pop (`pop` records what it got), a batch push of [`BATCH`]
/// new items (`push_many`, one critical section per batch), a batch pop of up to `BATCH + 1`
/// (`pop_many`) and another single pop. Which variant of a batch call runs (`Vec`-taking or
/// buffer-reusing) is the worker's choice from `k`. Returns what was moved.
fn push_pop(
    w: usize,
    p: &mut Pacer<'_>,
    mut push: impl FnMut(&mut Moved, u64),
    mut pop: impl FnMut(&mut Moved),
    mut push_many: impl FnMut(&mut Moved, &[u64], u64),
    mut pop_many: impl FnMut(&mut Moved, usize, u64),
) -> Moved {
    let mut m = Moved::default();
    while p.next() {
        match p.k() % 6 {
            0 | 1 => {
                let id = item_id(w, m.pushed);
                push(&mut m, id);
                m.pushed += 1;
            }
            3 => {
                let ids: [u64; BATCH] = core::array::from_fn(|i| item_id(w, m.pushed + i as u64));
                push_many(&mut m, &ids, p.k());
                m.pushed += BATCH as u64;
            }
            4 => pop_many(&mut m, BATCH + 1, p.k()),
            _ => pop(&mut m),
        }
    }
    m
}

/// Check the items seen by workers, the remote thread and the final drain.
fn account(what: &str, run_results: Vec<Moved>, drained: Vec<u64>, left: Vec<u64>, f: &mut Found) {
    let pushed: Vec<u64> = run_results.iter().map(|m| m.pushed).collect();
    let mut ledger = Ledger::new(&pushed);
    for m in run_results {
        m.popped.into_iter().for_each(|id| ledger.see(id, "popped"));
        m.given_back.into_iter().for_each(|id| ledger.see(id, "given back"));
    }
    drained.into_iter().for_each(|id| ledger.see(id, "drained"));
    left.into_iter().for_each(|id| ledger.see(id, "left at the end"));
    ledger.finish(what, f);
}

/// Drain every index with `drain` (a collection's `drain_cpu`) and hand each item to `keep`; a
/// failed drain is a broken invariant in `f`, named `what(cpu)`.
fn drain_each<T, E: std::fmt::Display>(
    f: &mut Found,
    what: &str,
    drain: impl Fn(usize) -> Result<Vec<T>, E>,
    keep: impl FnMut(T),
) {
    let mut keep = keep;
    for cpu in 0..limit() {
        match drain(cpu) {
            Ok(v) => v.into_iter().for_each(&mut keep),
            Err(e) => f.fail(format!("{what}({cpu}) failed: {e}")),
        }
    }
}

/// Items a `--signal-ops` handler holds because it could not put them back (each handler holds
/// at most one at a time, and gives it back first on its next run): words stored lock-free
/// (never 0), for the final accounting.
struct Kept(Vec<AtomicU64>);

impl Kept {
    fn new() -> Kept {
        Kept((0..4096).map(|_| AtomicU64::new(0)).collect())
    }

    /// Keep `v` (not 0); false only if every slot is taken.
    fn put(&self, v: u64) -> bool {
        self.0.iter().any(|s| s.compare_exchange(0, v, Relaxed, Relaxed).is_ok())
    }

    /// Take back one kept word, if any.
    fn take_one(&self) -> Option<u64> {
        self.0.iter().find_map(|s| match s.load(Relaxed) {
            0 => None,
            _ => Some(s.swap(0, Relaxed)).filter(|&v| v != 0),
        })
    }

    /// Every word kept at the end.
    fn drain(&self) -> Vec<u64> {
        self.0.iter().map(|s| s.swap(0, Relaxed)).filter(|&v| v != 0).collect()
    }
}

/// The `--fork` check of an item structure: drain every index (stopping each), push one item,
/// and find exactly that item again.
fn child_push_drain<T: PartialEq + std::fmt::Debug>(
    what: &str,
    drain_all: impl Fn() -> Vec<T>,
    push: impl Fn() -> bool,
    expect: T,
) -> Result<(), String> {
    let _ = drain_all();
    if !push() {
        return Err(format!("{what} in a forked child: a push into an empty structure failed"));
    }
    match drain_all() {
        got if got.len() == 1 && got[0] == expect => Ok(()),
        got => Err(format!("{what} in a forked child: pushed {expect:?}, drained {got:?}")),
    }
}

fn stack<I: Index>(cfg: &Config) -> std::io::Result<Found> {
    let st = Stack::<u64, I>::new();
    let mut drained = Vec::new();
    let mut remote = Found::default();
    // (A stack push allocates its node: not for a signal handler.)
    let in_child = || child_push_drain("stack", || st.drain_all(), || (st.push(u64::MAX), true).1, u64::MAX);
    let hooks = Hooks { in_handler: None, in_child: Some(&in_child) };
    let run = with_hooks(hooks, || {
        drive(
            cfg,
            |w, p: &mut Pacer<'_>| {
                push_pop(
                    w,
                    p,
                    |_, id| st.push(id),
                    |m| m.popped.extend(st.pop()),
                    |_, ids, k| {
                        if k % 12 < 6 {
                            st.push_batch(ids.to_vec());
                        } else {
                            st.append(&mut ids.to_vec());
                        }
                    },
                    |m, max, k| {
                        if k % 12 < 6 {
                            m.popped.extend(st.pop_batch(max));
                        } else {
                            st.pop_batch_into(max, &mut m.popped);
                        }
                    },
                )
            },
            || drain_each(&mut remote, "drain_cpu", |c| st.drain_cpu(c), |id| drained.push(id)),
        )
    })?;
    let mut f = Found::of(&run);
    f.merge(remote);
    let mut left = Vec::new();
    drain_each(&mut f, "final drain_cpu", |c| st.drain_cpu(c), |id| left.push(id));
    account("stack", run.results, drained, left, &mut f);
    Ok(f)
}

/// Per-CPU capacity of the buffers: small, so that full buffers (items given back) happen.
const CAPACITY: usize = 32;

fn buffer<I: Index>(cfg: &Config) -> std::io::Result<Found> {
    let buf = Buffer::<u64, I>::with_capacity(CAPACITY);
    let mut drained = Vec::new();
    let mut remote = Found::default();
    // --signal-ops: the handler gives back a box it kept, or pops one and pushes it back (keeping
    // it when that fails); it only moves boxes, never allocates or frees.
    let kept = Kept::new();
    let keep = |item: Box<u64>| {
        let p = Box::into_raw(item);
        if !kept.put(p as u64) {
            // SAFETY: not kept: still ours (leaked on purpose; the accounting reports it lost).
            let _ = unsafe { Box::from_raw(p) };
        }
    };
    let in_handler = || {
        let item = match kept.take_one() {
            // SAFETY: a kept word is a pointer from `Box::into_raw` in `keep`, taken out once.
            Some(p) => Some(unsafe { Box::from_raw(p as *mut u64) }),
            None => buf.pop(),
        };
        if let Some(item) = item
            && let Err(item) = buf.push(item)
        {
            keep(item);
        }
    };
    let in_child = || child_push_drain("buffer", || buf.drain_all(), || buf.push(Box::new(7)).is_ok(), Box::new(7));
    let hooks = Hooks { in_handler: Some(&in_handler), in_child: Some(&in_child) };
    let run = with_hooks(hooks, || {
        drive(
            cfg,
            |w, p: &mut Pacer<'_>| {
                push_pop(
                    w,
                    p,
                    |m, id| {
                        if let Err(back) = buf.push(Box::new(id)) {
                            m.given_back.push(*back);
                        }
                    },
                    |m| m.popped.extend(buf.pop().map(|b| *b)),
                    |m, ids, _| {
                        let mut items: Vec<Box<u64>> = ids.iter().map(|&id| Box::new(id)).collect();
                        buf.push_batch(&mut items);
                        // What did not fit stays in `items`.
                        m.given_back.extend(items.into_iter().map(|b| *b));
                    },
                    |m, max, _| {
                        let mut out = Vec::new();
                        buf.pop_batch(max, &mut out);
                        m.popped.extend(out.into_iter().map(|b| *b));
                    },
                )
            },
            || drain_each(&mut remote, "drain_cpu", |c| buf.drain_cpu(c), |b| drained.push(*b)),
        )
    })?;
    let mut f = Found::of(&run);
    f.merge(remote);
    let mut left = Vec::new();
    drain_each(&mut f, "final drain_cpu", |c| buf.drain_cpu(c), |b| left.push(*b));
    // SAFETY: each kept word is a pointer from `Box::into_raw`, drained once.
    left.extend(kept.drain().into_iter().map(|p| *unsafe { Box::from_raw(p as *mut u64) }));
    account("buffer", run.results, drained, left, &mut f);
    Ok(f)
}

/// A memcpy item: its id in word 0 and a value derived from it in every other word, so that a
/// copy mixing two items (or a partial copy) is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item([u64; 16]);

fn mix(id: u64, k: usize) -> u64 {
    (id ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(k as u32 * 4 + 1)
}

impl Item {
    fn new(id: u64) -> Self {
        Item(core::array::from_fn(|k| if k == 0 { id } else { mix(id, k) }))
    }

    /// Whether every word matches its id (no allocation: for a signal handler).
    fn is_whole(&self) -> bool {
        (1..self.0.len()).all(|k| self.0[k] == mix(self.0[0], k))
    }

    /// The id, or a description of the tear.
    fn id(&self, how: &str) -> Result<u64, String> {
        let id = self.0[0];
        match (1..self.0.len()).find(|&k| self.0[k] != mix(id, k)) {
            None => Ok(id),
            Some(k) => Err(format!("memcpy: torn item {how}: word 0 is {id:#x} but word {k} is {:#x}", self.0[k])),
        }
    }
}

fn memcpy<I: Index>(cfg: &Config) -> std::io::Result<Found> {
    let buf = MemcpyBuffer::<Item, I>::with_capacity(CAPACITY);
    let mut drained = Vec::new();
    let mut torn = Vec::new();
    let mut remote = Found::default();
    // --signal-ops: the handler gives back an item it kept (by id), or pops one, checks it and
    // pushes it back (keeping its id when that fails). Ids are kept + 1 (never 0).
    let kept = Kept::new();
    let handler_torn = AtomicU64::new(0);
    let in_handler = || {
        let item = match kept.take_one() {
            Some(id) => Some(Item::new(id - 1)),
            None => buf.pop(),
        };
        if let Some(item) = item {
            if !item.is_whole() {
                handler_torn.fetch_add(1, Relaxed);
            } else if let Err(item) = buf.push(item) {
                let _ = kept.put(item.0[0] + 1);
            }
        }
    };
    let in_child = || child_push_drain("memcpy", || buf.drain_all(), || buf.push(Item::new(7)).is_ok(), Item::new(7));
    let hooks = Hooks { in_handler: Some(&in_handler), in_child: Some(&in_child) };
    let run = with_hooks(hooks, || {
        drive(
            cfg,
            |w, p: &mut Pacer<'_>| {
                push_pop(
                    w,
                    p,
                    |m, id| {
                        if let Err(back) = buf.push(Item::new(id)) {
                            match back.id("given back") {
                                Ok(id) => m.given_back.push(id),
                                Err(e) => m.torn.push(e),
                            }
                        }
                    },
                    |m| match buf.pop().map(|item| item.id("popped")) {
                        Some(Ok(id)) => m.popped.push(id),
                        Some(Err(e)) => m.torn.push(e),
                        None => {}
                    },
                    |m, ids, _| {
                        let items: Vec<Item> = ids.iter().map(|&id| Item::new(id)).collect();
                        // The first `n` were copied in; the rest are given back.
                        let n = buf.push_batch(&items);
                        m.given_back.extend(&ids[n..]);
                    },
                    |m, max, _| {
                        let mut out = Vec::new();
                        buf.pop_batch(max, &mut out);
                        for item in out {
                            match item.id("popped in a batch") {
                                Ok(id) => m.popped.push(id),
                                Err(e) => m.torn.push(e),
                            }
                        }
                    },
                )
            },
            || {
                drain_each(
                    &mut remote,
                    "drain_cpu",
                    |c| buf.drain_cpu(c),
                    |item| match item.id("drained") {
                        Ok(id) => drained.push(id),
                        Err(e) => torn.push(e),
                    },
                )
            },
        )
    })?;
    let mut f = Found::of(&run);
    f.merge(remote);
    let mut left = Vec::new();
    drain_each(
        &mut f,
        "final drain_cpu",
        |c| buf.drain_cpu(c),
        |item| match item.id("left at the end") {
            Ok(id) => left.push(id),
            Err(e) => torn.push(e),
        },
    );
    left.extend(kept.drain().into_iter().map(|id| id - 1));
    let mut results = run.results;
    for m in &mut results {
        torn.append(&mut m.torn);
    }
    if handler_torn.load(Relaxed) > 0 {
        torn.push(format!("{} torn items popped in the signal handler", handler_torn.load(Relaxed)));
    }
    // One check for the integrity of every item copied out, then the item accounting.
    f.check(torn.is_empty(), || format!("memcpy: {} torn items; the first: {}", torn.len(), torn[0]));
    account("memcpy", results, drained, left, &mut f);
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// remote: a pointer-selected active copy, swapped and drained through op vectors

/// Cells per copy (a drain vector takes two operations per cell, at most 16 in all).
const CELLS: usize = 4;

/// One CPU's data: `active` holds the address of `tables[0]` or `tables[1]`; `tables[c][j]`
/// holds the address of `cells[c][j]`. Workers add to `*tables[active][j]`.
#[derive(Default)]
struct Twin {
    active: AtomicUsize,
    tables: [[AtomicUsize; CELLS]; 2],
    cells: [[AtomicUsize; CELLS]; 2],
}

impl Twin {
    fn table_addr(&self, c: usize) -> usize {
        self.tables[c].as_ptr() as usize
    }

    /// Which copy is active (only the remote thread changes it, so it reads it race-free).
    fn which(&self) -> usize {
        usize::from(self.active.load(Relaxed) == self.table_addr(1))
    }

    fn snapshot(&self, c: usize) -> [usize; CELLS] {
        core::array::from_fn(|j| self.cells[c][j].load(Relaxed))
    }
}

fn remote<I: Index>(cfg: &Config) -> std::io::Result<Found> {
    let twins: PerCpu<Twin, I> = PerCpu::default();
    // The slots do not move once the PerCpu exists: wire the pointers now.
    for (_, t) in twins.iter() {
        for c in 0..2 {
            for j in 0..CELLS {
                t.tables[c][j].store(t.cells[c].as_ptr().wrapping_add(j) as usize, Relaxed);
            }
        }
        t.active.store(t.table_addr(0), Relaxed);
    }
    let twins = &twins;
    let mut taken = 0u64;
    let mut remote = Found::default();
    let mut step = 0usize;
    let run = drive(
        cfg,
        |w, p: &mut Pacer<'_>| {
            let (mut added, mut errors) = (0u64, Vec::new());
            while p.next() {
                let j = (p.k() as usize + w) % CELLS;
                let n = p.k() % 5 + 1;
                let path = retry::run::<I, Result<(), String>>(
                    |i| match twins.get(i) {
                        // SAFETY: `active` of index `i` points to a table of pointers to cells
                        // of index `i`; they are written only by sections indexed by `i` and
                        // under guard `i` (the remote thread's vectors and stops).
                        Some(t) => unsafe {
                            ops::load_add_load_load_add_store::<I>(&t.active, j * size_of::<usize>(), n as usize, i)
                        },
                        None => Outcome::Stopped,
                    },
                    |stop| {
                        let t = twins.get(stop.index()).ok_or("stop index out of range")?;
                        let table = t.active.load(Relaxed) as *const AtomicUsize;
                        // SAFETY: `active` always holds the address of one of `t`'s tables,
                        // which live as long as `twins`; `j < CELLS`.
                        let cell = unsafe { (*table.add(j)).load(Relaxed) };
                        let mut v = OpVec::new();
                        v.add(cell as *mut u8, n, size_of::<usize>());
                        // SAFETY: `cell` is a live, aligned cell of this index, written only by
                        // sections indexed by it or under its guard, which `stop` holds.
                        unsafe { v.run_stopped(stop) }.map_err(|e| format!("slow-path op vector failed: {e}"))
                    },
                );
                match path {
                    Path::Slow(Err(e)) => errors.push(e),
                    Path::Fast(Outcome::CompareFailed) => errors.push("a compare-free op failed its compare".into()),
                    _ => added += n,
                }
            }
            (added, errors)
        },
        || {
            for idx in 0..limit() {
                if let Some(t) = twins.get(idx) {
                    match step % 3 {
                        0 => swap_with_vector::<I>(idx, t, &mut taken, &mut remote),
                        1 => swap_while_stopped::<I>(idx, t, &mut taken, &mut remote),
                        _ => drain_active::<I>(idx, t, &mut taken, &mut remote),
                    }
                }
                step += 1;
            }
        },
    )?;
    let mut f = Found::of(&run);
    f.merge(remote);
    let mut added = 0u64;
    for (a, errors) in run.results {
        added += a;
        for e in errors {
            f.fail(e);
        }
    }
    let left: u64 = twins.iter().flat_map(|(_, t)| t.cells.iter().flatten()).map(|c| c.load(Relaxed) as u64).sum();
    f.check(taken + left == added, || {
        format!("remote: added {added}, but taken {taken} + left {left} = {}", taken + left)
    });
    Ok(f)
}

/// After a swap: the copy that was active (`old`) must not change any more. Snapshot it, let
/// the workers run a little, snapshot again, reset it (the swap returns what was there), and
/// look once more: every look must agree, and the last must be zero.
fn retire(idx: usize, t: &Twin, old: usize, taken: &mut u64, f: &mut Found) {
    let first = t.snapshot(old);
    for _ in 0..2 {
        std::thread::yield_now();
    }
    let second = t.snapshot(old);
    let reset: [usize; CELLS] = core::array::from_fn(|j| t.cells[old][j].swap(0, Relaxed));
    std::thread::yield_now();
    let after = t.snapshot(old);
    f.check(first == second && second == reset && after == [0; CELLS], || {
        format!(
            "remote: the inactive copy {old} of index {idx} changed after the swap: \
             {first:?}, then {second:?}, reset from {reset:?}, then {after:?}"
        )
    });
    *taken += reset.iter().map(|&v| v as u64).sum::<u64>();
}

/// Swap the active copy with one op vector on `idx`: compare `active`, xor it to the other
/// table; then retire the old copy.
fn swap_with_vector<I: Index>(idx: usize, t: &Twin, taken: &mut u64, f: &mut Found) {
    let old = t.which();
    let cur = t.table_addr(old);
    let flip = t.table_addr(0) ^ t.table_addr(1);
    let mut v = OpVec::new();
    v.compare_eq_word(&t.active, &cur).xor_word(&t.active, flip);
    // SAFETY: `active` is a live, aligned word of index `idx`, written only by this thread's
    // vectors (under the guard); `cur` is a live local.
    match unsafe { v.run_on_index::<I>(idx) } {
        Ok(()) => retire(idx, t, old, taken, f),
        Err(e) => f.fail(format!("remote: swap vector on index {idx} failed: {e}")),
    }
}

/// Stop `idx` with the guard, copy the other table's address into `active` with a vector run
/// under that stop, and check the old copy both while stopped and after restarting.
fn swap_while_stopped<I: Index>(idx: usize, t: &Twin, taken: &mut u64, f: &mut Found) {
    let old = t.which();
    let new = t.table_addr(1 - old);
    let stop = match guard::stop::<I>(idx) {
        Ok(s) => s,
        Err(e) => return f.fail(format!("remote: stop({idx}) failed: {e}")),
    };
    let mut v = OpVec::new();
    v.memcpy(t.active.as_ptr().cast(), (&raw const new).cast(), size_of::<usize>());
    // SAFETY: `active` is a live, aligned word of index `idx`, which `stop` holds; `new` is a
    // live local that does not overlap it.
    if let Err(e) = unsafe { v.run_stopped(&stop) } {
        drop(stop);
        return f.fail(format!("remote: swap under stop on index {idx} failed: {e}"));
    }
    let stopped = t.snapshot(old);
    drop(stop);
    let before = *taken;
    retire(idx, t, old, taken, f);
    let retired = *taken - before;
    f.check(stopped.iter().map(|&v| v as u64).sum::<u64>() == retired, || {
        format!("remote: the inactive copy {old} of index {idx} held {stopped:?} while stopped, {retired} later")
    });
}

/// Sum and reset the active copy with one vector: copy each cell out, then and it with 0.
fn drain_active<I: Index>(idx: usize, t: &Twin, taken: &mut u64, f: &mut Found) {
    let c = t.which();
    let out: [AtomicUsize; CELLS] = Default::default();
    let mut v = OpVec::new();
    for (o, cell) in out.iter().zip(&t.cells[c]) {
        v.memcpy(o.as_ptr().cast(), cell.as_ptr().cast(), size_of::<usize>()).and_word(cell, 0);
    }
    // SAFETY: the cells are live, aligned words of index `idx`, written only by sections indexed
    // by it and under its guard; `out` is a live local that overlaps none of them.
    match unsafe { v.run_on_index::<I>(idx) } {
        Ok(()) => *taken += out.iter().map(|o| o.load(Relaxed) as u64).sum::<u64>(),
        Err(e) => f.fail(format!("remote: drain vector on index {idx} failed: {e}")),
    }
}
