//! Configuration as the binary meets it: config.yaml is the default config
//! field by field, partly written blocks keep their documented defaults, TLS
//! material without TLS switched on stops start-up (never plaintext while
//! the log says TLS), credentials in the Redis address are used for AUTH and
//! never printed, and out-of-range limits are one line and exit 64, never a
//! panic. The binary runs as a child process, bounded in time.

mod common;

use std::{collections::HashMap, path::Path, process::Output, time::Duration};

use common::{
    CACHE_USER, Flavor, RedisServer, free_port,
    pki::Pki,
    plugin::{self, PluginCommand, probe},
    test_prefix,
};
use redis_cache_plugin::config::Config;
use serde_norway::{Mapping, Value};

const EX_USAGE: i32 = 64;

fn plugin() -> PluginCommand {
    let mut cmd = PluginCommand::new();
    // Only what each test sets: the overlay must not pick up the runner's env.
    cmd.env_clear();
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(dir: &Path, yaml: &str) -> String {
    plugin::write_config(dir, yaml).display().to_string()
}

/// Asserts the one-line, exit-64 refusal naming `field`, without `secret`.
fn assert_refused(out: &Output, field: &str, secret: Option<&str>) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_USAGE), "want exit 64: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(field), "{err} should name {field}");
    assert!(text(&out.stdout).is_empty(), "nothing on stdout");
    if let Some(secret) = secret {
        assert!(!err.contains(secret), "secret printed: {err}");
    }
}

// === config.yaml is the default config, field by field ===

/// Every leaf of a YAML mapping, as (path, value).
fn leaves(value: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    match value {
        Value::Mapping(m) => {
            for (k, v) in m {
                path.push(k.as_str().expect("string keys").to_string());
                leaves(v, path, out);
                path.pop();
            }
        }
        leaf => out.push((path.clone(), leaf.clone())),
    }
}

/// A document holding only `value` at `path`.
fn only(path: &[String], value: Value) -> Value {
    path.iter().rev().fold(value, |inner, key| {
        let mut m = Mapping::new();
        m.insert(Value::from(key.as_str()), inner);
        Value::Mapping(m)
    })
}

/// The fields (dotted) where `config` differs from `Config::default()`.
fn differing(config: &Config) -> Vec<String> {
    let tree = |c: &Config| {
        let mut out = Vec::new();
        leaves(
            &serde_norway::to_value(c).expect("to value"),
            &mut Vec::new(),
            &mut out,
        );
        out
    };
    let (have, want) = (tree(config), tree(&Config::default()));
    let mut names: Vec<String> = have
        .iter()
        .zip(&want)
        .filter(|(a, b)| a != b)
        .map(|((p, _), _)| p.join("."))
        .collect();
    if names.is_empty() {
        // Secrets print alike whatever they hold.
        names.push("a secret field".into());
    }
    names
}

/// config.yaml is the reference of every field and its default: each leaf of
/// `Config::default()` is in it with the same value, it names no field the
/// schema lacks, and each of its fields written alone gives the defaults
/// (so no partly written block loses a documented default).
#[test]
fn config_yaml_lists_every_field_and_each_alone_gives_the_defaults() {
    let yaml = include_str!("../config.yaml");
    let none = HashMap::new();
    let full = Config::from_yaml_and_env(yaml, &none).expect("config.yaml loads");
    assert!(
        full == Config::default(),
        "config.yaml's values are the defaults; these differ: {:?}",
        differing(&full)
    );

    let mut in_file = Vec::new();
    let tree: Value = serde_norway::from_str(yaml).expect("config.yaml is YAML");
    leaves(&tree, &mut Vec::new(), &mut in_file);
    let mut in_schema = Vec::new();
    let schema = serde_norway::to_value(Config::default()).expect("to value");
    leaves(&schema, &mut Vec::new(), &mut in_schema);
    let names = |l: &[(Vec<String>, Value)]| {
        let mut n: Vec<String> = l.iter().map(|(p, _)| p.join(".")).collect();
        n.sort();
        n
    };
    assert_eq!(
        names(&in_file),
        names(&in_schema),
        "config.yaml lists every field"
    );

    for (path, value) in &in_file {
        let doc = serde_norway::to_string(&only(path, value.clone())).expect("yaml");
        let config = Config::from_yaml_and_env(&doc, &none)
            .unwrap_or_else(|e| panic!("only {}: {e}", path.join(".")));
        assert!(
            config == Config::default(),
            "a config with only {} differs from the defaults in {:?}",
            path.join("."),
            differing(&config)
        );
    }
}

#[test]
fn partial_tls_block_keeps_its_defaults_in_check_config() {
    let pki = Pki::new();
    let yaml = format!(
        "control_plane:\n  tls: {{ enabled: true, cert_file: \"{}\", key_file: \"{}\" }}\n",
        pki.server.cert.display(),
        pki.server.key.display()
    );
    let config = write_config(pki.path(), &yaml);
    let out = plugin()
        .args(["--config", &config, "check-config"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let effective: Value = serde_norway::from_str(&text(&out.stdout)).expect("YAML out");
    let tls = &effective["control_plane"]["tls"];
    assert_eq!(tls["reload_interval"].as_str(), Some("5s"), "{effective:?}");
    assert_eq!(
        effective["control_plane"]["listen"].as_str(),
        Some("127.0.0.1"),
        "listen defaults to loopback"
    );
}

// === TLS fails closed ===

#[test]
fn tls_material_without_enabled_stops_start_up() {
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.server.cert.display().to_string(),
        pki.server.key.display().to_string(),
        pki.ca_file.display().to_string(),
    );
    let port = free_port();
    let cases = [
        (
            format!(
                "control_plane:\n  port: {port}\n  tls: {{ cert_file: \"{cert}\", key_file: \"{key}\", client_ca_file: \"{ca}\" }}\nbackend: {{ kind: memory }}\n"
            ),
            "control_plane.tls.enabled",
        ),
        (
            format!(
                "control_plane: {{ port: {port} }}\nbackend:\n  address: \"redis://127.0.0.1:1\"\n  tls: {{ ca_file: \"{ca}\" }}\n"
            ),
            "backend.tls.enabled",
        ),
        (
            format!(
                "control_plane: {{ port: {port} }}\nbackend:\n  address: \"127.0.0.1:1\"\n  vault_enabled: true\nvault:\n  address: \"http://127.0.0.1:1\"\n  ca_file: \"{ca}\"\n  auth: {{ token: t }}\n"
            ),
            "vault.ca_file",
        ),
    ];
    for (yaml, field) in cases {
        let config = write_config(pki.path(), &yaml);
        let mut cmd = plugin();
        cmd.args(["--config", &config, "serve"]);
        let out = cmd.run_bounded(Duration::from_secs(10)).output;
        assert_refused(&out, field, None);
    }
}

#[test]
fn partial_mtls_block_is_served_as_mtls_and_logged_so() {
    let pki = Pki::new();
    let port = free_port();
    let yaml = format!(
        "control_plane:\n  port: {port}\n  tls: {{ enabled: true, cert_file: \"{}\", key_file: \"{}\", client_ca_file: \"{}\" }}\nlog: {{ format: json }}\nbackend: {{ kind: memory }}\n",
        pki.server.cert.display(),
        pki.server.key.display(),
        pki.ca_file.display()
    );
    let config = write_config(pki.path(), &yaml);
    let mut cmd = plugin();
    cmd.args(["--config", &config, "serve"]);
    let mut running = cmd.start();
    let start: serde_json::Value =
        serde_json::from_str(&running.line_with("redis-cache-plugin starting")).expect("json");
    let fields = &start;
    assert_eq!(fields["grpc_tls"], true, "{start}");
    assert_eq!(fields["mtls"], true, "{start}");
    assert_eq!(fields["listen"], format!("127.0.0.1:{port}"), "{start}");
    let addr = format!("127.0.0.1:{port}");
    let (ca, cert, key) = (
        pki.ca_file.display().to_string(),
        pki.client.cert.display().to_string(),
        pki.client.key.display().to_string(),
    );
    let mtls = ["--tls", "--ca", &ca, "--cert", &cert, "--key", &key];
    running.wait_serving(&addr, &mtls);
    assert!(!probe(&addr, &[]).status.success(), "plaintext must fail");
    let no_cert = probe(&addr, &["--tls", "--ca", &ca]);
    assert!(
        !no_cert.status.success(),
        "TLS without client cert must fail"
    );
}

/// `rediss://` switches TLS on like `enabled: true`, so the block's CA is the
/// one trusted (it was ignored for system roots, and start-up failed).
#[test]
fn rediss_address_uses_the_tls_block_without_enabled() {
    let pki = Pki::new();
    let server = RedisServer::start_tls(Flavor::Redis, &pki, false);
    let port = free_port();
    let yaml = format!(
        "control_plane: {{ port: {port} }}\n\
         backend:\n  address: \"rediss://127.0.0.1:{redis}\"\n  username: {CACHE_USER}\n  \
         key_prefix: \"{prefix}\"\n  tls: {{ ca_file: \"{ca}\" }}\n",
        redis = server.port,
        prefix = test_prefix("rediss"),
        ca = pki.ca_file.display(),
    );
    let config = write_config(pki.path(), &yaml);
    let mut cmd = plugin();
    cmd.args(["--config", &config, "serve"])
        .env("REDIS_PASSWORD", &server.cache_password);
    let mut running = cmd.start();
    let start: serde_json::Value =
        serde_json::from_str(&running.line_with("redis-cache-plugin starting")).expect("json");
    assert_eq!(start["redis_tls"], true, "{start}");
    let addr = format!("127.0.0.1:{port}");
    running.wait_serving(&addr, &[]);
}

// === credentials in the Redis address ===

#[test]
fn address_credentials_authenticate_and_are_never_printed() {
    let server = RedisServer::start(Flavor::Redis);
    let secret = server.cache_password.clone();
    let address = format!("redis://{CACHE_USER}:{secret}@127.0.0.1:{}", server.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let yaml = format!(
        "control_plane: {{ port: {port} }}\nlog: {{ level: debug }}\nbackend:\n  key_prefix: \"{}\"\n",
        test_prefix("addrcreds")
    );
    let config = write_config(dir.path(), &yaml);

    let out = plugin()
        .args(["--config", &config, "check-config"])
        .env("REDIS_ADDRESS", &address)
        .output()
        .expect("run check-config");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret));
    let effective: Value = serde_norway::from_str(&stdout).expect("YAML out");
    assert_eq!(
        effective["backend"]["address"].as_str(),
        Some(format!("redis://127.0.0.1:{}", server.port).as_str())
    );
    assert_eq!(effective["backend"]["username"].as_str(), Some(CACHE_USER));
    assert_eq!(
        effective["backend"]["password"].as_str(),
        Some("[redacted]")
    );

    let mut cmd = plugin();
    cmd.args(["--config", &config, "serve"])
        .env("REDIS_ADDRESS", &address);
    let mut running = cmd.start();
    let start = running.line_with("redis-cache-plugin starting");
    assert!(!start.contains(&secret), "{start}");
    // `user default off` on the harness' server: SERVING needs AUTH as cache.
    let addr = format!("127.0.0.1:{port}");
    running.wait_serving(&addr, &[]);
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.admin())
        .expect("CLIENT LIST");
    assert!(
        clients.contains(&format!("user={CACHE_USER} ")),
        "no connection as {CACHE_USER}: {clients}"
    );
    let log = running.log();
    assert!(!log.contains(&secret), "password in the log");
}

#[test]
fn address_credentials_conflicts_are_one_line_without_the_secret() {
    let secret = common::random_secret();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "backend:\n  username: cache\n");
    let cases = [
        (
            format!("redis://u:{secret}@127.0.0.1:6379"),
            "backend.address",
        ),
        // A bad port after the credentials: the error shows no password.
        (
            format!("rediss://u:{secret}@127.0.0.1:0"),
            "backend.address",
        ),
    ];
    for (i, (address, field)) in cases.into_iter().enumerate() {
        let mut cmd = plugin();
        let path = match i {
            0 => config.clone(),
            _ => write_config(dir.path(), ""),
        };
        cmd.args(["--config", &path, "serve"])
            .env("REDIS_ADDRESS", &address);
        let out = cmd.run_bounded(Duration::from_secs(10)).output;
        assert_refused(&out, field, Some(&secret));
    }
}

// === limits are capped: one line, exit 64, no panic ===

#[test]
fn huge_limits_and_durations_are_refused_without_panic() {
    let huge = "999999999999s";
    let cases = [
        (
            "",
            "max_value_bytes: 18446744073709551615",
            "backend.max_value_bytes",
        ),
        ("", "max_key_bytes: 1000000", "backend.max_key_bytes"),
        ("", "max_batch_keys: 100000000", "backend.max_batch_keys"),
        ("", "max_retries: 4294967295", "backend.max_retries"),
        ("", &format!("pool_timeout: {huge}"), "backend.pool_timeout"),
        (
            "",
            &format!("operation_timeout: {huge}"),
            "backend.operation_timeout",
        ),
        (
            "",
            &format!("conn_max_idle_time: {huge}"),
            "backend.conn_max_idle_time",
        ),
        ("", "default_ttl: 99999999h", "backend.default_ttl"),
        (
            "max_concurrent_requests: 4611686018427387904",
            "",
            "control_plane.max_concurrent_requests",
        ),
        (
            &format!("drain_timeout: {huge}"),
            "",
            "control_plane.drain_timeout",
        ),
        (
            &format!("health_interval: {huge}"),
            "",
            "control_plane.health_interval",
        ),
        (
            &format!("tls: {{ reload_interval: {huge} }}"),
            "",
            "control_plane.tls.reload_interval",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (control_plane, backend, field) in cases {
        let yaml = format!(
            "control_plane:\n  port: 0\n  listen: 127.0.0.1\n  {control_plane}\nbackend:\n  kind: memory\n  {backend}\n"
        );
        let config = write_config(dir.path(), &yaml);
        let mut cmd = plugin();
        cmd.args(["--config", &config, "serve"]);
        let out = cmd.run_bounded(Duration::from_secs(10)).output;
        assert_refused(&out, field, None);
    }
}
