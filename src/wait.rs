//! Waiting on many tasks at once, of either pool: Python's `concurrent.futures.as_completed`
//! and `concurrent.futures.wait`.
//!
//! Both register one hook on each task's completion (see `pool/completion.rs`) that pushes
//! the task's index onto a [`ReadyQueue`]; the caller takes indices off the queue in the
//! order the tasks finished, waiting on a latch while it is empty. Hooks of tasks that are
//! still pending when the caller stops (a timeout, a dropped iterator) are removed, so
//! nothing is left behind on tasks that outlive the wait.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pool::{HookId, Signal, Wait, WaitLatch, deadline_after};
use crate::sync::{Mutex, lock};
use sealed::Sealed;

pub(crate) mod sealed {
    /// Gives [`Awaitable`](super::Awaitable) its completion without naming it publicly.
    pub trait Sealed {
        /// The task's completion, seen without its outcome type.
        #[expect(private_interfaces, reason = "sealed: only this crate calls it")]
        fn signal(&self) -> &dyn crate::pool::Signal;
    }
}

/// A task of either pool ([`Task`](crate::Task) or `ProcessTask`), or a reference to one:
/// what [`as_completed`] and [`wait`] accept. Sealed: only this crate implements it.
///
/// A list can mix the two pools' tasks as `&dyn Awaitable`.
///
/// # Examples
///
/// ```
/// use parpool::Awaitable;
///
/// let pool = parpool::ThreadPool::new(1)?;
/// let (a, b) = (pool.submit(|| 1), pool.submit(|| "two"));
/// let mixed: [&dyn Awaitable; 2] = [&a, &b];
/// let order: Vec<usize> = parpool::as_completed(mixed).map(|(index, _)| index).collect();
/// assert_eq!(order.len(), 2);
/// assert!(a.is_ready() && b.is_ready());
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
pub trait Awaitable: sealed::Sealed {
    /// Whether the task finished (with a value, a failure, or cancelled).
    fn is_ready(&self) -> bool {
        self.signal().is_finished()
    }
}

impl<T: Awaitable + ?Sized> sealed::Sealed for &T {
    #[expect(private_interfaces, reason = "sealed: only this crate calls it")]
    fn signal(&self) -> &dyn Signal {
        (**self).signal()
    }
}

impl<T: Awaitable + ?Sized> Awaitable for &T {}

/// When [`wait`] returns: Python's `return_when`.
///
/// # Examples
///
/// ```
/// use parpool::ReturnWhen;
///
/// assert_ne!(ReturnWhen::FirstCompleted, ReturnWhen::AllCompleted);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReturnWhen {
    /// As soon as any task finished (or was cancelled).
    FirstCompleted,
    /// As soon as any task finished with a failure (a panic, a crash, ...), else when all
    /// finished. A cancelled task is not a failure.
    FirstException,
    /// When every task finished.
    AllCompleted,
}

/// Iterates over `tasks` in the order they finish, yielding each with its index in
/// `tasks`: Python's `concurrent.futures.as_completed`. Each yielded task is ready, so its
/// `get` does not block. Tasks may be owned (they come back owned) or borrowed, and a list
/// of `&dyn Awaitable` mixes thread and process tasks.
///
/// [`AsCompleted::timeout`] bounds the whole iteration.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let pool = parpool::ThreadPool::new(2)?;
/// let tasks = [30u64, 1, 10].map(|ms| {
///     pool.submit(move || {
///         std::thread::sleep(Duration::from_millis(ms));
///         ms
///     })
/// });
/// let mut finished: Vec<(usize, u64)> = parpool::as_completed(tasks)
///     .map(|(index, task)| (index, task.get().unwrap()))
///     .collect();
/// finished.sort();
/// assert_eq!(finished, [(0, 30), (1, 1), (2, 10)]);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
pub fn as_completed<I>(tasks: I) -> AsCompleted<I::Item>
where
    I: IntoIterator,
    I::Item: Awaitable,
{
    let queue = Arc::new(ReadyQueue::default());
    let slots: Vec<Option<(I::Item, HookId)>> = tasks
        .into_iter()
        .enumerate()
        .map(|(index, task)| {
            let queue = Arc::clone(&queue);
            let hook = task.signal().add_hook(Box::new(move || queue.push(index)));
            Some((task, hook))
        })
        .collect();
    AsCompleted {
        remaining: slots.len(),
        slots,
        queue,
        deadline: None,
        timed_out: false,
    }
}

/// The iterator returned by [`as_completed`]: `(index, task)` in the order tasks finish.
///
/// # Examples
///
/// ```
/// let pool = parpool::ThreadPool::new(2)?;
/// let done = parpool::as_completed([pool.submit(|| 1), pool.submit(|| 2)]);
/// assert_eq!(done.size_hint(), (2, Some(2)));
/// assert_eq!(done.map(|(_, t)| t.get().unwrap()).sum::<i32>(), 3);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct AsCompleted<T: Awaitable> {
    /// Each task with its hook; `None` once yielded.
    slots: Vec<Option<(T, HookId)>>,
    queue: Arc<ReadyQueue>,
    remaining: usize,
    deadline: Option<Instant>,
    timed_out: bool,
}

impl<T: Awaitable> AsCompleted<T> {
    /// Ends the iteration once `timeout` (from now) has passed, even if tasks are still
    /// running: Python's `as_completed(fs, timeout)`, without the exception —
    /// [`timed_out`](Self::timed_out) tells, and [`into_pending`](Self::into_pending) gives
    /// the tasks back.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    ///
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let (release, gate) = mpsc::channel::<()>();
    /// let tasks = [pool.submit(|| 1), pool.submit(move || gate.recv().map(|()| 2).unwrap())];
    /// let mut done = parpool::as_completed(&tasks).timeout(Duration::from_millis(20));
    /// assert_eq!(done.next().map(|(index, _)| index), Some(0));
    /// assert!(done.next().is_none() && done.timed_out());
    /// assert_eq!(done.into_pending().len(), 1);
    /// release.send(()).unwrap();
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(deadline_after(timeout));
        self
    }

    /// Whether the iteration ended because the timeout passed.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let mut done = parpool::as_completed([pool.submit(|| 1)]);
    /// assert!(done.next().is_some() && done.next().is_none());
    /// assert!(!done.timed_out());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// The tasks not yielded yet, each with its index, in input order.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let pending = parpool::as_completed([pool.submit(|| 1)]).into_pending();
    /// assert_eq!(pending.len(), 1);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn into_pending(mut self) -> Vec<(usize, T)> {
        let slots = std::mem::take(&mut self.slots);
        slots
            .into_iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let (task, hook) = slot?;
                task.signal().remove_hook(hook);
                Some((index, task))
            })
            .collect()
    }

    fn yield_index(&mut self, index: usize) -> Option<(usize, T)> {
        self.remaining -= 1;
        let (task, _) = self.slots[index].take()?;
        Some((index, task))
    }
}

impl<T: Awaitable> Iterator for AsCompleted<T> {
    type Item = (usize, T);

    fn next(&mut self) -> Option<(usize, T)> {
        if self.remaining == 0 || self.timed_out {
            return None;
        }
        loop {
            let latch = {
                let mut inner = lock(&self.queue.inner);
                if let Some(index) = inner.ready.pop_front() {
                    drop(inner);
                    return self.yield_index(index);
                }
                if self
                    .deadline
                    .is_some_and(|deadline| Instant::now() >= deadline)
                {
                    self.timed_out = true;
                    return None;
                }
                let latch = Arc::new(WaitLatch::for_current_thread(match self.deadline {
                    None => Wait::Unrelated,
                    Some(_) => Wait::Timed,
                }));
                inner.waiting = Some(Arc::clone(&latch));
                latch
            };
            if !latch.wait_deadline(self.deadline) {
                lock(&self.queue.inner).waiting = None;
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let low = if self.deadline.is_some() {
            0
        } else {
            self.remaining
        };
        (low, Some(self.remaining))
    }
}

impl<T: Awaitable> Drop for AsCompleted<T> {
    fn drop(&mut self) {
        for (task, hook) in self.slots.iter().flatten() {
            task.signal().remove_hook(*hook);
        }
    }
}

impl<T: Awaitable> fmt::Debug for AsCompleted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("remaining", &self.remaining)
            .field("timed_out", &self.timed_out)
            .finish_non_exhaustive()
    }
}

/// The indices of finished tasks, and the consumer's latch while it waits for one.
#[derive(Default)]
struct ReadyQueue {
    inner: Mutex<Ready>,
}

#[derive(Default)]
struct Ready {
    ready: VecDeque<usize>,
    waiting: Option<Arc<WaitLatch>>,
}

impl ReadyQueue {
    fn push(&self, index: usize) {
        let waiting = {
            let mut inner = lock(&self.inner);
            inner.ready.push_back(index);
            inner.waiting.take()
        };
        if let Some(latch) = waiting {
            WaitLatch::set_shared(&latch);
        }
    }
}

/// Waits until `return_when` holds for `tasks`, or `timeout` passed, and returns the
/// finished tasks and the pending ones, each with its index in `tasks`:
/// Python's `concurrent.futures.wait`. Done tasks come in the order they finished; pending
/// ones in input order.
///
/// # Examples
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
/// use parpool::ReturnWhen;
///
/// let pool = parpool::ThreadPool::new(2)?;
/// let (release, gate) = mpsc::channel::<()>();
/// let tasks = vec![pool.submit(|| 1), pool.submit(move || gate.recv().map(|()| 2).unwrap())];
/// let (done, pending) = parpool::wait(&tasks, ReturnWhen::FirstCompleted, None);
/// assert_eq!(done.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0]);
/// assert_eq!(pending.len(), 1);
/// let timeout = Some(Duration::from_millis(10));
/// let (done, pending) = parpool::wait(&tasks, ReturnWhen::AllCompleted, timeout);
/// assert_eq!((done.len(), pending.len()), (1, 1));
/// release.send(()).unwrap();
/// let (done, pending) = parpool::wait(&tasks, ReturnWhen::AllCompleted, None);
/// assert_eq!((done.len(), pending.len()), (2, 0));
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
#[expect(
    clippy::type_complexity,
    reason = "Python's (done, not_done) pair, each task with its index"
)]
pub fn wait<I>(
    tasks: I,
    return_when: ReturnWhen,
    timeout: Option<Duration>,
) -> (Vec<(usize, I::Item)>, Vec<(usize, I::Item)>)
where
    I: IntoIterator,
    I::Item: Awaitable,
{
    let mut completed = as_completed(tasks);
    if let Some(timeout) = timeout {
        completed = completed.timeout(timeout);
    }
    let mut done = Vec::new();
    for (index, task) in completed.by_ref() {
        let stop = match return_when {
            ReturnWhen::FirstCompleted => true,
            ReturnWhen::FirstException => task.signal().failed(),
            ReturnWhen::AllCompleted => false,
        };
        done.push((index, task));
        if stop {
            break;
        }
    }
    let mut pending = Vec::new();
    for (index, task) in completed.into_pending() {
        // Finished since: Python's `done` holds every finished task too.
        if task.is_ready() {
            done.push((index, task));
        } else {
            pending.push((index, task));
        }
    }
    (done, pending)
}
