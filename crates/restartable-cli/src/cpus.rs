//! The CPUs this process may run on, and the tool's one definition of "cores".
//!
//! Wherever this tool says "cores" (the default thread counts of `bench` and `stress`, the tour,
//! the stress matrix, the `machine` line of the bench report), it means [`cores()`]: the number
//! of CPUs in this process's affinity mask (`sched_getaffinity`), which is what `taskset`, a
//! cpuset cgroup or a container's `--cpuset-cpus` restricts. That is neither the online CPUs
//! (some may lie outside the mask) nor `std::thread::available_parallelism` (which also divides
//! by a cgroup CPU quota: a quota limits time, not where threads may run, and per-CPU data is
//! about where they run). `restartable info` still reports the online and possible CPUs, as
//! the library sees them.

/// Words of 64 CPUs in an affinity mask: enough for every possible CPU (the kernel refuses a
/// mask shorter than its own CPU count), and at least glibc's `cpu_set_t` (1024 CPUs).
fn mask_words() -> usize {
    restartable::possible_cpus().div_ceil(64).max(16)
}

/// The CPUs the calling thread may run on (its affinity mask, which every thread inherits from
/// the one that spawned it), in increasing order; the current CPU alone if the mask cannot be
/// read.
pub fn allowed() -> Vec<usize> {
    let mut mask = vec![0u64; mask_words()];
    // SAFETY: sched_getaffinity(2) writes at most `len` bytes, and the buffer is `len` bytes
    // long and writable; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getaffinity, 0, mask.len() * 8, mask.as_mut_ptr()) };
    if rc <= 0 {
        return vec![restartable::current_cpu()];
    }
    // On success the system call returns the number of bytes it wrote.
    let bits = (rc as usize).min(mask.len() * 8) * 8;
    (0..bits).filter(|&c| mask[c / 64] >> (c % 64) & 1 == 1).collect()
}

/// How many CPUs this process may run on: the size of [`allowed()`], at least 1.
pub fn cores() -> usize {
    allowed().len().max(1)
}

/// Let thread `tid` run only on `cpus` (best effort: errors are ignored, CPUs beyond the mask
/// size are left out).
pub fn set_affinity(tid: i32, cpus: &[usize]) {
    let mut mask = vec![0u64; mask_words()];
    for &c in cpus {
        if let Some(w) = mask.get_mut(c / 64) {
            *w |= 1 << (c % 64);
        }
    }
    // SAFETY: sched_setaffinity(2) reads `len` bytes, and the buffer is `len` bytes long. It
    // touches no memory of ours: a tid that has exited makes it fail (ESRCH), and one reused
    // meanwhile only moves a thread this process may move anyway.
    unsafe { libc::syscall(libc::SYS_sched_setaffinity, tid, mask.len() * 8, mask.as_ptr()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_cpu_is_allowed() {
        let a = allowed();
        assert!(!a.is_empty() && a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
        assert!(a.iter().all(|&c| c < restartable::possible_cpus()), "{a:?}");
        assert_eq!(cores(), a.len());
        // This thread runs on one of its allowed CPUs (read twice: it may migrate in between).
        let cpu = restartable::sys::sched_getcpu();
        assert!(a.contains(&cpu) || a.contains(&restartable::sys::sched_getcpu()), "{cpu} not in {a:?}");
    }

    #[test]
    fn pinning_a_thread_moves_it() {
        let a = allowed();
        let target = *a.last().unwrap();
        std::thread::spawn(move || {
            // SAFETY: gettid(2) has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
            set_affinity(tid, &[target]);
            assert_eq!(allowed(), [target]);
            assert_eq!(restartable::sys::sched_getcpu(), target);
        })
        .join()
        .unwrap();
    }
}
