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

    #[test]
    fn modes() {
        assert_eq!(mode_json(&Mode::Fast)["kind"], "fast");
        let f = mode_json(&Mode::Degraded(Degraded::Forced));
        assert_eq!((f["kind"].as_str(), f["why"].as_str()), (Some("degraded"), Some("forced")));
        let n = mode_json(&Mode::Degraded(Degraded::NoFence { errno: Some(libc::EPERM) }));
        assert_eq!(n["errno_name"], "EPERM");
    }
}
