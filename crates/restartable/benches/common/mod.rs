//! Helpers shared by the criterion benches (included with `mod common;`; not a bench itself).

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// `threads` threads start together and each runs `body(iters)`; the slowest one's time.
pub fn parallel(threads: usize, iters: u64, body: &(impl Fn(u64) + Sync)) -> Duration {
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    let t = Instant::now();
                    body(iters);
                    t.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a benchmark thread panicked")).max().unwrap_or_default()
    })
}
