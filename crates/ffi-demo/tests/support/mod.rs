//! Shared by `tests/host.rs` and `examples/dlopen_ratio.rs`: find the built cdylib and compile
//! the C host with gcc.

#![allow(dead_code)] // each user needs a different part

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cdylib's file name.
pub const LIBRARY: &str = "librestartable_ffi_demo.so";

/// The cdylib built with the running executable: next to it (`target/<profile>/deps/` for a
/// test), or one level up (`target/<profile>/` for an example), or in `deps/` below that.
pub fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("the executable's directory");
    let candidates = [dir.join(LIBRARY), dir.join("..").join(LIBRARY), dir.join("..").join("deps").join(LIBRARY)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{LIBRARY} not found in {candidates:?}: build the package first"))
        .clone()
}

/// Compile `host.c` with gcc into `out`; `Ok(None)` when gcc is missing.
pub fn compile_host(out: &Path) -> io::Result<Option<PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("host.c");
    let exe = out.join("ffi-demo-host");
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-ldl")
        .status();
    match status {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
        Ok(s) if s.success() => Ok(Some(exe)),
        Ok(s) => Err(io::Error::other(format!("gcc {}: {s}", src.display()))),
    }
}

/// The numbers after `key` on the first output line that starts with it.
pub fn numbers(out: &str, key: &str) -> Vec<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|rest| rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|w| w.parse().ok()).collect())
        .unwrap_or_default()
}
