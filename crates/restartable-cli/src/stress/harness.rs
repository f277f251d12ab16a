//! What every stress test shares: worker threads paced by a [`Pacer`] (the repetition count,
//! the time limit, and the periodic disturbances), a remote thread that runs concurrently with
//! the workers from their first operation to their last, and the disturbances' own threads
//! beside them (see [`super::disturbance`], which owns everything a disturbance does).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use super::Config;

/// A test's threads, as the workers, the remote thread and the disturbances see them.
pub struct Threads {
    /// The workers' thread ids (0 until a worker starts), for signals and affinity changes.
    tids: Box<[AtomicI32]>,
    /// Set when the last worker has finished.
    done: AtomicBool,
    /// Set once the remote thread has started its first round: workers wait for it.
    remote_started: AtomicBool,
    /// Workers still running.
    running: AtomicUsize,
    /// Checks made by the disturbances' threads that held.
    passed: AtomicU64,
    /// Broken invariants found by the disturbances' threads.
    failures: Mutex<Vec<String>>,
}

impl Threads {
    /// How many workers the test runs.
    pub fn workers(&self) -> usize {
        self.tids.len()
    }

    /// Worker `i`'s thread id: 0 before it starts and after it finishes.
    pub fn tid(&self, i: usize) -> i32 {
        self.tids[i].load(Relaxed)
    }

    /// Every worker's thread id (0 for one not running).
    pub fn tids(&self) -> impl Iterator<Item = i32> + '_ {
        self.tids.iter().map(|t| t.load(Relaxed))
    }

    /// Whether the last worker has finished.
    pub fn finished(&self) -> bool {
        self.done.load(SeqCst)
    }

    /// A check made beside the workers held.
    pub fn pass(&self) {
        self.passed.fetch_add(1, Relaxed);
    }

    /// A check made beside the workers failed.
    pub fn fail(&self, msg: String) {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(msg);
    }
}

/// Marks a worker finished when dropped (also when it unwinds).
struct Finish<'a> {
    shared: &'a Threads,
    me: usize,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.shared.tids[self.me].store(0, Relaxed);
        if self.shared.running.fetch_sub(1, SeqCst) == 1 {
            self.shared.done.store(true, SeqCst);
        }
    }
}

/// A worker's view of its run: call [`next`](Pacer::next) before each operation.
pub struct Pacer<'a> {
    cfg: &'a Config,
    shared: &'a Threads,
    /// The disturbances' period M, if workers do something every M-th operation.
    period: Option<u64>,
    deadline: Option<Instant>,
    me: usize,
    done: u64,
    rng: u64,
}

impl<'a> Pacer<'a> {
    /// Whether to do another operation (the count and the deadline allow it). Runs the
    /// periodic disturbances after every M-th operation.
    #[inline]
    pub fn next(&mut self) -> bool {
        if self.done >= self.cfg.reps {
            return false;
        }
        if self.done.is_multiple_of(64)
            && let Some(d) = self.deadline
            && Instant::now() >= d
        {
            return false;
        }
        if let Some(m) = self.period
            && self.done > 0
            && self.done.is_multiple_of(m)
        {
            self.disturb();
        }
        self.done += 1;
        true
    }

    /// The number of the operation [`next`](Self::next) just allowed (0-based).
    #[inline]
    pub fn k(&self) -> u64 {
        self.done.saturating_sub(1)
    }

    /// Operations done so far.
    pub fn ops(&self) -> u64 {
        self.done
    }

    /// This worker's number (0-based).
    pub fn worker(&self) -> usize {
        self.me
    }

    /// How many periods have passed (1 at the first disturbance).
    pub fn turn(&self) -> u64 {
        self.period.map_or(0, |m| self.done / m)
    }

    /// A pseudo-random number from this worker's own sequence.
    pub fn random(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }

    /// The test's threads.
    pub fn threads(&self) -> &'a Threads {
        self.shared
    }

    #[cold]
    fn disturb(&mut self) {
        let cfg = self.cfg;
        cfg.disturbance.at_period(self);
    }
}

/// What [`drive`] returns.
pub struct Run<R> {
    /// Each worker's result, in worker order.
    pub results: Vec<R>,
    /// Operations done by all workers.
    pub ops: u64,
    /// Rounds of the remote closure.
    pub remote_rounds: u64,
    /// Checks made by the disturbances' threads that held.
    pub checks_passed: u64,
    /// Broken invariants the disturbances' threads found.
    pub failures: Vec<String>,
}

/// One step of a xorshift64 sequence (never 0 from a non-zero state).
pub fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Run `work(worker, pacer)` on `cfg.threads` threads while `remote()` runs in a loop on
/// another thread, and the disturbances' [background](super::disturbance::Disturbance::background)
/// threads beside them.
///
/// The workers start only after the remote thread has begun its first round, and the remote
/// thread keeps going until the last worker has finished (then does one more round), so remote
/// operations overlap the workers' whole run.
pub fn drive<R: Send>(
    cfg: &Config,
    work: impl Fn(usize, &mut Pacer<'_>) -> R + Sync,
    mut remote: impl FnMut() + Send,
) -> std::io::Result<Run<R>> {
    let shared = Threads {
        tids: (0..cfg.threads).map(|_| AtomicI32::new(0)).collect(),
        done: AtomicBool::new(false),
        remote_started: AtomicBool::new(false),
        running: AtomicUsize::new(cfg.threads),
        passed: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
    };
    let shared = &shared;
    let work = &work;
    let period = cfg.disturbance.period();
    let time_limit = cfg.time_limit.map(Duration::from_secs_f64);
    let mut remote_rounds = 0u64;
    let rounds = &mut remote_rounds;
    let (results, ops) = std::thread::scope(|s| -> std::io::Result<(Vec<R>, u64)> {
        let remote_thread = std::thread::Builder::new().name("stress-remote".into()).spawn_scoped(s, move || {
            shared.remote_started.store(true, SeqCst);
            loop {
                let finished = shared.done.load(SeqCst);
                remote();
                *rounds += 1;
                if finished {
                    break;
                }
                std::thread::yield_now();
            }
        });
        remote_thread?;
        let mut beside = Vec::new();
        for b in cfg.disturbance.background() {
            match std::thread::Builder::new().name(b.name.into()).spawn_scoped(s, move || (b.body)(shared)) {
                Ok(h) => beside.push(h),
                Err(e) => {
                    shared.done.store(true, SeqCst);
                    return Err(e);
                }
            }
        }
        let mut handles = Vec::with_capacity(cfg.threads);
        for me in 0..cfg.threads {
            let spawned = std::thread::Builder::new().name(format!("stress-w{me}")).spawn_scoped(s, move || {
                shared.tids[me].store(gettid(), Relaxed);
                // Counts this worker out even if `work` panics, so the remote thread stops.
                let _finish = Finish { shared, me };
                while !shared.remote_started.load(SeqCst) {
                    std::thread::yield_now();
                }
                let mut pacer = Pacer {
                    cfg,
                    shared,
                    period,
                    deadline: time_limit.map(|d| Instant::now() + d),
                    me,
                    done: 0,
                    rng: 0x9e37_79b9_7f4a_7c15 ^ ((me as u64 + 1) << 17),
                };
                let r = work(me, &mut pacer);
                (r, pacer.ops())
            });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // The workers already started finish their count; then everything stops.
                    let missing = cfg.threads - me;
                    if shared.running.fetch_sub(missing, SeqCst) == missing {
                        shared.done.store(true, SeqCst);
                    }
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        let mut out = Vec::with_capacity(cfg.threads);
        let mut ops = 0;
        for h in handles {
            match h.join() {
                Ok((r, n)) => {
                    ops += n;
                    out.push(r);
                }
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        for h in beside {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        Ok((out, ops))
    })?;
    let failures = std::mem::take(&mut *shared.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    Ok(Run { results, ops, remote_rounds, checks_passed: shared.passed.load(Relaxed), failures })
}

fn gettid() -> i32 {
    // SAFETY: gettid(2) has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}
