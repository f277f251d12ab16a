//! A C ABI over `restartable`'s collections, built as a `cdylib` (and an `rlib`, so Rust tests
//! and examples can call the same functions linked into an executable).
//!
//! `host.c` (next to this crate's `Cargo.toml`) is a C program that `dlopen`s the library, uses
//! these functions from 4 threads, checks every total exactly, times [`rs_counter_add_n`],
//! `dlclose`s the library and keeps running for a second under preemption and a signal storm.
//! `tests/host.rs` compiles it with gcc and runs it.
//!
//! Every object is an opaque pointer from a `*_new` function, freed by the matching `*_free`.
//! No panic crosses the boundary: every function body runs inside [`std::panic::catch_unwind`]
//! and answers a documented fallback value (null, 0) instead.
//!
//! After `dlclose` the library stays mapped: `restartable` pins the object that contains it
//! (`RTLD_NODELETE`), because a thread's `rseq_cs` may still point at one of its critical-section
//! descriptors, which the kernel reads on the thread's next preemption or signal.

use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};

use restartable::{Buffer, Counter, Registration, Stack};

/// A per-CPU counter ([`Counter`]).
pub struct RsCounter(Counter);
/// A per-CPU stack of `u64` ([`Stack`]).
pub struct RsStack(Stack<u64>);
/// A fixed-capacity per-CPU buffer of `u64` ([`Buffer`]).
pub struct RsBuffer(Buffer<u64>);

/// Run `f`, answering `fallback` if it panics (the panic message still goes to stderr).
fn no_unwind<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Move `v` to the heap and hand its pointer to C (null if allocating panicked).
fn into_c<T>(v: impl FnOnce() -> T) -> *mut T {
    no_unwind(core::ptr::null_mut(), || Box::into_raw(Box::new(v())))
}

/// 1 if the process runs rseq fast paths ([`restartable::Mode::Fast`]), else 0.
#[unsafe(no_mangle)]
pub extern "C" fn rs_mode_is_fast() -> c_int {
    no_unwind(0, || c_int::from(restartable::mode().is_fast()))
}

/// Who owns the calling thread's rseq area: 1 glibc, 2 this library, 0 none (registering it now
/// if needed).
#[unsafe(no_mangle)]
pub extern "C" fn rs_registration() -> c_int {
    no_unwind(0, || match restartable::registration() {
        Registration::Glibc { .. } => 1,
        Registration::Own { .. } => 2,
        Registration::Unavailable(_) => 0,
    })
}

/// A new counter at zero, or null if the per-CPU pool is exhausted.
#[unsafe(no_mangle)]
pub extern "C" fn rs_counter_new() -> *mut RsCounter {
    no_unwind(core::ptr::null_mut(), || match Counter::try_new() {
        Ok(c) => Box::into_raw(Box::new(RsCounter(c))),
        Err(_) => core::ptr::null_mut(),
    })
}

/// Add `n` on the current CPU.
///
/// # Safety
/// `c` is null (nothing happens) or a live counter from [`rs_counter_new`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_counter_add(c: *const RsCounter, n: u64) {
    // SAFETY: the caller's contract: null or a live counter, shared (adds are thread-safe).
    if let Some(c) = unsafe { c.as_ref() } {
        no_unwind((), || c.0.add(n));
    }
}

/// Add `n`, `times` times (the loop runs inside the library: what a hot path costs there).
///
/// # Safety
/// As [`rs_counter_add`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_counter_add_n(c: *const RsCounter, n: u64, times: u64) {
    // SAFETY: the caller's contract: null or a live counter.
    if let Some(c) = unsafe { c.as_ref() } {
        no_unwind((), || {
            for _ in 0..times {
                c.0.add(n);
            }
        });
    }
}

/// The counter's total now (0 for null).
///
/// # Safety
/// As [`rs_counter_add`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_counter_sum(c: *const RsCounter) -> u64 {
    // SAFETY: the caller's contract: null or a live counter.
    unsafe { c.as_ref() }.map_or(0, |c| no_unwind(0, || c.0.sum()))
}

/// Sum and reset the counter, CPU by CPU through the guard (0 for null, or if the membarrier
/// fence fails).
///
/// # Safety
/// As [`rs_counter_add`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_counter_take(c: *const RsCounter) -> u64 {
    // SAFETY: the caller's contract: null or a live counter.
    unsafe { c.as_ref() }.map_or(0, |c| no_unwind(0, || c.0.try_take().unwrap_or(0)))
}

/// Free a counter.
///
/// # Safety
/// `c` is null or a counter from [`rs_counter_new`] that no thread uses any more; it is not used
/// after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_counter_free(c: *mut RsCounter) {
    if !c.is_null() {
        // SAFETY: the caller's contract: a pointer from `Box::into_raw`, given back once.
        let c = unsafe { Box::from_raw(c) };
        no_unwind((), || drop(c));
    }
}

/// A new empty stack, or null if the per-CPU pool is exhausted.
#[unsafe(no_mangle)]
pub extern "C" fn rs_stack_new() -> *mut RsStack {
    into_c(|| RsStack(Stack::new()))
}

/// Push `v` on the current CPU's list. Returns 1, or 0 if `s` is null or allocation failed.
///
/// # Safety
/// `s` is null or a live stack from [`rs_stack_new`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_stack_push(s: *const RsStack, v: u64) -> c_int {
    // SAFETY: the caller's contract: null or a live stack, shared (push is thread-safe).
    unsafe { s.as_ref() }.map_or(0, |s| {
        no_unwind(0, || {
            s.0.push(v);
            1
        })
    })
}

/// Pop the current CPU's most recent item into `*out`: 1 if there was one, else 0.
///
/// # Safety
/// `s` is null or a live stack from [`rs_stack_new`]; `out` is valid for one `u64` write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_stack_pop(s: *const RsStack, out: *mut u64) -> c_int {
    // SAFETY: the caller's contract: null or a live stack.
    let Some(s) = (unsafe { s.as_ref() }) else { return 0 };
    match no_unwind(None, || s.0.pop()) {
        Some(v) => {
            // SAFETY: the caller's contract: `out` is writable.
            unsafe { out.write(v) };
            1
        }
        None => 0,
    }
}

/// Remove every item of every CPU's list; write the first `cap` of them to `out` (which may be
/// null when `cap` is 0) and return how many were removed (0 if the drain failed).
///
/// # Safety
/// `s` is null or a live stack from [`rs_stack_new`]; `out` is valid for `cap` `u64` writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_stack_drain(s: *const RsStack, out: *mut u64, cap: usize) -> usize {
    // SAFETY: the caller's contract: null or a live stack.
    let Some(s) = (unsafe { s.as_ref() }) else { return 0 };
    let items = no_unwind(Vec::new(), || s.0.drain_all());
    // SAFETY: the caller's contract: `out` is writable for `cap` values.
    unsafe { write_out(&items, out, cap) };
    items.len()
}

/// Free a stack and the items left on it.
///
/// # Safety
/// `s` is null or a stack from [`rs_stack_new`] that no thread uses any more; it is not used
/// after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_stack_free(s: *mut RsStack) {
    if !s.is_null() {
        // SAFETY: the caller's contract: a pointer from `Box::into_raw`, given back once.
        let s = unsafe { Box::from_raw(s) };
        no_unwind((), || drop(s));
    }
}

/// A new buffer of `per_cpu` items per CPU, or null if the per-CPU pool cannot hold it.
#[unsafe(no_mangle)]
pub extern "C" fn rs_buffer_new(per_cpu: usize) -> *mut RsBuffer {
    no_unwind(core::ptr::null_mut(), || match Buffer::try_with_capacity(per_cpu) {
        Ok(b) => Box::into_raw(Box::new(RsBuffer(b))),
        Err(_) => core::ptr::null_mut(),
    })
}

/// Push `v` on the current CPU's buffer: 1, or 0 if that buffer is full (or `b` is null).
///
/// # Safety
/// `b` is null or a live buffer from [`rs_buffer_new`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_buffer_push(b: *const RsBuffer, v: u64) -> c_int {
    // SAFETY: the caller's contract: null or a live buffer, shared (push is thread-safe).
    unsafe { b.as_ref() }.map_or(0, |b| no_unwind(0, || c_int::from(b.0.push(Box::new(v)).is_ok())))
}

/// Pop the current CPU's most recent item into `*out`: 1 if there was one, else 0.
///
/// # Safety
/// `b` is null or a live buffer from [`rs_buffer_new`]; `out` is valid for one `u64` write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_buffer_pop(b: *const RsBuffer, out: *mut u64) -> c_int {
    // SAFETY: the caller's contract: null or a live buffer.
    let Some(b) = (unsafe { b.as_ref() }) else { return 0 };
    match no_unwind(None, || b.0.pop()) {
        Some(v) => {
            // SAFETY: the caller's contract: `out` is writable.
            unsafe { out.write(*v) };
            1
        }
        None => 0,
    }
}

/// Remove every item of every CPU's buffer, as [`rs_stack_drain`].
///
/// # Safety
/// `b` is null or a live buffer from [`rs_buffer_new`]; `out` is valid for `cap` `u64` writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_buffer_drain(b: *const RsBuffer, out: *mut u64, cap: usize) -> usize {
    // SAFETY: the caller's contract: null or a live buffer.
    let Some(b) = (unsafe { b.as_ref() }) else { return 0 };
    let items: Vec<u64> = no_unwind(Vec::new(), || b.0.drain_all().into_iter().map(|v| *v).collect());
    // SAFETY: the caller's contract: `out` is writable for `cap` values.
    unsafe { write_out(&items, out, cap) };
    items.len()
}

/// Free a buffer and the items left in it.
///
/// # Safety
/// `b` is null or a buffer from [`rs_buffer_new`] that no thread uses any more; it is not used
/// after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rs_buffer_free(b: *mut RsBuffer) {
    if !b.is_null() {
        // SAFETY: the caller's contract: a pointer from `Box::into_raw`, given back once.
        let b = unsafe { Box::from_raw(b) };
        no_unwind((), || drop(b));
    }
}

/// Copy the first `cap` of `items` to `out`.
///
/// # Safety
/// `out` is valid for `cap` `u64` writes (it may be null when `cap` is 0).
unsafe fn write_out(items: &[u64], out: *mut u64, cap: usize) {
    let n = items.len().min(cap);
    if n > 0 {
        // SAFETY: `n <= cap` values fit in `out` (the caller's contract); `items` is a distinct
        // Rust allocation, so the ranges do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(items.as_ptr(), out, n) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_through_the_c_abi() {
        let c = rs_counter_new();
        assert!(!c.is_null());
        // SAFETY: `c` is a live counter until the `rs_counter_free` below; null is allowed.
        unsafe {
            rs_counter_add(c, 5);
            rs_counter_add_n(c, 3, 1000);
            rs_counter_add(core::ptr::null(), 1);
            std::thread::scope(|s| {
                let c = c as usize;
                for _ in 0..4 {
                    s.spawn(move || rs_counter_add_n(c as *const RsCounter, 2, 10_000));
                }
            });
            assert_eq!(rs_counter_sum(c), 5 + 3000 + 80_000);
            assert_eq!(rs_counter_take(c), 83_005);
            assert_eq!(rs_counter_sum(c), 0);
            assert_eq!(rs_counter_sum(core::ptr::null()), 0);
            rs_counter_free(c);
            rs_counter_free(core::ptr::null_mut());
        }
    }

    #[test]
    fn stack_and_buffer_through_the_c_abi() {
        let (s, b) = (rs_stack_new(), rs_buffer_new(4));
        assert!(!s.is_null() && !b.is_null());
        let mut v = 0u64;
        // SAFETY: `s` and `b` are live until freed below; `v` and `out` are writable locals.
        unsafe {
            for i in 1..=10 {
                assert_eq!(rs_stack_push(s, i), 1);
            }
            let pushed: u64 = (100..110).filter(|&i| rs_buffer_push(b, i) == 1).count() as u64;
            assert!(pushed >= 4, "the current CPU's buffer holds at least 4");
            // Every push is popped (current CPU only) or drained, exactly once.
            let mut popped = Vec::new();
            for _ in 0..4 {
                if rs_stack_pop(s, &mut v) == 1 {
                    popped.push(v);
                }
            }
            // A drain into too small an array still removes (and counts) everything.
            let mut out = [0u64; 2];
            let drained = rs_stack_drain(s, out.as_mut_ptr(), out.len());
            assert_eq!(drained + popped.len(), 10, "popped {popped:?}");
            popped.extend(&out[..drained.min(2)]);
            popped.sort_unstable();
            let n = popped.len();
            popped.dedup();
            assert_eq!(popped.len(), n, "no item twice");
            assert!(popped.iter().all(|v| (1..=10).contains(v)), "{popped:?}");
            assert_eq!(rs_stack_drain(s, core::ptr::null_mut(), 0), 0);
            // A pop reads the current CPU's buffer only: if the thread moved since its pushes,
            // it finds that CPU's buffer empty, and the item stays for the drain.
            let got = rs_buffer_pop(b, &mut v);
            assert!(got == 0 || got == 1, "pop returns 0 or 1, got {got}");
            if got == 1 {
                assert!((100..110).contains(&v), "{v}");
            }
            let drained = rs_buffer_drain(b, core::ptr::null_mut(), 0) as u64;
            assert_eq!(got as u64 + drained, pushed, "every push popped or drained once");
            assert_eq!(rs_buffer_pop(core::ptr::null(), &mut v), 0);
            assert_eq!(rs_stack_push(core::ptr::null(), 1), 0);
            rs_stack_free(s);
            rs_buffer_free(b);
        }
        assert!(rs_registration() > 0 || !restartable::status().rseq_available());
        assert_eq!(rs_mode_is_fast() == 1, restartable::mode().is_fast());
    }
}
