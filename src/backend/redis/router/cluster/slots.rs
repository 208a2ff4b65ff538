//! The key-to-slot function of Redis Cluster and the slot map a node
//! reports: [`slot`] (CRC16 of the key, or of its `{hash tag}`, modulo
//! 16384) and [`SlotMap::parse`] of a `CLUSTER SLOTS` reply.
//!
//! The slot is computed over the full key as Redis sees it, so with a
//! `key_prefix` the tag is searched after the prefix is added: a prefix
//! with a `{tag}` in it (`app{x}:`) sends every key to one slot (one node),
//! which makes every multi-key command single-slot but gives up spreading
//! the keys; a prefix with only a `{` moves the tag's start into the
//! prefix. README says so.
//!
//! This module only computes and parses; it holds no connections.

use crate::backend::redis::resp::Reply;

/// Slots in a Redis Cluster.
pub(super) const SLOTS: usize = 16384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key
/// when it has none, modulo 16384.
pub(super) fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS as u16
}

/// What Redis hashes: the part between the first `{` and the first `}`
/// after it, when that part is not empty; otherwise the whole key.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(0) | None => key,
        Some(len) => &key[open + 1..open + 1 + len],
    }
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis'
/// `crc16.c`, a byte at a time from [`CRC16_TABLE`] (it runs for every key
/// of every call).
fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &byte| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ byte)]
    })
}

/// The CRC of each byte value, computed at compile time.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
};

/// Which primary serves each slot, as one node reported it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SlotMap {
    /// Each primary's `host:port`, once.
    pub(super) primaries: Vec<String>,
    /// Per slot, an index into `primaries`; [`NO_OWNER`] when no primary
    /// serves it.
    pub(super) owner: Box<[u16]>,
}

/// A slot no primary serves.
pub(super) const NO_OWNER: u16 = u16::MAX;

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` reply: `[start, end, [host, port, id, ..],
    /// replicas...]` per range. An empty host means "the node you asked"
    /// (`asked_host`); `?` means the node's endpoint is unknown, and its
    /// slots stay without owner until a later refresh.
    pub(super) fn parse(reply: &Reply, asked_host: &str) -> Result<Self, String> {
        let Reply::Array(ranges) = reply else {
            return Err("CLUSTER SLOTS: not an array".into());
        };
        let mut map = SlotMap {
            primaries: Vec::new(),
            owner: vec![NO_OWNER; SLOTS].into_boxed_slice(),
        };
        for range in ranges {
            let (start, end, node) = parse_range(range)?;
            let Some(address) = node_address(node, asked_host)? else {
                continue;
            };
            let index = match map.primaries.iter().position(|p| *p == address) {
                Some(i) => i,
                None => {
                    map.primaries.push(address);
                    map.primaries.len() - 1
                }
            };
            let index = u16::try_from(index).map_err(|_| "CLUSTER SLOTS: too many primaries")?;
            map.owner[start..=end].fill(index);
        }
        Ok(map)
    }

    /// Slots no primary serves (a cluster that is still forming, or one
    /// whose primary failed without a replica to take over).
    pub(super) fn unowned(&self) -> usize {
        self.owner.iter().filter(|&&o| o == NO_OWNER).count()
    }
}

/// A range's first and last slot and its primary's entry.
fn parse_range(range: &Reply) -> Result<(usize, usize, &Reply), String> {
    let bad = || "CLUSTER SLOTS: a range of unexpected shape".to_string();
    let Reply::Array(items) = range else {
        return Err(bad());
    };
    match items.as_slice() {
        [Reply::Int(start), Reply::Int(end), node, ..] => {
            let start = usize::try_from(*start).map_err(|_| bad())?;
            let end = usize::try_from(*end).map_err(|_| bad())?;
            if start > end || end >= SLOTS {
                return Err(bad());
            }
            Ok((start, end, node))
        }
        _ => Err(bad()),
    }
}

/// `host:port` of a node entry; `None` for an unknown endpoint (`?`).
fn node_address(node: &Reply, asked_host: &str) -> Result<Option<String>, String> {
    let bad = || "CLUSTER SLOTS: a node entry of unexpected shape".to_string();
    let Reply::Array(fields) = node else {
        return Err(bad());
    };
    let (host, port) = match fields.as_slice() {
        [Reply::Bulk(host), Reply::Int(port), ..] => (host, *port),
        _ => return Err(bad()),
    };
    let host = std::str::from_utf8(host).map_err(|_| bad())?;
    if host == "?" || port <= 0 {
        return Ok(None);
    }
    let host = if host.is_empty() { asked_host } else { host };
    Ok(Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b""), 0);
    }

    #[test]
    fn hash_tags_pick_what_is_hashed() {
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"prism:{user1000}:a"), slot(b"{user1000}.followers"));
        // An empty tag, or a `{` without `}`, hashes the whole key.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
        // Only the first `{` counts; the first `}` after it ends the tag.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"app{x}:k1"), b"x");
    }

    fn node(host: &str, port: i64) -> Reply {
        Reply::Array(vec![
            Reply::Bulk(Bytes::copy_from_slice(host.as_bytes())),
            Reply::Int(port),
            Reply::Bulk(Bytes::from_static(b"id")),
        ])
    }

    #[test]
    fn cluster_slots_become_a_map() {
        let reply = Reply::Array(vec![
            Reply::Array(vec![
                Reply::Int(0),
                Reply::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Reply::Array(vec![Reply::Int(5461), Reply::Int(10922), node("", 7001)]),
            Reply::Array(vec![Reply::Int(10923), Reply::Int(16383), node("?", 7002)]),
        ]);
        let map = SlotMap::parse(&reply, "10.0.0.9").expect("parses");
        assert_eq!(map.primaries, ["127.0.0.1:7000", "10.0.0.9:7001"]);
        assert_eq!(map.owner[0], 0);
        assert_eq!(map.owner[5460], 0);
        assert_eq!(map.owner[5461], 1);
        assert_eq!(map.owner[16383], NO_OWNER);
        assert_eq!(map.unowned(), 16384 - 10923);
        let bad = Reply::Array(vec![Reply::Array(vec![
            Reply::Int(5),
            Reply::Int(99999),
            node("h", 1),
        ])]);
        assert!(SlotMap::parse(&bad, "h").is_err());
    }
}
