//! `restartable stress`, end to end: every test type briefly (text and `--json`), both index
//! modes, forced degraded mode, the disturbances, clean argument errors, and (inject builds)
//! delay injection at every point, a deliberately broken op that must be caught with its
//! reproduce line, and a tiny matrix. Also: the critical sections of the shipped binary contain
//! no delay-injection code unless it was built with the library's `inject` feature.

use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_restartable");
const TESTS: [&str; 7] = ["counter", "spinlock", "stack", "buffer", "memcpy", "remote", "rwlock"];

fn restartable(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).envs(env.iter().copied());
    // A degraded mode forced on the whole test run would change what these tests expect;
    // each test says what it wants. (GLIBC_TUNABLES is kept: CI runs these both ways.)
    if !env.iter().any(|(k, _)| *k == "RESTARTABLE_FORCE_DEGRADED") {
        cmd.env_remove("RESTARTABLE_FORCE_DEGRADED");
    }
    cmd.output().expect("run the restartable binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run `stress ... --json`, expect success, and return the one JSON object it printed.
fn stress_json(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec!["stress"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = restartable(&all, env);
    assert!(out.status.success(), "{all:?}: {}", testkit::describe(&out));
    let s = text(&out.stdout);
    assert_eq!(s.trim_end().lines().count(), 1, "one JSON object on one line: {s}");
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Every field of a passing per-test report.
fn check_test_report(t: &Value, ops: Option<u64>) {
    assert_eq!(t["ok"], true, "{t}");
    assert!(TESTS.contains(&t["test"].as_str().unwrap_or("")), "{t}");
    if let Some(ops) = ops {
        assert_eq!(t["ops"].as_u64(), Some(ops), "{t}");
    }
    assert!(t["checks_passed"].as_u64() >= Some(1), "{t}");
    assert_eq!(t["checks_failed"].as_u64(), Some(0), "{t}");
    for k in ["aborts", "slow_path_uses", "opv_runs", "remote_rounds"] {
        assert!(t[k].is_u64(), "{k} in {t}");
    }
    assert!(t["remote_rounds"].as_u64() >= Some(1), "the remote thread ran: {t}");
    assert!(t["seconds"].as_f64().is_some_and(|s| s >= 0.0), "{t}");
    assert_eq!(t["failures"].as_array().map(Vec::len), Some(0), "{t}");
    assert!(t["reproduce"].is_null(), "{t}");
}

fn mode_kind(v: &Value) -> &str {
    v["config"]["mode"]["kind"].as_str().unwrap_or("?")
}

/// Whether this machine runs the fast path (rseq + the membarrier rseq fence).
fn fast_mode_available() -> bool {
    let out = restartable(&["info", "--json"], &[]);
    let v: Value = serde_json::from_str(&text(&out.stdout)).unwrap_or(Value::Null);
    v["mode"]["kind"] == "fast"
}

#[test]
fn each_test_passes_briefly_with_a_json_report() {
    for test in TESTS {
        let v = stress_json(&["--test", test, "--threads", "4", "--reps", "2000"], &[]);
        assert_eq!(v["ok"], true, "{v}");
        let c = &v["config"];
        assert_eq!(c["test"], test, "{v}");
        assert_eq!(c["threads"], 4, "{v}");
        assert_eq!(c["reps"], 2000, "{v}");
        assert_eq!(c["index"], "cpu", "{v}");
        assert!(c["command"].as_str().is_some_and(|s| s.starts_with(&format!("restartable stress --test {test} "))));
        let tests = v["tests"].as_array().expect("tests array");
        assert_eq!(tests.len(), 1, "{v}");
        assert_eq!(tests[0]["test"], test, "{v}");
        check_test_report(&tests[0], Some(4 * 2000));
    }
}

#[test]
fn all_tests_by_mm_cid() {
    let v = stress_json(&["--index", "mm-cid", "--threads", "4", "--reps", "2000"], &[]);
    assert_eq!(v["config"]["index"], "mm-cid", "{v}");
    let tests = v["tests"].as_array().expect("tests array");
    let names: Vec<&str> = tests.iter().filter_map(|t| t["test"].as_str()).collect();
    assert_eq!(names, TESTS, "{v}");
    for t in tests {
        check_test_report(t, Some(4 * 2000));
    }
}

#[test]
fn the_text_report_is_a_table() {
    let out = restartable(&["stress", "--threads", "3", "--reps", "500"], &[]);
    assert!(out.status.success(), "{}", testkit::describe(&out));
    let s = text(&out.stdout);
    assert!(s.starts_with("restartable stress --test all --index cpu --threads 3 --reps 500\n"), "{s}");
    for t in TESTS {
        assert!(s.lines().any(|l| l.starts_with(t) && l.contains(" ok ")), "{t}: {s}");
    }
    assert!(s.contains("stress: 7 of 7 tests passed"), "{s}");
}

/// `--signal-ops`: the SIGUSR1 handler itself operates on the counter, the buffer, the memcpy
/// buffer and the rwlock (counted in their conservation checks); `--fork`: children forked while the workers run
/// check every structure. Both in fast and in degraded mode.
#[test]
fn signal_handlers_and_forked_children_use_the_structures() {
    for env in [&[][..], &[("RESTARTABLE_FORCE_DEGRADED", "1")][..]] {
        let v = stress_json(
            &["--threads", "6", "--reps", "200000", "--time-limit", "0.5", "--signal-ops", "--every", "8", "--fork"],
            env,
        );
        assert_eq!(v["ok"], true, "{env:?}: {v}");
        for t in v["tests"].as_array().expect("tests") {
            check_test_report(t, None);
            assert!(t["forks"].as_u64() > Some(0), "{env:?}: forked children checked: {t}");
            if matches!(t["test"].as_str(), Some("counter" | "buffer" | "memcpy" | "rwlock")) {
                assert!(t["handler_ops"].as_u64() > Some(0), "{env:?}: operations in the handler: {t}");
            } else {
                assert_eq!(t["handler_ops"], 0, "{env:?}: only async-signal-safe structures: {t}");
            }
        }
    }
}

#[test]
fn force_degraded_reruns_in_degraded_mode() {
    let v = stress_json(&["--force-degraded", "--threads", "4", "--reps", "1000"], &[]);
    assert_eq!(mode_kind(&v), "degraded", "{v}");
    assert!(v["config"]["mode"]["description"].as_str().is_some_and(|d| d.contains("forced")), "{v}");
    assert_eq!(v["config"]["force_degraded"], true, "{v}");
    assert!(v["config"]["command"].as_str().is_some_and(|c| c.ends_with(" --force-degraded")), "{v}");
    for t in v["tests"].as_array().expect("tests") {
        check_test_report(t, Some(4000));
        // Degraded: no critical section commits, so none aborts. Raw ops through `retry::run` (the
        // `remote` test) complete on the slow path, each counted. The collections are not
        // counted there: a counter's add and an rwlock's reader count update are one atomic
        // instruction on the current CPU's slot, a spin lock is a compare-exchange on its word,
        // and every other operation takes its CPU's guard word as a lock inline; only one that
        // finds that lock busy goes the long way and is counted, at most once. (With
        // `percpu-alloc` the binary's global allocator takes slow paths of its own, which the
        // process-wide count includes.)
        let (slow, ops) = (t["slow_path_uses"].as_u64().unwrap(), t["ops"].as_u64().unwrap());
        if t["test"] == "remote" {
            assert!(slow >= 1000, "every degraded raw op is a slow path: {t}");
        } else if t["test"] == "counter" || t["test"] == "rwlock" || t["test"] == "spinlock" {
            if !cfg!(feature = "percpu-alloc") {
                assert_eq!(slow, 0, "degraded counter adds, rwlock reads and spin locks take no guard: {t}");
            }
        } else if !cfg!(feature = "percpu-alloc") {
            assert!(slow <= ops, "each operation is counted at most once: {t}");
        }
        assert_eq!(t["aborts"], 0, "{t}");
    }
    // The same mode when the variable comes from the environment: the report says so, and its
    // reproduce line carries --force-degraded.
    let v =
        stress_json(&["--test", "counter", "--threads", "2", "--reps", "100"], &[("RESTARTABLE_FORCE_DEGRADED", "1")]);
    assert_eq!(mode_kind(&v), "degraded", "{v}");
    assert_eq!(v["config"]["force_degraded"], true, "{v}");
}

#[test]
fn without_force_the_mode_is_the_machines() {
    let v = stress_json(&["--test", "counter", "--threads", "2", "--reps", "100"], &[]);
    assert_eq!(mode_kind(&v) == "fast", fast_mode_available(), "{v}");
    assert_eq!(v["config"]["force_degraded"], false, "{v}");
}

/// Without rseq (a seccomp filter answers it with ENOSYS, glibc's registration turned off so
/// the library must register its own), the process is degraded and every test still passes.
#[test]
fn without_rseq_every_test_passes_degraded() {
    let mut cmd = Command::new(BIN);
    cmd.args(["stress", "--threads", "4", "--reps", "1000", "--signal", "--every", "50", "--json"])
        .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
        .env_remove("RESTARTABLE_FORCE_DEGRADED");
    testkit::deny_syscalls_command(&mut cmd, &[(libc::SYS_rseq, libc::ENOSYS)]);
    let out = cmd.output().expect("run the restartable binary");
    assert!(out.status.success(), "{}", testkit::describe(&out));
    let v: Value =
        serde_json::from_str(&text(&out.stdout)).unwrap_or_else(|e| panic!("{e}: {}", testkit::describe(&out)));
    assert_eq!(mode_kind(&v), "degraded", "{v}");
    assert_eq!(v["config"]["force_degraded"], false, "{v}");
    for t in v["tests"].as_array().expect("tests") {
        check_test_report(t, Some(4000));
        assert_eq!(t["aborts"], 0, "{t}");
    }
}

#[test]
fn disturbances_yield_signal_sleep_and_affinity_churn() {
    let v = stress_json(
        &[
            "--threads",
            "4",
            "--reps",
            "1500",
            "--every",
            "50",
            "--yield",
            "--signal",
            "--sleep-ms",
            "0",
            "--affinity-churn",
        ],
        &[],
    );
    let c = &v["config"];
    assert_eq!((c["every"].as_u64(), c["yield"].as_bool(), c["signal"].as_bool()), (Some(50), Some(true), Some(true)));
    assert_eq!((c["sleep_ms"].as_u64(), c["affinity_churn"].as_bool()), (Some(0), Some(true)), "{v}");
    for t in v["tests"].as_array().expect("tests") {
        check_test_report(t, Some(6000));
    }
    // The same, degraded, by mm_cid, with a real sleep.
    let v = stress_json(
        &["--threads", "3", "--reps", "300", "--every", "100", "--sleep-ms", "1", "--signal", "--index", "mm-cid"],
        &[("RESTARTABLE_FORCE_DEGRADED", "1")],
    );
    for t in v["tests"].as_array().expect("tests") {
        check_test_report(t, Some(900));
    }
}

#[test]
fn time_limit_stops_early() {
    let v = stress_json(&["--test", "counter", "--threads", "2", "--reps", "1000000000", "--time-limit", "0.2"], &[]);
    let t = &v["tests"][0];
    check_test_report(t, None);
    // Fewer ops than asked for is what proves the early stop; the time bound only catches a
    // limit that is ignored for long (a loaded machine may stretch 0.2 s a lot).
    assert!(t["ops"].as_u64().is_some_and(|n| n > 0 && n < 2_000_000_000), "{t}");
    assert!(t["seconds"].as_f64().is_some_and(|s| s < 60.0), "{t}");
}

/// A bad argument: non-zero exit, a message that names the problem, no panic, nothing on
/// stdout.
fn rejects(args: &[&str], needle: &str) {
    let mut all = vec!["stress"];
    all.extend_from_slice(args);
    let out = restartable(&all, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{all:?} succeeded: {}", testkit::describe(&out));
    assert!(matches!(out.status.code(), Some(1 | 2)), "{all:?}: {}", testkit::describe(&out));
    assert!(!err.contains("panicked"), "{all:?}: {err}");
    assert!(err.contains(needle), "{all:?}: expected {needle:?} in: {err}");
    assert!(out.stdout.is_empty(), "{all:?}: {}", text(&out.stdout));
}

#[test]
fn bad_arguments_fail_cleanly() {
    rejects(&["--test", "nope"], "invalid value 'nope'");
    rejects(&["--threads", "0"], "0 is not in 1..=1024");
    rejects(&["--threads", "many"], "invalid value 'many'");
    rejects(&["--threads", "100000"], "--threads");
    rejects(&["--reps", "0"], "--reps");
    rejects(&["--reps", "-5"], "-5");
    rejects(&["--index", "numa"], "invalid value 'numa'");
    rejects(&["--every", "0", "--yield"], "--every");
    rejects(&["--every", "5"], "--yield");
    rejects(&["--sleep-ms", "100000"], "--sleep-ms");
    rejects(&["--inject-point", "9"], "9 is not in 1..=8");
    rejects(&["--inject-point", "0"], "0 is not in 1..=8");
    rejects(&["--inject-loops", "5"], "--inject-point");
    rejects(&["--time-limit", "0"], "above 0");
    rejects(&["--time-limit", "-1"], "above 0");
    rejects(&["--time-limit", "soon"], "not a number of seconds");
    rejects(&["--time-limit", "NaN"], "above 0");
    rejects(&["--matrix", "huge"], "invalid value 'huge'");
    rejects(&["--matrix", "quick", "--test", "counter"], "cannot be used with");
    rejects(&["--matrix", "quick", "--force-degraded"], "cannot be used with");
    rejects(&["--bogus"], "unexpected argument '--bogus'");
}

#[cfg(not(feature = "inject"))]
#[test]
fn injection_needs_the_feature() {
    // This binary may still have the library's inject feature (when only `restartable/inject`
    // was asked for), but without the CLI's feature the options are refused with a hint.
    rejects(&["--inject-point", "5", "--inject-loops", "100"], "--features inject");
    rejects(&["--sabotage"], "--features inject");
    let out = restartable(&["stress", "--list-points"], &[]);
    assert!(out.status.success(), "{}", testkit::describe(&out));
    assert!(text(&out.stdout).contains("--features inject"), "{}", testkit::describe(&out));
}

#[cfg(feature = "inject")]
#[test]
fn every_injection_point_runs_and_conserves() {
    let out = restartable(&["stress", "--list-points"], &[]);
    assert!(out.status.success(), "{}", testkit::describe(&out));
    assert_eq!(text(&out.stdout).lines().count(), 8, "{}", testkit::describe(&out));
    for k in 1..=8 {
        let k = k.to_string();
        let v = stress_json(
            &[
                "--threads",
                "4",
                "--reps",
                "400",
                "--inject-point",
                &k,
                "--inject-loops",
                "2000",
                "--signal",
                "--every",
                "8",
            ],
            &[],
        );
        assert_eq!(v["config"]["inject_point"].as_u64(), k.parse().ok(), "{v}");
        assert_eq!(v["config"]["inject_loops"], 2000, "{v}");
        for t in v["tests"].as_array().expect("tests") {
            check_test_report(t, Some(1600));
        }
    }
}

/// Aborts are seen (and survived) when a long delay sits just before the commit and signals
/// keep arriving.
#[cfg(feature = "inject")]
#[test]
fn injected_delays_with_signals_cause_aborts() {
    if !fast_mode_available() {
        eprintln!("no fast mode here: skipped");
        return;
    }
    let v = stress_json(
        &["--test", "counter", "--threads", "4", "--reps", "3000", "--inject-point", "5", "--inject-loops", "50000"]
            .into_iter()
            .chain(["--signal", "--every", "4"])
            .collect::<Vec<_>>(),
        &[],
    );
    let t = &v["tests"][0];
    check_test_report(t, Some(12_000));
    assert!(t["aborts"].as_u64() > Some(0), "{t}");
}

/// The deliberately broken op (it commits twice) must make the counter test fail: exit 1, the
/// broken invariant named, and a reproduce line that reproduces it.
#[cfg(feature = "inject")]
#[test]
fn a_broken_op_is_caught_with_its_reproduce_line() {
    if !fast_mode_available() {
        eprintln!("no fast mode here (the broken op only runs on the fast path): skipped");
        return;
    }
    let out = restartable(&["stress", "--test", "counter", "--threads", "4", "--reps", "3000", "--sabotage"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", testkit::describe(&out));
    let err = text(&out.stderr);
    assert!(err.contains("FAILED: counter"), "{err}");
    assert!(err.contains("added "), "{err}");
    let line = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("reproduce: restartable "))
        .unwrap_or_else(|| panic!("no reproduce line: {err}"));
    assert_eq!(line, "stress --test counter --index cpu --threads 4 --reps 3000 --sabotage");
    assert!(err.contains("cargo run --release -p restartable-cli --features inject -- stress --test counter"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The reproduce line fails the same way.
    let again = restartable(&line.split(' ').collect::<Vec<_>>(), &[]);
    assert_eq!(again.status.code(), Some(1), "{}", testkit::describe(&again));
    // And --json says so too.
    let out =
        restartable(&["stress", "--test", "counter", "--threads", "2", "--reps", "2000", "--sabotage", "--json"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", testkit::describe(&out));
    let v: Value = serde_json::from_str(&text(&out.stdout)).expect("JSON report");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["tests"][0]["ok"], false, "{v}");
    assert!(v["tests"][0]["reproduce"].as_str().is_some_and(|r| r.contains("--sabotage")), "{v}");
}

/// A tiny quick matrix (small thread and repetition counts): every configuration runs in a
/// child, and the summary adds up.
#[test]
fn a_tiny_matrix_runs_every_configuration() {
    let out = restartable(
        &["stress", "--matrix", "quick", "--threads", "2", "--reps", "200", "--time-limit", "0.1", "--json"],
        &[],
    );
    assert!(out.status.success(), "{}", testkit::describe(&out));
    let v: Value =
        serde_json::from_str(&text(&out.stdout)).unwrap_or_else(|e| panic!("{e}: {}", testkit::describe(&out)));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["matrix"], "quick", "{v}");
    let groups = v["groups"].as_array().expect("groups");
    let configs = v["configurations"].as_u64().expect("configurations");
    assert_eq!(configs, 4 * groups.len() as u64, "2 index modes x 2 modes per group: {v}");
    assert_eq!(v["checks"].as_u64(), Some(7 * configs), "one check per test (7) per configuration: {v}");
    assert_eq!(v["checks_passed"], v["checks"], "{v}");
    let skipped = v["skipped_groups"].as_array().map_or(0, Vec::len);
    if cfg!(feature = "inject") {
        assert_eq!(skipped, 0, "{v}");
        assert!(groups.len() >= 14, "{v}");
    } else {
        assert!(skipped > 0, "{v}");
        assert!(text(&out.stderr).contains("--features inject"), "{}", testkit::describe(&out));
    }
}

/// The matrix reports a broken invariant with the exact command that reproduces it.
#[cfg(feature = "inject")]
#[test]
fn the_matrix_names_the_failing_configuration() {
    if !fast_mode_available() {
        eprintln!("no fast mode here: skipped");
        return;
    }
    let out = restartable(
        &["stress", "--matrix", "quick", "--threads", "2", "--reps", "300", "--time-limit", "0.1", "--sabotage"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", testkit::describe(&out));
    let err = text(&out.stderr);
    assert!(
        err.lines().any(|l| l.trim()
            == "restartable stress --test counter --index cpu --threads 2 --reps 300 --time-limit 0.1 --sabotage"),
        "{err}"
    );
    // Degraded configurations never run the broken fast path: they pass.
    assert!(
        !err.lines().any(|l| l.trim().starts_with("restartable stress") && l.contains("--force-degraded")),
        "{err}"
    );
    assert!(!err.contains("--test stack"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// No delay-injection code in the critical sections of a normal build.
//
// How: every critical section has a 32-byte descriptor in the ELF section `__rseq_cs`
// ({version u32, flags u32, start_ip u64, post_commit_offset u64, abort_ip u64}). We parse the
// shipped `restartable` binary with the `object` crate: `post_commit_offset` is a link-time
// constant in the file; `start_ip` and `abort_ip` are addresses, which in a position-
// independent executable are filled in at load time by R_X86_64_RELATIVE relocations (the file
// holds zeros there), so we take them from the relocation addends (or the file bytes for a
// non-PIE binary): `testkit::elf` does that, for this test and for the tool-metadata test. We check the descriptors are sane (the signature sits in the 4 bytes before
// every abort_ip), then scan the bytes of every section, [start_ip, start_ip +
// post_commit_offset), for the injection loop the `inject` feature compiles in at each point:
//
//     9:  sub reg64, 1     ; REX.W(+B) 83 /5 ib  -> 48|49 83 e8..ef 01
//         jnc 9b           ; 73 fa (a short jump 6 bytes back, onto the sub)
//
// This pattern is exact (the normal copy loops step by 64, 16 or 8 with `sub; cmp; jae` and then by 1
// with `dec; jmp`, nothing else jumps backwards onto a `sub 1`), and independent of register
// allocation and op layout. Whether the library
// was built with `inject` is read from the binary too (its `inject::LOOPS` symbol; the CLI's
// own feature implies it): the test suite runs both as shipped and with
// `--features restartable/inject`, which turns the library's feature on without the CLI's.
//
// - normal build: no section contains the loop (and every section is short: at most NORMAL_MAX
//   bytes, a sanity bound);
// - inject build: every section contains at least 3 loops (points 1, 2 and 3 are in every
//   op; 6 is in the abort handler, outside the range).
//
// (An earlier version also required every inject section to be longer than every normal one.
// Since the memcpy section copies eight bytes at a time, normal sections are 14 to 85 bytes and
// inject ones 59 to 127 here (rustc 1.95), so lengths no longer tell the builds apart; the loop
// count, which is exact, does. The batch sections' copy loops (16 bytes per `movups`) step back
// with `sub 16` / `sub 64`, never `sub 1`, so the pattern stays exact.)
// ---------------------------------------------------------------------------------------------

/// The longest a normal section may be: here the longest are the batch sections (a ring's
/// many-item push or pop, the stack's chunk walks), 269 bytes with the copy loops (64, then 16
/// bytes at a time, then an 8/4/2/1-byte tail) since the batch operations; 85 before them.
const NORMAL_MAX: u64 = 320;

struct Section {
    start: u64,
    len: u64,
    loops: usize,
}

fn rseq_sections(path: &str) -> (Vec<Section>, bool) {
    let elf = testkit::elf::RseqElf::read(path).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    for d in &elf.descriptors {
        assert_eq!((d.version, d.flags), (0, 0), "descriptor {:#x}: version and flags are 0", d.addr);
        let (start, len, abort) = (d.start_ip, d.post_commit_offset, d.abort_ip);
        assert!(
            start != 0 && abort != 0 && len > 0 && len < 4096,
            "descriptor {:#x}: {start:#x} {len} {abort:#x}",
            d.addr
        );
        let sig = elf.bytes(abort - 4, 4).unwrap_or_else(|| panic!("no section holds address {:#x}", abort - 4));
        assert_eq!(sig, 0x5305_3053u32.to_le_bytes(), "the signature precedes abort_ip {abort:#x}");
        let bytes = elf.bytes(start, len).unwrap_or_else(|| panic!("no section holds [{start:#x}, +{len})"));
        let loops = bytes
            .windows(6)
            .filter(|w| {
                matches!(w[0], 0x48 | 0x49)
                    && w[1] == 0x83
                    && (0xe8..=0xef).contains(&w[2])
                    && w[3..] == [0x01, 0x73, 0xfa]
            })
            .count();
        out.push(Section { start, len, loops });
    }
    (out, elf.inject_symbol)
}

#[test]
fn normal_builds_have_no_delay_injection_in_critical_sections() {
    let (sections, inject_symbol) = rseq_sections(BIN);
    let inject = inject_symbol || cfg!(feature = "inject");
    // 7 ops x 2 index modes at least (each inlined copy has its own descriptor).
    assert!(sections.len() >= 14, "{} sections", sections.len());
    let lens: Vec<u64> = sections.iter().map(|s| s.len).collect();
    eprintln!("inject build: {inject}; {} sections, lengths {lens:?}", sections.len());
    for s in &sections {
        if inject {
            assert!(
                s.loops >= 3,
                "inject build: section at {:#x} ({} bytes) has {} delay loops",
                s.start,
                s.len,
                s.loops
            );
        } else {
            assert_eq!(s.loops, 0, "normal build: section at {:#x} ({} bytes) has delay loops", s.start, s.len);
            assert!(
                s.len <= NORMAL_MAX,
                "normal build: section at {:#x} is {} bytes, over {NORMAL_MAX}",
                s.start,
                s.len
            );
        }
    }
}
