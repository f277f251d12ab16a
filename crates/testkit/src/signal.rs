//! Signal storms aimed at one thread, and handlers that can be switched off and waited for.
//!
//! A test that checks what happens when a handler interrupts an operation needs the signal on
//! the thread doing the operations: an interval timer's (`setitimer`) signal goes to the whole
//! process, and the kernel mostly hands it to the group leader (libtest's main thread, which
//! does not block it), where the handler runs *beside* the operations instead of inside them.
//! [`ThreadTimer`] aims a POSIX timer at the calling thread (`SIGEV_THREAD_ID`).
//!
//! A test that reads totals after the storm must also know that no handler is still running
//! (one may have passed its "armed?" check just before the test switched it off): [`Armed`]
//! counts handlers in and out, and [`Armed::disarm`] waits for the last one.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
//! static ARMED: testkit::signal::Armed = testkit::signal::Armed::new();
//! static RUNS: AtomicU64 = AtomicU64::new(0);
//! extern "C" fn handler(_: libc::c_int) {
//!     ARMED.run(|| {
//!         RUNS.fetch_add(1, Relaxed);
//!     });
//! }
//! testkit::signal::on_alarm(handler);
//! ARMED.arm();
//! let timer = testkit::signal::ThreadTimer::every(std::time::Duration::from_micros(100));
//! while RUNS.load(Relaxed) < 10 {
//!     std::hint::spin_loop();
//! }
//! drop(timer);
//! ARMED.disarm(); // no handler runs its body from here on
//! let runs = RUNS.load(Relaxed);
//! assert!(runs >= 10);
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

/// Install `handler` for SIGALRM, with `SA_RESTART` (interrupted system calls resume).
///
/// # Panics
/// If `sigaction` fails.
pub fn on_alarm(handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction (empty mask, no flags but SA_RESTART) with a valid handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_RESTART;
        assert_eq!(libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()), 0);
    }
}

/// SIGALRM to the thread that made it, periodically, until dropped.
///
/// A signal already queued when the timer is dropped may still arrive, on that thread: its
/// handler runs to completion before the thread goes on.
#[derive(Debug)]
pub struct ThreadTimer(libc::timer_t);

impl ThreadTimer {
    /// SIGALRM to the calling thread every `interval` (at least 1 µs), first after `interval`.
    ///
    /// # Panics
    /// If the timer cannot be made or set.
    pub fn every(interval: Duration) -> ThreadTimer {
        let interval = interval.max(Duration::from_micros(1));
        let ts = libc::timespec { tv_sec: interval.as_secs() as libc::time_t, tv_nsec: interval.subsec_nanos().into() };
        // SAFETY: a zeroed sigevent naming a signal and a live thread (this one) is valid for
        // `timer_create`, whose out-pointer is a valid `timer_t`; the interval is a valid
        // `itimerspec` for the timer just created.
        unsafe {
            let mut ev: libc::sigevent = std::mem::zeroed();
            ev.sigev_notify = libc::SIGEV_THREAD_ID;
            ev.sigev_signo = libc::SIGALRM;
            ev.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = std::ptr::null_mut();
            assert_eq!(libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer), 0, "timer_create");
            let it = libc::itimerspec { it_interval: ts, it_value: ts };
            assert_eq!(libc::timer_settime(timer, 0, &it, std::ptr::null_mut()), 0, "timer_settime");
            ThreadTimer(timer)
        }
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: the timer came from `timer_create` in `every` and is deleted once, here.
        let rc = unsafe { libc::timer_delete(self.0) };
        debug_assert_eq!(rc, 0);
    }
}

/// A handler's on/off switch that knows which handlers are inside their body.
#[derive(Debug, Default)]
pub struct Armed {
    armed: AtomicBool,
    inside: AtomicUsize,
}

impl Armed {
    /// Disarmed, no handler inside.
    pub const fn new() -> Armed {
        Armed { armed: AtomicBool::new(false), inside: AtomicUsize::new(0) }
    }

    /// From now on, [`run`](Self::run) runs its body.
    pub fn arm(&self) {
        self.armed.store(true, SeqCst);
    }

    /// Whether armed (for work outside handlers that follows the same switch).
    pub fn is_armed(&self) -> bool {
        self.armed.load(SeqCst)
    }

    /// A handler's body: `work` if armed, else nothing. Async-signal-safe itself (two atomic
    /// operations around `work`).
    pub fn run(&self, work: impl FnOnce()) {
        // SeqCst with `disarm`'s: if this load sees `armed` still true, it comes before
        // `disarm`'s store of false in the single total order, hence so does this increment,
        // and `disarm`'s later load of `inside` sees it (and waits for the decrement, which
        // publishes `work`'s effects to it).
        self.inside.fetch_add(1, SeqCst);
        if self.armed.load(SeqCst) {
            work();
        }
        self.inside.fetch_sub(1, SeqCst);
    }

    /// Disarm, then wait until no handler is inside its body: whatever is read afterwards
    /// includes everything every handler did. Never call it from a handler that is itself
    /// inside [`run`](Self::run) (it would wait for itself).
    pub fn disarm(&self) {
        self.armed.store(false, SeqCst);
        while self.inside.load(SeqCst) != 0 {
            std::thread::yield_now();
        }
    }
}
