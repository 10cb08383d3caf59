//! Model checks of the chunk window's hand-overs with loom (see `pool/test.rs` for how to
//! run them).

use std::sync::Arc;

use loom::thread;

use super::window::{MapOp, SlotToken, Window};

type TestWindow = Window<u32, MapOp<fn(u32) -> u32>>;

/// Fills a free slot with one item (sequence number = the item) and publishes it.
fn submit(window: &TestWindow, mut token: SlotToken, item: u32) {
    let data = window.data(&mut token);
    data.seq = item as usize;
    data.input.push(item);
    window.publish(token);
}

fn times_ten(x: u32) -> u32 {
    x * 10
}

/// A feeder taking results in completion order and refilling each freed slot at once, a
/// drainer, and the feeder helping: with two slots, every ring entry is reused while the
/// other thread may be anywhere in a claim. Each chunk must run exactly once, on its own
/// slot.
#[test]
fn loom_window_runs_every_chunk_once() {
    // The feeder's wait loop is a spin (with yields): bound the preemptions so the model
    // stays finite; three are enough for the interleavings that reuse a ring entry.
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        const CHUNKS: u32 = 3;
        let (window, mut free) = Window::new(MapOp(times_ten as fn(u32) -> u32), 2);
        submit(&window, free.pop().unwrap(), 0);
        submit(&window, free.pop().unwrap(), 1);
        let drainer = {
            let window = Arc::clone(&window);
            thread::spawn(move || {
                while let Some(token) = window.claim() {
                    window.run(token);
                }
            })
        };
        let (mut next_item, mut outstanding, mut head) = (2, 2, 0);
        let mut results = Vec::new();
        while outstanding > 0 {
            if let Some(mut token) = window.take_completed(head) {
                head += 1;
                outstanding -= 1;
                results.extend(window.data(&mut token).output.drain(..));
                if next_item < CHUNKS {
                    submit(&window, token, next_item);
                    next_item += 1;
                    outstanding += 1;
                }
            } else if let Some(token) = window.claim() {
                window.run(token);
            } else {
                thread::yield_now();
            }
        }
        drainer.join().unwrap();
        results.sort_unstable();
        assert_eq!(results, [0, 10, 20], "a chunk was lost or run twice");
    });
}
