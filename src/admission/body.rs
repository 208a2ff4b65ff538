//! The bodies admission wraps: [`ReadBody`] counts a cache call's request
//! bytes against the budgets as they arrive and bounds how long they may
//! take; [`HeldBody`] holds a response's bytes (and its call's [`Ticket`])
//! until HTTP/2 has taken them, [`super::CHUNK`] at a time. Which call gets
//! a body at all is `admission`'s decision.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::body::Body as AxumBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use tonic::Status;

use super::{
    Admission, CHUNK,
    budget::{ConnState, Ticket},
};
use crate::error::{Error, Rejected};

/// A response body holding its request's `Ticket` until it is done,
/// handed out at most [`CHUNK`] bytes at a time.
pub struct HeldBody {
    pub(super) inner: AxumBody,
    /// Data polled from `inner` not yet handed out.
    pub(super) pending: Bytes,
    /// A non-data frame or an error polled early (trailers of a
    /// one-message answer).
    pub(super) first: Option<Result<Frame<Bytes>, axum::Error>>,
    /// `inner` already ended when it was polled early.
    pub(super) ended: bool,
    pub(super) ticket: Option<Ticket>,
}

impl HeldBody {
    pub(super) fn new(inner: AxumBody, ticket: Option<Ticket>) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
            first: None,
            ended: false,
            ticket,
        }
    }

    /// Encodes the answer now (tonic encodes when first polled) and holds
    /// its bytes from both budgets until it has been handed to HTTP/2.
    pub(super) fn account(
        &mut self,
        admission: &Admission,
        conn: &ConnState,
        cx: &mut Context<'_>,
    ) -> Result<(), Rejected> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => self.pending = data,
                Err(frame) => self.first = Some(Ok(frame)),
            },
            Poll::Ready(Some(Err(e))) => self.first = Some(Err(e)),
            // A body that is not ready yet is passed on as it comes.
            Poll::Pending => return Ok(()),
            Poll::Ready(None) => self.ended = true,
        }
        if !self.pending.is_empty() {
            let n = self.pending.len();
            admission.reserve(conn, n, "response")?;
            if let Some(ticket) = &mut self.ticket {
                ticket.bytes = n;
            }
        }
        Ok(())
    }

    fn next_piece(&mut self) -> Frame<Bytes> {
        let n = self.pending.len().min(CHUNK);
        Frame::data(self.pending.split_to(n))
    }
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            return Poll::Ready(Some(Ok(this.next_piece())));
        }
        if let Some(frame) = this.first.take() {
            this.ticket = None;
            return Poll::Ready(Some(frame));
        }
        if this.ended {
            this.ticket = None;
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.len() > CHUNK => {
                    this.pending = data;
                    Poll::Ready(Some(Ok(this.next_piece())))
                }
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(frame) => {
                    this.ticket = None;
                    Poll::Ready(Some(Ok(frame)))
                }
            },
            done => {
                this.ticket = None;
                Poll::Ready(done)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty()
            && self.first.is_none()
            && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            return SizeHint::with_exact(self.pending.len() as u64);
        }
        let mut hint = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        if pending > 0 {
            hint.set_lower(hint.lower() + pending);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + pending);
            }
        }
        hint
    }
}

// === impl ReadBody ===

/// A cache call's request body: its bytes counted against both budgets as
/// they arrive, and a deadline for all of it.
pub struct ReadBody {
    pub(super) inner: Incoming,
    pub(super) admission: Arc<Admission>,
    pub(super) conn: Arc<ConnState>,
    /// Bytes held from both budgets, given back on drop.
    pub(super) held_bytes: usize,
    pub(super) received: usize,
    /// The 5-byte gRPC message header, as far as it has arrived.
    pub(super) header: [u8; 5],
    pub(super) timeout: Duration,
    pub(super) deadline: Instant,
    /// Armed only when the body is not all there at once (the common case
    /// for small calls needs no timer).
    pub(super) timer: Option<Pin<Box<Sleep>>>,
    pub(super) failed: bool,
    /// The operation label of its metrics.
    pub(super) op: &'static str,
}

impl ReadBody {
    /// Counts `data`, holding the larger of what arrived and what the
    /// message header declares (the decoder reserves that much).
    fn count(&mut self, data: &Bytes) -> Result<(), Rejected> {
        let before = self.received;
        self.received += data.len();
        if before < 5 {
            let n = (5 - before).min(data.len());
            self.header[before..before + n].copy_from_slice(&data[..n]);
        }
        let mut want = self.received;
        if self.received >= 5 {
            let [_, a, b, c, d] = self.header;
            let declared = u32::from_be_bytes([a, b, c, d]) as usize + 5;
            if declared <= self.admission.limits.max_request_bytes {
                want = want.max(declared);
            }
        }
        if want <= self.held_bytes {
            return Ok(());
        }
        self.admission
            .reserve(&self.conn, want - self.held_bytes, "request")?;
        self.held_bytes = want;
        Ok(())
    }

    fn fail(&mut self, why: Rejected) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.failed = true;
        self.admission.release(&self.conn, self.held_bytes);
        self.held_bytes = 0;
        self.admission.count(self.op, &why);
        Poll::Ready(Some(Err(Status::from(why))))
    }
}

impl Body for ReadBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(why) = this.count(data)
                {
                    return this.fail(why);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::Cancelled(format!(
                "request body: {e}"
            ))
            .into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(timer.as_mut().poll(cx));
                let timeout = this.timeout;
                this.fail(Rejected::ReadTimeout(timeout))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ReadBody {
    fn drop(&mut self) {
        self.admission.release(&self.conn, self.held_bytes);
    }
}
