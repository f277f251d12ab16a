//! Never hang, crash or leak: signal handlers that use a collection, `fork` while other threads
//! hold guards, panicking drops, zero-sized items. (Allocation under a guard and re-entrant first
//! use are in `tests/alloc_hook.rs`, which installs a global allocator built on the library.)
//!
//! Every scenario that could hang runs in a child process (this test binary again) with a
//! deadline, so a regression fails instead of hanging CI; and each runs in the three modes: fast
//! with glibc's registration, fast with our own (`GLIBC_TUNABLES=glibc.pthread.rseq=0`), and
//! degraded (`RESTARTABLE_FORCE_DEGRADED=1`). Each checks conservation exactly.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use restartable::ops::Cpu;
use restartable::{Buffer, Counter, MemcpyBuffer, SpinLock, Stack};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

const DEADLINE: Duration = Duration::from_secs(90);
const MODES: [&[(&str, &str)]; 3] =
    [&[], &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], &[("RESTARTABLE_FORCE_DEGRADED", "1")]];

/// Run child test `name` in every mode; each must succeed before the deadline.
fn in_children(name: &str) {
    for env in MODES {
        let started = Instant::now();
        let out = testkit::run_self_as_child_timeout(name, env, &[], DEADLINE);
        assert!(out.status.success(), "{name} {env:?}:\n{}", testkit::describe(&out));
        eprintln!("{name} {env:?}: ok in {:.1?}", started.elapsed());
    }
}

// ---------------------------------------------------------------------------------------------
// Signal handlers that use a collection while their thread is inside an operation on it.

/// The CPU the storms run on: the first this process may run on (CPU 0 may be outside a
/// cpuset's mask). The same for every thread, pinned or not: a thread is only ever pinned to it.
fn the_cpu() -> usize {
    static CPU: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| testkit::affinity::allowed()[0])
}

/// Pin the calling thread to [`the_cpu`].
fn pin_to_the_cpu() {
    testkit::affinity::pin(&[the_cpu()]);
}

/// Block (or unblock) SIGALRM in the calling thread.
fn mask_alarm(block: bool) {
    // SAFETY: a valid signal set and a null old set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
        let how = if block { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        assert_eq!(libc::pthread_sigmask(how, &set, std::ptr::null_mut()), 0);
    }
}

/// The signal storm's shape: the main thread, pinned to `the_cpu()`, runs `work` (operations on the
/// structure) for `secs`, with SIGALRM to it every 50 us whose handler operates on the same
/// structure, while a second thread (which blocks SIGALRM) runs `remote` in a loop: remote
/// operations on that CPU, which stop it and push the main thread onto its slow path, where it
/// holds its guard when the signal arrives. Arms the handler first, and on return it is
/// disarmed and no handler is running (the caller may read totals). Returns how many times the
/// handler ran.
fn storm(secs: f64, handler: extern "C" fn(libc::c_int), mut work: impl FnMut(), remote: impl Fn() + Sync) -> u64 {
    pin_to_the_cpu();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            mask_alarm(true);
            while !done.load(Relaxed) {
                remote();
            }
        });
        testkit::signal::on_alarm(handler);
        ARMED.arm();
        let timer = testkit::signal::ThreadTimer::every(Duration::from_micros(50));
        let start = Instant::now();
        // At least `secs`, and until the handler has run often enough (on a loaded machine
        // signals coalesce: a thread that rarely runs sees few), at most a minute.
        while (start.elapsed().as_secs_f64() < secs || HANDLED.load(SeqCst) < 1000) && start.elapsed().as_secs() < 60 {
            for _ in 0..256 {
                work();
            }
        }
        drop(timer);
        // Wait for handlers before the totals are read. (The timer signals only this thread;
        // the wait keeps them exact for a handler on any other thread too, e.g. one run by a
        // SIGALRM sent to the whole process.)
        ARMED.disarm();
        done.store(true, Relaxed);
    });
    HANDLED.load(SeqCst)
}

static HANDLED: AtomicU64 = AtomicU64::new(0);
/// Whether the handler is armed (the structures it uses exist, and the test is not yet reading
/// its totals).
static ARMED: testkit::signal::Armed = testkit::signal::Armed::new();

static COUNTER: OnceLock<Counter> = OnceLock::new();
static HANDLER_ADDED: AtomicU64 = AtomicU64::new(0);
static HANDLER_TAKEN: AtomicU64 = AtomicU64::new(0);

extern "C" fn counter_handler(_: libc::c_int) {
    ARMED.run(|| {
        let n = HANDLED.fetch_add(1, SeqCst);
        let c = COUNTER.get().expect("armed");
        c.add(1);
        HANDLER_ADDED.fetch_add(1, SeqCst);
        if n.is_multiple_of(16) {
            // Sum-and-reset from the handler too: it never waits for a guard its thread holds.
            HANDLER_TAKEN.fetch_add(c.take(), SeqCst);
        }
    });
}

#[test]
fn signal_handler_counter_child() {
    if !testkit::is_child() {
        return;
    }
    let c = COUNTER.get_or_init(Counter::new);
    let taken = AtomicU64::new(0);
    let mut added = 0u64;
    let handled = storm(
        1.0,
        counter_handler,
        || {
            c.add(1);
            added += 1;
        },
        || {
            if let Ok(v) = c.take_cpu(the_cpu()) {
                taken.fetch_add(v, Relaxed);
            }
        },
    );
    let total = taken.load(Relaxed) + HANDLER_TAKEN.load(SeqCst) + c.take();
    let expected = added + HANDLER_ADDED.load(SeqCst);
    println!(
        "{}: {added} adds, {handled} in the handler, {} taken remotely: total {total}",
        restartable::mode(),
        taken.load(Relaxed)
    );
    assert!(handled > 100, "the storm must interrupt the adds ({handled})");
    assert_eq!(total, expected, "adds lost or doubled");
}

/// A handler adds to a `Counter` while its thread is inside `Counter::add` (on `the_cpu()`, whose
/// guard another thread keeps taking): no deadlock, nothing lost.
#[test]
fn signal_handler_uses_the_counter_its_thread_is_in() {
    in_children("signal_handler_counter_child");
}

/// The boxes of the buffer scenario: `ITEMS` boxes, each holding its own number, move between
/// the buffer, the main thread, the handler and the remote thread, and must all be accounted for
/// at the end. The handler never allocates: it only moves boxes.
const ITEMS: u64 = 96;
static BUFFER: OnceLock<Buffer<u64>> = OnceLock::new();
/// Boxes the handler holds (could not push back: the buffer was full or out of its reach).
static HANDLER_KEPT: [AtomicPtr<u64>; 64] = [const { AtomicPtr::new(std::ptr::null_mut()) }; 64];

extern "C" fn buffer_handler(_: libc::c_int) {
    ARMED.run(|| {
        HANDLED.fetch_add(1, SeqCst);
        let b = BUFFER.get().expect("armed");
        // Give back a box kept earlier, or take one and put it back.
        if let Some(slot) = HANDLER_KEPT.iter().find(|p| !p.load(SeqCst).is_null()) {
            // SAFETY: the pointer came from `Box::into_raw` below, and is taken out exactly once:
            // the swap is the only take, and handlers run one at a time (only on the storm's
            // thread, with SIGALRM blocked while one runs), so none took it since the find.
            let item = unsafe { Box::from_raw(slot.swap(std::ptr::null_mut(), SeqCst)) };
            if let Err(item) = b.push(item) {
                slot.store(Box::into_raw(item), SeqCst);
            }
        } else if let Some(item) = b.pop()
            && let Err(item) = b.push(item)
        {
            let free = HANDLER_KEPT.iter().find(|p| p.load(SeqCst).is_null()).expect("room");
            free.store(Box::into_raw(item), SeqCst);
        }
    });
}

#[test]
fn signal_handler_buffer_child() {
    if !testkit::is_child() {
        return;
    }
    let b = BUFFER.get_or_init(|| Buffer::with_capacity(64));
    let mut mine: Vec<Box<u64>> = (0..ITEMS).map(Box::new).collect();
    let remote_kept = std::sync::Mutex::new(Vec::new());
    let handled = storm(
        1.0,
        buffer_handler,
        || {
            if let Some(item) = mine.pop()
                && let Err(item) = b.push(item)
            {
                mine.push(item);
            }
            if let Some(item) = b.pop() {
                mine.push(item);
            }
        },
        || {
            // Drain that CPU through its guard, then give the items back (they land on this
            // thread's CPU's buffer, or stay here).
            if let Ok(items) = b.drain_cpu(the_cpu()) {
                let mut kept = remote_kept.lock().unwrap();
                for item in items {
                    if let Err(item) = b.push(item) {
                        kept.push(item);
                    }
                }
            }
        },
    );
    let mut all: Vec<u64> = b.drain_all().into_iter().map(|x| *x).collect();
    all.extend(mine.into_iter().map(|x| *x));
    all.extend(remote_kept.into_inner().unwrap().into_iter().map(|x| *x));
    for slot in &HANDLER_KEPT {
        let p = slot.swap(std::ptr::null_mut(), SeqCst);
        if !p.is_null() {
            // SAFETY: from `Box::into_raw` in the handler, taken once.
            all.push(*unsafe { Box::from_raw(p) });
        }
    }
    all.sort_unstable();
    println!("{}: {handled} handler runs, {} boxes accounted for", restartable::mode(), all.len());
    assert!(handled > 100, "the storm must interrupt the work ({handled})");
    assert_eq!(all, (0..ITEMS).collect::<Vec<_>>(), "every box exactly once");
}

/// A handler pops and pushes a `Buffer` while its thread is inside a push or pop of the same
/// buffer (on `the_cpu()`, which another thread keeps draining through its guard): no deadlock, every
/// item exactly once.
#[test]
fn signal_handler_uses_the_buffer_its_thread_is_in() {
    in_children("signal_handler_buffer_child");
}

static MEMCPY: OnceLock<MemcpyBuffer<[u64; 4]>> = OnceLock::new();
/// Sum of the items the handler could not push back (it adds the popped item's first word).
static HANDLER_HELD_SUM: AtomicU64 = AtomicU64::new(0);
static HANDLER_HELD_COUNT: AtomicU64 = AtomicU64::new(0);

/// A torn copy would show: every word of an item holds the same value.
fn item(v: u64) -> [u64; 4] {
    [v, v, v, v]
}

extern "C" fn memcpy_handler(_: libc::c_int) {
    ARMED.run(|| {
        HANDLED.fetch_add(1, SeqCst);
        let b = MEMCPY.get().expect("armed");
        if let Some(x) = b.pop() {
            assert!(x.iter().all(|w| *w == x[0]), "torn item {x:?}");
            if b.push(x).is_err() {
                HANDLER_HELD_SUM.fetch_add(x[0], SeqCst);
                HANDLER_HELD_COUNT.fetch_add(1, SeqCst);
            }
        }
    });
}

#[test]
fn signal_handler_memcpy_child() {
    if !testkit::is_child() {
        return;
    }
    let b = MEMCPY.get_or_init(|| MemcpyBuffer::with_capacity(64));
    let mut mine: Vec<[u64; 4]> = (1..=ITEMS).map(item).collect();
    let remote_kept = std::sync::Mutex::new(Vec::new());
    let handled = storm(
        1.0,
        memcpy_handler,
        || {
            if let Some(x) = mine.pop()
                && let Err(x) = b.push(x)
            {
                mine.push(x);
            }
            if let Some(x) = b.pop() {
                mine.push(x);
            }
        },
        || {
            if let Ok(items) = b.drain_cpu(the_cpu()) {
                let mut kept = remote_kept.lock().unwrap();
                for x in items {
                    if let Err(x) = b.push(x) {
                        kept.push(x);
                    }
                }
            }
        },
    );
    let mut all = b.drain_all();
    all.extend(mine);
    all.extend(remote_kept.into_inner().unwrap());
    assert!(all.iter().all(|x| x.iter().all(|w| *w == x[0])), "a torn item");
    let sum: u64 = all.iter().map(|x| x[0]).sum::<u64>() + HANDLER_HELD_SUM.load(SeqCst);
    let count = all.len() as u64 + HANDLER_HELD_COUNT.load(SeqCst);
    println!("{}: {handled} handler runs, {count} items", restartable::mode());
    assert!(handled > 100, "the storm must interrupt the work ({handled})");
    assert_eq!((count, sum), (ITEMS, ITEMS * (ITEMS + 1) / 2), "every item exactly once");
}

/// The same for a `MemcpyBuffer`: the handler copies items out and back while its thread is
/// inside a copy on the same CPU.
#[test]
fn signal_handler_uses_the_memcpy_buffer_its_thread_is_in() {
    in_children("signal_handler_memcpy_child");
}

/// Slots of the raw-op scenario: one word per CPU, written by raw sections on that CPU and under
/// that CPU's process-wide guard.
static SLOTS: OnceLock<Vec<std::sync::atomic::AtomicUsize>> = OnceLock::new();
static HANDLER_RAW_ADDS: AtomicU64 = AtomicU64::new(0);

/// One add through the raw driver: the section, else an op vector under the stopped CPU.
fn raw_add(slots: &[std::sync::atomic::AtomicUsize]) {
    let _ = restartable::retry::run::<Cpu, _>(
        // SAFETY: slot `i` is written only by sections on `i` or under `i`'s guard.
        |i| unsafe { restartable::ops::load_add_store::<Cpu>(&slots[i], 1, i) },
        |stop| {
            let mut v = restartable::opv::OpVec::new();
            v.add_word(&slots[stop.index()], 1);
            // SAFETY: as above; `stop` holds the slot's guard.
            unsafe { v.run_stopped(stop) }.expect("a one-word add validates");
        },
    );
}

extern "C" fn raw_handler(_: libc::c_int) {
    ARMED.run(|| {
        HANDLED.fetch_add(1, SeqCst);
        let slots = SLOTS.get().expect("armed");
        assert!(restartable::current_cpu() < slots.len());
        raw_add(slots);
        HANDLER_RAW_ADDS.fetch_add(1, SeqCst);
        // Stopping a CPU from a handler never waits for a guard its thread holds: it gets `Busy`.
        match restartable::guard::stop::<Cpu>(the_cpu()) {
            Ok(stop) => drop(stop),
            Err(restartable::guard::GuardError::Busy { .. }) => {}
            Err(e) => panic!("stop from a handler: {e}"),
        }
    });
}

#[test]
fn signal_handler_raw_child() {
    if !testkit::is_child() {
        return;
    }
    let slots = SLOTS.get_or_init(|| (0..restartable::possible_cpus()).map(|_| Default::default()).collect());
    let mut added = 0u64;
    let remote_added = AtomicU64::new(0);
    let handled = storm(
        1.0,
        raw_handler,
        || {
            raw_add(slots);
            added += 1;
        },
        || {
            // Op vectors on `the_cpu()` from the remote thread: the main thread's sections restart,
            // and its slow path waits for (then holds) its process-wide guard.
            let mut v = restartable::opv::OpVec::new();
            v.add_word(&slots[the_cpu()], 1);
            // SAFETY: slot `the_cpu()` is written only by sections on that CPU or under its guard.
            unsafe { v.run_on(the_cpu()) }.expect("run_on");
            remote_added.fetch_add(1, Relaxed);
        },
    );
    let total: u64 = slots.iter().map(|s| s.load(SeqCst) as u64).sum();
    let expected = added + HANDLER_RAW_ADDS.load(SeqCst) + remote_added.load(Relaxed);
    println!("{}: {added} adds, {handled} handler runs, total {total}", restartable::mode());
    assert!(handled > 100, "the storm must interrupt the adds ({handled})");
    assert_eq!(total, expected, "adds lost or doubled");
}

/// The raw layer in a handler: `current_cpu`, raw ops through `retry::run` (an op vector under
/// the stop as slow path), and `guard::stop`, while the thread is inside the same, holding its
/// CPU's process-wide guard that another thread keeps taking with `OpVec::run_on`.
#[test]
fn signal_handler_uses_raw_ops_and_stops() {
    in_children("signal_handler_raw_child");
}

// ---------------------------------------------------------------------------------------------
// fork while other threads hold guards.

/// What a forked child checks: only the forking thread exists there, yet every index can be
/// stopped and every structure used, with exact totals. Exit status 0 only if all holds.
fn child_after_fork(c: &Counter, s: &Stack<u64>, b: &Buffer<u64>) -> i32 {
    // Guards held by the parent's other threads at the fork belong to nobody here.
    for cpu in 0..restartable::possible_cpus() {
        if restartable::guard::stop::<Cpu>(cpu).is_err() {
            return 2;
        }
    }
    let _ = c.take();
    for _ in 0..10_000 {
        c.add(1);
    }
    if c.take() != 10_000 {
        return 3;
    }
    let _ = s.drain_all();
    (0..100).for_each(|i| s.push(i));
    let mut got: Vec<u64> = s.drain_all();
    got.sort_unstable();
    if got != (0..100).collect::<Vec<_>>() {
        return 4;
    }
    let _ = b.drain_all();
    if b.push(Box::new(7)).is_err() || b.drain_all().len() != 1 {
        return 5;
    }
    0
}

#[test]
fn fork_child() {
    if !testkit::is_child() {
        return;
    }
    let c = Counter::new();
    let s: Stack<u64> = Stack::new();
    let b: Buffer<u64> = Buffer::with_capacity(8);
    let done = AtomicBool::new(false);
    let forks = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // Threads that take guards all the time: sums and drains through each structure's
        // guards, and the process-wide guard of every CPU held for a while.
        scope.spawn(|| {
            while !done.load(Relaxed) {
                c.add(1);
                let _ = c.take();
                s.push(1);
                let _ = s.drain_all();
                let _ = b.push(Box::new(1));
                let _ = b.drain_all();
            }
        });
        scope.spawn(|| {
            while !done.load(Relaxed) {
                for cpu in 0..restartable::possible_cpus() {
                    if let Ok(stop) = restartable::guard::stop::<Cpu>(cpu) {
                        std::thread::sleep(Duration::from_micros(200));
                        drop(stop);
                    }
                }
            }
        });
        for _ in 0..40 {
            // SAFETY: the child only runs `child_after_fork` (which allocates through malloc:
            // glibc makes that safe after fork) and then `_exit`s.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let code = child_after_fork(&c, &s, &b);
                // SAFETY: leaves the child at once, running no destructors of the parent's state.
                unsafe { libc::_exit(code) };
            }
            forks.fetch_add(1, Relaxed);
            let status = wait_with_deadline(pid, Duration::from_secs(20));
            assert_eq!(status, Some(0), "forked child {pid}: exit status (None: hung and killed)");
            std::thread::sleep(Duration::from_millis(2));
        }
        done.store(true, Relaxed);
    });
    // The parent goes on working too.
    let _ = c.take();
    (0..1000).for_each(|_| c.add(1));
    assert_eq!(c.take(), 1000);
    println!("{}: {} forks, every child worked", restartable::mode(), forks.load(Relaxed));
}

/// The exit code of child `pid`, or `None` if it had to be killed after `deadline`.
fn wait_with_deadline(pid: libc::pid_t, deadline: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if start.elapsed() > deadline {
            // SAFETY: signals and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `fork` while other threads hold guards (of structures and the process-wide ones): every
/// child can stop every index and use every structure, and the parent goes on.
#[test]
fn fork_while_other_threads_hold_guards() {
    in_children("fork_child");
}

// ---------------------------------------------------------------------------------------------
// Panicking drops: like a `Vec`, every item is dropped and the (first) panic resumes.

static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Bomb(bool);

impl Drop for Bomb {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, SeqCst);
        if self.0 {
            panic!("deliberate panic in Drop");
        }
    }
}

/// Drop `what` (which holds `n` bombs, one of which panics): all `n` are dropped, and the panic
/// comes out.
fn all_dropped_despite_a_panic(what: impl FnOnce(), n: u64, name: &str) {
    DROPPED.store(0, SeqCst);
    let r = catch_unwind(AssertUnwindSafe(what));
    assert!(r.is_err(), "{name}: the panic must propagate");
    assert_eq!(DROPPED.load(SeqCst), n, "{name}: every item dropped exactly once");
}

#[test]
fn panicking_drops_drop_everything_else() {
    // Serialised: DROPPED is shared.
    let stack: Stack<Bomb> = Stack::new();
    (0..50).for_each(|i| stack.push(Bomb(i == 20)));
    all_dropped_despite_a_panic(move || drop(stack), 50, "Stack");

    let buffer: Buffer<Bomb> = Buffer::with_capacity(64);
    (0..50).for_each(|i| assert!(buffer.push(Box::new(Bomb(i == 20))).is_ok()));
    all_dropped_despite_a_panic(move || drop(buffer), 50, "Buffer");

    let n = restartable::possible_cpus() as u64;
    let lock: SpinLock<Bomb> = SpinLock::new(|cpu| Bomb(cpu == 0));
    all_dropped_despite_a_panic(move || drop(lock), n, "SpinLock");

    let per_cpu: restartable::PerCpu<Bomb> = restartable::PerCpu::new(|cpu| Bomb(cpu == 0));
    all_dropped_despite_a_panic(move || drop(per_cpu), n, "PerCpu");
}

// ---------------------------------------------------------------------------------------------
// Zero-sized items.

#[test]
fn memcpy_buffer_of_a_zero_sized_type() {
    let b: MemcpyBuffer<()> = MemcpyBuffer::with_capacity(5);
    let mut pushed = 0;
    while b.push(()).is_ok() {
        pushed += 1;
        assert!(pushed <= 5 * restartable::possible_cpus(), "the capacity must bound pushes");
    }
    let mut popped = 0;
    while b.pop().is_some() {
        popped += 1;
    }
    let drained = b.drain_all().len();
    assert_eq!(popped + drained, pushed, "every () exactly once");
    assert!(pushed >= 5);
}
