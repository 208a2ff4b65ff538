//! The plugin's listening socket: accepting connections (plain or TLS), the
//! connection cap, HTTP/1.1 and HTTP/2 on each connection, keepalive PINGs,
//! the idle timeout and the drain at shutdown.
//!
//! - Beyond `max_connections` a new connection is closed as it is accepted
//!   (counted as `reason="max_connections"`), so the backlog never fills
//!   with callers that would wait for nothing.
//! - An accept error (EMFILE when out of descriptors) sleeps
//!   [`ACCEPT_BACKOFF`] before the next try, instead of spinning a core.
//! - A connection with no request in flight for `idle_timeout` — including
//!   one that never sent a byte — is sent GOAWAY and closed; a peer that
//!   ignores the GOAWAY is dropped [`CLOSE_GRACE`] later.
//! - HTTP/2 advertises `max_concurrent_streams` and PINGs every
//!   `keepalive_interval`; an unanswered PING closes the connection.
//! - At shutdown ([`crate::shutdown`]): at `Draining` stop accepting and send
//!   GOAWAY to every connection; at `Stopped` (the server's `drain_timeout`)
//!   drop what is left.
//!
//! - Each connection's writes go through [`Coalesce`], so responses that
//!   finish together leave in one system call.
//!
//! What a request may do once it arrives is `admission`'s business.

use std::{sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Instant,
};
use tracing::{debug, info, warn};

use crate::{
    admission::Admission,
    coalesce::Coalesce,
    shutdown::{Phase, Watch},
    tls::ReloadingAcceptor,
};

/// Pause after a failed accept (for example out of file descriptors).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a peer sent GOAWAY for idleness may take to go.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The largest header block a request may send (HTTP/2 and HTTP/1.1).
pub const MAX_HEADER_BYTES: u32 = 64 * 1024;

/// Connection limits, from `control_plane` config.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// How long HTTP/1.1 request headers may take to arrive.
    pub header_read_timeout: Duration,
}

type Http = auto::Builder<TokioExecutor>;

fn http(limits: &TransportLimits) -> Http {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES as usize);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_BYTES)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    http
}

/// Serves `listener` until shutdown reaches [`Phase::Draining`]; then
/// stops accepting, sends every connection GOAWAY and returns once the
/// last one has gone. At [`Phase::Stopped`] (the server's drain deadline)
/// the connections still open are dropped, calls and all.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ReloadingAcceptor>>,
    admission: Arc<Admission>,
    limits: TransportLimits,
    mut shutdown: Watch,
) {
    let http = Arc::new(http(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection task holds a sender; all gone = drained.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            () = shutdown.reached(Phase::Draining) => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                warn!(error = %e, "accept failed; pausing");
                tokio::select! {
                    () = shutdown.reached(Phase::Draining) => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            admission.reject_connection();
            debug!("max_connections reached; connection closed");
            continue;
        };
        // Nagle would hold a response's last small write for the peer's
        // delayed ACK.
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            http: http.clone(),
            admission: admission.clone(),
            idle: limits.idle_timeout,
            shutdown: shutdown.clone(),
            _slot: slot,
            _alive: alive.clone(),
        };
        tokio::spawn(conn.run(tcp, tls.clone()));
    }
    drop(listener);
    drop(alive);
    drained.recv().await;
    info!("stopped");
}

/// One accepted connection and what it holds.
struct Conn {
    http: Arc<Http>,
    admission: Arc<Admission>,
    idle: Duration,
    shutdown: Watch,
    _slot: OwnedSemaphorePermit,
    _alive: mpsc::Sender<()>,
}

impl Conn {
    async fn run(mut self, tcp: TcpStream, tls: Option<Arc<ReloadingAcceptor>>) {
        let Some(acceptor) = tls else {
            return self.drive(tcp).await;
        };
        let tls = tokio::select! {
            tls = acceptor.handshake(tcp) => tls,
            () = self.shutdown.reached(Phase::Stopped) => None,
        };
        if let Some(tls) = tls {
            self.drive(tls).await;
        }
    }

    /// Serves HTTP on `io` until the peer goes, it idles out or shutdown.
    async fn drive<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            http,
            admission,
            idle,
            mut shutdown,
            ..
        } = self;
        // Two phases matter here (GOAWAY, then drop); one view each.
        let mut force = shutdown.clone();
        let service = admission.connection();
        let state = service.state();
        let conn = http.serve_connection(TokioIo::new(Coalesce::new(io)), service);
        tokio::pin!(conn);
        let mut draining = false;
        // Set once GOAWAY went out for idleness: when to drop the peer.
        let mut closing: Option<Instant> = None;
        loop {
            let wake = closing.unwrap_or_else(|| state.idle_deadline(idle));
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = shutdown.reached(Phase::Draining), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = force.reached(Phase::Stopped) => return,
                () = tokio::time::sleep_until(wake) => {
                    if closing.is_some() {
                        debug!("idle peer ignored GOAWAY; dropping it");
                        return;
                    }
                    if state.is_idle(idle) {
                        debug!(?idle, "closing idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + CLOSE_GRACE);
                    }
                }
            }
        }
    }
}
