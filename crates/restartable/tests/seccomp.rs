//! rseq refused by a seccomp filter (ENOSYS: "no such system call", EPERM: "forbidden"), glibc
//! told not to register (`GLIBC_TUNABLES=glibc.pthread.rseq=0`), and our registration refused
//! with EINVAL because someone else registered an area for the thread first.
//!
//! Each parent test re-runs this binary with one child-side test selected
//! ([`testkit::run_self_as_child`]); the filter is installed before `exec`, so glibc's own
//! registration of the main thread is refused too. Child-side tests return at once when not
//! in such a child. What happens, step by step:
//!
//! 1. glibc's registration fails, so glibc sets `__rseq_size` to 0 and writes `cpu_id = -2`
//!    (registration failed) into its area of every thread;
//! 2. the library therefore does not use glibc's area and tries its own registration, which
//!    the filter refuses with its errno;
//! 3. the calling thread (and every other) reports `Registration::Unavailable` with that errno,
//!    the process runs in degraded mode, and every op returns `Stopped` without touching memory.
//!
//! (All about rseq registration, which a build with the portable architecture module, built
//! with `--cfg restartable_portable`, never attempts: there this file compiles to nothing, and
//! `tests/ops.rs` checks that build's mode instead.)

#![cfg(not(restartable_portable))]

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use restartable::ops::{self, Cpu, MmCid, Outcome};
use restartable::{Degraded, Mode, Registration};

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

/// `__rseq_size` and `__rseq_offset` as glibc exports them (None without glibc 2.35+).
fn glibc_rseq_symbols() -> Option<(u32, isize)> {
    // SAFETY: NUL-terminated names; RTLD_DEFAULT searches the global scope.
    let (size, offset) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()),
            libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()),
        )
    };
    if size.is_null() || offset.is_null() {
        return None;
    }
    // SAFETY: glibc defines `const unsigned int __rseq_size` and `const ptrdiff_t
    // __rseq_offset`, written before main and never changed afterwards.
    Some(unsafe { (*(size as *const u32), *(offset as *const isize)) })
}

/// The `cpu_id` field of glibc's rseq area for the calling thread.
fn glibc_area_cpu_id(offset: isize) -> u32 {
    let tp: *const u8;
    // SAFETY: on x86_64 Linux the word at fs:0 is the thread pointer (the TCB points to itself);
    // reading it has no side effects.
    unsafe { core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags)) };
    let cpu_id = tp.wrapping_offset(offset + restartable::abi::OFFSET_CPU_ID as isize);
    // SAFETY: glibc places every thread's rseq area (registered or not) at `__rseq_offset` from
    // its thread pointer, 32-byte aligned, for the thread's whole life; the kernel may write
    // `cpu_id`, so it is read atomically.
    unsafe { (*cpu_id.cast::<AtomicU32>()).load(Ordering::Relaxed) }
}

/// Everything a child without rseq checks, on the calling thread. Returns a line for the parent.
fn check_no_rseq(errno: i32) -> String {
    // 1. glibc gave up: `__rseq_size` is 0 and its area says "registration failed".
    let (size, offset) = glibc_rseq_symbols().expect("glibc 2.35+ exports __rseq_size/__rseq_offset");
    assert_eq!(size, 0, "glibc's __rseq_size after a refused registration");
    assert_eq!(glibc_area_cpu_id(offset), restartable::abi::CPU_ID_REGISTRATION_FAILED);

    // 2-3. our own registration was refused with the filter's errno.
    let s = restartable::status();
    match &s.registration {
        Registration::Unavailable(u) => {
            assert_eq!(u.errno, Some(errno), "{s}");
            assert!(!u.reason.is_empty());
        }
        other => panic!("expected Unavailable, got {other:?}\n{s}"),
    }
    assert!(!s.rseq_available());
    match restartable::mode() {
        Mode::Degraded(Degraded::NoRseq(u)) => assert_eq!(u.errno, Some(errno)),
        other => panic!("expected degraded (no rseq), got {other:?}"),
    }
    assert_eq!(restartable::current_mm_cid(), None);
    assert_eq!(restartable::current_node(), None);

    // The ops stop at once and store nothing, whatever index they are given.
    let v = AtomicUsize::new(7);
    let cpu = restartable::current_cpu();
    assert!(cpu < restartable::possible_cpus());
    for index in [cpu, 0, restartable::possible_cpus() - 1] {
        // SAFETY: `v` is a live local that only this thread touches; `index` selects nothing
        // but the guard word the op reads.
        let o = unsafe { ops::load_add_store::<Cpu>(&v, 5, index) };
        assert_eq!(o, Outcome::Stopped, "index {index}");
        // SAFETY: as above.
        let o = unsafe { ops::load_cbne_store::<MmCid>(&v, 7, 9, index) };
        assert_eq!(o, Outcome::Stopped, "index {index}");
    }
    assert_eq!(v.load(Ordering::Relaxed), 7);
    format!("errno={} cpu={cpu}", restartable::sys::errno_name(errno))
}

/// The child side: the test thread, and a freshly spawned thread (which glibc also tries, and
/// fails, to register).
fn child_no_rseq(errno: i32) {
    if !testkit::is_child() {
        return;
    }
    let here = check_no_rseq(errno);
    let there = std::thread::spawn(move || check_no_rseq(errno)).join().expect("second thread");
    println!("CHILD-OK {here} / thread {there}");
}

#[test]
fn child_enosys() {
    child_no_rseq(libc::ENOSYS);
}

#[test]
fn child_eperm() {
    child_no_rseq(libc::EPERM);
}

fn parent(child: &str, errno: i32) {
    if testkit::is_child() {
        return;
    }
    let out = testkit::run_self_as_child(child, &[], &[(testkit::SYS_RSEQ, errno)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", testkit::describe(&out));
    let marker = format!("CHILD-OK errno={}", restartable::sys::errno_name(errno));
    assert!(stdout.contains(&marker), "no {marker:?}: {}", testkit::describe(&out));
    assert!(stdout.contains("1 passed"), "the child ran no test: {}", testkit::describe(&out));
    stdout.lines().filter(|l| l.contains("CHILD-OK")).for_each(|l| println!("child: {l}"));
}

#[test]
fn rseq_denied_enosys() {
    parent("child_enosys", libc::ENOSYS);
}

#[test]
fn rseq_denied_eperm() {
    parent("child_eperm", libc::EPERM);
}

/// With glibc's registration turned off, `__rseq_size` is 0 too, but rseq works: the library
/// registers its own area, and ops commit.
#[test]
fn child_glibc_rseq_off() {
    if !testkit::is_child() {
        return;
    }
    let (size, _) = glibc_rseq_symbols().expect("glibc 2.35+");
    assert_eq!(size, 0, "GLIBC_TUNABLES=glibc.pthread.rseq=0 leaves __rseq_size at 0");
    let s = restartable::status();
    assert!(matches!(s.registration, Registration::Own { len, .. } if len >= 32), "{s}");
    let v = AtomicUsize::new(0);
    let mut committed = 0;
    for _ in 0..1000 {
        let cpu = restartable::current_cpu();
        // SAFETY: `v` is a live local that only this thread touches.
        match unsafe { ops::load_add_store::<Cpu>(&v, 1, cpu) } {
            Outcome::Committed => committed += 1,
            Outcome::Aborted => {}
            // Degraded (no membarrier rseq fence here): nothing runs on the fast path.
            Outcome::Stopped => assert!(!restartable::mode().is_fast()),
            Outcome::CompareFailed => panic!("load_add_store has no comparison"),
        }
    }
    assert_eq!(v.load(Ordering::Relaxed), committed);
    if restartable::mode().is_fast() {
        assert!(committed > 0);
    }
    println!("CHILD-OK own registration, {committed} commits, mode {}", restartable::mode());
}

#[test]
fn glibc_rseq_off_uses_own_registration() {
    if testkit::is_child() {
        return;
    }
    let out = testkit::run_self_as_child("child_glibc_rseq_off", &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], &[]);
    assert!(out.status.success(), "{}", testkit::describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CHILD-OK own registration"), "{}", testkit::describe(&out));
    assert!(stdout.contains("1 passed"), "the child ran no test: {}", testkit::describe(&out));
    stdout.lines().filter(|l| l.contains("CHILD-OK")).for_each(|l| println!("child: {l}"));
}

/// Register an rseq area that is not the library's for the calling thread, as another library
/// would (a leaked 32-byte area, our signature): the kernel allows one area per thread.
fn register_foreign_area() -> std::io::Result<()> {
    let area: &'static mut restartable::abi::Rseq = Box::leak(Box::new(restartable::abi::Rseq {
        cpu_id: restartable::abi::CPU_ID_UNINITIALIZED,
        ..Default::default()
    }));
    // SAFETY: a 32-byte, 32-byte-aligned area that is leaked, so it stays valid (and is used for
    // nothing else) until the thread exits, when the kernel stops writing it.
    unsafe { restartable::sys::rseq(area, 32, 0, restartable::abi::RSEQ_SIG) }
}

/// Another registration exists on the thread that decides the mode (glibc's is off): our own
/// registration gets EINVAL, and the report says why, in words.
#[test]
fn child_foreign_registration() {
    // With a global allocator built on the library (`global-percpu-alloc`), the library's first
    // use comes with the process's first allocation, before any test could register a foreign
    // area: the scenario cannot be built in such a binary.
    if !testkit::is_child() || cfg!(feature = "global-percpu-alloc") {
        return;
    }
    register_foreign_area().expect("the first registration of this thread succeeds");
    let s = restartable::status();
    let Registration::Unavailable(u) = &s.registration else { panic!("expected Unavailable, got {s}") };
    assert_eq!(u.errno, Some(libc::EINVAL), "{s}");
    assert!(u.reason.starts_with("another rseq area is already registered for this thread"), "{s}");
    assert!(matches!(restartable::mode(), Mode::Degraded(Degraded::NoRseq(n)) if n == u), "{s}");
    let text = s.to_string();
    assert!(text.contains("EINVAL: another rseq area is already registered for this thread"), "{text}");

    // Degraded, and still exact: 4 threads (each of which registers its own area: only this
    // one has a foreign one), every add counted.
    let c = restartable::Counter::new();
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| (0..10_000).for_each(|_| c.add(3)));
        }
    });
    assert_eq!((c.sum(), c.take(), c.sum()), (120_000, 120_000, 0));
    println!("CHILD-OK foreign registration: {}", s.registration);
}

#[test]
fn foreign_registration_is_reported() {
    if testkit::is_child() || cfg!(feature = "global-percpu-alloc") {
        return;
    }
    let out =
        testkit::run_self_as_child("child_foreign_registration", &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], &[]);
    assert!(out.status.success(), "{}", testkit::describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("CHILD-OK foreign registration: unavailable (EINVAL: another rseq area"),
        "{}",
        testkit::describe(&out)
    );
    assert!(stdout.contains("1 passed"), "the child ran no test: {}", testkit::describe(&out));
    stdout.lines().filter(|l| l.contains("CHILD-OK")).for_each(|l| println!("child: {l}"));
}
