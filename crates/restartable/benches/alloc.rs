//! `PerCpuAlloc` against the system allocator (glibc `malloc`) and mimalloc, side by side in one
//! run, each allocator in processes of its own:
//!
//! ```sh
//! cargo bench -p restartable --bench alloc            # the full run (a few minutes)
//! cargo bench -p restartable --bench alloc -- --quick # one repetition, smaller workloads
//! ```
//!
//! The parent re-runs this binary once per (repetition, workload, thread count, allocator), with
//! `ALLOC_BENCH_ALLOCATOR` naming the child's global allocator (chosen at its first allocation,
//! before `main`, by a dispatcher that every allocator pays for alike: one predictable branch)
//! and `ALLOC_BENCH_CELL` the measurement; the child prints one number. Cells are interleaved
//! (every allocator of a cell runs before the next cell) and the median of the repetitions is
//! shown. Workloads, each at 1 thread and at 2x and 4x the online CPUs:
//!
//! 1. `pairs`: every thread allocates and frees at once blocks of 16, 32, .. 1024 bytes in
//!    turn (writing a byte of each), with one block of each size kept live throughout: million
//!    pairs per second, all threads together.
//! 2. `channel`: half the threads (at least one) allocate 64-byte boxes and send them over a
//!    bounded channel each to a consumer of their own, which frees them: million boxes/s.
//!    `std::sync::mpsc` parks and wakes threads, which costs far more than any allocator here,
//!    so `queue` (2b) does the same over a lock-free bounded queue (`crossbeam_queue::ArrayQueue`,
//!    256 slots; a full or empty side spins a little, then yields), where the allocator's
//!    share of the cost shows.
//! 3. `churn`: 10,000 short threads (as many at once as the thread count), each making 1,000
//!    allocations of 16 .. 1024 bytes and freeing them, except 16 it hands to the next thread
//!    of its lane, which frees those: seconds in all.
//! 4. `rss`: 256 threads (as many at once as the thread count) each allocate 4 MiB of small
//!    objects (16 .. 1024 bytes), free them all and exit; then the process's resident memory
//!    above what it had before the first thread: MiB, and (table 4b) the seconds the threads
//!    took. (With `ALLOC_BENCH_TRIM=1` a `PerCpuAlloc<System>` child also prints its statistics
//!    and the figure after `trim()`.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::Instant;

use mimalloc::MiMalloc;
use restartable::alloc::PerCpuAlloc;

// ---------------------------------------------------------------------------------------------
// The child's allocator.

const ALLOCATORS: [&str; 4] = ["system", "mimalloc", "percpu", "percpu-mimalloc"];
const ALLOCATOR_NAMES: [&str; 4] = ["System (glibc)", "mimalloc", "PerCpuAlloc<System>", "PerCpuAlloc<MiMalloc>"];

/// 0: not decided yet; else 1 + an index into [`ALLOCATORS`].
static WHICH: AtomicU8 = AtomicU8::new(0);
static PERCPU: PerCpuAlloc = PerCpuAlloc::new(System);
static PERCPU_MI: PerCpuAlloc<MiMalloc> = PerCpuAlloc::new(MiMalloc);

/// The allocator named by `ALLOC_BENCH_ALLOCATOR` (System when unset), read once with `getenv`
/// (which does not allocate).
#[cold]
fn decide() -> u8 {
    // SAFETY: a NUL-terminated name; the result is read before anything could change it.
    let v = unsafe { libc::getenv(c"ALLOC_BENCH_ALLOCATOR".as_ptr()) };
    let name = if v.is_null() {
        &b""[..]
    } else {
        // SAFETY: getenv returns a NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes()
    };
    let w = ALLOCATORS.iter().position(|a| a.as_bytes() == name).map_or(1, |i| i as u8 + 1);
    WHICH.store(w, Relaxed);
    w
}

#[inline(always)]
fn which() -> u8 {
    match WHICH.load(Relaxed) {
        0 => decide(),
        w => w,
    }
}

struct Switch;

macro_rules! dispatch {
    ($method:ident($($arg:expr),*)) => {
        // SAFETY: the caller's contract, forwarded to the one allocator this process uses
        // (decided before its first allocation, never changed).
        unsafe {
            match which() {
                2 => MiMalloc.$method($($arg),*),
                3 => PERCPU.$method($($arg),*),
                4 => PERCPU_MI.$method($($arg),*),
                _ => System.$method($($arg),*),
            }
        }
    };
}

// SAFETY: every call goes to the same allocator for the whole process.
unsafe impl GlobalAlloc for Switch {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        dispatch!(alloc(l))
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        dispatch!(dealloc(p, l))
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        dispatch!(alloc_zeroed(l))
    }
    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        dispatch!(realloc(p, l, n))
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

// ---------------------------------------------------------------------------------------------
// The workloads (in the child).

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Pairs,
    Channel,
    Queue,
    Churn,
    Rss,
}

const WORKLOADS: [Workload; 5] = [Workload::Pairs, Workload::Channel, Workload::Queue, Workload::Churn, Workload::Rss];

impl Workload {
    fn key(self) -> &'static str {
        match self {
            Workload::Pairs => "pairs",
            Workload::Channel => "channel",
            Workload::Queue => "queue",
            Workload::Churn => "churn",
            Workload::Rss => "rss",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Workload::Pairs => "1. alloc+free pairs, 16..1024 B (M pairs/s, higher is better)",
            Workload::Channel => "2. producer/consumer, 64 B boxes over channels (M boxes/s, higher is better)",
            Workload::Queue => "2b. producer/consumer, 64 B boxes over lock-free queues (M boxes/s, higher is better)",
            Workload::Churn => "3. thread churn, 10,000 threads x 1,000 allocs (s, lower is better)",
            Workload::Rss => "4. resident memory after 256 threads x 4 MiB freed (MiB, lower is better)",
        }
    }
    fn higher_is_better(self) -> bool {
        matches!(self, Workload::Pairs | Workload::Channel | Workload::Queue)
    }
    fn from_key(k: &str) -> Option<Workload> {
        WORKLOADS.into_iter().find(|w| w.key() == k)
    }
}

/// xorshift64*: sizes without allocating.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// 16 ..= 1024, a multiple of 16 (64 sizes).
    fn size(&mut self) -> usize {
        16 + (self.next() % 64) as usize * 16
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn pairs(threads: usize, scale: f64) -> f64 {
    let per_thread = (20_000_000.0 * scale) as usize / threads;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(move || {
                // One block of each size stays live throughout, so that no allocator sees a
                // page (or span) of a size empty out at every free and give it back each time.
                let keep: Vec<(*mut u8, Layout)> = (0..64)
                    .map(|i| {
                        let l = layout(16 + i * 16);
                        // SAFETY: a non-zero size.
                        (unsafe { GLOBAL.alloc(l) }, l)
                    })
                    .collect();
                for i in 0..per_thread {
                    let l = layout(16 + (i % 64) * 16);
                    // SAFETY: a non-zero size; written within it and freed once.
                    unsafe {
                        let p = GLOBAL.alloc(l);
                        p.write(i as u8);
                        GLOBAL.dealloc(black_box(p), l);
                    }
                }
                for (p, l) in keep {
                    // SAFETY: allocated above with `l`, freed once.
                    unsafe { GLOBAL.dealloc(p, l) };
                }
            });
        }
    });
    (per_thread * threads) as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn channel(threads: usize, scale: f64) -> f64 {
    let lanes = (threads / 2).max(1);
    let per_lane = (4_000_000.0 * scale) as usize / lanes;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..lanes {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Box<[u8; 64]>>(256);
            s.spawn(move || {
                for i in 0..per_lane {
                    tx.send(Box::new([i as u8; 64])).unwrap();
                }
            });
            s.spawn(move || {
                let mut sum = 0u64;
                for b in rx {
                    sum += u64::from(b[63]);
                }
                black_box(sum);
            });
        }
    });
    (per_lane * lanes) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Wait for the other side of a queue: spin a little, then give the CPU up (there may be more
/// threads than CPUs).
fn pause(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn queue(threads: usize, scale: f64) -> f64 {
    let lanes = (threads / 2).max(1);
    let per_lane = (4_000_000.0 * scale) as usize / lanes;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..lanes {
            let q = std::sync::Arc::new(crossbeam_queue::ArrayQueue::<Box<[u8; 64]>>::new(256));
            let tx = q.clone();
            s.spawn(move || {
                for i in 0..per_lane {
                    let mut b = Box::new([i as u8; 64]);
                    let mut spins = 0;
                    while let Err(back) = tx.push(b) {
                        b = back;
                        pause(&mut spins);
                    }
                }
            });
            s.spawn(move || {
                let (mut sum, mut got) = (0u64, 0);
                while got < per_lane {
                    let mut spins = 0;
                    let b = loop {
                        match q.pop() {
                            Some(b) => break b,
                            None => pause(&mut spins),
                        }
                    };
                    sum += u64::from(b[63]);
                    got += 1;
                }
                black_box(sum);
            });
        }
    });
    (per_lane * lanes) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// A block handed from one thread to the next.
struct Handed(*mut u8, Layout);
// SAFETY: the block is owned by whoever holds the `Handed`.
unsafe impl Send for Handed {}

fn churn(threads: usize, scale: f64) -> f64 {
    let total = (10_000.0 * scale) as usize;
    let per_lane = total / threads;
    let start = Instant::now();
    std::thread::scope(|s| {
        for lane in 0..threads {
            s.spawn(move || {
                let handed: Mutex<Vec<Handed>> = Mutex::new(Vec::new());
                for t in 0..per_lane {
                    let handed = &handed;
                    std::thread::scope(|s| {
                        s.spawn(move || {
                            let mut rng = Rng(((lane * per_lane + t) as u64 + 1) * 0x9e37_79b9_7f4a_7c15);
                            // Free what the previous thread of this lane handed on.
                            let got = std::mem::take(&mut *handed.lock().unwrap());
                            for Handed(p, l) in got {
                                // SAFETY: allocated with `l` by the previous thread, freed once.
                                unsafe { GLOBAL.dealloc(p, l) };
                            }
                            let mut live: [(usize, usize); 32] = [(0, 0); 32];
                            let mut give = Vec::with_capacity(16);
                            for i in 0..1000 {
                                let l = layout(rng.size());
                                // SAFETY: a non-zero size, written within it.
                                let p = unsafe { GLOBAL.alloc(l) };
                                // SAFETY: as above.
                                unsafe { p.write(i as u8) };
                                if i % 64 == 0 && give.len() < 16 {
                                    give.push(Handed(p, l));
                                    continue;
                                }
                                let slot = &mut live[i % 32];
                                if slot.0 != 0 {
                                    // SAFETY: allocated above with this size, freed once.
                                    unsafe { GLOBAL.dealloc(slot.0 as *mut u8, layout(slot.1)) };
                                }
                                *slot = (p as usize, l.size());
                            }
                            for (p, size) in live {
                                if p != 0 {
                                    // SAFETY: as above.
                                    unsafe { GLOBAL.dealloc(p as *mut u8, layout(size)) };
                                }
                            }
                            *handed.lock().unwrap() = give;
                        });
                    });
                }
                for Handed(p, l) in handed.into_inner().unwrap() {
                    // SAFETY: as above.
                    unsafe { GLOBAL.dealloc(p, l) };
                }
            });
        }
    });
    start.elapsed().as_secs_f64() / scale
}

/// Resident bytes of this process.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Resident MiB after the threads, and the seconds they took.
fn rss_after_threads(threads: usize, _scale: f64) -> (f64, f64) {
    const THREADS: usize = 256;
    const BYTES: usize = 4 << 20;
    let before = rss();
    let start = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while next.fetch_add(1, Relaxed) < THREADS {
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            let mut rng = Rng(next.load(Relaxed) as u64 * 0x9e37_79b9_7f4a_7c15 + 1);
                            let mut blocks: Vec<(*mut u8, Layout)> = Vec::with_capacity(BYTES / 256);
                            let mut bytes = 0;
                            while bytes < BYTES {
                                let l = layout(rng.size());
                                // SAFETY: a non-zero size, written within it.
                                let p = unsafe { GLOBAL.alloc(l) };
                                // SAFETY: as above.
                                unsafe { p.write_bytes(1, l.size()) };
                                blocks.push((p, l));
                                bytes += l.size();
                            }
                            for (p, l) in blocks {
                                // SAFETY: allocated above, freed once.
                                unsafe { GLOBAL.dealloc(p, l) };
                            }
                        });
                    });
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let after = rss().saturating_sub(before) as f64 / (1 << 20) as f64;
    if std::env::var_os("ALLOC_BENCH_TRIM").is_some() {
        let s = PERCPU.stats();
        eprintln!(
            "cached {} KiB (depot {} KiB), from_inner {} to_inner {}",
            s.cached_bytes() >> 10,
            s.depot_bytes >> 10,
            s.from_inner,
            s.to_inner
        );
        PERCPU.trim();
        eprintln!("after trim: {:.1} MiB", rss().saturating_sub(before) as f64 / (1 << 20) as f64);
    }
    (after, secs)
}

fn child(cell: &str) {
    let mut it = cell.split(':');
    let (w, threads, scale) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let (threads, scale): (usize, f64) = (threads.parse().unwrap(), scale.parse().unwrap());
    let v = match Workload::from_key(w).expect("a workload") {
        Workload::Pairs => pairs(threads, scale),
        Workload::Channel => channel(threads, scale),
        Workload::Queue => queue(threads, scale),
        Workload::Churn => churn(threads, scale),
        Workload::Rss => {
            let (mib, secs) = rss_after_threads(threads, scale);
            println!("TIME {secs}");
            mib
        }
    };
    println!("RESULT {v}");
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// The child's result, and its `TIME` line if it printed one.
fn measure(allocator: &str, w: Workload, threads: usize, scale: f64) -> (f64, Option<f64>) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("ALLOC_BENCH_ALLOCATOR", allocator)
        .env("ALLOC_BENCH_CELL", format!("{}:{threads}:{scale}", w.key()))
        .output()
        .expect("re-run the bench binary");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{allocator} {}: {text}{}", w.key(), String::from_utf8_lossy(&out.stderr));
    let line = |p: &str| text.lines().find_map(|l| l.strip_prefix(p)).and_then(|v| v.parse().ok());
    (line("RESULT ").expect("a result"), line("TIME "))
}

fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        info.lines().find_map(|l| l.strip_prefix("model name")).map_or("?", |m| m.trim_start_matches([' ', '\t', ':']));
    let hyper = if info.contains(" hypervisor") { ", virtual machine" } else { "" };
    format!("{model}, {} online CPUs{hyper}", std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn main() {
    if let Ok(cell) = std::env::var("ALLOC_BENCH_CELL") {
        return child(&cell);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list`: nothing for a harness to list.
    }
    let (reps, scale) = if quick { (1, 0.2) } else { (3, 1.0) };
    let include = |a: &str| args.iter().any(|x| x == a) || !args.iter().any(|x| ALLOCATORS.contains(&x.as_str()));
    let allocators: Vec<usize> = (0..ALLOCATORS.len()).filter(|&i| include(ALLOCATORS[i])).collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let counts = [1, 2 * cpus, 4 * cpus];
    println!("PerCpuAlloc benchmark on {}; median of {reps} runs, one process per measurement", cpu_name());

    // results[w][t][a] = the runs; times[t][a] = the rss workload's seconds.
    let mut results = vec![vec![vec![Vec::new(); ALLOCATORS.len()]; counts.len()]; WORKLOADS.len()];
    let mut times = vec![vec![Vec::new(); ALLOCATORS.len()]; counts.len()];
    for _ in 0..reps {
        for (wi, &w) in WORKLOADS.iter().enumerate() {
            for (ti, &t) in counts.iter().enumerate() {
                for &a in &allocators {
                    let (v, secs) = measure(ALLOCATORS[a], w, t, scale);
                    results[wi][ti][a].push(v);
                    if let Some(secs) = secs {
                        times[ti][a].push(secs);
                    }
                }
            }
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // (workload number, threads, vs System, vs mimalloc) of every row, for the chart.
    let mut ratios: Vec<(String, usize, f64, f64)> = Vec::new();
    let mut table = |title: &str, data: &Vec<Vec<Vec<f64>>>, higher_is_better: bool| {
        println!("\n{title}");
        print!("| threads |");
        for &a in &allocators {
            print!(" {} |", ALLOCATOR_NAMES[a]);
        }
        println!(" PerCpuAlloc<System> vs System | vs mimalloc |");
        print!("|---:|");
        for _ in &allocators {
            print!("---:|");
        }
        println!("---:|---:|");
        for (ti, &t) in counts.iter().enumerate() {
            print!("| {t} |");
            let m: Vec<f64> = (0..ALLOCATORS.len())
                .map(|a| if data[ti][a].is_empty() { f64::NAN } else { median(&data[ti][a]) })
                .collect();
            for &a in &allocators {
                print!(" {:.3} |", m[a]);
            }
            // "x faster" (or, for memory, "x less"): > 1 means PerCpuAlloc<System> wins.
            let ratio = |other: f64| if higher_is_better { m[2] / other } else { other / m[2] };
            println!(" {:.2}x | {:.2}x |", ratio(m[0]), ratio(m[1]));
            ratios.push((title.split('.').next().unwrap_or("?").to_string(), t, ratio(m[0]), ratio(m[1])));
        }
    };
    for (wi, &w) in WORKLOADS.iter().enumerate() {
        table(w.title(), &results[wi], w.higher_is_better());
        if w == Workload::Rss {
            table("4b. time of the resident-memory workload (s, lower is better)", &times, false);
        }
    }
    println!("\n(ratio columns: how many times better PerCpuAlloc<System> is; > 1 is a win)");
    println!("\n{}", chart(&ratios));
    if let Some(path) = args.iter().position(|a| a == "--svg").and_then(|i| args.get(i + 1)) {
        // (`cargo bench` runs this in the package's folder: a relative path starts there.)
        match std::fs::write(path, svg(&ratios, &cpu_name())) {
            Ok(()) => println!("chart written to {path}"),
            Err(e) => {
                eprintln!("cannot write the chart to {path}: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Workload numbers and names, for the charts.
const CHART_NAMES: [(&str, &str); 6] =
    [("1", "pairs"), ("2", "channel"), ("2b", "queue"), ("3", "churn"), ("4", "rss memory"), ("4b", "rss time")];

fn chart_name(n: &str) -> &str {
    CHART_NAMES.iter().find(|c| c.0 == n).map_or(n, |c| c.1)
}

/// A text chart of the ratio columns: one bar per row and rival, `|` at 1x (a win reaches past it).
fn chart(ratios: &[(String, usize, f64, f64)]) -> String {
    const PER_X: f64 = 16.0; // characters per 1x
    const MAX: usize = 64;
    let mut out = String::from("PerCpuAlloc<System>, how many times better (| = 1x, a win reaches past it)\n");
    for (n, t, sys, mi) in ratios {
        for (rival, r) in [("System", sys), ("mimalloc", mi)] {
            let len = if r.is_finite() { ((r * PER_X).round() as usize).min(MAX) } else { 0 };
            let mut bar: Vec<char> = std::iter::repeat_n('#', len).chain(std::iter::repeat_n(' ', MAX - len)).collect();
            if bar[PER_X as usize] == ' ' {
                bar[PER_X as usize] = '|';
            }
            let bar: String = bar.into_iter().collect();
            out += &format!("{:>13} {t:>2} thr vs {rival:<8} {} {r:.2}x\n", chart_name(n), bar.trim_end());
        }
    }
    out
}

/// The same chart as SVG: horizontal bars, a line at 1x.
fn svg(ratios: &[(String, usize, f64, f64)], machine: &str) -> String {
    let (row, left, width, top) = (16.0, 190.0, 520.0, 40.0);
    let max = ratios.iter().flat_map(|r| [r.2, r.3]).filter(|v| v.is_finite()).fold(2.0f64, f64::max).min(10.0);
    let x = |v: f64| left + width * v.min(max) / max;
    let height = top + row * 2.0 * ratios.len() as f64 + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"16\" font-size=\"13\">PerCpuAlloc&lt;System&gt;: how many times better than System (blue) and mimalloc (orange)</text>\n\
         <text x=\"10\" y=\"30\" fill=\"#555\">{machine}; the line is 1x (a win reaches past it)</text>\n",
        w = left + width + 60.0
    );
    for (i, (n, t, sys, mi)) in ratios.iter().enumerate() {
        let y = top + row * 2.0 * i as f64;
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} ({t} thread{})</text>\n",
            left - 6.0,
            y + row,
            chart_name(n),
            if *t == 1 { "" } else { "s" }
        );
        for (k, (r, color)) in [(sys, "#4878b0"), (mi, "#e08030")].into_iter().enumerate() {
            let yy = y + row * k as f64 + 2.0;
            if r.is_finite() {
                s += &format!(
                    "<rect x=\"{left}\" y=\"{yy}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\n\
                     <text x=\"{:.1}\" y=\"{:.1}\">{r:.2}x</text>\n",
                    x(*r) - left,
                    row - 4.0,
                    x(*r) + 4.0,
                    yy + row - 6.0
                );
            }
        }
    }
    let bottom = top + row * 2.0 * ratios.len() as f64;
    s += &format!(
        "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"black\"/>\n\
         <text x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\">1x</text>\n</svg>\n",
        x(1.0),
        bottom + 14.0
    );
    s
}
