//! Runs a connection's HTTP/2 streams inside the connection's own task.
//!
//! hyper hands every HTTP/2 request stream to an executor. With tokio's
//! (`TokioExecutor`) each stream becomes a task of its own: a call's Redis
//! reply wakes that task, often on the other worker thread, and its finished
//! response then wakes the connection's task — two wake-ups per call and,
//! across cores, a futex and cold caches (BENCHMARKS.md, "Streams polled
//! by their connection's task"). [`Inline`] instead queues each stream for
//! the connection's task, which polls it in [`Streams`] next to the
//! connection itself: a reply wakes the one task that also writes the
//! response, and responses that finish together leave together.
//!
//! The trade: one connection's calls run on one thread at a time (many
//! connections still spread over the workers). Handlers are async and
//! short, so a stream waits for another only for its turn to be polled.
//!
//! This module owns that executor only; the connection loop is
//! `transport`'s.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use futures_util::{StreamExt, stream::FuturesUnordered, task::AtomicWaker};

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Streams handed over and not yet picked up, and who picks them up.
#[derive(Default)]
struct Queue {
    new: Mutex<Vec<Job>>,
    waker: AtomicWaker,
}

impl Queue {
    fn take(&self) -> Vec<Job> {
        std::mem::take(&mut *self.new.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The executor hyper is given for one connection; see the module docs.
#[derive(Clone)]
pub struct Inline(Arc<Queue>);

impl Inline {
    /// An executor and the future that runs what it is given. Poll the
    /// [`Streams`] in the same task as the connection.
    pub fn new() -> (Self, Streams) {
        let queue = Arc::new(Queue::default());
        let streams = Streams {
            queue: queue.clone(),
            running: FuturesUnordered::new(),
        };
        (Self(queue), streams)
    }
}

impl<F> hyper::rt::Executor<F> for Inline
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0
            .new
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(fut));
        self.0.waker.wake();
    }
}

/// Polls the streams of one connection; never finishes (the connection
/// does). Dropping it drops the streams still running.
pub struct Streams {
    queue: Arc<Queue>,
    running: FuturesUnordered<Job>,
}

impl Streams {
    /// How many streams are running (for tests).
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// True when no stream is running.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Future for Streams {
    type Output = Infallible;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Infallible> {
        let this = &mut *self;
        // Registered before the queue is read: a stream handed over after
        // the read wakes this task.
        this.queue.waker.register(cx.waker());
        loop {
            this.running.extend(this.queue.take());
            // `FuturesUnordered` answers Pending after a bounded number of
            // polls (waking itself), so a busy connection still yields.
            match this.running.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => {}
                Poll::Ready(None) | Poll::Pending => {
                    let more = !this
                        .queue
                        .new
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_empty();
                    if !more {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::rt::Executor;
    use tokio::sync::oneshot;

    use super::*;

    /// Polls `streams` once, as the connection's task would.
    fn poll_once(streams: &mut Streams) {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(streams).poll(&mut cx).is_pending());
    }

    #[test]
    fn a_stream_handed_over_runs_in_the_polling_task() {
        let (exec, mut streams) = Inline::new();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        exec.execute(async move {
            d.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(done.load(Ordering::SeqCst), 0, "ran before it was polled");
        poll_once(&mut streams);
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert!(streams.is_empty(), "a finished stream is let go");
    }

    #[tokio::test]
    async fn handing_over_a_stream_wakes_the_task_and_a_woken_stream_is_polled_again() {
        let (exec, streams) = Inline::new();
        let (tx, rx) = oneshot::channel::<u32>();
        let (seen_tx, seen) = oneshot::channel::<u32>();
        let driver = tokio::spawn(async move {
            let never = streams.await;
            match never {}
        });
        // Handed over after the driver is already waiting: the hand-over
        // must wake it.
        tokio::task::yield_now().await;
        exec.execute(async move {
            let v = rx.await.unwrap_or(0);
            let _ = seen_tx.send(v + 1);
        });
        tokio::task::yield_now().await;
        tx.send(41).expect("the stream is waiting");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), seen).await;
        assert_eq!(got.expect("the stream was polled again").ok(), Some(42));
        driver.abort();
    }

    #[test]
    fn dropping_the_streams_drops_what_still_runs() {
        struct Flag(Arc<AtomicUsize>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (exec, mut streams) = Inline::new();
        let dropped = Arc::new(AtomicUsize::new(0));
        let flag = Flag(dropped.clone());
        exec.execute(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        });
        poll_once(&mut streams);
        assert_eq!(streams.len(), 1);
        drop(streams);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}
