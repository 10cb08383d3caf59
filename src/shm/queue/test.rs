//! Checks of the queue's protocol: loom models of the ring and its events (run with
//! `RUSTFLAGS="--cfg parpool_loom" cargo test --release --lib loom`, see `pool/test.rs`),
//! and, in normal builds, users that die holding a lock in the middle of a put or get.
//!
//! # Kills in the loom models
//!
//! Loom cannot kill a thread, but it does not need to: what a put does before its commit
//! is invisible to every other user (the bytes beyond the tail are read by nobody), so a
//! putter killed at any instruction before the commit is indistinguishable, for the
//! others, from one that reserved and wrote its whole record and then stopped; the kernel
//! then releases its robust lock. A model "killed" putter does exactly that: reserve, fill
//! with garbage, release the lock without committing. Likewise a getter killed before its
//! commit is one that took and read the record and stopped. A user killed after its
//! commit but before notifying is not modelled: loom's futex has no timeout, so the lost
//! wake-up would show as a deadlock that the `LOST_WAKE_TICK` re-check resolves in real
//! runs; the process kill storm (`tests/shm_queue_kill.rs`) covers it.

#[cfg(parpool_loom)]
mod model {
    use std::sync::Arc;

    use loom::sync::Mutex;
    use loom::thread;

    use super::super::ring::{Bytes, GetHeld, NoItem, NoRoom, PutHeld, Ring};

    /// The queue's put and get, as in `Queue::put_bytes` and `Queue::get_bytes`, with loom
    /// mutexes for the robust locks and without the bounded spin (which only delays the
    /// announcement).
    struct Model {
        ring: Ring,
        bytes: Bytes,
        put_lock: Mutex<()>,
        get_lock: Mutex<()>,
    }

    impl Model {
        fn new(capacity: u32) -> Arc<Self> {
            Arc::new(Self {
                ring: Ring::new(capacity, 64),
                bytes: Bytes::new_model(64),
                put_lock: Mutex::new(()),
                get_lock: Mutex::new(()),
            })
        }

        /// Puts `payload`, waiting for room; `false` if the queue is closed.
        fn put(&self, payload: &[u8]) -> bool {
            loop {
                let lock = self.put_lock.lock().unwrap();
                // SAFETY: `lock` stands for the put lock; `held` borrows it.
                let held = unsafe { PutHeld::assume(&lock) };
                let mut ticket = None;
                let ticket = loop {
                    match self.ring.reserve(&held, payload.len() as u32) {
                        Ok(reserved) => {
                            self.ring.fill(&self.bytes, &reserved, payload);
                            self.ring.commit(reserved);
                            drop(lock);
                            self.ring.not_empty.notify();
                            return true;
                        }
                        Err(NoRoom::Closed) => return false,
                        Err(NoRoom::Full) => match ticket {
                            None => ticket = Some(self.ring.not_full.announce()),
                            Some(ticket) => break ticket,
                        },
                    }
                };
                drop(lock);
                self.ring.not_full.sleep(ticket, None);
            }
        }

        /// A putter killed before its commit: its record is written, never committed, and
        /// its lock released (by the kernel, for a robust mutex).
        fn put_killed(&self, len: u32) {
            let _lock = self.put_lock.lock().unwrap();
            // SAFETY: `_lock` stands for the put lock; `held` borrows it.
            let held = unsafe { PutHeld::assume(&_lock) };
            if let Ok(reserved) = self.ring.reserve(&held, len) {
                self.ring
                    .fill(&self.bytes, &reserved, &vec![0xEE; len as usize]);
            }
        }

        /// Gets an item, waiting for one; `None` once the queue is closed and empty.
        fn get(&self) -> Option<Vec<u8>> {
            loop {
                let lock = self.get_lock.lock().unwrap();
                // SAFETY: `lock` stands for the get lock; `held` borrows it.
                let held = unsafe { GetHeld::assume(&lock) };
                let mut ticket = None;
                let ticket = loop {
                    match self.ring.take(&self.bytes, &held) {
                        Ok(taken) => {
                            let mut out = vec![0; taken.len()];
                            self.ring.read(&self.bytes, &taken, &mut out);
                            self.ring.release(taken);
                            drop(lock);
                            self.ring.not_full.notify();
                            return Some(out);
                        }
                        Err(NoItem::Closed) => return None,
                        Err(NoItem::Corrupt) => panic!("a corrupt record"),
                        Err(NoItem::Empty) => match ticket {
                            None => ticket = Some(self.ring.not_empty.announce()),
                            Some(ticket) => break ticket,
                        },
                    }
                };
                drop(lock);
                self.ring.not_empty.sleep(ticket, None);
            }
        }

        /// A getter killed before its commit: it read the record at the head, if any, and
        /// stopped; its lock is released.
        fn get_killed(&self) {
            let _lock = self.get_lock.lock().unwrap();
            // SAFETY: `_lock` stands for the get lock; `held` borrows it.
            let held = unsafe { GetHeld::assume(&_lock) };
            if let Ok(taken) = self.ring.take(&self.bytes, &held) {
                let mut out = vec![0; taken.len()];
                self.ring.read(&self.bytes, &taken, &mut out);
            }
        }

        fn close(&self) {
            {
                let _lock = self.put_lock.lock().unwrap();
                // SAFETY: `_lock` stands for the put lock; `held` borrows it.
                let held = unsafe { PutHeld::assume(&_lock) };
                self.ring.close(&held);
            }
            self.ring.not_empty.notify_all();
            self.ring.not_full.notify_all();
        }
    }

    fn bounded() -> loom::model::Builder {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model
    }

    /// One producer, one consumer, capacity 1: both wait on each other (the putter for
    /// room, the getter for an item), records wrap around the ring's end (two 30-byte
    /// payloads in 64 bytes), and every byte the getter reads was written before the commit
    /// it saw (loom checks each byte's accesses).
    #[test]
    fn loom_queue_hand_off_waits_without_losing_a_wake_up() {
        bounded().check(|| {
            let q = Model::new(1);
            let producer = {
                let q = Arc::clone(&q);
                thread::spawn(move || {
                    assert!(q.put(&[1; 30]));
                    assert!(q.put(&[2; 30]));
                })
            };
            assert_eq!(q.get().unwrap(), [1; 30]);
            assert_eq!(q.get().unwrap(), [2; 30]);
            producer.join().unwrap();
        });
    }

    /// Two producers race for one slot; the consumer gets each item exactly once.
    #[test]
    fn loom_queue_two_putters_exactly_once() {
        bounded().check(|| {
            let q = Model::new(1);
            let producers: Vec<_> = [3u8, 4]
                .into_iter()
                .map(|x| {
                    let q = Arc::clone(&q);
                    thread::spawn(move || assert!(q.put(&[x; 2])))
                })
                .collect();
            let mut got = [q.get().unwrap(), q.get().unwrap()];
            got.sort();
            assert_eq!(got, [[3; 2], [4; 2]]);
            for p in producers {
                p.join().unwrap();
            }
        });
    }

    /// A putter killed mid-put, racing a live putter and a getter: the getter gets the live
    /// item, whole, and never a byte of the dead one's.
    #[test]
    fn loom_queue_killed_putter_leaves_nothing() {
        bounded().check(|| {
            let q = Model::new(2);
            let killed = {
                let q = Arc::clone(&q);
                thread::spawn(move || q.put_killed(20))
            };
            let live = {
                let q = Arc::clone(&q);
                thread::spawn(move || assert!(q.put(&[7; 20])))
            };
            assert_eq!(q.get().unwrap(), [7; 20]);
            killed.join().unwrap();
            live.join().unwrap();
            assert_eq!(q.ring.len(), 0, "the dead putter's record was committed");
        });
    }

    /// A getter killed mid-get, racing a live getter: the item stays for the live one.
    #[test]
    fn loom_queue_killed_getter_leaves_the_item() {
        bounded().check(|| {
            let q = Model::new(1);
            let producer = {
                let q = Arc::clone(&q);
                thread::spawn(move || assert!(q.put(&[9; 3])))
            };
            let killed = {
                let q = Arc::clone(&q);
                thread::spawn(move || q.get_killed())
            };
            assert_eq!(q.get().unwrap(), [9; 3]);
            producer.join().unwrap();
            killed.join().unwrap();
        });
    }

    /// Close while a getter may be asleep: it drains the item put before the close, then
    /// sees closed; a put after the close fails.
    #[test]
    fn loom_queue_close_wakes_and_drains() {
        bounded().check(|| {
            let q = Model::new(1);
            let getter = {
                let q = Arc::clone(&q);
                thread::spawn(move || {
                    let first = q.get();
                    let second = q.get();
                    (first, second)
                })
            };
            assert!(q.put(&[5]));
            q.close();
            assert!(!q.put(&[6]));
            let (first, second) = getter.join().unwrap();
            assert_eq!(first.unwrap(), [5]);
            assert!(second.is_none());
        });
    }
}

#[cfg(not(parpool_loom))]
mod dead_holder {
    use super::super::Queue;
    use super::super::ring::{GetHeld, PutHeld};

    /// A thread that exits holding a robust mutex is, for the kernel, a dead holder: the
    /// next locker gets `EOWNERDEAD`, exactly as after a killed process.
    #[test]
    fn a_putter_dying_mid_record_with_the_lock_leaves_nothing() {
        let q = Queue::<Vec<u8>>::new(4).unwrap();
        q.put(vec![1]).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let lock = q.raw.lock();
                std::mem::forget(lock.lock());
                // SAFETY: this thread holds the put lock (and never releases it).
                let held = unsafe { PutHeld::assume(lock) };
                let ring = &q.control().ring;
                let reserved = ring.reserve(&held, 10).unwrap();
                ring.fill(&q.bytes(), &reserved, &[0xEE; 10]);
                // Dies here: no commit (and the lock is never released).
                let _ = reserved;
            });
        });
        q.put(vec![2]).unwrap();
        assert_eq!(q.get().unwrap(), [1]);
        assert_eq!(q.get().unwrap(), [2]);
        assert!(q.try_get().unwrap_err().is_empty());
        assert!(!q.raw.lock().is_poisoned(), "a queue's locks never poison");
    }

    #[test]
    fn a_getter_dying_mid_record_with_the_lock_leaves_the_item() {
        let q = Queue::<Vec<u8>>::new(4).unwrap();
        q.put(vec![3; 40]).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let control = q.control();
                std::mem::forget(control.get_lock.lock());
                // SAFETY: this thread holds the get lock (and never releases it).
                let held = unsafe { GetHeld::assume(&control.get_lock) };
                let taken = control.ring.take(&q.bytes(), &held).unwrap();
                let mut out = vec![0; taken.len()];
                control.ring.read(&q.bytes(), &taken, &mut out);
                // Dies here: no release of the record (nor of the lock).
                let _ = taken;
            });
        });
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().unwrap(), [3; 40]);
        assert!(q.try_get().unwrap_err().is_empty());
    }
}

#[cfg(not(parpool_loom))]
mod wake {
    use std::sync::{Arc, Barrier, mpsc};
    use std::time::Duration;

    use super::super::Queue;

    /// One notification wakes every sleeper of an event at once, not one of them (the
    /// others would wait for the lost-wake tick). The sleepers sleep without the tick here,
    /// far longer than the test waits for them.
    #[test]
    fn notify_wakes_every_sleeper() {
        const SLEEPERS: usize = 4;
        let q = Queue::<u8>::new(1).unwrap();
        let announced = Arc::new(Barrier::new(SLEEPERS + 1));
        let (woke, woken) = mpsc::channel();
        for _ in 0..SLEEPERS {
            let (q, announced, woke) = (q.clone(), Arc::clone(&announced), woke.clone());
            // Detached: a sleeper nobody wakes must not hold the test up.
            std::thread::spawn(move || {
                let event = &q.control().ring.not_empty;
                let ticket = event.announce();
                announced.wait();
                event.sleep_at_most(ticket, Duration::from_secs(600));
                woke.send(()).unwrap();
            });
        }
        announced.wait();
        q.control().ring.not_empty.notify();
        for i in 0..SLEEPERS {
            // A hang bound, not a timing: a woken sleeper is back in microseconds.
            let back = woken.recv_timeout(Duration::from_secs(20));
            assert!(back.is_ok(), "only {i} of {SLEEPERS} sleepers woke up");
        }
    }
}
