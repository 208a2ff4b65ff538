//! A closed-loop random-operation run checked against an exact model:
//! workers, each owning a disjoint key set, do random Set/Get/MGet/Delete/
//! Expire through the plugin and compare every answer with what the key may
//! hold at that moment.
//!
//! Owns the model, the workers and their tally of calls. Not owned here:
//! which keys a worker gets (the caller picks them, e.g. by slot) and the
//! faults injected while the run goes on (the test's).
//!
//! The model is exact because nothing expires during a run (every write
//! carries a one-hour TTL) and a worker is the only writer of its keys. A
//! write that failed may or may not have happened, so its key then "may
//! hold" the old values and the new one until the next acknowledged write.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;
use tonic::{Code, Status, transport::Channel};

use super::{Cache, ttl};

/// Long enough that nothing expires during a run, so the model needs no
/// clock.
const LONG_TTL: Duration = Duration::from_secs(3600);

/// A call with no answer after this long counts as a failure of its own
/// kind (`Code::Unknown`, never an allowed error).
const NO_ANSWER: Duration = Duration::from_secs(5);

/// Every value each key may hold now: one when it is known, more after a
/// write that failed. `None` is "absent".
#[derive(Default, Debug)]
pub struct Model {
    keys: HashMap<String, Vec<Option<Vec<u8>>>>,
}

impl Model {
    /// `keys`, all absent (a fresh prefix).
    pub fn new(keys: &[String]) -> Self {
        let keys = keys.iter().map(|k| (k.clone(), vec![None])).collect();
        Self { keys }
    }

    /// A write of `value` (`None`: a delete) to `key`; an acknowledged one
    /// makes it the only possibility, a failed one adds it.
    pub fn wrote(&mut self, key: &str, value: Option<Vec<u8>>, acknowledged: bool) {
        let may = self.keys.entry(key.to_string()).or_default();
        if acknowledged {
            *may = vec![value];
        } else if !may.contains(&value) {
            may.push(value);
        }
    }

    /// Whether `key` may hold `seen` now.
    pub fn allows(&self, key: &str, seen: Option<&[u8]>) -> bool {
        self.keys
            .get(key)
            .is_some_and(|may| may.iter().any(|v| v.as_deref() == seen))
    }

    /// (may be present, may be absent) for `key`.
    pub fn presence(&self, key: &str) -> (bool, bool) {
        let may = self.keys.get(key).map(Vec::as_slice).unwrap_or(&[]);
        (
            may.iter().any(Option::is_some),
            may.iter().any(Option::is_none),
        )
    }

    /// The least and the most a Delete of the distinct `keys` may count.
    pub fn delete_bounds(&self, keys: &[String]) -> (u64, u64) {
        keys.iter().fold((0, 0), |(lo, hi), k| {
            let (present, absent) = self.presence(k);
            (lo + u64::from(!absent), hi + u64::from(present))
        })
    }

    /// What `key` may hold, readable, for failure messages.
    pub fn describe(&self, key: &str) -> String {
        let may = self.keys.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let shown: Vec<String> = may.iter().map(|v| show(v.as_deref())).collect();
        format!("[{}]", shown.join(" | "))
    }
}

fn show(v: Option<&[u8]>) -> String {
    v.map_or_else(|| "absent".into(), |b| String::from_utf8_lossy(b).into())
}

/// A small deterministic generator (splitmix64), so a run's operation
/// sequence can be repeated from its printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One call of a run: when it started, what it was, its first key and how
/// it ended (`Code::Ok` also for an answer the model refused: those are
/// counted in [`Tally::wrong`]).
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    pub op: &'static str,
    pub key: String,
    pub code: Code,
}

/// Every call of a run and every wrong answer.
#[derive(Default, Debug)]
pub struct Tally {
    pub calls: Vec<Call>,
    pub wrong: Vec<String>,
}

impl Tally {
    /// Failed calls by code name.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for c in self.calls.iter().filter(|c| c.code != Code::Ok) {
            *by.entry(format!("{:?}", c.code)).or_insert(0) += 1;
        }
        by
    }

    pub fn failed(&self) -> usize {
        self.calls.iter().filter(|c| c.code != Code::Ok).count()
    }

    /// Whether every failure is UNAVAILABLE or DEADLINE_EXCEEDED.
    pub fn only_allowed_errors(&self) -> bool {
        self.calls.iter().all(|c| {
            matches!(
                c.code,
                Code::Ok | Code::Unavailable | Code::DeadlineExceeded
            )
        })
    }

    /// One line for the closing note.
    pub fn summary(&self) -> String {
        format!(
            "{} calls, {} failed {:?}, {} wrong answers",
            self.calls.len(),
            self.failed(),
            self.errors(),
            self.wrong.len()
        )
    }
}

/// The running workers of one run.
pub struct Chaos {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Tally>>,
    pub seed: u64,
}

impl Chaos {
    /// One worker per key set on `channel`; worker `i` uses seed
    /// `seed + i`. `CHAOS_SEED` in the environment replaces `seed`.
    pub fn start(channel: Channel, key_sets: Vec<Vec<String>>, seed: u64) -> Self {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(seed);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = key_sets
            .into_iter()
            .enumerate()
            .map(|(id, keys)| {
                let worker = Worker {
                    client: Cache::on(channel.clone()),
                    id,
                    model: Model::new(&keys),
                    keys,
                    rng: Rng::new(seed.wrapping_add(id as u64)),
                    seq: 0,
                };
                tokio::spawn(worker.run(stop.clone()))
            })
            .collect();
        Self { stop, tasks, seed }
    }

    /// Stops the workers after their current call and merges their tallies
    /// (calls in start order).
    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for t in self.tasks {
            let mut one = t.await.expect("chaos worker");
            all.calls.append(&mut one.calls);
            all.wrong.append(&mut one.wrong);
        }
        all.calls.sort_by_key(|c| c.at);
        all
    }
}

/// What one operation returned: `Ok(Some(why))` is a wrong answer.
type Checked = Result<Option<String>, Status>;

struct Worker {
    client: Cache,
    id: usize,
    keys: Vec<String>,
    model: Model,
    rng: Rng,
    seq: u64,
}

impl Worker {
    async fn run(mut self, stop: Arc<AtomicBool>) -> Tally {
        let mut tally = Tally::default();
        while !stop.load(Ordering::Relaxed) {
            let at = Instant::now();
            let choice = self.rng.below(10);
            let count = match choice {
                5..=6 => 2 + self.rng.below(5),
                7 => 1 + self.rng.below(3),
                _ => 1,
            };
            let picked = self.pick(count);
            let (op, checked) = match choice {
                0..=2 => ("set", self.set(&picked[0]).await),
                3..=4 => ("get", self.get(&picked[0]).await),
                5..=6 => ("mget", self.mget(&picked).await),
                7 => ("delete", self.delete(&picked).await),
                _ => ("expire", self.expire(&picked[0]).await),
            };
            let code = match checked {
                Ok(None) => Code::Ok,
                Ok(Some(why)) => {
                    tally.wrong.push(format!("worker {}: {why}", self.id));
                    Code::Ok
                }
                Err(status) => status.code(),
            };
            let key = picked[0].clone();
            tally.calls.push(Call { at, op, key, code });
        }
        tally
    }

    /// `n` distinct keys of this worker's set (fewer if it has fewer).
    fn pick(&mut self, n: usize) -> Vec<String> {
        let mut picked: Vec<String> = Vec::with_capacity(n);
        while picked.len() < n.min(self.keys.len()) {
            let k = &self.keys[self.rng.below(self.keys.len())];
            if !picked.contains(k) {
                picked.push(k.clone());
            }
        }
        picked
    }

    async fn set(&mut self, key: &str) -> Checked {
        self.seq += 1;
        let value = format!("w{}:{}", self.id, self.seq).into_bytes();
        let r = bounded(self.client.set_ttl(key, &value, ttl(LONG_TTL))).await;
        self.model.wrote(key, Some(value), r.is_ok());
        r.map(|()| None)
    }

    async fn get(&mut self, key: &str) -> Checked {
        let r = bounded(self.client.get(key)).await?;
        let seen = r.found.then_some(&r.value[..]);
        Ok(self.refuse(key, seen).map(|why| format!("Get {why}")))
    }

    async fn mget(&mut self, keys: &[String]) -> Checked {
        let r = bounded(self.client.mget(keys)).await?;
        if let Some(extra) = r.hits.keys().find(|k| !keys.iter().any(|n| *k == n)) {
            return Ok(Some(format!("MGet {keys:?}: a hit for {extra} not asked")));
        }
        let wrong = keys
            .iter()
            .find_map(|k| self.refuse(k, r.hits.get(k).map(|v| &v[..])));
        Ok(wrong.map(|why| format!("MGet {keys:?}: {why}")))
    }

    async fn delete(&mut self, keys: &[String]) -> Checked {
        let (lo, hi) = self.model.delete_bounds(keys);
        let r = bounded(self.client.delete(keys)).await;
        for k in keys {
            self.model.wrote(k, None, r.is_ok());
        }
        let n = r?;
        Ok((!(lo..=hi).contains(&n))
            .then(|| format!("Delete {keys:?} counted {n}, not {lo}..={hi}")))
    }

    async fn expire(&mut self, key: &str) -> Checked {
        // The TTL is as long as a write's, so the value stays as it is.
        let found = bounded(self.client.expire(key, ttl(LONG_TTL))).await?;
        let (present, absent) = self.model.presence(key);
        let fits = if found { present } else { absent };
        Ok((!fits).then(|| {
            let may = self.model.describe(key);
            format!("Expire {key} found={found}, may hold {may}")
        }))
    }

    /// Why `seen` for `key` is wrong, if it is.
    fn refuse(&self, key: &str, seen: Option<&[u8]>) -> Option<String> {
        (!self.model.allows(key, seen)).then(|| {
            let may = self.model.describe(key);
            format!("{key} = {}, may hold {may}", show(seen))
        })
    }
}

/// `call`, or `Code::Unknown` when it has not answered within
/// [`NO_ANSWER`].
async fn bounded<T>(call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    tokio::time::timeout(NO_ANSWER, call)
        .await
        .unwrap_or_else(|_| Err(Status::unknown("test client: no answer within 5 s")))
}
