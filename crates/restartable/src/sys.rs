//! Thin system-call wrappers: rseq(2), membarrier(2), the auxiliary vector, CPU counts.
//!
//! Every fallible call returns [`std::io::Result`]; nothing here panics or retries, and nothing
//! on the path of the library's first use allocates (the possible-CPU count is read into a
//! stack buffer), so that a global allocator built on this library can call it.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::io;

use rustix::thread::{MembarrierCommand, MembarrierQuery};

use crate::abi;

/// `rseq(area, len, flags, sig)`. rustix has no rseq wrapper, so this is a raw `syscall`.
///
/// # Safety
/// `area` must point to `len` writable bytes aligned as the kernel wants, which stay valid (and
/// are not reused for anything else) until the area is unregistered or the thread exits.
pub unsafe fn rseq(area: *mut abi::Rseq, len: u32, flags: i32, sig: u32) -> io::Result<()> {
    // SAFETY: the caller guarantees that `area`/`len` describe memory that outlives the
    // registration; the kernel validates everything else and reports errors through errno.
    let r = unsafe { libc::syscall(libc::SYS_rseq, area, len, flags, sig) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `membarrier(MEMBARRIER_CMD_QUERY)`: the bit set of supported commands (empty if the call
/// itself is refused, for example by seccomp).
pub fn membarrier_query() -> u32 {
    rustix::thread::membarrier_query().bits()
}

/// Whether a `membarrier_query` bit set offers the rseq fence.
pub fn has_rseq_fence(bits: u32) -> bool {
    MembarrierQuery::from_bits_retain(bits).contains(MembarrierQuery::PRIVATE_EXPEDITED_RSEQ)
}

/// `membarrier(REGISTER_PRIVATE_EXPEDITED_RSEQ)`: must succeed once per process before the
/// first rseq fence.
pub fn membarrier_register_rseq() -> io::Result<()> {
    rustix::thread::membarrier(MembarrierCommand::RegisterPrivateExpeditedRseq).map_err(io::Error::from)
}

/// `membarrier(PRIVATE_EXPEDITED_RSEQ, FLAG_CPU, cpu)`: restart any rseq critical section of
/// this process running on `cpu`, and wait until that has happened.
pub fn membarrier_rseq_cpu(cpu: usize) -> io::Result<()> {
    let cpu = u32::try_from(cpu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `Cpuid::from_raw` only asks for a CPU number; an invalid one makes the kernel
    // return EINVAL, which we pass on.
    let id = unsafe { rustix::thread::Cpuid::from_raw(cpu) };
    rustix::thread::membarrier_cpu(MembarrierCommand::PrivateExpeditedRseq, id).map_err(io::Error::from)
}

/// `membarrier(PRIVATE_EXPEDITED_RSEQ)` on every CPU running a thread of this process.
pub fn membarrier_rseq_all() -> io::Result<()> {
    rustix::thread::membarrier(MembarrierCommand::PrivateExpeditedRseq).map_err(io::Error::from)
}

/// Names of the commands in a `membarrier_query` bit set (rustix's names of the kernel's
/// `MEMBARRIER_CMD_*` constants).
pub fn membarrier_names(bits: u32) -> Vec<&'static str> {
    MembarrierQuery::from_bits_retain(bits).iter_names().map(|(name, _)| name).collect()
}

/// `getauxval(AT_RSEQ_FEATURE_SIZE)`, or `None` when the kernel does not say (before 6.3).
pub fn rseq_feature_size() -> Option<usize> {
    auxval(abi::AT_RSEQ_FEATURE_SIZE)
}

/// `getauxval(AT_RSEQ_ALIGN)`, or `None` when the kernel does not say (before 6.3).
pub fn rseq_align() -> Option<usize> {
    auxval(abi::AT_RSEQ_ALIGN)
}

fn auxval(key: u64) -> Option<usize> {
    // SAFETY: getauxval only reads the process's auxiliary vector; unknown keys give 0.
    let v = unsafe { libc::getauxval(key as libc::c_ulong) };
    (v != 0).then_some(v as usize)
}

/// The number of possible CPU numbers: one more than the highest CPU that can ever come online
/// (the kernel's `nr_cpu_ids`), read from `/sys/devices/system/cpu/possible`. Where that file
/// cannot be read, the size of the kernel's CPU mask (a multiple of 64, never below `nr_cpu_ids`)
/// stands in for it: every CPU number the kernel gives must be below this count, because the
/// per-CPU memory is laid out by it. Computed once (without allocating); always at least 1.
#[inline(always)]
pub fn possible_cpus() -> usize {
    match POSSIBLE.load(Relaxed) {
        0 => possible_cpus_first(),
        n => n,
    }
}

static POSSIBLE: AtomicUsize = AtomicUsize::new(0);

#[cold]
#[inline(never)]
fn possible_cpus_first() -> usize {
    let n = read_possible().or_else(cpu_mask_bits).unwrap_or(abi::MAX_CPUS + 1);
    POSSIBLE.store(n, Relaxed);
    n
}

/// The kernel's CPU mask size in bits: `sched_getaffinity` returns how many bytes it copied,
/// which is the mask's size, rounded up to whole `long`s.
fn cpu_mask_bits() -> Option<usize> {
    let mut mask = [0u64; abi::MAX_CPUS / 64];
    // SAFETY: the buffer is writable for its length; the raw call only writes that many bytes.
    let r = unsafe { libc::syscall(libc::SYS_sched_getaffinity, 0, core::mem::size_of_val(&mask), mask.as_mut_ptr()) };
    usize::try_from(r).ok().filter(|&b| b > 0).map(|b| b * 8)
}

fn read_possible() -> Option<usize> {
    let mut buf = [0u8; 256];
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(c"/sys/devices/system/cpu/possible".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    let text = core::str::from_utf8(buf.get(..usize::try_from(n).ok()?)?).ok()?;
    parse_cpu_list_max(text).map(|max| max + 1)
}

/// The highest CPU number in a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list_max(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let hi = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        if let Some((lo, _)) = part.split_once('-')
            && lo.trim().parse::<usize>().ok()? > hi
        {
            return None;
        }
        max = Some(max.map_or(hi, |m: usize| m.max(hi)));
    }
    max
}

/// The number of CPUs online now (`sysconf(_SC_NPROCESSORS_ONLN)`), at least 1.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { 1 }
}

/// `sched_getcpu()`: the CPU this thread ran on a moment ago (0 if the call fails).
///
/// This goes through the C library rather than rustix: rustix parses the vDSO itself, which
/// valgrind (one of the environments degraded mode must serve) reports as invalid reads.
pub fn sched_getcpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on failure.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(0)
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    rustix::system::uname().release().to_string_lossy().into_owned()
}

/// glibc's version, or `None` on other C libraries.
pub fn glibc_version() -> Option<String> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: glibc's gnu_get_libc_version returns a static NUL-terminated string.
        let p = unsafe { libc::gnu_get_libc_version() };
        // SAFETY: non-null (checked), NUL-terminated, static for the life of the process.
        (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
    #[cfg(not(target_env = "gnu"))]
    None
}

/// A human explanation of an rseq(2) registration errno.
pub fn explain_rseq_errno(errno: i32) -> &'static str {
    match errno {
        libc::ENOSYS => "the kernel has no rseq system call (older than 4.18, or filtered by seccomp)",
        libc::EPERM => {
            "rseq is forbidden here (a seccomp filter or sandbox), or the signature differs from an earlier registration"
        }
        libc::EINVAL => {
            "another rseq area is already registered for this thread (an older static glibc, another library), \
             or the kernel rejected the area's length or alignment"
        }
        libc::EBUSY => "this area is already registered for this thread",
        libc::EFAULT => "the kernel could not access the area",
        _ => "rseq registration failed",
    }
}

/// The symbolic name of an errno value (`ENOSYS`, ...).
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOSYS => "ENOSYS",
        libc::EPERM => "EPERM",
        libc::EINVAL => "EINVAL",
        libc::EBUSY => "EBUSY",
        libc::EFAULT => "EFAULT",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        _ => "E?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list_max("0-1\n"), Some(1));
        assert_eq!(parse_cpu_list_max("0"), Some(0));
        assert_eq!(parse_cpu_list_max("0-3,8,10-11"), Some(11));
        assert_eq!(parse_cpu_list_max("3-1"), None);
        assert_eq!(parse_cpu_list_max("x"), None);
        assert_eq!(parse_cpu_list_max(""), None);
        assert!(possible_cpus() >= online_cpus().min(possible_cpus()));
        assert!(possible_cpus() >= 1);
        assert_eq!(read_possible(), Some(possible_cpus()));
        let bits = cpu_mask_bits().expect("sched_getaffinity");
        assert!(bits >= possible_cpus() && bits.is_multiple_of(64), "{bits}");
    }

    #[test]
    fn membarrier_names_decode() {
        let bits = (MembarrierQuery::PRIVATE_EXPEDITED_RSEQ | MembarrierQuery::GLOBAL).bits();
        assert_eq!(membarrier_names(bits), ["GLOBAL", "PRIVATE_EXPEDITED_RSEQ"]);
        assert!(has_rseq_fence(bits));
        assert!(!has_rseq_fence(MembarrierQuery::GLOBAL.bits()));
    }
}
