//! Proves the topology harness itself: a six-node cluster forms and routes
//! keys by slot, the plugin's cluster user is least-privilege, resharding
//! and a replica takeover really change the slot map, Sentinel names a new
//! master after the old one is SIGKILLed, and the black-hole proxy really
//! stops (and resumes) forwarding without closing sockets. Each fault is
//! asserted to have happened before the recovery is.

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::{
    CACHE_ACL, CACHE_USER, Flavor, RedisServer,
    blackhole::{BlackHole, Mode},
    topology::{As, CLUSTER_CACHE_ACL, RedisCluster, SENTINEL_CACHE_ACL, SentinelSet},
};

twin_tests!(
    cluster_routes_by_slot_reshards_and_fails_over,
    sentinel_names_a_new_master_after_sigkill,
    sentinels_with_auth_serve_only_their_users,
);

/// Keys spread over all slots; 40 leave a primary without one with odds
/// of about 3 in 10 million.
fn cluster_keys() -> Vec<String> {
    (0..40).map(|i| format!("cache:harness:{i}")).collect()
}

async fn cluster_routes_by_slot_reshards_and_fails_over(flavor: Flavor) {
    let mut cluster = RedisCluster::start(flavor);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "three primaries");
    for p in &primaries {
        assert_eq!(cluster.replicas_of(p).len(), 1, "{p} has one replica");
    }
    keys_land_on_their_slot_owner(&cluster, &primaries);
    cache_user_is_least_privilege(&cluster);
    reshard_moves_slots(&cluster, &primaries);
    replica_takes_over(&cluster, &primaries[2]);
    a_killed_node_is_failed_then_rejoins(&mut cluster, &primaries[2]);
    every_key_still_reads_back(&cluster);
}

/// `redis-cli -c` as the cache user follows MOVED; each key then sits on
/// the primary its slot says and on no other.
fn keys_land_on_their_slot_owner(cluster: &RedisCluster, primaries: &[String]) {
    let seed = primaries[0].clone();
    let (host, port) = seed.split_once(':').expect("host:port");
    let mut owners = std::collections::BTreeSet::new();
    for key in cluster_keys() {
        let out = cluster.cli(
            As::Cache,
            &["-c", "-h", host, "-p", port, "SET", &key, &key],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
        let owner = cluster.node_for_key(&key);
        let held: Option<String> = ::redis::cmd("GET")
            .arg(&key)
            .query(&mut cluster.node(&owner).admin())
            .expect("GET on the slot's owner");
        assert_eq!(held.as_deref(), Some(key.as_str()), "{key} on {owner}");
        for other in primaries.iter().filter(|p| **p != owner) {
            let err = ::redis::cmd("GET")
                .arg(&key)
                .query::<Option<String>>(&mut cluster.node(other).admin())
                .expect_err("another primary redirects");
            let said = err.to_string().to_uppercase();
            assert!(said.contains("MOVED"), "{other}: {err}");
        }
        owners.insert(owner);
    }
    assert_eq!(owners.len(), 3, "keys spread over every primary");
}

/// The cluster rules are the standalone rules plus the cluster reads; the
/// user may read the slot map but not run admin commands.
fn cache_user_is_least_privilege(cluster: &RedisCluster) {
    assert!(CLUSTER_CACHE_ACL.starts_with(CACHE_ACL));
    assert!(SENTINEL_CACHE_ACL.starts_with(CACHE_ACL));
    for node in cluster.seed_addresses() {
        let dryrun = |args: &[&str]| -> String {
            ::redis::cmd("ACL")
                .arg("DRYRUN")
                .arg(CACHE_USER)
                .arg(args)
                .query(&mut cluster.node(&node).admin())
                .expect("ACL DRYRUN")
        };
        assert_eq!(dryrun(&["CLUSTER", "SLOTS"]), "OK", "{node}");
        assert_eq!(dryrun(&["CLUSTER", "SHARDS"]), "OK", "{node}");
        assert_eq!(dryrun(&["READONLY"]), "OK", "{node}");
        assert_ne!(dryrun(&["CONFIG", "GET", "maxmemory"]), "OK", "{node}");
        assert_ne!(dryrun(&["CLUSTER", "FAILOVER"]), "OK", "{node}");
    }
    let seed = cluster.seed_addresses().remove(0);
    let (host, port) = seed.split_once(':').expect("host:port");
    let out = cluster.cli(
        As::Cache,
        &["-h", host, "-p", port, "CONFIG", "GET", "maxmemory"],
    );
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("NOPERM"),
        "CONFIG GET as the cache user: {said}"
    );
}

/// `redis-cli --cluster reshard` moves the lowest slots of the first
/// primary to the second; CLUSTER SLOTS says so afterwards.
fn reshard_moves_slots(cluster: &RedisCluster, primaries: &[String]) {
    assert_eq!(cluster.owner_of(0), primaries[0], "before: slot 0");
    assert_eq!(cluster.owner_of(9), primaries[0], "before: slot 9");
    cluster.reshard(&primaries[0], &primaries[1], 10);
    for slot in 0..10 {
        assert_eq!(cluster.owner_of(slot), primaries[1], "after: slot {slot}");
    }
    assert_eq!(cluster.owner_of(10), primaries[0], "slot 10 stays");
}

/// `CLUSTER FAILOVER` on the replica of `primary` swaps their roles.
fn replica_takes_over(cluster: &RedisCluster, primary: &str) {
    let replica = cluster.replicas_of(primary).remove(0);
    assert!(!cluster.primaries().contains(&replica), "a replica before");
    let took = cluster.failover(&replica);
    println!("cluster failover of {primary} to {replica} settled in {took:?}");
    let now = cluster.primaries();
    assert!(now.contains(&replica), "{replica} is a primary: {now:?}");
    assert!(
        !now.contains(&primary.to_string()),
        "{primary} stepped down"
    );
    assert_eq!(cluster.replicas_of(&replica), vec![primary.to_string()]);
}

/// A SIGKILLed node is flagged failed by the others; restarted, it rejoins
/// with its old identity and role.
fn a_killed_node_is_failed_then_rejoins(cluster: &mut RedisCluster, address: &str) {
    let is_failed = |c: &RedisCluster| {
        c.topology()
            .iter()
            .any(|n| n.address == address && n.failed)
    };
    cluster.kill(address);
    let failed = common::poll(Duration::from_secs(20), Duration::from_millis(50), || {
        is_failed(cluster)
    });
    assert!(failed, "the cluster flags {address} failed");
    cluster.restart(address);
    cluster.wait_settled();
    assert!(!is_failed(cluster), "{address} is back");
    assert!(
        !cluster.primaries().contains(&address.to_string()),
        "still a replica"
    );
}

/// After the reshard and the takeover every key still reads back through
/// `redis-cli -c` as the cache user.
fn every_key_still_reads_back(cluster: &RedisCluster) {
    let seed = cluster.primaries().remove(0);
    let (host, port) = seed.split_once(':').expect("host:port");
    for key in cluster_keys() {
        let out = cluster.cli(As::Cache, &["-c", "-h", host, "-p", port, "GET", &key]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), key, "{out:?}");
    }
}

async fn sentinel_names_a_new_master_after_sigkill(flavor: Flavor) {
    let mut set = SentinelSet::start(flavor);
    let master = set.current_master().expect("sentinel names the master");
    assert_eq!(master, set.data_addresses()[0]);
    assert_eq!(set.role(&master).as_deref(), Some("master"));
    let mut conn = set.node(&master).admin();
    ::redis::cmd("SET")
        .arg("cache:sentinel")
        .arg("v")
        .exec(&mut conn)
        .expect("SET");
    // Both replicas have the write before the master dies.
    let acked: i64 = ::redis::cmd("WAIT")
        .arg(2)
        .arg(5000)
        .query(&mut conn)
        .expect("WAIT");
    assert_eq!(acked, 2);
    drop(conn);

    let (old, killed_at) = set.kill_master();
    assert_eq!(set.role(&old), None, "the old master is gone");
    let (new, took) = set.wait_new_master(&old, killed_at, Duration::from_secs(20));
    println!("{flavor:?}: sentinel named {new} the new master {took:?} after SIGKILL of {old}");
    assert_ne!(new, old);
    assert_eq!(set.role(&new).as_deref(), Some("master"));
    let value: Option<String> = ::redis::cmd("GET")
        .arg("cache:sentinel")
        .query(&mut set.node(&new).admin())
        .expect("GET on the new master");
    assert_eq!(value.as_deref(), Some("v"));
    let dryrun: String = ::redis::cmd("ACL")
        .arg("DRYRUN")
        .arg(CACHE_USER)
        .arg("ROLE")
        .query(&mut set.node(&new).admin())
        .expect("ACL DRYRUN");
    assert_eq!(dryrun, "OK", "the cache user may ask ROLE");
}

/// Sentinels that require AUTH refuse anonymous clients and let the
/// plugin's user ask for the master and subscribe to `+switch-master` but
/// nothing else; they still fail over, which needs them to log in to each
/// other (votes are asked for with SENTINEL IS-MASTER-DOWN-BY-ADDR).
async fn sentinels_with_auth_serve_only_their_users(flavor: Flavor) {
    let mut set = SentinelSet::start_with_auth(flavor);
    let password = set
        .sentinel_password
        .clone()
        .expect("sentinels require AUTH");
    let sentinel = set.sentinel_addresses().remove(0);

    let err = ::redis::cmd("PING")
        .query::<String>(&mut set.sentinel_as(&sentinel, None))
        .expect_err("anonymous clients are refused");
    assert!(err.to_string().to_uppercase().contains("NOAUTH"), "{err}");

    let mut plugin = set.sentinel_as(&sentinel, Some((CACHE_USER, &password)));
    let master = master_as(&mut plugin, &set);
    assert_eq!(master, set.data_addresses()[0]);
    let err = ::redis::cmd("SENTINEL")
        .arg("reset")
        .arg("*")
        .query::<i64>(&mut plugin)
        .expect_err("the plugin user may not reset");
    assert!(err.to_string().to_uppercase().contains("NOPERM"), "{err}");
    let mut follower = set.sentinel_as(&sentinel, Some((CACHE_USER, &password)));
    follower
        .as_pubsub()
        .subscribe("+switch-master")
        .expect("the plugin user follows +switch-master");

    let (old, killed_at) = set.kill_master();
    assert_eq!(set.role(&old), None, "the old master is gone");
    let (new, took) = set.wait_new_master(&old, killed_at, Duration::from_secs(20));
    println!("{flavor:?} (sentinels with AUTH): new master {new} named {took:?} after SIGKILL");
    assert_eq!(master_as(&mut plugin, &set), new);
}

/// The master's address as `conn` (a Sentinel connection) is told it.
fn master_as(conn: &mut ::redis::Connection, set: &SentinelSet) -> String {
    let master: Vec<String> = ::redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(set.master_name())
        .query(conn)
        .expect("SENTINEL get-master-addr-by-name");
    master.join(":")
}

// === the black hole ===

/// A raw RESP connection through the proxy with a 1 s read timeout.
fn raw(proxy: &BlackHole) -> TcpStream {
    let s = TcpStream::connect(proxy.address()).expect("connect to proxy");
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    s
}

fn send(s: &mut TcpStream, args: &[&str]) {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.write_all(out.as_bytes()).expect("write through proxy");
}

/// One simple reply line, or the read error (a timeout when nothing came).
fn reply(s: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match s.read(&mut byte)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            _ => line.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

fn no_answer(s: &mut TcpStream) {
    let err = reply(s).expect_err("no answer while black-holed");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "the socket stays open, only silent: {err:?}"
    );
}

/// An authenticated raw connection through the proxy that answers PING.
fn logged_in(proxy: &BlackHole, server: &RedisServer) -> TcpStream {
    let mut s = raw(proxy);
    send(&mut s, &["AUTH", "admin", &server.admin_password]);
    assert_eq!(reply(&mut s).expect("AUTH reply"), "+OK");
    send(&mut s, &["PING"]);
    assert_eq!(reply(&mut s).expect("PING reply"), "+PONG");
    s
}

#[test]
fn black_hole_swallows_traffic_keeps_sockets_open_and_resumes() {
    let server = RedisServer::start(Flavor::Redis);
    let proxy = BlackHole::start(&server.address());
    let mut s = logged_in(&proxy, &server);
    assert_eq!((proxy.connections(), proxy.open_connections()), (1, 1));

    proxy.black_hole();
    send(&mut s, &["PING"]);
    no_answer(&mut s);
    assert!(proxy.vanished_bytes() >= 14, "the PING really vanished");
    assert_eq!(proxy.open_connections(), 1, "nothing was closed");

    proxy.resume();
    send(&mut s, &["PING"]);
    assert_eq!(reply(&mut s).expect("PING after resume"), "+PONG");
    let _second = logged_in(&proxy, &server);
    assert_eq!(proxy.connections(), 2);
}

#[test]
fn held_traffic_is_delivered_when_forwarding_resumes() {
    let server = RedisServer::start(Flavor::Redis);
    let proxy = BlackHole::start(&server.address());
    let mut s = logged_in(&proxy, &server);

    proxy.set_mode(Mode::Hold);
    send(&mut s, &["PING"]);
    no_answer(&mut s);
    assert_eq!(proxy.vanished_bytes(), 0, "held, not dropped");

    proxy.resume();
    assert_eq!(reply(&mut s).expect("the held PING's reply"), "+PONG");
    proxy.close_all();
    let mut rest = Vec::new();
    let closed = s.read_to_end(&mut rest);
    assert!(closed.is_ok(), "close_all sends the client EOF: {closed:?}");
    let gone = common::poll(Duration::from_secs(2), Duration::from_millis(10), || {
        proxy.open_connections() == 0
    });
    assert!(gone, "the connection is counted closed");
}
