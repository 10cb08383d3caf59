//! Public behaviour of the process pool.

use parpool::ProcessPool;

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn smoke() {
    let pool = ProcessPool::new(2).unwrap();
    assert_eq!(pool.submit(square, 7).unwrap().get().unwrap(), 49);
    let v = pool.map(square, 0..100u64).unwrap();
    assert_eq!(v, (0..100u64).map(square).collect::<Vec<_>>());
}
