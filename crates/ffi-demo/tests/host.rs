//! The C host (`host.c`, compiled here with gcc) `dlopen`s the cdylib, uses a counter, a stack
//! and a buffer from 4 threads, checks every total exactly, `dlclose`s the library and keeps
//! running for a second under preemption and a signal storm; once with glibc's rseq
//! registration and once with the library's own (`GLIBC_TUNABLES=glibc.pthread.rseq=0`).
//! Timing is printed (`add_n ns_per_add`), never asserted.

use std::process::{Command, Output};
use std::sync::OnceLock;

mod support;

/// The compiled host, once per test binary (`None` without gcc).
fn host() -> Option<&'static std::path::Path> {
    static HOST: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        support::compile_host(dir).unwrap_or_else(|e| panic!("compiling host.c: {e}"))
    })
    .as_deref()
}

fn run_host(glibc_tunables: Option<&str>) -> Option<(Output, String)> {
    let Some(host) = host() else {
        eprintln!("SKIPPED: gcc not found, the C host cannot be built");
        return None;
    };
    let mut cmd = Command::new(host);
    cmd.arg(support::library()).env_remove("RESTARTABLE_FORCE_DEGRADED").env_remove("GLIBC_TUNABLES");
    if let Some(t) = glibc_tunables {
        cmd.env("GLIBC_TUNABLES", t);
    }
    let out = cmd.output().expect("run the host");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{}", testkit::describe(&out));
    Some((out, stdout))
}

/// Who should own the host's rseq areas, and whether it should run in fast mode: what this
/// process finds, except that the host is started without `GLIBC_TUNABLES` (CI runs this suite
/// both ways) or with glibc's registration off.
fn expected(glibc_off: bool) -> (&'static str, bool) {
    let s = restartable::status();
    let fast = s.rseq_available() && s.membarrier_rseq_fence();
    let glibc_registers = {
        let version = restartable::sys::glibc_version().unwrap_or_default();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (2, 35)
    };
    let owner = match () {
        _ if !s.rseq_available() => "unavailable",
        _ if glibc_registers && !glibc_off => "glibc",
        _ => "own",
    };
    (owner, fast)
}

/// What the host must report: exact totals, the library still mapped after `dlclose`, threads
/// that ran and took signals after it, and the expected mode and registration.
fn check(out: &Output, stdout: &str, (registration, fast): (&str, bool)) {
    assert!(out.status.success(), "{}", testkit::describe(out));
    let line = format!("mode fast={} registration={registration}", i32::from(fast));
    assert!(stdout.lines().any(|l| l == line), "no {line:?}:\n{stdout}");
    let threads = format!("threads registration {}", [registration; 4].join(" "));
    assert!(stdout.lines().any(|l| l == threads), "no {threads:?}:\n{stdout}");

    // 4 threads x 20,000 ids, each adding id % 5 + 1, and 1,000 more adds each at the end.
    let expected: u64 = (0..80_000u64).map(|id| id % 5 + 1).sum::<u64>() + 4 * 1000;
    let c = support::numbers(stdout, "counter ");
    assert_eq!(
        c,
        [expected as f64, expected as f64, 0.0, expected as f64],
        "counter sum/take/after/expected:\n{stdout}"
    );
    for name in ["stack ", "buffer "] {
        assert_eq!(support::numbers(stdout, name), [80_000.0, 80_000.0], "{name}pushed/accounted:\n{stdout}");
    }
    assert!(stdout.contains("dlclose done; library still mapped: yes (pinned)"), "{stdout}");
    let after = support::numbers(stdout, "after dlclose: ");
    assert!(
        after.len() == 5 && after[0] >= 1.0 && after[1] > 0.0 && after[3] > 0.0,
        "after dlclose: {after:?}\n{stdout}"
    );
    let ns = support::numbers(stdout, "add_n ns_per_add ");
    assert!(ns.len() == 1 && ns[0] > 0.0, "{stdout}");
    assert_eq!(stdout.lines().last(), Some("host: ok"), "{stdout}");
    println!("cdylib hot path from the C host ({registration} registration): {} ns per add", ns[0]);
}

#[test]
fn c_host_with_glibc_registration() {
    if let Some((out, stdout)) = run_host(None) {
        check(&out, &stdout, expected(false));
    }
}

#[test]
fn c_host_with_own_registration() {
    if let Some((out, stdout)) = run_host(Some("glibc.pthread.rseq=0")) {
        check(&out, &stdout, expected(true));
    }
}

/// The cdylib carries the same tool metadata as an executable (issue 9 item 5): every
/// descriptor in `__rseq_cs_ptr_array`, every exit in `__rseq_exit_point_array`, relocated.
#[test]
fn cdylib_lists_every_descriptor_and_every_exit() {
    let lib = support::library();
    let elf = testkit::elf::RseqElf::read(&lib).unwrap_or_else(|e| panic!("{e}"));
    let problems = elf.tool_metadata_problems();
    assert!(problems.is_empty(), "{}: {} problems:\n{}", lib.display(), problems.len(), problems.join("\n"));
    // The counter's add, the stack's push and pop, the buffer's push and pop at least.
    assert!(elf.descriptors.len() >= 5, "{} descriptors", elf.descriptors.len());
    println!("{}: {} descriptors, {} exit points", lib.display(), elf.descriptors.len(), elf.exit_points.len());
}
