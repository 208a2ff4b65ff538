//! Admission on the plugin's port: which HTTP requests are served at all,
//! how many cache calls run at once, and how many bytes they may hold.
//!
//! One [`Admission`] is shared by every connection; each connection serves
//! through its own [`ConnService`], which carries that connection's byte
//! share and its count of requests in flight (for the idle timeout).
//! - HTTP policy: HTTP/1.x serves `GET /metrics` and nothing else (405 for
//!   another method, 404 for another path). Over HTTP/2 everything except
//!   `/metrics` must be `application/grpc*` (415 otherwise) — so a web page
//!   cannot post a form to the cache API.
//! - A cache call takes a permit (`max_concurrent_requests`) when its
//!   headers arrive, before its body is read; without one it is answered
//!   RESOURCE_EXHAUSTED at once — or, in a flood of refusals, after
//!   `refusal_delay` ([`pacing`]). The permit is held until the response
//!   body has been handed to HTTP/2 (or dropped), not just until the
//!   handler ends.
//! - Request bytes count against the global and the per-connection budget
//!   as they are buffered (the declared gRPC message length up front) and
//!   must arrive within `request_read_timeout` or the caller's deadline.
//! - Response bytes count from when the response is encoded until its last
//!   piece is handed to HTTP/2. Pieces go out [`CHUNK`] bytes at a time:
//!   hyper takes the next piece only once the last one fits the peer's
//!   window, so a caller that never reads holds at most two pieces outside
//!   the budget.
//!
//! - Data calls are the cache RPCs and Prism's key-value RPCs. Once Prism's
//!   `Drain` has closed the [`Gate`], a new one is answered UNAVAILABLE; the
//!   gate counts the admitted ones until their ticket is released, which is
//!   what `Drain` waits for.
//!
//! Health, reflection, Prism's lifecycle and `/metrics` take no permit and
//! no bytes and are never refused for draining. This module neither accepts
//! connections (`transport`) nor runs the RPCs.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{Router, body::Body as AxumBody, routing::future::RouteFuture};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version, header};
use http_body::Body;
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tower::Service;

mod body;
mod budget;
mod pacing;

pub use body::{HeldBody, ReadBody};
pub use budget::ConnState;
use budget::{Budget, Ticket};
use pacing::Pacer;

use crate::{
    drain::Gate,
    error::{Error, Refusal, Rejected},
    grpc_timeout::parse_grpc_timeout,
    metrics::Metrics,
};

/// The largest piece of a response body handed to HTTP/2 at once.
pub const CHUNK: usize = 16 * 1024;

/// How long the rest of a refused request's body is read and thrown away
/// before the answer goes out. Answering while the caller still sends makes
/// HTTP/2 reset the stream, and h2 closes a connection after 1,024 such
/// resets (its guard against reset floods) — which would cut off a good
/// client that merely ran into `max_concurrent_requests` often. Nothing is
/// buffered: each piece is dropped as it arrives.
pub const REFUSED_BODY_GRACE: Duration = Duration::from_secs(1);

/// Path prefix of the cache RPCs, admitted as data calls.
const CACHE_PATH: &str = "/cache.v1.Cache/";
/// Path prefix of Prism's key-value RPCs (basic, batch, TTL), data calls too.
const PRISM_DATA_PATH: &str = "/prism.interfaces.keyvalue.";

/// The admission limits, from `control_plane` config.
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    pub max_concurrent_requests: usize,
    pub max_in_flight_bytes: usize,
    pub max_in_flight_bytes_per_connection: usize,
    pub request_read_timeout: Duration,
    /// The largest request message the service decodes; a larger declared
    /// length is left to the decoder to refuse (OUT_OF_RANGE).
    pub max_request_bytes: usize,
    /// How long a refusal past the burst of one window is held ([`pacing`]).
    pub refusal_delay: Duration,
}

/// Admission shared by every connection.
pub struct Admission {
    router: Router,
    /// Cache calls in flight.
    requests: Budget,
    /// Bytes held by requests and responses in flight, all connections.
    bytes: Budget,
    limits: AdmissionLimits,
    metrics: Arc<Metrics>,
    /// Closed by Prism's `Drain`; counts data calls in flight.
    gate: Arc<Gate>,
    /// The answer and the rejection counter of a call over
    /// `max_concurrent_requests`, resolved once: the path every call of an
    /// overload but the admitted ones takes.
    too_many: Refusal,
    too_many_count: Counter,
    pacer: Pacer,
}

impl Admission {
    /// Admission in front of `router` (the gRPC routes and `/metrics`).
    pub fn new(
        router: Router,
        limits: AdmissionLimits,
        metrics: Arc<Metrics>,
        gate: Arc<Gate>,
    ) -> Arc<Self> {
        let why = Rejected::Requests(limits.max_concurrent_requests);
        let too_many_count = metrics.rejected_counter(why.reason());
        Arc::new(Self {
            router,
            requests: Budget::new(limits.max_concurrent_requests),
            bytes: Budget::new(limits.max_in_flight_bytes),
            too_many: Refusal::too_many_requests(limits.max_concurrent_requests),
            too_many_count,
            pacer: Pacer::new(limits.refusal_delay, limits.max_concurrent_requests),
            limits,
            metrics,
            gate,
        })
    }

    /// The service for one new connection.
    pub fn connection(self: &Arc<Self>) -> ConnService {
        let share = self.limits.max_in_flight_bytes_per_connection;
        ConnService {
            admission: self.clone(),
            conn: Arc::new(ConnState::new(share)),
        }
    }

    /// Counts a refused connection (the transport's cap).
    pub fn reject_connection(&self) {
        self.metrics.reject("max_connections");
    }

    /// Counts a refused cache call `op` and answers it.
    fn refuse(&self, op: &'static str, why: Rejected) -> Response<AxumBody> {
        self.count(op, &why);
        Status::from(why).into_http()
    }

    /// Counts and answers a cache call `op` over `max_concurrent_requests`
    /// (as [`Admission::refuse`] would, from what was built at start).
    fn refuse_too_many(&self, op: &'static str) -> Response<AxumBody> {
        self.too_many_count.inc();
        self.metrics.record(op, "resource_exhausted", 0.0);
        self.too_many.response()
    }

    /// Counts `why` as a rejection and as the operation's outcome.
    fn count(&self, op: &'static str, why: &Rejected) {
        self.metrics.reject(why.reason());
        let status = match why {
            Rejected::ReadTimeout(_) => "deadline_exceeded",
            Rejected::Requests(_) | Rejected::Bytes { .. } => "resource_exhausted",
            Rejected::Draining => "unavailable",
        };
        self.metrics.record(op, status, 0.0);
    }

    /// `n` bytes from both budgets, or which one is short.
    fn reserve(&self, conn: &ConnState, n: usize, what: &'static str) -> Result<(), Rejected> {
        let short = |budget, limit| Rejected::Bytes {
            what,
            bytes: n,
            budget,
            limit,
        };
        if !conn.bytes.take(n) {
            return Err(short(
                "max_in_flight_bytes_per_connection",
                conn.bytes.limit,
            ));
        }
        if !self.bytes.take(n) {
            conn.bytes.give(n);
            return Err(short("max_in_flight_bytes", self.bytes.limit));
        }
        Ok(())
    }

    fn release(&self, conn: &ConnState, n: usize) {
        conn.bytes.give(n);
        self.bytes.give(n);
    }
}

// === impl ConnService ===

/// The hyper service of one connection.
#[derive(Clone)]
pub struct ConnService {
    admission: Arc<Admission>,
    conn: Arc<ConnState>,
}

impl ConnService {
    /// This connection's state, for the transport's idle watchdog.
    pub fn state(&self) -> Arc<ConnState> {
        self.conn.clone()
    }

    /// The HTTP policy: `Ok(true)` for a cache call, `Ok(false)` for an
    /// exempt route, `Err` with the answer for anything not served.
    fn classify(req: &Request<Incoming>) -> Result<bool, StatusCode> {
        let path = req.uri().path();
        if req.version() != Version::HTTP_2 {
            return match (path, req.method()) {
                ("/metrics", &Method::GET | &Method::HEAD) => Ok(false),
                ("/metrics", _) => Err(StatusCode::METHOD_NOT_ALLOWED),
                _ => Err(StatusCode::NOT_FOUND),
            };
        }
        if path == "/metrics" {
            return Ok(false);
        }
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        Ok(path.starts_with(CACHE_PATH) || path.starts_with(PRISM_DATA_PATH))
    }

    fn admit(&self, req: Request<Incoming>, mut ticket: Ticket) -> Admitted {
        let a = &self.admission;
        let op = operation(req.uri().path());
        if !a.requests.take(1) {
            let refused = a.refuse_too_many(op);
            let mut admitted = Admitted::refused(refused, ticket, req.into_body());
            admitted.hold = a.pacer.hold().map(|d| Box::pin(tokio::time::sleep(d)));
            return admitted;
        }
        if !a.gate.enter() {
            a.requests.give(1);
            let refused = a.refuse(op, Rejected::Draining);
            return Admitted::refused(refused, ticket, req.into_body());
        }
        // From here the ticket gives back the slot and leaves the gate.
        ticket.admission = Some(a.clone());
        let mut read = a.limits.request_read_timeout;
        if let Some(caller) = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
        {
            read = read.min(caller);
        }
        let req = req.map(|inner| ReadBody {
            inner,
            admission: a.clone(),
            conn: self.conn.clone(),
            held_bytes: 0,
            received: 0,
            header: [0; 5],
            timeout: read,
            deadline: Instant::now() + read,
            timer: None,
            op,
            failed: false,
        });
        let mut admitted = Admitted::route(a.router.clone().call(req), ticket);
        admitted.account = Some((a.clone(), self.conn.clone(), op));
        admitted
    }
}

/// The `operation` label of a data call's path: a cache RPC's own, a Prism
/// RPC's the cache RPC it runs as (see `prism::keyvalue`).
fn operation(path: &str) -> &'static str {
    if let Some(prism) = path.strip_prefix(PRISM_DATA_PATH) {
        return prism_operation(prism.rsplit('/').next().unwrap_or_default());
    }
    match path.strip_prefix(CACHE_PATH) {
        Some("Get") => "get",
        Some("Set") => "set",
        Some("Delete") => "delete",
        Some("MGet") => "mget",
        Some("Expire") => "expire",
        Some("MSet") => "mset",
        Some("Incr") => "incr",
        Some("GetTtl") => "get_ttl",
        Some("Persist") => "persist",
        Some("Exists") => "exists",
        _ => "unknown",
    }
}

fn prism_operation(method: &str) -> &'static str {
    match method {
        "Get" => "get",
        "Set" => "set",
        "Delete" | "BatchDelete" => "delete",
        "BatchGet" => "mget",
        "BatchSet" => "mset",
        "Exists" => "exists",
        "Expire" => "expire",
        "GetTTL" => "get_ttl",
        "Persist" => "persist",
        _ => "unknown",
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<HeldBody>;
    type Error = Infallible;
    type Future = Admitted;

    fn call(&self, req: Request<Incoming>) -> Admitted {
        self.conn.begin();
        let ticket = Ticket {
            conn: self.conn.clone(),
            admission: None,
            bytes: 0,
            unread: None,
        };
        match Self::classify(&req) {
            Ok(true) => self.admit(req, ticket),
            Ok(false) => Admitted::route(self.admission.router.clone().call(req), ticket),
            Err(code) => {
                let mut refused = Response::new(AxumBody::empty());
                *refused.status_mut() = code;
                if code == StatusCode::METHOD_NOT_ALLOWED {
                    let allow = http::HeaderValue::from_static("GET, HEAD");
                    refused.headers_mut().insert(header::ALLOW, allow);
                }
                Admitted::refused(refused, ticket, req.into_body())
            }
        }
    }
}

// === impl Admitted ===

pin_project_lite::pin_project! {
    /// The response future: the route's, then response bytes accounted.
    pub struct Admitted {
        #[pin]
        inner: Option<RouteFuture<Infallible>>,
        ready: Option<Response<AxumBody>>,
        ticket: Option<Ticket>,
        account: Option<(Arc<Admission>, Arc<ConnState>, &'static str)>,
        // A refused request's body, read and dropped before the answer.
        unread: Option<Incoming>,
        grace: Option<Pin<Box<Sleep>>>,
        // A paced refusal's wait before it is answered.
        hold: Option<Pin<Box<Sleep>>>,
    }
}

impl Admitted {
    fn refused(response: Response<AxumBody>, ticket: Ticket, body: Incoming) -> Self {
        Self {
            inner: None,
            ready: Some(response),
            ticket: Some(ticket),
            account: None,
            unread: (!body.is_end_stream()).then_some(body),
            grace: None,
            hold: None,
        }
    }

    fn route(route: RouteFuture<Infallible>, ticket: Ticket) -> Self {
        Self {
            inner: Some(route),
            ready: None,
            ticket: Some(ticket),
            account: None,
            unread: None,
            grace: None,
            hold: None,
        }
    }
}

/// Reads and drops what arrives of `body` until it ends or `grace` passes;
/// `Ready(true)` when it ended.
fn drain(
    body: &mut Incoming,
    grace: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<bool> {
    loop {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(_))) => continue,
            Poll::Ready(_) => return Poll::Ready(true),
            Poll::Pending => {
                let timer =
                    grace.get_or_insert_with(|| Box::pin(tokio::time::sleep(REFUSED_BODY_GRACE)));
                ready!(timer.as_mut().poll(cx));
                return Poll::Ready(false);
            }
        }
    }
}

impl Future for Admitted {
    type Output = Result<Response<HeldBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(body) = this.unread {
            let ended = ready!(drain(body, this.grace, cx));
            let body = this.unread.take();
            if let (false, Some(ticket)) = (ended, this.ticket.as_mut()) {
                ticket.unread = body;
            }
        }
        if let Some(hold) = this.hold {
            ready!(hold.as_mut().poll(cx));
            *this.hold = None;
        }
        let response = match this.inner.as_pin_mut() {
            Some(route) => match ready!(route.poll(cx)) {
                Ok(response) => response,
                Err(never) => match never {},
            },
            None => this.ready.take().unwrap_or_else(|| {
                Status::from(Error::Internal("polled after completion".into())).into_http()
            }),
        };
        let mut body = HeldBody {
            inner: AxumBody::empty(),
            pending: Bytes::new(),
            first: None,
            ended: false,
            ticket: this.ticket.take(),
        };
        let (parts, inner) = response.into_parts();
        body.inner = inner;
        if let Some((admission, conn, op)) = this.account.take()
            && let Err(why) = body.account(&admission, &conn, cx)
        {
            // The refusal carries the ticket, released once it is sent.
            let refused = admission.refuse(op, why);
            let ticket = body.ticket.take();
            return Poll::Ready(Ok(refused.map(|inner| HeldBody::new(inner, ticket))));
        }
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cache_rpc_has_its_operation_label() {
        let cases = [
            ("Get", "get"),
            ("MSet", "mset"),
            ("Incr", "incr"),
            ("GetTtl", "get_ttl"),
            ("Persist", "persist"),
            ("Exists", "exists"),
            ("Nope", "unknown"),
        ];
        for (rpc, label) in cases {
            assert_eq!(operation(&format!("{CACHE_PATH}{rpc}")), label, "{rpc}");
        }
    }

    #[test]
    fn prism_data_rpcs_carry_the_label_of_the_cache_rpc_they_run_as() {
        let cases = [
            ("KeyValueBasicInterface/Get", "get"),
            ("KeyValueBasicInterface/Exists", "exists"),
            ("KeyValueBatchInterface/BatchSet", "mset"),
            ("KeyValueBatchInterface/BatchGet", "mget"),
            ("KeyValueBatchInterface/BatchDelete", "delete"),
            ("KeyValueTTLInterface/GetTTL", "get_ttl"),
            ("KeyValueTTLInterface/Persist", "persist"),
            ("KeyValueTTLInterface/Nope", "unknown"),
        ];
        for (rpc, label) in cases {
            assert_eq!(
                operation(&format!("{PRISM_DATA_PATH}{rpc}")),
                label,
                "{rpc}"
            );
        }
    }

    fn admission(per_conn: usize, global: usize) -> Arc<Admission> {
        let limits = AdmissionLimits {
            max_concurrent_requests: 1,
            max_in_flight_bytes: global,
            max_in_flight_bytes_per_connection: per_conn,
            request_read_timeout: Duration::from_secs(1),
            max_request_bytes: 1024,
            refusal_delay: Duration::ZERO,
        };
        Admission::new(Router::new(), limits, Metrics::new(), Arc::new(Gate::new()))
    }

    #[test]
    fn bytes_are_held_from_both_budgets_and_given_back() {
        let a = admission(100, 150);
        let (one, two) = (a.connection(), a.connection());
        a.reserve(&one.conn, 100, "response").expect("fits");
        let err = a
            .reserve(&one.conn, 1, "response")
            .expect_err("share used up");
        assert_eq!(err.reason(), "max_in_flight_bytes_per_connection");
        let err = a
            .reserve(&two.conn, 51, "request")
            .expect_err("global used up");
        assert_eq!(err.reason(), "max_in_flight_bytes");
        assert!(err.to_string().contains("request of 51 bytes"), "{err}");
        a.release(&one.conn, 100);
        assert!(a.reserve(&one.conn, 100, "response").is_ok());
    }

    #[test]
    fn a_connection_is_idle_only_with_nothing_in_flight() {
        let a = admission(10, 10);
        let c = a.connection().conn;
        let zero = Duration::ZERO;
        assert!(c.is_idle(zero));
        c.begin();
        assert!(!c.is_idle(zero));
        c.end();
        assert!(c.is_idle(zero));
        assert!(!c.is_idle(Duration::from_secs(60)));
    }
}
