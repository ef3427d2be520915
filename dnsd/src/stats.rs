//! Statistics of answered queries, kept off the query path: the handler hands each answered
//! query to a [`Recorder`] through a bounded channel (a full channel drops the record and
//! counts it, it never makes a query wait), and one thread updates the top lists and
//! latency histograms and appends to the [`QueryLog`].
//!
//! Memory is bounded: each top list keeps at most twice its capacity of keys (a
//! space-saving summary with batched eviction), and there is one histogram per upstream
//! and per outcome.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, RecordType};
use tokio::sync::mpsc;

use crate::compiled::Rule;
use crate::policy::Source;
use crate::querylog::{Outcome, QueryLog, Record};
use crate::upstream::Forwarded;

/// Records waiting for the writer at most (counted across batches: single records from the
/// hickory path, a receive batch of records from the UDP fast path).
const CHANNEL: usize = 8192;
/// Records taken from the channel at once.
const BATCH: usize = 512;
/// Written records are flushed to the disk at most this often.
const SYNC_EVERY: Duration = Duration::from_secs(5);
/// Keys tracked per top list (and up to twice as many between evictions).
pub const TOP_CAPACITY: usize = 1000;

/// Upper bounds of the latency buckets, in microseconds (Prometheus `le`).
pub const LATENCY_BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Per bucket, not cumulative; the last one is above every bound.
    counts: [u64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: u64,
    max_us: u64,
}

impl Histogram {
    pub fn observe(&mut self, us: u64) {
        let i = LATENCY_BOUNDS_US.partition_point(|b| *b < us);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// `(bound, cumulative count)` per bucket, the last bound `None` (+Inf).
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                total += c;
                (LATENCY_BOUNDS_US.get(i).copied(), total)
            })
            .collect()
    }

    /// The `q` quantile (0..=1) in microseconds: the upper bound of the bucket it falls in
    /// (the largest sample seen for the last bucket, or when that is smaller). `None`
    /// without samples.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        // The rank of the sample, from 1.
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let (bound, _) = self
            .cumulative()
            .into_iter()
            .find(|(_, c)| *c >= rank)
            .unwrap_or((None, n));
        Some(bound.map_or(self.max_us, |b| b.min(self.max_us)))
    }
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    count: u64,
    /// How much `count` may overstate (the count the key was given when it came in).
    error: u64,
}

/// The most frequent keys of a stream in bounded memory: exact while fewer than twice the
/// capacity of keys were seen; after that, the rarest half is evicted at once and a new
/// key starts at the highest count evicted (space-saving: counts never understate, and
/// overstate by at most `error`).
#[derive(Debug, Clone)]
pub struct TopK<K> {
    capacity: usize,
    map: HashMap<K, Counter>,
    floor: u64,
}

/// One entry of a top list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Top<K> {
    pub key: K,
    pub count: u64,
    /// The count may be this much too high.
    pub error: u64,
}

impl<K: Hash + Eq + Clone + Ord> TopK<K> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            map: HashMap::new(),
            floor: 0,
        }
    }

    pub fn add<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(c) = self.map.get_mut(key) {
            c.count += 1;
            return;
        }
        if self.map.len() >= 2 * self.capacity {
            self.evict();
        }
        self.map.insert(
            key.to_owned(),
            Counter {
                count: self.floor + 1,
                error: self.floor,
            },
        );
    }

    fn evict(&mut self) {
        let mut entries: Vec<(K, Counter)> = self.map.drain().collect();
        if entries.len() > self.capacity {
            // Highest counts first; the entry at `capacity` is the highest of the evicted.
            entries.select_nth_unstable_by(self.capacity, |a, b| {
                b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0))
            });
            if let Some((_, c)) = entries.get(self.capacity) {
                self.floor = self.floor.max(c.count);
            }
            entries.truncate(self.capacity);
        }
        self.map.extend(entries);
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The `n` highest counts, highest first (ties by key).
    pub fn top(&self, n: usize) -> Vec<Top<K>> {
        let mut v: Vec<Top<K>> = self
            .map
            .iter()
            .map(|(k, c)| Top {
                key: k.clone(),
                count: c.count,
                error: c.error,
            })
            .collect();
        v.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        v.truncate(n);
        v
    }
}

/// What the writer learns from the records.
#[derive(Debug, Clone)]
pub struct Tables {
    pub domains: TopK<String>,
    pub blocked: TopK<String>,
    pub clients: TopK<IpAddr>,
    /// Answer times per upstream, for forwarded queries.
    pub upstream_latency: BTreeMap<String, Histogram>,
    /// Answer times to clients, per outcome (`blocked`, `cached`, ...).
    pub query_latency: BTreeMap<&'static str, Histogram>,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            domains: TopK::new(TOP_CAPACITY),
            blocked: TopK::new(TOP_CAPACITY),
            clients: TopK::new(TOP_CAPACITY),
            upstream_latency: BTreeMap::new(),
            query_latency: BTreeMap::new(),
        }
    }
}

impl Tables {
    pub fn add(&mut self, e: &Event) {
        let r = &e.record;
        self.domains.add(r.name.as_str());
        self.clients.add(&r.client);
        if matches!(r.outcome, Outcome::Blocked { .. }) {
            self.blocked.add(r.name.as_str());
        }
        if let (Outcome::Forwarded { upstream }, Some(l)) = (&r.outcome, e.upstream_latency) {
            // Upstream labels come from the config and DHCP: a handful.
            let us = u64::try_from(l.as_micros()).unwrap_or(u64::MAX);
            match self.upstream_latency.get_mut(upstream) {
                Some(h) => h.observe(us),
                None => {
                    let mut h = Histogram::default();
                    h.observe(us);
                    self.upstream_latency.insert(upstream.clone(), h);
                }
            }
        }
        self.query_latency
            .entry(r.outcome.kind())
            .or_default()
            .observe(u64::from(r.latency_us));
    }
}

/// One answered query, for the log and the statistics.
#[derive(Debug, Clone)]
pub struct Event {
    pub record: Record,
    /// How long the upstream took, for a forwarded query.
    pub upstream_latency: Option<Duration>,
}

/// What the handler learned about one query, filled in as it answers.
#[derive(Debug, Default)]
pub struct Note {
    pub query: Option<(LowerName, RecordType)>,
    /// `None`: rejected before an answer was looked for.
    pub outcome: Option<Outcome>,
    pub upstream_latency: Option<Duration>,
    /// Set when the cache answered, for the UDP fast path's copy of the answer.
    pub cache_hit: Option<crate::fast::CacheHit>,
}

impl Note {
    pub fn blocked_by(&mut self, rule: Option<(Source, Rule)>) {
        let (source, rule) =
            rule.map_or_else(Default::default, |(s, r)| (s.to_string(), r.to_string()));
        self.outcome = Some(Outcome::Blocked { source, rule });
    }

    /// Blocked because the answer's CNAME chain reaches `target`: the source says so
    /// (`list ads via CNAME tracker.example`), so the log and `applctl dns log` name it.
    pub fn blocked_via_cname(&mut self, rule: Option<(Source, Rule)>, target: &str) {
        let (source, rule) =
            rule.map_or_else(Default::default, |(s, r)| (s.to_string(), r.to_string()));
        let source = if source.is_empty() {
            format!("CNAME {target}")
        } else {
            format!("{source} via CNAME {target}")
        };
        self.outcome = Some(Outcome::Blocked { source, rule });
    }

    pub fn forwarded(&mut self, f: &Forwarded) {
        self.outcome = Some(Outcome::Forwarded {
            upstream: f.upstream.clone(),
        });
        self.upstream_latency = Some(f.latency);
    }
}

/// The sending side: cheap to call from the query path.
#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Vec<Event>>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    tables: Mutex<Tables>,
    /// Swapped by [`Recorder::resize_log`].
    log: arc_swap::ArcSwapOption<QueryLog>,
    /// Where the log is (or would be, while it is off).
    log_path: Mutex<Option<std::path::PathBuf>>,
    /// Held by the writer while it appends, and by a resize while it copies and swaps:
    /// no record lands in a ring being copied.
    writing: Mutex<()>,
    /// Records not taken because the writer was behind.
    dropped: AtomicU64,
    /// Records the writer could not write to the log.
    write_errors: AtomicU64,
    /// Records the writer has handled.
    handled: AtomicU64,
    /// Records handed over and not yet taken by the writer, bounded by [`CHANNEL`].
    queued: std::sync::atomic::AtomicUsize,
}

impl Recorder {
    /// Starts the writer thread; it ends when the recorder is dropped.
    pub fn start(log: Option<QueryLog>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let shared = Arc::new(Shared {
            log_path: Mutex::new(log.as_ref().map(|l| l.path().to_owned())),
            log: arc_swap::ArcSwapOption::from_pointee(log),
            ..Default::default()
        });
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("dnsd-querylog".into())
            .spawn(move || {
                // In the background: under a load that keeps the core busy the writer falls
                // behind and records are dropped and counted, rather than queries delayed.
                crate::background::lower_priority();
                writer(rx, &s);
            })?;
        Ok(Self { tx, shared })
    }

    /// Logs an answered query. Packets without a question are not logged.
    pub fn finish(&self, note: Note, client: IpAddr, rcode: ResponseCode, started: Instant) {
        let Some((name, qtype)) = note.query else {
            return;
        };
        let name = name.to_string();
        let name = match name.strip_suffix('.') {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => name,
        };
        self.record(event(
            name,
            qtype,
            note.outcome.unwrap_or(Outcome::Rejected),
            note.upstream_latency,
            client,
            rcode,
            started,
        ));
    }

    /// Hands a record to the writer, or counts it as dropped when the writer is behind.
    pub fn record(&self, e: Event) {
        self.record_batch(vec![e]);
    }

    /// Hands records to the writer at once (one wake-up for a whole receive batch of the
    /// UDP fast path), or counts them as dropped when the writer is behind.
    pub fn record_batch(&self, events: Vec<Event>) {
        let n = events.len();
        if n == 0 {
            return;
        }
        let queued = &self.shared.queued;
        if queued.fetch_add(n, Ordering::Relaxed) + n > CHANNEL || self.tx.try_send(events).is_err()
        {
            queued.fetch_sub(n, Ordering::Relaxed);
            self.shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub fn tables(&self) -> MutexGuard<'_, Tables> {
        // The tables hold only counters: a panic in the writer cannot leave them unusable.
        self.shared.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn log(&self) -> Option<Arc<QueryLog>> {
        self.shared.log.load_full()
    }

    /// Where a log turned on by [`Recorder::resize_log`] is made, when it was off at start.
    pub fn set_log_path(&self, path: std::path::PathBuf) {
        *self
            .shared
            .log_path
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// Gives the query log `size` bytes (`dns.query_log_size`) while dnsd runs: a new ring
    /// with the newest records that fit, the log turned off (its file left), or turned on
    /// (opened as at a start). The writer waits meanwhile; records that come in then wait
    /// in its channel, or are dropped and counted when it fills. On an error the log in
    /// use stays.
    pub fn resize_log(&self, size: u64) -> Result<(), crate::querylog::QueryLogError> {
        let _writing = self
            .shared
            .writing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self.shared.log.load_full();
        let slots = QueryLog::slots_for(size);
        let new = match &current {
            Some(log) if log.capacity() == slots => return Ok(()),
            Some(log) => log.resized(size)?,
            None if slots < 2 => return Ok(()),
            None => {
                let path = self
                    .shared
                    .log_path
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match path {
                    Some(p) => QueryLog::open(&p, size)?,
                    None => return Ok(()),
                }
            }
        };
        tracing::info!(
            records = new.as_ref().map_or(0, |l| l.len()),
            capacity = new.as_ref().map_or(0, |l| l.capacity()),
            "query log resized"
        );
        self.shared.log.store(new.map(Arc::new));
        Ok(())
    }

    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Ordering::Relaxed)
    }

    pub fn handled(&self) -> u64 {
        self.shared.handled.load(Ordering::Relaxed)
    }
}

/// The record of an answered query whose name is already in the log's form (lowercase,
/// no final dot).
#[allow(clippy::too_many_arguments)]
pub fn event(
    name: String,
    qtype: RecordType,
    outcome: Outcome,
    upstream_latency: Option<Duration>,
    client: IpAddr,
    rcode: ResponseCode,
    started: Instant,
) -> Event {
    event_at(
        name,
        qtype,
        outcome,
        upstream_latency,
        client,
        rcode,
        wall_ms(),
        u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX),
    )
}

/// Milliseconds since the Unix epoch, as records keep time.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// [`event`] with the time and the latency already known (the UDP fast path reads the
/// clock once per batch).
#[allow(clippy::too_many_arguments)]
pub fn event_at(
    name: String,
    qtype: RecordType,
    outcome: Outcome,
    upstream_latency: Option<Duration>,
    client: IpAddr,
    rcode: ResponseCode,
    time_ms: u64,
    latency_us: u32,
) -> Event {
    Event {
        record: Record {
            time_ms,
            client,
            name,
            qtype,
            outcome,
            rcode,
            latency_us,
        },
        upstream_latency,
    }
}

fn writer(mut rx: mpsc::Receiver<Vec<Event>>, shared: &Shared) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut records = Vec::with_capacity(BATCH);
    let mut last_sync = Instant::now();
    let mut dirty = false;
    while let Some(first) = rx.blocking_recv() {
        batch.extend(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        {
            let mut t = shared.tables.lock().unwrap_or_else(|e| e.into_inner());
            for e in &batch {
                t.add(e);
            }
        }
        let n = batch.len() as u64;
        let writing = shared.writing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = shared.log.load_full() {
            records.extend(batch.drain(..).map(|e| e.record));
            match log.append(&records) {
                Ok(()) => dirty = true,
                Err(e) => {
                    let before = shared.write_errors.fetch_add(n, Ordering::Relaxed);
                    // A full or failing disk would log on every batch; once per 10k is enough.
                    if before % 10_000 < n {
                        tracing::warn!(path = %log.path().display(), error = %e, "cannot write the query log");
                    }
                }
            }
            records.clear();
            if dirty && last_sync.elapsed() >= SYNC_EVERY {
                if let Err(e) = log.sync() {
                    tracing::warn!(path = %log.path().display(), error = %e, "cannot flush the query log");
                }
                last_sync = Instant::now();
                dirty = false;
            }
        }
        drop(writing);
        batch.clear();
        shared.handled.fetch_add(n, Ordering::Relaxed);
    }
    if let Some(log) = shared.log.load_full()
        && dirty
        && let Err(e) = log.sync()
    {
        tracing::warn!(path = %log.path().display(), error = %e, "cannot flush the query log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_exact_below_its_capacity() {
        let mut t = TopK::<String>::new(10);
        for (name, n) in [("a", 5), ("b", 3), ("c", 7), ("d", 1)] {
            for _ in 0..n {
                t.add(name);
            }
        }
        let top: Vec<(String, u64, u64)> = t
            .top(3)
            .into_iter()
            .map(|e| (e.key, e.count, e.error))
            .collect();
        assert_eq!(
            top,
            [("c".into(), 7, 0), ("a".into(), 5, 0), ("b".into(), 3, 0)]
        );
    }

    #[test]
    fn top_k_keeps_heavy_hitters_among_many_rare_keys_in_bounded_memory() {
        let mut t = TopK::<String>::new(50);
        let mut max_len = 0;
        for i in 0..100_000u64 {
            // Every 10th query is one of three popular names; the rest are all distinct.
            let name = match i % 10 {
                0 => "popular-0".to_string(),
                3 => "popular-1".to_string(),
                6 if i % 20 == 6 => "popular-2".to_string(),
                _ => format!("rare-{i}"),
            };
            t.add(name.as_str());
            max_len = max_len.max(t.len());
        }
        assert!(max_len <= 100, "{max_len} keys held");
        let top = t.top(3);
        let keys: Vec<&str> = top.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["popular-0", "popular-1", "popular-2"]);
        for e in &top {
            let truth = match e.key.as_str() {
                "popular-2" => 5_000,
                _ => 10_000,
            };
            // Never below the truth, and above it by at most the reported error.
            assert!(e.count >= truth && e.count - e.error <= truth, "{e:?}");
        }
    }

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..98 {
            h.observe(80);
        }
        h.observe(3_000);
        h.observe(7_000_000);
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), Some(100));
        assert_eq!(h.quantile(0.99), Some(5_000));
        assert_eq!(h.quantile(1.0), Some(7_000_000));
        let c = h.cumulative();
        assert_eq!(c.first(), Some(&(Some(100), 98)));
        assert_eq!(c.last(), Some(&(None, 100)));
        assert_eq!(h.sum_us(), 98 * 80 + 3_000 + 7_000_000);
    }

    fn event(name: &str, client: &str, outcome: Outcome, us: u32) -> Event {
        Event {
            record: Record {
                time_ms: 0,
                client: client.parse().unwrap(),
                name: name.into(),
                qtype: RecordType::A,
                outcome,
                rcode: ResponseCode::NoError,
                latency_us: us,
            },
            upstream_latency: Some(Duration::from_micros(u64::from(us))),
        }
    }

    #[test]
    fn the_writer_fills_the_tables_and_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueryLog::open(&dir.path().join("q"), 100 * 256).unwrap();
        let r = Recorder::start(log).unwrap();
        let blocked = Outcome::Blocked {
            source: "list ads".into(),
            rule: "ads.example".into(),
        };
        let fwd = Outcome::Forwarded {
            upstream: "127.0.0.1:53".into(),
        };
        r.record(event("ads.example", "10.0.0.1", blocked.clone(), 20));
        r.record(event("ads.example", "10.0.0.2", blocked, 30));
        r.record(event("www.example", "10.0.0.1", fwd, 2_000));
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.handled() < 3 {
            assert!(Instant::now() < deadline, "the writer did not catch up");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = r.tables().clone();
        assert_eq!(t.domains.top(1)[0].key, "ads.example");
        assert_eq!(t.blocked.top(5).len(), 1);
        assert_eq!(t.clients.top(1)[0].key.to_string(), "10.0.0.1");
        assert_eq!(t.upstream_latency["127.0.0.1:53"].count(), 1);
        assert_eq!(t.query_latency["blocked"].count(), 2);
        let log = r.log().unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(r.dropped(), 0);
    }
}
