//! The load generator of `bench/run --overload`: closed-loop Get calls that
//! record each call's gRPC code and latency, which h2load cannot (it counts
//! an HTTP 200 as a success whatever `grpc-status` says, and logs no code).
//!
//! Not part of the product: `cargo build --release --example overload`,
//! then `overload ADDR STREAMS CONNECTIONS SECONDS KEY`. STREAMS tasks
//! spread over CONNECTIONS HTTP/2 connections each call Get on KEY again as
//! soon as the last call ended (a refused caller retries at once: the
//! harshest burst), for SECONDS. Prints one JSON line: calls per code,
//! and p50/p99/p99.9 in µs of the OK calls and of the refused ones.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use redis_cache_plugin::pb::{GetRequest, cache_client::CacheClient};
use tonic::transport::{Channel, Endpoint};

/// One call's outcome: its gRPC code and how long it took.
type Sample = (tonic::Code, u32);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, streams, conns, seconds, key] = args.as_slice() else {
        return Err("usage: overload ADDR STREAMS CONNECTIONS SECONDS KEY".into());
    };
    let (streams, conns): (usize, usize) = (streams.parse()?, conns.parse()?);
    let run_for = Duration::from_secs_f64(seconds.parse()?);
    let mut channels = Vec::new();
    for _ in 0..conns.max(1) {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
        channels.push(endpoint.connect().await?);
    }
    let until = Instant::now() + run_for;
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            tokio::spawn(caller(
                channels[i % channels.len()].clone(),
                key.clone(),
                until,
            ))
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await?);
    }
    println!("{}", report(&samples, started.elapsed()));
    Ok(())
}

/// Calls Get until `until`, one call at a time.
async fn caller(channel: Channel, key: String, until: Instant) -> Vec<Sample> {
    let mut client = CacheClient::new(channel);
    let mut out = Vec::new();
    while Instant::now() < until {
        let t0 = Instant::now();
        let code = match client.get(GetRequest { key: key.clone() }).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
        out.push((code, us));
    }
    out
}

/// The JSON line: counts per code, percentiles of OK and of refused calls.
fn report(samples: &[Sample], wall: Duration) -> String {
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for (code, _) in samples {
        *codes.entry(format!("{code:?}")).or_default() += 1;
    }
    let lat = |want: fn(tonic::Code) -> bool| {
        let mut v: Vec<u32> = samples
            .iter()
            .filter(|(c, _)| want(*c))
            .map(|(_, us)| *us)
            .collect();
        v.sort_unstable();
        let pct = |p: f64| {
            let at = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(at).copied().unwrap_or(0)
        };
        format!(
            "{{\"p50_us\": {}, \"p99_us\": {}, \"p999_us\": {}}}",
            pct(0.5),
            pct(0.99),
            pct(0.999)
        )
    };
    let codes: Vec<String> = codes.iter().map(|(k, n)| format!("\"{k}\": {n}")).collect();
    format!(
        "{{\"calls\": {}, \"seconds\": {:.3}, \"codes\": {{{}}}, \"ok\": {}, \"refused\": {}}}",
        samples.len(),
        wall.as_secs_f64(),
        codes.join(", "),
        lat(|c| c == tonic::Code::Ok),
        lat(|c| c == tonic::Code::ResourceExhausted),
    )
}
