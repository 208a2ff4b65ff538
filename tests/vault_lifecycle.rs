//! What the plugin leaves behind in Vault (a real OpenBao) when it stops or
//! fails to start: its own AppRole login token is revoked at shutdown while
//! an operator's token is left alone; a lease read before a start-up error
//! is still revoked; and a FIFO where a token file belongs stops start-up
//! with one line instead of hanging.

mod common;

use std::{
    io::Write,
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Flavor, Plugin, RedisServer,
    openbao::{OpenBao, vault_users},
    plugin::{self, PluginCommand},
    redis_config, test_prefix,
};
use redis_cache_plugin::config::{Config, Dur, Secret, VaultAuthMethod};

/// Redis and OpenBao issuing users on it through role `cache-rw`.
fn world() -> (RedisServer, OpenBao) {
    let redis = RedisServer::start(Flavor::Redis);
    let bao = OpenBao::dev();
    bao.setup_database(&redis);
    bao.role("cache-rw", "1m", "5m");
    (redis, bao)
}

fn vault_config(redis: &RedisServer, bao: &OpenBao, name: &str) -> Config {
    let mut c = redis_config(redis, &test_prefix(name));
    c.backend.username = String::new();
    c.backend.password = Secret::default();
    c.backend.vault_enabled = true;
    c.backend.vault_path = "redis/creds/cache-rw".into();
    c.vault.address = bao.address();
    c.vault.request_timeout = Dur(Duration::from_secs(2));
    c
}

/// Accessors of the live tokens that came from an AppRole login.
fn approle_tokens(bao: &OpenBao) -> Vec<String> {
    let text = bao.bao(&["list", "-format=json", "auth/token/accessors"]);
    let accessors: Vec<String> = serde_json::from_str(&text).expect("accessor list");
    accessors
        .into_iter()
        .filter(|a| token_path(bao, a).is_some_and(|p| p.starts_with("auth/approle/login")))
        .collect()
}

/// The login path of the token behind `accessor`; `None` once it is gone.
fn token_path(bao: &OpenBao, accessor: &str) -> Option<String> {
    let out = Command::new(common::tool("bao").expect("bao"))
        .args(["token", "lookup", "-format=json", "-accessor", accessor])
        .env("BAO_ADDR", bao.address())
        .env("BAO_TOKEN", root_token(bao))
        .output()
        .expect("bao token lookup");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["data"]["path"].as_str()?.to_string())
}

/// The token the harness' CLI calls run with (root).
fn root_token(bao: &OpenBao) -> String {
    bao.bao(&["print", "token"]).trim().to_string()
}

/// True while `token` is valid (a lookup of itself succeeds).
fn token_alive(bao: &OpenBao, token: &str) -> bool {
    Command::new(common::tool("bao").expect("bao"))
        .args(["token", "lookup", "-format=json"])
        .env("BAO_ADDR", bao.address())
        .env("BAO_TOKEN", token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bao token lookup")
        .success()
}

#[tokio::test]
async fn approle_login_token_is_revoked_at_shutdown() {
    let (redis, bao) = world();
    let (role_id, secret_id) = bao.approle("1h", "2h");
    let mut c = vault_config(&redis, &bao, "vault_revoke_self");
    c.vault.auth.method = VaultAuthMethod::Approle;
    c.vault.auth.role_id = role_id;
    c.vault.auth.secret_id = Secret::new(secret_id);
    let plugin = Plugin::start_serving(c).await;
    let tokens = approle_tokens(&bao);
    assert_eq!(
        tokens.len(),
        1,
        "the plugin's login token is live: {tokens:?}"
    );
    plugin.stop().await;
    assert_eq!(
        token_path(&bao, &tokens[0]),
        None,
        "the plugin's own AppRole token must be revoked at shutdown"
    );
    assert!(vault_users(&redis).is_empty(), "the lease is revoked too");
}

#[tokio::test]
async fn operator_token_is_left_alone_at_shutdown() {
    let (redis, bao) = world();
    let token = bao.plugin_token("1h", "2h");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, &token).expect("write token");
    for (name, inline, token_file) in [
        ("vault_operator_inline", token.as_str(), String::new()),
        ("vault_operator_file", "", file.display().to_string()),
    ] {
        let mut c = vault_config(&redis, &bao, name);
        c.vault.auth.method = VaultAuthMethod::Token;
        c.vault.auth.token = Secret::new(inline);
        c.vault.auth.token_file = token_file;
        let plugin = Plugin::start_serving(c).await;
        assert_eq!(vault_users(&redis).len(), 1);
        plugin.stop().await;
        assert!(vault_users(&redis).is_empty(), "{name}: lease revoked");
        assert!(
            token_alive(&bao, &token),
            "{name}: the operator's token must outlive the plugin"
        );
    }
}

/// A loopback "Redis" behind TLS that answers every connection with
/// plaintext garbage, but only once Vault has issued a lease: the plugin's
/// TLS check then fails start-up after the first lease, every time. Runs
/// until `stop` is set (or 30 s).
fn garbage_after_lease(bao: &OpenBao, stop: Arc<AtomicBool>) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let address = bao.address();
    let root = root_token(bao);
    let handle = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut held = Vec::new();
        let mut lease_seen = false;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            lease_seen = lease_seen || has_lease(&address, &root);
            while let Ok((stream, _)) = listener.accept() {
                held.push(stream);
            }
            if lease_seen {
                for mut s in held.drain(..) {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    (port, handle)
}

fn has_lease(address: &str, root: &str) -> bool {
    let out = Command::new(common::tool("bao").expect("bao"))
        .args([
            "list",
            "-format=json",
            "sys/leases/lookup/redis/creds/cache-rw/",
        ])
        .env("BAO_ADDR", address)
        .env("BAO_TOKEN", root)
        .output()
        .expect("bao list");
    out.status.success()
        && serde_json::from_slice::<Vec<String>>(&out.stdout).is_ok_and(|l| !l.is_empty())
}

/// A config on a free loopback port, log level info, then `body`.
fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let yaml = plugin::loopback_yaml(common::free_port(), "", "info") + body;
    plugin::write_config(dir, &yaml)
}

#[test]
fn lease_is_revoked_when_startup_fails_after_the_first_lease() {
    let (redis, bao) = world();
    let token = bao.plugin_token("1h", "2h");
    let stop = Arc::new(AtomicBool::new(false));
    let (port, fake) = garbage_after_lease(&bao, stop.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &format!(
            "backend:\n  address: \"127.0.0.1:{port}\"\n  key_prefix: \"cache:x:\"\n  \
             pool_timeout: 15s\n  tls: {{ enabled: true }}\n  vault_enabled: true\n  \
             vault_path: redis/creds/cache-rw\n\
             vault:\n  address: \"{}\"\n  auth: {{ method: token }}\n",
            bao.address()
        ),
    );
    let started = Instant::now();
    let mut child = PluginCommand::new()
        .config(&config)
        .env("VAULT_TOKEN", &token)
        .start();
    let status = child
        .wait_exit(Duration::from_secs(30))
        .expect("start-up must fail");
    let stderr = child.log();
    assert!(!stderr.contains(&token));
    eprintln!("start-up failed after {:?}:\n{stderr}", started.elapsed());
    assert!(!status.success(), "must not start: {stderr}");
    assert!(
        stderr.contains("new redis credentials published"),
        "the fault: a lease was read before start-up failed: {stderr}"
    );
    assert!(stderr.contains("TLS"), "failed on the TLS check: {stderr}");
    assert!(!stderr.contains(&token));
    stop.store(true, Ordering::Relaxed);
    let _ = fake.join();
    assert!(
        !has_lease(&bao.address(), &root_token(&bao)),
        "the lease read before the start-up error must be revoked: {stderr}"
    );
    assert!(
        vault_users(&redis).is_empty(),
        "no Vault user outlives the plugin"
    );
}

#[test]
fn fifo_as_token_file_stops_startup_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("token");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let config = write_config(
        dir.path(),
        &format!(
            "backend:\n  address: \"127.0.0.1:{}\"\n  vault_enabled: true\n\
             vault:\n  address: \"http://127.0.0.1:{}\"\n  \
             auth: {{ method: token, token_file: \"{}\" }}\n",
            common::free_port(),
            common::free_port(),
            fifo.display()
        ),
    );
    let mut child = PluginCommand::new().config(&config).start();
    let status = child.wait_exit(Duration::from_secs(10));
    let stderr = child.log();
    let status = status.unwrap_or_else(|| panic!("hung on the FIFO; said: {stderr}"));
    assert!(!status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("vault.auth.token_file") && stderr.contains("not a regular file"),
        "{stderr}"
    );
}
