//! The deployment examples in `deploy/` against the real plugin: every file
//! is valid YAML, every environment variable the plugin container gets is one
//! the plugin reads, every embedded plugin config passes the plugin's own
//! loader (unknown fields are errors there), probes and mounts line up with
//! the config and the image, and the compose stack's OpenBao setup script
//! runs against a real OpenBao and Redis and gives the plugin working
//! credentials.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{Cache, free_port, plugin::PluginCommand};
use redis_cache_plugin::config::{self, Config};
use serde::Deserialize;
use serde_norway::Value;

mod common;

const PLUGIN_CONTAINER: &str = "redis-cache-plugin";
const IMAGE_BINARY: &str = "/usr/local/bin/redis-cache-plugin";
const IMAGE_CONFIG: &str = "/etc/prism/plugin.yaml";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every document of a (possibly multi-document) YAML file.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} should be a string: {v:?}"))
}

/// Environment as a map, from compose's map or `K=V` list form or a
/// Kubernetes `env:` list (`valueFrom` entries have no literal value).
fn env_map(v: &Value) -> HashMap<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    };
    match v {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| (str_of(k, "env name").to_string(), scalar(v)))
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| match item {
                Value::String(kv) => {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), v.to_string())
                }
                entry => (
                    str_of(&entry["name"], "env name").to_string(),
                    scalar(&entry["value"]),
                ),
            })
            .collect(),
        _ => HashMap::new(),
    }
}

fn assert_env_is_read(env: &HashMap<String, String>, where_: &str) {
    let known: Vec<&str> = config::ENV_VARS
        .iter()
        .map(|v| v.name)
        .chain([config::CONFIG_ENV])
        .collect();
    for name in env.keys() {
        assert!(
            known.contains(&name.as_str()),
            "{where_} sets {name}, which the plugin does not read (known: {known:?})"
        );
    }
}

fn load_config(yaml: &str, env: &HashMap<String, String>, where_: &str) -> Config {
    Config::from_yaml_and_env(yaml, env).unwrap_or_else(|e| panic!("{where_}: {e}"))
}

/// A probe command must be the image's binary running `health` with
/// arguments the CLI accepts: against a closed port it must fail to
/// *connect* (2), not reject its arguments (64).
fn assert_health_command(argv: &[String], where_: &str) {
    assert_eq!(
        argv.first().map(String::as_str),
        Some(IMAGE_BINARY),
        "{where_}"
    );
    assert_eq!(argv.get(1).map(String::as_str), Some("health"), "{where_}");
    let closed = free_port();
    let out = PluginCommand::new()
        .args(&argv[1..])
        .env_clear()
        .env("PRISM_PLUGIN_PORT", closed.to_string())
        .output()
        .expect("run health");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{where_}: {argv:?} → {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| str_of(x, "argument").to_string())
                .collect()
        })
        .unwrap_or_default()
}

// === docker-compose ===

fn compose() -> Value {
    let docs = yaml_documents(&deploy().join("docker-compose.yaml"));
    assert_eq!(docs.len(), 1, "one compose document");
    docs.into_iter().next().expect("document")
}

/// `(source, target)` of a service's `volumes:` short-form entries.
fn mounts(service: &Value) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .iter()
        .map(|m| {
            let mut parts = m.split(':');
            let source = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_default().to_string();
            (source, target)
        })
        .collect()
}

/// The bind-mounted file (relative to `deploy/`) at `target`, if any.
fn bind_source(service: &Value, target: &str) -> Option<PathBuf> {
    mounts(service)
        .into_iter()
        .find(|(s, t)| t == target && s.starts_with('.'))
        .map(|(s, _)| deploy().join(s))
}

#[test]
fn compose_plugin_matches_the_schema_and_the_image() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let plugin = &compose["services"]["plugin"];
    assert!(!plugin.is_null(), "compose has a `plugin` service");

    let env = env_map(&plugin["environment"]);
    assert_env_is_read(&env, "compose plugin");
    let config_path = env
        .get(config::CONFIG_ENV)
        .map_or(IMAGE_CONFIG, String::as_str);
    let file = bind_source(plugin, config_path).expect("plugin config bind-mounted");
    let yaml = fs::read_to_string(&file).expect("plugin config");
    let config = load_config(&yaml, &env, "deploy/plugin.yaml with compose env");
    assert!(config.backend.vault_enabled, "the example uses Vault");

    // The token file the plugin reads is on the volume bao-init writes it to.
    let token_file = &config.vault.auth.token_file;
    let init = &compose["services"]["bao-init"];
    let init_env = env_map(&init["environment"]);
    assert_eq!(init_env.get("PLUGIN_TOKEN_FILE"), Some(token_file));
    let dir = Path::new(token_file)
        .parent()
        .expect("dir")
        .to_str()
        .expect("utf-8");
    let volume = |svc: &Value| {
        mounts(svc)
            .into_iter()
            .find(|(_, t)| t == dir)
            .map(|(s, _)| s)
    };
    assert!(
        volume(plugin).is_some() && volume(plugin) == volume(init),
        "{dir} shared"
    );

    assert_eq!(plugin["build"]["target"].as_str(), Some("production"));
    let context = deploy().join(str_of(&plugin["build"]["context"], "build.context"));
    assert!(context.join("Dockerfile").is_file());
    let test = strings(&plugin["healthcheck"]["test"]);
    assert_eq!(test.first().map(String::as_str), Some("CMD"), "exec form");
    assert_health_command(&test[1..], "compose healthcheck");

    for (name, service) in services {
        for (source, _) in mounts(service) {
            if source.starts_with('.') {
                let path = deploy().join(&source);
                assert!(path.exists(), "{name:?} mounts missing {}", path.display());
            }
        }
    }
}

/// The dynamic user's rules in compose are the ones the test suite runs
/// the plugin with (README's role), on the example's key prefix.
#[test]
fn compose_role_grants_what_the_plugin_sends() {
    let compose = compose();
    let init_env = env_map(&compose["services"]["bao-init"]["environment"]);
    let rules: Vec<String> =
        serde_json::from_str(&init_env["CACHE_ACL_RULES"]).expect("CACHE_ACL_RULES is JSON");
    let yaml = fs::read_to_string(deploy().join("plugin.yaml")).expect("plugin.yaml");
    let prefix = load_config(&yaml, &HashMap::new(), "plugin.yaml")
        .backend
        .key_prefix;
    let tested: Vec<String> = common::CACHE_ACL
        .split_whitespace()
        .map(|r| {
            if r.starts_with('~') {
                format!("~{prefix}*")
            } else {
                r.to_string()
            }
        })
        .collect();
    assert_eq!(rules, tested);
}

// === Kubernetes ===

fn kubernetes_documents() -> Vec<Value> {
    let mut docs = Vec::new();
    for entry in fs::read_dir(deploy().join("kubernetes")).expect("deploy/kubernetes") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            for doc in yaml_documents(&path) {
                assert!(
                    doc["apiVersion"].is_string(),
                    "{}: apiVersion",
                    path.display()
                );
                assert!(doc["kind"].is_string(), "{}: kind", path.display());
                docs.push(doc);
            }
        }
    }
    docs
}

fn pod_specs(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter_map(|d| match d["kind"].as_str() {
            Some("Pod") => Some(&d["spec"]),
            Some("Deployment" | "StatefulSet" | "DaemonSet" | "Job") => {
                Some(&d["spec"]["template"]["spec"])
            }
            _ => None,
        })
        .collect()
}

fn config_map_entry<'a>(docs: &'a [Value], name: &str, key: &str) -> &'a str {
    docs.iter()
        .find(|d| {
            d["kind"].as_str() == Some("ConfigMap") && d["metadata"]["name"].as_str() == Some(name)
        })
        .map(|d| str_of(&d["data"][key], "ConfigMap data"))
        .unwrap_or_else(|| panic!("ConfigMap {name} with key {key}"))
}

/// The plugin config a pod's container sees at `path`, from its ConfigMap.
fn mounted_config<'a>(docs: &'a [Value], pod: &Value, container: &Value, path: &str) -> &'a str {
    let mounts = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts");
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    let volume_name = str_of(&mount["name"], "mount name");
    let volume = pod["volumes"]
        .as_sequence()
        .and_then(|v| v.iter().find(|v| v["name"].as_str() == Some(volume_name)))
        .expect("volume");
    let map = str_of(&volume["configMap"]["name"], "configMap volume");
    config_map_entry(docs, map, str_of(&mount["subPath"], "subPath"))
}

fn is_under_a_mount(container: &Value, file: &str) -> bool {
    container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|m| m["mountPath"].as_str())
        .any(|dir| Path::new(file).starts_with(dir))
}

#[test]
fn kubernetes_sidecar_matches_the_schema_and_the_image() {
    let docs = kubernetes_documents();
    let pods = pod_specs(&docs);
    assert!(!pods.is_empty(), "a pod spec in deploy/kubernetes");
    for pod in pods {
        let containers = pod["containers"].as_sequence().expect("containers");
        assert!(
            containers.len() >= 2,
            "the plugin is a sidecar next to the gateway"
        );
        let plugin = containers
            .iter()
            .find(|c| c["name"].as_str() == Some(PLUGIN_CONTAINER))
            .expect("plugin container");
        check_kubernetes_plugin(&docs, pod, plugin);
    }
}

fn check_kubernetes_plugin(docs: &[Value], pod: &Value, plugin: &Value) {
    let env = env_map(&plugin["env"]);
    assert_env_is_read(&env, "kubernetes plugin container");
    let path = env
        .get(config::CONFIG_ENV)
        .map_or(IMAGE_CONFIG, String::as_str);
    let yaml = mounted_config(docs, pod, plugin, path);
    let config = load_config(yaml, &env, "ConfigMap plugin.yaml with the container env");
    let port = i64::from(config.control_plane.port);

    let sc = &plugin["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["runAsUser"].as_i64(), Some(65532));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    for kind in ["requests", "limits"] {
        assert!(plugin["resources"][kind].is_mapping(), "resources.{kind}");
    }
    let ports: Vec<i64> = plugin["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert!(
        ports.contains(&port),
        "containerPort {port} (control_plane.port)"
    );

    let probes = [&plugin["readinessProbe"], &plugin["livenessProbe"]];
    let grpc: Vec<&Value> = probes
        .iter()
        .map(|p| &p["grpc"])
        .filter(|g| !g.is_null())
        .collect();
    let exec: Vec<&Value> = probes
        .iter()
        .map(|p| &p["exec"])
        .filter(|e| !e.is_null())
        .collect();
    assert!(
        !grpc.is_empty() && !exec.is_empty(),
        "both probe kinds shown"
    );
    for g in grpc {
        assert_eq!(g["port"].as_i64(), Some(port), "gRPC probe port");
        // kubelet dials the pod IP, so a loopback-only listener fails it.
        assert!(
            !config.control_plane.listen.starts_with("127."),
            "listen for kubelet"
        );
    }
    for e in exec {
        assert_health_command(&strings(&e["command"]), "kubernetes exec probe");
    }

    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        grace > config.control_plane.drain_timeout.0.as_secs(),
        "grace > drain"
    );
    check_kubernetes_vault(pod, plugin, &config);
}

fn check_kubernetes_vault(pod: &Value, plugin: &Value, config: &Config) {
    use redis_cache_plugin::config::VaultAuthMethod;
    assert!(config.backend.vault_enabled, "the example uses Vault");
    let auth = &config.vault.auth;
    assert_eq!(auth.method, VaultAuthMethod::Kubernetes);
    assert_eq!(
        auth.jwt_file,
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    assert!(
        pod["serviceAccountName"].is_string(),
        "a service account to log in as"
    );
    assert_ne!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    if !config.vault.ca_file.is_empty() {
        assert!(
            is_under_a_mount(plugin, &config.vault.ca_file),
            "vault.ca_file mounted"
        );
    }
}

// === the compose stack, run on loopback without a container engine ===

/// A child process killed on drop, with its log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let file = fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Self { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tool the harness finds, or a clear panic.
fn tool(name: &str) -> PathBuf {
    common::tool(name).unwrap_or_else(|| panic!("{name} not found: run scripts/deps.sh"))
}

/// Polls `cmd` until it succeeds or `within` passes; the last output.
fn poll(within: Duration, mut cmd: impl FnMut() -> Command) -> Output {
    let deadline = Instant::now() + within;
    loop {
        let out = cmd().output().expect("run");
        if out.status.success() || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Compose's argv with each container path of a bind mount replaced by
/// the host file.
fn host_argv(service: &Value, argv: &[String]) -> Vec<String> {
    argv.iter()
        .map(|a| match bind_source(service, a) {
            Some(host) => host.to_str().expect("utf-8").to_string(),
            None => a.clone(),
        })
        .collect()
}

fn start_redis(compose: &Value, dir: &Path) -> (Proc, u16, Vec<String>) {
    let redis = &compose["services"]["redis"];
    let argv = host_argv(redis, &strings(&redis["command"]));
    let port = free_port();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        dir.to_str().expect("utf-8"),
    ]);
    let proc = Proc::spawn(cmd, dir.join("redis.log"));
    // Compose's own healthcheck (`redis-cli ... ping`), pointed at the port.
    let test = strings(&redis["healthcheck"]["test"]);
    let mut cli = vec![test[1].clone(), "-p".to_string(), port.to_string()];
    cli.extend_from_slice(&test[2..]);
    let ping = cli.clone();
    let out = poll(Duration::from_secs(10), || {
        let mut c = Command::new(&ping[0]);
        c.args(&ping[1..]);
        c
    });
    assert!(
        out.status.success(),
        "redis healthcheck: {out:?}\n{}",
        proc.log()
    );
    assert_eq!(cli.pop().as_deref(), Some("ping"));
    (proc, port, cli)
}

fn start_openbao(compose: &Value, dir: &Path) -> (Proc, String) {
    let bao = &compose["services"]["openbao"];
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let argv: Vec<String> = strings(&bao["command"])
        .into_iter()
        .map(|a| {
            if a.starts_with("-dev-listen-address=") {
                format!("-dev-listen-address=127.0.0.1:{port}")
            } else {
                a
            }
        })
        .collect();
    let mut cmd = Command::new(tool("bao"));
    cmd.args(&argv)
        .env_remove("BAO_TOKEN")
        .env_remove("VAULT_TOKEN");
    let proc = Proc::spawn(cmd, dir.join("openbao.log"));
    let out = poll(Duration::from_secs(20), || {
        let mut c = Command::new(tool("bao"));
        c.args(["status", &format!("-address={addr}")]);
        c
    });
    assert!(out.status.success(), "openbao: {out:?}\n{}", proc.log());
    (proc, addr)
}

/// Runs compose's `bao-init` script with its environment, addresses
/// pointed at loopback; returns the token file it wrote.
fn run_bao_init(compose: &Value, bao_addr: &str, redis_port: u16, dir: &Path) -> PathBuf {
    let init = &compose["services"]["bao-init"];
    let argv = host_argv(init, &strings(&init["entrypoint"]));
    let token_file = dir.join("plugin-token");
    let mut env = env_map(&init["environment"]);
    env.insert("BAO_ADDR".into(), bao_addr.into());
    env.insert("REDIS_HOST".into(), "127.0.0.1".into());
    env.insert("REDIS_PORT".into(), redis_port.to_string());
    env.insert(
        "PLUGIN_TOKEN_FILE".into(),
        token_file.to_str().expect("utf-8").into(),
    );
    let bao_dir = tool("bao").parent().expect("dir").to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bao_dir).chain(std::env::split_paths(&path)))
        .expect("PATH");
    let out = Command::new("sh")
        .args(&argv[1..])
        .env_clear()
        .envs(&env)
        .env("PATH", path)
        .env("HOME", dir)
        .output()
        .expect("run init.sh");
    common::assert_succeeded(&out, "deploy/openbao/init.sh");
    token_file
}

/// Redis users Vault created (named `V_...`).
fn vault_users(redis_cli: &[String]) -> Vec<String> {
    let out = Command::new(&redis_cli[0])
        .args(&redis_cli[1..])
        .args(["ACL", "USERS"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|u| u.starts_with("V_"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_stack_serves_with_vault_issued_credentials() {
    let compose = compose();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_redis, redis_port, redis_cli) = start_redis(&compose, dir.path());
    let (_bao, bao_addr) = start_openbao(&compose, dir.path());
    let token_file = run_bao_init(&compose, &bao_addr, redis_port, dir.path());

    // The compose plugin: its config and environment, on loopback.
    let plugin_svc = &compose["services"]["plugin"];
    let mut config: Value = serde_norway::from_str(
        &fs::read_to_string(deploy().join("plugin.yaml")).expect("plugin.yaml"),
    )
    .expect("yaml");
    let port = free_port();
    config["control_plane"]["listen"] = Value::from("127.0.0.1");
    config["control_plane"]["port"] = Value::from(port);
    config["vault"]["auth"]["token_file"] = Value::from(token_file.to_str().expect("utf-8"));
    let config_file = dir.path().join("plugin.yaml");
    fs::write(
        &config_file,
        serde_norway::to_string(&config).expect("yaml"),
    )
    .expect("write");
    let mut env = env_map(&plugin_svc["environment"]);
    env.remove(config::CONFIG_ENV);
    env.insert("REDIS_ADDRESS".into(), format!("127.0.0.1:{redis_port}"));
    env.insert("VAULT_ADDR".into(), bao_addr.clone());
    let addr = format!("127.0.0.1:{port}");
    let mut plugin = PluginCommand::new()
        .config(&config_file)
        .arg("serve")
        .env_clear()
        .envs(&env)
        .start_serving(&addr, &[]);
    assert_eq!(vault_users(&redis_cli).len(), 1, "one Vault-issued user");

    // The role's rules cover what the API sends.
    let mut client = Cache::connect(&addr).await;
    let value = bytes::Bytes::from_static(b"from-compose");
    client
        .set("deploy:e2e", &value)
        .await
        .unwrap_or_else(|s| panic!("Set: {s:?}\n{}", plugin.log()));
    let got = client.get("deploy:e2e").await.expect("Get");
    assert!(got.found && got.value == value);
    drop(client);

    plugin.terminate();
    let status = tokio::task::block_in_place(|| plugin.wait_exit(Duration::from_secs(20)));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}\n{}",
        plugin.log()
    );
    assert!(
        vault_users(&redis_cli).is_empty(),
        "lease revoked at shutdown"
    );
}
