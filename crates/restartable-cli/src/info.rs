//! `restartable info`: what the library found about this process, as text or as JSON.

use std::io::{self, Write};
use std::process::ExitCode;

use restartable::{Degraded, Mode, Registration, Status, Unavailable};
use serde_json::{Value, json};

use crate::CmdResult;

/// Arguments of `restartable info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object (on one line) instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// Run `restartable info`.
pub fn run(args: &Args) -> CmdResult {
    let status = restartable::status();
    let mut out = io::stdout().lock();
    if args.json {
        writeln!(out, "{}", to_json(&status))?;
    } else {
        writeln!(out, "{status}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Print the human summary (used by the tour too).
pub fn print_summary(out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", restartable::status())
}

/// The JSON form of a [`Status`]: one key per line, so a new field is one more line.
pub fn to_json(s: &Status) -> Value {
    json!({
        "kernel_release": s.kernel_release,
        "glibc_version": s.glibc_version,
        "rseq_feature_size": s.rseq_feature_size,
        "rseq_align": s.rseq_align,
        "usable_len": s.usable_len,
        "mode": mode_json(&s.mode),
        "registration": registration_json(&s.registration),
        "cpu": s.cpu,
        "mm_cid": s.mm_cid,
        "node": s.node,
        "possible_cpus": s.possible_cpus,
        "online_cpus": s.online_cpus,
        "membarrier": {
            "bits": s.membarrier_commands,
            "commands": s.membarrier_names(),
            "rseq_fence": s.membarrier_rseq_fence(),
        },
        "slow_path_uses": s.slow_path_uses,
        "aborts": s.aborts,
    })
}

/// `{"owner": "glibc", "offset", "size"}`, `{"owner": "own", "len", "align"}` or
/// `{"owner": "unavailable", "errno", "errno_name", "reason"}`.
fn registration_json(r: &Registration) -> Value {
    match r {
        Registration::Glibc { offset, size } => {
            json!({ "owner": "glibc", "offset": offset, "size": size })
        }
        Registration::Own { len, align } => json!({ "owner": "own", "len": len, "align": align }),
        Registration::Unavailable(u) => tagged("owner", "unavailable", unavailable_json(u)),
    }
}

/// `{"errno": n|null, "errno_name": "ENOSYS"|null, "reason": "..."}`.
fn unavailable_json(u: &Unavailable) -> Value {
    json!({ "errno": u.errno, "errno_name": u.errno_name(), "reason": u.reason })
}

/// `{"kind": "fast"}` or `{"kind": "degraded", "why": "no_rseq"|"no_fence"|"forced"|"portable", ...}`,
/// both with `"description"` (the library's sentence).
fn mode_json(m: &Mode) -> Value {
    let mut v = match m {
        Mode::Fast => json!({ "kind": "fast" }),
        Mode::Degraded(Degraded::NoRseq(u)) => {
            tagged("kind", "degraded", tagged("why", "no_rseq", unavailable_json(u)))
        }
        Mode::Degraded(Degraded::NoFence { errno }) => json!({
            "kind": "degraded",
            "why": "no_fence",
            "errno": errno,
            "errno_name": errno.map(restartable::sys::errno_name),
        }),
        Mode::Degraded(Degraded::Forced) => json!({ "kind": "degraded", "why": "forced" }),
        Mode::Degraded(Degraded::Portable) => json!({ "kind": "degraded", "why": "portable" }),
        Mode::Degraded(_) => json!({ "kind": "degraded", "why": "other" }),
    };
    v["description"] = json!(m.to_string());
    v
}

/// `{key: tag, ...rest}`: the tag first, for readers of the (order-preserving) output.
fn tagged(key: &str, tag: &str, rest: Value) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(key.to_string(), json!(tag));
    if let Value::Object(rest) = rest {
        map.extend(rest);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_field() {
        let v = to_json(&restartable::status());
        for k in [
            "kernel_release",
            "glibc_version",
            "rseq_feature_size",
            "rseq_align",
            "usable_len",
            "mode",
            "registration",
            "cpu",
            "mm_cid",
            "node",
            "possible_cpus",
            "online_cpus",
            "membarrier",
            "slow_path_uses",
            "aborts",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert!(v["registration"]["owner"].is_string());
        assert!(v["membarrier"]["commands"].is_array());
    }

    #[test]
    fn registrations() {
        let g = registration_json(&Registration::Glibc { offset: -160, size: 20 });
        assert_eq!(g, json!({"owner": "glibc", "offset": -160, "size": 20}));
        let o = registration_json(&Registration::Own { len: 32, align: 32 });
        assert_eq!(o, json!({"owner": "own", "len": 32, "align": 32}));
        let u = registration_json(&Registration::Unavailable(Unavailable { errno: Some(libc::ENOSYS), reason: "r" }));
        assert_eq!(u["owner"], "unavailable");
        assert_eq!(u["errno_name"], "ENOSYS");
        assert_eq!(u["reason"], "r");
        assert_eq!(u.as_object().unwrap().keys().next().map(String::as_str), Some("owner"));
        let n = registration_json(&Registration::Unavailable(Unavailable { errno: None, reason: "r" }));
        assert!(n["errno"].is_null() && n["errno_name"].is_null());
    }

    /// The child side of `info_says_another_registration_exists`: register an rseq area that is
    /// not the library's for this thread (as another library would), before the library's first
    /// use, then run `info` and `info --json` as the binary does.
    #[test]
    fn child_info_with_foreign_registration() {
        if !testkit::is_child() || cfg!(any(feature = "count-allocations", feature = "percpu-alloc")) {
            return;
        }
        let area: &'static mut restartable::abi::Rseq = Box::leak(Box::new(restartable::abi::Rseq {
            cpu_id: restartable::abi::CPU_ID_UNINITIALIZED,
            ..Default::default()
        }));
        // SAFETY: a 32-byte, 32-byte-aligned area, leaked: valid (and used for nothing else)
        // until the thread exits, when the kernel stops writing it.
        unsafe { restartable::sys::rseq(area, 32, 0, restartable::abi::RSEQ_SIG) }.expect("the first registration");
        run(&Args { json: false }).expect("info");
        run(&Args { json: true }).expect("info --json");
    }

    /// Our registration refused with EINVAL because another registration exists (glibc's is
    /// off, so only the foreign one): `info` says so, in text and in JSON.
    #[test]
    fn info_says_another_registration_exists() {
        // With `count-allocations` or `percpu-alloc` the global allocator is built on the library, so its first
        // use (and our own registration) comes with the process's first allocation, before any
        // test could register a foreign area: the scenario cannot be built in such a binary.
        if testkit::is_child() || cfg!(any(feature = "count-allocations", feature = "percpu-alloc")) {
            return;
        }
        let out = testkit::run_self_as_child(
            "info::tests::child_info_with_foreign_registration",
            &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0"), ("RESTARTABLE_FORCE_DEGRADED", "0")],
            &[],
        );
        assert!(out.status.success(), "{}", testkit::describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let another = "EINVAL: another rseq area is already registered for this thread";
        for line in [
            format!("rseq area       unavailable ({another}"),
            format!("mode            degraded: rseq unavailable ({another}"),
        ] {
            assert!(stdout.lines().any(|l| l.starts_with(&line)), "no line {line:?}: {}", testkit::describe(&out));
        }
        let json = stdout.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON: {stdout}"));
        let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
        let r = &v["registration"];
        assert_eq!((r["owner"].as_str(), r["errno_name"].as_str()), (Some("unavailable"), Some("EINVAL")), "{v}");
        assert!(r["reason"].as_str().is_some_and(|s| s.starts_with("another rseq area is already registered")), "{v}");
        assert_eq!((v["mode"]["kind"].as_str(), v["mode"]["why"].as_str()), (Some("degraded"), Some("no_rseq")), "{v}");
        assert_eq!(v["mode"]["errno_name"], "EINVAL", "{v}");
    }

    #[test]
    fn modes() {
        assert_eq!(mode_json(&Mode::Fast)["kind"], "fast");
        let f = mode_json(&Mode::Degraded(Degraded::Forced));
        assert_eq!((f["kind"].as_str(), f["why"].as_str()), (Some("degraded"), Some("forced")));
        let n = mode_json(&Mode::Degraded(Degraded::NoFence { errno: Some(libc::EPERM) }));
        assert_eq!(n["errno_name"], "EPERM");
    }
}
