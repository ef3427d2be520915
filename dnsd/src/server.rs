//! The DNS server: UDP and TCP listeners on hickory-server, and the path of one query:
//! local names, then the blocking policy, then the cache, then the upstreams.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appliance::model::Config;
use appliance::types::Cidr;
use arc_swap::{ArcSwap, ArcSwapOption};
use hickory_net::runtime::Time;
use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode};
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use crate::answer::{self, Answer, LocalZone};
use crate::cache::{Cache, CacheConfig, Key};
use crate::fast::{self, CacheHit, WireCache};
use crate::local::LeaseZone;
use crate::policy::{Action, Decision, Policy};
use crate::querylog::Outcome as LogOutcome;
use crate::stats::{Note, Recorder};
use crate::upstream::Upstreams;

/// Idle TCP connections are closed after this long.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// The UDP payload dnsd advertises in its own EDNS answers (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;
/// Rate-limit buckets kept at most; beyond this, idle ones are dropped.
const MAX_BUCKETS: usize = 65_536;

/// Query counters, for `applctl dns stats` and Prometheus.
#[derive(Debug, Default)]
pub struct Stats {
    pub total: AtomicU64,
    pub local: AtomicU64,
    pub blocked: AtomicU64,
    pub cached: AtomicU64,
    pub stale: AtomicU64,
    pub forwarded: AtomicU64,
    pub prefetched: AtomicU64,
    /// SERVFAIL because no upstream answered.
    pub failed: AtomicU64,
    /// FORMERR, NOTIMP and REFUSED.
    pub rejected: AtomicU64,
    /// Dropped unanswered: too many queries already on their way upstream
    /// ([`crate::udp::MAX_IN_FLIGHT`]).
    pub shed: AtomicU64,
}

impl Stats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One upstream's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamStats {
    pub upstream: String,
    pub successes: u64,
    pub failures: u64,
    pub latency: Duration,
}

/// A token bucket per client address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl RateLimit {
    /// `dns.rate_limit` (`COUNT/PERIOD [burst N]`); off when absent. Without a burst a
    /// client may spend a whole period's count at once, as Pi-hole's `RATE_LIMIT` lets it.
    pub fn from_dns(dns: &appliance::model::Dns) -> Option<Self> {
        use appliance::types::RatePer;
        let r = dns.rate_limit?;
        let period = match r.per {
            RatePer::Second => 1.0,
            RatePer::Minute => 60.0,
            RatePer::Hour => 3600.0,
            RatePer::Day => 86_400.0,
        };
        Some(Self {
            per_second: f64::from(r.count) / period,
            burst: f64::from(r.burst.unwrap_or(r.count)),
        })
    }
}

#[derive(Debug)]
struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Limiter {
    fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn allow(&self, client: IpAddr, now: Instant) -> bool {
        // The map only holds numbers; a panic elsewhere cannot leave it inconsistent.
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_BUCKETS {
            let limit = self.limit;
            b.retain(|_, (tokens, at)| {
                tokens.to_owned() + now.duration_since(*at).as_secs_f64() * limit.per_second
                    < limit.burst
            });
            // Under a flood from many addresses, forgetting every bucket bounds memory at
            // the price of one free burst each.
            if b.len() >= MAX_BUCKETS {
                b.clear();
            }
        }
        let (tokens, at) = b.entry(client).or_insert((self.limit.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.limit.per_second)
            .min(self.limit.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the config says beyond the policy: local names and which link a client is on.
#[derive(Debug, Default)]
struct Tables {
    local: LocalZone,
    /// LAN subnets and their links, to give the policy the link of a client.
    subnets: Vec<(Cidr, String)>,
    /// `dns.never_forward_private`: the local domain (lowercase, no final dot), whose
    /// names are never forwarded; `None` when the setting is off.
    private: Option<String>,
}

/// TTL of the NXDOMAIN for a private name: short, since a DHCP client may take the name.
const PRIVATE_TTL: u32 = 60;

/// A reverse name in a private range (dnsmasq's `bogus-priv`): RFC 1918, RFC 6598 shared
/// space, loopback, IPv4 and IPv6 link-local, ULA. `name` is the policy's spelling.
pub fn private_reverse(name: &str) -> bool {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets = rest.rsplit('.').map(|o| o.parse::<u8>().ok());
        return matches!(
            (octets.next().flatten(), octets.next().flatten()),
            (Some(10 | 127), _)
                | (Some(172), Some(16..=31))
                | (Some(192), Some(168))
                | (Some(169), Some(254))
                | (Some(100), Some(64..=127))
        );
    }
    if let Some(rest) = name.strip_suffix(".ip6.arpa") {
        let nibbles: Vec<&str> = rest.rsplit('.').take(3).collect();
        // fc00::/7 (ULA) and fe80::/10 (link-local).
        return matches!(
            nibbles.as_slice(),
            ["f", "c" | "d", ..] | ["f", "e", "8" | "9" | "a" | "b"]
        );
    }
    false
}

impl Tables {
    fn from_config(cfg: &Config) -> Self {
        let mut subnets = Vec::new();
        let links = cfg
            .interfaces
            .iter()
            .map(|(n, i)| (n.as_str(), &i.addresses))
            .chain(cfg.vlans.iter().map(|(n, v)| (n.as_str(), &v.addresses)))
            .chain(cfg.bridges.iter().map(|(n, b)| (n.as_str(), &b.addresses)))
            .chain(
                cfg.wireguard
                    .iter()
                    .map(|(n, w)| (n.as_str(), &w.addresses)),
            );
        for (name, addresses) in links {
            for a in addresses {
                subnets.push((*a, name.to_owned()));
            }
        }
        // Longest prefix first, so that the most specific subnet names the link.
        subnets.sort_by_key(|(c, _)| std::cmp::Reverse(c.prefix_len()));
        let private = cfg.dns.never_forward_private.then(|| {
            let d = cfg.system.domain.as_str().trim_end_matches('.');
            d.to_ascii_lowercase()
        });
        Self {
            local: LocalZone::from_config(cfg),
            subnets,
            private,
        }
    }

    /// A name that must not leave the box (`dns.never_forward_private`): a reverse name
    /// in a private range, an A/AAAA query for a single label (domain-needed), or a name
    /// in the local domain. `name` is the policy's spelling (lowercase, no final dot).
    fn private(&self, name: &str, qtype: RecordType) -> bool {
        self.private_reason(name, qtype).is_some()
    }

    /// [`Tables::private`] with the reason, for `applctl dns check`.
    fn private_reason(&self, name: &str, qtype: RecordType) -> Option<String> {
        let domain = self.private.as_ref()?;
        if !name.is_empty()
            && !name.contains('.')
            && matches!(qtype, RecordType::A | RecordType::AAAA)
        {
            return Some("a single-label name".to_owned());
        }
        if !domain.is_empty()
            && (name == domain
                || name
                    .strip_suffix(domain.as_str())
                    .is_some_and(|p| p.ends_with('.')))
        {
            return Some(format!("a name in the local domain {domain}"));
        }
        private_reverse(name).then(|| "a reverse name of a private range".to_owned())
    }

    fn link_of(&self, client: IpAddr) -> Option<&str> {
        self.subnets
            .iter()
            .find(|(c, _)| c.contains(&client))
            .map(|(_, l)| l.as_str())
    }
}

/// What one UDP listener keeps between the queries its fast path answers
/// ([`Resolver::answer_fast`]).
#[derive(Debug, Default)]
pub struct FastState {
    /// Scratch space for the query's name.
    name: String,
    /// The query-log records of the batch, for [`Recorder::record_batch`].
    pub log: Vec<crate::stats::Event>,
    /// The wall clock of the batch, read at its first record: one read per batch instead of
    /// one per query (records of one batch are microseconds apart).
    wall_ms: Option<u64>,
    memo: PassMemo,
}

impl FastState {
    /// Ends a batch whose queries arrived at `started`: every record gets the time until
    /// now, its answer sent, as its latency; the next batch reads the clock again.
    pub fn finish_batch(&mut self, started: Instant) {
        let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        for e in &mut self.log {
            e.record.latency_us = us;
        }
        self.wall_ms = None;
    }
}

/// Passes a memo holds before it starts afresh: about 100 bytes each.
const PASS_MEMO_CAPACITY: usize = 4096;

/// Names the policy let through for a client, with blocking on and no pause involved, so
/// that the fast path asks the policy once per cached name and client instead of once per
/// query (the suffix lookups in a million-name list were a tenth of dnsd's time on cached
/// names). Such a pass holds as long as the policy and the link table it was decided
/// under: a pause only turns blocks into passes, and every other change (a list refresh,
/// an apply, a pause ending early through `resume`) swaps the policy or the tables, which
/// empties the memo. Both are remembered by weak pointers: the memo never keeps an old
/// list in memory, and their addresses cannot be reused while it points at them.
#[derive(Debug, Default)]
struct PassMemo {
    policy: std::sync::Weak<Policy>,
    tables: std::sync::Weak<Tables>,
    /// The client's address bytes, then the name.
    passed: HashSet<Box<[u8]>>,
    key: Vec<u8>,
}

impl PassMemo {
    /// Empties the memo unless it was made under `policy` and `tables`.
    fn follow(&mut self, policy: &Arc<Policy>, tables: &Arc<Tables>) {
        if std::ptr::eq(self.policy.as_ptr(), Arc::as_ptr(policy))
            && std::ptr::eq(self.tables.as_ptr(), Arc::as_ptr(tables))
        {
            return;
        }
        self.passed.clear();
        self.policy = Arc::downgrade(policy);
        self.tables = Arc::downgrade(tables);
    }

    fn set_key(&mut self, client: IpAddr, name: &str) {
        self.key.clear();
        match client {
            IpAddr::V4(v4) => self.key.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => self.key.extend_from_slice(&v6.octets()),
        }
        self.key.extend_from_slice(name.as_bytes());
    }

    fn knows(&mut self, client: IpAddr, name: &str) -> bool {
        if self.passed.is_empty() {
            return false;
        }
        self.set_key(client, name);
        self.passed.contains(self.key.as_slice())
    }

    fn remember(&mut self, client: IpAddr, name: &str) {
        if self.passed.len() >= PASS_MEMO_CAPACITY {
            self.passed.clear();
        }
        self.set_key(client, name);
        self.passed.insert(self.key.as_slice().into());
    }
}

/// Everything a query needs. Shared by the listeners; parts are swapped whole on reload.
#[derive(Debug)]
pub struct Resolver {
    policy: ArcSwap<Policy>,
    tables: ArcSwap<Tables>,
    /// Names of DHCP clients; looked up after the config's names, which win.
    leases: ArcSwap<LeaseZone>,
    cache: Cache,
    upstreams: Upstreams,
    stats: Stats,
    /// `None`: no limit. Swapped whole by an apply (every client starts a fresh bucket).
    limiter: ArcSwapOption<Limiter>,
    recorder: Option<Arc<Recorder>>,
    /// Answers of the cache as sent, for the UDP fast path.
    wire: WireCache,
    /// The local and lease names (lowercase, no final dot), which the fast path leaves to
    /// the hickory path; rebuilt under the lock whenever either table is swapped.
    local_names: ArcSwap<HashSet<String>>,
    local_names_lock: Mutex<()>,
}

/// How a query was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Local,
    Blocked,
    Cached,
    Stale,
    Forwarded,
    Failed,
}

impl Resolver {
    pub fn new(cfg: &Config, policy: Arc<Policy>) -> Self {
        Self::with_upstreams(cfg, policy, Upstreams::from_config(&cfg.dns))
    }

    pub fn with_upstreams(cfg: &Config, policy: Arc<Policy>, upstreams: Upstreams) -> Self {
        let cache = CacheConfig::from_dns(&cfg.dns);
        let r = Self {
            policy: ArcSwap::new(policy),
            tables: ArcSwap::from_pointee(Tables::from_config(cfg)),
            leases: ArcSwap::from_pointee(LeaseZone::default()),
            cache: Cache::new(cache),
            upstreams,
            stats: Stats::default(),
            limiter: ArcSwapOption::from_pointee(RateLimit::from_dns(&cfg.dns).map(Limiter::new)),
            recorder: None,
            wire: WireCache::new(cache.capacity),
            local_names: ArcSwap::from_pointee(HashSet::new()),
            local_names_lock: Mutex::new(()),
        };
        r.rebuild_local_names();
        r
    }

    fn rebuild_local_names(&self) {
        let text = |n: &Name| {
            let s = n.to_string();
            s.strip_suffix('.').unwrap_or(&s).to_ascii_lowercase()
        };
        let names: HashSet<String> = {
            let (tables, leases) = (self.tables.load(), self.leases.load());
            tables
                .local
                .names()
                .chain(leases.names())
                .map(text)
                .collect()
        };
        self.local_names.store(Arc::new(names));
    }

    /// Answers `packet` from the fast path when it is a plain query for a blocked or a
    /// cached name, counting it as the hickory path would and adding its query-log record
    /// to `state.log` (for [`Recorder::record_batch`]); `false` leaves it to
    /// [`Handler::answer_udp`].
    pub fn answer_fast(
        &self,
        packet: &[u8],
        src: SocketAddr,
        now: Instant,
        out: &mut Vec<u8>,
        state: &mut FastState,
    ) -> bool {
        let Some(q) = fast::parse(packet, &mut state.name) else {
            return false;
        };
        let name = state.name.as_str();
        let local = self.local_names.load();
        if !local.is_empty() && local.contains(name) {
            return false;
        }
        drop(local);
        let client = src.ip();
        let decision = {
            let (policy, tables) = (self.policy.load(), self.tables.load());
            state.memo.follow(&policy, &tables);
            if state.memo.knows(client, name) {
                None
            } else {
                Some(policy.decide(client, tables.link_of(client), name))
            }
        };
        // A query costs its client one token on whichever path answers it: here only once
        // the fast path has an answer, so that a query it leaves to the hickory path is not
        // charged twice. One over the limit goes to the hickory path, which checks the
        // bucket again (still empty) and counts, logs and answers the REFUSED.
        let within_limit = || {
            self.limiter
                .load()
                .as_ref()
                .is_none_or(|l| l.allow(client, now))
        };
        let (outcome, rcode) = match decision {
            Some(Decision {
                action: Action::Block { mode, addresses },
                rule,
                ..
            }) => {
                let Some(rcode) = fast::blocked(out, packet, &q, name, mode, &addresses) else {
                    return false;
                };
                if !within_limit() {
                    return false;
                }
                Stats::bump(&self.stats.total);
                Stats::bump(&self.stats.blocked);
                let mut note = Note::default();
                note.blocked_by(rule);
                (note.outcome, rcode)
            }
            decision => {
                if !self.wire.answer(packet, now, out) || !within_limit() {
                    return false;
                }
                if decision.is_some_and(|d| d.passes_while_policy_lasts()) {
                    state.memo.remember(client, name);
                }
                Stats::bump(&self.stats.total);
                Stats::bump(&self.stats.cached);
                (Some(LogOutcome::Cached), out.get(3).map_or(0, |b| b & 0x0f))
            }
        };
        if self.recorder.is_some() {
            let time_ms = *state.wall_ms.get_or_insert_with(crate::stats::wall_ms);
            state.log.push(crate::stats::event_at(
                name.to_owned(),
                RecordType::from(q.qtype),
                outcome.unwrap_or(LogOutcome::Rejected),
                None,
                client,
                ResponseCode::from(0, rcode),
                time_ms,
                0,
            ));
        }
        true
    }

    /// Takes a new config's cache settings, its size included: the cache keeps the
    /// entries that fit, the fast path's copies follow its bound.
    pub fn set_cache_config(&self, cfg: crate::cache::CacheConfig) {
        self.cache.set_policy(cfg);
        self.wire.set_capacity(cfg.capacity);
    }

    /// The resolvers learned by DHCP on the WAN (port 53), from netd's file. When one
    /// learned before is gone, the cache is flushed as for an apply that removed an
    /// upstream: its answers may be the view of a network the box is no longer on.
    pub fn set_learned_upstreams(&self, servers: Vec<SocketAddr>) {
        if self.upstreams().set_fallback_servers(servers) {
            tracing::info!("a resolver learned on the WAN is gone: cache flushed");
            self.flush_cache();
        }
    }

    /// Forgets every cached answer and the fast path's copies of them: the upstreams
    /// changed. Answers of queries already upstream are not stored
    /// ([`Cache::insert_since`]).
    pub fn flush_cache(&self) {
        self.cache.flush();
        self.wire.clear();
    }

    /// The fast path's copies of cached answers.
    pub fn wire_cache(&self) -> &WireCache {
        &self.wire
    }

    /// Turns on a per-client rate limit; clients over it are answered REFUSED.
    pub fn with_rate_limit(self, limit: RateLimit) -> Self {
        self.set_rate_limit(Some(limit));
        self
    }

    /// Puts a new per-client rate limit in place (`None` turns it off). An unchanged
    /// limit keeps its buckets.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        if self.limiter.load().as_ref().map(|l| l.limit) == limit {
            return;
        }
        tracing::info!(?limit, "per-client rate limit");
        self.limiter.store(limit.map(|l| Arc::new(Limiter::new(l))));
    }

    /// Hands every answered query to `recorder` (query log and statistics).
    pub fn with_recorder(mut self, recorder: Arc<Recorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    pub fn recorder(&self) -> Option<&Arc<Recorder>> {
        self.recorder.as_ref()
    }

    /// Puts a new policy in place. Queries in flight finish with the old one; none fails.
    /// The old one is freed on the reclaim thread ([`crate::reclaim`]): it may hold the
    /// last reference to a list of tens of MB.
    ///
    /// The fast path's copies of cached answers stay: it decides with the policy before it
    /// looks at them, so a name the new policy blocks is blocked, and names it no longer
    /// blocks were never copied. The passes each listener remembers ([`FastState`]) were
    /// decided under the old policy and are dropped at its next query.
    pub fn swap_policy(&self, policy: Arc<Policy>) {
        crate::reclaim::later(self.policy.swap(policy));
        tracing::debug!("policy swapped");
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Takes the local names and client links of a new config.
    pub fn reload_tables(&self, cfg: &Config) {
        let _guard = self
            .local_names_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.tables.store(Arc::new(Tables::from_config(cfg)));
        self.rebuild_local_names();
    }

    /// The link a client's queries arrive through, as the policy sees it (for `check`).
    pub fn link_of(&self, client: IpAddr) -> Option<String> {
        self.tables.load().link_of(client).map(str::to_owned)
    }

    /// Puts a new table of DHCP client names in place, whole.
    /// What answers `name` before the policy sees it, in the order [`Handler`] asks: the
    /// config's records and the router's names, then the lease names. `None`: the policy
    /// decides.
    /// Why an A query for `name` is answered NXDOMAIN by the box itself rather than
    /// forwarded (`dns.never_forward_private`), if it is: `None` when the setting is off,
    /// the name is not private, or a conditional forward covers it.
    pub fn kept_private(&self, name: &Name) -> Option<String> {
        let why = self
            .tables
            .load()
            .private_reason(&crate::policy::policy_name(name), RecordType::A)?;
        (!self.upstreams.is_forwarded(name)).then_some(why)
    }

    pub fn local_source(&self, name: &Name) -> Option<&'static str> {
        if let Some(s) = self.tables.load().local.source(name) {
            return Some(s.as_str());
        }
        let lease = self.leases.load().lookup(name, RecordType::ANY).is_some();
        lease.then_some("lease")
    }

    pub fn swap_leases(&self, zone: Arc<LeaseZone>) {
        let _guard = self
            .local_names_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.leases.store(zone);
        self.rebuild_local_names();
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn upstream_stats(&self) -> Vec<UpstreamStats> {
        self.upstreams
            .servers()
            .iter()
            .map(|s| UpstreamStats {
                upstream: s.label.clone(),
                successes: s.health.successes.load(Ordering::Relaxed),
                failures: s.health.failures.load(Ordering::Relaxed),
                latency: s.health.latency(),
            })
            .collect()
    }

    fn rate_limited(&self, client: IpAddr) -> bool {
        self.limiter
            .load()
            .as_ref()
            .is_some_and(|l| !l.allow(client, Instant::now()))
    }

    async fn refresh(self: Arc<Self>, key: Key, raw: Vec<u8>) {
        let epoch = self.cache.epoch();
        match self.upstreams.forward(&raw).await {
            Ok(f) => {
                Stats::bump(&self.stats.prefetched);
                self.cache
                    .insert_since(key, &f.message, Instant::now(), Some(epoch));
            }
            Err(e) => tracing::debug!(error = %e, "prefetch failed"),
        }
    }
}

/// The hickory request handler around a [`Resolver`].
#[derive(Debug, Clone)]
pub struct Handler(pub Arc<Resolver>);

fn response_info(metadata: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// The EDNS of our answer: only when the client sent one (RFC 6891), sized for the client,
/// since hickory truncates UDP answers to the size in it, with the client's DO bit, and
/// of the upstream's options only the end-to-end ones: the answer may come from the
/// cache, fetched for another client.
fn answer_edns(request: &Request, upstream: Option<&Edns>) -> Option<Edns> {
    let client = request.edns.as_ref()?;
    let mut e = upstream.cloned().unwrap_or_else(|| {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        e
    });
    crate::upstream::keep_end_to_end(&mut e);
    e.set_max_payload(client.max_payload().max(512));
    e.set_dnssec_ok(client.flags().dnssec_ok);
    Some(e)
}

async fn send<R: ResponseHandler>(
    mut handle: R,
    request: &Request,
    metadata: Metadata,
    edns: Option<&Edns>,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(e) = edns {
        builder.edns(e);
    }
    let response = builder.build(
        metadata,
        answers.iter(),
        authorities.iter(),
        std::iter::empty(),
        additionals.iter(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, client = %request.src(), "answer not sent");
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = ResponseCode::ServFail;
            response_info(m)
        }
    }
}

async fn send_error<R: ResponseHandler>(
    handle: R,
    request: &Request,
    code: ResponseCode,
) -> ResponseInfo {
    let mut m = Metadata::response_from_request(&request.metadata);
    m.response_code = code;
    m.recursion_available = true;
    let edns = answer_edns(request, None);
    send(handle, request, m, edns.as_ref(), &[], &[], &[]).await
}

async fn send_made_up<R: ResponseHandler>(
    handle: R,
    request: &Request,
    answer: &Answer,
    authoritative: bool,
) -> ResponseInfo {
    let mut m = Metadata::response_from_request(&request.metadata);
    m.response_code = answer.rcode;
    m.recursion_available = true;
    m.authoritative = authoritative;
    let edns = answer_edns(request, None);
    send(
        handle,
        request,
        m,
        edns.as_ref(),
        &answer.answers,
        &answer.authorities,
        &[],
    )
    .await
}

async fn send_message<R: ResponseHandler>(
    handle: R,
    request: &Request,
    message: &Message,
) -> ResponseInfo {
    let mut m = message.metadata;
    m.id = request.metadata.id;
    m.message_type = MessageType::Response;
    m.op_code = OpCode::Query;
    m.recursion_desired = request.metadata.recursion_desired;
    // hickory puts the high bits of an extended rcode into the OPT record it writes, so
    // the answer's EDNS must come along for those; ours is sized for the client.
    let edns = answer_edns(request, message.edns.as_ref());
    send(
        handle,
        request,
        m,
        edns.as_ref(),
        &message.answers,
        &message.authorities,
        &message.additionals,
    )
    .await
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        self.handle(request, handle).await.0
    }
}

impl Handler {
    /// Answers and records one query; says whether (and how) the cache answered it.
    async fn handle<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: R,
    ) -> (ResponseInfo, Option<CacheHit>) {
        let started = Instant::now();
        let mut note = Note::default();
        let info = self.resolve(request, handle, &mut note).await;
        let hit = note.cache_hit.take();
        if let Some(recorder) = self.0.recorder.as_deref() {
            recorder.finish(note, request.src().ip(), info.response_code, started);
        }
        (info, hit)
    }

    /// Answers one query, noting how for the query log.
    async fn resolve<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: R,
        note: &mut Note,
    ) -> ResponseInfo {
        let r = &self.0;
        Stats::bump(&r.stats.total);
        if request.metadata.op_code != OpCode::Query {
            Stats::bump(&r.stats.rejected);
            return send_error(handle, request, ResponseCode::NotImp).await;
        }
        let [query] = request.queries.queries() else {
            Stats::bump(&r.stats.rejected);
            return send_error(handle, request, ResponseCode::FormErr).await;
        };
        let client = request.src().ip();
        if r.rate_limited(client) {
            Stats::bump(&r.stats.rejected);
            return send_error(handle, request, ResponseCode::Refused).await;
        }
        let qname: Name = query.name().clone().into();
        let qtype = query.query_type();
        note.query = Some((query.name().clone(), qtype));

        let tables = r.tables.load();
        if let Some(a) = tables.local.lookup(&qname, qtype) {
            Stats::bump(&r.stats.local);
            note.outcome = Some(LogOutcome::Local);
            return send_made_up(handle, request, &a, true).await;
        }
        if let Some(a) = r.leases.load().lookup(&qname, qtype) {
            Stats::bump(&r.stats.local);
            note.outcome = Some(LogOutcome::Local);
            return send_made_up(handle, request, &a, true).await;
        }

        let name = crate::policy::policy_name(query.name());
        let decision = r
            .policy
            .load()
            .decide(client, tables.link_of(client), &name);
        let private = tables.private(&name, qtype);
        drop(tables);
        if let Action::Block { mode, addresses } = decision.action {
            Stats::bump(&r.stats.blocked);
            note.blocked_by(decision.rule);
            let a = answer::blocked(&qname, qtype, mode, &addresses);
            return send_made_up(handle, request, &a, false).await;
        }
        // What a conditional forward covers is the administrator's choice to ask there.
        if private && !r.upstreams.is_forwarded(&qname) {
            Stats::bump(&r.stats.local);
            note.outcome = Some(LogOutcome::Local);
            let a = Answer {
                rcode: ResponseCode::NXDomain,
                answers: Vec::new(),
                authorities: vec![answer::soa(&qname, PRIVATE_TTL)],
            };
            return send_made_up(handle, request, &a, true).await;
        }

        let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let key = Key::new(&qname, qtype, query.query_class(), dnssec_ok)
            .checking_disabled(request.metadata.checking_disabled);
        let now = Instant::now();
        if let Some(hit) = r.cache.get(&key, now) {
            // The cache keeps the upstream's answer whole and the chain is judged at each
            // answer: by the policy of this client's group, and of the lists as they are
            // now (a reload blocks a cached alias at once).
            if let Some(cloaked) = r.cname_blocked(client, &hit.message) {
                return self.block_cloaked(handle, request, note, cloaked).await;
            }
            Stats::bump(&r.stats.cached);
            note.outcome = Some(LogOutcome::Cached);
            // Only once the entry has the hits a prefetch needs: the fast path's answers
            // do not count as hits, and a popular name must still be refreshed. Never an
            // answer with an alias: the fast path judges the query name alone, so a
            // CNAME target blocked later would be served from the copy.
            if !hit.prefetch
                && hit.hits >= crate::cache::PREFETCH_MIN_HITS
                && !has_cname(&hit.message)
            {
                note.cache_hit = Some(CacheHit {
                    inserted: hit.inserted,
                    now,
                    expires: hit.expires,
                    ttl: hit.ttl,
                    epoch: r.cache.epoch(),
                });
            }
            if hit.prefetch {
                tokio::spawn(Arc::clone(r).refresh(key, request.as_slice().to_vec()));
            }
            return send_message(handle, request, &hit.message).await;
        }

        let epoch = r.cache.epoch();
        let failure = match r.upstreams.forward(request.as_slice()).await {
            // RFC 8767: a SERVFAIL is a failed resolution like a timeout, so a stale
            // answer is served over it; a SERVFAIL is never cached, so it cannot
            // replace the entry either.
            Ok(f) if f.message.metadata.response_code == ResponseCode::ServFail => {
                match r.cache.get_stale(&key, Instant::now()) {
                    Some(m) => Err((format!("{} answered SERVFAIL", f.upstream), m)),
                    None => Ok(f),
                }
            }
            Ok(f) => Ok(f),
            Err(e) => match r.cache.get_stale(&key, Instant::now()) {
                Some(m) => Err((e.to_string(), m)),
                None => {
                    Stats::bump(&r.stats.failed);
                    note.outcome = Some(LogOutcome::Failed);
                    tracing::debug!(error = %e, %qname, "every upstream failed");
                    return send_error(handle, request, ResponseCode::ServFail).await;
                }
            },
        };
        match failure {
            Ok(mut f) => {
                r.cache
                    .insert_since(key, &f.message, Instant::now(), Some(epoch));
                if let Some(cloaked) = r.cname_blocked(client, &f.message) {
                    return self.block_cloaked(handle, request, note, cloaked).await;
                }
                Stats::bump(&r.stats.forwarded);
                note.forwarded(&f);
                r.cache.clamp_ttls(&mut f.message);
                send_message(handle, request, &f.message).await
            }
            Err((error, m)) => {
                if let Some(cloaked) = r.cname_blocked(client, &m) {
                    return self.block_cloaked(handle, request, note, cloaked).await;
                }
                Stats::bump(&r.stats.stale);
                note.outcome = Some(LogOutcome::Stale);
                tracing::debug!(error, %qname, "every upstream failed; answering stale");
                send_message(handle, request, &m).await
            }
        }
    }

    /// Answers a query whose answer aliases a blocked name as if the query name were
    /// blocked: the block mode of the client's group, the query log naming the alias.
    async fn block_cloaked<R: ResponseHandler>(
        &self,
        handle: R,
        request: &Request,
        note: &mut Note,
        cloaked: Cloaked,
    ) -> ResponseInfo {
        let r = &self.0;
        Stats::bump(&r.stats.blocked);
        note.blocked_via_cname(cloaked.rule, &cloaked.target);
        let Some(query) = request.queries.queries().first() else {
            return send_error(handle, request, ResponseCode::FormErr).await;
        };
        let qname: Name = query.name().clone().into();
        tracing::debug!(%qname, target = cloaked.target, "blocked through its CNAME");
        let a = answer::blocked(&qname, query.query_type(), cloaked.mode, &cloaked.addresses);
        send_made_up(handle, request, &a, false).await
    }
}

/// A forwarded or cached answer whose CNAME chain reaches a name the client's policy blocks.
#[derive(Debug, Clone)]
pub struct Cloaked {
    /// The blocked name in the chain, as the policy saw it (lowercase, no final dot).
    pub target: String,
    pub mode: appliance::model::BlockMode,
    pub addresses: Vec<IpAddr>,
    pub rule: Option<(crate::policy::Source, crate::compiled::Rule)>,
}

/// CNAME records looked at in one answer: a longer chain is cut there (resolvers stop
/// following at about this depth).
const MAX_CNAMES: usize = 16;

fn has_cname(m: &Message) -> bool {
    m.answers
        .iter()
        .any(|r| matches!(r.data, hickory_proto::rr::RData::CNAME(_)))
}

impl Resolver {
    /// CNAME cloaking (as Pi-hole FTL's CNAME inspection and AdGuard Home): the first
    /// alias target in `message`'s answer section that the policy blocks for `client`.
    /// Every target is judged, not only the chain from the question: what the client's
    /// stub follows is the answer section as sent.
    pub fn cname_blocked(&self, client: IpAddr, message: &Message) -> Option<Cloaked> {
        let mut targets = message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::CNAME(c) => Some(&c.0),
                _ => None,
            })
            .take(MAX_CNAMES)
            .peekable();
        targets.peek()?;
        let tables = self.tables.load();
        let policy = self.policy.load();
        let link = tables.link_of(client);
        for target in targets {
            let name = crate::policy::policy_name(target);
            let d = policy.decide(client, link, &name);
            if let Action::Block { mode, addresses } = d.action {
                return Some(Cloaked {
                    target: name,
                    mode,
                    addresses,
                    rule: d.rule,
                });
            }
        }
        None
    }

    /// `check`'s view of CNAME cloaking: the cached answer for `name` (A, then AAAA, as a
    /// plain query without DO or CD asks), if it aliases a name blocked for `client`.
    pub fn cached_cname_blocked(&self, client: IpAddr, name: &Name) -> Option<Cloaked> {
        let now = Instant::now();
        [RecordType::A, RecordType::AAAA].into_iter().find_map(|t| {
            let key = Key::new(name, t, hickory_proto::rr::DNSClass::IN, false);
            let m = self.cache.peek(&key, now)?;
            self.cname_blocked(client, &m)
        })
    }
}

impl Handler {
    /// Answers one UDP packet from `src` the way the UDP listener does, without a socket:
    /// the same decoding as hickory-server's (no answer to fewer than 12 bytes or to a
    /// response, FORMERR to an undecodable body), this handler, and hickory's own
    /// [`ResponseHandle`](hickory_server::server::ResponseHandle) to encode the answer.
    /// Returns the bytes that would be sent back, or `None` when nothing would be.
    pub async fn answer_packet(&self, packet: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
        let (answer, hit) = self.answer_packet_noted(packet, src).await;
        let answer = answer?;
        // A copy made from an entry the cache has flushed since is not kept.
        if let Some(hit) = hit.filter(|h| h.epoch == self.0.cache.epoch()) {
            self.0.wire.insert(packet, &answer, hit);
        }
        Some(answer)
    }

    /// What the UDP listener does with a packet the fast path left: [`Self::answer_packet`].
    pub async fn answer_udp(&self, packet: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
        self.answer_packet(packet, src).await
    }

    async fn answer_packet_noted(
        &self,
        packet: &[u8],
        src: SocketAddr,
    ) -> (Option<Vec<u8>>, Option<CacheHit>) {
        use futures_util::{FutureExt as _, StreamExt as _};
        use hickory_net::xfer::Protocol;
        use hickory_proto::serialize::binary::{BinDecodable as _, BinDecoder};

        let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
            return (None, None);
        };
        let (stream, mut sent) = hickory_net::BufDnsStreamHandle::new(src);
        let mut handle = hickory_server::server::ResponseHandle::new(src, stream, Protocol::Udp);
        let mut hit = None;
        match Request::from_bytes(packet.to_vec(), src, Protocol::Udp) {
            Ok(request) => {
                if request.metadata.message_type == MessageType::Response {
                    return (None, None);
                }
                hit = self.handle(&request, handle).await.1;
            }
            Err(e) => {
                tracing::debug!(error = %e, client = %src, "undecodable query");
                let Ok(queries) =
                    hickory_server::zone_handler::Queries::read(&mut BinDecoder::new(&[]), 0)
                else {
                    return (None, None);
                };
                let response = MessageResponseBuilder::new(&queries, None)
                    .error_msg(&header.metadata, ResponseCode::FormErr);
                if handle.send_response(response).await.is_err() {
                    return (None, None);
                }
            }
        }
        // The handle is gone with the request, so the channel holds the answer or is closed.
        let message = sent.next().now_or_never().flatten();
        (message.map(|m| m.into_parts().0), hit)
    }
}

/// Plain DNS (UDP and TCP) on one address.
struct Plain {
    /// As asked (port 0 included): a rebind compares these.
    requested: SocketAddr,
    bound: SocketAddr,
    udp: tokio::task::JoinHandle<()>,
    /// hickory serves this address's TCP; one server per address, so that an address
    /// can be closed alone.
    tcp: hickory_server::Server<Handler>,
}

impl Plain {
    async fn open(resolver: &Arc<Resolver>, requested: SocketAddr) -> io::Result<Self> {
        let (udp, tcp) = bind_pair(requested).await?;
        let bound = udp.local_addr()?;
        let mut server = hickory_server::Server::new(Handler(Arc::clone(resolver)));
        server.register_listener(tcp, TCP_TIMEOUT, TCP_RESPONSE_BUFFER);
        tracing::info!(address = %bound, "listening for DNS on UDP and TCP");
        Ok(Self {
            requested,
            bound,
            udp: tokio::spawn(crate::udp::serve(
                Arc::new(udp),
                Handler(Arc::clone(resolver)),
            )),
            tcp: server,
        })
    }

    /// Stops listening. TCP queries in flight finish in the background, so that an apply
    /// does not wait for idle connections to time out.
    fn close(self) {
        self.udp.abort();
        let (bound, mut tcp) = (self.bound, self.tcp);
        tokio::spawn(async move {
            if let Err(e) = tcp.shutdown_gracefully().await {
                tracing::warn!(address = %bound, error = %e, "closing the TCP listener");
            }
        });
        tracing::info!(address = %bound, "no longer listening for DNS");
    }
}

/// One DoT or DoH listener: a hickory server of its own, so that it can be closed alone.
struct Encrypted {
    kind: crate::tls::Encrypted,
    /// As asked: a rebind compares these.
    requested: SocketAddr,
    bound: SocketAddr,
    server: hickory_server::Server<Handler>,
}

impl Encrypted {
    fn open(
        resolver: &Arc<Resolver>,
        kind: crate::tls::Encrypted,
        requested: SocketAddr,
        tls: &rustls::ServerConfig,
    ) -> io::Result<Self> {
        let mut tls = tls.clone();
        let listener = bind_tcp(requested)?;
        let bound = listener.local_addr()?;
        let mut server = hickory_server::Server::new(Handler(Arc::clone(resolver)));
        match kind {
            crate::tls::Encrypted::Tls => {
                tls.alpn_protocols = vec![b"dot".to_vec()];
                server.register_tls_listener_with_tls_config(
                    listener,
                    TCP_TIMEOUT,
                    Arc::new(tls),
                )?;
            }
            crate::tls::Encrypted::Https => {
                tls.alpn_protocols = vec![b"h2".to_vec()];
                server.register_https_listener_with_tls_config(
                    listener,
                    TCP_TIMEOUT,
                    Arc::new(tls),
                    None,
                    crate::tls::DOH_PATH.to_owned(),
                )?;
            }
        }
        tracing::info!(address = %bound, "listening for {kind}");
        Ok(Self {
            kind,
            requested,
            bound,
            server,
        })
    }

    /// Stops listening; connections in flight finish in the background.
    fn close(self) {
        let (bound, kind, mut server) = (self.bound, self.kind, self.server);
        tokio::spawn(async move {
            if let Err(e) = server.shutdown_gracefully().await {
                tracing::warn!(address = %bound, error = %e, "closing the {kind} listener");
            }
        });
        tracing::info!(address = %bound, "no longer listening for {kind}");
    }
}

/// The running listeners.
pub struct Server {
    /// Bound addresses of `plain`, in its order, for [`Server::addresses`].
    addresses: Vec<SocketAddr>,
    plain: Vec<Plain>,
    resolver: Arc<Resolver>,
    /// DoT and DoH listeners that follow the config ([`Server::rebind_all`]).
    encrypted: Vec<Encrypted>,
    /// The certificate they serve, swapped at an apply without closing them.
    cert: Arc<crate::tls::CertSlot>,
    /// Listeners added by hand with their own TLS configuration ([`Server::listen_tls`],
    /// [`Server::listen_https`]); an apply leaves them alone.
    /// Made at the first such listener: shutting down a hickory server that never had one
    /// logs a warning.
    extra: Option<hickory_server::Server<Handler>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addresses", &self.addresses)
            .field("encrypted", &self.encrypted_addresses())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Listens on UDP and TCP at each address. A port of 0 takes a free port, the same for
    /// UDP and TCP; the addresses bound are in [`Server::addresses`].
    pub async fn bind(resolver: Arc<Resolver>, listen: Vec<SocketAddr>) -> io::Result<Self> {
        // So that the heap is trimmed only while this server is quiet.
        let watched = Arc::downgrade(&resolver);
        crate::reclaim::watch_queries(move || {
            watched
                .upgrade()
                .map(|r| r.stats.total.load(std::sync::atomic::Ordering::Relaxed))
        });
        let mut server = Self {
            addresses: Vec::new(),
            plain: Vec::new(),
            resolver,
            encrypted: Vec::new(),
            cert: Arc::new(crate::tls::CertSlot::default()),
            extra: None,
        };
        server.rebind(&listen).await?;
        Ok(server)
    }

    /// Makes plain DNS listen on exactly `listen`, leaving DoT and DoH as they are: opens
    /// the new addresses first, then closes those no longer asked for. Addresses in both
    /// are not touched, so their queries go on. When one new address cannot be bound, the
    /// ones opened by this call are closed again and nothing changed.
    pub async fn rebind(&mut self, listen: &[SocketAddr]) -> Result<(), BindError> {
        let encrypted: Vec<_> = self
            .encrypted
            .iter()
            .map(|e| (e.kind, e.requested))
            .collect();
        self.rebind_all(listen, &encrypted, None)
            .await
            .map_err(|e| match e {
                ListenError::Bind(b) => b,
                // Without a certificate to prepare nothing else can fail.
                ListenError::Tls(t) => BindError {
                    what: "DNS over TLS/HTTPS",
                    address: SocketAddr::from(([0, 0, 0, 0], 0)),
                    source: io::Error::other(t.to_string()),
                },
            })
    }

    /// Makes plain DNS listen on exactly `plain` and DoT/DoH on exactly `encrypted`, with
    /// the certificate `cert` (`None`: the one served now). Every new listener is bound
    /// before anything is closed, and a listener asked for again is kept with its
    /// connections; when a bind (or writing a new certificate) fails, what this call
    /// opened is closed again, and the listeners and the certificate stay as they were.
    /// A new certificate is served from the next handshake on, on kept listeners too.
    pub async fn rebind_all(
        &mut self,
        plain: &[SocketAddr],
        encrypted: &[(crate::tls::Encrypted, SocketAddr)],
        cert: Option<crate::tls::Prepared>,
    ) -> Result<(), ListenError> {
        let mut opened = Vec::new();
        let fail = |opened: Vec<Plain>, enc: Vec<Encrypted>| {
            opened.into_iter().for_each(Plain::close);
            enc.into_iter().for_each(Encrypted::close);
        };
        for &addr in plain {
            if self.plain.iter().any(|p| p.requested == addr)
                || opened.iter().any(|p: &Plain| p.requested == addr)
            {
                continue;
            }
            match Plain::open(&self.resolver, addr).await {
                Ok(p) => opened.push(p),
                Err(source) => {
                    fail(opened, Vec::new());
                    return Err(ListenError::Bind(BindError {
                        what: "DNS",
                        address: addr,
                        source,
                    }));
                }
            }
        }
        let mut enc_opened: Vec<Encrypted> = Vec::new();
        if !encrypted.is_empty() {
            let tls = match crate::tls::server_config(Arc::clone(&self.cert)) {
                Ok(t) => t,
                Err(e) => {
                    fail(opened, enc_opened);
                    return Err(ListenError::Tls(e));
                }
            };
            for &(kind, addr) in encrypted {
                let same = |e: &Encrypted| e.kind == kind && e.requested == addr;
                if self.encrypted.iter().any(same) || enc_opened.iter().any(same) {
                    continue;
                }
                match Encrypted::open(&self.resolver, kind, addr, &tls) {
                    Ok(e) => enc_opened.push(e),
                    Err(source) => {
                        fail(opened, enc_opened);
                        return Err(ListenError::Bind(BindError {
                            what: match kind {
                                crate::tls::Encrypted::Tls => "DNS over TLS",
                                crate::tls::Encrypted::Https => "DNS over HTTPS",
                            },
                            address: addr,
                            source,
                        }));
                    }
                }
            }
        }
        // Written last, once every bind succeeded: a failed apply leaves the pair on disk
        // as it was.
        if let Some(prepared) = cert {
            match prepared.commit() {
                Ok(key) => self.cert.set(key),
                Err(e) => {
                    fail(opened, enc_opened);
                    return Err(ListenError::Tls(e));
                }
            }
        }
        let (kept, gone): (Vec<Plain>, Vec<Plain>) = std::mem::take(&mut self.plain)
            .into_iter()
            .partition(|p| plain.contains(&p.requested));
        self.plain = kept;
        self.plain.extend(opened);
        gone.into_iter().for_each(Plain::close);
        self.addresses = self.plain.iter().map(|p| p.bound).collect();
        let (kept, gone): (Vec<Encrypted>, Vec<Encrypted>) = std::mem::take(&mut self.encrypted)
            .into_iter()
            .partition(|e| encrypted.contains(&(e.kind, e.requested)));
        self.encrypted = kept;
        self.encrypted.extend(enc_opened);
        gone.into_iter().for_each(Encrypted::close);
        Ok(())
    }

    /// Adds a DNS-over-TLS listener (RFC 7858) with its own TLS configuration, which an
    /// apply leaves alone. Returns the address bound.
    pub async fn listen_tls(
        &mut self,
        addr: SocketAddr,
        tls: &rustls::ServerConfig,
    ) -> io::Result<SocketAddr> {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"dot".to_vec()];
        let listener = bind_tcp(addr)?;
        let bound = listener.local_addr()?;
        self.extra()
            .register_tls_listener_with_tls_config(listener, TCP_TIMEOUT, Arc::new(tls))?;
        tracing::info!(address = %bound, "listening for DNS over TLS");
        Ok(bound)
    }

    /// Adds a DNS-over-HTTPS listener (RFC 8484, HTTP/2) at `path` with its own TLS
    /// configuration, which an apply leaves alone. Returns the address bound.
    pub async fn listen_https(
        &mut self,
        addr: SocketAddr,
        tls: &rustls::ServerConfig,
        path: &str,
    ) -> io::Result<SocketAddr> {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let listener = bind_tcp(addr)?;
        let bound = listener.local_addr()?;
        self.extra().register_https_listener_with_tls_config(
            listener,
            TCP_TIMEOUT,
            Arc::new(tls),
            None,
            path.to_owned(),
        )?;
        tracing::info!(address = %bound, path, "listening for DNS over HTTPS");
        Ok(bound)
    }

    fn extra(&mut self) -> &mut hickory_server::Server<Handler> {
        let resolver = &self.resolver;
        self.extra
            .get_or_insert_with(|| hickory_server::Server::new(Handler(Arc::clone(resolver))))
    }

    /// The addresses plain DNS is bound to.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// The DoT and DoH listeners that follow the config, and where they are bound.
    pub fn encrypted_addresses(&self) -> Vec<(crate::tls::Encrypted, SocketAddr)> {
        self.encrypted.iter().map(|e| (e.kind, e.bound)).collect()
    }

    /// The certificate DoT and DoH serve now.
    pub fn certificate(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.cert.current()
    }

    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// Stops listening and waits for the queries in flight.
    pub async fn shutdown(mut self) -> io::Result<()> {
        let mut result = Ok(());
        for mut p in std::mem::take(&mut self.plain) {
            p.udp.abort();
            if let Err(e) = p.tcp.shutdown_gracefully().await {
                result = Err(io::Error::other(e.to_string()));
            }
        }
        for mut e in std::mem::take(&mut self.encrypted) {
            if let Err(e) = e.server.shutdown_gracefully().await {
                result = Err(io::Error::other(e.to_string()));
            }
        }
        if let Some(mut extra) = self.extra.take() {
            extra
                .shutdown_gracefully()
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        result
    }
}

/// An address dnsd could not listen on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {what} on {address}: {source}")]
pub struct BindError {
    /// "DNS", "DNS over TLS" or "DNS over HTTPS".
    pub what: &'static str,
    pub address: SocketAddr,
    #[source]
    pub source: io::Error,
}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> Self {
        io::Error::new(e.source.kind(), e.to_string())
    }
}

/// Why [`Server::rebind_all`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("DNS over TLS/HTTPS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// With port 0, the free UDP port may be taken for TCP; a few tries find a pair.
async fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = bind_udp(addr)?;
        let bound = udp.local_addr()?;
        match bind_tcp(bound) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port for UDP and TCP")))
}

/// A listening socket for `addr`. An IPv6 one is IPv6-only: with Linux's default
/// (`net.ipv6.bindv6only = 0`) `[::]:53` would also take IPv4, and a listen list of
/// `0.0.0.0:53` and `[::]:53`, the usual way to say "everywhere", failed with "address in
/// use" at its second entry.
fn listening_socket(
    addr: SocketAddr,
    kind: nix::sys::socket::SockType,
) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockaddrStorage, setsockopt, sockopt};
    use std::os::fd::AsRawFd as _;
    let family = if addr.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = nix::sys::socket::socket(family, kind, flags, None)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    if kind == nix::sys::socket::SockType::Stream {
        // As std and tokio do: a restarted dnsd binds while old connections linger.
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    nix::sys::socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(fd)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let fd = listening_socket(addr, nix::sys::socket::SockType::Datagram)?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let fd = listening_socket(addr, nix::sys::socket::SockType::Stream)?;
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(1024)?)?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let l = Limiter {
            limit: RateLimit {
                per_second: 10.0,
                burst: 3.0,
            },
            buckets: Mutex::new(HashMap::new()),
        };
        let a: IpAddr = "192.168.1.5".parse().unwrap();
        let b: IpAddr = "192.168.1.6".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow(a, t0)));
        assert!(!l.allow(a, t0));
        assert!(l.allow(b, t0), "buckets are per client");
        assert!(l.allow(a, t0 + Duration::from_millis(100)));
        assert!(!l.allow(a, t0 + Duration::from_millis(100)));
    }

    /// `0.0.0.0` and `[::]` on one port, and a loopback pair: each bound on UDP and TCP.
    #[tokio::test]
    async fn ipv4_and_ipv6_listeners_share_a_port() {
        let (udp, _tcp) = bind_pair("0.0.0.0:0".parse().unwrap()).await.unwrap();
        let port = udp.local_addr().unwrap().port();
        let (udp6, tcp6) = bind_pair(SocketAddr::new("::".parse().unwrap(), port))
            .await
            .unwrap();
        assert_eq!(udp6.local_addr().unwrap().port(), port);
        assert_eq!(tcp6.local_addr().unwrap().port(), port);

        let (udp, _tcp) = bind_pair("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = udp.local_addr().unwrap().port();
        bind_pair(SocketAddr::new("::1".parse().unwrap(), port))
            .await
            .unwrap();
    }

    #[test]
    fn clients_are_placed_on_the_link_of_their_subnet() {
        let cfg = appliance::load_str(
            r#"
version = 1
[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24", "fd00::1/64"]
[vlans.iot]
parent = "lan"
id = 20
addresses = ["192.168.20.1/24"]
"#,
        )
        .unwrap();
        let t = Tables::from_config(&cfg);
        assert_eq!(t.link_of("192.168.20.7".parse().unwrap()), Some("iot"));
        assert_eq!(t.link_of("192.168.1.7".parse().unwrap()), Some("lan"));
        assert_eq!(t.link_of("fd00::42".parse().unwrap()), Some("lan"));
        assert_eq!(t.link_of("10.0.0.1".parse().unwrap()), None);
    }
}
