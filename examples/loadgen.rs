//! The many-key load generator of `bench/run`'s near-cache section: closed
//! loop Get calls over a key set drawn uniformly at random, which h2load
//! cannot do (it sends one body per run).
//!
//! Not part of the product: `cargo build --release --example loadgen`, then
//! `loadgen ADDR STREAMS CONNECTIONS SECONDS KEY_BASE KEYS SEED`. STREAMS
//! tasks spread over CONNECTIONS HTTP/2 connections each call Get on
//! `KEY_BASE<i>`, `i` uniform in `0..KEYS` (a per-stream generator seeded
//! from SEED), again as soon as the last call ended, for SECONDS. Prints one
//! JSON line: calls per gRPC code, found / not found among the OK calls,
//! and p50/p99/p99.9 in µs of the OK calls.
//!
//! Cheap per call on purpose (it shares the cores with the plugin and
//! Redis): one thread, `h2` directly instead of tonic's client (no tower
//! stack, no codec, no per-call body type), every request body encoded once
//! up front and sent as a shared `Bytes`, the reply inspected in place
//! (`found` is its first field) rather than decoded. It does not own
//! checking the server's counters: `bench/run` does that around it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::{RecvStream, client::SendRequest};
use http::{HeaderValue, Method, Request, Uri, header::CONTENT_TYPE};
use prost::Message;
use redis_cache_plugin::pb::GetRequest;
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What one stream saw.
#[derive(Default)]
struct Tally {
    /// Calls per gRPC code name (`Ok`, `Unavailable`, ...; `Transport` for
    /// a call that ended without a status).
    codes: BTreeMap<String, u64>,
    /// OK calls whose reply said `found`.
    found: u64,
    /// Latency in µs of each OK call.
    ok_us: Vec<u32>,
}

/// What every stream shares: where to send and what.
struct Plan {
    uri: Uri,
    bodies: Vec<Bytes>,
    until: Instant,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, streams, conns, seconds, base, keys, seed] = args.as_slice() else {
        return Err("usage: loadgen ADDR STREAMS CONNECTIONS SECONDS KEY_BASE KEYS SEED".into());
    };
    let (streams, conns): (usize, usize) = (streams.parse()?, conns.parse::<usize>()?.max(1));
    let seed: u64 = seed.parse()?;
    let bodies = bodies(base, keys.parse()?);
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(connect(addr).await?);
    }
    let run_for = Duration::from_secs_f64(seconds.parse()?);
    let started = Instant::now();
    let plan = std::sync::Arc::new(Plan {
        uri: format!("http://{addr}/cache.v1.Cache/Get").parse()?,
        bodies,
        until: started + run_for,
    });
    // Each stream starts at its own random point of SplitMix's sequence:
    // seeds derived by arithmetic (seed ^ i * step) would make streams
    // shifted copies of each other, and a shifted copy reads the keys
    // another stream just read (near-cache hits a uniform load has not).
    let mut seeds = SplitMix(seed);
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let rng = SplitMix(seeds.next());
            tokio::spawn(caller(senders[i % conns].clone(), plan.clone(), rng))
        })
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        total.merge(t.await?);
    }
    println!("{}", report(&mut total, started.elapsed()));
    Ok(())
}

/// Each key's framed `GetRequest`, encoded once.
fn bodies(base: &str, keys: usize) -> Vec<Bytes> {
    (0..keys.max(1))
        .map(|i| {
            let msg = GetRequest {
                key: format!("{base}{i}"),
            }
            .encode_to_vec();
            let mut framed = Vec::with_capacity(5 + msg.len());
            framed.push(0);
            // A key is at most a few KiB: its length fits in u32.
            framed.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
            framed.extend_from_slice(&msg);
            Bytes::from(framed)
        })
        .collect()
}

/// One HTTP/2 connection; its driver runs as its own task.
async fn connect(addr: &str) -> Result<SendRequest<Bytes>, Error> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("loadgen: connection ended: {e}");
        }
    });
    Ok(send)
}

/// Calls Get until the plan's end, one call at a time.
async fn caller(
    mut send: SendRequest<Bytes>,
    plan: std::sync::Arc<Plan>,
    mut rng: SplitMix,
) -> Tally {
    let mut tally = Tally::default();
    let n = plan.bodies.len() as u64;
    while Instant::now() < plan.until {
        let body = plan.bodies[rng.below(n) as usize].clone();
        let t0 = Instant::now();
        let (code, found) = match call(&mut send, &plan.uri, body).await {
            Ok(outcome) => outcome,
            Err(_) => ("Transport".to_string(), false),
        };
        if code == "Ok" {
            tally
                .ok_us
                .push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
            tally.found += u64::from(found);
        }
        *tally.codes.entry(code).or_default() += 1;
    }
    tally
}

/// One Get: the gRPC code's name and whether the reply said `found`.
async fn call(
    send: &mut SendRequest<Bytes>,
    uri: &Uri,
    body: Bytes,
) -> Result<(String, bool), Error> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
        .header("te", HeaderValue::from_static("trailers"))
        .body(())?;
    std::future::poll_fn(|cx| send.poll_ready(cx)).await?;
    let (reply, mut stream) = send.send_request(req, false)?;
    stream.send_data(body, true)?;
    let (head, recv) = reply.await?.into_parts();
    if let Some(status) = head.headers.get("grpc-status") {
        // Trailers-only: an error before any message.
        return Ok((code_name(status.as_bytes()), false));
    }
    read_reply(recv).await
}

/// Reads the reply's message and trailers.
async fn read_reply(mut recv: RecvStream) -> Result<(String, bool), Error> {
    // `found` = true is encoded first: tag 0x08, value 0x01, after the
    // 5-byte gRPC frame header.
    let mut head = [0u8; 7];
    let mut seen = 0;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let take = (head.len() - seen).min(chunk.len());
        head[seen..seen + take].copy_from_slice(&chunk[..take]);
        seen += take;
        recv.flow_control().release_capacity(chunk.len())?;
    }
    let trailers = recv.trailers().await?;
    let code = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .map_or_else(|| "Transport".to_string(), |s| code_name(s.as_bytes()));
    Ok((code, seen == head.len() && head[5..] == [0x08, 0x01]))
}

fn code_name(status: &[u8]) -> String {
    format!("{:?}", tonic::Code::from_bytes(status))
}

/// SplitMix64: a seeded, fast generator; uniform enough for picking keys.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is < n / 2^64).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        self.found += other.found;
        self.ok_us.extend(other.ok_us);
    }
}

/// The JSON line.
fn report(t: &mut Tally, wall: Duration) -> String {
    t.ok_us.sort_unstable();
    let pct = |p: f64| {
        let v = &t.ok_us;
        let at = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len().max(1)) - 1;
        v.get(at).copied().unwrap_or(0)
    };
    let calls: u64 = t.codes.values().sum();
    let ok = t.ok_us.len() as u64;
    let codes: Vec<String> = t
        .codes
        .iter()
        .map(|(k, n)| format!("\"{k}\": {n}"))
        .collect();
    format!(
        "{{\"calls\": {calls}, \"seconds\": {:.3}, \"codes\": {{{}}}, \"found\": {}, \"not_found\": {}, \
         \"p50_us\": {}, \"p99_us\": {}, \"p999_us\": {}}}",
        wall.as_secs_f64(),
        codes.join(", "),
        t.found,
        ok - t.found,
        pct(0.5),
        pct(0.99),
        pct(0.999),
    )
}
