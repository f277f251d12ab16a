//! Re-running this same binary in a child process: the one way the tool does it.
//!
//! The library decides its mode once per process, so whatever must run in another mode runs
//! in a child: `stress --force-degraded` runs its own command again degraded, the bench measures
//! its degraded-mode row in a child, and every configuration of `stress --matrix` is a child.
//! All of them go through [`Reexec`] (as does every measurement of `bench --alloc`, each in a
//! child whose global allocator a variable names): the arguments, variables to set, the
//! degraded-mode variable set or removed,
//! an optional time limit (the child is killed when it runs out), and the output either
//! captured or left on this process's terminal.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The environment variable that forces degraded mode (read once per process by the library).
pub const FORCE_DEGRADED: &str = "RESTARTABLE_FORCE_DEGRADED";

/// Whether this process was started with degraded mode forced (`RESTARTABLE_FORCE_DEGRADED=1`).
pub fn forced() -> bool {
    std::env::var_os(FORCE_DEGRADED).is_some_and(|v| v == OsStr::new("1"))
}

/// A child run of this binary, built up and then [run](Reexec::run).
#[derive(Debug)]
pub struct Reexec {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    degraded: Option<bool>,
    timeout: Option<Duration>,
    capture: bool,
}

/// How a child ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// What it wrote on stdout (empty unless captured).
    pub stdout: Vec<u8>,
    /// What it wrote on stderr (empty unless captured).
    pub stderr: Vec<u8>,
}

/// Why a child did not finish.
#[derive(Debug)]
pub enum Error {
    /// This executable could not be found.
    Exe(std::io::Error),
    /// The child could not be started.
    Start(std::io::Error),
    /// The child ran past its time limit and was killed.
    TimedOut(Duration),
    /// Waiting for the child failed.
    Wait(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Exe(e) => write!(f, "cannot find this executable to re-run it: {e}"),
            Error::Start(e) => write!(f, "cannot start the child: {e}"),
            Error::TimedOut(t) => write!(f, "timed out after {} s", t.as_secs_f64()),
            Error::Wait(e) => write!(f, "waiting for the child failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl Reexec {
    /// This binary with `args` (after the program name); the environment is inherited, output
    /// is captured, there is no time limit.
    pub fn new<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Reexec {
        Reexec {
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            env: Vec::new(),
            degraded: None,
            timeout: None,
            capture: true,
        }
    }

    /// Force degraded mode in the child (`true`), or make sure it is not forced (`false`: the
    /// variable is removed even if this process has it).
    pub fn degraded(mut self, yes: bool) -> Reexec {
        self.degraded = Some(yes);
        self
    }

    /// Set the variable `key` to `value` in the child's environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Reexec {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Kill the child if it has not ended after `limit`.
    pub fn timeout(mut self, limit: Duration) -> Reexec {
        self.timeout = Some(limit);
        self
    }

    /// Let the child write to this process's stdout and stderr (and read its stdin) instead of
    /// capturing its output.
    pub fn inherit_output(mut self) -> Reexec {
        self.capture = false;
        self
    }

    /// Start the child and wait for it (at most the time limit).
    pub fn run(self) -> Result<Finished, Error> {
        let exe = std::env::current_exe().map_err(Error::Exe)?;
        let mut cmd = Command::new(exe);
        cmd.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v)));
        match self.degraded {
            Some(true) => {
                cmd.env(FORCE_DEGRADED, "1");
            }
            Some(false) => {
                cmd.env_remove(FORCE_DEGRADED);
            }
            None => {}
        }
        if self.capture {
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(Error::Start)?;
        // Read both pipes while the child runs, so that a full pipe never blocks it.
        let out = child.stdout.take().map(drain);
        let err = child.stderr.take().map(drain);
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let status = loop {
            match (child.try_wait(), deadline) {
                (Ok(Some(s)), _) => break Ok(s),
                (Ok(None), Some(d)) if Instant::now() >= d => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(Error::TimedOut(self.timeout.unwrap_or_default()));
                }
                (Ok(None), Some(_)) => std::thread::sleep(Duration::from_millis(10)),
                (Ok(None), None) => break child.wait().map_err(Error::Wait),
                (Err(e), _) => break Err(Error::Wait(e)),
            }
        };
        let joined = |h: Option<JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        let (stdout, stderr) = (joined(out), joined(err));
        Ok(Finished { status: status?, stdout, stderr })
    }
}

/// Read `r` to its end on a thread of its own.
fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // In unit tests this executable is the test harness: the children run single tests of it.

    #[test]
    fn captures_output_and_sets_the_environment() {
        let out = Reexec::new(["--exact", "reexec::tests::child_prints_its_mode", "--ignored", "--nocapture"])
            .degraded(true)
            .timeout(Duration::from_secs(60))
            .run()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("forced: true"), "{out:?}");
        let out = Reexec::new(["--exact", "reexec::tests::child_prints_its_mode", "--ignored", "--nocapture"])
            .degraded(false)
            .run()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("forced: false"), "{out:?}");
    }

    #[test]
    fn a_child_past_its_time_limit_is_killed() {
        let t = Instant::now();
        let e = Reexec::new(["--exact", "reexec::tests::child_hangs", "--ignored"])
            .timeout(Duration::from_millis(300))
            .run()
            .unwrap_err();
        assert!(matches!(e, Error::TimedOut(_)), "{e}");
        assert!(e.to_string().starts_with("timed out after 0.3 s"), "{e}");
        // Killed, not waited for: the child would sleep for 60 s (the bound leaves a loaded
        // machine room to start and kill a process).
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    }

    #[test]
    #[ignore = "run as a child by captures_output_and_sets_the_environment"]
    fn child_prints_its_mode() {
        println!("forced: {}", forced());
    }

    #[test]
    #[ignore = "run as a child by a_child_past_its_time_limit_is_killed"]
    fn child_hangs() {
        std::thread::sleep(Duration::from_secs(60));
    }
}
