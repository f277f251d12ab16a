use std::sync::atomic::{AtomicUsize, Ordering};
use restartable::ops::{self, Cpu, Outcome};

#[test]
fn smoke() {
    println!("{}", restartable::status());
    let v = AtomicUsize::new(5);
    let mut committed = 0;
    for _ in 0..1000 {
        let cpu = restartable::current_cpu();
        match unsafe { ops::load_add_store::<Cpu>(&v, 2, cpu) } {
            Outcome::Committed => committed += 1,
            o => println!("{o:?}"),
        }
    }
    assert_eq!(v.load(Ordering::Relaxed), 5 + 2 * committed);
    assert!(committed > 900);
}
