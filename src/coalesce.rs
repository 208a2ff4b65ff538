//! Gathering a connection's responses into one write.
//!
//! HTTP/2 answers the streams of one connection from one task: each call's
//! handler finishes, hands its frames over and wakes that task, which
//! writes what is pending and flushes. Under load the handlers finish one
//! after another on the same worker, and tokio runs a task woken this way
//! next, so every response became its own `writev` — on loopback the
//! sender also pays the receiver's TCP path, and that system call was the
//! largest single cost of a call. [`Coalesce`] answers the first flush of
//! a burst with "not yet" and wakes its own task: tokio puts a task that
//! woke itself at the back of the run queue, so every handler already
//! queued adds its frames first, and the next flush writes them all.
//!
//! One yield per burst, never a timer: a lone call waits only for the
//! tasks that were already runnable, and a connection that has nothing
//! queued behind it writes on the second poll. What it does not own: what
//! is written (hyper and h2 decide) or when the peer reads it.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Past this many buffered bytes a write goes to the socket at once: a
/// burst this large already amortises its system call.
pub const MAX_BUFFERED: usize = 64 * 1024;

/// A buffer larger than this is freed once written out rather than kept
/// for the next burst: a burst of small responses reuses its buffer, and
/// an idle connection holds at most this much.
pub const KEEP_CAPACITY: usize = 16 * 1024;

/// An `AsyncRead + AsyncWrite` whose writes are buffered until a flush
/// that comes after one yield (module docs).
#[derive(Debug)]
pub struct Coalesce<T> {
    io: T,
    buf: BytesMut,
    /// How much of `buf` is already written. Kept apart rather than
    /// advancing `buf`, so that once it is all out `clear` sees the whole
    /// allocation (an advanced `BytesMut` hides what lies behind it).
    written: usize,
    /// Set when a flush was put off; the next flush writes.
    yielded: bool,
}

impl<T> Coalesce<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes the buffer out; `Pending` with the rest kept when the socket
    /// is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let rest = &self.buf[self.written..];
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        self.buf.clear();
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room before buffering more: a full buffer goes out first.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() >= MAX_BUFFERED {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

/// So a stock tonic server can serve through it too (`bench/run`'s
/// ceiling does, to stay comparable with the plugin).
impl<T: Connected> Connected for Coalesce<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx))?;
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_room(cx))?;
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        this.buf.reserve(n);
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.written < this.buf.len() && !this.yielded {
            this.yielded = true;
            // A self-wake is a yield to the back of the queue (module docs).
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Wake, Waker},
    };

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A socket that records each write it was given; `accept` caps how
    /// much one write takes (0 = a socket that takes nothing).
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
        accept: Option<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = this.accept.unwrap_or(data.len()).min(data.len());
            if n > 0 {
                this.writes.push(data[..n].to_vec());
            }
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    /// A wrapped socket whose writes take at most `n` bytes each.
    fn taking(n: usize) -> Coalesce<Recorder> {
        Coalesce::new(Recorder {
            accept: Some(n),
            ..Recorder::default()
        })
    }

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn flush_once(c: &mut Coalesce<Recorder>, wakes: &Arc<CountWakes>) -> Poll<io::Result<()>> {
        let waker = Waker::from(wakes.clone());
        Pin::new(c).poll_flush(&mut Context::from_waker(&waker))
    }

    #[tokio::test]
    async fn writes_before_a_flush_reach_the_socket_as_one_write() {
        let mut c = Coalesce::new(Recorder::default());
        for frame in [&b"headers"[..], b"data", b"trailers"] {
            c.write_all(frame).await.unwrap();
        }
        assert!(c.io.writes.is_empty(), "nothing written before the flush");
        c.flush().await.unwrap();
        assert_eq!(c.io.writes, vec![b"headersdatatrailers".to_vec()]);
        assert_eq!(c.io.flushes, 1);
    }

    #[test]
    fn the_first_flush_of_a_burst_yields_once_and_wakes_itself() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let mut c = Coalesce::new(Recorder::default());
        c.buf.extend_from_slice(b"one");
        assert!(flush_once(&mut c, &wakes).is_pending());
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "woke itself to run again"
        );
        // What other tasks add before the second flush goes out with it.
        c.buf.extend_from_slice(b"two");
        assert!(matches!(flush_once(&mut c, &wakes), Poll::Ready(Ok(()))));
        assert_eq!(c.io.writes, vec![b"onetwo".to_vec()]);
        // The next burst yields again; an empty flush does not.
        assert!(matches!(flush_once(&mut c, &wakes), Poll::Ready(Ok(()))));
        c.buf.extend_from_slice(b"three");
        assert!(flush_once(&mut c, &wakes).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_full_buffer_goes_out_before_more_is_taken() {
        let mut c = Coalesce::new(Recorder::default());
        let big = vec![7u8; MAX_BUFFERED];
        c.write_all(&big).await.unwrap();
        assert!(c.io.writes.is_empty());
        c.write_all(b"more").await.unwrap();
        assert_eq!(c.io.writes.concat(), big, "the full buffer went out first");
        assert_eq!(&c.buf[..], b"more");
    }

    #[tokio::test]
    async fn a_large_burst_does_not_leave_its_buffer_behind() {
        let mut c = Coalesce::new(Recorder::default());
        c.write_all(&vec![1u8; 4 * KEEP_CAPACITY]).await.unwrap();
        c.flush().await.unwrap();
        // An emptied `BytesMut` reports no capacity but keeps its
        // allocation, which `reserve` takes back whole: ask it.
        c.buf.reserve(1);
        assert!(c.buf.capacity() <= KEEP_CAPACITY, "{}", c.buf.capacity());
    }

    #[tokio::test]
    async fn a_partial_write_keeps_the_rest_for_the_next() {
        let mut c = taking(3);
        c.write_all(b"abcdefgh").await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(c.io.writes.concat(), b"abcdefgh");
        assert_eq!(c.io.writes.len(), 3);
    }

    #[tokio::test]
    async fn a_socket_that_takes_nothing_is_an_error_not_a_spin() {
        let mut c = taking(0);
        c.write_all(b"x").await.unwrap();
        let e = c.flush().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_buffered_first() {
        let mut c = Coalesce::new(Recorder::default());
        c.write_all(b"goaway").await.unwrap();
        c.shutdown().await.unwrap();
        assert_eq!(c.io.writes, vec![b"goaway".to_vec()]);
        assert!(c.io.shut);
    }
}
