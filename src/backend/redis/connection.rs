//! One pipelined connection to Redis: many requests share it, each command
//! is written once and its reply handed back in order.
//!
//! A request encodes its command into the connection's output buffer and
//! queues a one-shot channel for the reply, both under one short lock, so
//! the order of commands on the wire is the order of the queue. A request
//! of several commands (a `MULTI ... EXEC` unit, a cluster node's batch)
//! queues one channel for all of them: the reader gathers their replies
//! and completes the request once, with one wake-up. Two tasks
//! own the socket halves:
//! - the *writer* wakes when the buffer goes from empty to non-empty, lets
//!   the other requests that are ready at that moment add theirs (one
//!   `yield`), and writes them all in one system call — under load one write
//!   carries many commands, and Redis reads and answers them in one go;
//! - the *reader* splits complete replies off its buffer (values stay slices
//!   of what was read, no copy) and completes the queued requests in order.
//!
//! What a server sends is bounded (see [`resp::Scanner`]): a header line
//! past 64 KiB breaks the connection; a reply past `max_reply_bytes` fails
//! its own request as soon as its header shows it, and the rest of it is
//! dropped as it arrives, so the other requests on the connection are not
//! affected. The read buffer goes back to its small size after a large
//! reply.
//!
//! A request that gives up (its deadline passed) leaves its reply to be read
//! and dropped: the stream stays in step. When either half fails, the
//! connection is *broken*: queued and later requests get the cause, and the
//! pool replaces the connection. Dropping [`Connection`] stops both tasks
//! and closes the socket.
//!
//! A peer that vanishes without a RST (a black-holed route, a frozen VM)
//! fails neither half: the connection notes when the reply due next began
//! to be awaited ([`Connection::overdue`]), and the pool's watchdog breaks
//! one that waits too long ([`Connection::declare_dead`]). TCP keepalive
//! ([`KEEPALIVE`]) finds the same on an idle connection.
//!
//! This module owns the socket, the handshake (TLS, `AUTH`, `SELECT`) and
//! ordering. Which commands to send is the business of `commands`;
//! retries and reconnection, of `pool`.

use std::{
    collections::VecDeque,
    io,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes, BytesMut};
use rustls::{ClientConfig, pki_types::ServerName};
use socket2::{SockRef, TcpKeepalive};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedWriteHalf},
    sync::{Notify, oneshot},
    task::AbortHandle,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::resp::{self, ProtocolError, Reply, Scan, Scanner};
use crate::credentials::Credentials;

/// The replies to the commands of one unit as one reply: the first error
/// reply among them (what went wrong, e.g. a `NOPERM` or `MOVED` that the
/// `EXECABORT` after it only repeats), else all of them as an array.
pub(super) fn unit(replies: Vec<Reply>) -> Reply {
    match replies.iter().position(|r| matches!(r, Reply::Error(_))) {
        Some(i) => replies.into_iter().nth(i).unwrap_or(Reply::Nil),
        None => Reply::Array(replies),
    }
}

/// Read buffer size; a Get reply is far smaller, an MGet of large values
/// far larger (see [`ReadBuf::make_room`]).
const READ_CHUNK: usize = 16 * 1024;

/// The read buffer of one connection.
struct ReadBuf {
    bytes: BytesMut,
    /// The buffer was grown past its usual size for a large reply.
    large: bool,
}

impl ReadBuf {
    fn new(bytes: BytesMut) -> Self {
        Self {
            bytes,
            large: false,
        }
    }

    /// Makes room to read into. Replies split off the buffer share its
    /// allocation while their values are in use, so `reserve` then moves
    /// the unread part to a new one; growing by at least what is held keeps
    /// a large reply (an MGet of 100 x 4 KiB is 400 KiB) at a few moves
    /// instead of one per chunk read.
    fn make_room(&mut self) {
        let buf = &mut self.bytes;
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            self.large |= buf.len() >= READ_CHUNK;
            buf.reserve(READ_CHUNK.max(buf.len()));
        }
    }

    /// Once a large reply is off the buffer, moves what is left to a new
    /// small buffer: `BytesMut` keeps its largest allocation for good, and
    /// one MGet of large values would otherwise hold megabytes per
    /// connection for the life of the process.
    fn shrink(&mut self) {
        if self.large && self.bytes.len() <= READ_CHUNK {
            let mut small = BytesMut::with_capacity(READ_CHUNK);
            small.extend_from_slice(&self.bytes);
            self.bytes = small;
            self.large = false;
        }
    }
}

/// Commands queued on one connection (sent or not, reply not yet read)
/// beyond which new ones are refused. A request that gives up leaves its
/// command queued, so without a bound a Redis that stops reading (stopped,
/// swapping) would grow the queue for as long as callers keep calling.
const MAX_QUEUED: usize = 16 * 1024;

/// Unwritten command bytes beyond which new commands are refused (as
/// above, for large values).
const MAX_UNWRITTEN: usize = 32 << 20;

/// Why a connection could not be opened or a command got no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum ConnError {
    #[error("{0}")]
    Io(Arc<io::Error>),
    #[error("connection closed by the server")]
    Closed,
    #[error("connect timed out")]
    TimedOut,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// An error reply during the handshake (`WRONGPASS`, `NOPERM`, ...).
    #[error("{0}")]
    Server(String),
    /// Redis is not reading what was already sent; see [`MAX_QUEUED`].
    #[error("redis is not keeping up: {0} commands waiting for replies")]
    Backlog(usize),
    /// The reply to this command is larger than `max_reply_bytes`; it is
    /// being skipped, the connection is fine.
    #[error("reply larger than max_reply_bytes ({0})")]
    TooLarge(usize),
    /// Sentinel: the node says it is not a master (demoted, or not yet
    /// promoted); see [`Connector::require_master`].
    #[error("the node is a {0}, not the master")]
    NotMaster(String),
    /// No reply for this long while one was due: the peer is taken for dead
    /// (see [`Connection::declare_dead`]).
    #[error("no reply from redis for {0:?}; connection declared dead")]
    Unresponsive(Duration),
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

impl ConnError {
    /// True when the TLS handshake failed (a certificate not trusted, or
    /// ours refused), as opposed to Redis being unreachable.
    pub(super) fn is_tls(&self) -> bool {
        match self {
            Self::Io(e) => e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()),
            _ => false,
        }
    }

    /// True when TCP keepalive gave up on the peer (see [`KEEPALIVE`]).
    pub(super) fn is_keepalive_timeout(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == io::ErrorKind::TimedOut)
    }
}

/// TCP keepalive on every Redis socket: a peer gone without a RST is found
/// even when no command is outstanding (the pool's watchdog covers the
/// connections that are waiting for a reply). First probe after 10 s idle,
/// then every 5 s, dead after 3 unanswered: about 25 s. Far below the
/// kernel's default (2 h + 9 x 75 s), far above any idle gap a healthy
/// Redis or NAT causes, and one small packet per 10 s per idle connection.
const KEEPALIVE: TcpKeepalive = TcpKeepalive::new()
    .with_time(Duration::from_secs(10))
    .with_interval(Duration::from_secs(5))
    .with_retries(3);

/// TLS towards Redis: the client config and the name to verify.
#[derive(Clone)]
pub(super) struct Tls {
    pub(super) config: Arc<ClientConfig>,
    pub(super) server_name: ServerName<'static>,
}

/// Where and how to open connections.
#[derive(Clone)]
pub(super) struct Connector {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) database: u32,
    pub(super) tls: Option<Tls>,
    /// Bounds connect, TLS and handshake together.
    pub(super) timeout: Duration,
    /// Largest reply accepted, framing included (`max_reply_bytes`).
    pub(super) max_reply: usize,
    /// Sentinel: the handshake asks `ROLE` and refuses a node that is not
    /// a master, so a demoted master is never written to.
    pub(super) require_master: bool,
}

impl Connector {
    /// Opens a connection authenticated as `creds`, on the configured
    /// database, within the timeout.
    pub(super) async fn connect(&self, creds: &Credentials) -> Result<Connection, ConnError> {
        match tokio::time::timeout(self.timeout, self.open(creds)).await {
            Ok(result) => result,
            Err(_) => Err(ConnError::TimedOut),
        }
    }

    async fn open(&self, creds: &Credentials) -> Result<Connection, ConnError> {
        let mut tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        // Small pipelined commands: Nagle would hold them for the peer's
        // delayed ACK.
        tcp.set_nodelay(true)?;
        SockRef::from(&tcp).set_tcp_keepalive(&KEEPALIVE)?;
        match &self.tls {
            None => {
                let leftover = self.handshake(&mut tcp, creds).await?;
                let (r, w) = tcp.into_split();
                Ok(Connection::spawn(r, Sink::Tcp(Arc::new(w)), leftover))
            }
            Some(tls) => {
                let connector = TlsConnector::from(tls.config.clone());
                let mut stream = connector.connect(tls.server_name.clone(), tcp).await?;
                let leftover = self.handshake(&mut stream, creds).await?;
                let (r, w) = tokio::io::split(stream);
                Ok(Connection::spawn(r, Sink::Tls(w), leftover))
            }
        }
    }

    /// Authenticates, selects the database and pings; returns what was read
    /// past the replies (nothing, from a well-behaved server).
    async fn handshake<S>(&self, stream: &mut S, creds: &Credentials) -> Result<Leftover, ConnError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut out = BytesMut::new();
        let mut expected = 0;
        if !creds.password.is_empty() {
            let password = creds.password.expose().as_bytes();
            match &creds.username {
                Some(user) => resp::encode(&mut out, &[b"AUTH", user.as_bytes(), password]),
                None => resp::encode(&mut out, &[b"AUTH", password]),
            }
            expected += 1;
        }
        if self.database != 0 {
            let db = self.database.to_string();
            resp::encode(&mut out, &[b"SELECT", db.as_bytes()]);
            expected += 1;
        }
        // PING (or ROLE) last: it proves the connection works end to end
        // (with TLS 1.3 a refused client certificate shows only on the
        // first read).
        resp::encode(
            &mut out,
            &[if self.require_master {
                b"ROLE"
            } else {
                b"PING"
            }],
        );
        expected += 1;
        stream.write_all(&out).await?;
        stream.flush().await?;
        drop(out);
        let mut buf = ReadBuf::new(BytesMut::with_capacity(READ_CHUNK));
        let mut scanner = Scanner::new(self.max_reply);
        for _ in 0..expected {
            let reply = read_reply(stream, &mut buf, &mut scanner).await?;
            if let Reply::Error(msg) = reply {
                return Err(ConnError::Server(
                    String::from_utf8_lossy(&msg).into_owned(),
                ));
            }
            if self.require_master {
                check_master(&reply)?;
            }
        }
        Ok(Leftover {
            bytes: buf.bytes,
            scanner,
        })
    }
}

/// Refuses a `ROLE` reply that does not say `master` (the other replies
/// of the handshake are status lines, which pass).
fn check_master(reply: &Reply) -> Result<(), ConnError> {
    let Reply::Array(items) = reply else {
        return Ok(());
    };
    match items.first() {
        Some(Reply::Bulk(role)) if &role[..] == b"master" => Ok(()),
        Some(Reply::Bulk(role)) => Err(ConnError::NotMaster(
            String::from_utf8_lossy(role).into_owned(),
        )),
        _ => Err(ProtocolError("a ROLE reply without a role").into()),
    }
}

/// The socket's write half, as the writer task holds it.
enum Sink {
    /// Shared with [`Connection`]: an idle connection's request writes
    /// directly (`try_write` needs only `&`).
    Tcp(Arc<OwnedWriteHalf>),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl Sink {
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sink::Tcp(w) => {
                let mut at = 0;
                while at < buf.len() {
                    match w.try_write(&buf[at..]) {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => w.writable().await?,
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Sink::Tls(w) => {
                w.write_all(buf).await?;
                w.flush().await
            }
        }
    }
}

/// What the handshake read past its replies, and the scan of it, for the
/// reader task to go on from.
struct Leftover {
    bytes: BytesMut,
    scanner: Scanner,
}

/// Reads until one whole reply is in `buf`, then returns it.
async fn read_reply<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut ReadBuf,
    scanner: &mut Scanner,
) -> Result<Reply, ConnError> {
    loop {
        match scanner.next(&mut buf.bytes)? {
            Scan::Frame(n) => return take_frame(&mut buf.bytes, n),
            Scan::TooLarge => return Err(ConnError::TooLarge(scanner.max_reply())),
            Scan::Skipped | Scan::Incomplete => {}
        }
        buf.make_room();
        if r.read_buf(&mut buf.bytes).await? == 0 {
            return Err(ConnError::Closed);
        }
    }
}

/// What a request gets back for its commands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fold {
    /// One command: its reply as it came.
    One,
    /// Several commands answered as one reply: see [`unit`].
    Unit,
    /// Several commands: all their replies, in order, as one array (the
    /// caller splits them).
    All,
}

/// A request waiting for the replies to its commands.
struct Waiter {
    tx: oneshot::Sender<Result<Reply, ConnError>>,
    fold: Fold,
    /// Replies still due.
    left: usize,
    /// Replies so far (several commands only).
    got: Vec<Reply>,
    /// The first of its commands whose reply did not come (too large).
    failed: Option<ConnError>,
}

impl Waiter {
    fn new(tx: oneshot::Sender<Result<Reply, ConnError>>, n: usize, fold: Fold) -> Self {
        let got = if fold == Fold::One {
            Vec::new()
        } else {
            Vec::with_capacity(n)
        };
        Self {
            tx,
            fold,
            left: n,
            got,
            failed: None,
        }
    }

    /// Takes the request's next reply; its answer once that was the last.
    fn take(&mut self, reply: Result<Reply, ConnError>) -> Option<Result<Reply, ConnError>> {
        self.left -= 1;
        if self.fold == Fold::One {
            return Some(reply);
        }
        match reply {
            Ok(r) => self.got.push(r),
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
        if self.left > 0 {
            return None;
        }
        let got = std::mem::take(&mut self.got);
        Some(match self.failed.take() {
            Some(e) => Err(e),
            None if self.fold == Fold::Unit => Ok(unit(got)),
            None => Ok(Reply::Array(got)),
        })
    }
}

struct State {
    /// Commands not yet handed to the writer.
    out: BytesMut,
    /// One per request sent or buffered, in wire order.
    waiting: VecDeque<Waiter>,
    /// Replies due: the `left` of every waiter.
    pending: usize,
    /// Set once, by whichever half failed first.
    broken: Option<ConnError>,
    /// A request is writing to the socket itself; the writer task waits.
    direct: bool,
    /// Since when the reply due next has been awaited: set when a command
    /// is queued on an empty queue and on every reply that leaves others
    /// due, `None` with nothing outstanding. Not per command: one clock
    /// read per busy period or batch of replies, not per request.
    due_since: Option<Instant>,
    /// Near cache: the listener generation this connection's `CLIENT
    /// TRACKING` redirects to (0: not tracking).
    tracking: u64,
    /// Near cache: called once when a tracking connection breaks or is
    /// dropped, since Redis then forgets the keys it tracked for it.
    on_lost: Option<Arc<dyn Fn() + Send + Sync>>,
}

struct Shared {
    state: Mutex<State>,
    writer: Notify,
    /// The most bytes the read buffer has held (tests check the bound).
    peak_buffered: AtomicUsize,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // No code holding the lock can panic (pushes, swaps, drains), so a
        // poisoned lock still guards consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the connection broken and fails every queued request.
    fn fail(&self, cause: ConnError) {
        let (waiting, on_lost) = {
            let mut st = self.state();
            if st.broken.is_none() {
                st.broken = Some(cause.clone());
            }
            st.due_since = None;
            st.pending = 0;
            (std::mem::take(&mut st.waiting), st.on_lost.take())
        };
        if let Some(lost) = on_lost {
            lost();
        }
        for w in waiting {
            let _ = w.tx.send(Err(cause.clone()));
        }
    }
}

/// A live connection; see the module docs.
pub(super) struct Connection {
    shared: Arc<Shared>,
    /// Plain TCP only: the write half, for the request that finds the
    /// connection idle to write its command without waking the writer.
    direct: Option<Arc<OwnedWriteHalf>>,
    /// [`MAX_QUEUED`], smaller in tests.
    max_queued: usize,
    tasks: [AbortHandle; 2],
}

/// What a request does after queuing its command.
enum Then<'a> {
    Nothing,
    WakeWriter,
    WriteDirectly(&'a OwnedWriteHalf, BytesMut),
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(lost) = self.shared.state().on_lost.take() {
            lost();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Connection {
    fn spawn<R>(r: R, sink: Sink, leftover: Leftover) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: BytesMut::with_capacity(READ_CHUNK),
                waiting: VecDeque::new(),
                pending: 0,
                broken: None,
                direct: false,
                due_since: None,
                tracking: 0,
                on_lost: None,
            }),
            writer: Notify::new(),
            peak_buffered: AtomicUsize::new(0),
        });
        let direct = match &sink {
            Sink::Tcp(w) => Some(w.clone()),
            Sink::Tls(_) => None,
        };
        let reader = tokio::spawn(read_loop(shared.clone(), r, leftover));
        let writer = tokio::spawn(write_loop(shared.clone(), sink));
        Self {
            shared,
            direct,
            max_queued: MAX_QUEUED,
            tasks: [reader.abort_handle(), writer.abort_handle()],
        }
    }

    /// Sends the command `encode` writes and waits for its reply. An error
    /// reply is a reply (`Ok(Reply::Error)`); `Err` means the connection
    /// failed and whether the command ran is unknown.
    pub(super) async fn call(
        &self,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<Reply, ConnError> {
        self.request(encode, 1, Fold::One).await
    }

    /// Sends the `n` commands `encode` writes and waits for the answer
    /// `fold` makes of their replies.
    async fn request(
        &self,
        encode: impl FnOnce(&mut BytesMut),
        n: usize,
        fold: Fold,
    ) -> Result<Reply, ConnError> {
        let (tx, rx) = oneshot::channel();
        self.send(encode, Waiter::new(tx, n, fold))?;
        rx.await.unwrap_or(Err(ConnError::Closed))
    }

    /// Sends the `n` commands `encode` writes, adjacent on the wire, and
    /// waits for all their replies, in order: one lock, one write and one
    /// wake-up for all of them (a cluster MGet's parts for one node). An
    /// error reply is a reply; `Err` is the first part whose reply did not
    /// come (the connection failed, or it passed `max_reply_bytes`).
    pub(super) async fn call_batch(
        &self,
        encode: impl FnOnce(&mut BytesMut),
        n: usize,
    ) -> Result<Vec<Reply>, ConnError> {
        match self.request(encode, n, Fold::All).await? {
            Reply::Array(replies) => Ok(replies),
            // `Fold::All` answers an array, whatever the replies are.
            _ => Err(ProtocolError("a batch answered with no array").into()),
        }
    }

    /// Queues what `encode` writes with its request's waiter, and gets it
    /// written.
    fn send(&self, encode: impl FnOnce(&mut BytesMut), waiter: Waiter) -> Result<(), ConnError> {
        match self.enqueue(encode, waiter)? {
            Then::Nothing => {}
            Then::WakeWriter => self.shared.writer.notify_one(),
            Then::WriteDirectly(w, buf) => self.write_directly(w, buf),
        }
        Ok(())
    }

    /// Sends `ASKING` and then the command `encode` writes, and waits for
    /// the command's reply (a cluster's ASK redirect: the importing node
    /// serves the next command for the migrating slot). Both are queued in
    /// one poll, so they are adjacent unless another task's command lands
    /// between them; that command then runs with ASKING (harmless: it only
    /// matters for a slot being imported) and this one gets the redirect
    /// again, which the router follows.
    pub(super) async fn call_asking(
        &self,
        encode: impl FnOnce(&mut BytesMut),
        n: usize,
    ) -> Result<Reply, ConnError> {
        let asking = self.call(|out| resp::encode(out, &[b"ASKING"]));
        let (_, reply) = futures_util::future::join(asking, self.call_unit(encode, n)).await;
        reply
    }

    /// Sends the `n` commands `encode` writes as one unit (adjacent, so a
    /// `MULTI ... EXEC` is not interleaved with other requests' commands)
    /// and answers one reply for them: see [`unit`].
    pub(super) async fn call_unit(
        &self,
        encode: impl FnOnce(&mut BytesMut),
        n: usize,
    ) -> Result<Reply, ConnError> {
        let fold = if n == 1 { Fold::One } else { Fold::Unit };
        self.request(encode, n, fold).await
    }

    fn enqueue(
        &self,
        encode: impl FnOnce(&mut BytesMut),
        waiter: Waiter,
    ) -> Result<Then<'_>, ConnError> {
        let mut st = self.shared.state();
        if let Some(cause) = &st.broken {
            return Err(cause.clone());
        }
        if st.pending >= self.max_queued || st.out.len() >= MAX_UNWRITTEN {
            return Err(ConnError::Backlog(st.pending));
        }
        let was_empty = st.out.is_empty();
        let idle = was_empty && st.waiting.is_empty() && !st.direct;
        if st.waiting.is_empty() {
            st.due_since = Some(Instant::now());
        }
        encode(&mut st.out);
        st.pending += waiter.left;
        st.waiting.push_back(waiter);
        Ok(match &self.direct {
            Some(w) if idle => {
                st.direct = true;
                Then::WriteDirectly(w, std::mem::take(&mut st.out))
            }
            _ if was_empty => Then::WakeWriter,
            _ => Then::Nothing,
        })
    }

    /// How long the reply due next has been awaited, when that is longer
    /// than `bound` at `now` and the connection is not already broken.
    pub(super) fn overdue(&self, now: Instant, bound: Duration) -> Option<Duration> {
        let st = self.shared.state();
        if st.broken.is_some() {
            return None;
        }
        overdue_by(st.due_since, now, bound)
    }

    /// Breaks the connection because no reply came for `waited`: its
    /// queued requests fail with a connection error (so the pool retries
    /// them elsewhere) and later ones are refused.
    pub(super) fn declare_dead(&self, waited: Duration) {
        self.shared.fail(ConnError::Unresponsive(waited));
    }

    /// Near cache: the listener generation this connection's tracking
    /// points at (0: none).
    pub(super) fn tracking(&self) -> u64 {
        self.shared.state().tracking
    }

    /// Near cache: `on_lost` runs once when this connection breaks or is
    /// dropped; set before tracking is asked for, so a break at any point
    /// after is covered. False when already broken.
    pub(super) fn watch_tracking(&self, on_lost: &Arc<dyn Fn() + Send + Sync>) -> bool {
        let mut st = self.shared.state();
        if st.broken.is_some() {
            return false;
        }
        st.on_lost.get_or_insert_with(|| on_lost.clone());
        true
    }

    /// Near cache: Redis confirmed tracking towards listener `generation`.
    pub(super) fn set_tracking(&self, generation: u64) {
        self.shared.state().tracking = generation;
    }

    /// Why the connection broke, if it did.
    pub(super) fn broken(&self) -> Option<ConnError> {
        self.shared.state().broken.clone()
    }

    /// Writes `buf` without blocking: a lone request's command goes out
    /// with no task hop. What the socket does not take now (and whatever
    /// was queued meanwhile) is the writer task's.
    fn write_directly(&self, w: &OwnedWriteHalf, mut buf: BytesMut) {
        let written = match w.try_write(&buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return self.shared.fail(e.into()),
        };
        let wake = {
            let mut st = self.shared.state();
            st.direct = false;
            if written < buf.len() {
                // The rest goes before anything queued while we wrote.
                let mut rest = BytesMut::from(&buf[written..]);
                rest.extend_from_slice(&st.out);
                st.out = rest;
            } else if st.out.is_empty() {
                // Keep the allocation for the next command.
                buf.clear();
                st.out = buf;
            }
            !st.out.is_empty()
        };
        if wake {
            self.shared.writer.notify_one();
        }
    }
}

/// How long a reply awaited since `due_since` has waited at `now`, if that
/// is more than `bound`. Below the bound a peer is only slow (a large
/// reply, a busy script): never dead.
fn overdue_by(due_since: Option<Instant>, now: Instant, bound: Duration) -> Option<Duration> {
    let waited = now.saturating_duration_since(due_since?);
    (waited > bound).then_some(waited)
}

async fn write_loop(shared: Arc<Shared>, mut sink: Sink) {
    let mut batch = BytesMut::with_capacity(READ_CHUNK);
    loop {
        shared.writer.notified().await;
        // With other requests in flight, more are likely ready to run: let
        // them add their commands to this write instead of each costing a
        // system call and a Redis wake-up.
        if shared.state().waiting.len() > 1 {
            tokio::task::yield_now().await;
        }
        {
            let mut st = shared.state();
            if st.direct {
                // The request writing now wakes us again when it is done.
                continue;
            }
            std::mem::swap(&mut st.out, &mut batch);
        }
        if batch.is_empty() {
            continue;
        }
        if let Err(e) = sink.write_all(&batch).await {
            shared.fail(e.into());
            return;
        }
        batch.clear();
    }
}

async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut r: R, leftover: Leftover) {
    let Leftover { bytes, mut scanner } = leftover;
    let mut buf = ReadBuf::new(bytes);
    let mut replies: Vec<Result<Reply, ConnError>> = Vec::new();
    let mut answers: Vec<Answer> = Vec::new();
    loop {
        if let Err(cause) = split_replies(&mut buf.bytes, &mut scanner, &mut replies) {
            shared.fail(cause);
            return;
        }
        if !replies.is_empty() && !deliver(&shared, &mut replies, &mut answers) {
            shared.fail(ProtocolError("a reply nobody asked for").into());
            return;
        }
        buf.shrink();
        buf.make_room();
        match r.read_buf(&mut buf.bytes).await {
            Ok(0) => {
                shared.fail(ConnError::Closed);
                return;
            }
            Ok(_) => {
                shared
                    .peak_buffered
                    .fetch_max(buf.bytes.len(), Ordering::Relaxed);
            }
            Err(e) => {
                shared.fail(e.into());
                return;
            }
        }
    }
}

/// Replies larger than this are copied out of the read buffer instead of
/// split off it: a split-off reply keeps its whole buffer allocation alive
/// (up to twice its size while the buffer grows) for as long as any of its
/// values is in use, which for many large replies in flight costs more
/// memory than one copy costs time.
const COPY_ABOVE: usize = 64 * 1024;

/// Takes the whole reply of `n` bytes off the front of `buf` and parses it.
fn take_frame(buf: &mut BytesMut, n: usize) -> Result<Reply, ConnError> {
    let frame: Bytes = if n > COPY_ABOVE {
        let copy = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        copy
    } else {
        buf.split_to(n).freeze()
    };
    Ok(resp::parse(&frame)?)
}

/// Moves every reply at the front of `buf` into `replies`, in order: a
/// whole one as `Ok`, a too-large one as `Err` as soon as it is seen.
fn split_replies(
    buf: &mut BytesMut,
    scanner: &mut Scanner,
    replies: &mut Vec<Result<Reply, ConnError>>,
) -> Result<(), ConnError> {
    loop {
        match scanner.next(buf)? {
            Scan::Incomplete => return Ok(()),
            Scan::Frame(n) => replies.push(Ok(take_frame(buf, n)?)),
            Scan::TooLarge => replies.push(Err(ConnError::TooLarge(scanner.max_reply()))),
            Scan::Skipped => {}
        }
    }
}

/// A request's answer and where it goes.
type Answer = (
    oneshot::Sender<Result<Reply, ConnError>>,
    Result<Reply, ConnError>,
);

/// Hands `replies` to the oldest waiters, in order; false if there are
/// more replies than commands (the stream is out of step). A request of
/// several commands is answered with its last reply; the channels are
/// completed after the lock is released.
fn deliver(
    shared: &Shared,
    replies: &mut Vec<Result<Reply, ConnError>>,
    answers: &mut Vec<Answer>,
) -> bool {
    {
        let mut st = shared.state();
        if st.pending < replies.len() {
            return false;
        }
        st.pending -= replies.len();
        for reply in replies.drain(..) {
            // `pending` is the sum of the waiters' `left`, each at least 1:
            // with a reply due there is a waiter.
            let Some(front) = st.waiting.front_mut() else {
                return false;
            };
            if let Some(answer) = front.take(reply)
                && let Some(w) = st.waiting.pop_front()
            {
                answers.push((w.tx, answer));
            }
        }
        // A reply is progress: the next one is due from now.
        st.due_since = (st.pending > 0).then(Instant::now);
    }
    for (tx, answer) in answers.drain(..) {
        // The request may have given up (deadline); its reply is dropped.
        let _ = tx.send(answer);
    }
    true
}

// === a connection driven by one task ===

/// Both halves of a socket, plain or TLS, as one stream.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A handshaken connection that one task writes and reads itself, for what
/// the pipelined [`Connection`] cannot carry: a subscription, whose pushes
/// arrive without a command to match them to (Sentinel's
/// `+switch-master`).
pub(super) struct PushStream {
    stream: Box<dyn Duplex>,
    buf: ReadBuf,
    scanner: Scanner,
}

impl Connector {
    /// Opens a [`PushStream`] with the same handshake and timeout as
    /// [`Connector::connect`].
    pub(super) async fn connect_push(&self, creds: &Credentials) -> Result<PushStream, ConnError> {
        let bounded = tokio::time::timeout(self.timeout, self.open_push(creds));
        bounded.await.unwrap_or(Err(ConnError::TimedOut))
    }

    async fn open_push(&self, creds: &Credentials) -> Result<PushStream, ConnError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let mut stream: Box<dyn Duplex> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let connector = TlsConnector::from(tls.config.clone());
                Box::new(connector.connect(tls.server_name.clone(), tcp).await?)
            }
        };
        let leftover = self.handshake(&mut stream, creds).await?;
        Ok(PushStream {
            stream,
            buf: ReadBuf::new(leftover.bytes),
            scanner: leftover.scanner,
        })
    }
}

impl PushStream {
    /// Writes one command.
    pub(super) async fn send(&mut self, args: &[&[u8]]) -> Result<(), ConnError> {
        let mut out = BytesMut::new();
        resp::encode(&mut out, args);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next reply or push. Cancel-safe: what was read stays buffered
    /// for the next call.
    pub(super) async fn next(&mut self) -> Result<Reply, ConnError> {
        let reply = read_reply(&mut self.stream, &mut self.buf, &mut self.scanner).await;
        self.buf.shrink();
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Credentials;
    use tokio::net::TcpListener;

    /// A "Redis" that answers the handshake's PING and then never reads
    /// again, like a stopped server.
    async fn stalled_server() -> Connector {
        fake_server(|sock| async move {
            std::future::pending::<()>().await;
            drop(sock);
        })
        .await
    }

    #[tokio::test]
    async fn a_stalled_server_gets_a_bounded_backlog_then_fast_refusals() {
        let mut conn = open(&stalled_server().await).await;
        conn.max_queued = 8;
        let conn = Arc::new(conn);
        let mut pending = Vec::new();
        for _ in 0..8 {
            let c = conn.clone();
            pending.push(tokio::spawn(async move {
                c.call(|out| resp::encode(out, &[b"GET", b"k"])).await
            }));
        }
        // Let the eight queue up.
        while conn.shared.state().waiting.len() < 8 {
            tokio::task::yield_now().await;
        }
        let refused = conn.call(|out| resp::encode(out, &[b"GET", b"k"])).await;
        assert!(matches!(refused, Err(ConnError::Backlog(8))), "{refused:?}");
        assert!(
            conn.shared.state().broken.is_none(),
            "a backlog is not a broken connection"
        );
        for p in pending {
            p.abort();
        }
    }

    #[test]
    fn a_reply_is_overdue_only_past_the_bound() {
        let bound = Duration::from_millis(1500);
        let since = Instant::now();
        let at = |ms| since + Duration::from_millis(ms);
        assert_eq!(overdue_by(None, at(60_000), bound), None, "nothing due");
        assert_eq!(overdue_by(Some(since), at(0), bound), None);
        assert_eq!(
            overdue_by(Some(since), at(1500), bound),
            None,
            "at the bound"
        );
        assert_eq!(
            overdue_by(Some(since), at(1501), bound),
            Some(Duration::from_millis(1501))
        );
        // A clock read before `since` (another thread's) is not overdue.
        assert_eq!(overdue_by(Some(at(10)), since, bound), None);
    }

    /// A silent peer: the queued request's reply becomes overdue, and once
    /// declared dead the request fails with a connection error (which the
    /// pool retries elsewhere) and new ones are refused.
    #[tokio::test]
    async fn a_silent_connection_is_overdue_and_declared_dead() {
        let conn = Arc::new(open(&stalled_server().await).await);
        let bound = Duration::from_secs(2);
        assert_eq!(
            conn.overdue(Instant::now() + bound * 9, bound),
            None,
            "idle"
        );
        let c = conn.clone();
        let call =
            tokio::spawn(async move { c.call(|out| resp::encode(out, &[b"GET", b"k"])).await });
        while conn.shared.state().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(conn.overdue(Instant::now(), bound), None, "just sent");
        let waited = conn
            .overdue(Instant::now() + bound * 2, bound)
            .expect("overdue later");
        assert!(waited > bound, "{waited:?}");
        conn.declare_dead(waited);
        let failed = call.await.expect("join");
        assert!(
            matches!(failed, Err(ConnError::Unresponsive(_))),
            "{failed:?}"
        );
        assert_eq!(
            super::super::failure::classify(&ConnError::Unresponsive(waited)),
            super::super::failure::Class::Connection
        );
        assert!(conn.broken().is_some(), "broken");
        assert_eq!(
            conn.overdue(Instant::now() + bound * 9, bound),
            None,
            "already broken"
        );
        let refused = conn.call(|out| resp::encode(out, &[b"GET", b"k"])).await;
        assert!(
            matches!(refused, Err(ConnError::Unresponsive(_))),
            "{refused:?}"
        );
    }

    /// Every Redis socket has keepalive on with the documented values
    /// (README, "Dead peers").
    #[tokio::test]
    async fn redis_sockets_have_keepalive_on() {
        let conn = open(&stalled_server().await).await;
        let w = conn.direct.as_ref().expect("plain TCP");
        let tcp: &TcpStream = (**w).as_ref();
        let sock = SockRef::from(tcp);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"), "keepalive on");
        let time = sock.tcp_keepalive_time().expect("TCP_KEEPIDLE");
        let interval = sock.tcp_keepalive_interval().expect("TCP_KEEPINTVL");
        let retries = sock.tcp_keepalive_retries().expect("TCP_KEEPCNT");
        assert_eq!(
            (time, interval, retries),
            (Duration::from_secs(10), Duration::from_secs(5), 3)
        );
    }

    /// Every reply restarts the clock of the next one due: a peer that
    /// answers slowly but steadily is never overdue.
    #[tokio::test]
    async fn each_reply_restarts_the_clock_of_the_next() {
        let connector = fake_server(|mut sock| async move {
            read_commands(&mut sock, 2).await;
            sock.write_all(b"$1\r\na\r\n").await.expect("first reply");
            std::future::pending::<()>().await;
        })
        .await;
        let conn = Arc::new(open(&connector).await);
        let c = conn.clone();
        let first =
            tokio::spawn(async move { c.call(|out| resp::encode(out, &[b"GET", b"a"])).await });
        while conn.shared.state().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        let first_due = conn.shared.state().due_since.expect("due");
        let c = conn.clone();
        let second =
            tokio::spawn(async move { c.call(|out| resp::encode(out, &[b"GET", b"b"])).await });
        first.await.expect("join").expect("first reply");
        let next_due = conn.shared.state().due_since.expect("second still due");
        assert!(next_due > first_due, "the clock restarted at the reply");
        second.abort();
    }

    #[tokio::test]
    async fn replies_are_matched_to_commands_in_order_across_reads() {
        // Three GETs; answered in one write cut at odd places.
        let connector = answer_in_pieces(3, b"$1\r\na\r\n$-1\r\n$3\r\nccc\r\n", 5).await;
        let conn = open(&connector).await;
        let get = |k: &'static [u8]| conn.call(move |out| resp::encode(out, &[b"GET", k]));
        let (a, b, c) = tokio::join!(get(b"a"), get(b"b"), get(b"c"));
        assert_eq!(a.expect("a"), Reply::Bulk(Bytes::from_static(b"a")));
        assert_eq!(b.expect("b"), Reply::Nil);
        assert_eq!(c.expect("c"), Reply::Bulk(Bytes::from_static(b"ccc")));
    }

    #[tokio::test]
    async fn a_request_of_several_commands_is_answered_once_with_its_replies() {
        // A unit of 3, a lone GET, a batch of 2, a unit of 2 that fails:
        // 8 replies in one write cut at odd places.
        let wire: &[u8] = b"+OK\r\n+QUEUED\r\n*1\r\n:7\r\n$1\r\nx\r\n\
            $1\r\na\r\n$-1\r\n-NOPERM no\r\n-EXECABORT x\r\n";
        let connector = answer_in_pieces(8, wire, 7).await;
        let conn = open(&connector).await;
        let gets = |n: usize| {
            move |out: &mut BytesMut| (0..n).for_each(|_| resp::encode(out, &[b"GET", b"k"]))
        };
        // Polled after the four requests queued their commands, before any
        // reply can be read (one thread): one waiter per request.
        let waiters = async { conn.shared.state().waiting.len() };
        let (unit3, lone, batch, failed, waiters) = tokio::join!(
            conn.call_unit(gets(3), 3),
            conn.call(gets(1)),
            conn.call_batch(gets(2), 2),
            conn.call_unit(gets(2), 2),
            waiters,
        );
        assert_eq!(waiters, 4, "8 commands, 4 requests");
        let ok = |s: &'static [u8]| Reply::Status(Bytes::from_static(s));
        let exec = Reply::Array(vec![Reply::Int(7)]);
        assert_eq!(
            unit3.expect("unit"),
            Reply::Array(vec![ok(b"OK"), ok(b"QUEUED"), exec])
        );
        assert_eq!(lone.expect("lone"), Reply::Bulk(Bytes::from_static(b"x")));
        let a = Reply::Bulk(Bytes::from_static(b"a"));
        assert_eq!(batch.expect("batch"), vec![a, Reply::Nil]);
        assert_eq!(
            failed.expect("failed unit"),
            Reply::Error(Bytes::from_static(b"NOPERM no"))
        );
        let st = conn.shared.state();
        assert!(st.waiting.is_empty() && st.due_since.is_none());
    }

    /// A "Redis" that waits for `n` commands, then answers with `wire`
    /// written in pieces of `piece` bytes, a pause after each: replies
    /// split across the client's reads.
    async fn answer_in_pieces(n: usize, wire: &'static [u8], piece: usize) -> Connector {
        fake_server(move |mut sock| async move {
            read_commands(&mut sock, n).await;
            for chunk in wire.chunks(piece) {
                sock.write_all(chunk).await.expect("write");
                sock.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            std::future::pending::<()>().await;
        })
        .await
    }

    /// A connection with no AUTH, as to a fake server.
    async fn open(connector: &Connector) -> Connection {
        connector
            .connect(&Credentials::anonymous())
            .await
            .expect("connect")
    }

    /// A "Redis" that answers the handshake's PING, then hands the socket
    /// to `then`.
    async fn fake_server<F, Fut>(then: F) -> Connector
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 64];
            let n = sock.read(&mut buf).await.expect("read ping");
            assert_eq!(&buf[..n], b"*1\r\n$4\r\nPING\r\n");
            sock.write_all(b"+PONG\r\n").await.expect("pong");
            then(sock).await;
        });
        Connector {
            host: "127.0.0.1".into(),
            port,
            database: 0,
            tls: None,
            timeout: Duration::from_secs(5),
            max_reply: 1 << 20,
            require_master: false,
        }
    }

    /// Reads until `n` commands (short GETs: one `*` each) have arrived.
    async fn read_commands(sock: &mut TcpStream, n: usize) {
        let mut buf = vec![0u8; 4096];
        let mut seen = 0;
        while seen < n {
            let read = sock.read(&mut buf).await.expect("read");
            seen += buf[..read].iter().filter(|&&b| b == b'*').count();
        }
    }

    /// Writes `chunk` until `limit` bytes are sent or the peer is gone;
    /// counts what was written in `sent`.
    async fn flood(sock: &mut TcpStream, chunk: &[u8], limit: usize, sent: &AtomicUsize) {
        loop {
            let left = limit - sent.load(Ordering::Relaxed);
            if left == 0 {
                return;
            }
            let piece = &chunk[..chunk.len().min(left)];
            if sock.write_all(piece).await.is_err() {
                return;
            }
            sent.fetch_add(piece.len(), Ordering::Relaxed);
        }
    }

    /// An endless `+AAAA...` line (200 MB at most) fails the call after
    /// 64 KiB, breaks the connection, and never holds more than that.
    #[tokio::test]
    async fn an_endless_header_line_breaks_the_connection_after_64_kib() {
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let connector = fake_server(|mut sock| async move {
            let mut cmd = [0u8; 64];
            let _ = sock.read(&mut cmd).await.expect("read GET");
            sock.write_all(b"+").await.expect("write");
            flood(&mut sock, &[b'A'; 64 * 1024], 200_000_000, &counter).await;
        })
        .await;
        let conn = open(&connector).await;
        let call = conn.call(|out| resp::encode(out, &[b"GET", b"k"]));
        // A guard against a hang only; the bound asserted is on bytes.
        let result = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the call ends while the line is still coming");
        assert!(
            matches!(result, Err(ConnError::Protocol(ProtocolError(m))) if m.contains("64 KiB")),
            "{result:?}"
        );
        assert!(conn.shared.state().broken.is_some(), "marked broken");
        let peak = conn.shared.peak_buffered.load(Ordering::Relaxed);
        assert!(peak <= 256 * 1024, "read buffer held {peak} bytes");
        drop(conn);
        // The socket is closed: the flood stops at what the kernel buffered.
        let mut waited = 0;
        while sent.load(Ordering::Relaxed) < 200_000_000 && waited < 100 {
            let before = sent.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if sent.load(Ordering::Relaxed) == before {
                break;
            }
            waited += 1;
        }
        let total = sent.load(Ordering::Relaxed);
        assert!(total < 64 << 20, "the server got {total} bytes in");
    }

    /// A `$<n>` header over the cap fails that call at once; the body is
    /// read and dropped as it comes, and the next reply on the same
    /// connection reaches the next caller.
    #[tokio::test]
    async fn a_bulk_over_the_cap_fails_early_and_the_connection_stays_in_step() {
        const BODY: usize = 200_000_000;
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let connector = fake_server(|mut sock| async move {
            // Two GETs; the first gets a 200 MB value, the second "x".
            read_commands(&mut sock, 2).await;
            sock.write_all(format!("${BODY}\r\n").as_bytes())
                .await
                .expect("header");
            flood(&mut sock, &[b'v'; 64 * 1024], BODY, &counter).await;
            let tail = b"\r\n$1\r\nx\r\n";
            sock.write_all(tail).await.expect("tail");
            std::future::pending::<()>().await;
        })
        .await;
        let conn = open(&connector).await;
        let first = conn.call(|out| resp::encode(out, &[b"GET", b"huge"]));
        let second = conn.call(|out| resp::encode(out, &[b"GET", b"small"]));
        let first = async {
            let r = first.await;
            (r, sent.load(Ordering::Relaxed))
        };
        let ((first, sent_then), second) = tokio::join!(first, second);
        assert!(
            matches!(first, Err(ConnError::TooLarge(max)) if max == 1 << 20),
            "{first:?}"
        );
        assert!(
            sent_then < BODY / 2,
            "failed only after {sent_then} bytes of the body"
        );
        assert_eq!(
            second.expect("second"),
            Reply::Bulk(Bytes::from_static(b"x"))
        );
        assert!(conn.shared.state().broken.is_none(), "still usable");
        let peak = conn.shared.peak_buffered.load(Ordering::Relaxed);
        assert!(peak <= 256 * 1024, "read buffer held {peak} bytes");
    }

    #[test]
    fn the_read_buffer_shrinks_after_a_large_reply() {
        let mut buf = ReadBuf::new(BytesMut::with_capacity(READ_CHUNK));
        let mut scanner = Scanner::new(usize::MAX);
        let mut replies = Vec::new();
        let mut wire = b"$8000000\r\n".to_vec();
        wire.extend(std::iter::repeat_n(b'v', 8_000_000));
        wire.extend_from_slice(b"\r\n:1\r\n");
        for piece in wire.chunks(READ_CHUNK) {
            buf.make_room();
            buf.bytes.extend_from_slice(piece);
            split_replies(&mut buf.bytes, &mut scanner, &mut replies).expect("valid");
            buf.shrink();
        }
        assert_eq!(replies.len(), 2);
        assert!(
            buf.bytes.capacity() <= 2 * READ_CHUNK,
            "capacity {} after the reply",
            buf.bytes.capacity()
        );
    }
}
