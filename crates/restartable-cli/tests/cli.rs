//! The `restartable` binary, end to end: `info --json` in every rseq environment (glibc's
//! registration, our own, and none under a seccomp filter), and argument errors.

use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_restartable");

fn restartable(args: &[&str], env: &[(&str, &str)], deny: &[(i64, i32)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).envs(env.iter().copied());
    // The parent's environment may carry the CI's GLIBC_TUNABLES (or a forced degraded mode):
    // each test says what it wants.
    for var in ["GLIBC_TUNABLES", "RESTARTABLE_FORCE_DEGRADED"] {
        if !env.iter().any(|(k, _)| *k == var) {
            cmd.env_remove(var);
        }
    }
    if !deny.is_empty() {
        testkit::deny_syscalls_command(&mut cmd, deny);
    }
    cmd.output().expect("run the restartable binary")
}

fn info_json(env: &[(&str, &str)], deny: &[(i64, i32)]) -> Value {
    let out = restartable(&["info", "--json"], env, deny);
    assert!(out.status.success(), "{}", testkit::describe(&out));
    let text = String::from_utf8(out.stdout.clone()).expect("UTF-8 output");
    assert_eq!(text.trim_end().lines().count(), 1, "one JSON object on one line: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    check_shape(&v);
    v
}

/// Every field `info --json` promises, with its type.
fn check_shape(v: &Value) {
    assert!(v.is_object(), "{v}");
    assert!(v["kernel_release"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert!(v["glibc_version"].is_string() || v["glibc_version"].is_null(), "{v}");
    for k in ["rseq_feature_size", "rseq_align", "mm_cid", "node"] {
        assert!(v[k].is_u64() || v[k].is_null(), "{k} in {v}");
    }
    for k in ["usable_len", "cpu", "possible_cpus", "online_cpus"] {
        assert!(v[k].is_u64(), "{k} in {v}");
    }
    assert!(v["cpu"].as_u64() < v["possible_cpus"].as_u64(), "{v}");
    assert!(v["possible_cpus"].as_u64() >= Some(1), "{v}");
    assert!(v["mode"]["kind"].as_str().is_some_and(|k| k == "fast" || k == "degraded"), "{v}");
    let r = &v["registration"];
    match r["owner"].as_str() {
        Some("glibc") => assert!(r["offset"].is_i64() && r["size"].is_u64(), "{v}"),
        Some("own") => assert!(r["len"].as_u64() >= Some(32) && r["align"].as_u64() >= Some(32), "{v}"),
        Some("unavailable") => {
            assert!(r["errno"].is_i64() || r["errno"].is_null(), "{v}");
            assert!(r["errno_name"].is_string() || r["errno_name"].is_null(), "{v}");
            assert!(r["reason"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        }
        other => panic!("owner {other:?} in {v}"),
    }
    let m = &v["membarrier"];
    assert!(m["bits"].is_u64(), "{v}");
    assert!(m["commands"].as_array().is_some_and(|c| c.iter().all(Value::is_string)), "{v}");
    assert!(m["rseq_fence"].is_boolean(), "{v}");
}

#[test]
fn info_json_has_every_field() {
    let v = info_json(&[], &[]);
    // This machine's glibc (2.35+) registers rseq itself unless told otherwise; musl/old glibc
    // would give "own".
    let owner = v["registration"]["owner"].as_str().unwrap();
    assert!(owner == "glibc" || owner == "own", "{v}");
    if v["membarrier"]["rseq_fence"] == true {
        assert_eq!(v["mode"]["kind"], "fast", "{v}");
    }
}

#[test]
fn info_json_own_registration_when_glibc_is_told_not_to() {
    let v = info_json(&[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], &[]);
    assert_eq!(v["registration"]["owner"], "own", "{v}");
}

fn unavailable(errno: i32, name: &str) {
    let v = info_json(&[], &[(testkit::SYS_RSEQ, errno)]);
    let r = &v["registration"];
    assert_eq!(r["owner"], "unavailable", "{v}");
    assert_eq!(r["errno"], errno, "{v}");
    assert_eq!(r["errno_name"], name, "{v}");
    assert_eq!(v["mode"]["kind"], "degraded", "{v}");
    assert_eq!(v["mode"]["why"], "no_rseq", "{v}");
    // No area: nothing read from one.
    assert!(v["mm_cid"].is_null() && v["node"].is_null(), "{v}");
}

#[test]
fn info_json_rseq_denied_enosys() {
    unavailable(libc::ENOSYS, "ENOSYS");
}

#[test]
fn info_json_rseq_denied_eperm() {
    unavailable(libc::EPERM, "EPERM");
}

#[test]
fn info_json_rseq_denied_with_glibc_off_too() {
    let v = info_json(&[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")], &[(testkit::SYS_RSEQ, libc::ENOSYS)]);
    assert_eq!(v["registration"]["owner"], "unavailable", "{v}");
    assert_eq!(v["registration"]["errno_name"], "ENOSYS", "{v}");
}

#[test]
fn info_json_membarrier_denied() {
    // rseq works but membarrier is refused: the fence cannot be registered, so degraded.
    let v = info_json(&[], &[(testkit::SYS_MEMBARRIER, libc::EPERM)]);
    assert_eq!(v["membarrier"]["bits"], 0, "{v}");
    assert_eq!(v["membarrier"]["rseq_fence"], false, "{v}");
    assert_eq!(v["mode"]["kind"], "degraded", "{v}");
    assert_eq!(v["mode"]["why"], "no_fence", "{v}");
}

#[test]
fn info_json_forced_degraded() {
    let v = info_json(&[("RESTARTABLE_FORCE_DEGRADED", "1")], &[]);
    assert_eq!(v["mode"]["kind"], "degraded", "{v}");
    assert_eq!(v["mode"]["why"], "forced", "{v}");
}

#[test]
fn info_text_summary() {
    let out = restartable(&["info"], &[], &[]);
    assert!(out.status.success(), "{}", testkit::describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["kernel", "rseq area", "membarrier", "mode"] {
        assert!(text.contains(word), "{word} missing: {text}");
    }
}

#[test]
fn tour_runs_with_no_subcommand() {
    let out = restartable(&[], &[], &[]);
    assert!(out.status.success(), "{}", testkit::describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rseq area"), "{text}");
    for test in ["counter", "spinlock", "stack", "buffer", "memcpy", "remote"] {
        assert!(text.lines().any(|l| l.trim_start().starts_with(test) && l.contains(" ok ")), "{test}: {text}");
    }
    assert!(text.contains("Counter::add (degraded mode)"), "the bench table: {text}");
    assert!(text.contains("bench --collections"), "the collections' section: {text}");
    for row in ["Stack<u64>", "SegQueue<u64>", "SpinLock<T>", "ArrayQueue<[u64; 8]>"] {
        assert!(text.lines().any(|l| l.starts_with(row)), "the collections' row {row}: {text}");
    }
    let last = text.lines().rev().find(|l| l.starts_with("verified in ")).expect("the verification line");
    assert!(last.contains("stress checks passed") && last.contains("counted exactly"), "{last}");
}

#[test]
fn tour_also_runs_degraded() {
    let out = restartable(&[], &[("RESTARTABLE_FORCE_DEGRADED", "1")], &[]);
    assert!(out.status.success(), "{}", testkit::describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("degraded: forced"), "{text}");
    assert!(text.contains("verified in "), "{text}");
}

#[test]
fn bad_arguments_exit_2_without_panicking() {
    for args in [&["info", "--bogus"][..], &["no-such-command"], &["info", "extra"], &["--json"]] {
        let out = restartable(args, &[], &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", testkit::describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Usage"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn help_and_version_exit_0() {
    for args in [&["--help"][..], &["info", "--help"], &["--version"]] {
        let out = restartable(args, &[], &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", testkit::describe(&out));
    }
}
