//! A loopback TCP proxy in front of one server that can be switched to
//! stop forwarding in both directions without closing either socket, the
//! way a dead peer or a silent network partition looks to a client: no RST,
//! no FIN, just no answer — on every connection, or only on those open at
//! the switch (one dead path, new connections fine). Used for dead-peer
//! detection tests.
//!
//! Owns: the proxy's sockets and pump threads, the switch, and counters
//! that let a test assert the fault really happened. Not owned here: the
//! server behind it (`RedisServer` in `mod.rs`).
//!
//! Plain threads, not tokio tasks, so the proxy keeps pumping whatever a
//! test does with its own runtime (pause time, block, shut down).

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// What the proxy does with bytes arriving on either side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pass them on (the normal state).
    Forward,
    /// Read and drop them: they vanish, as on a black-holed route. The
    /// sockets stay open and nothing is ever delivered late.
    Discard,
    /// Leave them unread (in kernel buffers, so TCP backpressure builds up)
    /// and deliver them when forwarding resumes, as across a long stall.
    Hold,
}

impl Mode {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Mode::Discard,
            2 => Mode::Hold,
            _ => Mode::Forward,
        }
    }
}

/// How often a pump looks at the switch and the stop flag.
const TICK: Duration = Duration::from_millis(20);

/// State shared by the accept loop, the pumps and the handle.
#[derive(Default)]
struct Shared {
    mode: AtomicU8,
    stop: AtomicBool,
    accepted: AtomicUsize,
    /// Connections numbered below this discard whatever the mode (see
    /// [`BlackHole::black_hole_existing`]).
    holed_below: AtomicUsize,
    open: AtomicUsize,
    vanished: AtomicU64,
    /// Clones of every socket, so drop and `close_all` can shut them.
    sockets: Mutex<Vec<TcpStream>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// The mode of connection number `conn`.
    fn mode(&self, conn: usize) -> Mode {
        if conn < self.holed_below.load(Ordering::SeqCst) {
            return Mode::Discard;
        }
        Mode::from_u8(self.mode.load(Ordering::SeqCst))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The proxy; its listener is on a free loopback port. Stops on drop.
pub struct BlackHole {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl BlackHole {
    /// Starts forwarding every connection to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream.parse().expect("upstream host:port");
        assert!(
            upstream.ip().is_loopback(),
            "black hole targets loopback only"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared::default());
        let accept = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, upstream, shared))
        };
        Self {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `host:port` clients connect to instead of the server.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Switches what happens to bytes on every connection, open or new.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Stops forwarding: bytes vanish, sockets stay open.
    pub fn black_hole(&self) {
        self.set_mode(Mode::Discard);
    }

    /// Stops forwarding on the connections open now only; later ones are
    /// forwarded: one dead path while the server itself is fine, so a
    /// client that replaces its connections recovers.
    pub fn black_hole_existing(&self) {
        let accepted = self.shared.accepted.load(Ordering::SeqCst);
        self.shared.holed_below.store(accepted, Ordering::SeqCst);
    }

    /// Forwards again, on every connection.
    pub fn resume(&self) {
        self.shared.holed_below.store(0, Ordering::SeqCst);
        self.set_mode(Mode::Forward);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections still open on both sides of the proxy.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Bytes dropped while in [`Mode::Discard`], in both directions.
    pub fn vanished_bytes(&self) -> u64 {
        self.shared.vanished.load(Ordering::SeqCst)
    }

    /// Closes every connection through the proxy (both sides).
    pub fn close_all(&self) {
        for s in self.shared.sockets.lock().expect("sockets").iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.close_all();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let pumps = std::mem::take(&mut *self.shared.pumps.lock().expect("pumps"));
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    while !shared.stopped() {
        match listener.accept() {
            Ok((client, _)) => connect(client, upstream, &shared),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

/// Pairs `client` with a new upstream connection and starts a pump each
/// way; a client whose upstream cannot be reached is closed.
fn connect(client: TcpStream, upstream: SocketAddr, shared: &Arc<Shared>) {
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1)) else {
        return;
    };
    let conn = shared.accepted.fetch_add(1, Ordering::SeqCst);
    shared.open.fetch_add(1, Ordering::SeqCst);
    let ends = [&client, &server].map(|s| {
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(TICK));
        s.try_clone().expect("clone socket")
    });
    shared.sockets.lock().expect("sockets").extend(ends);
    // The second pump to finish marks the connection closed.
    let alive = Arc::new(AtomicU8::new(2));
    let pairs = [
        (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        ),
        (server, client),
    ];
    for (from, to) in pairs {
        let (shared2, alive) = (shared.clone(), alive.clone());
        let pump = std::thread::spawn(move || {
            pump(from, to, &shared2, conn);
            if alive.fetch_sub(1, Ordering::SeqCst) == 1 {
                shared2.open.fetch_sub(1, Ordering::SeqCst);
            }
        });
        shared.pumps.lock().expect("pumps").push(pump);
    }
}

/// The mode of `conn` once it is not [`Mode::Hold`] (or the proxy stops).
fn settled_mode(shared: &Shared, conn: usize) -> Mode {
    loop {
        let mode = shared.mode(conn);
        if mode != Mode::Hold || shared.stopped() {
            return mode;
        }
        std::thread::sleep(TICK);
    }
}

/// Copies `from` to `to` (connection number `conn`) according to the
/// switch until either side closes or the proxy stops; then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, conn: usize) {
    let mut buf = [0u8; 16 * 1024];
    while !shared.stopped() {
        let mode = shared.mode(conn);
        if mode == Mode::Hold {
            std::thread::sleep(TICK);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            // The switch may have flipped while this read was waiting:
            // bytes already taken are held here until it flips back.
            Ok(n) => match settled_mode(shared, conn) {
                Mode::Discard => {
                    shared.vanished.fetch_add(n as u64, Ordering::SeqCst);
                }
                _ => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            },
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    // A black hole delivers no FIN either: the close reaches the other side
    // only once forwarding resumes (or the proxy stops).
    while !shared.stopped() && shared.mode(conn) != Mode::Forward {
        std::thread::sleep(TICK);
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
