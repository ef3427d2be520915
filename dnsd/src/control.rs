//! The control API: HTTP/1.1 with JSON bodies on a Unix socket
//! (`/run/appliance/dnsd.sock`, mode 0660), for `applctl dns` and `applianced`.
//!
//! | request | what it does |
//! |---|---|
//! | `GET /status` | version, uptime, listeners, lists in use, pauses, query log size |
//! | `GET /stats[?top=N]` | totals, blocked share, top domains / blocked / clients, upstreams |
//! | `GET /log[?limit=N&client=IP&domain=D]` | newest query log records first |
//! | `GET /check?name=X[&client=IP]` | whether and why X is blocked for that client |
//! | `POST /pause {"minutes": N, "group": G?}` | pauses blocking globally or for a group |
//! | `POST /resume {"group": G?}` | ends a pause |
//! | `POST /reload` | re-reads the config (and the stored lists it changes), moves the listeners, swaps the policy whole |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /v1/status` | `{"daemon": "dnsd", "generation", ...}`: the control contract's status |
//! | `POST /v1/plan {"generation": N}` | `{"generation", "actions"}`: what applying N would do |
//! | `POST /v1/apply {"generation": N}` | reloads from generation N; on failure the old policy stays |
//!
//! The `/v1` endpoints are the contract every daemon serves for applianced (docs/control.md).
//!
//! Errors are `{"error": "...", "parameter": "..."}` with a status per [`ApiError`] variant.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use appliance::Config;
use appliance::control::server::{json_response, respond};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::fetch::ListStore;
use crate::local::SharedLeaseWatcher;
use crate::policy::{Action, Lists, Policy};
use crate::querylog::Filter;
use crate::refresh::Refresher;
use crate::server::{Resolver, Server};

/// Where dnsd listens for control requests unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/appliance/dnsd.sock";
/// Request bodies are small JSON objects.
const MAX_BODY: usize = 64 * 1024;
/// `GET /log` returns at most this many records.
pub const MAX_LOG_LIMIT: usize = 10_000;
const DEFAULT_LOG_LIMIT: usize = 100;
/// A pause lasts at most a week.
const MAX_PAUSE_MINUTES: u64 = 7 * 24 * 60;

/// Why a control request failed. Each variant has its own status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("parameter {param}: {reason}")]
    BadParameter { param: &'static str, reason: String },
    #[error("the body is not a JSON object: {0}")]
    BadBody(String),
    #[error("the body is larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("{method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allowed: &'static str,
    },
    #[error("the query log is off (dns.query_log_size is 0)")]
    LogOff,
    #[error("the config is invalid; nothing was changed:\n{0}")]
    InvalidConfig(String),
    #[error("{0}; nothing was changed")]
    Listen(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::LogOff => StatusCode::CONFLICT,
            ApiError::InvalidConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // The config is valid; the box is not ready for it (an address taken, or
            // not on this box yet).
            ApiError::Listen(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> Value {
        match self {
            ApiError::BadParameter { param, .. } => {
                json!({ "error": self.to_string(), "parameter": param })
            }
            _ => json!({ "error": self.to_string() }),
        }
    }
}

fn bad(param: &'static str, reason: impl Into<String>) -> ApiError {
    ApiError::BadParameter {
        param,
        reason: reason.into(),
    }
}

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {0}: another process is serving on it")]
    InUse(PathBuf),
}

/// Reads the config again for `POST /reload`; the error is a report for the user.
pub type ConfigLoader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

struct State {
    cfg: Arc<Config>,
    lists: Lists,
    /// Pauses as the policy has them, for `/status`: group (`None`: all) to end.
    pauses: BTreeMap<Option<String>, SystemTime>,
    refresh: Option<JoinHandle<()>>,
    /// Which refresher may change the lists: a replaced one can still be inside its
    /// callback, waiting for the lock, with the lists of the old config.
    generation: u64,
    /// The config generation applied through `/v1/apply` last (`None` before the first).
    config_generation: Option<u64>,
}

/// The listeners, which an apply moves to the addresses its config asks for: plain DNS,
/// and DoT and DoH on the same addresses.
#[derive(Debug)]
pub struct Listeners {
    server: Server,
    /// `--listen` was given: these addresses whatever the config says (tests, debugging).
    fixed: Option<Vec<SocketAddr>>,
    /// Where the certificate of DoT and DoH is kept.
    tls_dir: PathBuf,
}

impl Listeners {
    /// Listeners that follow the config's `dns.listen` (or the LAN side) and `dns.enabled`.
    pub fn from_config(server: Server) -> Self {
        Self {
            server,
            fixed: None,
            tls_dir: PathBuf::from(crate::tls::DEFAULT_DIR),
        }
    }

    /// Listeners on `fixed` while DNS is enabled, on nothing while it is not.
    pub fn fixed(server: Server, fixed: Vec<SocketAddr>) -> Self {
        Self {
            server,
            fixed: Some(fixed),
            tls_dir: PathBuf::from(crate::tls::DEFAULT_DIR),
        }
    }

    /// The certificate of DoT and DoH in `dir` (default [`crate::tls::DEFAULT_DIR`]).
    pub fn with_tls_dir(mut self, dir: PathBuf) -> Self {
        self.tls_dir = dir;
        self
    }

    /// Where `cfg` wants plain DNS; an error when it is enabled with nowhere to listen.
    fn wanted(&self, cfg: &Config) -> Result<Vec<SocketAddr>, ApiError> {
        if !cfg.dns.enabled {
            return Ok(Vec::new());
        }
        let listen = match &self.fixed {
            Some(f) => f.clone(),
            None => crate::listen::addresses(cfg),
        };
        if listen.is_empty() {
            return Err(ApiError::InvalidConfig(NOWHERE.to_owned()));
        }
        Ok(listen)
    }
}

/// Why an enabled DNS has no listener.
pub const NOWHERE: &str =
    "nowhere to listen: set dns.listen, or give a LAN link a static address and a DHCP server";

/// The running daemon as the control API sees it. Every change of the policy (a list
/// update, a pause, a reload) goes through one lock, so none undoes another.
pub struct Daemon {
    resolver: Arc<Resolver>,
    /// The compiled lists; its load counter shows what an apply loaded.
    store: ListStore,
    client: reqwest::Client,
    load_config: ConfigLoader,
    /// The addresses plain DNS is bound to, for `/status`.
    listen: Mutex<Vec<SocketAddr>>,
    /// Held for a whole apply: two applies never interleave their binds.
    listeners: tokio::sync::Mutex<Option<Listeners>>,
    started: Instant,
    state: Mutex<State>,
    /// The config store `/v1/plan` and `/v1/apply` read generations from.
    config_dir: Mutex<PathBuf>,
    /// Renamed at each apply: client names follow `system.domain` and the config's names.
    leases: Mutex<Option<SharedLeaseWatcher>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// `lists` are the ones the resolver's policy was built from.
    pub fn new(
        resolver: Arc<Resolver>,
        cfg: Arc<Config>,
        lists: Lists,
        store_dir: PathBuf,
        client: reqwest::Client,
        load_config: ConfigLoader,
        listeners: Option<Listeners>,
    ) -> Arc<Self> {
        let listen = listeners
            .as_ref()
            .map(|l| l.server.addresses().to_vec())
            .unwrap_or_default();
        Arc::new(Self {
            resolver,
            store: ListStore::new(store_dir),
            client,
            load_config,
            listen: Mutex::new(listen),
            listeners: tokio::sync::Mutex::new(listeners),
            started: Instant::now(),
            config_dir: Mutex::new(PathBuf::from(appliance::store::DEFAULT_DIR)),
            leases: Mutex::new(None),
            state: Mutex::new(State {
                cfg,
                lists,
                pauses: BTreeMap::new(),
                refresh: None,
                generation: 0,
                config_generation: None,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every field is replaced whole under the lock: a panic cannot leave half a change.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `refresher` in the background; each list update rebuilds and swaps the policy.
    /// A previous refresher is stopped.
    pub fn start_refresher(self: &Arc<Self>, refresher: Refresher) {
        let mut st = self.state();
        st.generation += 1;
        let (me, generation) = (Arc::clone(self), st.generation);
        let task = tokio::spawn(refresher.run(move |lists| me.lists_changed(generation, lists)));
        if let Some(old) = st.refresh.replace(task) {
            old.abort();
        }
    }

    /// Hands the listeners back, for a shutdown that waits for the queries in flight.
    pub async fn take_server(&self) -> Option<Server> {
        self.listeners.lock().await.take().map(|l| l.server)
    }

    /// The addresses plain DNS is bound to now.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The lists the policy in use was built from.
    pub fn lists(&self) -> Lists {
        self.state().lists.clone()
    }

    /// How many compiled lists were read from the store since the start (the first
    /// load at the start is the caller's, not counted here): an apply that changes no list
    /// reads none.
    pub fn list_loads(&self) -> u64 {
        self.store.loads()
    }

    /// The DoT and DoH listeners and where they are bound.
    pub async fn encrypted_addresses(&self) -> Vec<(crate::tls::Encrypted, SocketAddr)> {
        self.listeners
            .lock()
            .await
            .as_ref()
            .map(|l| l.server.encrypted_addresses())
            .unwrap_or_default()
    }

    /// Stops the background refresher.
    pub fn stop(&self) {
        if let Some(t) = self.state().refresh.take() {
            t.abort();
        }
    }

    fn lists_changed(&self, generation: u64, lists: Lists) {
        let mut st = self.state();
        if st.generation != generation {
            return;
        }
        match Policy::build(&st.cfg, &lists) {
            Ok(p) => {
                let p = p.with_pauses_of(&self.resolver.policy());
                self.resolver.swap_policy(Arc::new(p));
                tracing::info!(lists = lists.len(), "policy swapped after a list update");
                crate::reclaim::later(std::mem::replace(&mut st.lists, lists));
            }
            Err(e) => tracing::error!(error = %e, "list update not applied"),
        }
    }

    /// Rebuilds the policy from the current config and lists, changed by `f`, and swaps it.
    fn rebuild(&self, st: &State, f: impl FnOnce(&mut Policy)) -> Result<(), ApiError> {
        let mut p = Policy::build(&st.cfg, &st.lists)
            .map_err(ApiError::Internal)?
            .with_pauses_of(&self.resolver.policy());
        f(&mut p);
        self.resolver.swap_policy(Arc::new(p));
        Ok(())
    }

    fn check_group(st: &State, group: Option<&str>) -> Result<(), ApiError> {
        match group {
            None | Some("default") => Ok(()),
            Some(g) if st.cfg.dns.groups.keys().any(|k| k.as_str() == g) => Ok(()),
            Some(g) => {
                let known: Vec<&str> = std::iter::once("default")
                    .chain(st.cfg.dns.groups.keys().map(|k| k.as_str()))
                    .collect();
                Err(bad(
                    "group",
                    format!("no group {g:?} in dns.groups (known: {})", known.join(", ")),
                ))
            }
        }
    }

    pub fn pause(&self, group: Option<&str>, for_: Duration) -> Result<(), ApiError> {
        let mut st = self.state();
        Self::check_group(&st, group)?;
        self.rebuild(&st, |p| p.pause(group, for_))?;
        st.pauses
            .insert(group.map(str::to_owned), SystemTime::now() + for_);
        tracing::info!(
            group = group.unwrap_or("(all)"),
            minutes = for_.as_secs() / 60,
            "blocking paused"
        );
        Ok(())
    }

    pub fn resume(&self, group: Option<&str>) -> Result<(), ApiError> {
        let mut st = self.state();
        Self::check_group(&st, group)?;
        self.rebuild(&st, |p| p.resume(group))?;
        st.pauses.remove(&group.map(str::to_owned));
        tracing::info!(group = group.unwrap_or("(all)"), "blocking resumed");
        Ok(())
    }

    /// Re-reads the config and the stored lists it changes, moves the listeners, swaps the
    /// policy and the local names, and restarts the refresher for the new list set.
    /// Returns what needs a restart (nothing now; the contract keeps the field).
    pub async fn reload(self: &Arc<Self>) -> Result<Vec<String>, ApiError> {
        let cfg = (self.load_config)().map_err(ApiError::InvalidConfig)?;
        self.reload_from(cfg).await
    }

    /// Where `/v1/plan` and `/v1/apply` read generations (default: the store's default).
    pub fn set_config_dir(&self, dir: PathBuf) {
        *self.config_dir.lock().unwrap_or_else(|e| e.into_inner()) = dir;
    }

    /// The watcher of the lease file, whose names an apply changes with `system.domain`.
    pub fn set_lease_watcher(&self, watcher: SharedLeaseWatcher) {
        *self.leases.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
    }

    fn load_generation(&self, generation: u64) -> Result<Config, ApiError> {
        let dir = self
            .config_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let g = appliance::store::Store::open(&dir)
            .and_then(|s| s.get(generation))
            .map_err(|e| ApiError::InvalidConfig(e.to_string()))?;
        appliance::load_str(&g.text).map_err(|d| {
            ApiError::InvalidConfig(d.render(&g.text, &format!("generation {generation}"), false))
        })
    }

    /// What applying `generation` would change; changes nothing.
    pub fn plan_generation(&self, generation: u64) -> Result<Vec<String>, ApiError> {
        let cfg = self.load_generation(generation)?;
        let st = self.state();
        let (old, new) = (&st.cfg.dns, &cfg.dns);
        let mut actions = Vec::new();
        if old != new {
            actions.push(format!(
                "rebuild the DNS policy from generation {generation}"
            ));
        }
        if st.cfg.system.domain != cfg.system.domain {
            actions.push(format!(
                "name DHCP clients and the router in {} (was {})",
                cfg.system.domain.as_str(),
                st.cfg.system.domain.as_str()
            ));
        }
        let show = |v: &[SocketAddr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (was, will) = (
            crate::listen::addresses(&st.cfg),
            crate::listen::addresses(&cfg),
        );
        match (old.enabled, new.enabled) {
            (false, true) => actions.push("open the DNS listeners".to_owned()),
            (true, false) => actions.push("close the DNS listeners".to_owned()),
            (true, true) if was != will => actions.push(format!(
                "listen for DNS on {} (was {})",
                show(&will),
                show(&was)
            )),
            _ => {}
        }
        let (enc_was, enc_will) = (
            crate::tls::wanted(&st.cfg, &was),
            crate::tls::wanted(&cfg, &will),
        );
        if enc_was != enc_will {
            let show = |v: &[(crate::tls::Encrypted, SocketAddr)]| {
                if v.is_empty() {
                    return "nowhere".to_owned();
                }
                v.iter()
                    .map(|(k, a)| format!("{k} on {a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            actions.push(format!(
                "listen for {} (was {})",
                show(&enc_will),
                show(&enc_was)
            ));
        }
        Ok(actions)
    }

    /// Reloads from `generation`. When the new policy cannot be built the old one stays.
    pub async fn apply_generation(
        self: &Arc<Self>,
        generation: u64,
    ) -> Result<Vec<String>, ApiError> {
        let cfg = self.load_generation(generation)?;
        let restart = self.reload_from(cfg).await?;
        self.state().config_generation = Some(generation);
        let mut actions = vec![format!(
            "reloaded the DNS policy from generation {generation}"
        )];
        actions.extend(
            restart
                .into_iter()
                .map(|r| format!("{r}: applied at the next restart")),
        );
        Ok(actions)
    }

    async fn reload_from(self: &Arc<Self>, cfg: Config) -> Result<Vec<String>, ApiError> {
        // Held to the end: the listeners and the policy of one apply go in together.
        let mut listeners = self.listeners.lock().await;
        let wanted = match listeners.as_ref() {
            Some(l) => Some(l.wanted(&cfg)?),
            None => None,
        };
        // The lists in use, of the config in use: an apply that leaves a list as it was
        // keeps its compiled copy, so that it reads nothing and holds no second copy.
        let (old_dns, in_use) = {
            let st = self.state();
            (st.cfg.dns.clone(), st.lists.clone())
        };
        let (store, client, dns) = (self.store.clone(), self.client.clone(), cfg.dns.clone());
        // Loading stored lists reads and checks tens of MB: on a background thread, which
        // a normal one (spawn_blocking's) is not; it would take the core from the listener.
        let loading = crate::reclaim::reloading();
        let snapshot = in_use.clone();
        let mut refresher = crate::background::run("dnsd-lists", move || {
            Refresher::reusing(store, client, &dns, &old_dns, &in_use)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("loading the stored lists: {e}")))?;
        drop(loading);
        let mut policy = Policy::build(&cfg, refresher.lists()).map_err(ApiError::InvalidConfig)?;
        // The last step that can fail: new addresses are bound before the policy changes,
        // and old ones closed only once every new one is bound.
        if let (Some(l), Some(wanted)) = (listeners.as_mut(), wanted) {
            let encrypted = crate::tls::wanted(&cfg, &wanted);
            // The pair is read again at each apply (an administrator may have replaced
            // it) and reissued when dnsd's own no longer covers the router's names.
            let cert = if encrypted.is_empty() {
                None
            } else {
                let spec = crate::tls::spec_for(&cfg, l.tls_dir.clone(), &wanted);
                let prepared =
                    crate::background::run("dnsd-tls", move || crate::tls::prepare(&spec))
                        .await
                        .map_err(|e| ApiError::Internal(format!("preparing the certificate: {e}")))?
                        .map_err(|e| ApiError::Listen(format!("DNS over TLS/HTTPS: {e}")))?;
                Some(prepared)
            };
            l.server
                .rebind_all(&wanted, &encrypted, cert)
                .await
                .map_err(|e| ApiError::Listen(e.to_string()))?;
            *self.listen.lock().unwrap_or_else(|e| e.into_inner()) = l.server.addresses().to_vec();
        }
        // A ring of tens of MB is copied: on a background thread. A failure keeps the
        // ring in use and costs the new size only, not the apply.
        if let Some(rec) = self.resolver.recorder().cloned() {
            let size = cfg.dns.query_log_size.bytes();
            match crate::background::run("dnsd-querylog", move || rec.resize_log(size)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "query log not resized"),
                Err(e) => tracing::error!(error = %e, "query log not resized"),
            }
        }
        let enabled = cfg.dns.enabled;
        {
            let mut st = self.state();
            // The running refresher may have swapped in a new copy of a kept list while
            // this apply bound its listeners: carry it over rather than go back to the
            // copy of the snapshot (the store says it is fresh, so it would stay until
            // the next update).
            let mut newer = false;
            for (name, now) in &st.lists {
                let kept = refresher.lists().get(name);
                let was = snapshot.get(name);
                if let (Some(kept), Some(was)) = (kept, was)
                    && Arc::ptr_eq(kept, was)
                    && !Arc::ptr_eq(now, was)
                {
                    refresher.insert(name, Arc::clone(now));
                    newer = true;
                }
            }
            if newer {
                match Policy::build(&cfg, refresher.lists()) {
                    Ok(p) => policy = p,
                    Err(e) => {
                        tracing::error!(error = %e, "a list updated during the apply is not used")
                    }
                }
            }
            self.resolver
                .swap_policy(Arc::new(policy.with_pauses_of(&self.resolver.policy())));
            self.resolver.reload_tables(&cfg);
            self.rename_leases(&cfg);
            self.resolver
                .set_cache_config(crate::cache::CacheConfig::from_dns(&cfg.dns));
            self.resolver
                .set_rate_limit(crate::server::RateLimit::from_dns(&cfg.dns));
            let rerouted = self.resolver.upstreams().set_config(&cfg.dns);
            // Private names answered upstream while never_forward_private was off would
            // still be served from the fast path's copies.
            let private_on = cfg.dns.never_forward_private && !st.cfg.dns.never_forward_private;
            if rerouted || private_on {
                // An answer of a removed upstream or forward (a VPN's private names, a
                // filtering resolver's view) must not be served, fresh or stale.
                self.resolver.flush_cache();
            }
            st.cfg = Arc::new(cfg);
            crate::reclaim::later(std::mem::replace(&mut st.lists, refresher.lists().clone()));
            // The last references to lists this apply dropped may be these.
            crate::reclaim::later(snapshot);
            // The old refresher's lists are of the old config: from now on it is ignored.
            st.generation += 1;
        }
        tracing::info!(lists = refresher.lists().len(), "config and lists reloaded");
        // Lists are fetched for a DNS that is served.
        if enabled {
            self.start_refresher(refresher);
        } else {
            self.stop();
        }
        // Every setting is taken at the apply; the contract keeps the list for others.
        Ok(Vec::new())
    }

    /// Gives the lease names the new config's domain, and leaves its own names to it.
    fn rename_leases(&self, cfg: &Config) {
        let Some(watcher) = self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return;
        };
        let own = crate::answer::LocalZone::from_config(cfg);
        let mut w = watcher.lock().unwrap_or_else(|e| e.into_inner());
        let domain = Some(cfg.system.domain.as_str().to_owned());
        if let Some(zone) = w.rename(domain, own.names().cloned(), crate::local::unix_now()) {
            tracing::info!(
                domain = cfg.system.domain.as_str(),
                names = zone.len(),
                "lease names renamed"
            );
            self.resolver.swap_leases(Arc::new(zone));
        }
    }

    fn status(&self) -> Value {
        let st = self.state();
        let now = SystemTime::now();
        let pauses: Vec<Value> = st
            .pauses
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(g, until)| {
                json!({
                    "group": g,
                    "until_unix": until.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    "remaining_s": until.duration_since(now).map_or(0, |d| d.as_secs()),
                })
            })
            .collect();
        let lists: Vec<Value> = st
            .lists
            .iter()
            .map(|(n, l)| json!({ "name": n, "rules": l.len() }))
            .collect();
        let log = self
            .resolver
            .recorder()
            .and_then(|r| r.log())
            .map(|l| json!({ "path": l.path(), "records": l.len(), "capacity": l.capacity() }));
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "listen": self.addresses().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "blocking": st.cfg.dns.blocking,
            "block_mode": st.cfg.dns.block_mode,
            "lists": lists,
            "groups": st.cfg.dns.groups.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            "pauses": pauses,
            "query_log": log,
        })
    }

    fn stats(&self, top: usize) -> Value {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.resolver.stats();
        let total = s.total.load(Relaxed);
        let blocked = s.blocked.load(Relaxed);
        let tables = self.resolver.recorder().map(|r| r.tables().clone());
        let tops = |f: &dyn Fn(&crate::stats::Tables) -> Vec<Value>| -> Vec<Value> {
            tables.as_ref().map(f).unwrap_or_default()
        };
        let names = |t: &crate::stats::TopK<String>| -> Vec<Value> {
            t.top(top)
                .into_iter()
                .map(|e| json!({ "name": e.key, "count": e.count, "error": e.error }))
                .collect()
        };
        let ms = |us: Option<u64>| us.map(|u| u as f64 / 1000.0);
        let upstreams: Vec<Value> = self
            .resolver
            .upstream_stats()
            .into_iter()
            .map(|u| {
                let h = tables
                    .as_ref()
                    .and_then(|t| t.upstream_latency.get(&u.upstream).cloned())
                    .unwrap_or_default();
                json!({
                    "upstream": u.upstream,
                    "answers": u.successes,
                    "failures": u.failures,
                    "latency_average_ms": u.latency.as_secs_f64() * 1000.0,
                    "latency_p50_ms": ms(h.quantile(0.5)),
                    "latency_p99_ms": ms(h.quantile(0.99)),
                    "latency_samples": h.count(),
                })
            })
            .collect();
        let rec = self.resolver.recorder();
        json!({
            "queries": {
                "total": total,
                "local": s.local.load(Relaxed),
                "blocked": blocked,
                "cached": s.cached.load(Relaxed),
                "stale": s.stale.load(Relaxed),
                "forwarded": s.forwarded.load(Relaxed),
                "failed": s.failed.load(Relaxed),
                "rejected": s.rejected.load(Relaxed),
                "prefetched": s.prefetched.load(Relaxed),
            },
            "blocked_share": if total == 0 { 0.0 } else { blocked as f64 / total as f64 },
            "top_domains": tops(&|t| names(&t.domains)),
            "top_blocked": tops(&|t| names(&t.blocked)),
            "top_clients": tops(&|t| t.clients.top(top).into_iter()
                .map(|e| json!({ "client": e.key.to_string(), "count": e.count, "error": e.error }))
                .collect()),
            "upstreams": upstreams,
            "cache_entries": self.resolver.cache().len(),
            "query_log": rec.map(|r| json!({
                "records": r.log().map(|l| l.len()),
                "capacity": r.log().map(|l| l.capacity()),
                "dropped": r.dropped(),
                "write_errors": r.write_errors(),
            })),
        })
    }

    /// Why `name` gets the answer it gets, in the order the server answers: local names
    /// first (the policy never sees them), then the policy.
    pub fn check(&self, name: &str, client: IpAddr) -> Value {
        let policy = self.resolver.policy();
        let link = self.resolver.link_of(client);
        // `check`, not `decide`: with blocking off it still names the rule that would block.
        let d = policy.check(client, link.as_deref(), name);
        let local = hickory_proto::rr::Name::from_ascii(name)
            .ok()
            .map(|mut n| {
                n.set_fqdn(true);
                n
            })
            .and_then(|n| self.resolver.local_source(&n));
        let blocked = local.is_none() && matches!(d.action, Action::Block { .. });
        // A name not blocked itself may be an alias of one that is (CNAME cloaking): the
        // cached answer says, the only chain dnsd knows without asking upstream.
        let cloaked = match (local, blocked) {
            (None, false) => hickory_proto::rr::Name::from_ascii(name)
                .ok()
                .map(|mut n| {
                    n.set_fqdn(true);
                    n
                })
                .and_then(|n| self.resolver.cached_cname_blocked(client, &n)),
            _ => None,
        };
        let rule_of = |r: &Option<(crate::policy::Source, crate::compiled::Rule)>| {
            r.as_ref()
                .map(|(s, r)| (s.to_string(), r.to_string()))
                .unzip()
        };
        let (source, rule) = match (&cloaked, local) {
            (_, Some(_)) => (None, None),
            (Some(c), None) => rule_of(&c.rule),
            (None, None) => rule_of(&d.rule),
        };
        // What the server does next for a name neither local nor blocked: a private one
        // is answered NXDOMAIN by the box (dns.never_forward_private), never forwarded.
        let private = match (local, blocked || cloaked.is_some()) {
            (None, false) => hickory_proto::rr::Name::from_ascii(name)
                .ok()
                .map(|mut n| {
                    n.set_fqdn(true);
                    n
                })
                .and_then(|n| self.resolver.kept_private(&n)),
            _ => None,
        };
        let explanation = match (local, &cloaked) {
            (Some(l), _) => {
                format!("{name} is answered locally by {l}; blocking rules do not apply to it")
            }
            (None, None) if private.is_some() => format!(
                "{}; {name} is {} and never forwarded (dns.never_forward_private): the box \
                 answers NXDOMAIN unless a conditional forward covers it",
                policy.explain(client, link.as_deref(), name),
                private.as_deref().unwrap_or_default()
            ),
            (None, Some(c)) => format!(
                "{name} is blocked for group {}: its cached answer is an alias (CNAME) of {}; {}",
                d.group,
                c.target,
                policy.explain(client, link.as_deref(), &c.target)
            ),
            (None, None) => policy.explain(client, link.as_deref(), name),
        };
        json!({
            "name": name,
            "client": client.to_string(),
            "group": d.group,
            "blocked": blocked || cloaked.is_some(),
            "paused": d.paused,
            "local": local,
            "cname": cloaked.as_ref().map(|c| c.target.clone()),
            "private": private,
            "source": source,
            "rule": rule,
            "explanation": explanation,
        })
    }

    fn metrics(&self) -> String {
        let lists = self.state().lists.clone();
        crate::metrics::render(&self.resolver, &lists, self.started.elapsed().as_secs_f64())
    }
}

/// Opens the socket (mode 0660, its directory made if missing) and serves it until the
/// returned task is aborted. A stale socket file is replaced; a live one is an error.
pub async fn serve(path: &Path, daemon: Arc<Daemon>) -> Result<JoinHandle<()>, ControlError> {
    let listener = appliance::control::server::bind(path, 0o660)
        .await
        .map_err(|e| match e {
            appliance::control::ServeError::InUse(p) => ControlError::InUse(p),
            appliance::control::ServeError::Io { path, source } => {
                ControlError::Io { path, source }
            }
        })?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let d = Arc::clone(&daemon);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let d = Arc::clone(&d);
                    async move { Ok::<_, Infallible>(handle(&d, req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "control connection ended with an error");
                }
            });
        }
    }))
}

async fn handle(d: &Arc<Daemon>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // The body is read whole before any answer, an error one included: hyper closes a
    // connection whose body was left unread, under a client that may still be writing it.
    let (parts, body) = req.into_parts();
    let result = match read_body(body).await {
        Ok(bytes) => route(d, Request::from_parts(parts, bytes)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(Reply::Json(v)) => json_response(StatusCode::OK, &v),
        Ok(Reply::Text(t)) => respond(StatusCode::OK, crate::metrics::CONTENT_TYPE, t),
        Err(e) => {
            tracing::debug!(%method, %path, error = %e, "control request failed");
            json_response(e.status(), &e.body())
        }
    }
}

enum Reply {
    Json(Value),
    Text(String),
}

/// The query string's parameters; a repeated or unknown one is an error.
fn params(
    query: Option<&str>,
    known: &[&'static str],
) -> Result<BTreeMap<&'static str, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let Some(name) = known.iter().find(|n| **n == k) else {
            return Err(ApiError::BadParameter {
                param: "query",
                reason: format!("unknown parameter {k:?}; known: {}", known.join(", ")),
            });
        };
        if out.insert(*name, v.into_owned()).is_some() {
            return Err(bad(name, "given more than once"));
        }
    }
    Ok(out)
}

fn parse_client(p: &BTreeMap<&'static str, String>) -> Result<Option<IpAddr>, ApiError> {
    p.get("client")
        .map(|c| {
            c.parse()
                .map_err(|_| bad("client", format!("{c:?} is not an IP address")))
        })
        .transpose()
}

/// A name as the policy takes it: lowercase, no trailing dot, labels of letters, digits,
/// `-` and `_`.
fn parse_name(param: &'static str, s: &str) -> Result<String, ApiError> {
    let n = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(n)
    } else {
        Err(bad(param, format!("{s:?} is not a domain name")))
    }
}

fn parse_count(
    param: &'static str,
    v: Option<&String>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(v) = v else {
        return Ok(default);
    };
    match v.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad(param, format!("{v:?} is not a number from 1 to {max}"))),
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    Ok(Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::BodyTooLarge
            } else {
                ApiError::BadBody(e.to_string())
            }
        })?
        .to_bytes())
}

/// The JSON object of a request body; an empty body is an empty object.
fn body_object(req: &Request<Bytes>) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = req.body();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::BadBody("expected an object".into())),
        Err(e) => Err(ApiError::BadBody(e.to_string())),
    }
}

fn only_fields(m: &serde_json::Map<String, Value>, known: &[&'static str]) -> Result<(), ApiError> {
    match m.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::BadBody(format!(
            "unknown field {k:?}; known: {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

fn group_field(m: &serde_json::Map<String, Value>) -> Result<Option<String>, ApiError> {
    match m.get("group") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(g)) => Ok(Some(g.clone())),
        Some(other) => Err(bad("group", format!("{other} is not a group name"))),
    }
}

async fn route(d: &Arc<Daemon>, req: Request<Bytes>) -> Result<Reply, ApiError> {
    let path = req.uri().path().to_owned();
    let allowed = match path.as_str() {
        "/status" | "/stats" | "/log" | "/check" | "/metrics" => "GET",
        "/pause" | "/resume" | "/reload" | "/v1/plan" | "/v1/apply" => "POST",
        "/v1/status" => "GET",
        _ => return Err(ApiError::NotFound(path)),
    };
    if req.method().as_str() != allowed {
        return Err(ApiError::MethodNotAllowed {
            method: req.method().clone(),
            path,
            allowed,
        });
    }
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    match path.as_str() {
        "/status" => {
            params(query, &[])?;
            Ok(Reply::Json(d.status()))
        }
        "/stats" => {
            let p = params(query, &["top"])?;
            let top = parse_count("top", p.get("top"), 10, 100)?;
            Ok(Reply::Json(d.stats(top)))
        }
        "/metrics" => {
            params(query, &[])?;
            Ok(Reply::Text(d.metrics()))
        }
        "/check" => {
            let p = params(query, &["name", "client"])?;
            let name = p
                .get("name")
                .ok_or_else(|| bad("name", "required: the domain to check"))?;
            let name = parse_name("name", name)?;
            let client = parse_client(&p)?.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            Ok(Reply::Json(d.check(&name, client)))
        }
        "/log" => {
            let p = params(query, &["limit", "client", "domain"])?;
            let limit = parse_count("limit", p.get("limit"), DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT)?;
            let filter = Filter {
                client: parse_client(&p)?,
                domain: p
                    .get("domain")
                    .map(|s| parse_name("domain", s))
                    .transpose()?,
            };
            let log = d
                .resolver
                .recorder()
                .and_then(|r| r.log())
                .ok_or(ApiError::LogOff)?;
            let records = tokio::task::spawn_blocking(move || log.recent(limit, &filter))
                .await
                .map_err(|e| ApiError::Internal(format!("reading the query log: {e}")))?
                .map_err(|e| ApiError::Internal(format!("reading the query log: {e}")))?;
            Ok(Reply::Json(json!({
                "records": records.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
            })))
        }
        "/pause" => {
            params(query, &[])?;
            let m = body_object(&req)?;
            only_fields(&m, &["minutes", "group"])?;
            let minutes = match m.get("minutes") {
                None => return Err(bad("minutes", "required: how long to pause, in minutes")),
                Some(v) => v
                    .as_u64()
                    .filter(|n| (1..=MAX_PAUSE_MINUTES).contains(n))
                    .ok_or_else(|| {
                        bad(
                            "minutes",
                            format!("{v} is not a whole number from 1 to {MAX_PAUSE_MINUTES}"),
                        )
                    })?,
            };
            let group = group_field(&m)?;
            d.pause(group.as_deref(), Duration::from_secs(minutes * 60))?;
            Ok(Reply::Json(
                json!({ "paused": true, "group": group, "minutes": minutes }),
            ))
        }
        "/resume" => {
            params(query, &[])?;
            let m = body_object(&req)?;
            only_fields(&m, &["group"])?;
            let group = group_field(&m)?;
            d.resume(group.as_deref())?;
            Ok(Reply::Json(json!({ "paused": false, "group": group })))
        }
        "/v1/status" => {
            params(query, &[])?;
            let mut v = d.status();
            if let Value::Object(m) = &mut v {
                m.insert("daemon".into(), json!("dnsd"));
                m.insert("generation".into(), json!(d.state().config_generation));
            }
            Ok(Reply::Json(v))
        }
        "/v1/plan" | "/v1/apply" => {
            params(query, &[])?;
            let m = body_object(&req)?;
            only_fields(&m, &["generation"])?;
            let generation = m
                .get("generation")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("generation", "required: a config generation number"))?;
            let actions = if path == "/v1/apply" {
                d.apply_generation(generation).await?
            } else {
                d.plan_generation(generation)?
            };
            Ok(Reply::Json(
                json!({ "generation": generation, "actions": actions }),
            ))
        }
        "/reload" => {
            params(query, &[])?;
            only_fields(&body_object(&req)?, &[])?;
            let restart = d.reload().await?;
            Ok(Reply::Json(
                json!({ "reloaded": true, "restart_needed_for": restart }),
            ))
        }
        other => Err(ApiError::NotFound(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn check_places_a_client_in_the_group_of_its_zone() {
        let cfg = appliance::load_str(
            r#"
version = 1
[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24"]
[firewall.zones.lan]
interfaces = ["lan"]
[dns]
upstreams = ["127.0.0.1:9"]
[dns.groups.kids]
zones = ["lan"]
deny = ["games.example"]
"#,
        )
        .unwrap();
        let policy = Policy::build(&cfg, &Lists::new()).unwrap();
        let resolver = Arc::new(Resolver::new(&cfg, Arc::new(policy)));
        let d = Daemon::new(
            resolver,
            Arc::new(cfg),
            Lists::new(),
            PathBuf::from("/nonexistent"),
            crate::fetch::http_client().unwrap(),
            Box::new(|| Err("not in this test".into())),
            None,
        );
        let v = d.check("www.games.example", "192.168.1.7".parse().unwrap());
        assert_eq!(v["group"], "kids");
        assert_eq!(v["blocked"], true);
        assert_eq!(v["source"], "group kids");
        let v = d.check("www.games.example", "10.0.0.1".parse().unwrap());
        assert_eq!(
            (v["group"].as_str(), v["blocked"].as_bool()),
            (Some("default"), Some(false))
        );
        assert!(matches!(
            d.pause(Some("nope"), Duration::from_secs(60)),
            Err(ApiError::BadParameter { param: "group", .. })
        ));
        d.pause(Some("kids"), Duration::from_secs(60)).unwrap();
        assert_eq!(
            d.check("games.example", "192.168.1.7".parse().unwrap())["paused"],
            true
        );
        assert!(matches!(d.reload().await, Err(ApiError::InvalidConfig(_))));
    }

    #[tokio::test]
    async fn plan_and_apply_read_generations_from_the_store() {
        let base = "version = 1\n[dns]\nupstreams = [\"127.0.0.1:9\"]\n";
        let cfg = appliance::load_str(base).unwrap();
        let policy = Policy::build(&cfg, &Lists::new()).unwrap();
        let resolver = Arc::new(Resolver::new(&cfg, Arc::new(policy)));
        let d = Daemon::new(
            resolver,
            Arc::new(cfg),
            Lists::new(),
            PathBuf::from("/nonexistent"),
            crate::fetch::http_client().unwrap(),
            Box::new(|| Err("not in this test".into())),
            None,
        );
        let dir = tempfile::tempdir().unwrap();
        let store = appliance::store::Store::open(dir.path()).unwrap();
        let same = store.commit(base, "same").unwrap();
        let blocking_off = store
            .commit(&format!("{base}blocking = false\n"), "off")
            .unwrap();
        d.set_config_dir(dir.path().to_owned());
        assert!(d.plan_generation(same).unwrap().is_empty());
        let plan = d.plan_generation(blocking_off).unwrap();
        assert_eq!(plan.len(), 1, "{plan:?}");
        d.apply_generation(blocking_off).await.unwrap();
        assert_eq!(d.state().config_generation, Some(blocking_off));
        assert!(!d.state().cfg.dns.blocking);
        // A generation that is not there changes nothing.
        assert!(matches!(
            d.apply_generation(99).await,
            Err(ApiError::InvalidConfig(_))
        ));
        assert_eq!(d.state().config_generation, Some(blocking_off));
        d.stop();
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let p = params(Some("limit=5&client=10.0.0.1"), &["limit", "client"]).unwrap();
        assert_eq!(parse_count("limit", p.get("limit"), 100, 1000).unwrap(), 5);
        assert!(parse_client(&p).unwrap().is_some());
        let e = params(Some("limit=5&limit=6"), &["limit"]).unwrap_err();
        assert!(
            matches!(e, ApiError::BadParameter { param: "limit", .. }),
            "{e}"
        );
        let e = params(Some("bogus=1"), &["limit"]).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = parse_count("limit", Some(&"0".to_owned()), 1, 10).unwrap_err();
        assert_eq!(e.body()["parameter"], "limit");
        let p = params(Some("client=nope"), &["client"]).unwrap();
        assert_eq!(parse_client(&p).unwrap_err().body()["parameter"], "client");
        assert_eq!(parse_name("name", "Ads.Example.").unwrap(), "ads.example");
        assert!(parse_name("name", "a..b").is_err());
        assert!(parse_name("name", "a b").is_err());
    }
}
