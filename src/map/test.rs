//! Model checks of the chunk window with loom (see `pool/test.rs` for how to run them):
//! the ring hand-overs with slot tokens, and a drainer retiring and rejoining while the
//! feeder publishes, claims chunks itself and sleeps on its latch.

use std::sync::Arc;

use loom::thread;

use super::window::{MapOp, SlotToken, Window, drain};

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
        let (window, mut free) = Window::new(MapOp(times_ten as fn(u32) -> u32), 2, None);
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

/// The drainer's retire/rejoin and the feeder's sleep: the feeder publishes chunk 0, a
/// drainer runs the real `drain` (one linger round under loom, then it retires and looks
/// once more, rejoining if a chunk arrived), the feeder publishes chunk 1 at any point of
/// that, then waits for both completions with the real `wait_completed` (claiming chunks
/// itself, then sleeping on its latch until a drainer's completion wakes it). Each chunk
/// must run exactly once, the feeder must never sleep through a completion (loom reports
/// the deadlock), and the live-drainer count must come back to zero.
#[test]
fn loom_window_drainer_retires_and_feeder_sleeps() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let (window, mut free) = Window::new(MapOp(times_ten as fn(u32) -> u32), 2, None);
        submit(&window, free.pop().unwrap(), 0);
        window.drainer_spawned();
        let drainer = {
            let window = Arc::clone(&window);
            thread::spawn(move || drain(&*window))
        };
        submit(&window, free.pop().unwrap(), 1);
        let mut head = 0;
        let mut results = Vec::new();
        for _ in 0..2 {
            let mut token = window.wait_completed(|| {
                let token = window.take_completed(head);
                head += usize::from(token.is_some());
                token
            });
            results.extend(window.data(&mut token).output.drain(..));
        }
        drainer.join().unwrap();
        results.sort_unstable();
        assert_eq!(results, [0, 10], "a chunk was lost or run twice");
        assert_eq!(
            window.live_drainers(),
            0,
            "a drainer retired twice or never"
        );
    });
}
