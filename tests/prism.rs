//! Prism compatibility: the plugin driven through Prism's own plugin
//! interfaces (`prism.interfaces.keyvalue.*`, `prism.interfaces.Lifecycle`)
//! with clients generated from this repository's copies of Prism's protos.
//! The key-value semantics run on Redis, Valkey and memory; the lifecycle
//! (Initialize → Start → traffic → Drain with a call in flight → Stop) runs
//! the binary as Prism's proxy does, with `--grpc-port N`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    Flavor, NOT_SERVING, Plugin, RedisServer, free_port, memory_config,
    plugin::{self, PluginCommand},
    redis_config, test_prefix,
};
use redis_cache_plugin::{
    config::Config,
    prism_pb::interfaces::{
        DrainRequest, HealthCheckRequest, HealthStatus, InitializeRequest, StartRequest,
        StopRequest,
        keyvalue::{
            BatchDeleteRequest, BatchGetRequest, BatchSetRequest, DeleteRequest, ExistsRequest,
            ExpireRequest, GetRequest, GetTtlRequest, PersistRequest, SetRequest, SetResponse,
            key_value_basic_interface_client::KeyValueBasicInterfaceClient,
            key_value_batch_interface_client::KeyValueBatchInterfaceClient,
            key_value_ttl_interface_client::KeyValueTtlInterfaceClient,
        },
        lifecycle_interface_client::LifecycleInterfaceClient,
    },
};
use tonic::{Code, transport::Channel};

/// Prism's four clients on one channel.
struct Prism {
    basic: KeyValueBasicInterfaceClient<Channel>,
    batch: KeyValueBatchInterfaceClient<Channel>,
    ttl: KeyValueTtlInterfaceClient<Channel>,
    life: LifecycleInterfaceClient<Channel>,
}

impl Prism {
    fn on(channel: Channel) -> Self {
        Self {
            basic: KeyValueBasicInterfaceClient::new(channel.clone()),
            batch: KeyValueBatchInterfaceClient::new(channel.clone()),
            ttl: KeyValueTtlInterfaceClient::new(channel.clone()),
            life: LifecycleInterfaceClient::new(channel),
        }
    }

    async fn connect(addr: &str) -> Self {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect to plugin");
        Self::on(channel)
    }

    async fn set(&mut self, key: &str, value: &[u8]) -> (bool, String) {
        let r = self.basic.set(set_req(key, value)).await.expect("Set");
        let r = r.into_inner();
        (r.success, r.error)
    }

    async fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let req = GetRequest { key: key.into() };
        let r = self.basic.get(req).await.expect("Get").into_inner();
        assert!(r.error.is_empty(), "Get {key}: {}", r.error);
        r.found.then(|| r.value.to_vec())
    }

    async fn exists(&mut self, key: &str) -> bool {
        let req = ExistsRequest { key: key.into() };
        let r = self.basic.exists(req).await.expect("Exists").into_inner();
        assert!(r.error.is_empty(), "Exists {key}: {}", r.error);
        r.exists
    }

    async fn get_ttl(&mut self, key: &str) -> i64 {
        let req = GetTtlRequest { key: key.into() };
        let r = self.ttl.get_ttl(req).await.expect("GetTTL").into_inner();
        assert!(r.error.is_empty(), "GetTTL {key}: {}", r.error);
        r.ttl_seconds
    }

    async fn expire(&mut self, key: &str, ttl_seconds: i64) -> (bool, bool, String) {
        let req = ExpireRequest {
            key: key.into(),
            ttl_seconds,
        };
        let r = self.ttl.expire(req).await.expect("Expire").into_inner();
        (r.success, r.key_existed, r.error)
    }

    /// `(success, expiration_removed)`.
    async fn persist(&mut self, key: &str) -> (bool, bool) {
        let req = PersistRequest { key: key.into() };
        let r = self.ttl.persist(req).await.expect("Persist").into_inner();
        (r.success, r.expiration_removed)
    }
}

fn set_req(key: &str, value: &[u8]) -> SetRequest {
    SetRequest {
        key: key.into(),
        value: Bytes::copy_from_slice(value),
        tags: None,
    }
}

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|k| k.to_string()).collect()
}

/// The plugin on one backend, with small limits so each is easy to break.
struct Fixture {
    plugin: Plugin,
    prism: Prism,
    _server: Option<RedisServer>,
}

impl Fixture {
    async fn new(backend: &str, name: &str) -> Self {
        let prefix = test_prefix(name);
        let (server, mut config) = match backend {
            "memory" => (None, memory_config(&prefix)),
            flavor => {
                let flavor = if flavor == "redis" {
                    Flavor::Redis
                } else {
                    Flavor::Valkey
                };
                let server = RedisServer::start(flavor);
                let config = redis_config(&server, &prefix);
                (Some(server), config)
            }
        };
        config.backend.max_key_bytes = 64;
        config.backend.max_batch_keys = 4;
        let plugin = Plugin::start_serving(config).await;
        let prism = Prism::on(plugin.channel().await);
        Self {
            plugin,
            prism,
            _server: server,
        }
    }
}

// === key-value semantics, per backend ===

async fn basic_set_get_exists_delete_round_trip(f: &mut Fixture) {
    let p = &mut f.prism;
    assert_eq!(p.set("k", b"v1").await, (true, String::new()));
    assert_eq!(p.get("k").await.as_deref(), Some(&b"v1"[..]));
    assert!(p.exists("k").await);
    assert!(!p.exists("absent").await);
    assert_eq!(p.get("absent").await, None);
    let del = p.basic.delete(DeleteRequest { key: "k".into() }).await;
    assert!(del.expect("Delete").into_inner().success);
    assert_eq!(p.get("k").await, None);
    assert!(!p.exists("k").await);
}

async fn batch_get_answers_in_key_order_with_misses(f: &mut Fixture) {
    let p = &mut f.prism;
    let requests = vec![set_req("a", b"1"), set_req("c", b"3")];
    let set = p.batch.batch_set(BatchSetRequest { requests }).await;
    let set = set.expect("BatchSet").into_inner();
    assert!(set.all_success, "{set:?}");
    assert_eq!(set.results.len(), 2);
    assert!(set.results.iter().all(|r| r.success));

    let req = BatchGetRequest {
        keys: keys(&["c", "b", "a", "c"]),
    };
    let got = p.batch.batch_get(req).await.expect("BatchGet").into_inner();
    let seen: Vec<(bool, &[u8])> = got
        .results
        .iter()
        .map(|r| (r.found, &r.value[..]))
        .collect();
    assert_eq!(
        seen,
        vec![
            (true, &b"3"[..]),
            (false, &b""[..]),
            (true, b"1"),
            (true, b"3")
        ]
    );
    assert_eq!(got.found_count, 3);
    assert!(got.results.iter().all(|r| r.error.is_empty()));
}

async fn batch_set_repeated_key_keeps_the_last_value(f: &mut Fixture) {
    let p = &mut f.prism;
    let requests = vec![set_req("r", b"first"), set_req("r", b"last")];
    let set = p.batch.batch_set(BatchSetRequest { requests }).await;
    let set = set.expect("BatchSet").into_inner();
    assert!(set.all_success && set.results.len() == 2, "{set:?}");
    assert_eq!(p.get("r").await.as_deref(), Some(&b"last"[..]));
}

async fn batch_delete_answers_one_result_per_key(f: &mut Fixture) {
    let p = &mut f.prism;
    p.set("x", b"1").await;
    p.set("y", b"2").await;
    let req = BatchDeleteRequest {
        keys: keys(&["x", "y", "z"]),
    };
    let del = p.batch.batch_delete(req).await.expect("BatchDelete");
    let del = del.into_inner();
    assert!(del.all_success);
    assert_eq!(del.results.len(), 3);
    assert!(!p.exists("x").await && !p.exists("y").await);
}

async fn expire_zero_deletes_and_reports_whether_the_key_existed(f: &mut Fixture) {
    let p = &mut f.prism;
    p.set("e", b"v").await;
    assert_eq!(p.expire("e", 0).await, (true, true, String::new()));
    assert_eq!(p.get("e").await, None);
    assert_eq!(p.expire("e", 0).await, (true, false, String::new()));
    assert_eq!(p.expire("never", 30).await, (true, false, String::new()));
    let (success, _, error) = p.expire("e", -1).await;
    assert!(!success && error.contains("ttl_seconds"), "{error}");
}

async fn get_ttl_and_persist_follow_prism_conventions(f: &mut Fixture) {
    let p = &mut f.prism;
    assert_eq!(p.get_ttl("none").await, -2);
    assert_eq!(p.persist("none").await, (true, false));
    p.set("t", b"v").await;
    // Prism's Set has no TTL: the plugin's default_ttl (60 s in tests).
    let ttl = p.get_ttl("t").await;
    assert!((59..=60).contains(&ttl), "default ttl, got {ttl}");
    assert_eq!(p.expire("t", 120).await, (true, true, String::new()));
    let ttl = p.get_ttl("t").await;
    assert!((119..=120).contains(&ttl), "after Expire 120, got {ttl}");
    assert_eq!(p.persist("t").await, (true, true));
    assert_eq!(p.get_ttl("t").await, -1);
    // No TTL any more: nothing to remove.
    assert_eq!(p.persist("t").await, (true, false));
}

async fn limits_are_errors_in_the_body_naming_the_limit(f: &mut Fixture) {
    let p = &mut f.prism;
    let long = "k".repeat(65);
    let (success, error) = p.set(&long, b"v").await;
    assert!(!success && error.contains("max_key_bytes"), "{error}");
    let req = GetRequest { key: long.clone() };
    let got = p.basic.get(req).await.expect("Get answers OK").into_inner();
    assert!(!got.found && got.error.contains("max_key_bytes"), "{got:?}");

    let five = keys(&["a", "b", "c", "d", "e"]);
    let req = BatchGetRequest { keys: five.clone() };
    let got = p.batch.batch_get(req).await.expect("BatchGet answers OK");
    let got = got.into_inner();
    assert_eq!(got.results.len(), 5);
    assert!(
        got.results
            .iter()
            .all(|r| !r.found && r.error.contains("max_batch_keys")),
        "{got:?}"
    );
    let requests = five.iter().map(|k| set_req(k, b"v")).collect();
    let set = p.batch.batch_set(BatchSetRequest { requests }).await;
    let set = set.expect("BatchSet answers OK").into_inner();
    assert!(!set.all_success);
    assert!(
        set.results
            .iter()
            .all(|r| r.error.contains("max_batch_keys"))
    );
    // Nothing of the refused batch was written.
    assert!(!p.exists("a").await);
    let (success, _, error) = p.expire(&long, 10).await;
    assert!(!success && error.contains("max_key_bytes"), "{error}");
}

backend_tests! {
    backends { redis => "redis", valkey => "valkey", memory => "memory" }
    run |backend, test, name| {
        let mut f = Fixture::new(backend, name).await;
        test(&mut f).await;
        f.plugin.stop().await;
    }
    tests {
        basic_set_get_exists_delete_round_trip,
        batch_get_answers_in_key_order_with_misses,
        batch_set_repeated_key_keeps_the_last_value,
        batch_delete_answers_one_result_per_key,
        expire_zero_deletes_and_reports_whether_the_key_existed,
        get_ttl_and_persist_follow_prism_conventions,
        limits_are_errors_in_the_body_naming_the_limit,
    }
}

// === Initialize ===

/// A protobuf Struct from JSON, as Prism's proxy sends it.
fn to_struct(json: serde_json::Value) -> prost_types::Struct {
    use prost_types::{ListValue, Struct, Value, value::Kind};
    fn value(v: serde_json::Value) -> Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().expect("f64")),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(a) => Kind::ListValue(ListValue {
                values: a.into_iter().map(value).collect(),
            }),
            o @ serde_json::Value::Object(_) => Kind::StructValue(to_struct(o)),
        };
        Value { kind: Some(kind) }
    }
    let serde_json::Value::Object(map) = json else {
        panic!("an object");
    };
    Struct {
        fields: map.into_iter().map(|(k, v)| (k, value(v))).collect(),
    }
}

fn init(config: serde_json::Value) -> InitializeRequest {
    InitializeRequest {
        name: "redis".into(),
        version: "0.1.0".into(),
        config: Some(to_struct(config)),
    }
}

fn hex_sha256(path: &str) -> String {
    let text = std::fs::read(path).expect("proto file");
    let digest = ring::digest::digest(&ring::digest::SHA256, &text);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn initialize_checks_config_against_the_plugin_schema() {
    let prefix = test_prefix("init");
    let mut config: Config = memory_config(&prefix);
    config.backend.max_batch_keys = 4;
    let plugin = Plugin::start_serving(config).await;
    let mut life = Prism::on(plugin.channel().await).life;

    // The running values, in YAML names and nesting (numbers as Prism
    // sends them: doubles).
    let same = serde_json::json!({
        "backend": { "key_prefix": prefix, "max_batch_keys": 4, "kind": "memory" },
        "control_plane": { "drain_timeout": "5s" },
    });
    let ok = life
        .initialize(init(same))
        .await
        .expect("Initialize")
        .into_inner();
    assert!(ok.success, "{ok:?}");
    let meta = ok.metadata.expect("metadata");
    assert_eq!(meta.name, "redis");
    let declared: Vec<(&str, &str, &str)> = meta
        .interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.proto_file.as_str(), i.version.as_str()))
        .collect();
    assert_eq!(
        declared,
        vec![
            (
                "KeyValueBasicInterface",
                "prism/interfaces/keyvalue/keyvalue_basic.proto",
                "v1"
            ),
            (
                "KeyValueBatchInterface",
                "prism/interfaces/keyvalue/keyvalue_batch.proto",
                "v1"
            ),
            (
                "KeyValueTTLInterface",
                "prism/interfaces/keyvalue/keyvalue_ttl.proto",
                "v1"
            ),
            (
                "LifecycleInterface",
                "prism/interfaces/lifecycle.proto",
                "v1"
            ),
        ]
    );
    for i in &meta.interfaces {
        assert_eq!(i.proto_hash.len(), 64, "{i:?}");
        assert_eq!(i.proto_hash, hex_sha256(&format!("proto/{}", i.proto_file)));
    }

    let cases = [
        (
            serde_json::json!({ "backend": { "foo": 1 } }),
            "backend.foo",
        ),
        (serde_json::json!({ "nope": {} }), "nope"),
        (
            serde_json::json!({ "backend": { "pool_size": "many" } }),
            "backend.pool_size",
        ),
        (
            serde_json::json!({ "backend": { "max_batch_keys": 0 } }),
            "backend.max_batch_keys",
        ),
        // Valid, but not what the plugin runs with: it cannot apply it live.
        (
            serde_json::json!({ "backend": { "key_prefix": "other:" } }),
            "backend.key_prefix",
        ),
    ];
    for (config, field) in cases {
        let r = life
            .initialize(init(config.clone()))
            .await
            .expect("Initialize");
        let r = r.into_inner();
        assert!(!r.success, "{config} was accepted");
        assert!(
            r.error.contains(field),
            "{config}: {} should name {field}",
            r.error
        );
        assert!(r.metadata.is_none());
    }
    plugin.stop().await;
}

// === the whole lifecycle, as Prism's proxy drives the binary ===

/// Writes `yaml`, runs the binary with `--grpc-port port` and waits SERVING.
fn spawn_with_grpc_port(
    dir: &std::path::Path,
    yaml: &str,
    port: u16,
    password: &str,
) -> plugin::Running {
    let path = plugin::write_config(dir, yaml);
    let mut cmd = PluginCommand::new();
    cmd.config(&path)
        .args(["--grpc-port", &port.to_string()])
        .env("REDIS_PASSWORD", password);
    cmd.start_serving(&format!("127.0.0.1:{port}"), &[])
}

/// One slow call: Redis holds writes for 3 s (`CLIENT PAUSE 3000 WRITE`)
/// and a Set is sent through `p`; returns its task once Lifecycle reports
/// it in flight. The pause is a blocking call, off the runtime's threads
/// (the plugin may run on them).
async fn set_held_in_flight(
    server: &RedisServer,
    p: &mut Prism,
) -> tokio::task::JoinHandle<Result<tonic::Response<SetResponse>, tonic::Status>> {
    let mut admin = server.admin();
    let pause: String = tokio::task::spawn_blocking(move || {
        ::redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(3000)
            .arg("WRITE")
            .query(&mut admin)
    })
    .await
    .expect("pause task")
    .expect("CLIENT PAUSE");
    assert_eq!(pause, "OK");
    let mut slow = p.basic.clone();
    let in_flight = tokio::spawn(async move { slow.set(set_req("slow", b"late")).await });
    let seen = until_details(&mut p.life, |d| {
        d.get("in_flight").map(String::as_str) == Some("1")
    });
    assert!(seen.await, "the slow Set never showed as in flight");
    in_flight
}

/// Polls Prism's HealthCheck until `check` holds on its details.
async fn until_details(
    life: &mut LifecycleInterfaceClient<Channel>,
    check: impl Fn(&std::collections::HashMap<String, String>) -> bool,
) -> bool {
    for _ in 0..500 {
        let r = life.health_check(HealthCheckRequest {}).await;
        if check(&r.expect("HealthCheck").into_inner().details) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn lifecycle_initialize_start_drain_with_a_call_in_flight_then_stop(flavor: Flavor) {
    let server = RedisServer::start(flavor);
    let dir = tempfile::tempdir().expect("tempdir");
    let (config_port, port) = (free_port(), free_port());
    let prefix = test_prefix("lifecycle");
    // The file names another port: --grpc-port must win.
    let yaml = plugin::loopback_yaml(config_port, "drain_timeout: 20s", "warn")
        + &format!(
            "backend:\n  address: \"{}\"\n  username: cache\n  key_prefix: \"{prefix}\"\n  operation_timeout: 10s\n",
            server.address()
        );
    let mut running = spawn_with_grpc_port(dir.path(), &yaml, port, &server.cache_password);
    let addr = format!("127.0.0.1:{port}");
    let mut p = Prism::connect(&addr).await;

    let config = serde_json::json!({ "backend": { "key_prefix": prefix } });
    let r = p.life.initialize(init(config)).await.expect("Initialize");
    assert!(r.into_inner().success);
    let r = p
        .life
        .start(StartRequest {})
        .await
        .expect("Start")
        .into_inner();
    assert!(r.success, "{r:?}");
    assert_eq!(r.data_endpoint, addr);
    let health = p.life.health_check(HealthCheckRequest {}).await;
    let health = health.expect("HealthCheck").into_inner();
    assert_eq!(health.status, HealthStatus::Healthy as i32, "{health:?}");
    // The health subcommand finds the port from the same flag.
    let probe = PluginCommand::new()
        .args(["--grpc-port", &port.to_string(), "health"])
        .output()
        .expect("run health");
    assert!(probe.status.success(), "health --grpc-port: {probe:?}");

    assert_eq!(p.set("before", b"v").await, (true, String::new()));
    assert_eq!(p.get("before").await.as_deref(), Some(&b"v"[..]));

    let in_flight = set_held_in_flight(&server, &mut p).await;

    let mut drainer = p.life.clone();
    let drain = tokio::spawn(async move {
        let req = DrainRequest {
            timeout_seconds: 15,
            reason: "rolling update".into(),
        };
        drainer.drain(req).await
    });
    let draining = until_details(&mut p.life, |d| {
        d.get("draining").map(String::as_str) == Some("true")
    });
    assert!(draining.await, "health never showed the drain");
    // While the slow call finishes: new work is refused, health says so.
    let refused = p
        .basic
        .get(GetRequest {
            key: "before".into(),
        })
        .await;
    let refused = refused.expect_err("a new call while draining");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // The cache's own API on the same port too.
    let refused = common::Cache::connect(&addr).await.get("before").await;
    let refused = refused.expect_err("a new cache.v1 call while draining");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(!drain.is_finished(), "Drain returned with a call in flight");
    let health = p.life.health_check(HealthCheckRequest {}).await;
    let health = health.expect("HealthCheck").into_inner();
    assert_eq!(health.status, HealthStatus::Unhealthy as i32);
    assert!(health.message.contains("rolling update"), "{health:?}");
    assert_eq!(grpc_health(&addr).await, NOT_SERVING);

    let slow = in_flight
        .await
        .expect("task")
        .expect("the slow Set finishes OK");
    assert!(slow.into_inner().success);
    let drained = drain.await.expect("task").expect("Drain").into_inner();
    assert!(drained.success, "{drained:?}");
    assert_eq!(
        (drained.drained_operations, drained.aborted_operations),
        (1, 0)
    );
    assert_eq!(
        server.raw_get(&format!("{prefix}slow")).as_deref(),
        Some(&b"late"[..])
    );

    let stop = p.life.stop(StopRequest { timeout_seconds: 5 }).await;
    assert!(stop.expect("Stop").into_inner().success);
    drop(p);
    let status = running.wait_exit(Duration::from_secs(20));
    let status = status.unwrap_or_else(|| panic!("still running after Stop:\n{}", running.log()));
    assert!(status.success(), "exit {status:?}:\n{}", running.log());
}

async fn grpc_health(addr: &str) -> i32 {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = Channel::from_shared(format!("http://{addr}")).expect("url");
    let mut client = HealthClient::new(channel.connect().await.expect("connect"));
    let req = HealthCheckRequest {
        service: String::new(),
    };
    client
        .check(req)
        .await
        .map_or(-1, |r| r.into_inner().status)
}

backend_tests! {
    backends { redis_binary => Flavor::Redis, valkey_binary => Flavor::Valkey }
    run |flavor, test, _name| {
        let flavor: Flavor = flavor;
        test(flavor).await
    }
    tests { lifecycle_initialize_start_drain_with_a_call_in_flight_then_stop }
}

// === reflection ===

// grpcurl blocks its thread; the in-process server needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_prism_services_beside_the_cache() {
    let plugin = Plugin::start_serving(memory_config(&test_prefix("reflect"))).await;
    let grpcurl = common::tool("grpcurl").expect("grpcurl (scripts/deps.sh installs it)");
    let addr = plugin.addr.to_string();
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(&grpcurl)
            .args(["-plaintext", &addr, "list"])
            .output()
            .expect("grpcurl list")
    });
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in [
        "cache.v1.Cache",
        "prism.interfaces.keyvalue.KeyValueBasicInterface",
        "prism.interfaces.keyvalue.KeyValueBatchInterface",
        "prism.interfaces.keyvalue.KeyValueTTLInterface",
        "prism.interfaces.LifecycleInterface",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "{service} not in:\n{listed}"
        );
    }
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(&grpcurl)
            .args([
                "-plaintext",
                &addr,
                "describe",
                "prism.interfaces.keyvalue.GetTTLResponse",
            ])
            .output()
            .expect("grpcurl describe")
    });
    let described = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(described.contains("int64 ttl_seconds = 1"), "{described}");
    plugin.stop().await;
}

// === Drain past its bound, HealthCheck when Redis is down (in-process) ===

/// The plugin in-process on `server`, with Prism's clients.
async fn in_process(server: &RedisServer, name: &str) -> (Plugin, Prism) {
    let mut config = redis_config(server, &test_prefix(name));
    config.backend.operation_timeout = redis_cache_plugin::config::Dur(Duration::from_secs(10));
    let plugin = Plugin::start_serving(config).await;
    let prism = Prism::on(plugin.channel().await);
    (plugin, prism)
}

async fn drain_past_its_bound_reports_the_call_still_running(flavor: Flavor) {
    let server = RedisServer::start(flavor);
    let (plugin, mut p) = in_process(&server, "drain_bound").await;
    let in_flight = set_held_in_flight(&server, &mut p).await;

    let req = DrainRequest {
        timeout_seconds: 1,
        reason: "short".into(),
    };
    let drained = p.life.drain(req).await.expect("Drain").into_inner();
    assert!(!drained.success, "{drained:?}");
    assert_eq!(
        (drained.drained_operations, drained.aborted_operations),
        (0, 1)
    );
    assert!(drained.error.contains("still in flight"), "{drained:?}");
    // Drain does not cancel it: the call still ends OK once Redis resumes.
    let slow = in_flight.await.expect("task").expect("the slow Set");
    assert!(slow.into_inner().success);
    plugin.stop().await;
}

async fn health_check_mirrors_the_prober_when_redis_is_down(flavor: Flavor) {
    let mut server = RedisServer::start(flavor);
    let (plugin, mut p) = in_process(&server, "health_mirror").await;
    let health = p.life.health_check(HealthCheckRequest {}).await;
    let health = health.expect("HealthCheck").into_inner();
    assert_eq!(health.status, HealthStatus::Healthy as i32, "{health:?}");

    tokio::task::block_in_place(|| server.kill());
    let down = plugin.wait_health(NOT_SERVING, Duration::from_secs(10));
    assert!(down.await, "the prober never saw Redis go");
    let health = p.life.health_check(HealthCheckRequest {}).await;
    let health = health.expect("HealthCheck").into_inner();
    assert_eq!(health.status, HealthStatus::Unhealthy as i32, "{health:?}");
    assert!(!health.message.is_empty(), "{health:?}");
    assert_eq!(health.details.get("reason"), Some(&health.message));
    assert_eq!(
        health.details.get("draining").map(String::as_str),
        Some("false")
    );
    plugin.stop().await;
}

mod redis_in_process {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_past_its_bound_reports_the_call_still_running() {
        super::drain_past_its_bound_reports_the_call_still_running(Flavor::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_check_mirrors_the_prober_when_redis_is_down() {
        super::health_check_mirrors_the_prober_when_redis_is_down(Flavor::Redis).await;
    }
}

mod valkey_in_process {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_past_its_bound_reports_the_call_still_running() {
        super::drain_past_its_bound_reports_the_call_still_running(Flavor::Valkey).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_check_mirrors_the_prober_when_redis_is_down() {
        super::health_check_mirrors_the_prober_when_redis_is_down(Flavor::Valkey).await;
    }
}
