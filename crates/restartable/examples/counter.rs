//! A per-CPU counter shared by a few threads: the quick start from the README.
use restartable::{Counter, Stack};

fn main() {
    let hits = Counter::new();
    let free: Stack<Vec<u8>> = Stack::new();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100_000 {
                    hits.add(1);
                }
                free.push(vec![0; 64]);
            });
        }
    });
    assert_eq!(hits.sum(), 400_000);
    let buffers = free.drain_all();
    assert_eq!(buffers.len(), 4);
    println!("{} adds, {} buffers, mode: {}", hits.take(), buffers.len(), restartable::mode());
}
