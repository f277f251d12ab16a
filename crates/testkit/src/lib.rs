//! Test helpers for the `restartable` workspace (a dev-dependency only).
//!
//! * [`deny_syscalls_command`] makes a [`Command`]'s child run under a seccomp filter that
//!   answers chosen system calls with a chosen errno, so tests can see how code behaves where a
//!   system call is missing (`ENOSYS`) or forbidden (`EPERM`).
//! * [`run_self_as_child`] re-runs one test of the current test binary in such a child.
//! * [`affinity`] pins a test thread to CPUs it may run on (chosen from its mask, never CPU 0
//!   by fiat).
//! * [`signal`] aims a signal storm at one thread and waits for its handlers to finish.
//! * [`elf::RseqElf`] reads a binary's rseq metadata (`__rseq_cs`, `__rseq_cs_ptr_array`,
//!   `__rseq_exit_point_array`), relocated, as debuggers and tracers do.
//!
//! The filter is installed between `fork` and `exec`, so it is in force *before* the dynamic
//! loader and the C library start in the child: glibc's own rseq registration of the main
//! thread is refused too.
//!
//! ```
//! # #[cfg(target_arch = "x86_64")] {
//! let mut cmd = std::process::Command::new("true");
//! testkit::deny_syscalls_command(&mut cmd, &[(testkit::SYS_RSEQ, libc::ENOSYS)]);
//! assert!(cmd.status().unwrap().success());
//! # }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod affinity;
pub mod elf;
pub mod signal;

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

/// rseq(2)'s system call number on this architecture.
#[allow(clippy::unnecessary_cast)] // `c_long` is `i64` only on 64-bit targets
pub const SYS_RSEQ: i64 = libc::SYS_rseq as i64;
/// membarrier(2)'s system call number on this architecture.
#[allow(clippy::unnecessary_cast)] // `c_long` is `i64` only on 64-bit targets
pub const SYS_MEMBARRIER: i64 = libc::SYS_membarrier as i64;

/// The environment variable [`run_self_as_child`] sets to `1` in the child, so a child-side
/// test knows it is the child (and returns early otherwise).
pub const CHILD_ENV: &str = "RESTARTABLE_CHILD";

/// `AUDIT_ARCH_*` of the architecture this crate is built for (`linux/audit.h`: the ELF machine
/// number, with the 64-bit and little-endian bits).
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64: EM_X86_64 (62) | 64BIT | LE
/// `AUDIT_ARCH_*` of the architecture this crate is built for.
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64: EM_AARCH64 (183) | 64BIT | LE

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("testkit: define AUDIT_ARCH for this architecture");

/// The largest errno a `SECCOMP_RET_ERRNO` filter can return that libc will treat as an error
/// (`MAX_ERRNO` in the kernel).
pub const MAX_ERRNO: i32 = 4095;

/// Whether `RESTARTABLE_CHILD=1` is set, that is, whether this process was started by [`run_self_as_child`].
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some_and(|v| v == "1")
}

// Offsets of `struct seccomp_data` (linux/seccomp.h): `int nr` @0, `__u32 arch` @4.
const OFFSET_NR: u32 = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
const OFFSET_ARCH: u32 = std::mem::offset_of!(libc::seccomp_data, arch) as u32;

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt, jf, k }
}

/// Why a rule set cannot be turned into a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    /// A system call number that does not fit the 32-bit `nr` field.
    BadSyscall(i64),
    /// An errno outside `1..=MAX_ERRNO`.
    BadErrno(i32),
    /// More rules than a classic BPF program can hold.
    TooManyRules(usize),
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterError::BadSyscall(nr) => write!(f, "system call number {nr} out of range"),
            FilterError::BadErrno(e) => write!(f, "errno {e} out of range 1..={MAX_ERRNO}"),
            FilterError::TooManyRules(n) => write!(f, "{n} rules do not fit in one BPF program"),
        }
    }
}

impl std::error::Error for FilterError {}

/// The seccomp BPF program for `rules` (`(syscall number, errno)` pairs):
///
/// ```text
///     ld  [4]                        ; seccomp_data.arch
///     jeq #AUDIT_ARCH, 0, ALLOW      ; another architecture: allow
///     ld  [0]                        ; seccomp_data.nr
///     jeq #nr1, 0, 1                 ; one pair per rule
///     ret #SECCOMP_RET_ERRNO|errno1
///     ...
/// ALLOW:
///     ret #SECCOMP_RET_ALLOW
/// ```
///
/// If the architecture is not [`AUDIT_ARCH`] the call is allowed (rule numbers are
/// only meaningful for the native architecture); otherwise the system call number is loaded and
/// compared with each rule in turn, a match returns `SECCOMP_RET_ERRNO | errno`, and a call that
/// matches no rule is allowed. The first rule for a number wins.
pub fn build_filter(rules: &[(i64, i32)]) -> Result<Vec<libc::sock_filter>, FilterError> {
    // 4 fixed instructions + 2 per rule, within BPF_MAXINSNS.
    let max_rules = (libc::BPF_MAXINSNS as usize - 4) / 2;
    if rules.len() > max_rules {
        return Err(FilterError::TooManyRules(rules.len()));
    }
    let mut prog = Vec::with_capacity(4 + 2 * rules.len());
    prog.push(stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, OFFSET_ARCH));
    // Native architecture: fall through to the rules; otherwise jump to the final ALLOW.
    let to_allow = u8::try_from(1 + 2 * rules.len()).unwrap_or(u8::MAX);
    if to_allow == u8::MAX {
        // A far jump needs `ja`; with so many rules use it (1 extra instruction).
        prog.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, AUDIT_ARCH, 1, 0));
        prog.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
    } else {
        prog.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, AUDIT_ARCH, 0, to_allow));
    }
    prog.push(stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, OFFSET_NR));
    for &(nr, errno) in rules {
        let nr = u32::try_from(nr).map_err(|_| FilterError::BadSyscall(nr))?;
        if !(1..=MAX_ERRNO).contains(&errno) {
            return Err(FilterError::BadErrno(errno));
        }
        // Equal: go on to the next instruction (return the errno); else skip it.
        prog.push(jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, nr, 0, 1));
        prog.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)));
    }
    prog.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
    Ok(prog)
}

/// Make `cmd`'s child run under a seccomp filter that answers each system call `nr` of `rules`
/// with `-1` and errno `errno` (and allows every other call).
///
/// The child sets `PR_SET_NO_NEW_PRIVS` and installs the filter between `fork` and `exec`
/// ([`CommandExt::pre_exec`]); the filter is built here, before the fork, so nothing allocates
/// in the child. Invalid rules (see [`build_filter`]) make the spawn fail with `EINVAL` instead
/// of panicking. Several calls add several hooks, and so several filters (the kernel applies
/// the most restrictive answer).
pub fn deny_syscalls_command(cmd: &mut Command, rules: &[(i64, i32)]) {
    let filter = build_filter(rules).map(Vec::into_boxed_slice);
    let hook = move || -> io::Result<()> {
        let Ok(filter) = &filter else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let prog = libc::sock_fprog {
            // At most BPF_MAXINSNS (4096) instructions, checked by `build_filter`.
            len: filter.len() as libc::c_ushort,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers; it is async-signal
        // safe, as required between fork and exec.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `prog` points to `filter`, a valid BPF program that lives (captured by this
        // closure) for the whole call; the kernel copies it. prctl is async-signal safe.
        let r = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec; it allocates nothing, takes no
    // locks, and only makes async-signal-safe system calls (prctl); its error (an io::Error
    // built from a raw errno, no allocation) is reported to the parent by std.
    unsafe { cmd.pre_exec(hook) };
}

/// Run one test of the current test binary in a child process and wait for it:
/// `current_exe() TEST_NAME --exact --nocapture --test-threads=1`, with `RESTARTABLE_CHILD=1`
/// and `env` added to the environment, under [`deny_syscalls_command`]`(rules)` when `rules` is
/// not empty.
///
/// The child-side test should return early unless [`is_child`] is true. If the child cannot be
/// started at all, the returned [`Output`] has a failed status (127) and the reason in
/// `stderr`, so callers only ever look at one type.
pub fn run_self_as_child(test_name: &str, env: &[(&str, &str)], rules: &[(i64, i32)]) -> Output {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return failed(format!("current_exe: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"]);
    cmd.env(CHILD_ENV, "1");
    cmd.envs(env.iter().copied());
    if !rules.is_empty() {
        deny_syscalls_command(&mut cmd, rules);
    }
    cmd.output().unwrap_or_else(|e| failed(format!("spawning {test_name}: {e}")))
}

/// [`run_self_as_child`] with a deadline: a child still running after `timeout` is killed
/// (SIGKILL) and reported as failed, with "timed out" in its stderr, so that a test of a hang
/// fails instead of hanging the suite.
pub fn run_self_as_child_timeout(
    test_name: &str,
    env: &[(&str, &str)],
    rules: &[(i64, i32)],
    timeout: std::time::Duration,
) -> Output {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return failed(format!("current_exe: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"]);
    cmd.env(CHILD_ENV, "1");
    cmd.envs(env.iter().copied());
    if !rules.is_empty() {
        deny_syscalls_command(&mut cmd, rules);
    }
    output_with_timeout(cmd, timeout)
}

/// Run `cmd` to completion with piped output, killing it after `timeout` (then its status is a
/// failure and its stderr ends with a "timed out" line).
pub fn output_with_timeout(mut cmd: Command, timeout: std::time::Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("spawning {cmd:?}: {e}")),
    };
    // Drain both pipes on their own threads, so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    match status {
        Some(status) => Output { status, stdout, stderr },
        None => {
            stderr.extend_from_slice(format!("\ntestkit: timed out after {timeout:?} (killed)\n").as_bytes());
            let mut o = failed(String::new());
            o.stdout = stdout;
            o.stderr = stderr;
            o
        }
    }
}

fn failed(msg: String) -> Output {
    use std::os::unix::process::ExitStatusExt;
    Output { status: std::process::ExitStatus::from_raw(127 << 8), stdout: Vec::new(), stderr: msg.into_bytes() }
}

/// A readable dump of a child's [`Output`] for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_shape() {
        let f = build_filter(&[(334, libc::ENOSYS), (324, libc::EPERM)]).unwrap();
        assert_eq!(f.len(), 4 + 2 * 2);
        // The arch check skips the rules and lands on the final ALLOW.
        assert_eq!(f[1].k, AUDIT_ARCH);
        assert_eq!(2 + f[1].jf as usize, f.len() - 1);
        assert_eq!(f[4].k, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(f.last().unwrap().k, libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn bad_rules_are_errors() {
        assert_eq!(build_filter(&[(-1, 1)]).unwrap_err(), FilterError::BadSyscall(-1));
        assert_eq!(build_filter(&[(1, 0)]).unwrap_err(), FilterError::BadErrno(0));
        assert_eq!(build_filter(&[(1, 5000)]).unwrap_err(), FilterError::BadErrno(5000));
        let many = vec![(1, 1); 3000];
        assert_eq!(build_filter(&many).unwrap_err(), FilterError::TooManyRules(3000));
        // Many rules still build (far jump path).
        let lots = vec![(1, 1); 200];
        assert_eq!(build_filter(&lots).unwrap().len(), 5 + 2 * 200);
    }

    #[test]
    fn bad_rules_fail_the_spawn_not_the_parent() {
        let mut cmd = Command::new("true");
        deny_syscalls_command(&mut cmd, &[(1, 0)]);
        let e = cmd.status().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn denied_call_gets_the_errno() {
        // `uname` needs uname(2): denying it shows in the exit status.
        let mut cmd = Command::new("uname");
        #[allow(clippy::unnecessary_cast)] // `c_long` is `i64` only on 64-bit targets
        let uname = libc::SYS_uname as i64;
        deny_syscalls_command(&mut cmd, &[(uname, libc::EPERM)]);
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{}", describe(&out));
        let mut ok = Command::new("uname");
        deny_syscalls_command(&mut ok, &[(SYS_RSEQ, libc::ENOSYS)]);
        assert!(ok.output().unwrap().status.success());
    }

    #[test]
    fn self_child_sees_the_env() {
        if is_child() {
            assert_eq!(std::env::var("TESTKIT_PROBE").as_deref(), Ok("42"));
            println!("TESTKIT-CHILD-OK");
            return;
        }
        let out = run_self_as_child(
            "tests::self_child_sees_the_env",
            &[("TESTKIT_PROBE", "42")],
            &[(SYS_RSEQ, libc::ENOSYS)],
        );
        assert!(out.status.success(), "{}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("TESTKIT-CHILD-OK"), "{}", describe(&out));
    }
}
