//! The service's durable state: every stream's mergeable partial and the answers to the
//! idempotency keys it has seen, in an embedded redb database. A batch's effect and its key are
//! committed together before the client hears 2xx, so after a crash (even `kill -9`) every
//! acknowledged batch is there and none twice.
//!
//! Group commit: writes are queued to one committer thread, which commits everything waiting in
//! one durable transaction (one fsync for many batches) and then wakes their requests. A failed
//! commit stops the process: what it acknowledged is on disk, what it did not is retried by its
//! clients (with their keys) against the restarted server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::{Context, Result};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use microbatch::Partial;
use microbatch::sketch::Sketch;
use microbatch::stats::IntPart;

/// stream id → its record (JSON of [`Record`]).
const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
/// (stream id, idempotency key) → when the batch was applied (Unix seconds, for
/// `--key-ttl-s`), a space, and the answer it got (JSON). Answers stored before the time was
/// kept (no time: they start with `{`) are dated at load.
const KEYS: TableDefinition<(&str, &str), &str> = TableDefinition::new("keys");

/// A stream as stored: the partial with every float as its bits (JSON has no NaN or infinity,
/// and bits round-trip exactly).
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    count: u64,
    nan_count: u64,
    pos_inf_count: u64,
    neg_inf_count: u64,
    sum: u64,
    sum_err: u64,
    m2: u64,
    m2_err: u64,
    min: u64,
    max: u64,
    /// Exact integer sum, min and max, as decimal strings.
    int: Option<[String; 3]>,
    batches: u64,
    /// The address of the client that opened the stream.
    #[serde(default)]
    owner: String,
    /// The stream's quantile sketch, when it was opened with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sketch: Option<Sketch>,
}

impl Record {
    fn of(p: &Partial, batches: u64, owner: &str, sketch: Option<&Sketch>) -> Self {
        Self {
            count: p.count,
            nan_count: p.nan_count,
            pos_inf_count: p.pos_inf_count,
            neg_inf_count: p.neg_inf_count,
            sum: p.sum.to_bits(),
            sum_err: p.sum_err.to_bits(),
            m2: p.m2.to_bits(),
            m2_err: p.m2_err.to_bits(),
            min: p.min.to_bits(),
            max: p.max.to_bits(),
            int: p
                .int
                .map(|i| [i.sum.to_string(), i.min.to_string(), i.max.to_string()]),
            batches,
            owner: owner.to_string(),
            sketch: sketch.cloned(),
        }
    }

    fn partial(&self) -> Result<(Partial, u64)> {
        let int = match &self.int {
            None => None,
            Some([s, lo, hi]) => Some(IntPart {
                sum: s.parse()?,
                min: lo.parse()?,
                max: hi.parse()?,
            }),
        };
        Ok((
            Partial {
                count: self.count,
                nan_count: self.nan_count,
                pos_inf_count: self.pos_inf_count,
                neg_inf_count: self.neg_inf_count,
                sum: f64::from_bits(self.sum),
                sum_err: f64::from_bits(self.sum_err),
                m2: f64::from_bits(self.m2),
                m2_err: f64::from_bits(self.m2_err),
                min: f64::from_bits(self.min),
                max: f64::from_bits(self.max),
                int,
            },
            self.batches,
        ))
    }
}

/// A stream read back at start-up.
pub(crate) struct Loaded {
    pub partial: Partial,
    pub batches: u64,
    /// Each key's answer and when it was applied (Unix seconds).
    pub keys: HashMap<String, (String, u64)>,
    pub owner: String,
    pub sketch: Option<Sketch>,
}

/// One write for the committer.
enum Op {
    Save {
        id: String,
        record: Vec<u8>,
        /// The key, its answer and when it was applied.
        key: Option<(String, String, u64)>,
    },
    Delete(Vec<String>),
    /// Keys past `--key-ttl-s`: (stream id, key).
    ForgetKeys(Vec<(String, String)>),
}

/// The committer's side: the queue, and how far it has committed.
struct Committer {
    /// Sequence numbers are handed out under this lock, so the queue's order is theirs.
    queue: Mutex<(u64, mpsc::Sender<(u64, Op)>)>,
    /// The last sequence number on disk; requests wait on it without holding a thread.
    committed: tokio::sync::watch::Sender<u64>,
}

/// The database, or nothing for `--in-memory`.
pub(crate) struct Store {
    db: Option<Arc<Database>>,
    committer: Option<Arc<Committer>>,
    path: Option<PathBuf>,
}

impl Store {
    /// State kept in memory only (lost when the process ends).
    pub fn in_memory() -> Self {
        Self {
            db: None,
            committer: None,
            path: None,
        }
    }

    /// Opens (or creates) `dir/streams.redb` and starts its committer.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("streams.redb");
        let db = Database::create(&path)
            .with_context(|| format!("opening the stream store {}", path.display()))?;
        let w = db.begin_write()?;
        w.open_table(STREAMS)?;
        w.open_table(KEYS)?;
        w.commit()?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<(u64, Op)>();
        let committer = Arc::new(Committer {
            queue: Mutex::new((0, tx)),
            committed: tokio::sync::watch::Sender::new(0),
        });
        let (c, d, shown) = (Arc::clone(&committer), Arc::clone(&db), path.clone());
        std::thread::Builder::new()
            .name("microbatch-store".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        group.push(more);
                        if group.len() == 4096 {
                            break;
                        }
                    }
                    let last = group.last().map_or(0, |(seq, _)| *seq);
                    if let Err(e) = commit(&d, group) {
                        // Nothing after this point may be acknowledged: stop, and let clients
                        // retry against a restarted server.
                        eprintln!(
                            "microbatch serve: committing to {} failed, stopping: {e:#}",
                            shown.display()
                        );
                        std::process::abort();
                    }
                    c.committed.send_replace(last);
                }
            })?;
        Ok(Self {
            db: Some(db),
            committer: Some(committer),
            path: Some(path),
        })
    }

    /// Where the state lives, for the start-up line.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "memory only (--in-memory)".to_string(),
        }
    }

    /// Every stored stream with its keys' answers.
    pub fn load(&self) -> Result<Vec<(String, Loaded)>> {
        let Some(db) = &self.db else {
            return Ok(Vec::new());
        };
        let r = db.begin_read()?;
        let streams = r.open_table(STREAMS)?;
        let keys = r.open_table(KEYS)?;
        let now = unix_now();
        let mut out: HashMap<String, Loaded> = HashMap::new();
        for entry in streams.iter()? {
            let (id, bytes) = entry?;
            let record: Record = serde_json::from_slice(bytes.value())
                .with_context(|| format!("stream {} in the store", id.value()))?;
            let (partial, batches) = record.partial()?;
            out.insert(
                id.value().to_string(),
                Loaded {
                    partial,
                    batches,
                    keys: HashMap::new(),
                    owner: record.owner.clone(),
                    sketch: record.sketch.clone(),
                },
            );
        }
        for entry in keys.iter()? {
            let (k, answer) = entry?;
            let (id, key) = k.value();
            if let Some(s) = out.get_mut(id) {
                let stored = answer.value();
                let (at, answer) = match stored.split_once(' ') {
                    Some((t, a)) if !stored.starts_with('{') => (t.parse().unwrap_or(now), a),
                    _ => (now, stored),
                };
                s.keys.insert(key.to_string(), (answer.to_string(), at));
            }
        }
        Ok(out.into_iter().collect())
    }

    fn submit(&self, op: Op) -> u64 {
        let Some(c) = &self.committer else {
            return 0;
        };
        let mut q = c.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.0 += 1;
        let seq = q.0;
        // The committer lives as long as the store.
        let _ = q.1.send((seq, op));
        seq
    }

    /// Queues a stream's state and, for a keyed batch, the key's answer, to be committed
    /// together; returns the ticket [`Store::wait`] takes. Call it in the order the states
    /// were made (under the streams' lock).
    pub fn save(
        &self,
        id: &str,
        partial: &Partial,
        batches: u64,
        owner: &str,
        sketch: Option<&Sketch>,
        key: Option<(&str, &str, u64)>,
    ) -> Result<u64> {
        if self.committer.is_none() {
            return Ok(0);
        }
        let record = serde_json::to_vec(&Record::of(partial, batches, owner, sketch))?;
        Ok(self.submit(Op::Save {
            id: id.to_string(),
            record,
            key: key.map(|(k, a, at)| (k.to_string(), a.to_string(), at)),
        }))
    }

    /// Queues the removal of keys (stream id, key) past their time; returns the ticket.
    pub fn forget_keys(&self, keys: Vec<(String, String)>) -> u64 {
        if keys.is_empty() || self.committer.is_none() {
            return 0;
        }
        self.submit(Op::ForgetKeys(keys))
    }

    /// Queues the removal of streams and their keys; returns the ticket.
    pub fn delete(&self, ids: &[String]) -> u64 {
        if ids.is_empty() {
            return 0;
        }
        self.submit(Op::Delete(ids.to_vec()))
    }

    /// Waits until everything up to `ticket` is on disk (at once in memory, or when it already
    /// is). Holds no thread while it waits.
    pub async fn wait(&self, ticket: u64) {
        let Some(c) = &self.committer else {
            return;
        };
        let mut committed = c.committed.subscribe();
        // The committer lives as long as the store: the channel cannot close under us.
        let _ = committed.wait_for(|&done| done >= ticket).await;
    }
}

/// Applies a group of writes in one durable transaction.
fn commit(db: &Database, group: Vec<(u64, Op)>) -> Result<()> {
    let w = db.begin_write()?;
    {
        let mut streams = w.open_table(STREAMS)?;
        let mut keys = w.open_table(KEYS)?;
        for (_, op) in &group {
            match op {
                Op::Save { id, record, key } => {
                    streams.insert(id.as_str(), record.as_slice())?;
                    if let Some((k, answer, at)) = key {
                        keys.insert((id.as_str(), k.as_str()), format!("{at} {answer}").as_str())?;
                    }
                }
                Op::Delete(ids) => {
                    for id in ids {
                        streams.remove(id.as_str())?;
                    }
                    for id in ids {
                        // The stream's keys are one range of the table: (id, "") onwards.
                        let mut doomed = Vec::new();
                        for entry in keys.range((id.as_str(), "")..)? {
                            let (k, _) = entry?;
                            let (owner, key) = k.value();
                            if owner != id.as_str() {
                                break;
                            }
                            doomed.push(key.to_string());
                        }
                        for key in doomed {
                            keys.remove((id.as_str(), key.as_str()))?;
                        }
                    }
                }
                Op::ForgetKeys(forget) => {
                    for (id, k) in forget {
                        keys.remove((id.as_str(), k.as_str()))?;
                    }
                }
            }
        }
    }
    w.commit()?;
    Ok(())
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The default place for the store: `$XDG_DATA_HOME/microbatch`, else
/// `~/.local/share/microbatch` (`~/Library/Application Support/microbatch` on macOS).
pub(crate) fn default_data_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("microbatch"));
    }
    let home = PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?);
    Some(if cfg!(target_os = "macos") {
        home.join("Library/Application Support/microbatch")
    } else {
        home.join(".local/share/microbatch")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_in(store: &Store) -> Vec<(String, String)> {
        let r = store.db.as_ref().unwrap().begin_read().unwrap();
        let t = r.open_table(KEYS).unwrap();
        t.iter()
            .unwrap()
            .map(|e| {
                let (k, _) = e.unwrap();
                let (id, key) = k.value();
                (id.to_string(), key.to_string())
            })
            .collect()
    }

    #[tokio::test]
    async fn deleting_a_stream_removes_its_keys_and_only_its_keys() {
        let dir = std::env::temp_dir().join(format!("mb-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let p = Partial::EMPTY;
        // "s1" and "s10" share a prefix: a range that stopped at the wrong place would take
        // the other's keys.
        for (id, keys) in [("s1", ["a", "b"]), ("s10", ["a", "c"]), ("s2", ["z", "y"])] {
            for k in keys {
                let t = store
                    .save(id, &p, 1, "me", None, Some((k, "{}", 7)))
                    .unwrap();
                store.wait(t).await;
            }
        }
        assert_eq!(keys_in(&store).len(), 6);
        store.wait(store.delete(&["s1".to_string()])).await;
        let left = keys_in(&store);
        assert_eq!(
            left,
            [("s10", "a"), ("s10", "c"), ("s2", "y"), ("s2", "z")]
                .map(|(i, k)| (i.to_string(), k.to_string()))
        );
        store
            .wait(store.forget_keys(vec![("s2".to_string(), "y".to_string())]))
            .await;
        assert_eq!(keys_in(&store).len(), 3);
        // Times come back with the answers.
        let loaded = store.load().unwrap();
        let s10 = &loaded.iter().find(|(id, _)| id == "s10").unwrap().1;
        assert_eq!(s10.keys["a"], ("{}".to_string(), 7));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
