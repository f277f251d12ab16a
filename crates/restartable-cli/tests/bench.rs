//! `restartable bench` end to end: a tiny run of each suite (the counters, `--collections`, `--rwlock`, `--alloc`)
//! measures every implementation at every thread count and emits one JSON object with every
//! field, the SVG chart is written, and bad arguments fail with a message, never a panic.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_restartable");

/// Every implementation's JSON key, in table order.
const IMPLS: [&str; 9] = [
    "counter",
    "raw-rseq",
    "raw-rseq-unguarded",
    "floor",
    "shared-atomic",
    "percpu-atomic",
    "thread-local",
    "mutex",
    "counter-degraded",
];

/// The keys `bench --collections` must report (issue 15), and the extra ones (the shared
/// mutexes, the reference rows), in table order.
const COLLECTIONS: [&str; 18] = [
    "stack",
    "segqueue",
    "mutex-vec",
    "buffer",
    "arrayqueue",
    "memcpy-buffer",
    "arrayqueue-copy",
    "stack-batch16",
    "buffer-batch16",
    "memcpy-buffer-batch16",
    "spinlock",
    "parking-lot-mutex",
    "std-mutex",
    "parking-lot-mutex-shared",
    "std-mutex-shared",
    "ref-box-alloc",
    "ref-rseq-pair",
    "ref-cas-pair",
];

fn bench(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("bench").args(args);
    // The parent's environment may carry a forced degraded mode or the CI's GLIBC_TUNABLES.
    cmd.env_remove("RESTARTABLE_FORCE_DEGRADED").env_remove("GLIBC_TUNABLES");
    cmd.output().expect("run the restartable binary")
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("restartable-bench-{}-{name}", std::process::id()))
}

fn positive(v: &Value) -> bool {
    v.as_f64().is_some_and(|x| x.is_finite() && x > 0.0)
}

#[test]
fn tiny_run_emits_every_field_and_a_chart() {
    let svg = temp_path("chart.svg");
    let out = bench(&["--threads", "1,2", "--duration", "0.01", "--json", "--svg", svg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout.clone()).expect("UTF-8 output");
    assert_eq!(text.trim_end().lines().count(), 1, "one JSON object on one line: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));

    assert_eq!(v["suite"], "counters", "the default suite");
    assert!(v["op"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    let m = &v["machine"];
    assert!(m["cpu_model"].as_str().is_some_and(|s| !s.is_empty()), "{m}");
    assert!(m["kernel"].as_str().is_some_and(|s| !s.is_empty()), "{m}");
    assert!(m["cores"].as_u64() >= Some(1) && m["possible_cpus"].as_u64() >= m["cores"].as_u64(), "{m}");
    assert!(matches!(m["mode"]["kind"].as_str(), Some("fast" | "degraded")), "{m}");
    assert!(m["mode"]["description"].as_str().is_some_and(|s| !s.is_empty()), "{m}");

    let p = &v["params"];
    assert_eq!(p["threads"], serde_json::json!([1, 2]), "{p}");
    assert_eq!(p["duration_s"].as_f64(), Some(0.01), "{p}");
    assert_eq!(p["rounds"].as_u64(), Some(3), "the default: {p}");

    let results = v["results"].as_array().unwrap_or_else(|| panic!("results array: {v}"));
    let keys: Vec<&str> = results.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys, IMPLS, "every implementation, in order");
    for r in results {
        assert!(r["name"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        let cells = r["cells"].as_array().unwrap_or_else(|| panic!("cells: {r}"));
        let threads: Vec<u64> = cells.iter().filter_map(|c| c["threads"].as_u64()).collect();
        assert_eq!(threads, [1, 2], "{r}");
        for c in cells {
            for k in ["ns_per_op", "mops", "ops", "elapsed_ns"] {
                assert!(positive(&c[k]), "{k} in {} {c}", r["key"]);
            }
            assert!(c["ops"].is_u64(), "{c}");
            // The reported numbers agree with each other.
            let (ns, mops, ops, el, t) = (
                c["ns_per_op"].as_f64().unwrap(),
                c["mops"].as_f64().unwrap(),
                c["ops"].as_f64().unwrap(),
                c["elapsed_ns"].as_f64().unwrap(),
                c["threads"].as_f64().unwrap(),
            );
            assert!((ns - el * t / ops).abs() <= 1e-6 * ns, "{c}");
            assert!((mops - ops * 1e3 / el).abs() <= 1e-6 * mops, "{c}");
            let rounds = c["rounds"].as_array().unwrap_or_else(|| panic!("rounds: {c}"));
            assert_eq!(rounds.len(), 3, "{c}");
            // The median round is one of the rounds.
            assert!(rounds.iter().any(|x| x["ops"] == c["ops"] && x["elapsed_ns"] == c["elapsed_ns"]), "{c}");
        }
    }

    let rt = &v["remote_take"];
    assert_eq!(rt["threads"].as_u64(), Some(2), "{rt}");
    assert!(positive(&rt["adds"]), "{rt}");
    for k in ["median_us", "p99_us"] {
        assert!(positive(&rt[k]), "{k} in {rt}");
    }
    assert!(rt["p99_us"].as_f64() >= rt["median_us"].as_f64(), "{rt}");
    for which in ["take", "take_cpu"] {
        let l = &rt[which];
        assert!(positive(&l["samples"]) && positive(&l["median_us"]) && positive(&l["p99_us"]), "{which}: {rt}");
        assert!(l["found"].as_u64() <= l["samples"].as_u64(), "{which}: {rt}");
    }
    assert!(v["library"]["aborts"].is_u64() && v["library"]["slow_path_uses"].is_u64(), "{v}");

    let doc = std::fs::read_to_string(&svg).expect("the SVG file was written");
    let _ = std::fs::remove_file(&svg);
    assert!(!doc.is_empty());
    assert!(doc.starts_with("<svg") || doc.starts_with("<?xml"), "{}", &doc[..doc.len().min(200)]);
    assert!(doc.trim_end().ends_with("</svg>"));
    for r in results {
        let name = r["name"].as_str().unwrap().replace('<', "&lt;").replace('>', "&gt;");
        assert!(doc.contains(&name), "the legend names {name}");
    }
}

#[test]
fn table_output_shows_machine_rows_and_columns() {
    let out = bench(&["--threads", "1,3", "--duration", "0.005", "--rounds", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(text.starts_with("machine: "), "{text}");
    assert!(text.contains("mode:"), "{text}");
    assert!(text.contains("1 thread") && text.contains("3 threads"), "{text}");
    for name in ["Counter::add", "Mutex<u64>", "Counter::add (degraded mode)", "thread-local Cell (floor)"] {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("row {name}: {text}"));
        // Two cells, each "ns/op (Mops/s)".
        assert_eq!(line.matches(" (").count() - name.matches(" (").count(), 2, "{line}");
    }
    assert!(text.contains("take():") && text.contains("take_cpu(c)"), "{text}");
}

#[test]
fn collections_json_has_every_key_at_every_thread_count() {
    let svg = temp_path("collections.svg");
    let out = bench(&[
        "--collections",
        "--threads",
        "1,2",
        "--duration",
        "0.01",
        "--rounds",
        "1",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    // A run that lost or doubled an item, answered "full" from an unbounded queue, tore an
    // item or lost a locked update exits 1: success means every count was checked and held.
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout.clone()).expect("UTF-8 output");
    assert_eq!(text.trim_end().lines().count(), 1, "one JSON object on one line: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["suite"], "collections", "{v}");
    assert!(v["op"].as_str().is_some_and(|s| s.contains("push") && s.contains("lock")), "{v}");
    assert!(v["machine"]["cpu_model"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(v["params"]["threads"], serde_json::json!([1, 2]), "{v}");
    assert_eq!(v["params"]["rounds"].as_u64(), Some(1), "{v}");
    assert!(v["remote_take"].is_null(), "the counters' remote take is not part of this suite: {v}");

    let results = v["results"].as_array().unwrap_or_else(|| panic!("results array: {v}"));
    let keys: Vec<&str> = results.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys, COLLECTIONS, "every implementation, in order");
    for r in results {
        assert!(r["name"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        let cells = r["cells"].as_array().unwrap_or_else(|| panic!("cells: {r}"));
        let threads: Vec<u64> = cells.iter().filter_map(|c| c["threads"].as_u64()).collect();
        assert_eq!(threads, [1, 2], "one cell per thread count: {r}");
        for c in cells {
            for k in ["ns_per_op", "mops", "ops", "elapsed_ns"] {
                assert!(positive(&c[k]), "{k} in {} {c}", r["key"]);
            }
            assert!(c["ops"].is_u64(), "{c}");
            assert_eq!(c["rounds"].as_array().map(Vec::len), Some(1), "{c}");
        }
    }

    let doc = std::fs::read_to_string(&svg).expect("the SVG file was written");
    let _ = std::fs::remove_file(&svg);
    assert!(doc.trim_end().ends_with("</svg>"));
    assert!(doc.contains("collections"), "the title names the suite");
    for r in results {
        let name = r["name"].as_str().unwrap().replace('<', "&lt;").replace('>', "&gt;");
        assert!(doc.contains(&name), "the legend names {name}");
    }
}

#[test]
fn collections_table_shows_the_operation_and_every_row() {
    let out = bench(&["--collections", "--threads", "1", "--duration", "0.005", "--rounds", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(text.starts_with("machine: "), "{text}");
    assert!(text.lines().any(|l| l.starts_with("op:") && l.contains("push") && l.contains("lock")), "{text}");
    for name in
        ["Stack<u64>", "SegQueue<u64>", "MemcpyBuffer<[u64; 8]>", "SpinLock<T>", "parking_lot::Mutex", "std Mutex"]
    {
        assert!(text.lines().any(|l| l.starts_with(name)), "row {name}: {text}");
    }
    // The counters' rows and remote take are not in it.
    assert!(!text.contains("Counter::add") && !text.contains("take()"), "{text}");
}

/// `bench --rwlock`: every row at every thread count (every read checked, every write
/// counted: success means both held), the degraded row from its child, and the uncontended
/// write latency of every lock, in the JSON and in the table.
#[test]
fn rwlock_suite_reports_every_row_and_the_write_latency() {
    let out = bench(&["--rwlock", "--threads", "1,3", "--duration", "0.005", "--rounds", "1", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert_eq!(v["suite"], "rwlock", "{v}");
    let keys: Vec<&str> = v["results"].as_array().expect("results").iter().filter_map(|r| r["key"].as_str()).collect();
    for lock in ["rwlock", "std-rwlock", "parking-lot-rwlock", "sharded-lock", "arc-swap"] {
        for mix in ["0", "0.1", "1"] {
            assert!(keys.contains(&format!("{lock}-{mix}").as_str()), "{lock}-{mix} in {keys:?}");
        }
    }
    assert!(keys.contains(&"rwlock-degraded"), "{keys:?}");
    for r in v["results"].as_array().unwrap() {
        for c in r["cells"].as_array().expect("cells") {
            assert!(positive(&c["ns_per_op"]) && positive(&c["ops"]), "{r}");
        }
    }
    let rows = v["latencies"]["rows"].as_array().unwrap_or_else(|| panic!("latencies: {v}"));
    let lat_keys: Vec<&str> = rows.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(lat_keys, ["rwlock", "std-rwlock", "parking-lot-rwlock", "sharded-lock", "arc-swap", "timer"]);
    for r in rows {
        assert!(positive(&r["samples"]) && r["p99_ns"].as_f64() >= r["median_ns"].as_f64(), "{r}");
    }
    let out = bench(&["--rwlock", "--threads", "2", "--duration", "0.005", "--rounds", "1"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    for row in ["restartable RwLock, 0% writes", "ShardedLock, 1% writes", "ArcSwap load, 0.1% writes"] {
        assert!(text.lines().any(|l| l.starts_with(row)), "row {row}: {text}");
    }
    assert!(text.contains("uncontended write lock + unlock") && text.contains("p99"), "{text}");
}

#[test]
fn degraded_child_refuses_fast_mode_and_runs_degraded() {
    // The hidden child entry point: in a fast-mode process it must refuse (exit 1, message).
    let out = bench(&["--internal-only", "counter-degraded", "--threads", "1", "--duration", "0.005", "--json"]);
    let probe = Command::new(BIN).args(["info", "--json"]).env_remove("RESTARTABLE_FORCE_DEGRADED").output().unwrap();
    let fast = String::from_utf8_lossy(&probe.stdout).contains(r#""kind":"fast""#);
    if fast {
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("degraded"), "{}", describe(&out));
    }
    let out = Command::new(BIN)
        .args(["bench", "--internal-only", "counter-degraded", "--threads", "2", "--duration", "0.005", "--json"])
        .env("RESTARTABLE_FORCE_DEGRADED", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["internal"], "counter-degraded");
    assert_eq!(v["samples"][0]["threads"].as_u64(), Some(2), "{v}");
    assert!(positive(&v["samples"][0]["ops"]), "{v}");
}

#[test]
fn bad_arguments_fail_cleanly() {
    let cases: &[&[&str]] = &[
        &["--threads", "0"],
        &["--threads", ""],
        &["--threads", "1,,2"],
        &["--threads", "x"],
        &["--threads", "1,-2"],
        &["--threads", "2.5"],
        &["--threads", "100000"],
        &["--duration", "0"],
        &["--duration", "-1"],
        &["--duration", "-0.5"],
        &["--duration", "nan"],
        &["--duration", "inf"],
        &["--duration", "soon"],
        &["--rounds", "0"],
        &["--bogus"],
        &["--internal-only", "nonsense"],
        &["--collections", "--threads", "0"],
        &["--collections", "--duration", "-1"],
        &["--collections=yes"],
        // The degraded child measures a counter: it is not a collections run.
        &["--collections", "--internal-only", "counter-degraded"],
        &["--rwlock", "--collections"],
        &["--rwlock", "--internal-only", "rwlock-degraded"],
        &["--alloc", "--collections"],
        &["--alloc", "--rwlock"],
        &["--alloc", "--duration", "1"],
        &["--alloc", "--scale", "0"],
        &["--alloc", "--scale", "-1"],
        &["--alloc", "--scale", "nan"],
        &["--alloc", "--scale", "1000"],
        &["--alloc", "--workloads", "bogus"],
        &["--alloc", "--workloads", ""],
        &["--alloc", "--threads", "0"],
        // The allocator options need --alloc.
        &["--scale", "0.5"],
        &["--workloads", "pairs"],
    ];
    for args in cases {
        let out = bench(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

#[test]
fn unwritable_svg_path_is_an_error_not_a_panic() {
    let dir = temp_path("no-such-dir");
    let path = dir.join("chart.svg");
    let out = bench(&["--threads", "1", "--duration", "0.001", "--svg", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("SVG") && err.contains("chart.svg"), "{err}");
    // It fails before measuring anything: nothing on stdout.
    assert!(out.stdout.is_empty(), "{}", describe(&out));
}

/// The allocator suite's tables, one per workload, 3b (the churn's CPU time) and 4b (the rss
/// workload's time).
const ALLOC_TABLES: [&str; 7] = ["pairs", "channel", "queue", "churn", "churn-cpu", "rss", "rss-time"];
const ALLOCATORS: [&str; 4] = ["system", "mimalloc", "percpu", "percpu-mimalloc"];

#[test]
fn alloc_suite_measures_every_allocator_in_every_table() {
    let svg = temp_path("alloc.svg");
    let out = bench(&[
        "--alloc",
        "--threads",
        "1,2",
        "--rounds",
        "1",
        "--scale",
        "0.01",
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    if cfg!(any(feature = "count-allocations", feature = "percpu-alloc")) {
        // A feature fixed this build's global allocator: a clear refusal, not a wrong table.
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(err.contains("bench --alloc needs the default build"), "{err}");
        return;
    }
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert_eq!(v["suite"], "alloc");
    assert_eq!(v["params"]["threads"], serde_json::json!([1, 2]), "{v}");
    assert_eq!(v["params"]["short_rounds"].as_u64(), Some(5), "{v}");
    let keys: Vec<&str> = v["allocators"].as_array().unwrap().iter().filter_map(|a| a["key"].as_str()).collect();
    assert_eq!(keys, ALLOCATORS);
    let results = v["results"].as_array().unwrap_or_else(|| panic!("results: {v}"));
    let tables: Vec<&str> = results.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(tables, ALLOC_TABLES, "every workload, in order, each second figure after its own");
    for r in results {
        let cells = r["cells"].as_array().unwrap();
        assert_eq!(cells.iter().filter_map(|c| c["threads"].as_u64()).collect::<Vec<_>>(), [1, 2], "{r}");
        // The producer/consumer cells run five times the rounds.
        let want = if matches!(r["key"].as_str(), Some("channel" | "queue")) { 5 } else { 1 };
        for c in cells {
            for a in ALLOCATORS {
                let runs = c["runs"][a].as_array().unwrap_or_else(|| panic!("{a} in {c}"));
                assert_eq!(runs.len(), want, "{a} in {} {c}", r["key"]);
                // Resident memory may come back to where it started (0 MiB); nothing else may.
                let ok =
                    |x: &Value| x.as_f64().is_some_and(|x| x.is_finite() && (x > 0.0 || r["key"] == "rss" && x == 0.0));
                assert!(runs.iter().all(ok), "{a} in {} {c}", r["key"]);
                assert!(ok(&c["median"][a]), "{a} in {} {c}", r["key"]);
            }
            for k in ["vs_system", "vs_mimalloc"] {
                assert!(c[k].as_f64().is_some_and(f64::is_finite) || r["key"] == "rss", "{k} in {c}");
            }
        }
    }
    let chart = std::fs::read_to_string(&svg).expect("the SVG chart");
    let _ = std::fs::remove_file(&svg);
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"), "{chart}");
    assert!(chart.contains("churn") && chart.contains("1x"), "{chart}");
}

#[test]
fn alloc_child_refuses_a_bad_cell_or_allocator() {
    let run = |cell: &str, allocator: &str| {
        Command::new(BIN)
            .args(["bench", "--internal-alloc-cell", cell])
            .env("RESTARTABLE_BENCH_ALLOCATOR", allocator)
            .output()
            .expect("run the restartable binary")
    };
    for cell in ["pairs", "pairs:1", "nope:1:1", "pairs:0:1", "pairs:1:0", "pairs:1:x", "pairs:1:1:1"] {
        let out = run(cell, "percpu");
        assert_eq!(out.status.code(), Some(1), "{cell}: {}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("bad cell"), "{cell}: {}", describe(&out));
    }
    // An allocator name the switch does not know would measure System under another name.
    let out = run("pairs:1:0.001", "jemalloc");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    if !cfg!(any(feature = "count-allocations", feature = "percpu-alloc")) {
        let out = run("pairs:1:0.001", "percpu");
        assert!(out.status.success(), "{}", describe(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["allocator"], "percpu", "{v}");
        assert!(positive(&v["value"]), "{v}");
    }
}
