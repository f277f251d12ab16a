//! What every stress test shares: worker threads paced by a [`Pacer`] (the repetition count,
//! the time limit, and the every-M-th-op disturbances: `sched_yield`, SIGUSR1, sleep), a remote
//! thread that runs concurrently with the workers from their first operation to their last,
//! and the affinity-churn thread that moves workers between CPUs.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// How the workers of one test run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Worker threads.
    pub threads: usize,
    /// Operations per worker.
    pub reps: u64,
    /// Stop early at this instant (`--time-limit`).
    pub time_limit: Option<Duration>,
    /// Every M-th operation of each worker is followed by the disturbances below.
    pub every: u64,
    /// `sched_yield` at each disturbance.
    pub yield_now: bool,
    /// SIGUSR1 at each disturbance: to the process (any thread) or to another worker, by turns.
    pub signal: bool,
    /// Sleep at each disturbance.
    pub sleep: Option<Duration>,
    /// Run the affinity-churn thread.
    pub affinity_churn: bool,
}

/// State shared by a test's threads.
struct Shared {
    /// The workers' thread ids (0 until a worker starts), for signals and affinity changes.
    tids: Box<[AtomicI32]>,
    /// Set when the last worker has finished.
    done: AtomicBool,
    /// Set once the remote thread has started its first round: workers wait for it.
    remote_started: AtomicBool,
    /// Workers still running.
    running: AtomicUsize,
}

/// Marks a worker finished when dropped (also when it unwinds).
struct Finish<'a> {
    shared: &'a Shared,
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

/// A worker's view of its plan: call [`next`](Pacer::next) before each operation.
pub struct Pacer<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    deadline: Option<Instant>,
    me: usize,
    done: u64,
    rng: u64,
}

impl Pacer<'_> {
    /// Whether to do another operation (the count and the deadline allow it). Runs the
    /// disturbances after every M-th operation.
    #[inline]
    pub fn next(&mut self) -> bool {
        if self.done >= self.plan.reps {
            return false;
        }
        if self.done.is_multiple_of(64)
            && let Some(d) = self.deadline
            && Instant::now() >= d
        {
            return false;
        }
        if self.done > 0 && self.done.is_multiple_of(self.plan.every) {
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

    #[cold]
    fn disturb(&mut self) {
        if self.plan.yield_now {
            std::thread::yield_now();
        }
        if self.plan.signal {
            self.send_signal();
        }
        if let Some(d) = self.plan.sleep {
            std::thread::sleep(d);
        }
    }

    fn send_signal(&mut self) {
        let n = self.shared.tids.len();
        let turn = self.done / self.plan.every;
        if turn.is_multiple_of(2) || n < 2 {
            // To the process: the kernel picks a thread that does not block it, often one that
            // is running (and perhaps inside a critical section).
            // SAFETY: kill(2) with our own pid and a signal whose handler is installed.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
        } else {
            let other = (self.me + 1 + (xorshift(&mut self.rng) as usize % (n - 1))) % n;
            let tid = self.shared.tids[other].load(Relaxed);
            if tid != 0 {
                // SAFETY: tgkill(2) with our own pid: it can only reach a thread of this process
                // (a worker, or a thread that reused an exited worker's id), all of which
                // handle SIGUSR1 with the empty handler.
                unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
            }
        }
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
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// Install the empty SIGUSR1 handler (once per process, before any signal is sent).
pub fn install_signal_handler() -> std::io::Result<()> {
    static DONE: OnceLock<i32> = OnceLock::new();
    let rc = *DONE.get_or_init(|| {
        // SAFETY: a zeroed sigaction with a valid handler, an empty mask and SA_RESTART is a
        // valid argument; the handler does nothing, so it is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL)
            }
        }
    });
    if rc == 0 { Ok(()) } else { Err(std::io::Error::from_raw_os_error(rc)) }
}

/// Run `work(worker, pacer)` on `plan.threads` threads while `remote()` runs in a loop on
/// another thread (and, with `affinity_churn`, a third thread moves the workers between CPUs).
///
/// The workers start only after the remote thread has begun its first round, and the remote
/// thread keeps going until the last worker has finished (then does one more round), so remote
/// operations overlap the workers' whole run.
pub fn drive<R: Send>(
    plan: &Plan,
    work: impl Fn(usize, &mut Pacer<'_>) -> R + Sync,
    mut remote: impl FnMut() + Send,
) -> std::io::Result<Run<R>> {
    let shared = Shared {
        tids: (0..plan.threads).map(|_| AtomicI32::new(0)).collect(),
        done: AtomicBool::new(false),
        remote_started: AtomicBool::new(false),
        running: AtomicUsize::new(plan.threads),
    };
    let shared = &shared;
    let work = &work;
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
        let churn = if plan.affinity_churn {
            match std::thread::Builder::new().name("stress-churn".into()).spawn_scoped(s, move || churn(shared)) {
                Ok(h) => Some(h),
                Err(e) => {
                    shared.done.store(true, SeqCst);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let mut handles = Vec::with_capacity(plan.threads);
        for me in 0..plan.threads {
            let spawned = std::thread::Builder::new().name(format!("stress-w{me}")).spawn_scoped(s, move || {
                shared.tids[me].store(gettid(), Relaxed);
                // Counts this worker out even if `work` panics, so the remote thread stops.
                let _finish = Finish { shared, me };
                while !shared.remote_started.load(SeqCst) {
                    std::thread::yield_now();
                }
                let mut pacer = Pacer {
                    plan,
                    shared,
                    deadline: plan.time_limit.map(|d| Instant::now() + d),
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
                    let missing = plan.threads - me;
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
        let mut out = Vec::with_capacity(plan.threads);
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
        if let Some(h) = churn
            && let Err(p) = h.join()
        {
            std::panic::resume_unwind(p);
        }
        Ok((out, ops))
    })?;
    Ok(Run { results, ops, remote_rounds })
}

fn gettid() -> i32 {
    // SAFETY: gettid(2) has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The affinity-churn thread: every 200 µs pin each running worker to a random allowed CPU
/// (every fourth round, let them run anywhere again), until the workers are done.
fn churn(shared: &Shared) {
    let allowed = crate::cpus::allowed();
    if allowed.is_empty() {
        return;
    }
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut round = 0u64;
    while !shared.done.load(SeqCst) {
        for t in shared.tids.iter() {
            let tid = t.load(Relaxed);
            if tid == 0 {
                continue;
            }
            if round % 4 == 3 {
                crate::cpus::set_affinity(tid, &allowed);
            } else {
                let c = allowed[xorshift(&mut rng) as usize % allowed.len()];
                crate::cpus::set_affinity(tid, &[c]);
            }
        }
        round += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
}
