//! Disturbances: what a stress run does to its workers besides letting them run. Delays inside
//! every critical section (`--inject-point`), actions after every M-th operation of each worker
//! (`--yield`, `--signal`, `--signal-ops`, `--sleep-ms`, paced by `--every`), and threads beside
//! the workers (`--affinity-churn`, `--fork`).
//!
//! Two of them use the structure under test, through the [`Hooks`] a test arms for its run
//! ([`with_hooks`]): `--signal-ops` makes the SIGUSR1 handler itself operate on the structure
//! (the async-signal-safe operations: counter adds and takes, buffer and memcpy-buffer pops and
//! pushes; the test counts them in its conservation check), and `--fork` forks children that
//! check the structure in a process where only the forking thread exists (every guard that
//! another thread held at the fork must be free there) and exit; a child that fails or hangs is
//! a broken invariant.
//!
//! [`Disturbance`] is their one description. clap parses it (flattened into `stress`'s
//! arguments), the harness runs it as it is (through the three hooks below), the matrix's
//! option groups and the tour build it with its builder methods, and [`Disturbance::argv`]
//! renders it back to arguments, for the matrix's child processes and for every reproduce
//! line; the JSON report's fields are derived from that same rendering.
//!
//! # Adding a disturbance
//!
//! 1. A field in [`Disturbance`]: its flag, with clap attributes and a doc comment (its
//!    `--help` text), and its line in [`argv`](Disturbance::argv). The JSON report picks it up
//!    from there; the round-trip test below fails until `argv` renders it and the full sample
//!    sets it.
//! 2. One function in this module, called from the hook of its kind:
//!    - something a worker does after every M-th operation: [`Disturbance::at_period`] (the
//!      function gets the worker's [`Pacer`]: its number, the turn, a random number, the test's
//!      [`Threads`]); then also count the field in [`Disturbance::periodic`] and add it to the
//!      `periodic` argument group, so that `--every` applies to it;
//!    - a thread that runs beside the workers for the whole test:
//!      [`Disturbance::background`] (the function gets the test's [`Threads`], and returns
//!      once [`Threads::finished`]);
//!    - process-wide set-up before the first test (a signal handler, a global switch):
//!      [`Disturbance::prepare`], undone in [`Disturbance::finish`].

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::harness::{Pacer, Threads, xorshift};

/// `--every` when a periodic disturbance is asked for without it.
pub const DEFAULT_EVERY: u64 = 64;
/// `--inject-loops` when `--inject-point` comes without it.
pub const DEFAULT_INJECT_LOOPS: u64 = 10_000;

/// Every disturbance of a stress run; the default is none.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("periodic").multiple(true)))]
pub struct Disturbance {
    /// Spin inside every critical section at this point (1-8; see --list-points). Needs the
    /// `inject` feature.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u8).range(1..=8))]
    pub inject_point: Option<u8>,

    /// Spin count at the injection point [default: 10000].
    #[arg(long, value_name = "L", requires = "inject_point", value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub inject_loops: Option<u64>,

    /// Disturb after every M-th operation of each worker (with --yield, --signal, --sleep-ms)
    /// [default: 64].
    #[arg(long, value_name = "M", requires = "periodic", value_parser = clap::value_parser!(u64).range(1..))]
    pub every: Option<u64>,

    /// sched_yield at each disturbance.
    #[arg(long = "yield", group = "periodic")]
    pub yield_now: bool,

    /// Send SIGUSR1 (empty handler) at each disturbance: to the process and to another worker
    /// thread by turns, so that signals land inside critical sections.
    #[arg(long, group = "periodic")]
    pub signal: bool,

    /// Send SIGUSR1 at each disturbance (as --signal), with a handler that itself operates on
    /// the structure under test (counter, buffer, memcpy, rwlock: the async-signal-safe operations),
    /// counted in conservation.
    #[arg(long, group = "periodic")]
    pub signal_ops: bool,

    /// Sleep this many milliseconds at each disturbance.
    #[arg(long, value_name = "MS", group = "periodic", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub sleep_ms: Option<u64>,

    /// Run a thread that keeps moving the workers between CPUs (sched_setaffinity).
    #[arg(long)]
    pub affinity_churn: bool,

    /// Run a thread that forks children while the workers run: each child uses the structure
    /// under test (only the forking thread exists there) and must exit 0 within 10 s.
    #[arg(long)]
    pub fork: bool,
}

/// A thread that runs beside a test's workers: its name and its body, which returns once the
/// workers have [finished](Threads::finished).
#[derive(Debug, Clone, Copy)]
pub struct Background {
    /// The thread's name.
    pub name: &'static str,
    /// What it runs.
    pub body: fn(&Threads),
}

impl Disturbance {
    /// No disturbance at all.
    pub fn none() -> Disturbance {
        Disturbance::default()
    }

    /// With a delay of `loops` spins at injection point `point` in every critical section.
    pub fn inject(mut self, point: u8, loops: u64) -> Disturbance {
        self.inject_point = Some(point);
        self.inject_loops = Some(loops);
        self
    }

    /// With the periodic disturbances after every `m`-th operation.
    pub fn every(mut self, m: u64) -> Disturbance {
        self.every = Some(m);
        self
    }

    /// With a `sched_yield` at each periodic disturbance.
    pub fn yields(mut self) -> Disturbance {
        self.yield_now = true;
        self
    }

    /// With a SIGUSR1 at each periodic disturbance.
    pub fn signals(mut self) -> Disturbance {
        self.signal = true;
        self
    }

    /// With a SIGUSR1 whose handler operates on the structure, at each periodic disturbance.
    pub fn signal_ops(mut self) -> Disturbance {
        self.signal_ops = true;
        self
    }

    /// With the forking thread.
    pub fn forks(mut self) -> Disturbance {
        self.fork = true;
        self
    }

    /// With a sleep of `ms` milliseconds at each periodic disturbance.
    pub fn sleeps(mut self, ms: u64) -> Disturbance {
        self.sleep_ms = Some(ms);
        self
    }

    /// With the affinity-churn thread.
    pub fn churns(mut self) -> Disturbance {
        self.affinity_churn = true;
        self
    }

    /// The injection point and its spin count, if any.
    pub fn injection(&self) -> Option<(u8, u64)> {
        self.inject_point.map(|k| (k, self.inject_loops.unwrap_or(DEFAULT_INJECT_LOOPS)))
    }

    /// Whether workers do something after every M-th operation.
    pub fn periodic(&self) -> bool {
        self.yield_now || self.signal || self.signal_ops || self.sleep_ms.is_some()
    }

    /// M, when workers do something after every M-th operation.
    pub fn period(&self) -> Option<u64> {
        self.periodic().then(|| self.every.unwrap_or(DEFAULT_EVERY))
    }

    /// The arguments of `restartable stress` that ask for exactly these disturbances (with
    /// every default spelled out). The one rendering: matrix children, reproduce lines and the
    /// JSON report all use it.
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        if let Some((k, l)) = self.injection() {
            a.extend(["--inject-point".into(), k.to_string(), "--inject-loops".into(), l.to_string()]);
        }
        if let Some(m) = self.period() {
            a.extend(["--every".into(), m.to_string()]);
        }
        if self.yield_now {
            a.push("--yield".into());
        }
        if self.signal {
            a.push("--signal".into());
        }
        if self.signal_ops {
            a.push("--signal-ops".into());
        }
        if let Some(ms) = self.sleep_ms {
            a.extend(["--sleep-ms".into(), ms.to_string()]);
        }
        if self.affinity_churn {
            a.push("--affinity-churn".into());
        }
        if self.fork {
            a.push("--fork".into());
        }
        a
    }

    /// The JSON report's fields, in flag order, derived from [`argv`](Self::argv): one per
    /// flag, named after it (`--sleep-ms` is `sleep_ms`); a switch is `true` or `false`, a
    /// value is its number, or `null` when not given.
    pub fn json(&self) -> Map<String, Value> {
        let argv = self.argv();
        let cmd = <Disturbance as clap::Args>::augment_args(clap::Command::new("stress"));
        let mut m = Map::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            let at = argv.iter().position(|a| *a == flag);
            let v = if arg.get_action().takes_values() {
                at.and_then(|i| argv.get(i + 1)).map_or(Value::Null, |v| {
                    serde_json::from_str::<Value>(v).ok().filter(Value::is_number).unwrap_or_else(|| json!(v))
                })
            } else {
                json!(at.is_some())
            };
            m.insert(long.replace('-', "_"), v);
        }
        m
    }

    /// Process-wide set-up before a run's first test: the SIGUSR1 handler, the injection point.
    pub fn prepare(&self) -> std::io::Result<()> {
        if self.signal || self.signal_ops {
            install_signal_handler()?;
        }
        USE_HANDLER_HOOK.store(self.signal_ops, SeqCst);
        set_inject(self.injection());
        Ok(())
    }

    /// Undo [`prepare`](Self::prepare) after a run (the handler, which does nothing, stays).
    pub fn finish(&self) {
        set_inject(None);
    }

    /// What a worker does after every [`period`](Self::period)-th operation.
    pub fn at_period(&self, p: &mut Pacer<'_>) {
        if self.yield_now {
            std::thread::yield_now();
        }
        if self.signal || self.signal_ops {
            signal(p);
        }
        if let Some(ms) = self.sleep_ms {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }

    /// The threads that run beside the workers.
    pub fn background(&self) -> Vec<Background> {
        let mut v = Vec::new();
        if self.affinity_churn {
            v.push(Background { name: "stress-churn", body: churn });
        }
        if self.fork {
            v.push(Background { name: "stress-fork", body: forker });
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// What a test lets the signal handler and forked children do with its structure.

/// What `--signal-ops` and `--fork` do with the structure under test, armed for one run by
/// [`with_hooks`].
#[derive(Clone, Copy, Default)]
pub struct Hooks<'a> {
    /// Run by the SIGUSR1 handler (with `--signal-ops`): async-signal-safe operations only, and
    /// the test must count what it does.
    pub in_handler: Option<&'a (dyn Fn() + Sync)>,
    /// Run in every forked child (with `--fork`): checks the structure, `Err` describes what is
    /// broken. Without it the child checks that every CPU can be stopped.
    pub in_child: Option<&'a (dyn Fn() -> Result<(), String> + Sync)>,
}

/// Whether this run arms the handler hook (`--signal-ops`).
static USE_HANDLER_HOOK: AtomicBool = AtomicBool::new(false);
/// The armed hooks: pointers to a `&dyn Fn` on the arming test's stack, or null.
static HANDLER_HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
static CHILD_HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
/// Handlers running the hook right now (disarming waits for them).
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// Runs of the handler hook, and forked children checked, in this process so far.
static HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);
static FORKED: AtomicU64 = AtomicU64::new(0);

/// How many times a signal handler has run a test's hook (`--signal-ops`) so far.
pub fn handler_runs() -> u64 {
    HANDLER_RUNS.load(SeqCst)
}

/// How many forked children have been checked (`--fork`) so far.
pub fn forked() -> u64 {
    FORKED.load(SeqCst)
}

/// Run `f` with `hooks` armed, then disarm them (waiting for any handler still using them).
pub fn with_hooks<R>(hooks: Hooks<'_>, f: impl FnOnce() -> R) -> R {
    let handler = hooks.in_handler;
    let child = hooks.in_child;
    if USE_HANDLER_HOOK.load(SeqCst)
        && let Some(h) = &handler
    {
        HANDLER_HOOK.store((h as *const &(dyn Fn() + Sync)).cast_mut().cast(), SeqCst);
    }
    if let Some(c) = &child {
        CHILD_HOOK.store((c as *const &(dyn Fn() -> Result<(), String> + Sync)).cast_mut().cast(), SeqCst);
    }
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            HANDLER_HOOK.store(std::ptr::null_mut(), SeqCst);
            CHILD_HOOK.store(std::ptr::null_mut(), SeqCst);
            while IN_HANDLER.load(SeqCst) != 0 {
                std::thread::yield_now();
            }
        }
    }
    let _disarm = Disarm;
    f()
}

// ---------------------------------------------------------------------------------------------
// --fork

/// Fork a child that runs the test's child hook (or stops every CPU) and `_exit`s, wait for it
/// (at most 10 s) and count it as a check; again every 10 ms until the workers are done (at least
/// once per test).
fn forker(threads: &Threads) {
    loop {
        // SAFETY: the child only runs the hook (which uses the structure: allocation through
        // glibc's malloc is safe after fork) and `_exit`s without unwinding or flushing anything.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            threads.fail(format!("fork failed: {}", std::io::Error::last_os_error()));
            return;
        }
        if pid == 0 {
            let code = match in_forked_child() {
                Ok(()) => 0,
                Err(_) => 3,
            };
            // SAFETY: ends the child at once (no destructors of the parent's state).
            unsafe { libc::_exit(code) };
        }
        FORKED.fetch_add(1, SeqCst);
        match wait_for(pid, Duration::from_secs(10)) {
            Some(0) => threads.pass(),
            Some(code) => threads.fail(format!("fork: a child failed its check (exit status {code})")),
            None => threads.fail("fork: a child hung for 10 s (killed): a guard held at the fork?".into()),
        }
        if threads.finished() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The check of a forked child.
fn in_forked_child() -> Result<(), String> {
    let hook = CHILD_HOOK.load(SeqCst);
    if !hook.is_null() {
        // SAFETY: an armed hook points to a live `&dyn Fn` (the arming test outlives its run, and
        // this child is a copy of the process taken while it was armed).
        let hook = unsafe { &*hook.cast::<&(dyn Fn() -> Result<(), String> + Sync)>() };
        return hook();
    }
    for cpu in 0..restartable::guard::limit() {
        drop(restartable::guard::stop::<restartable::ops::Cpu>(cpu).map_err(|e| e.to_string())?);
    }
    Ok(())
}

/// The exit code of child `pid`, or `None` if it had to be killed after `deadline`.
fn wait_for(pid: libc::pid_t, deadline: Duration) -> Option<i32> {
    let start = std::time::Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 });
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

// ---------------------------------------------------------------------------------------------
// --signal, --signal-ops

/// The SIGUSR1 handler: runs the armed handler hook (with `--signal-ops`), else nothing.
extern "C" fn on_sigusr1(_: libc::c_int) {
    IN_HANDLER.fetch_add(1, SeqCst);
    let hook = HANDLER_HOOK.load(SeqCst);
    if !hook.is_null() {
        // SAFETY: an armed hook points to a live `&dyn Fn` until `with_hooks` disarms it, which
        // waits for `IN_HANDLER` to drop back to zero first.
        let hook = unsafe { &*hook.cast::<&(dyn Fn() + Sync)>() };
        hook();
        HANDLER_RUNS.fetch_add(1, SeqCst);
    }
    IN_HANDLER.fetch_sub(1, SeqCst);
}

/// Install the empty SIGUSR1 handler (once per process, before any signal is sent).
fn install_signal_handler() -> std::io::Result<()> {
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

/// SIGUSR1, by turns to the process (the kernel picks a thread that does not block it, often
/// one that is running, perhaps inside a critical section) and to another worker.
fn signal(p: &mut Pacer<'_>) {
    let threads = p.threads();
    let n = threads.workers();
    if p.turn().is_multiple_of(2) || n < 2 {
        // SAFETY: kill(2) with our own pid and a signal whose handler is installed.
        unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
    } else {
        let other = (p.worker() + 1 + (p.random() as usize % (n - 1))) % n;
        let tid = threads.tid(other);
        if tid != 0 {
            // SAFETY: tgkill(2) with our own pid: it can only reach a thread of this process
            // (a worker, or a thread that reused an exited worker's id), all of which handle
            // SIGUSR1 with the empty handler.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// --affinity-churn

/// Every 200 µs pin each running worker to a random allowed CPU (every fourth round, let them
/// run anywhere again), until the workers are done.
fn churn(threads: &Threads) {
    let allowed = crate::cpus::allowed();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut round = 0u64;
    while !threads.finished() {
        for tid in threads.tids().filter(|&t| t != 0) {
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

// ---------------------------------------------------------------------------------------------
// --inject-point

#[cfg(feature = "inject")]
fn set_inject(point: Option<(u8, u64)>) {
    restartable::inject::clear();
    if let Some((k, loops)) = point {
        restartable::inject::set(usize::from(k), loops);
    }
}

#[cfg(not(feature = "inject"))]
fn set_inject(_: Option<(u8, u64)>) {}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Just the disturbance flags.
    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        d: Disturbance,
    }

    fn parse(argv: &[String]) -> Disturbance {
        Flags::try_parse_from(std::iter::once("stress".to_string()).chain(argv.iter().cloned())).unwrap().d
    }

    /// Every field set (a struct literal: a new field must be added here).
    fn full() -> Disturbance {
        Disturbance {
            inject_point: Some(5),
            inject_loops: Some(100),
            every: Some(7),
            yield_now: true,
            signal: true,
            signal_ops: true,
            sleep_ms: Some(0),
            affinity_churn: true,
            fork: true,
        }
    }

    #[test]
    fn argv_round_trips_and_names_every_flag() {
        let d = full();
        let argv = d.argv();
        assert_eq!(parse(&argv), d);
        let cmd = <Disturbance as clap::Args>::augment_args(clap::Command::new("stress"));
        for arg in cmd.get_arguments() {
            let flag = format!("--{}", arg.get_long().unwrap());
            assert!(argv.contains(&flag), "{flag} missing from {argv:?}");
        }
        // Defaults are spelled out, so the rendering parses back to the same run.
        let d = Disturbance::none().signals();
        assert_eq!(d.argv(), ["--every", "64", "--signal"]);
        assert_eq!(parse(&d.argv()).period(), d.period());
        let d = Disturbance { inject_point: Some(3), ..Disturbance::none() };
        assert_eq!(d.argv(), ["--inject-point", "3", "--inject-loops", "10000"]);
        assert_eq!(parse(&d.argv()).injection(), Some((3, 10_000)));
        assert!(Disturbance::none().argv().is_empty());
        // Churn alone does not pace the workers: no --every.
        assert_eq!(Disturbance::none().churns().every(5).argv(), ["--affinity-churn"]);
    }

    #[test]
    fn json_fields_follow_the_flags() {
        let j = Value::Object(full().json());
        assert_eq!(
            j,
            json!({
                "inject_point": 5, "inject_loops": 100, "every": 7, "yield": true, "signal": true,
                "signal_ops": true, "sleep_ms": 0, "affinity_churn": true, "fork": true,
            })
        );
        let m = full().json();
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "inject_point",
                "inject_loops",
                "every",
                "yield",
                "signal",
                "signal_ops",
                "sleep_ms",
                "affinity_churn",
                "fork"
            ]
        );
        let j = Value::Object(Disturbance::none().json());
        assert_eq!(
            j,
            json!({
                "inject_point": null, "inject_loops": null, "every": null, "yield": false, "signal": false,
                "signal_ops": false, "sleep_ms": null, "affinity_churn": false, "fork": false,
            })
        );
    }

    #[test]
    fn builders_set_what_they_say() {
        let d = Disturbance::none().inject(2, 30).yields().signals().sleeps(1).churns().every(9);
        assert_eq!(d.injection(), Some((2, 30)));
        assert_eq!(d.period(), Some(9));
        assert!(d.yield_now && d.signal && d.affinity_churn && d.sleep_ms == Some(1));
        assert_eq!(d.background().len(), 1);
        let d = Disturbance::none().signal_ops().forks();
        assert!(d.signal_ops && d.fork && d.period() == Some(DEFAULT_EVERY));
        assert_eq!(d.background().len(), 1);
        assert!(Disturbance::none().background().is_empty() && Disturbance::none().period().is_none());
    }
}
