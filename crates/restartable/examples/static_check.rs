//! A self-check for any kind of build, meant above all for a static one (CI runs it so):
//!
//! ```sh
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!     cargo run --release --example static_check --target x86_64-unknown-linux-gnu -- --expect-registration glibc
//! ```
//!
//! Four threads use a `Counter`, a `Stack` and a `Buffer`; every total is checked exactly
//! (every add counted once; every pushed item popped, drained or handed back exactly once).
//! It prints `restartable::status()` and exits 1 if a total is wrong, if the process is not in
//! fast mode (unless `RESTARTABLE_FORCE_DEGRADED=1` asked for degraded mode), or if a thread's
//! rseq area is not owned as `--expect-registration glibc|own` says, or (with `--expect-static`)
//! if a shared C library is mapped into the process.
//!
//! Built with `--features global-percpu-alloc`, its global allocator is the library's
//! `PerCpuAlloc` (from the process's first allocation, before `main`), the workers also allocate
//! and free blocks of every size class with a byte pattern each, and it checks the patterns and
//! that the per-CPU caches served allocations.

use std::process::ExitCode;

use restartable::{Buffer, Counter, Registration, Stack};

#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

const THREADS: usize = 4;
const OPS: usize = 50_000;

/// What one thread did.
#[derive(Default)]
struct Work {
    /// Items this thread popped from the stack or the buffer (`(source, id)`).
    popped: Vec<(u8, usize)>,
    /// Items the buffer handed back because the current CPU's buffer was full.
    rejected: Vec<usize>,
    /// Who owns this thread's rseq area.
    registration: Option<Registration>,
    /// Heap blocks whose byte pattern was wrong when freed.
    clobbered: usize,
}

const STACK: u8 = 0;
const BUFFER: u8 = 1;

fn worker(t: usize, counter: &Counter, stack: &Stack<usize>, buffer: &Buffer<usize>) -> Work {
    let mut w = Work { registration: Some(restartable::registration()), ..Work::default() };
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..OPS {
        let id = t * OPS + i;
        counter.add((id % 7 + 1) as u64);
        stack.push(id);
        if let Err(back) = buffer.push(Box::new(id)) {
            w.rejected.push(*back);
        }
        // Heap blocks of every size class (1 ..= 1100 bytes), each with its own byte, freed
        // a few hundred allocations later (by this thread).
        let size = 1 + (id * 131) % 1100;
        blocks.push(vec![id as u8; size]);
        if blocks.len() > 300 {
            let b = blocks.swap_remove((id * 7) % blocks.len());
            if !b.iter().all(|&x| x == b[0]) {
                w.clobbered += 1;
            }
        }
        // Pop about every other item, so the lists grow and shrink while the others push.
        if i % 2 == 1 {
            if let Some(v) = stack.pop() {
                w.popped.push((STACK, v));
            }
            if let Some(v) = buffer.pop() {
                w.popped.push((BUFFER, *v));
            }
        }
    }
    w
}

fn owner(r: &Registration) -> &'static str {
    match r {
        Registration::Glibc { .. } => "glibc",
        Registration::Own { .. } => "own",
        _ => "unavailable",
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: static_check [--expect-registration glibc|own] [--expect-static]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let (mut expect_registration, mut expect_static) = (None, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--expect-static" => expect_static = true,
            "--expect-registration" => match args.next() {
                Some(v) if v == "glibc" || v == "own" => expect_registration = Some(v),
                _ => return usage(),
            },
            _ => return usage(),
        }
    }

    let counter = Counter::new();
    let stack: Stack<usize> = Stack::new();
    let buffer: Buffer<usize> = Buffer::with_capacity(64);
    let works: Vec<Work> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn({
                    let (c, st, b) = (&counter, &stack, &buffer);
                    move || worker(t, c, st, b)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a worker panicked")).collect()
    });

    let mut failures = Vec::new();

    // The counter: every add exactly once, in the sum and then in the take.
    let expected: u64 = (0..THREADS * OPS).map(|id| (id % 7 + 1) as u64).sum();
    let (sum, taken, after) = (counter.sum(), counter.take(), counter.sum());
    if (sum, taken, after) != (expected, expected, 0) {
        failures.push(format!("counter: sum {sum}, take {taken}, then {after}; expected {expected}, {expected}, 0"));
    }

    // The stack and the buffer: pushed = popped + drained (+ handed back, for the buffer).
    for (source, name, mut ids) in
        [(STACK, "stack", stack.drain_all()), (BUFFER, "buffer", buffer.drain_all().into_iter().map(|b| *b).collect())]
    {
        let drained = ids.len();
        ids.extend(works.iter().flat_map(|w| w.popped.iter().filter(|(s, _)| *s == source).map(|&(_, id)| id)));
        if source == BUFFER {
            ids.extend(works.iter().flat_map(|w| w.rejected.iter().copied()));
        }
        ids.sort_unstable();
        let all = ids.len() == THREADS * OPS && ids.iter().enumerate().all(|(i, &id)| i == id);
        println!("{name:<7} {} items pushed: {} accounted for ({drained} drained)", THREADS * OPS, ids.len());
        if !all {
            failures.push(format!(
                "{name}: {} items accounted for, expected each of 0..{} exactly once",
                ids.len(),
                THREADS * OPS
            ));
        }
    }
    println!("counter {sum} (expected {expected})");

    let clobbered: usize = works.iter().map(|w| w.clobbered).sum();
    if clobbered != 0 {
        failures.push(format!("{clobbered} heap blocks lost their contents"));
    }
    #[cfg(feature = "global-percpu-alloc")]
    {
        let s = GLOBAL.stats();
        println!("PerCpuAlloc: {} hits, {} misses, {} bytes cached", s.hits(), s.misses(), s.cached_bytes());
        let forced = std::env::var(restartable::FORCE_DEGRADED_ENV).is_ok_and(|v| v == "1");
        if s.hits() == 0 && !forced {
            failures.push("PerCpuAlloc: no allocation was served by a per-CPU cache".to_string());
        }
    }

    let status = restartable::status();
    println!("{status}");

    // A static binary maps no shared C library (`libc.so.6`) and no dynamic loader.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let shared_libc = maps.lines().any(|l| l.contains("/libc.so") || l.contains("/ld-linux"));
    println!(
        "linkage: {}",
        if shared_libc { "dynamic (libc.so mapped)" } else { "static (no shared C library mapped)" }
    );
    if expect_static && shared_libc {
        failures.push("--expect-static: the process maps a shared C library".to_string());
    }

    let forced = std::env::var(restartable::FORCE_DEGRADED_ENV).is_ok_and(|v| v == "1");
    if !status.mode.is_fast() && !forced {
        failures.push(format!("not in fast mode: {}", status.mode));
    }
    let owners: Vec<&str> = works.iter().filter_map(|w| w.registration.as_ref()).map(owner).collect();
    println!("registration per thread: main {}, workers {owners:?}", owner(&status.registration));
    if let Some(want) = &expect_registration {
        for got in owners.iter().copied().chain([owner(&status.registration)]) {
            if got != want {
                failures.push(format!("a thread's rseq area is owned by {got}, expected {want}"));
            }
        }
    }

    if failures.is_empty() {
        println!("static_check: ok");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("static_check: FAILED: {f}");
        }
        ExitCode::FAILURE
    }
}
