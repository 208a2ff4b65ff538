//! Multi-node topologies for integration tests: a six-node Redis Cluster
//! (3 primaries + 3 replicas) and a master with two replicas watched by
//! three Sentinels, on free loopback ports, plus the faults tests inject
//! into them (reshard, failover, kill).
//!
//! Owns: forming the topologies, their shared ACL users, and reading their
//! state back (slot owners, the current master). Not owned here: starting a
//! single server, the binaries and ports (`RedisServer`, `Flavor`,
//! `free_port` in `mod.rs`), or the black-holing proxy (`blackhole.rs`).
//!
//! ACL users are per node and not replicated, so every node gets the same
//! admin and cache passwords (random per run) at start-up; the admin user is
//! also each replica's `masteruser` and what redis-cli and Sentinel log in as.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

use super::{
    ADMIN_USER, CACHE_USER, Flavor, RedisServer, assert_succeeded, free_port, poll, random_secret,
    reap, tool,
};

/// The plugin user's ACL rules on every cluster node: the standalone rules
/// plus what a cluster client needs to learn and follow the slot map.
/// README quotes this list.
pub const CLUSTER_CACHE_ACL: &str = "~cache:* resetchannels -@all +get +set +del +mget +pexpire +ping +incrby +pttl +persist +exists +multi +exec +cluster|slots +cluster|shards +asking +readonly";

/// The plugin user's ACL rules on the data nodes of a Sentinel set: the
/// standalone rules plus `ROLE`, which the plugin checks on every new
/// connection so that a demoted master is never written to.
pub const SENTINEL_CACHE_ACL: &str = "~cache:* resetchannels -@all +get +set +del +mget +pexpire +ping +incrby +pttl +persist +exists +multi +exec +role";

/// The plugin user's ACL rules on Sentinels that require AUTH: ask for the
/// master's address and follow `+switch-master`, nothing else.
pub const SENTINEL_CLIENT_ACL: &str =
    "resetchannels &+switch-master -@all +ping +sentinel|get-master-addr-by-name +subscribe";

/// How long forming a topology or waiting for it to settle may take.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// The admin and cache passwords every node of one topology shares (the
/// plugin's config takes `cache`).
pub struct SharedUsers {
    pub admin: String,
    pub cache: String,
}

impl SharedUsers {
    fn new() -> Self {
        Self {
            admin: random_secret(),
            cache: random_secret(),
        }
    }

    /// Starts `count` nodes with `start`, each given the shared users.
    fn start_nodes(
        &self,
        count: usize,
        acl: &str,
        start: impl Fn() -> RedisServer,
    ) -> Vec<RedisServer> {
        (0..count)
            .map(|_| {
                let node = start();
                self.apply(&node, acl);
                node
            })
            .collect()
    }

    /// Gives `node` the shared passwords (its own stay valid, so its
    /// `admin()` keeps working), the cache user `acl`, and the admin user
    /// as the account it replicates with.
    fn apply(&self, node: &RedisServer, acl: &str) {
        let mut conn = node.admin();
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(ADMIN_USER)
            .arg(format!(">{}", self.admin))
            .exec(&mut conn)
            .expect("ACL SETUSER admin");
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(CACHE_USER)
            .arg("reset")
            .arg("on")
            .arg(format!(">{}", node.cache_password))
            .arg(format!(">{}", self.cache))
            .arg(acl.split_whitespace().collect::<Vec<_>>())
            .exec(&mut conn)
            .expect("ACL SETUSER cache");
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("masteruser")
            .arg(ADMIN_USER)
            .arg("masterauth")
            .arg(&self.admin)
            .exec(&mut conn)
            .expect("CONFIG SET masteruser");
    }
}

/// Which of the shared users a redis-cli call logs in as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum As {
    Admin,
    Cache,
}

/// Runs `redis-cli` with `args` as `user`; the password goes through
/// `REDISCLI_AUTH` so it is neither on the command line nor warned about.
fn redis_cli(user: &str, password: &str, args: &[&str]) -> Output {
    let cli = tool("redis-cli").unwrap_or_else(|| PathBuf::from("redis-cli"));
    Command::new(cli)
        .args(["--user", user])
        .args(args)
        .env("REDISCLI_AUTH", password)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli")
}

/// Server arguments of a cluster node. The bus port is chosen explicitly
/// because the default (port + 10000) can fall outside the port range.
fn cluster_args(bus_port: u16) -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
        "--cluster-port",
        &bus_port.to_string(),
        // A replica's first full sync starts at once instead of after the
        // default 5 s, so a replica can take over soon after forming.
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The node of `nodes` at `address`.
fn find<'a>(nodes: &'a [RedisServer], address: &str) -> &'a RedisServer {
    nodes
        .iter()
        .find(|n| n.address() == address)
        .unwrap_or_else(|| panic!("no node at {address}"))
}

/// The last lines of each `(address, log)`, for failure messages.
fn log_tails(logs: impl Iterator<Item = (String, String)>) -> String {
    logs.map(|(address, log)| {
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("--- {address} ---\n{tail}")
    })
    .collect::<Vec<_>>()
    .join("\n")
}

// === RedisCluster ===

/// One node's line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    /// `127.0.0.1:port`
    pub address: String,
    pub primary: bool,
    pub failed: bool,
    /// Id of the primary this node replicates (replicas only).
    pub primary_id: Option<String>,
    /// Inclusive slot ranges served (primaries only).
    pub slots: Vec<(u16, u16)>,
}

impl NodeInfo {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        let address = fields[1].split(['@', ',']).next()?.to_string();
        let flags: Vec<&str> = fields[2].split(',').collect();
        // Migration markers ("[slot->-id]") are not ownership; skip them.
        let slots = fields[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|n| (n, n)),
            })
            .collect();
        Some(Self {
            id: fields[0].to_string(),
            address,
            primary: flags.contains(&"master"),
            failed: flags.iter().any(|f| f.starts_with("fail")),
            primary_id: (fields[3] != "-").then(|| fields[3].to_string()),
            slots,
        })
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// What `views_agree` compares of one node: address, primary, failed,
/// its primary's id, slots.
type NodeView = (String, bool, bool, Option<String>, Vec<(u16, u16)>);

/// A six-node Redis Cluster (3 primaries, 3 replicas) with the shared ACL
/// users; every node is stopped on drop.
pub struct RedisCluster {
    pub flavor: Flavor,
    nodes: Vec<RedisServer>,
    pub users: SharedUsers,
}

impl RedisCluster {
    /// Starts six nodes, forms the cluster with `redis-cli --cluster create`
    /// and waits until every node says `cluster_state:ok`.
    pub fn start(flavor: Flavor) -> Self {
        let users = SharedUsers::new();
        let nodes = users.start_nodes(6, CLUSTER_CACHE_ACL, || {
            RedisServer::start_with(flavor, cluster_args(free_port()))
        });
        let cluster = Self {
            flavor,
            nodes,
            users,
        };
        cluster.create();
        cluster.wait_settled();
        cluster
    }

    fn create(&self) {
        let addresses = self.seed_addresses();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = self.cli(As::Admin, &args);
        assert_succeeded(&out, "redis-cli --cluster create");
    }

    /// Runs `redis-cli` as one of the shared users.
    pub fn cli(&self, user: As, args: &[&str]) -> Output {
        match user {
            As::Admin => redis_cli(ADMIN_USER, &self.users.admin, args),
            As::Cache => redis_cli(CACHE_USER, &self.users.cache, args),
        }
    }

    /// Addresses of all six nodes, as `backend.addresses` would list seeds.
    pub fn seed_addresses(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::address).collect()
    }

    /// The node at `address`.
    pub fn node(&self, address: &str) -> &RedisServer {
        find(&self.nodes, address)
    }

    fn node_mut(&mut self, address: &str) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.address() == address)
            .unwrap_or_else(|| panic!("no cluster node at {address}"))
    }

    /// `CLUSTER NODES` as seen by the node at `address`.
    pub fn nodes_seen_by(&self, address: &str) -> Vec<NodeInfo> {
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.node(address).admin())
            .expect("CLUSTER NODES");
        text.lines().filter_map(NodeInfo::parse).collect()
    }

    /// `CLUSTER NODES` as seen by the first node that answers.
    pub fn topology(&self) -> Vec<NodeInfo> {
        let live = self
            .seed_addresses()
            .into_iter()
            .find(|a| self.answers(a))
            .expect("some cluster node answers");
        self.nodes_seen_by(&live)
    }

    fn answers(&self, address: &str) -> bool {
        redis::cmd("PING")
            .query::<String>(&mut match self.node(address).try_admin() {
                Some(conn) => conn,
                None => return false,
            })
            .is_ok()
    }

    /// Addresses of the primaries that serve slots, ordered by first slot.
    pub fn primaries(&self) -> Vec<String> {
        let mut primaries: Vec<NodeInfo> = self
            .topology()
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .collect();
        primaries.sort_by_key(|n| n.slots[0].0);
        primaries.into_iter().map(|n| n.address).collect()
    }

    /// Addresses of the replicas of the primary at `primary`.
    pub fn replicas_of(&self, primary: &str) -> Vec<String> {
        let nodes = self.topology();
        let id = Self::id_in(&nodes, primary);
        nodes
            .into_iter()
            .filter(|n| n.primary_id.as_deref() == Some(id.as_str()))
            .map(|n| n.address)
            .collect()
    }

    fn id_in(nodes: &[NodeInfo], address: &str) -> String {
        nodes
            .iter()
            .find(|n| n.address == address)
            .map(|n| n.id.clone())
            .unwrap_or_else(|| panic!("{address} is not in the cluster"))
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, so hash tags count).
    pub fn slot_of(&self, key: &str) -> u16 {
        let live = self.primaries().remove(0);
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.node(&live).admin())
            .expect("CLUSTER KEYSLOT")
    }

    /// The hash slots of `keys` (`CLUSTER KEYSLOT` in one pipelined round
    /// trip), for tests that pick keys by slot.
    pub fn slots_of(&self, keys: &[String]) -> Vec<u16> {
        let live = self.primaries().remove(0);
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("CLUSTER").arg("KEYSLOT").arg(key);
        }
        pipe.query(&mut self.node(&live).admin())
            .expect("CLUSTER KEYSLOT")
    }

    /// Address of the primary that serves `slot`, per `CLUSTER SLOTS`.
    pub fn owner_of(&self, slot: u16) -> String {
        self.slot_ranges()
            .into_iter()
            .find(|(a, b, _)| *a <= slot && slot <= *b)
            .map(|(_, _, owner)| owner)
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// Address of the primary that serves `key`'s slot.
    pub fn node_for_key(&self, key: &str) -> String {
        self.owner_of(self.slot_of(key))
    }

    /// `CLUSTER SLOTS` of a live primary: `(first, last, primary address)`.
    pub fn slot_ranges(&self) -> Vec<(u16, u16, String)> {
        let live = self.primaries().remove(0);
        let reply: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut self.node(&live).admin())
            .expect("CLUSTER SLOTS");
        reply.iter().filter_map(|r| parse_slot_range(r)).collect()
    }

    /// Raw value of `key` on the primary that serves it, bypassing the
    /// plugin (and any redirect: a key elsewhere is a test failure).
    pub fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.node(&self.node_for_key(key)).admin())
            .expect("GET on the slot's owner")
    }

    /// Milliseconds to live of `key` on its slot's primary (-2 missing,
    /// -1 no TTL).
    pub fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut self.node(&self.node_for_key(key)).admin())
            .expect("PTTL on the slot's owner")
    }

    /// Number of keys over all primaries (replicas hold copies).
    pub fn dbsize(&self) -> i64 {
        self.primaries()
            .iter()
            .map(|p| {
                redis::cmd("DBSIZE")
                    .query::<i64>(&mut self.node(p).admin())
                    .expect("DBSIZE")
            })
            .sum()
    }

    /// Moves `slots` slots from the primary at `from` to the one at `to`
    /// with `redis-cli --cluster reshard` (keys migrate with MIGRATE) and
    /// waits until every node agrees.
    pub fn reshard(&self, from: &str, to: &str, slots: u16) {
        let nodes = self.topology();
        let (from_id, to_id) = (Self::id_in(&nodes, from), Self::id_in(&nodes, to));
        let count = slots.to_string();
        let out = self.cli(
            As::Admin,
            &[
                "--cluster",
                "reshard",
                from,
                "--cluster-from",
                &from_id,
                "--cluster-to",
                &to_id,
                "--cluster-slots",
                &count,
                "--cluster-yes",
            ],
        );
        assert_succeeded(&out, "redis-cli --cluster reshard");
        self.wait_settled();
    }

    /// Starts moving `slot` from the primary at `from` to the one at `to`
    /// by hand, as `redis-cli --cluster reshard` does for each slot
    /// (IMPORTING on `to`, then MIGRATING on `from`): until
    /// [`RedisCluster::finish_migration`], `from` answers ASK for keys it
    /// no longer holds.
    pub fn begin_migration(&self, slot: u16, from: &str, to: &str) {
        let nodes = self.topology();
        let (from_id, to_id) = (Self::id_in(&nodes, from), Self::id_in(&nodes, to));
        let setslot = |at: &str, state: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .exec(&mut self.node(at).admin())
                .expect("CLUSTER SETSLOT");
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
    }

    /// Moves `key` (of a slot being migrated) from `from` to `to` with
    /// MIGRATE, logged in to `to` as the admin user.
    pub fn migrate_key(&self, key: &str, from: &str, to: &str) {
        let (host, port) = to.split_once(':').expect("host:port");
        let reply: String = redis::cmd("MIGRATE")
            .arg(host)
            .arg(port)
            .arg(key)
            .arg(0)
            .arg(5000)
            .arg("AUTH2")
            .arg(ADMIN_USER)
            .arg(&self.users.admin)
            .query(&mut self.node(from).admin())
            .expect("MIGRATE");
        assert_eq!(reply, "OK", "MIGRATE {key}");
    }

    /// Ends a migration begun with [`RedisCluster::begin_migration`]:
    /// `to` owns `slot` on every primary (`to` first, as redis-cli does),
    /// then waits until the cluster is settled.
    pub fn finish_migration(&self, slot: u16, from: &str, to: &str) {
        let to_id = Self::id_in(&self.topology(), to);
        let mut order = vec![to.to_string(), from.to_string()];
        order.extend(
            self.primaries()
                .into_iter()
                .filter(|p| p != to && p != from),
        );
        for at in order {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .exec(&mut self.node(&at).admin())
                .expect("CLUSTER SETSLOT NODE");
        }
        self.wait_settled();
    }

    /// Redis only: hands `slot` to `to` while `from` still holds keys in
    /// it. `to` claims the slot first (a new config epoch); `from` drops
    /// its keys of a slot it lost once that claim reaches it over the
    /// cluster bus (Redis refuses `SETSLOT NODE` on a node that still holds
    /// keys, so asking `from` earlier fails), then the migration finishes.
    pub fn give_slot_without_keys(&self, slot: u16, from: &str, to: &str) {
        let to_id = Self::id_in(&self.topology(), to);
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&to_id)
            .exec(&mut self.node(to).admin())
            .expect("CLUSTER SETSLOT NODE on the new owner");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let held: i64 = redis::cmd("CLUSTER")
                .arg("COUNTKEYSINSLOT")
                .arg(slot)
                .query(&mut self.node(from).admin())
                .expect("CLUSTER COUNTKEYSINSLOT");
            if held == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{from} still holds {held} keys of slot {slot}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.finish_migration(slot, from, to);
    }

    /// Has the replica at `replica` take over from its primary with
    /// `CLUSTER FAILOVER` and waits until the cluster is settled again;
    /// returns how long that took.
    pub fn failover(&self, replica: &str) -> Duration {
        let started = Instant::now();
        redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .exec(&mut self.node(replica).admin())
            .expect("CLUSTER FAILOVER");
        let promoted = poll(SETTLE_WITHIN, Duration::from_millis(50), || {
            self.nodes_seen_by(replica)
                .iter()
                .any(|n| n.address == replica && n.primary)
        });
        assert!(promoted, "{replica} did not become a primary");
        self.wait_settled();
        started.elapsed()
    }

    /// Kills the node at `address` (SIGKILL); the rest keep running.
    pub fn kill(&mut self, address: &str) {
        self.node_mut(address).kill();
    }

    /// Freezes (`"STOP"`) or thaws (`"CONT"`) the node at `address`.
    pub fn signal(&self, address: &str, sig: &str) {
        self.node(address).signal(sig);
    }

    /// Starts a killed node again (same port, same cluster identity from
    /// its nodes.conf) and gives it the shared users again.
    pub fn restart(&mut self, address: &str) {
        self.node_mut(address).restart();
        self.users.apply(self.node(address), CLUSTER_CACHE_ACL);
    }

    /// Waits until every live node says `cluster_state:ok` and all of them
    /// report the same nodes, roles, replication and slot owners.
    pub fn wait_settled(&self) {
        let settled = poll(SETTLE_WITHIN, Duration::from_millis(50), || {
            let live: Vec<String> = self
                .seed_addresses()
                .into_iter()
                .filter(|a| self.answers(a))
                .collect();
            live.iter().all(|a| self.state_ok(a)) && self.views_agree(&live)
        });
        assert!(settled, "cluster did not settle:\n{}", self.describe());
    }

    fn state_ok(&self, address: &str) -> bool {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut self.node(address).admin())
            .unwrap_or_default();
        info.contains("cluster_state:ok")
    }

    /// Every live node knows all six nodes and sees the same roles,
    /// primaries and slots (a node that just joined or was promoted may
    /// still be alone in its view).
    fn views_agree(&self, live: &[String]) -> bool {
        let views: Vec<Vec<NodeView>> = live
            .iter()
            .map(|a| {
                let mut v: Vec<NodeView> = self
                    .nodes_seen_by(a)
                    .into_iter()
                    .map(|n| (n.address, n.primary, n.failed, n.primary_id, n.slots))
                    .collect();
                v.sort();
                v
            })
            .collect();
        views.iter().all(|v| v.len() == self.nodes.len()) && views.windows(2).all(|w| w[0] == w[1])
    }

    /// Waits until every live replica's link to its primary is up (its
    /// first full sync done): a replica without the data refuses to take
    /// over (`cluster-replica-validity-factor`).
    pub fn wait_replicas_synced(&self) {
        let replicas: Vec<String> = self
            .topology()
            .into_iter()
            .filter(|n| !n.primary && !n.failed)
            .map(|n| n.address)
            .collect();
        let synced = poll(SETTLE_WITHIN, Duration::from_millis(50), || {
            replicas.iter().all(|r| {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut self.node(r).admin())
                    .unwrap_or_default();
                info.contains("master_link_status:up")
            })
        });
        assert!(synced, "replicas did not sync:\n{}", self.describe());
    }

    /// Every node's view and log tail, for failure messages.
    fn describe(&self) -> String {
        log_tails(self.nodes.iter().map(|n| (n.address(), n.log())))
    }
}

/// One entry of `CLUSTER SLOTS`: `[first, last, [ip, port, id, ...], ...]`.
fn parse_slot_range(entry: &[redis::Value]) -> Option<(u16, u16, String)> {
    use redis::Value;
    let (Value::Int(first), Value::Int(last), Value::Array(primary)) =
        (entry.first()?, entry.get(1)?, entry.get(2)?)
    else {
        return None;
    };
    let (Value::BulkString(ip), Value::Int(port)) = (primary.first()?, primary.get(1)?) else {
        return None;
    };
    let address = format!("{}:{port}", String::from_utf8_lossy(ip));
    Some((
        u16::try_from(*first).ok()?,
        u16::try_from(*last).ok()?,
        address,
    ))
}

// === SentinelSet ===

/// The monitored master's name in every Sentinel set.
pub const MASTER_NAME: &str = "cache-master";

/// One Sentinel process on loopback, with or without AUTH of its own.
struct Sentinel {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// The admin password when this Sentinel requires AUTH.
    auth: Option<String>,
}

impl Sentinel {
    /// `auth`: `(admin password, cache user password)` on the Sentinel
    /// itself; the Sentinels then also log in to each other as admin.
    fn start(flavor: Flavor, master: &str, data_admin: &str, auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let (host, master_port) = master.split_once(':').expect("host:port");
        let users = auth.map_or_else(String::new, |(admin, cache)| {
            format!(
                "user default off\nuser {ADMIN_USER} on >{admin} ~* &* +@all\n\
                 user {CACHE_USER} on >{cache} {SENTINEL_CLIENT_ACL}\n\
                 sentinel sentinel-user {ADMIN_USER}\nsentinel sentinel-pass {admin}\n"
            )
        });
        let conf = users
            + &format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {MASTER_NAME} {host} {master_port} 2\n\
             sentinel auth-user {MASTER_NAME} {ADMIN_USER}\n\
             sentinel auth-pass {MASTER_NAME} {data_admin}\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 2\n",
                dir = dir.path().display(),
            );
        let path = dir.path().join("sentinel.conf");
        std::fs::write(&path, conf).expect("write sentinel.conf");
        let child = Command::new(flavor.binary())
            .arg(&path)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start sentinel {:?}: {e}", flavor.binary()));
        Self {
            port,
            dir,
            child: Some(child),
            auth: auth.map(|(admin, _)| admin.to_string()),
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> Option<redis::Connection> {
        let login = self
            .auth
            .as_ref()
            .map_or_else(String::new, |pw| format!("{ADMIN_USER}:{pw}@"));
        redis::Client::open(format!("redis://{login}{}/", self.address()))
            .ok()?
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()
    }

    /// `SENTINEL <sub> cache-master`, or `None` when it does not answer.
    fn ask<T: redis::FromRedisValue>(&self, sub: &str) -> Option<T> {
        redis::cmd("SENTINEL")
            .arg(sub)
            .arg(MASTER_NAME)
            .query(&mut self.connection()?)
            .ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        reap(self.child.take());
    }
}

/// A master with two replicas, watched by three Sentinels (quorum 2), with
/// the shared ACL users on every data node; all stopped on drop.
pub struct SentinelSet {
    pub flavor: Flavor,
    data: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
    pub users: SharedUsers,
    /// The cache user's password on the Sentinels when they require AUTH
    /// (`backend.sentinel_password`); `None` when they do not.
    pub sentinel_password: Option<String>,
}

impl SentinelSet {
    /// Starts the data nodes and the Sentinels and waits until every
    /// Sentinel knows the master, both replicas and the other Sentinels.
    pub fn start(flavor: Flavor) -> Self {
        Self::launch(flavor, false)
    }

    /// Like [`SentinelSet::start`] with Sentinels that require AUTH: the
    /// admin user (shared password) and the cache user with
    /// [`SENTINEL_CLIENT_ACL`] and its own password, `sentinel_password`.
    pub fn start_with_auth(flavor: Flavor) -> Self {
        Self::launch(flavor, true)
    }

    fn launch(flavor: Flavor, auth: bool) -> Self {
        let users = SharedUsers::new();
        let sentinel_password = auth.then(random_secret);
        let data = users.start_nodes(3, SENTINEL_CACHE_ACL, || RedisServer::start(flavor));
        let master = data[0].address();
        for replica in &data[1..] {
            redis::cmd("REPLICAOF")
                .arg("127.0.0.1")
                .arg(data[0].port)
                .exec(&mut replica.admin())
                .expect("REPLICAOF");
        }
        let sentinels = (0..3)
            .map(|_| {
                let auth = sentinel_password
                    .as_deref()
                    .map(|pw| (users.admin.as_str(), pw));
                Sentinel::start(flavor, &master, &users.admin, auth)
            })
            .collect();
        let set = Self {
            flavor,
            data,
            sentinels,
            users,
            sentinel_password,
        };
        set.wait_watching(&master);
        set
    }

    fn wait_watching(&self, master: &str) {
        let ready = poll(SETTLE_WITHIN, Duration::from_millis(100), || {
            self.sentinels.iter().all(|s| {
                let knows = |sub: &str| s.ask::<Vec<redis::Value>>(sub).map_or(0, |v| v.len());
                s.ask::<Vec<String>>("get-master-addr-by-name")
                    .is_some_and(|a| a.join(":") == master)
                    && knows("replicas") == 2
                    && knows("sentinels") == 2
            })
        });
        assert!(ready, "sentinels did not settle:\n{}", self.describe());
    }

    /// Addresses of the three Sentinels (`backend.addresses`).
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels.iter().map(Sentinel::address).collect()
    }

    /// A connection to the Sentinel at `address`, logged in as
    /// `(user, password)` or anonymous; commands show what AUTH allows.
    pub fn sentinel_as(&self, address: &str, login: Option<(&str, &str)>) -> redis::Connection {
        let login = login.map_or_else(String::new, |(u, p)| format!("{u}:{p}@"));
        redis::Client::open(format!("redis://{login}{address}/"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .expect("connect to a sentinel")
    }

    /// The monitored master's name (`backend.sentinel_master`).
    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// Addresses of the three data nodes (master and replicas).
    pub fn data_addresses(&self) -> Vec<String> {
        self.data.iter().map(RedisServer::address).collect()
    }

    /// The data node at `address`.
    pub fn node(&self, address: &str) -> &RedisServer {
        find(&self.data, address)
    }

    /// The master's address as the first Sentinel that answers names it.
    pub fn current_master(&self) -> Option<String> {
        self.sentinels.iter().find_map(|s| {
            s.ask::<Vec<String>>("get-master-addr-by-name")
                .map(|a| a.join(":"))
        })
    }

    /// `ROLE` of the data node at `address` ("master" or "slave").
    pub fn role(&self, address: &str) -> Option<String> {
        let reply: Vec<redis::Value> = redis::cmd("ROLE")
            .query(&mut self.node(address).try_admin()?)
            .ok()?;
        match reply.first()? {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// Waits until every replica's link to the master is up, i.e. its
    /// first full sync is done: diskless sync waits
    /// `repl-diskless-sync-delay` (5 s) for more replicas before sending
    /// anything, and a replica promoted before then has no data at all.
    pub fn wait_replicas_synced(&self) {
        let master = self.current_master().expect("a sentinel names the master");
        let synced = poll(SETTLE_WITHIN, Duration::from_millis(50), || {
            self.data.iter().filter(|n| n.address() != master).all(|n| {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut n.admin())
                    .unwrap_or_default();
                info.contains("master_link_status:up")
            })
        });
        assert!(synced, "replicas did not sync with {master}");
    }

    /// Kills the current master (SIGKILL); returns its address and when.
    pub fn kill_master(&mut self) -> (String, Instant) {
        let master = self.current_master().expect("a sentinel names the master");
        self.data
            .iter_mut()
            .find(|n| n.address() == master)
            .expect("master is a data node")
            .kill();
        (master, Instant::now())
    }

    /// Waits up to `bound` after `since` until a Sentinel names a master
    /// other than `old` and that node's `ROLE` says master; returns its
    /// address and how long after `since` Sentinel named it.
    pub fn wait_new_master(
        &self,
        old: &str,
        since: Instant,
        bound: Duration,
    ) -> (String, Duration) {
        let mut named = None;
        let found = poll(
            bound.saturating_sub(since.elapsed()),
            Duration::from_millis(20),
            || match self.current_master() {
                Some(m) if m != old => {
                    named.get_or_insert((m.clone(), since.elapsed()));
                    self.role(&m).as_deref() == Some("master")
                }
                _ => false,
            },
        );
        assert!(
            found,
            "no new master within {bound:?}:\n{}",
            self.describe()
        );
        named.expect("a new master was named")
    }

    /// Sentinel log tails, for failure messages.
    fn describe(&self) -> String {
        log_tails(self.sentinels.iter().map(|s| (s.address(), s.log())))
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        // Sentinels first, so none reconfigures a node that is going away.
        self.sentinels.clear();
    }
}
