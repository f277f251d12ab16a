//! What the library found about this process and thread: the public report behind
//! `restartable info`.

use std::fmt;

use crate::thread::{self, Registration};
use crate::{cpu, sys};

/// A snapshot of the environment as the library sees it, from the calling thread.
///
/// ```
/// let s = restartable::status();
/// println!("{s}");
/// assert!(s.possible_cpus >= 1);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// How the process runs its operations (fast, or degraded and why).
    pub mode: crate::Mode,
    /// Who provides the calling thread's rseq area, or why there is none.
    pub registration: Registration,
    /// `uname -r`.
    pub kernel_release: String,
    /// glibc's version, if the C library is glibc.
    pub glibc_version: Option<String>,
    /// `AT_RSEQ_FEATURE_SIZE` (None before kernel 6.3).
    pub rseq_feature_size: Option<usize>,
    /// `AT_RSEQ_ALIGN` (None before kernel 6.3).
    pub rseq_align: Option<usize>,
    /// How many bytes of the area the kernel keeps up to date for us.
    pub usable_len: usize,
    /// One more than the highest possible CPU number.
    pub possible_cpus: usize,
    /// CPUs online now.
    pub online_cpus: usize,
    /// The `MEMBARRIER_CMD_QUERY` answer (a bit set of the kernel's `MEMBARRIER_CMD_*`).
    pub membarrier_commands: u32,
    /// The calling thread's CPU when the snapshot was taken.
    pub cpu: usize,
    /// The calling thread's mm_cid, when the kernel provides it.
    pub mm_cid: Option<usize>,
    /// The calling thread's NUMA node, when the kernel provides it.
    pub node: Option<usize>,
    /// Operations this process completed through the slow path so far ([`crate::retry`]).
    pub slow_path_uses: u64,
    /// Critical sections of the retry driver the kernel aborted so far.
    pub aborts: u64,
}

impl Status {
    /// Whether the calling thread runs fast paths (it has a usable rseq area).
    pub fn rseq_available(&self) -> bool {
        !matches!(self.registration, Registration::Unavailable(_))
    }

    /// Decoded names of [`membarrier_commands`](Self::membarrier_commands).
    pub fn membarrier_names(&self) -> Vec<&'static str> {
        sys::membarrier_names(self.membarrier_commands)
    }

    /// Whether the kernel offers membarrier's rseq fence.
    pub fn membarrier_rseq_fence(&self) -> bool {
        sys::has_rseq_fence(self.membarrier_commands)
    }
}

/// Take a [`Status`] snapshot (registering the calling thread's rseq area if needed).
pub fn status() -> Status {
    let registration = thread::registration();
    let p = thread::process();
    let (feature_size, align) = p.map_or((None, None), |p| (p.feature_size, p.align));
    Status {
        mode: thread::mode().clone(),
        registration,
        kernel_release: sys::kernel_release(),
        glibc_version: sys::glibc_version(),
        rseq_feature_size: feature_size,
        rseq_align: align,
        usable_len: thread::usable_len(),
        possible_cpus: sys::possible_cpus(),
        online_cpus: sys::online_cpus(),
        membarrier_commands: sys::membarrier_query(),
        cpu: cpu::current_cpu(),
        mm_cid: cpu::current_mm_cid(),
        node: cpu::current_node(),
        slow_path_uses: crate::retry::slow_path_uses(),
        aborts: crate::retry::aborts(),
    }
}

fn opt(v: Option<usize>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| v.to_string())
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel          {}", self.kernel_release)?;
        writeln!(f, "glibc           {}", self.glibc_version.as_deref().unwrap_or("not glibc"))?;
        writeln!(
            f,
            "rseq feature    size {}, alignment {}, usable {} bytes",
            opt(self.rseq_feature_size),
            opt(self.rseq_align),
            self.usable_len
        )?;
        writeln!(f, "mode            {}", self.mode)?;
        writeln!(f, "rseq area       {}", self.registration)?;
        writeln!(f, "current         cpu {}, mm_cid {}, node {}", self.cpu, opt(self.mm_cid), opt(self.node))?;
        writeln!(f, "CPUs            {} possible, {} online", self.possible_cpus, self.online_cpus)?;
        writeln!(f, "membarrier      {}", self.membarrier_names().join(" "))?;
        write!(f, "slow path       {} operations so far, {} aborts seen", self.slow_path_uses, self.aborts)
    }
}
