//! Forwarding to upstream resolvers: plain DNS (UDP, TCP when truncated), DNS over TLS and
//! DNS over HTTPS, with health tracking, failover, conditional forwarding and the servers
//! learned by DHCP on the WAN as fallback.
//!
//! The client's query goes out as the client sent it, under a new id, so the DO/CD bits,
//! the EDNS size and the end-to-end EDNS options reach the upstream untouched; options
//! that belong to one hop (COOKIE, padding, keepalive, client subnet: see
//! [`end_to_end`]) are taken out of the query and of the answer, which may be cached and
//! given to other clients. The answer gets the client's id back.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use appliance::model::Dns;
use appliance::types::{Host, Upstream, UpstreamKind};
use arc_swap::{ArcSwap, ArcSwapOption};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::xfer::{DnsExchange, DnsHandle, FirstAnswer};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Edns, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;

/// Time for one try at one upstream.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries per query, across upstreams.
pub const TRIES: usize = 2;
/// A failing upstream is put last; after this long it is tried first again once, so a
/// recovered server is noticed.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Weight of a new latency sample in the moving average, in 1/8ths.
const EWMA_WEIGHT_EIGHTHS: u64 = 2;
/// The largest UDP answer read. The client's EDNS size is forwarded as is, so an upstream
/// may send more: such an answer is read as cut (one byte past this) and asked for again
/// over TCP, instead of failing to parse until the try times out.
const UDP_BUFFER: usize = 4096;

/// Why a query could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream servers are configured or learned")]
    NoUpstreams,
    #[error("{0}: timed out")]
    Timeout(String),
    #[error("{0}: {1}")]
    Network(String, String),
    #[error("{0}: answered {1}")]
    Failed(String, ResponseCode),
    #[error("{0}: malformed answer: {1}")]
    Malformed(String, String),
    #[error("the query is malformed: {0}")]
    BadQuery(String),
    #[error("{0}: {1} is not supported yet")]
    Unsupported(String, &'static str),
}

/// Health of one upstream, readable for statistics.
#[derive(Debug, Default)]
pub struct Health {
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Microseconds; 0 until the first answer.
    ewma_us: AtomicU64,
    /// Milliseconds since `Upstreams::epoch` of the last failure.
    last_failure_ms: AtomicU64,
}

impl Health {
    fn success(&self, latency: Duration) {
        self.successes.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.sample(latency);
    }

    fn failure(&self, latency: Duration, since_epoch: Duration) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.last_failure_ms.store(
            u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.sample(latency);
    }

    fn sample(&self, latency: Duration) {
        let new = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // Races between tasks lose a sample at worst; the average stays sane.
        let old = self.ewma_us.load(Ordering::Relaxed);
        let avg = if old == 0 {
            new
        } else {
            (old * (8 - EWMA_WEIGHT_EIGHTHS) + new * EWMA_WEIGHT_EIGHTHS) / 8
        };
        self.ewma_us.store(avg, Ordering::Relaxed);
    }

    /// Moving average of answer times, failures counted at the time they took.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.ewma_us.load(Ordering::Relaxed))
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

/// A kept-open DoT or DoH connection, opened at first use. The provider owns the task
/// that drives the connection (hickory aborts it when the last clone of the provider is
/// dropped), so it lives exactly as long as the exchange.
#[derive(Default)]
struct Conn(Mutex<Option<Connected>>);

type Connected = (DnsExchange<TokioRuntimeProvider>, TokioRuntimeProvider);

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Conn")
    }
}

/// Where and how to reach one upstream.
#[derive(Debug)]
enum Transport {
    Unusable(&'static str),
    Plain(SocketAddr),
    Tls {
        host: Host,
        port: u16,
        server_name: String,
        conn: Conn,
    },
    Https {
        host: Host,
        port: u16,
        server_name: String,
        path: String,
        conn: Conn,
    },
}

/// One upstream server.
#[derive(Debug)]
pub struct Server {
    pub label: String,
    pub health: Health,
    transport: Transport,
}

impl Server {
    fn plain(addr: SocketAddr) -> Self {
        Self {
            label: addr.to_string(),
            health: Health::default(),
            transport: Transport::Plain(addr),
        }
    }

    fn from_config(u: &Upstream) -> Self {
        let port = u.port.get();
        let server_name = || match (&u.tls_name, &u.host) {
            (Some(n), _) => n.as_str().to_owned(),
            (None, Host::Name(n)) => n.as_str().to_owned(),
            (None, Host::Ip(ip)) => ip.to_string(),
        };
        let transport = match (u.kind, &u.host) {
            (UpstreamKind::Plain, Host::Ip(ip)) => Transport::Plain(SocketAddr::new(*ip, port)),
            // Validation refuses plain upstreams by name: resolving them would need DNS.
            (UpstreamKind::Plain, Host::Name(_)) => {
                Transport::Unusable("a plain upstream given by name")
            }
            (UpstreamKind::Tls, host) => Transport::Tls {
                host: host.clone(),
                port,
                server_name: server_name(),
                conn: Conn::default(),
            },
            (UpstreamKind::Https, host) => Transport::Https {
                host: host.clone(),
                port,
                server_name: server_name(),
                path: if u.path.is_empty() {
                    "/dns-query".to_owned()
                } else {
                    u.path.clone()
                },
                conn: Conn::default(),
            },
        };
        Self {
            label: u.to_string(),
            health: Health::default(),
            transport,
        }
    }
}

/// A conditional forward: `domain` and below go to `servers` only, so that private names
/// never leak to the public resolvers.
#[derive(Debug)]
struct Forward {
    domain: Name,
    servers: Vec<Arc<Server>>,
}

/// The set of upstreams and the policy for choosing among them.
#[derive(Debug)]
pub struct Upstreams {
    /// `dns.upstreams` and `dns.forwarding`, replaced whole by an apply ([`Upstreams::set_config`]).
    routes: ArcSwap<Routes>,
    dhcp: ArcSwap<Vec<Arc<Server>>>,
    epoch: Instant,
    try_timeout: Duration,
    /// Made when a DoT or DoH upstream first appears (at start or by an apply).
    tls: ArcSwapOption<rustls::ClientConfig>,
}

#[derive(Debug, Default)]
struct Routes {
    configured: Vec<Arc<Server>>,
    forwards: Vec<Forward>,
}

impl Routes {
    /// Which servers answer which names, order aside.
    fn signature(&self) -> (Vec<&str>, Vec<(String, Vec<&str>)>) {
        fn labels(servers: &[Arc<Server>]) -> Vec<&str> {
            let mut l: Vec<&str> = servers.iter().map(|s| s.label.as_str()).collect();
            l.sort_unstable();
            l.dedup();
            l
        }
        let mut forwards: Vec<(String, Vec<&str>)> = self
            .forwards
            .iter()
            .map(|f| (f.domain.to_lowercase().to_string(), labels(&f.servers)))
            .collect();
        forwards.sort_unstable();
        (labels(&self.configured), forwards)
    }

    /// The routes of `dns`; a server already in `old` (same label: the upstream's whole
    /// text form, port and TLS name included) is kept with its health and connection.
    fn from_config(dns: &Dns, old: &Routes) -> Self {
        let known = |u: &Upstream| {
            let fresh = Server::from_config(u);
            old.configured
                .iter()
                .chain(old.forwards.iter().flat_map(|f| f.servers.iter()))
                .find(|s| s.label == fresh.label)
                .cloned()
                .unwrap_or_else(|| Arc::new(fresh))
        };
        let mut forwards: Vec<Forward> = dns
            .forwarding
            .iter()
            .filter_map(|f| {
                let domain = fqdn(f.domain.as_str())?;
                let servers = f.upstreams.iter().map(known).collect();
                Some(Forward { domain, servers })
            })
            .collect();
        // The most specific domain wins.
        forwards.sort_by_key(|f| std::cmp::Reverse(f.domain.num_labels()));
        Self {
            configured: dns.upstreams.iter().map(known).collect(),
            forwards,
        }
    }
}

fn needs_tls(dns: &Dns) -> bool {
    dns.upstreams
        .iter()
        .chain(dns.forwarding.iter().flat_map(|f| f.upstreams.iter()))
        .any(|u| u.kind != UpstreamKind::Plain)
}

fn client_tls() -> Option<Arc<rustls::ClientConfig>> {
    match hickory_net::tls::client_config() {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::error!(error = %e, "no TLS client configuration; DoT and DoH upstreams will fail");
            None
        }
    }
}

/// A forwarded answer.
#[derive(Debug)]
pub struct Forwarded {
    /// With the client's id.
    pub message: Message,
    pub upstream: String,
    pub latency: Duration,
}

impl Upstreams {
    pub fn from_config(dns: &Dns) -> Self {
        Self {
            routes: ArcSwap::from_pointee(Routes::from_config(dns, &Routes::default())),
            dhcp: ArcSwap::from_pointee(Vec::new()),
            epoch: Instant::now(),
            try_timeout: TRY_TIMEOUT,
            tls: ArcSwapOption::new(if needs_tls(dns) { client_tls() } else { None }),
        }
    }

    /// Takes `dns.upstreams` and `dns.forwarding` of a new config for the next queries;
    /// servers in both keep their health. Queries in flight finish with the old set.
    /// Returns whether a name may now be asked of other servers than before (an upstream
    /// or a conditional forward added, removed or changed; not a mere reordering), for
    /// the caller to flush what the old ones answered.
    pub fn set_config(&self, dns: &Dns) -> bool {
        if needs_tls(dns) && self.tls.load().is_none() {
            self.tls.store(client_tls());
        }
        let old = self.routes.load_full();
        let routes = Routes::from_config(dns, &old);
        let changed = routes.signature() != old.signature();
        self.routes.store(Arc::new(routes));
        changed
    }

    /// TLS settings for DoT and DoH upstreams, replacing the built-in web PKI roots (a
    /// private CA, or tests).
    pub fn with_tls_config(self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls.store(Some(tls));
        self
    }

    /// Shorter tries, for tests.
    pub fn with_try_timeout(mut self, t: Duration) -> Self {
        self.try_timeout = t;
        self
    }

    /// The resolvers learned by DHCP on the WAN: used when no upstream is configured, and
    /// after the configured ones failed. Health of servers already known is kept. True
    /// when a server learned before is gone (see [`Upstreams::set_fallback_servers`]).
    pub fn set_dhcp_upstreams(&self, servers: Vec<IpAddr>) -> bool {
        self.set_fallback_servers(
            servers
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 53))
                .collect(),
        )
    }

    /// [`Upstreams::set_dhcp_upstreams`] with ports. True when a server learned before
    /// is not among `servers`: what it answered may be another network's view (the ISP's
    /// resolver of a WAN the box left), which the caller flushes from the cache.
    pub fn set_fallback_servers(&self, servers: Vec<SocketAddr>) -> bool {
        let old = self.dhcp.load();
        let dropped = old.iter().any(|s| match s.transport {
            Transport::Plain(a) => !servers.contains(&a),
            _ => true,
        });
        let new: Vec<Arc<Server>> = servers
            .into_iter()
            .map(|addr| {
                old.iter()
                    .find(|s| matches!(s.transport, Transport::Plain(a) if a == addr))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Server::plain(addr)))
            })
            .collect();
        tracing::info!(count = new.len(), dropped, "upstreams learned by DHCP");
        self.dhcp.store(Arc::new(new));
        dropped
    }

    /// Every upstream, for statistics.
    pub fn servers(&self) -> Vec<Arc<Server>> {
        let routes = self.routes.load();
        let mut all: Vec<Arc<Server>> = routes.configured.clone();
        all.extend(
            routes
                .forwards
                .iter()
                .flat_map(|f| f.servers.iter().cloned()),
        );
        all.extend(self.dhcp.load().iter().cloned());
        all
    }

    /// Whether a conditional forward covers `qname`.
    pub fn is_forwarded(&self, qname: &Name) -> bool {
        self.routes
            .load()
            .forwards
            .iter()
            .any(|f| f.domain.zone_of(qname))
    }

    /// The servers to try for `qname`, best first.
    fn candidates(&self, qname: &Name) -> Vec<Arc<Server>> {
        let routes = self.routes.load();
        if let Some(f) = routes.forwards.iter().find(|f| f.domain.zone_of(qname)) {
            return self.ranked(&f.servers);
        }
        // Learned servers come after the configured ones that work, but before those
        // that fail, so that they take over once every configured one failed.
        let dhcp = self.dhcp.load();
        let (cfg_ok, cfg_failing): (Vec<_>, Vec<_>) = self
            .ranked(&routes.configured)
            .into_iter()
            .partition(|s| !self.failing(s));
        let (dhcp_ok, dhcp_failing): (Vec<_>, Vec<_>) = self
            .ranked(&dhcp)
            .into_iter()
            .partition(|s| !self.failing(s));
        [cfg_ok, dhcp_ok, cfg_failing, dhcp_failing].concat()
    }

    /// Failed at its last try, recently enough not to deserve a new chance yet.
    fn failing(&self, s: &Server) -> bool {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let retry_ms = u64::try_from(RETRY_AFTER.as_millis()).unwrap_or(u64::MAX);
        s.health.consecutive_failures() > 0
            && now_ms.saturating_sub(s.health.last_failure_ms.load(Ordering::Relaxed)) < retry_ms
    }

    fn ranked(&self, servers: &[Arc<Server>]) -> Vec<Arc<Server>> {
        let mut list: Vec<Arc<Server>> = servers.to_vec();
        list.sort_by_key(|s| (self.failing(s), s.health.latency()));
        list
    }

    /// Sends the client's `query` (wire format) upstream and returns the answer.
    pub async fn forward(&self, query: &[u8]) -> Result<Forwarded, UpstreamError> {
        let mut request =
            Message::from_vec(query).map_err(|e| UpstreamError::BadQuery(e.to_string()))?;
        // Re-encoded only when an option had to go: most queries carry none.
        let reencoded;
        let query = if request.edns.as_mut().is_some_and(keep_end_to_end) {
            reencoded = request
                .to_vec()
                .map_err(|e| UpstreamError::BadQuery(e.to_string()))?;
            reencoded.as_slice()
        } else {
            query
        };
        let Some(q) = request.queries.first() else {
            return Err(UpstreamError::BadQuery("no question".into()));
        };
        let candidates = self.candidates(&q.name);
        if candidates.is_empty() {
            return Err(UpstreamError::NoUpstreams);
        }
        let mut last = UpstreamError::NoUpstreams;
        // A REFUSED answer, given to the client when no other server answers.
        let mut refused: Option<Forwarded> = None;
        for server in candidates.iter().cycle().take(TRIES) {
            let started = Instant::now();
            let result =
                tokio::time::timeout(self.try_timeout, self.exchange(server, query, &request))
                    .await
                    .unwrap_or_else(|_| Err(UpstreamError::Timeout(server.label.clone())));
            let latency = started.elapsed();
            match result {
                Ok(mut message) => {
                    message.metadata.id = request.metadata.id;
                    if let Some(e) = message.edns.as_mut() {
                        keep_end_to_end(e);
                    }
                    let answer = Forwarded {
                        message,
                        upstream: server.label.clone(),
                        latency,
                    };
                    // SERVFAIL is the server's answer, not its failure: a validating
                    // resolver gives it for a DNSSEC-bogus name, and asking another
                    // server (the DHCP-learned one may not validate) would hand the
                    // client the forged answer validation caught. REFUSED is the mark
                    // of a server that does not serve us (an ACL refuses every query),
                    // so it ranks the server down and the next one is asked.
                    if answer.message.metadata.response_code == ResponseCode::Refused {
                        server.health.failure(latency, self.epoch.elapsed());
                        tracing::debug!(upstream = server.label, "upstream refused the query");
                        last = UpstreamError::Failed(server.label.clone(), ResponseCode::Refused);
                        refused.get_or_insert(answer);
                        continue;
                    }
                    server.health.success(latency);
                    return Ok(answer);
                }
                Err(e) => {
                    server.health.failure(latency, self.epoch.elapsed());
                    tracing::debug!(upstream = server.label, error = %e, "upstream try failed");
                    last = e;
                }
            }
        }
        refused.ok_or(last)
    }

    async fn exchange(
        &self,
        server: &Server,
        query: &[u8],
        request: &Message,
    ) -> Result<Message, UpstreamError> {
        match &server.transport {
            Transport::Unusable(why) => Err(UpstreamError::Unsupported(server.label.clone(), why)),
            Transport::Plain(addr) => plain(&server.label, *addr, query, request).await,
            Transport::Tls {
                host, port, conn, ..
            }
            | Transport::Https {
                host, port, conn, ..
            } => {
                let mut guard = conn.0.lock().await;
                let exchange = match guard.as_ref() {
                    Some((x, _)) => x.clone(),
                    None => {
                        let addr = self.address(host, *port).await?;
                        let c = self.connect(server, addr).await?;
                        let x = c.0.clone();
                        *guard = Some(c);
                        x
                    }
                };
                drop(guard);
                let r = via_exchange(&server.label, &exchange, request).await;
                if r.is_err() {
                    // The next query opens a new connection instead of a dead one.
                    *conn.0.lock().await = None;
                }
                r
            }
        }
    }

    /// Opens the kept-open connection of an encrypted upstream.
    async fn connect(&self, server: &Server, addr: SocketAddr) -> Result<Connected, UpstreamError> {
        match &server.transport {
            Transport::Tls { server_name, .. } => {
                self.connect_tls(&server.label, addr, server_name).await
            }
            Transport::Https {
                server_name, path, ..
            } => {
                self.connect_https(&server.label, addr, server_name, path)
                    .await
            }
            Transport::Unusable(why) => Err(UpstreamError::Unsupported(server.label.clone(), why)),
            Transport::Plain(_) => Err(UpstreamError::Unsupported(
                server.label.clone(),
                "plain upstreams keep no connection",
            )),
        }
    }

    /// The address of an encrypted upstream given by name, asked of the plain upstreams
    /// (configured or from DHCP), A then AAAA: the system resolver may be dnsd itself.
    async fn address(&self, host: &Host, port: u16) -> Result<SocketAddr, UpstreamError> {
        let name = match host {
            Host::Ip(ip) => return Ok(SocketAddr::new(*ip, port)),
            Host::Name(n) => n.as_str(),
        };
        let qname = fqdn(name)
            .ok_or_else(|| UpstreamError::Network(name.to_owned(), "not a DNS name".to_owned()))?;
        let (dhcp, routes) = (self.dhcp.load(), self.routes.load());
        let plain: Vec<SocketAddr> = routes
            .configured
            .iter()
            .chain(dhcp.iter())
            .filter_map(|s| match s.transport {
                Transport::Plain(a) => Some(a),
                _ => None,
            })
            .collect();
        // IPv4 first, then IPv6: a provider that gives only IPv6 (or a resolver known by
        // its AAAA alone) must still be reachable.
        for qtype in [RecordType::A, RecordType::AAAA] {
            let mut m = Message::query();
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(qname.clone(), qtype));
            let bytes = m
                .to_vec()
                .map_err(|e| UpstreamError::BadQuery(e.to_string()))?;
            for a in &plain {
                let Ok(Ok(answer)) =
                    tokio::time::timeout(self.try_timeout, plain_exchange(name, *a, &bytes, &m))
                        .await
                else {
                    continue;
                };
                if let Some(ip) = answer.answers.iter().find_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                }) {
                    return Ok(SocketAddr::new(ip, port));
                }
            }
        }
        Err(UpstreamError::Network(
            name.to_owned(),
            "cannot resolve its address: no plain upstream answered".to_owned(),
        ))
    }

    fn tls_config(&self, label: &str) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
        self.tls
            .load_full()
            .ok_or_else(|| UpstreamError::Unsupported(label.to_owned(), "TLS without roots"))
    }

    async fn connect_tls(
        &self,
        label: &str,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connected, UpstreamError> {
        let config = (*self.tls_config(label)?).clone();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| UpstreamError::Network(label.to_owned(), e.to_string()))?;
        let provider = TokioRuntimeProvider::new();
        let x = hickory_net::tls::tls_exchange(
            addr,
            name,
            config,
            self.try_timeout,
            None,
            provider.clone(),
        )
        .await
        .map_err(|e| UpstreamError::Network(label.to_owned(), e.to_string()))?;
        Ok((x, provider))
    }

    async fn connect_https(
        &self,
        label: &str,
        addr: SocketAddr,
        server_name: &str,
        path: &str,
    ) -> Result<Connected, UpstreamError> {
        let provider = TokioRuntimeProvider::new();
        let mut builder =
            hickory_net::h2::HttpsClientStream::builder(self.tls_config(label)?, provider.clone());
        builder.request_timeout(self.try_timeout);
        let x = builder
            .exchange(addr, Arc::from(server_name), Arc::from(path))
            .await
            .map_err(|e| UpstreamError::Network(label.to_owned(), e.to_string()))?;
        Ok((x, provider))
    }
}

/// Whether an EDNS option means the same to every hop, so that dnsd may pass it between
/// client and upstream, and replay it from the cache to another client. A COOKIE is a
/// secret between one client and one server (RFC 7873: replayed, it hands one client's
/// cookie to the next), padding and keepalive describe one connection (RFC 7830, 7828),
/// a client subnet would tell the upstream the LAN's addresses and make answers differ
/// per client (RFC 7871), NSID names the server that answered, CHAIN, EXPIRE, LLQ and UL
/// concern one server. What stays: the DNSSEC algorithms the client understands (DAU,
/// DHU, N3U, RFC 6975) and Extended DNS Errors (15, RFC 8914), which explain a SERVFAIL
/// to the client. Options dnsd does not know are dropped, since it cannot tell which
/// kind they are.
pub fn end_to_end(code: EdnsCode) -> bool {
    const EXTENDED_ERROR: u16 = 15;
    matches!(code, EdnsCode::DAU | EdnsCode::DHU | EdnsCode::N3U)
        || code == EdnsCode::Unknown(EXTENDED_ERROR)
}

/// Drops the options of `edns` that are not [`end_to_end`]; says whether any was there.
pub fn keep_end_to_end(edns: &mut Edns) -> bool {
    let options = &mut edns.options_mut().options;
    let before = options.len();
    options.retain(|(code, _)| end_to_end(*code));
    options.len() != before
}

fn fqdn(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n.to_lowercase())
}

async fn via_exchange(
    label: &str,
    exchange: &DnsExchange<TokioRuntimeProvider>,
    request: &Message,
) -> Result<Message, UpstreamError> {
    // `use_edns: false` keeps hickory from touching the client's OPT record.
    let mut options = DnsRequestOptions::default();
    options.use_edns = false;
    let response = exchange
        .send(DnsRequest::new(request.clone(), options))
        .first_answer()
        .await
        .map_err(|e| UpstreamError::Network(label.to_owned(), e.to_string()))?;
    let message = response.into_message();
    check_answer(label, &message, request)?;
    Ok(message)
}

async fn plain(
    label: &str,
    addr: SocketAddr,
    query: &[u8],
    request: &Message,
) -> Result<Message, UpstreamError> {
    plain_exchange(label, addr, query, request).await
}

/// UDP, then TCP when the answer is truncated.
async fn plain_exchange(
    label: &str,
    addr: SocketAddr,
    query: &[u8],
    request: &Message,
) -> Result<Message, UpstreamError> {
    let net = |e: std::io::Error| UpstreamError::Network(label.to_owned(), e.to_string());
    let id: u16 = rand::random();
    let mut out = query.to_vec();
    set_id(&mut out, id);
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => (IpAddr::from([0u8, 0, 0, 0]), 0).into(),
        SocketAddr::V6(_) => (IpAddr::from([0u16; 8]), 0).into(),
    };
    // A fresh socket per query gives each query its own random source port, which is
    // what makes forged answers hard (RFC 5452).
    let sock = UdpSocket::bind(bind).await.map_err(net)?;
    sock.connect(addr).await.map_err(net)?;
    sock.send(&out).await.map_err(net)?;
    let mut buf = vec![0u8; UDP_BUFFER + 1];
    let answer = loop {
        let n = sock.recv(&mut buf).await.map_err(net)?;
        if n > UDP_BUFFER {
            // Cut by the read: its id cannot be trusted more than a truncated answer's,
            // and TCP below checks the id of the whole one.
            break None;
        }
        let Some(bytes) = buf.get(..n) else {
            continue;
        };
        // Anything that is not the answer to this query is ignored, not an error: it may
        // be a late answer to an earlier one, or a forgery.
        let Ok(m) = Message::from_vec(bytes) else {
            continue;
        };
        if m.metadata.id == id && m.queries == request.queries {
            break Some(m);
        }
    };
    if let Some(answer) = answer
        && !answer.metadata.truncation
    {
        return Ok(answer);
    }
    tracing::debug!(upstream = label, "truncated answer, asking again over TCP");
    let mut tcp = TcpStream::connect(addr).await.map_err(net)?;
    let len = u16::try_from(out.len())
        .map_err(|_| UpstreamError::BadQuery("longer than 64 KiB".into()))?;
    let mut framed = Vec::with_capacity(out.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&out);
    tcp.write_all(&framed).await.map_err(net)?;
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).await.map_err(net)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut body).await.map_err(net)?;
    let m = Message::from_vec(&body)
        .map_err(|e| UpstreamError::Malformed(label.to_owned(), e.to_string()))?;
    if m.metadata.id != id {
        return Err(UpstreamError::Malformed(
            label.to_owned(),
            "answer id does not match".into(),
        ));
    }
    check_answer(label, &m, request)?;
    Ok(m)
}

fn check_answer(label: &str, m: &Message, request: &Message) -> Result<(), UpstreamError> {
    if m.queries != request.queries {
        return Err(UpstreamError::Malformed(
            label.to_owned(),
            "answer is for another question".into(),
        ));
    }
    Ok(())
}

fn set_id(msg: &mut [u8], id: u16) {
    if let Some(b) = msg.get_mut(..2) {
        b.copy_from_slice(&id.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, MessageType, OpCode};
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::A;
    use tokio::net::TcpListener;

    fn query(name: &str) -> Message {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.metadata.checking_disabled = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let mut edns = Edns::new();
        edns.set_dnssec_ok(true).set_max_payload(1232);
        m.set_edns(edns);
        m
    }

    #[derive(Clone, Copy)]
    enum Behaviour {
        Answer(u8),
        ServFail,
        Refused,
        Silent,
        Truncate(u8),
    }

    fn answer_for(q: &Message, last_octet: u8) -> Message {
        let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        r.metadata.recursion_available = true;
        r.add_queries(q.queries.clone());
        let name = q.queries[0].name.clone();
        r.add_answer(Record::from_rdata(
            name,
            300,
            RData::A(A::new(192, 0, 2, last_octet)),
        ));
        r
    }

    /// A fake upstream on loopback. It reports the last query it saw, to check what was
    /// passed through.
    async fn fake(b: Behaviour) -> (SocketAddr, Arc<std::sync::Mutex<Option<Message>>>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(None));
        let seen2 = seen.clone();
        let tcp = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let q = Message::from_vec(&buf[..n]).unwrap();
                *seen2.lock().unwrap() = Some(q.clone());
                let r = match b {
                    Behaviour::Answer(o) => answer_for(&q, o),
                    Behaviour::ServFail => {
                        let mut r = answer_for(&q, 0);
                        r.answers.clear();
                        r.metadata.response_code = ResponseCode::ServFail;
                        r
                    }
                    Behaviour::Refused => {
                        let mut r = answer_for(&q, 0);
                        r.answers.clear();
                        r.metadata.response_code = ResponseCode::Refused;
                        r
                    }
                    Behaviour::Silent => continue,
                    Behaviour::Truncate(_) => {
                        let mut r = answer_for(&q, 0);
                        r.answers.clear();
                        r.metadata.truncation = true;
                        r
                    }
                };
                sock.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await.unwrap();
                let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut body).await.unwrap();
                let q = Message::from_vec(&body).unwrap();
                let o = match b {
                    Behaviour::Truncate(o) | Behaviour::Answer(o) => o,
                    _ => 0,
                };
                let r = answer_for(&q, o).to_vec().unwrap();
                let mut out = u16::try_from(r.len()).unwrap().to_be_bytes().to_vec();
                out.extend_from_slice(&r);
                s.write_all(&out).await.unwrap();
            }
        });
        (addr, seen)
    }

    fn dns(upstreams: &[String], forwarding: &str) -> Dns {
        let list = upstreams
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let toml = format!("version = 1\n[dns]\nupstreams = [{list}]\n{forwarding}");
        appliance::load_str(&toml).unwrap().dns
    }

    fn addr_of(m: &Message) -> String {
        match &m.answers[0].data {
            RData::A(a) => a.0.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_encrypted_upstream_known_by_its_aaaa_alone_is_found() {
        // The plain upstream: a dnsd answering the DoT server's name with an IPv6 address
        // only, so the A query gets NODATA and the AAAA query the address.
        let text = "version = 1\n[dns]\nupstreams = [\"127.0.0.1:9\"]\n[[dns.records]]\nname = \"dot.example\"\naddresses = [\"2001:db8::53\"]\n";
        let cfg = appliance::load_str(text).unwrap();
        let policy = crate::policy::Policy::build(&cfg, &crate::policy::Lists::new()).unwrap();
        let resolver = Arc::new(crate::server::Resolver::new(&cfg, Arc::new(policy)));
        let plain = crate::server::Server::bind(resolver, vec!["127.0.0.1:0".parse().unwrap()])
            .await
            .unwrap();
        let u = Upstreams::from_config(&dns(&[plain.addresses()[0].to_string()], ""));
        let got = u
            .address(&Host::parse("dot.example").unwrap(), 853)
            .await
            .unwrap();
        assert_eq!(got, "[2001:db8::53]:853".parse::<SocketAddr>().unwrap());
        let none = u
            .address(&Host::parse("nothing.example").unwrap(), 853)
            .await;
        assert!(none.is_err(), "{none:?}");
    }

    #[tokio::test]
    async fn forwards_with_a_new_id_and_passes_edns_and_flags_through() {
        let (a, seen) = fake(Behaviour::Answer(1)).await;
        let u = Upstreams::from_config(&dns(&[a.to_string()], ""));
        let q = query("www.example.org.");
        let f = u.forward(&q.to_vec().unwrap()).await.unwrap();
        assert_eq!(f.message.metadata.id, 4242);
        assert_eq!(addr_of(&f.message), "192.0.2.1");
        let sent = seen.lock().unwrap().clone().unwrap();
        assert_ne!(sent.metadata.id, 4242, "a new id upstream");
        assert!(sent.metadata.checking_disabled);
        let edns = sent.edns.unwrap();
        assert!(edns.flags().dnssec_ok);
        assert_eq!(edns.max_payload(), 1232);
        let s = &u.servers()[0];
        assert_eq!(s.health.successes.load(Ordering::Relaxed), 1);
        assert!(s.health.latency() > Duration::ZERO);
    }

    #[tokio::test]
    async fn truncated_answers_are_asked_again_over_tcp() {
        let (a, _) = fake(Behaviour::Truncate(7)).await;
        let u = Upstreams::from_config(&dns(&[a.to_string()], ""));
        let f = u
            .forward(&query("big.example.").to_vec().unwrap())
            .await
            .unwrap();
        assert!(!f.message.metadata.truncation);
        assert_eq!(addr_of(&f.message), "192.0.2.7");
    }

    #[tokio::test]
    async fn fails_over_on_timeout_and_refused_and_ranks_the_healthy_first() {
        let (dead, _) = fake(Behaviour::Silent).await;
        let (bad, _) = fake(Behaviour::Refused).await;
        let (good, _) = fake(Behaviour::Answer(3)).await;
        let u = Upstreams::from_config(&dns(&[dead.to_string(), good.to_string()], ""))
            .with_try_timeout(Duration::from_millis(200));
        let q = query("a.example.").to_vec().unwrap();
        let f = u.forward(&q).await.unwrap();
        assert_eq!(addr_of(&f.message), "192.0.2.3");
        assert_eq!(f.upstream, good.to_string());
        // The dead one is now ranked last: the next query goes straight to the good one.
        let started = Instant::now();
        u.forward(&q).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(200));
        let dead_health = &u.servers()[0].health;
        assert_eq!(dead_health.failures.load(Ordering::Relaxed), 1);

        // A refusing server is ranked down and the next one asked; when none answers
        // better, the client gets the refusal rather than a SERVFAIL of ours.
        let u = Upstreams::from_config(&dns(&[bad.to_string(), good.to_string()], ""));
        let f = u.forward(&q).await.unwrap();
        assert_eq!(addr_of(&f.message), "192.0.2.3");
        assert_eq!(u.servers()[0].health.failures.load(Ordering::Relaxed), 1);
        assert_eq!(u.candidates(&Name::root())[0].label, good.to_string());
        let u = Upstreams::from_config(&dns(&[bad.to_string(), dead.to_string()], ""))
            .with_try_timeout(Duration::from_millis(100));
        let f = u.forward(&q).await.unwrap();
        assert_eq!(f.message.metadata.response_code, ResponseCode::Refused);
        assert_eq!(f.message.metadata.id, 4242);
        assert_eq!(f.upstream, bad.to_string());
    }

    /// A validating upstream's SERVFAIL (a DNSSEC-bogus name) is its answer: the client
    /// gets it, the server stays first, and the DHCP-learned fallback (which may not
    /// validate) is not asked.
    #[tokio::test]
    async fn a_servfail_is_the_answer_not_a_failure_of_the_server() {
        let (validating, _) = fake(Behaviour::ServFail).await;
        let (fallback, fallback_seen) = fake(Behaviour::Answer(66)).await;
        let u = Upstreams::from_config(&dns(&[validating.to_string()], ""));
        u.set_fallback_servers(vec![fallback]);
        let q = query("bogus.example.").to_vec().unwrap();
        for _ in 0..2 {
            let f = u.forward(&q).await.unwrap();
            assert_eq!(f.message.metadata.response_code, ResponseCode::ServFail);
            assert_eq!(f.message.metadata.id, 4242);
            assert_eq!(f.upstream, validating.to_string());
            assert!(f.message.answers.is_empty());
        }
        let health = &u.servers()[0].health;
        assert_eq!(health.failures.load(Ordering::Relaxed), 0);
        assert_eq!(health.successes.load(Ordering::Relaxed), 2);
        assert_eq!(u.candidates(&Name::root())[0].label, validating.to_string());
        assert!(
            fallback_seen.lock().unwrap().is_none(),
            "the fallback was asked"
        );
    }

    #[tokio::test]
    async fn conditional_forwarding_sends_a_domain_to_its_servers() {
        let (general, _) = fake(Behaviour::Answer(1)).await;
        let (corp, _) = fake(Behaviour::Answer(2)).await;
        let fwd =
            format!("[[dns.forwarding]]\ndomain = \"corp.example\"\nupstreams = [\"{corp}\"]\n");
        let u = Upstreams::from_config(&dns(&[general.to_string()], &fwd));
        let ask = |n: &str| query(n).to_vec().unwrap();
        let f = u.forward(&ask("git.corp.example.")).await.unwrap();
        assert_eq!(addr_of(&f.message), "192.0.2.2");
        let f = u.forward(&ask("CORP.example.")).await.unwrap();
        assert_eq!(addr_of(&f.message), "192.0.2.2");
        let f = u.forward(&ask("notcorp.example.")).await.unwrap();
        assert_eq!(addr_of(&f.message), "192.0.2.1");
    }

    #[tokio::test]
    async fn dhcp_servers_are_the_fallback() {
        let u = Upstreams::from_config(&dns(&[], ""));
        let q = query("a.example.").to_vec().unwrap();
        assert!(matches!(
            u.forward(&q).await.unwrap_err(),
            UpstreamError::NoUpstreams
        ));
        let (learned, _) = fake(Behaviour::Answer(9)).await;
        u.set_fallback_servers(vec![learned]);
        let f = u.forward(&q).await.unwrap();
        assert_eq!(addr_of(&f.message), "192.0.2.9");

        // Configured servers first; once they all failed, the learned ones.
        let (dead1, _) = fake(Behaviour::Silent).await;
        let (dead2, _) = fake(Behaviour::Silent).await;
        let u = Upstreams::from_config(&dns(&[dead1.to_string(), dead2.to_string()], ""))
            .with_try_timeout(Duration::from_millis(100));
        u.set_fallback_servers(vec![learned]);
        u.set_dhcp_upstreams(vec!["127.0.0.9".parse().unwrap()]);
        let labels = |u: &Upstreams| -> Vec<String> {
            u.candidates(&Name::from_ascii("x.").unwrap())
                .iter()
                .map(|s| s.label.clone())
                .collect()
        };
        assert_eq!(
            labels(&u),
            [
                dead1.to_string(),
                dead2.to_string(),
                "127.0.0.9:53".to_owned()
            ]
        );
        assert!(
            u.forward(&q).await.is_err(),
            "both tries on configured servers"
        );
        assert_eq!(labels(&u)[0], "127.0.0.9:53");
        u.set_fallback_servers(vec![learned]);
        let f = u.forward(&q).await.unwrap();
        assert_eq!(addr_of(&f.message), "192.0.2.9");
    }

    #[tokio::test]
    async fn garbage_queries_are_rejected_without_sending() {
        let u = Upstreams::from_config(&dns(&[], ""));
        assert!(matches!(
            u.forward(&[1, 2, 3]).await.unwrap_err(),
            UpstreamError::BadQuery(_)
        ));
    }
}
