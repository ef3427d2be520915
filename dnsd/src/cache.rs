//! The answer cache: upstream responses kept for their TTL, bounded in entries (CLOCK
//! eviction), with serve-stale (RFC 8767) and prefetch of popular entries.
//!
//! Time is passed in by the caller (`now`), so tests drive it without sleeping.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// TTL of answers served stale, as RFC 8767 recommends.
pub const STALE_TTL: u32 = 30;
/// How long after expiry an entry may still be served stale.
const STALE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Cap when `dns.max_ttl` is not set.
const DEFAULT_MAX_TTL: u32 = 24 * 3600;
/// An entry must have been hit this often before it is worth refreshing ahead of expiry.
pub const PREFETCH_MIN_HITS: u32 = 3;
/// Above this capacity the cache is split in shards, so that the cores do not contend on
/// one lock; below it, one shard keeps eviction exact.
const SHARD_THRESHOLD: usize = 1024;
const SHARDS: usize = 16;

/// What a cached response answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Lowercase.
    pub name: Name,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    /// The client's DNSSEC OK bit: with it, answers carry RRSIGs; without, they must not.
    pub dnssec_ok: bool,
    /// The client's Checking Disabled bit: the query is forwarded with it, so a validating
    /// upstream answers a CD=1 query with data it would refuse (SERVFAIL) to a CD=0 one.
    pub checking_disabled: bool,
}

impl Key {
    pub fn new(name: &Name, qtype: RecordType, qclass: DNSClass, dnssec_ok: bool) -> Self {
        Self {
            name: name.to_lowercase(),
            qtype,
            qclass,
            dnssec_ok,
            checking_disabled: false,
        }
    }

    /// The same key for a query with the CD bit as given.
    #[must_use]
    pub fn checking_disabled(mut self, cd: bool) -> Self {
        self.checking_disabled = cd;
        self
    }
}

/// Cache settings, from the `dns` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Entries; 0 turns the cache off.
    pub capacity: usize,
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub serve_stale: bool,
}

impl CacheConfig {
    pub fn from_dns(dns: &appliance::model::Dns) -> Self {
        let secs = |d: &Option<appliance::types::Duration>| {
            d.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        };
        Self {
            capacity: usize::try_from(dns.cache_size).unwrap_or(usize::MAX),
            min_ttl: secs(&dns.min_ttl).unwrap_or(0),
            max_ttl: secs(&dns.max_ttl).unwrap_or(DEFAULT_MAX_TTL),
            serve_stale: dns.serve_stale,
        }
    }
}

/// A fresh hit.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The response with TTLs lowered by the time spent in the cache.
    pub message: Message,
    /// The entry is popular and about to expire: refresh it in the background.
    pub prefetch: bool,
    /// When the entry was stored, when it expires, and its TTL: the UDP fast path keeps
    /// the answer until the entry would ask for a prefetch.
    pub inserted: Instant,
    pub expires: Instant,
    pub ttl: u32,
    /// Hits of the entry so far, this one included.
    pub hits: u32,
}

#[derive(Debug)]
struct Entry {
    key: Key,
    message: Message,
    inserted: Instant,
    ttl: u32,
    hits: u32,
    referenced: bool,
    prefetch_sent: bool,
}

impl Entry {
    fn expires(&self) -> Instant {
        self.inserted + Duration::from_secs(u64::from(self.ttl))
    }
}

/// One shard: a CLOCK ring over a slab of entries.
#[derive(Debug, Default)]
struct Shard {
    slots: Vec<Entry>,
    index: HashMap<Key, usize>,
    hand: usize,
}

impl Shard {
    fn insert(&mut self, capacity: usize, entry: Entry, stale_ok: bool, now: Instant) {
        if let Some(&i) = self.index.get(&entry.key) {
            if let Some(slot) = self.slots.get_mut(i) {
                let hits = slot.hits;
                *slot = entry;
                slot.hits = hits;
            }
            return;
        }
        if self.slots.len() < capacity {
            self.index.insert(entry.key.clone(), self.slots.len());
            self.slots.push(entry);
            return;
        }
        let victim = self.victim(stale_ok, now);
        if let Some(slot) = self.slots.get_mut(victim) {
            self.index.remove(&slot.key);
            self.index.insert(entry.key.clone(), victim);
            *slot = entry;
        }
    }

    /// Second chance: skip recently used entries once, but take expired ones at once.
    /// Two turns of the hand always find one, since the first clears every bit.
    fn victim(&mut self, stale_ok: bool, now: Instant) -> usize {
        let n = self.slots.len();
        for _ in 0..2 * n {
            let i = self.hand % n.max(1);
            self.hand = (i + 1) % n.max(1);
            let Some(slot) = self.slots.get_mut(i) else {
                return 0;
            };
            let dead = if stale_ok {
                slot.expires() + STALE_WINDOW <= now
            } else {
                slot.expires() <= now
            };
            if dead || !slot.referenced {
                return i;
            }
            slot.referenced = false;
        }
        self.hand
    }

    fn get_mut(&mut self, key: &Key) -> Option<&mut Entry> {
        let i = *self.index.get(key)?;
        self.slots.get_mut(i)
    }
}

/// The shards of one capacity; replaced whole when the capacity changes.
#[derive(Debug)]
struct Layout {
    capacity: usize,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl Layout {
    fn new(capacity: usize) -> Self {
        let n = if capacity >= SHARD_THRESHOLD {
            SHARDS
        } else {
            1
        };
        Self {
            capacity,
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(n),
        }
    }

    fn shard(&self, key: &Key) -> Option<std::sync::MutexGuard<'_, Shard>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let i = usize::try_from(h.finish() % self.shards.len().max(1) as u64).unwrap_or(0);
        // A panic while holding the lock leaves a consistent slab (every write is one
        // assignment), so the poison flag carries no information here.
        self.shards
            .get(i)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The cache. Shared by every query task; each shard has its own lock.
#[derive(Debug)]
pub struct Cache {
    /// The TTL bounds and serve-stale switch, changed in place by an apply
    /// ([`Cache::set_policy`]).
    min_ttl: AtomicU32,
    max_ttl: AtomicU32,
    serve_stale: AtomicBool,
    /// The shards, swapped whole by [`Cache::resize`].
    layout: ArcSwap<Layout>,
    /// One resize (or flush) at a time.
    resizing: Mutex<()>,
    /// Bumped by [`Cache::flush`]: an answer asked for before a flush (from an upstream
    /// the apply removed) is not stored after it ([`Cache::insert_since`]).
    epoch: AtomicU64,
}

impl Cache {
    pub fn new(cfg: CacheConfig) -> Self {
        Self {
            min_ttl: AtomicU32::new(cfg.min_ttl),
            max_ttl: AtomicU32::new(cfg.max_ttl),
            serve_stale: AtomicBool::new(cfg.serve_stale),
            layout: ArcSwap::from_pointee(Layout::new(cfg.capacity)),
            resizing: Mutex::new(()),
            epoch: AtomicU64::new(0),
        }
    }

    /// The flush count, taken before asking upstream, for [`Cache::insert_since`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Forgets every entry, stale ones included, and refuses the answers of queries
    /// that were already upstream: the upstreams changed, and what the old ones said
    /// (a conditional forward's private names, another resolver's view) must not be
    /// served again, not even stale.
    pub fn flush(&self) {
        let _one = self.resizing.lock().unwrap_or_else(|e| e.into_inner());
        // Before the swap: an insert that finds the new shards also finds the new epoch.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let old = self.layout.load_full();
        self.layout.store(Arc::new(Layout::new(old.capacity)));
        tracing::info!(capacity = old.capacity, "cache flushed");
        // The old shards go with the last query holding them.
        crate::reclaim::later(old);
    }

    pub fn config(&self) -> CacheConfig {
        CacheConfig {
            capacity: self.layout.load().capacity,
            min_ttl: self.min_ttl.load(Ordering::Relaxed),
            max_ttl: self.max_ttl.load(Ordering::Relaxed),
            serve_stale: self.serve_stale.load(Ordering::Relaxed),
        }
    }

    /// Takes the TTL bounds and `serve_stale` of a new config for what is cached and
    /// answered from now on (entries already cached keep the TTL they were given), and
    /// its capacity ([`Cache::resize`]).
    pub fn set_policy(&self, cfg: CacheConfig) {
        self.min_ttl.store(cfg.min_ttl, Ordering::Relaxed);
        self.max_ttl.store(cfg.max_ttl, Ordering::Relaxed);
        self.serve_stale.store(cfg.serve_stale, Ordering::Relaxed);
        self.resize(cfg.capacity, Instant::now());
    }

    /// Gives the cache room for `capacity` entries, keeping the entries that fit: those
    /// still usable (fresh, or within the stale window when serve-stale is on), the
    /// recently used first, then the most hit. Entries move shard by shard: a query
    /// meanwhile may miss an entry being moved and ask upstream, and an answer stored
    /// in the old shards after they were emptied is not kept. Nothing waits on a lock
    /// held longer than one shard's move.
    pub fn resize(&self, capacity: usize, now: Instant) {
        let _one = self.resizing.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.layout.load_full();
        if old.capacity == capacity {
            return;
        }
        let stale_ok = self.serve_stale.load(Ordering::Relaxed);
        let mut entries: Vec<Entry> = Vec::new();
        for shard in &old.shards {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            let Shard { slots, index, .. } = std::mem::take(&mut *s);
            drop(s);
            drop(index);
            entries.extend(slots.into_iter().filter(|e| {
                let until = if stale_ok {
                    e.expires() + STALE_WINDOW
                } else {
                    e.expires()
                };
                until > now
            }));
        }
        let before = entries.len();
        entries.sort_by_key(|e| std::cmp::Reverse((e.referenced, e.hits)));
        let new = Layout::new(capacity);
        let mut kept = 0usize;
        for e in entries {
            let Some(mut shard) = new.shard(&e.key) else {
                break;
            };
            if shard.slots.len() < new.per_shard {
                let at = shard.slots.len();
                shard.index.insert(e.key.clone(), at);
                shard.slots.push(e);
                kept += 1;
            }
        }
        self.layout.store(Arc::new(new));
        tracing::info!(
            capacity,
            was = old.capacity,
            kept,
            dropped = before - kept,
            "cache resized"
        );
    }

    pub fn capacity(&self) -> usize {
        self.layout.load().capacity
    }

    pub fn len(&self) -> usize {
        self.layout
            .load()
            .shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).slots.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `message` (an upstream response) if it can be cached.
    pub fn insert(&self, key: Key, message: &Message, now: Instant) {
        self.insert_since(key, message, now, None);
    }

    /// [`Cache::insert`] of an answer asked for at `epoch` ([`Cache::epoch`]): dropped
    /// when the cache was flushed since.
    pub fn insert_since(&self, key: Key, message: &Message, now: Instant, epoch: Option<u64>) {
        let layout = self.layout.load();
        if layout.capacity == 0 {
            return;
        }
        let cfg = self.config();
        let Some(ttl) = ttl_of(message) else {
            return;
        };
        let ttl = ttl.clamp(cfg.min_ttl, cfg.max_ttl.max(cfg.min_ttl));
        if ttl == 0 {
            return;
        }
        let mut message = message.clone();
        let clamp = |r: &mut Record| r.ttl = r.ttl.clamp(cfg.min_ttl, ttl);
        message.answers.iter_mut().for_each(clamp);
        message.authorities.iter_mut().for_each(clamp);
        message.additionals.iter_mut().for_each(clamp);
        let entry = Entry {
            key: key.clone(),
            message,
            inserted: now,
            ttl,
            hits: 0,
            referenced: false,
            prefetch_sent: false,
        };
        if let Some(mut shard) = layout.shard(&key) {
            // Checked under the shard's lock: a flush bumps the epoch before it swaps
            // the shards, so an insert either sees the new epoch or lands in shards
            // that are thrown away.
            if epoch.is_some_and(|e| e != self.epoch()) {
                return;
            }
            shard.insert(layout.per_shard, entry, cfg.serve_stale, now);
        }
    }

    /// Applies `dns.min_ttl`/`max_ttl` to an answer going out, so that clients keep it as
    /// long as dnsd does.
    pub fn clamp_ttls(&self, m: &mut Message) {
        let cfg = self.config();
        let (lo, hi) = (cfg.min_ttl, cfg.max_ttl.max(cfg.min_ttl));
        for_each_record(m, |r| r.ttl = r.ttl.clamp(lo, hi));
    }

    /// A fresh answer for `key`, if cached and not expired.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Hit> {
        let layout = self.layout.load();
        let mut shard = layout.shard(key)?;
        let e = shard.get_mut(key)?;
        let expires = e.expires();
        if expires <= now {
            return None;
        }
        e.hits = e.hits.saturating_add(1);
        e.referenced = true;
        let elapsed = u32::try_from(now.duration_since(e.inserted).as_secs()).unwrap_or(u32::MAX);
        let remaining = expires.duration_since(now);
        let prefetch = !e.prefetch_sent
            && e.hits >= PREFETCH_MIN_HITS
            && remaining.as_millis() * 10 <= u128::from(e.ttl) * 1000;
        if prefetch {
            e.prefetch_sent = true;
        }
        let (inserted, ttl, hits) = (e.inserted, e.ttl, e.hits);
        let mut message = e.message.clone();
        drop(shard);
        for_each_record(&mut message, |r| r.ttl = r.ttl.saturating_sub(elapsed));
        Some(Hit {
            message,
            prefetch,
            inserted,
            expires,
            ttl,
            hits,
        })
    }

    /// The answer cached for `key`, fresh or still within the stale window, as stored and
    /// without counting a hit: what `check` looks into.
    pub fn peek(&self, key: &Key, now: Instant) -> Option<Message> {
        let layout = self.layout.load();
        let mut shard = layout.shard(key)?;
        let e = shard.get_mut(key)?;
        (e.expires() + STALE_WINDOW > now).then(|| e.message.clone())
    }

    /// An expired answer for `key`, with short TTLs, for when every upstream failed.
    pub fn get_stale(&self, key: &Key, now: Instant) -> Option<Message> {
        if !self.serve_stale.load(Ordering::Relaxed) {
            return None;
        }
        let layout = self.layout.load();
        let mut shard = layout.shard(key)?;
        let e = shard.get_mut(key)?;
        if e.expires() + STALE_WINDOW <= now {
            return None;
        }
        e.referenced = true;
        let mut message = e.message.clone();
        drop(shard);
        for_each_record(&mut message, |r| r.ttl = r.ttl.min(STALE_TTL));
        Some(message)
    }
}

fn for_each_record(m: &mut Message, mut f: impl FnMut(&mut Record)) {
    m.answers.iter_mut().for_each(&mut f);
    m.authorities.iter_mut().for_each(&mut f);
    m.additionals.iter_mut().for_each(&mut f);
}

/// How long a response may be cached: the smallest TTL of its answer and authority
/// records, or for a negative answer the SOA's (RFC 2308); `None` when it must not be.
pub fn ttl_of(m: &Message) -> Option<u32> {
    if m.metadata.truncation {
        return None;
    }
    match m.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        _ => return None,
    }
    let negative = m.metadata.response_code == ResponseCode::NXDomain || m.answers.is_empty();
    if negative {
        return m.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        });
    }
    m.answers.iter().chain(&m.authorities).map(|r| r.ttl).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::soa;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn key(s: &str) -> Key {
        Key::new(&n(s), RecordType::A, DNSClass::IN, false)
    }

    fn response(name: &str, ttls: &[u32]) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(n(name), RecordType::A));
        for (i, t) in ttls.iter().enumerate() {
            m.add_answer(Record::from_rdata(
                n(name),
                *t,
                RData::A(A::new(192, 0, 2, u8::try_from(i).unwrap())),
            ));
        }
        m
    }

    fn cfg(capacity: usize) -> CacheConfig {
        CacheConfig {
            capacity,
            min_ttl: 0,
            max_ttl: DEFAULT_MAX_TTL,
            serve_stale: true,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn keys_ignore_case_and_separate_type_class_and_do() {
        assert_eq!(key("WWW.Example.org."), key("www.example.org."));
        let a = Key::new(&n("x."), RecordType::A, DNSClass::IN, false);
        assert_ne!(a, Key::new(&n("x."), RecordType::AAAA, DNSClass::IN, false));
        assert_ne!(a, Key::new(&n("x."), RecordType::A, DNSClass::CH, false));
        assert_ne!(a, Key::new(&n("x."), RecordType::A, DNSClass::IN, true));
        assert_ne!(a, a.clone().checking_disabled(true));
    }

    #[test]
    fn an_answer_cached_for_cd_is_not_served_without_cd() {
        let c = Cache::new(cfg(10));
        let t0 = Instant::now();
        let cd = key("bogus.example.").checking_disabled(true);
        c.insert(cd.clone(), &response("bogus.example.", &[300]), t0);
        assert!(c.get(&cd, t0).is_some());
        assert!(c.get(&key("bogus.example."), t0).is_none());
        assert!(
            c.get_stale(&key("bogus.example."), t0 + secs(400))
                .is_none()
        );
    }

    #[test]
    fn hits_count_down_ttls_and_expire() {
        let c = Cache::new(cfg(10));
        let t0 = Instant::now();
        c.insert(key("a.example."), &response("a.example.", &[300, 100]), t0);
        let hit = c.get(&key("A.example."), t0 + secs(40)).unwrap();
        let ttls: Vec<u32> = hit.message.answers.iter().map(|r| r.ttl).collect();
        assert_eq!(ttls, [60, 60], "entry lives for the smallest TTL");
        assert!(c.get(&key("a.example."), t0 + secs(100)).is_none());
        assert!(c.get(&key("b.example."), t0).is_none());
    }

    #[test]
    fn min_and_max_ttl_clamp() {
        let mut conf = cfg(10);
        conf.min_ttl = 60;
        conf.max_ttl = 600;
        let c = Cache::new(conf);
        let t0 = Instant::now();
        c.insert(key("short."), &response("short.", &[5]), t0);
        c.insert(key("long."), &response("long.", &[86400]), t0);
        let hit = c.get(&key("short."), t0 + secs(30)).unwrap();
        assert_eq!(hit.message.answers[0].ttl, 30);
        assert!(c.get(&key("long."), t0 + secs(599)).is_some());
        assert!(c.get(&key("long."), t0 + secs(600)).is_none());
    }

    #[test]
    fn outgoing_answers_get_the_same_clamps() {
        let mut conf = cfg(10);
        conf.min_ttl = 60;
        conf.max_ttl = 600;
        let c = Cache::new(conf);
        let mut m = response("a.", &[5, 300, 86400]);
        c.clamp_ttls(&mut m);
        let ttls: Vec<u32> = m.answers.iter().map(|r| r.ttl).collect();
        assert_eq!(ttls, [60, 300, 600]);
    }

    #[test]
    fn negative_answers_live_for_the_soa_minimum() {
        let c = Cache::new(cfg(10));
        let t0 = Instant::now();
        let mut m = response("gone.example.", &[]);
        m.metadata.response_code = ResponseCode::NXDomain;
        let mut s = soa(&n("example."), 3600);
        if let RData::SOA(x) = &mut s.data {
            x.minimum = 120;
        }
        m.add_authority(s);
        assert_eq!(ttl_of(&m), Some(120));
        c.insert(key("gone.example."), &m, t0);
        let hit = c.get(&key("gone.example."), t0 + secs(119)).unwrap();
        assert_eq!(hit.message.metadata.response_code, ResponseCode::NXDomain);
        assert!(c.get(&key("gone.example."), t0 + secs(120)).is_none());

        let mut no_soa = response("x.", &[]);
        no_soa.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(ttl_of(&no_soa), None);
    }

    #[test]
    fn failures_and_truncated_answers_are_not_cached() {
        let mut m = response("a.", &[300]);
        m.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(ttl_of(&m), None);
        let mut m = response("a.", &[300]);
        m.metadata.truncation = true;
        assert_eq!(ttl_of(&m), None);
        let c = Cache::new(cfg(10));
        c.insert(key("z."), &response("z.", &[0]), Instant::now());
        assert!(c.is_empty(), "TTL 0 means do not cache");
    }

    #[test]
    fn capacity_is_bounded_and_recently_used_entries_survive() {
        let c = Cache::new(cfg(3));
        let t0 = Instant::now();
        for name in ["a.", "b.", "c."] {
            c.insert(key(name), &response(name, &[300]), t0);
        }
        assert!(c.get(&key("a."), t0).is_some());
        c.insert(key("d."), &response("d.", &[300]), t0);
        assert_eq!(c.len(), 3);
        assert!(c.get(&key("a."), t0).is_some(), "a was used, b was not");
        assert!(c.get(&key("b."), t0).is_none());
        for i in 0..100 {
            let name = format!("n{i}.");
            c.insert(key(&name), &response(&name, &[300]), t0);
        }
        assert_eq!(c.len(), 3);

        let big = Cache::new(cfg(5000));
        for i in 0..20_000 {
            let name = format!("n{i}.");
            big.insert(key(&name), &response(&name, &[300]), t0);
        }
        assert!(big.len() <= 5000 + SHARDS, "{}", big.len());
    }

    #[test]
    fn expired_entries_are_served_stale_only_when_enabled() {
        let t0 = Instant::now();
        let c = Cache::new(cfg(10));
        c.insert(key("a."), &response("a.", &[300]), t0);
        let later = t0 + secs(1000);
        assert!(c.get(&key("a."), later).is_none());
        let stale = c.get_stale(&key("a."), later).unwrap();
        assert_eq!(stale.answers[0].ttl, STALE_TTL);
        assert!(
            c.get_stale(&key("a."), t0 + secs(300) + STALE_WINDOW)
                .is_none()
        );

        let mut off = cfg(10);
        off.serve_stale = false;
        let c = Cache::new(off);
        c.insert(key("a."), &response("a.", &[300]), t0);
        assert!(c.get_stale(&key("a."), later).is_none());
    }

    #[test]
    fn popular_entries_near_expiry_ask_for_one_prefetch() {
        let c = Cache::new(cfg(10));
        let t0 = Instant::now();
        c.insert(key("pop."), &response("pop.", &[100]), t0);
        c.insert(key("rare."), &response("rare.", &[100]), t0);
        for _ in 0..PREFETCH_MIN_HITS {
            assert!(!c.get(&key("pop."), t0 + secs(10)).unwrap().prefetch);
        }
        assert!(!c.get(&key("pop."), t0 + secs(85)).unwrap().prefetch);
        assert!(c.get(&key("pop."), t0 + secs(91)).unwrap().prefetch);
        assert!(
            !c.get(&key("pop."), t0 + secs(92)).unwrap().prefetch,
            "one signal per entry"
        );
        assert!(!c.get(&key("rare."), t0 + secs(95)).unwrap().prefetch);
        // The refresh replaces the entry and keeps its popularity.
        c.insert(key("pop."), &response("pop.", &[100]), t0 + secs(93));
        assert!(c.get(&key("pop."), t0 + secs(185)).unwrap().prefetch);
    }

    #[test]
    fn a_resize_keeps_the_entries_that_fit_the_used_first() {
        let c = Cache::new(cfg(20));
        let t0 = Instant::now();
        for i in 0..10 {
            let name = format!("n{i}.");
            c.insert(key(&name), &response(&name, &[300]), t0);
        }
        c.insert(key("old."), &response("old.", &[1]), t0);
        for name in ["n2.", "n5.", "n7."] {
            assert!(c.get(&key(name), t0).is_some());
        }
        assert!(c.get(&key("n5."), t0).is_some());
        // Grown past the shard threshold: everything usable moves, at a time when
        // `old.` is past its stale window and the others are not.
        c.resize(5000, t0 + STALE_WINDOW + secs(2));
        assert_eq!(c.capacity(), 5000);
        assert_eq!(c.len(), 10, "the entry past the stale window is not moved");
        assert_eq!(c.get(&key("n5."), t0).unwrap().hits, 3, "hits move along");
        // Shrunk to one shard of 3: the used ones stay.
        c.resize(3, t0);
        assert_eq!(c.len(), 3);
        for name in ["n2.", "n5.", "n7."] {
            assert!(c.get(&key(name), t0).is_some(), "{name}");
        }
        c.insert(key("new."), &response("new.", &[300]), t0);
        assert_eq!(c.len(), 3, "the new bound holds");
        c.resize(0, t0);
        assert!(c.is_empty());
        c.insert(key("n1."), &response("n1.", &[300]), t0);
        assert!(c.is_empty(), "0 turns the cache off");
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let c = Cache::new(cfg(0));
        c.insert(key("a."), &response("a.", &[300]), Instant::now());
        assert!(c.get(&key("a."), Instant::now()).is_none());
    }
}
