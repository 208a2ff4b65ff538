//! The plugin as operators meet it: one port serving gRPC, health,
//! reflection (checked with the real grpcurl) and `/metrics`; the binary's
//! config errors and its SIGTERM drain.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Flavor, Plugin, RedisServer, SERVING, memory_config, redis_config, test_prefix};
use redis_cache_plugin::pb::{GetRequest, cache_client::CacheClient};

const BIN: &str = env!("CARGO_BIN_EXE_redis-cache-plugin");

fn grpcurl(args: &[&str]) -> (bool, String) {
    let path = common::tool("grpcurl").expect("grpcurl on PATH (scripts/deps.sh installs it)");
    let out = Command::new(path).args(args).output().expect("run grpcurl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

// grpcurl blocks its thread; the in-process server needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_smoke_health_set_get_round_trip() {
    let server = RedisServer::start(Flavor::Redis);
    let plugin = Plugin::start(redis_config(&server, &test_prefix("grpcurl"))).await;
    assert!(plugin.wait_health(SERVING, Duration::from_secs(10)).await);
    let addr = plugin.addr.to_string();

    let (ok, out) = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{out}");

    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"key":"smoke","value":"aGVsbG8=","ttl":"30s"}"#,
        &addr,
        "cache.v1.Cache/Set",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"key":"smoke"}"#,
        &addr,
        "cache.v1.Cache/Get",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("\"found\": true") && out.contains("aGVsbG8="),
        "{out}"
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_services() {
    let plugin = Plugin::start(memory_config("refl:")).await;
    assert!(plugin.wait_health(SERVING, Duration::from_secs(5)).await);
    let addr = plugin.addr.to_string();
    let (ok, out) = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "{out}");
    for svc in ["cache.v1.Cache", "grpc.health.v1.Health", "grpc.reflection"] {
        assert!(out.contains(svc), "{svc} missing from:\n{out}");
    }
    let (ok, out) = grpcurl(&["-plaintext", &addr, "describe", "cache.v1.Cache"]);
    assert!(ok, "{out}");
    for rpc in ["Get", "Set", "Delete", "MGet", "Expire"] {
        assert!(out.contains(&format!("rpc {rpc}")), "{rpc} missing:\n{out}");
    }
    let (ok, out) = grpcurl(&["-plaintext", &addr, "describe", "cache.v1.SetRequest"]);
    assert!(ok && out.contains("google.protobuf.Duration ttl"), "{out}");
    plugin.stop().await;
}

#[tokio::test]
async fn metrics_are_served_on_the_grpc_port() {
    let server = RedisServer::start(Flavor::Redis);
    let plugin = Plugin::start(redis_config(&server, &test_prefix("metrics"))).await;
    assert!(plugin.wait_health(SERVING, Duration::from_secs(10)).await);
    let mut client = plugin.client().await;
    client.set(common::set_req("m", b"v")).await.expect("set");
    client
        .get(GetRequest { key: "m".into() })
        .await
        .expect("hit");
    client
        .get(GetRequest { key: "x".into() })
        .await
        .expect("miss");
    let addr = plugin.addr;
    let body = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .expect("scrape");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for needle in [
        "redis_plugin_operations_total{operation=\"get\",status=\"ok\"} 2",
        "redis_plugin_operations_total{operation=\"set\",status=\"ok\"} 1",
        "redis_plugin_operation_duration_seconds_bucket",
        "redis_plugin_cache_hits_total 1",
        "redis_plugin_cache_misses_total 1",
        "redis_plugin_pool_size 4",
        "redis_plugin_pool_connections{state=\"idle\"}",
        "redis_plugin_health_status 1",
    ] {
        assert!(body.contains(needle), "{needle} missing:\n{body}");
    }
    assert!(
        !body.contains(&server.cache_password),
        "no secret in metrics"
    );
    plugin.stop().await;
}

#[test]
fn bad_config_stops_startup_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("backend:\n  adress: x\n", "backend.adress"),
        ("backend:\n  pool_size: lots\n", "backend.pool_size"),
        (
            "backend:\n  operation_timeout: soon\n",
            "backend.operation_timeout",
        ),
        ("backend:\n  address: \"\"\n", "backend.address"),
        (
            "control_plane:\n  listen: nowhere\n",
            "control_plane.listen",
        ),
    ];
    for (yaml, field) in cases {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).expect("write");
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .env_remove("REDIS_ADDRESS")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{yaml}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(field), "{field} not named: {stderr}");
    }
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/plugin.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn sigterm_drains_in_flight_calls_then_exits_zero() {
    let server = RedisServer::start(Flavor::Redis);
    let port = common::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "control_plane: {{ port: {port}, listen: 127.0.0.1, drain_timeout: 10s, health_interval: 100ms }}\n\
         log: {{ level: info }}\n\
         backend:\n  address: \"{addr}\"\n  username: cache\n  key_prefix: \"{prefix}\"\n  operation_timeout: 5s\n",
        addr = server.address(),
        prefix = test_prefix("drain"),
    );
    let path = dir.path().join("plugin.yaml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("REDIS_PASSWORD", &server.cache_password)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        if let Ok(c) = CacheClient::connect(url.clone()).await {
            break c;
        }
        assert!(Instant::now() < deadline, "plugin did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    client.set(common::set_req("k", b"v")).await.expect("set");

    // Freeze Redis so a call is in flight when SIGTERM arrives.
    server.signal("STOP");
    let mut in_flight = client.clone();
    let call = tokio::spawn(async move { in_flight.get(GetRequest { key: "k".into() }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("CONT");

    let answer = call.await.expect("join").expect("in-flight call finished");
    assert!(answer.into_inner().found);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}
