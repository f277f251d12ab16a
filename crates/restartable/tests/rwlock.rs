//! `RwLock`: a reader and a writer never both hold it, in every mode and under every
//! disturbance we can make: many more threads than cores, readers that sleep, yield and migrate
//! (`sched_setaffinity`) while they hold the lock, signal handlers that use the lock their thread
//! is inside, every abort sent to the slow path, degraded mode, delays injected inside the
//! critical sections (`inject` feature), a debugger single-stepping through a read lock.
//!
//! Every exclusion test checks two independent things: a probe (atomic counts of the readers and
//! writers inside, updated while they hold the lock: a writer that finds a reader inside, or a
//! reader that finds a writer, is a failure) and the data (writers keep `b == 2 * a` with a gap
//! between the two stores, and count their writes: a torn read or a lost write is a failure).
//! No test's verdict depends on timing. Scenarios that could hang run in a child process with a
//! deadline, in fast mode (glibc's registration and our own) and degraded mode, or in this
//! process under a watchdog that aborts it (with the test's name) past the same deadline.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use restartable::ops::{Cpu, Index, MmCid};
use restartable::{RwLock, RwLockReadGuard, RwLockWriteGuard};

const DEADLINE: Duration = Duration::from_secs(120);
const MODES: [&[(&str, &str)]; 3] =
    [&[], &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], &[("RESTARTABLE_FORCE_DEGRADED", "1")]];

/// Run child test `name` in `modes`; each must succeed before the deadline.
fn in_children(name: &str, modes: &[&[(&str, &str)]]) {
    for env in modes {
        let started = Instant::now();
        let out = testkit::run_self_as_child_timeout(name, env, &[], DEADLINE);
        assert!(out.status.success(), "{name} {env:?}:\n{}", testkit::describe(&out));
        eprintln!("{name} {env:?}: ok in {:.1?}", started.elapsed());
    }
}

/// Run `f`; if it is still running after [`DEADLINE`], abort the whole test process with a
/// message (a lock that hangs fails the suite instead of hanging it).
fn watchdog<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let (flag, name) = (done.clone(), what.to_string());
    std::thread::spawn(move || {
        let start = Instant::now();
        while !flag.load(SeqCst) {
            if start.elapsed() > DEADLINE {
                eprintln!("{name}: still running after {DEADLINE:?}: a hang (aborting the test process)");
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let r = f();
    done.store(true, SeqCst);
    r
}

/// The CPUs this process may run on, read once, before any test thread pins itself (every
/// `pin` reads it first).
fn cpus() -> &'static [usize] {
    static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    CPUS.get_or_init(testkit::affinity::allowed)
}

fn cores() -> usize {
    cpus().len()
}

// ---------------------------------------------------------------------------------------------
// The protected data and the probe.

/// Writers keep `b == 2 * a`; `a` counts the writes.
#[derive(Debug, Default)]
pub struct Pair {
    a: u64,
    b: u64,
}

/// Who is inside, as the threads holding the lock say (`SeqCst`, so that of a reader and a
/// writer inside at the same time, at least one sees the other).
#[derive(Default)]
struct Probe {
    readers: AtomicUsize,
    writers: AtomicUsize,
    violations: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl Probe {
    fn violation(&self, what: String) {
        self.violations.fetch_add(1, SeqCst);
        let mut f = self.first.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.get_or_insert(what);
    }

    /// Inside a read lock: enter the probe, look at the data (slowly), `during` (a sleep, a
    /// migration...), look again, leave the probe.
    fn read<I: Index>(&self, g: &RwLockReadGuard<'_, Pair, I>, during: impl FnOnce()) {
        self.readers.fetch_add(1, SeqCst);
        if self.writers.load(SeqCst) != 0 {
            self.violation("a reader found a writer inside".into());
        }
        self.check(g);
        during();
        self.check(g);
        self.readers.fetch_sub(1, SeqCst);
        self.reads.fetch_add(1, Relaxed);
    }

    /// The data invariant, read field by field with a gap (volatile: real loads each time).
    fn check(&self, p: &Pair) {
        // SAFETY: plain reads of fields of a live `Pair` the caller may read.
        let a = unsafe { std::ptr::read_volatile(&p.a) };
        for _ in 0..black_box(20) {
            std::hint::spin_loop();
        }
        // SAFETY: as above.
        let b = unsafe { std::ptr::read_volatile(&p.b) };
        if b != 2 * a {
            self.violation(format!("a reader saw a = {a}, b = {b} (a writer was inside)"));
        }
    }

    /// Inside the write lock: enter the probe, update the data with a gap between the fields,
    /// leave the probe.
    fn write<I: Index>(&self, g: &mut RwLockWriteGuard<'_, Pair, I>) {
        if self.writers.fetch_add(1, SeqCst) != 0 {
            self.violation("two writers inside".into());
        }
        let r = self.readers.load(SeqCst);
        if r != 0 {
            self.violation(format!("a writer found {r} readers inside"));
        }
        write_pair(g);
        self.writers.fetch_sub(1, SeqCst);
        self.writes.fetch_add(1, Relaxed);
    }

    /// No violation, and the data says exactly `writes` writes happened.
    fn assert_clean<I: Index>(&self, lock: &RwLock<Pair, I>, extra_writes: u64) {
        let v = self.violations.load(SeqCst);
        let first = self.first.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        assert_eq!(v, 0, "{v} exclusion violations; the first: {first:?}");
        let g = lock.try_write().expect("nobody holds the lock at the end (the readers' sum is back to zero)");
        let writes = self.writes.load(SeqCst) + extra_writes;
        assert_eq!((g.a, g.b), (writes, 2 * writes), "every write counted exactly once");
    }
}

/// `a += 1`, a gap, `b += 2`: a reader inside now would see `b != 2a`.
fn write_pair(p: &mut Pair) {
    // SAFETY: plain accesses to fields of a `Pair` we hold exclusively (volatile, so the torn
    // state really is in memory during the gap).
    unsafe {
        let a = std::ptr::read_volatile(&p.a);
        std::ptr::write_volatile(&mut p.a, a + 1);
        for _ in 0..black_box(50) {
            std::hint::spin_loop();
        }
        let b = std::ptr::read_volatile(&p.b);
        std::ptr::write_volatile(&mut p.b, b + 2);
    }
}

/// Pin the calling thread to the allowed CPUs numbered `ks` (positions in [`cpus`], so that a
/// test works in any cpuset), or to every allowed CPU when `ks` is empty.
fn pin(ks: &[usize]) {
    let all = cpus();
    let chosen: Vec<usize> =
        if ks.is_empty() { all.to_vec() } else { ks.iter().map(|&k| all[k % all.len()]).collect() };
    testkit::affinity::pin(&chosen);
}

// ---------------------------------------------------------------------------------------------
// The API.

#[test]
fn api_basics() {
    static STATIC: RwLock<Vec<u32>> = RwLock::new(Vec::new());
    STATIC.write().push(1);
    assert_eq!(*STATIC.read(), [1]);

    let lock = RwLock::new(5);
    {
        let a = lock.read();
        let b = lock.read();
        assert_eq!(*a + *b, 10);
        assert!(lock.try_read().is_some(), "readers share");
        assert!(lock.try_write().is_none(), "a reader keeps writers out");
    }
    {
        let mut w = lock.write();
        *w += 1;
        assert!(lock.try_read().is_none(), "a writer keeps readers out");
        assert!(lock.try_write().is_none(), "and other writers");
        assert_eq!(format!("{w:?} {w}"), "6 6");
        assert_eq!(format!("{lock:?}"), r#"RwLock { data: <locked>, index: "cpu", .. }"#);
    }
    assert_eq!(format!("{lock:?}"), r#"RwLock { data: 6, index: "cpu", .. }"#);
    let r = lock.read();
    assert_eq!(format!("{r:?} {r}"), "6 6");
    drop(r);
    *lock.try_write().unwrap() += 1;
    let mut lock = lock;
    *lock.get_mut() += 1;
    assert_eq!(lock.into_inner(), 8);

    assert_eq!(*RwLock::<String>::default().read(), "");
    assert_eq!(*RwLock::from(3).read(), 3);
    let by_cid = RwLock::<u32, MmCid>::with_index(3);
    *by_cid.write() += 1;
    assert_eq!(*by_cid.read(), 4);
    assert_eq!(format!("{by_cid:?}"), r#"RwLock { data: 4, index: "mm_cid", .. }"#);

    // Unsized data, as for std's lock.
    let arr = RwLock::new([1u8, 2, 3]);
    let slice: &RwLock<[u8]> = &arr;
    assert_eq!(slice.read().len(), 3);
    slice.write()[0] = 9;
    let boxed: Box<RwLock<dyn std::fmt::Debug + Send + Sync>> = Box::new(RwLock::new(7u8));
    assert_eq!(format!("{:?}", &*boxed.read()), "7");
    assert_eq!(arr.into_inner(), [9, 2, 3]);

    fn send_sync<T: Send + Sync>() {}
    send_sync::<RwLock<Vec<u8>>>();
    send_sync::<RwLockReadGuard<'static, Vec<u8>>>();
    send_sync::<RwLockWriteGuard<'static, Vec<u8>>>();
}

/// The value is dropped once, with the lock or out of it; the per-CPU counts go back to the pool.
#[test]
fn drops_the_value_once() {
    let v = std::sync::Arc::new(());
    let lock = RwLock::new(v.clone());
    drop(lock.read());
    assert_eq!(std::sync::Arc::strong_count(&v), 2);
    drop(lock);
    assert_eq!(std::sync::Arc::strong_count(&v), 1);
    let lock = RwLock::new(v.clone());
    let inner = lock.into_inner();
    assert_eq!(std::sync::Arc::strong_count(&v), 2);
    drop(inner);
    // Many locks that were used: their counts are freed (the pool would run out otherwise).
    for _ in 0..10_000 {
        let l = RwLock::new(0u8);
        drop(l.read());
    }
}

/// A guard released on another thread (the read unlock runs wherever its thread is).
#[test]
fn guards_move_between_threads() {
    let lock = RwLock::new(1);
    let r = lock.read();
    std::thread::scope(|s| {
        s.spawn(move || drop(r));
    });
    let w = lock.try_write().expect("released on the other thread");
    std::thread::scope(|s| {
        s.spawn(move || drop(w));
    });
    assert!(lock.try_read().is_some());
}

// ---------------------------------------------------------------------------------------------
// Contention.

/// `threads` workers run `ops` operations each: one in `write_every` a write, the others reads;
/// every eighth read yields while holding, every 64th sleeps, and (with `migrate`) every 16th
/// moves to another CPU before unlocking. Another thread writes all the while.
fn contend<I: Index>(lock: &RwLock<Pair, I>, probe: &Probe, threads: usize, ops: u64, write_every: u64, migrate: bool) {
    let done = AtomicBool::new(false);
    let n = cores();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(SeqCst) {
                probe.write(&mut lock.write());
                std::thread::yield_now();
            }
        });
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (lock, probe) = (&lock, &probe);
                s.spawn(move || {
                    for k in 0..ops {
                        if (k + t as u64).is_multiple_of(write_every) {
                            probe.write(&mut lock.write());
                            continue;
                        }
                        let g = lock.read();
                        probe.read(&g, || match k % 64 {
                            0 => std::thread::sleep(Duration::from_micros(100)),
                            x if migrate && x % 16 == 1 => pin(&[(t + k as usize) % n]),
                            x if x % 8 == 2 => std::thread::yield_now(),
                            _ => {}
                        });
                        drop(g);
                    }
                    pin(&[]);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, SeqCst);
    });
}

fn exclusion<I: Index>() {
    let lock = RwLock::<Pair, I>::default();
    let probe = Probe::default();
    contend(&lock, &probe, 8 * cores(), 3_000, 50, true);
    probe.assert_clean(&lock, 0);
    assert!(probe.writes.load(SeqCst) > 0 && probe.reads.load(SeqCst) > 0);
}

/// 8 x cores threads, 1 write in 50, readers that yield, sleep and migrate while they hold the
/// lock, and a writer thread all the while.
#[test]
fn exclusion_under_contention_by_cpu() {
    watchdog("exclusion_under_contention_by_cpu", exclusion::<Cpu>);
}

#[test]
fn exclusion_under_contention_by_mm_cid() {
    watchdog("exclusion_under_contention_by_mm_cid", exclusion::<MmCid>);
}

/// Read-mostly: 1 write in 1000, readers pinned and moved between CPUs: the per-CPU counts go
/// negative on some CPUs, and their sum still drains to exactly zero.
#[test]
fn readers_that_migrate_leave_an_exact_sum() {
    watchdog("readers_that_migrate_leave_an_exact_sum", readers_that_migrate_leave_an_exact_sum_body);
}

fn readers_that_migrate_leave_an_exact_sum_body() {
    let lock = RwLock::<Pair>::default();
    let probe = Probe::default();
    let n = cores();
    std::thread::scope(|s| {
        for t in 0..2 * n {
            let (lock, probe) = (&lock, &probe);
            s.spawn(move || {
                for k in 0..2_000usize {
                    pin(&[(t + k) % n]);
                    let g = lock.read();
                    probe.read(&g, || pin(&[(t + k + 1) % n]));
                    drop(g);
                    if k % 1000 == t {
                        probe.write(&mut lock.write());
                    }
                }
                pin(&[]);
            });
        }
    });
    probe.assert_clean(&lock, 0);
}

/// A reader that sleeps holding the lock keeps a writer out; the writer, once pending, keeps new
/// readers out (they wait for it, and then see its write); and the sleeping reader's unlock does
/// not wait for the writer, even after it moved to another CPU.
#[test]
fn a_pending_writer_waits_for_a_sleeping_reader_and_holds_off_new_ones() {
    watchdog("pending_writer", || {
        pending_writer::<Cpu>();
        pending_writer::<MmCid>();
    });
}

fn pending_writer<I: Index>() {
    let lock = RwLock::<Pair, I>::default();
    let probe = Probe::default();
    let writer_in = AtomicBool::new(false);
    let n = cores();
    std::thread::scope(|s| {
        pin(&[0]);
        let r1 = lock.read();
        let writer = s.spawn(|| {
            let mut g = lock.write();
            writer_in.store(true, SeqCst);
            probe.write(&mut g);
        });
        // The writer is pending as soon as a new reader cannot get in (only a writer stops one).
        let t0 = Instant::now();
        while let Some(g) = lock.try_read() {
            drop(g);
            assert!(t0.elapsed() < Duration::from_secs(30), "the writer never became pending");
            std::thread::yield_now();
        }
        assert!(!writer_in.load(SeqCst), "a writer got in while a reader held the lock");
        // A new reader waits for the writer, then sees what it wrote.
        let late = s.spawn(|| {
            let g = lock.read();
            probe.read(&g, || {});
            g.a
        });
        std::thread::sleep(Duration::from_millis(20)); // (let the writer sleep on its futex)
        assert!(!writer_in.load(SeqCst), "a writer got in while a reader held the lock");
        pin(&[n - 1]); // unlock on another CPU than the lock
        drop(r1);
        pin(&[]);
        writer.join().unwrap();
        assert!(writer_in.load(SeqCst));
        assert_eq!(late.join().unwrap(), 1, "the late reader waited for the pending writer");
    });
    probe.assert_clean(&lock, 0);
}

/// Writers do not starve: readers keep the lock held by at least one of them at all times
/// (overlapping holds), which would lock a reader-preferring writer out forever; every write
/// still completes.
#[test]
fn writers_do_not_starve() {
    watchdog("writers_do_not_starve", writers_do_not_starve_body);
}

fn writers_do_not_starve_body() {
    let lock = RwLock::<Pair>::default();
    let probe = Probe::default();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !done.load(SeqCst) {
                    let g = lock.read();
                    probe.read(&g, || std::thread::sleep(Duration::from_micros(300)));
                }
            });
        }
        for _ in 0..20 {
            probe.write(&mut lock.write());
        }
        done.store(true, SeqCst);
    });
    probe.assert_clean(&lock, 0);
    assert_eq!(probe.writes.load(SeqCst), 20);
}

/// Writers only: the writer bit excludes them from each other.
#[test]
fn writers_exclude_each_other() {
    watchdog("writers_exclude_each_other", writers_exclude_each_other_body);
}

fn writers_exclude_each_other_body() {
    let lock = RwLock::<Pair>::default();
    let probe = Probe::default();
    std::thread::scope(|s| {
        for t in 0..4 * cores() {
            let (lock, probe) = (&lock, &probe);
            s.spawn(move || {
                for k in 0..300 {
                    if k % 4 == t % 4 {
                        if let Some(mut g) = lock.try_write() {
                            probe.write(&mut g);
                        }
                    } else {
                        probe.write(&mut lock.write());
                    }
                }
            });
        }
    });
    probe.assert_clean(&lock, 0);
}

// ---------------------------------------------------------------------------------------------
// Degraded mode, and our own registration: the same scenarios in child processes.

#[test]
fn modes_child() {
    if !testkit::is_child() {
        return;
    }
    println!("{}", restartable::mode());
    exclusion::<Cpu>();
    exclusion::<MmCid>();
    pending_writer::<Cpu>();
    let lock = RwLock::<Pair>::default();
    let probe = Probe::default();
    contend(&lock, &probe, 4 * cores(), 2_000, 1000, true);
    probe.assert_clean(&lock, 0);
}

/// The contention scenarios with our own rseq registration and in degraded mode (every count
/// update an atomic instruction, the writer's fence a `SeqCst` fence).
#[test]
fn other_registration_and_degraded_mode() {
    in_children("modes_child", &MODES[1..]);
}

/// Without rseq at all (a seccomp filter refuses it): degraded, and still exclusive.
#[cfg(not(restartable_portable))]
#[test]
fn without_rseq() {
    let out = testkit::run_self_as_child_timeout(
        "modes_child",
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
        &[(testkit::SYS_RSEQ, libc::ENOSYS)],
        DEADLINE,
    );
    assert!(out.status.success(), "{}", testkit::describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("degraded"), "{}", testkit::describe(&out));
}

// ---------------------------------------------------------------------------------------------
// Signal handlers that use the lock their thread is inside.

static LOCK: RwLock<Pair> = RwLock::new(Pair { a: 0, b: 0 });
static HANDLED: AtomicU64 = AtomicU64::new(0);
static HANDLER_READS: AtomicU64 = AtomicU64::new(0);
static HANDLER_WRITES: AtomicU64 = AtomicU64::new(0);
static HANDLER_TORN: AtomicU64 = AtomicU64::new(0);
/// Whether the handler is armed (the test is not yet reading its totals).
static ARMED: testkit::signal::Armed = testkit::signal::Armed::new();

/// `try_read` (checks the data) and, every fourth time, `try_write` (writes and counts), from a
/// handler that may have interrupted its thread anywhere inside `read`, the unlock or `write`,
/// possibly holding the per-CPU guard of its slow path. Neither may wait; neither allocates.
extern "C" fn handler(_: libc::c_int) {
    // (`disarm` waits for the handler's counts and for it to release its guards.)
    ARMED.run(|| {
        let n = HANDLED.fetch_add(1, SeqCst);
        if let Some(g) = LOCK.try_read() {
            if g.b != 2 * g.a {
                HANDLER_TORN.fetch_add(1, SeqCst);
            }
            HANDLER_READS.fetch_add(1, SeqCst);
        }
        if n.is_multiple_of(4)
            && let Some(mut g) = LOCK.try_write()
        {
            write_pair(&mut g);
            HANDLER_WRITES.fetch_add(1, SeqCst);
        }
    });
}

fn block_alarm() {
    // SAFETY: a valid signal set and a null old set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
        assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()), 0);
    }
}

#[test]
fn signal_handler_child() {
    if !testkit::is_child() {
        return;
    }
    // Every abort (a signal lands inside a section) goes to the slow path at once, which holds
    // the count's per-CPU guard: handlers arrive there too.
    restartable::retry::set_max_aborts(1);
    pin(&[0]);
    let probe = Probe::default();
    let done = AtomicBool::new(false);
    let mut ops = 0u64;
    std::thread::scope(|s| {
        s.spawn(|| {
            block_alarm();
            while !done.load(SeqCst) {
                probe.write(&mut LOCK.write());
                std::thread::sleep(Duration::from_micros(20));
            }
        });
        testkit::signal::on_alarm(handler);
        ARMED.arm();
        let timer = testkit::signal::ThreadTimer::every(Duration::from_micros(50));
        let start = Instant::now();
        while (start.elapsed() < Duration::from_millis(300) || HANDLED.load(SeqCst) < 500)
            && start.elapsed() < Duration::from_secs(60)
        {
            for _ in 0..64 {
                ops += 1;
                if ops.is_multiple_of(50) {
                    probe.write(&mut LOCK.write());
                } else {
                    let g = LOCK.read();
                    probe.read(&g, || {});
                }
            }
        }
        drop(timer);
        // Wait for handlers (their counts, their guards) before checking. (The timer signals
        // only this thread; the wait keeps the counts exact for a handler on any other thread
        // too, e.g. one run by a SIGALRM sent to the whole process.)
        ARMED.disarm();
        done.store(true, SeqCst);
    });
    let (handled, reads, writes) = (HANDLED.load(SeqCst), HANDLER_READS.load(SeqCst), HANDLER_WRITES.load(SeqCst));
    println!(
        "{}: {ops} operations, {handled} handlers ({reads} read, {writes} wrote), {} slow paths, {} aborts",
        restartable::mode(),
        restartable::retry::slow_path_uses(),
        restartable::retry::aborts()
    );
    assert_eq!(HANDLER_TORN.load(SeqCst), 0, "a handler read a torn pair");
    assert!(handled >= 100 && reads > 0, "the handlers ran and read ({handled}, {reads})");
    probe.assert_clean(&LOCK, writes);
}

/// A `SIGALRM` handler every 50 us calls `try_read` and `try_write` while its thread (pinned to
/// one CPU) takes and releases read and write locks, with every abort sent to the slow path and
/// another thread writing: no deadlock, no torn read, every write counted.
#[test]
fn signal_handler_uses_the_lock_its_thread_is_in() {
    in_children("signal_handler_child", &MODES);
}

// ---------------------------------------------------------------------------------------------
// Delay injection: long delays inside every critical section, between the writer check and the
// commit, so that writers' fences land inside read sections.

#[cfg(feature = "inject")]
#[test]
fn inject_child() {
    if !testkit::is_child() {
        return;
    }
    let point: usize = std::env::var("RWLOCK_INJECT_POINT").unwrap().parse().unwrap();
    // With a limit of 1, a read section that a writer's fence restarts goes straight to the slow
    // path, while that writer is pending: the slow path's own writer check is then what excludes.
    let max: u32 = std::env::var("RWLOCK_INJECT_MAX_ABORTS").map_or(64, |m| m.parse().unwrap());
    restartable::retry::set_max_aborts(max);
    restartable::inject::set(point, 20_000);
    let lock = RwLock::<Pair>::default();
    let probe = Probe::default();
    contend(&lock, &probe, 4 * cores(), if max == 1 { 3_000 } else { 400 }, 20, true);
    restartable::inject::clear();
    println!("{}: point {point}, {} aborts", restartable::mode(), restartable::retry::aborts());
    probe.assert_clean(&lock, 0);
    // (Point 8 delays only the slow path: no section need be restarted there.)
    if restartable::mode().is_fast() && point != 8 {
        assert!(restartable::retry::aborts() > 0, "the writers' fences restarted delayed sections");
    }
}

/// Every injection point inside the sections (and the slow path's), with contention; the two
/// between the read section's writer check and its commit once more with every abort sent to
/// the slow path (so slow read locks race with pending writers).
#[cfg(feature = "inject")]
#[test]
fn delays_inside_the_sections() {
    for (point, max) in [("3", "64"), ("4", "64"), ("5", "64"), ("8", "64"), ("4", "1"), ("5", "1")] {
        let env = [("RWLOCK_INJECT_POINT", point), ("RWLOCK_INJECT_MAX_ABORTS", max)];
        let out = testkit::run_self_as_child_timeout("inject_child", &env, &[], DEADLINE);
        assert!(out.status.success(), "point {point}, max aborts {max}:\n{}", testkit::describe(&out));
    }
}

// ---------------------------------------------------------------------------------------------
// A debugger single-stepping through a read lock and its unlock.

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn restartable_rwlock_gdb_target(lock: &RwLock<Pair>) -> u64 {
    let g = lock.read();
    let a = g.a;
    drop(g);
    a
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn restartable_rwlock_gdb_done() {
    black_box(());
}

#[test]
fn gdb_rwlock_child() {
    let Ok(max) = std::env::var("RESTARTABLE_RWLOCK_GDB_CHILD") else { return };
    restartable::retry::set_max_aborts(max.parse().unwrap());
    let lock = RwLock::<Pair>::default();
    probe_once(&lock); // warm up: counts, registration, mode, fence registration
    let slow = restartable::retry::slow_path_uses();
    restartable_rwlock_gdb_target(&lock);
    restartable_rwlock_gdb_done();
    let w = lock.try_write().is_some();
    println!("RESULT slow={} writable={w}", restartable::retry::slow_path_uses() - slow);
}

fn probe_once(lock: &RwLock<Pair>) {
    drop(lock.read());
    drop(lock.write());
}

/// gdb `stepi`s (displaced stepping off) through a read lock and its unlock: every step restarts
/// the section, so each completes through the slow path after the abort limit (4 here, to keep
/// the step count small), and afterwards the readers' sum is exactly zero (a writer gets in).
#[test]
fn gdb_single_stepping_a_read_lock_completes() {
    if !restartable::mode().is_fast() {
        eprintln!("degraded mode: there is no fast path to single-step ({})", restartable::mode());
        return;
    }
    let script = r#"set pagination off
set confirm off
set style enabled off
set displaced-stepping off
set language c
break restartable_rwlock_gdb_target
run
python
import gdb
done = int(gdb.parse_and_eval("(long)&restartable_rwlock_gdb_done"))
steps = 0
pc = int(gdb.parse_and_eval("$pc"))
while steps < 100000 and pc != done:
    gdb.execute("stepi", to_string=True)
    steps += 1
    pc = int(gdb.parse_and_eval("$pc"))
print("STEPS", steps, "REACHED_DONE" if pc == done else "NOT_DONE")
end
continue
"#;
    let path = std::env::temp_dir().join(format!("restartable-rwlock-gdb-{}", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let mut gdb = std::process::Command::new("gdb");
    gdb.args(["-nx", "-batch", "-x"])
        .arg(&path)
        .arg("--args")
        .arg(std::env::current_exe().unwrap())
        .args(["gdb_rwlock_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("RESTARTABLE_RWLOCK_GDB_CHILD", "4");
    let out = testkit::output_with_timeout(gdb, DEADLINE);
    assert!(out.status.code() != Some(127), "gdb must be installed (.ci/run installs it): {}", testkit::describe(&out));
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("REACHED_DONE"), "the read lock never completed under stepi:\n{text}");
    assert!(text.contains("writable=true"), "the readers' sum is back to zero:\n{text}");
    let slow: u64 = text
        .rsplit("RESULT slow=")
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no RESULT in:\n{text}"));
    assert!(slow >= 2, "the lock and the unlock both took the slow path:\n{text}");
    eprintln!("{}", text.lines().find(|l| l.starts_with("STEPS")).unwrap_or(""));
}
