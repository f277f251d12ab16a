//! CPU affinity for tests that must stay on one CPU (or a chosen set) while they check one
//! CPU's data.
//!
//! Tests pick their CPUs from the affinity mask they inherited ([`allowed`]), never a fixed
//! number: under `taskset`, a cpuset cgroup or a container's `--cpuset-cpus`, CPU 0 may be
//! outside the mask, and pinning to it fails with `EINVAL`.
//!
//! ```
//! let cpus = testkit::affinity::allowed();
//! assert!(!cpus.is_empty());
//! let before = cpus.clone();
//! let cpu = testkit::affinity::pin_to_one();
//! assert_eq!(testkit::affinity::allowed(), [cpu]);
//! testkit::affinity::pin(&before);
//! assert_eq!(testkit::affinity::allowed(), before);
//! ```

/// Words of 64 CPUs in a mask: 4096 CPUs, more than any kernel this runs on is built for (the
/// kernel refuses a mask shorter than its own CPU count).
const WORDS: usize = 64;

/// The CPUs the calling thread may run on (its affinity mask, which a thread inherits from the
/// one that spawned it), in increasing order.
///
/// # Panics
/// If the mask cannot be read (the test cannot go on without it).
pub fn allowed() -> Vec<usize> {
    let mut mask = [0u64; WORDS];
    // SAFETY: sched_getaffinity(2) writes at most `len` bytes into a buffer of exactly `len`
    // writable bytes; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getaffinity, 0, WORDS * 8, mask.as_mut_ptr()) };
    assert!(rc > 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
    // On success the system call returns the number of bytes it wrote.
    let bits = (rc as usize).min(WORDS * 8) * 8;
    (0..bits).filter(|&c| mask[c / 64] >> (c % 64) & 1 == 1).collect()
}

/// Let the calling thread run only on `cpus` (each one from [`allowed`] or an earlier mask).
///
/// # Panics
/// If `cpus` is empty, names a CPU beyond the mask size, or the kernel refuses the mask.
pub fn pin(cpus: &[usize]) {
    assert!(!cpus.is_empty(), "pin: no CPU given");
    let mut mask = [0u64; WORDS];
    for &c in cpus {
        assert!(c < WORDS * 64, "pin: CPU {c} beyond the mask");
        mask[c / 64] |= 1 << (c % 64);
    }
    // SAFETY: sched_setaffinity(2) reads `len` bytes from a buffer of exactly `len` bytes;
    // pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setaffinity, 0, WORDS * 8, mask.as_ptr()) };
    assert_eq!(rc, 0, "sched_setaffinity({cpus:?}): {}", std::io::Error::last_os_error());
}

/// Pin the calling thread to the first CPU it may run on; that CPU.
pub fn pin_to_one() -> usize {
    let cpu = allowed()[0];
    pin(&[cpu]);
    cpu
}
