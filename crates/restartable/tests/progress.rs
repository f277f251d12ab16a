//! Progress in hostile environments: a debugger single-stepping through a fast path, and
//! valgrind (which has no rseq). Both run a child process (this test binary again).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use restartable::ops::{self, Cpu, Outcome};
use restartable::retry;

// With `--features global-percpu-alloc` this test binary's global allocator is the library's
// own `PerCpuAlloc` (CI runs the whole suite that way).
#[cfg(feature = "global-percpu-alloc")]
#[global_allocator]
static GLOBAL_PERCPU_ALLOC: restartable::alloc::PerCpuAlloc = restartable::alloc::PerCpuAlloc::new(std::alloc::System);

#[repr(align(128))]
pub struct Slot(AtomicUsize);

fn slots() -> Vec<Slot> {
    (0..restartable::possible_cpus()).map(|_| Slot(AtomicUsize::new(0))).collect()
}

fn total(slots: &[Slot]) -> usize {
    slots.iter().map(|s| s.0.load(Relaxed)).sum()
}

/// One add through the retry driver: the fast path, else the slow path under the guard.
fn add(slots: &[Slot], n: usize) {
    retry::run::<Cpu, _>(
        // SAFETY: slot `i` is only written by ops indexed by `i` or under i's guard.
        |i| unsafe { ops::load_add_store::<Cpu>(&slots[i].0, n, i) },
        // A plain load + store: exact only because the guard excludes every other writer.
        |stop| slots[stop.index()].0.store(slots[stop.index()].0.load(Relaxed) + n, Relaxed),
    );
}

#[unsafe(no_mangle)]
#[inline(never)]
/// # Safety
/// `slots` points to `possible_cpus()` live slots.
pub unsafe extern "C" fn restartable_gdb_target(slots: *const Slot) {
    // SAFETY: the function's contract.
    let slots = unsafe { std::slice::from_raw_parts(slots, restartable::possible_cpus()) };
    add(slots, 1);
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn restartable_gdb_done() {
    std::hint::black_box(());
}

/// The debuggee: one add through the driver, under a breakpoint that gdb single-steps from.
#[test]
fn gdb_child() {
    let Ok(max) = std::env::var("RESTARTABLE_GDB_CHILD") else { return };
    retry::set_max_aborts(max.parse().unwrap());
    let slots = slots();
    add(&slots, 1); // warm up: registration, mode, fence registration
    let slow_before = retry::slow_path_uses();
    // SAFETY: `slots` has `possible_cpus()` live slots.
    unsafe { restartable_gdb_target(slots.as_ptr()) };
    restartable_gdb_done();
    println!(
        "RESULT total={} slow={} aborts={} mode={}",
        total(&slots),
        retry::slow_path_uses() - slow_before,
        retry::aborts(),
        restartable::mode().is_fast()
    );
}

fn gdb(max_aborts: u32, step_limit: u32) -> String {
    let script = format!(
        r#"set pagination off
set confirm off
set style enabled off
set displaced-stepping off
set language c
break restartable_gdb_target
run
python
import gdb, re
done = int(gdb.parse_and_eval("(long)&restartable_gdb_done"))
steps = 0
pc = int(gdb.parse_and_eval("$pc"))
while steps < {step_limit} and pc != done:
    gdb.execute("stepi", to_string=True)
    steps += 1
    pc = int(gdb.parse_and_eval("$pc"))
print("STEPS", steps, "REACHED_DONE" if pc == done else "NOT_DONE")
# Read the driver's counters from memory (no inferior calls: they fail on some VMs).
def counter(name):
    out = gdb.execute("info variables restartable::retry::" + name + "::", to_string=True)
    addr = re.search(r"(0x[0-9a-f]+)\s+restartable::retry::" + name, out).group(1)
    return int(gdb.parse_and_eval("*(unsigned long *)" + addr))
print("REPORT aborts=%d" % counter("ABORTS"))
end
{finish}
"#,
        finish = if max_aborts == u32::MAX { "kill" } else { "continue" }
    );
    let dir = std::env::temp_dir().join(format!("restartable-gdb-{}-{max_aborts}", std::process::id()));
    std::fs::write(&dir, script).unwrap();
    let out = Command::new("gdb")
        .args(["-nx", "-batch", "-x"])
        .arg(&dir)
        .arg("--args")
        .arg(std::env::current_exe().unwrap())
        .args(["gdb_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("RESTARTABLE_GDB_CHILD", max_aborts.to_string())
        .output()
        .expect("gdb must be installed (.ci/run installs it)");
    let _ = std::fs::remove_file(&dir);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn field(text: &str, key: &str) -> u64 {
    let at = text.rfind(key).unwrap_or_else(|| panic!("no {key} in:\n{text}")) + key.len();
    text[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// gdb single-steps (`stepi`, displaced stepping off) through one fast-path add. Every step
/// stops the thread, so the kernel restarts the critical section at every step: the fast path
/// can never commit. With the fallback (64 aborts) the add completes through the slow path.
///
/// Without the fallback it would never finish: the second run disables it
/// (`set_max_aborts(u32::MAX)`) and steps 12,000 instructions; the add never completes and the
/// abort count keeps growing (one abort per ~60 instructions stepped, the length of one attempt
/// of the out-of-line retry loop: a run here saw 97 aborts in 6,000 steps, and no commit).
/// With the fallback, a run here took 4,379 steps: 64 aborts, then the slow path.
#[test]
fn gdb_single_stepping_completes_through_the_slow_path() {
    if !restartable::mode().is_fast() {
        eprintln!("degraded mode: there is no fast path to single-step ({})", restartable::mode());
        return;
    }
    let text = gdb(retry::DEFAULT_MAX_ABORTS, 200_000);
    assert!(text.contains("REACHED_DONE"), "the add never completed under stepi:\n{text}");
    assert!(text.contains("RESULT total=2 "), "both adds counted exactly once:\n{text}");
    assert!(field(&text, "slow=") >= 1, "the slow path was used:\n{text}");
    assert!(field(&text, "aborts=") >= u64::from(retry::DEFAULT_MAX_ABORTS), "aborted at every step:\n{text}");
    eprintln!("with fallback: {} steps, {} aborts", field(&text, "STEPS "), field(&text, "aborts="));

    let text = gdb(u32::MAX, 12_000);
    assert!(text.contains("NOT_DONE"), "without the fallback the add must not complete:\n{text}");
    let aborts = field(&text, "REPORT aborts=");
    assert!(aborts >= 100, "the fast path kept aborting:\n{text}");
    eprintln!("without fallback: 12000 steps, {aborts} aborts, no commit");
}

/// The debuggee under valgrind: no rseq there, so the process runs degraded, and counts stay exact.
#[test]
fn valgrind_child() {
    if std::env::var_os("RESTARTABLE_VALGRIND_CHILD").is_none() {
        return;
    }
    let mode = restartable::mode();
    println!("MODE {mode}");
    assert!(!mode.is_fast(), "valgrind has no rseq: degraded mode expected");
    let threads = 12;
    let reps = 2_000;
    let slots = slots();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| (0..reps).for_each(|_| add(&slots, 1)));
        }
    });
    assert_eq!(total(&slots), threads * reps);
    if cfg!(feature = "global-percpu-alloc") {
        // The global allocator takes slow paths of its own (degraded mode) in the same count.
        assert!(retry::slow_path_uses() >= (threads * reps) as u64);
    } else {
        assert_eq!(retry::slow_path_uses(), (threads * reps) as u64);
    }
    println!("VALGRIND-OK total={}", total(&slots));
}

#[test]
fn valgrind_runs_degraded_and_exact() {
    let out = Command::new("valgrind")
        .args(["-q", "--error-exitcode=99"])
        .arg(std::env::current_exe().unwrap())
        .args(["valgrind_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("RESTARTABLE_VALGRIND_CHILD", "1")
        .output()
        .expect("valgrind must be installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "valgrind run failed:\n{text}");
    assert!(text.contains("VALGRIND-OK total=24000"), "{text}");
    let why = if cfg!(restartable_portable) {
        "degraded: built without critical sections"
    } else {
        "degraded: rseq unavailable (ENOSYS"
    };
    assert!(text.contains(why), "{text}");
}

#[test]
fn fast_path_is_used_normally() {
    let slots = slots();
    let before = retry::slow_path_uses();
    for _ in 0..1000 {
        add(&slots, 1);
    }
    assert_eq!(total(&slots), 1000);
    if restartable::mode().is_fast() {
        // Other tests in this binary may take the slow path concurrently; this thread's adds
        // should almost all be fast.
        assert!(retry::slow_path_uses() - before < 1000);
    }
    let _ = Outcome::Committed;
}
