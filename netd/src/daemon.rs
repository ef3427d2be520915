//! `netd serve`: the control socket `/run/appliance/netd.sock` (docs/control.md) over one
//! transaction per generation.
//!
//! Applying generation N is all or nothing. First everything that can be refused without
//! touching the kernel is checked (the links plan, WireGuard keys and names, the stored
//! DHCP leases), as netavark does; then the steps run in a fixed order:
//!
//! 1. links (rtnetlink), 2. the firewall (one nft transaction; it matches on the links'
//!    names), 3. WireGuard (tunnels, keys, peers), 4. the LAN DHCP server, 5. the router
//!    advertisements, 6. the WAN DHCP client.
//!
//! A service starts inside its step with its sockets open, so that a port taken or a
//! socket refused fails the apply instead of a background loop. When step k fails, steps
//! k-1..1 are undone newest first (services back to what ran, the WireGuard steps'
//! inverses, the firewall's previous table, the links steps' inverses) and the error names
//! the failed step and what was undone. The previous config stays in memory: going back to
//! it (a commit-confirm revert) is one more apply, planned against the kernel.
//!
//! At start netd applies the active generation, or the built-in default while the store is
//! empty (reported as generation 0), and only then tells systemd it is ready: the box
//! routes and filters before `appliance-healthy.target`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use appliance::Config;
use appliance::control::{ApiError, GenerationRequest, Method, PlanReply, Reply, Request};
use appliance::store::{Store, StoreError};
use serde_json::json;

use crate::firewall::{Firewall, Nft, render};
use crate::links::{LinkPlan, Links, Netlink};
use crate::services::{Service, Services};
use crate::wireguard::{self as wg, PublicKey, Resolve, SystemResolver, WgKernel, Wireguard};

/// Where netd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/appliance/netd.sock";
/// The firewall's record of its last apply: under /run, emptied at boot like the tables.
pub const DEFAULT_FIREWALL_STATE: &str = "/run/netd/firewall.json";
/// The generation number netd reports while it runs the built-in default (the store is
/// empty); the store numbers its generations from 1.
pub const DEFAULT_GENERATION: u64 = 0;

/// How long the daemon waits for the WireGuard endpoint names of one pass (all looked up at
/// once); a name without an answer by then keeps the kernel's endpoint until the next pass.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A plan shows at most this many WireGuard steps (1000 peers would drown it).
const PLAN_WG_LINES: usize = 50;

/// A completed step of a transaction, with what its undo needs.
enum Done {
    Links(LinkPlan),
    Firewall,
    Wireguard(Vec<wg::Action>),
    Service(Service),
}

impl Done {
    fn name(&self) -> &'static str {
        match self {
            Self::Links(_) => "links",
            Self::Firewall => "firewall",
            Self::Wireguard(_) => "wireguard",
            Self::Service(s) => s.name(),
        }
    }
}

/// Everything a generation's apply drives, over its adapters: rtnetlink, nft, kernel
/// WireGuard and the service threads (fakes of all four in unit tests). `netd check`
/// builds one to plan without applying.
pub struct Stack<N: Netlink, F: Nft, W: WgKernel> {
    pub links: Links<N>,
    pub firewall: Firewall<F>,
    pub wireguard: Wireguard<W>,
    /// Where generated WireGuard private keys are kept.
    pub wireguard_dir: PathBuf,
    pub services: Box<dyn Services>,
    /// The tunnels of the config in force (netd's by an apply that committed, here or,
    /// through the record, in a netd before a restart): a config without one of them
    /// removes it. Any other tunnel, made by hand with `netd wg apply` (which gives it
    /// netd's alias too), is left alone unless a config names it.
    wireguard_owned: BTreeSet<String>,
    /// Where the record of the last apply is kept ([`crate::applied`]); `None`: nowhere.
    record: Option<PathBuf>,
    /// The config part of the record last written ([`crate::applied::config_json`]),
    /// that of the config in force: a new generation of it is recorded without
    /// serializing its addresses again.
    record_json: Option<crate::applied::RecordBody>,
    /// The config of the record, until this netd commits an apply of its own: the
    /// previous config of the first plan (static addresses on links now DHCP go).
    restored: Option<Config>,
    /// `netd check`: the config whose services the netd that serves runs (its record,
    /// confirmed by its status); plans compare the services with it, not with this
    /// process's, where none ever ran.
    services_elsewhere: Option<Config>,
}

impl<N: Netlink, F: Nft, W: WgKernel> std::fmt::Debug for Stack<N, F, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("wireguard_dir", &self.wireguard_dir)
            .field("wireguard_owned", &self.wireguard_owned)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl<N: Netlink, F: Nft, W: WgKernel> Stack<N, F, W> {
    pub fn new(
        links: Links<N>,
        firewall: Firewall<F>,
        wireguard: Wireguard<W>,
        wireguard_dir: PathBuf,
        services: Box<dyn Services>,
    ) -> Self {
        Self {
            links,
            firewall,
            wireguard,
            wireguard_dir,
            services,
            wireguard_owned: BTreeSet::new(),
            record: None,
            record_json: None,
            restored: None,
            services_elsewhere: None,
        }
    }

    /// Plans the services against those another process runs for `running` (the netd
    /// that serves, as `netd check` learned from it) instead of this process's own.
    pub fn with_services_of(mut self, running: Config) -> Self {
        self.services_elsewhere = Some(running);
        self
    }

    /// Keeps the record of each apply at `path` and starts from the one there: what an
    /// earlier netd applied is known (read only until an apply commits; `netd check`
    /// never writes it).
    pub fn with_record(mut self, path: PathBuf) -> Self {
        if let Some(applied) = crate::applied::load(&path) {
            tracing::info!(generation = applied.generation, path = %path.display(), "the record of the last apply read");
            self.wireguard_owned = crate::applied::tunnels(&applied.config);
            self.restored = Some(applied.config);
        }
        self.record = Some(path);
        self
    }

    /// Whether WireGuard is netd's to plan for `cfg`: the config has a tunnel, or a
    /// tunnel netd applied may have to go.
    fn wireguard_in_play(&self, cfg: &Config) -> bool {
        !self.wireguard_owned.is_empty() || !cfg.wireguard.is_empty()
    }

    /// The endpoint names a WireGuard plan of `cfg` would look up now: those of peers due
    /// for it (new, or no handshake for over 2 minutes); the others keep the endpoint they
    /// roamed to. Reads the kernel only (quick): the daemon calls it under its lock, then
    /// looks the names up without it.
    fn wireguard_names(&mut self, cfg: &Config) -> Vec<wg::EndpointName> {
        if !self.wireguard_in_play(cfg) {
            return Vec::new();
        }
        // Unreadable, the plan itself reports it.
        let Ok(observed) = self.wireguard.kernel.observe() else {
            return Vec::new();
        };
        let now = SystemTime::now();
        wg::endpoint_names(cfg, &|ifname, key| {
            observed
                .device(ifname)
                .and_then(|d| d.peer(key))
                .is_none_or(|p| wg::resolve_due(p.last_handshake, now))
        })
    }

    /// The WireGuard steps to `cfg` (`None`: WireGuard is not netd's yet). Endpoint names
    /// are taken from `resolver` only for peers due for it (see [`Self::wireguard_names`]).
    /// `write_keys`: generate missing keys for good (apply) or in memory only (plan, check).
    fn wireguard_plan(
        &mut self,
        cfg: &Config,
        write_keys: bool,
        resolver: &dyn Resolve,
    ) -> Result<Option<Vec<wg::Action>>, String> {
        if !self.wireguard_in_play(cfg) {
            return Ok(None);
        }
        let mut observed = self
            .wireguard
            .kernel
            .observe()
            .map_err(|e| format!("cannot read the WireGuard state: {e}"))?;
        // Tunnels neither in the config nor applied by netd are someone else's: not
        // planned, not shown, not removed.
        let wanted = crate::applied::tunnels(cfg);
        observed
            .devices
            .retain(|d| wanted.contains(&d.name) || self.wireguard_owned.contains(&d.name));
        let now = SystemTime::now();
        let due = |ifname: &str, key: &PublicKey| {
            observed
                .device(ifname)
                .and_then(|d| d.peer(key))
                .is_none_or(|p| wg::resolve_due(p.last_handshake, now))
        };
        let wanted = wg::desired_with(cfg, &self.wireguard_dir, resolver, &due, write_keys)
            .map_err(|e| e.to_string())?;
        let actions = wg::plan(&wanted, &observed, now).map_err(|e| e.to_string())?;
        Ok(Some(actions))
    }

    /// What applying `cfg` would do now, with the rendered table dry-run through `nft -c`
    /// when it differs from the kernel's. Changes nothing (a WireGuard key still to be
    /// generated is made in memory only). `Invalid` says what would be refused. Endpoint
    /// names come from `resolver` (`netd check`: the system's; the daemon: looked up
    /// before its lock was taken). `previous`: the config in force, whose static
    /// addresses on links now DHCP or SLAAC go.
    pub fn plan(
        &mut self,
        cfg: &Config,
        previous: Option<&Config>,
        resolver: &dyn Resolve,
    ) -> Result<Vec<String>, ApiError> {
        let links = self
            .links
            .plan_after(cfg, previous.or(self.restored.as_ref()))
            .map_err(|e| ApiError::Invalid(format!("links: {e}")))?;
        let mut actions: Vec<String> = links
            .actions
            .iter()
            .map(|a| format!("links: {a}"))
            .collect();
        let ruleset = render(cfg);
        let observed = self
            .firewall
            .observe()
            .map_err(|e| ApiError::Internal(format!("firewall: {e}")))?;
        if let Some(what) = self.firewall.plan(&ruleset, &observed).describe() {
            // The kernel holds an unchanged table already; a changed one is dry-run whole.
            self.firewall.check(&ruleset).map_err(|e| {
                ApiError::Invalid(format!(
                    "firewall: `nft -c` refused the table: {}",
                    squeeze(&e.to_string())
                ))
            })?;
            actions.push(format!("firewall: {what} (checked with nft -c)"));
        }
        let steps = self
            .wireguard_plan(cfg, false, resolver)
            .map_err(|e| ApiError::Invalid(format!("wireguard: {e}")))?
            .unwrap_or_default();
        actions.extend(
            steps
                .iter()
                .take(PLAN_WG_LINES)
                .map(|a| format!("wireguard: {a}")),
        );
        if steps.len() > PLAN_WG_LINES {
            actions.push(format!(
                "wireguard: ... and {} more steps",
                steps.len() - PLAN_WG_LINES
            ));
        }
        self.services.validate(cfg).map_err(ApiError::Invalid)?;
        for s in Service::ALL {
            let what = match &self.services_elsewhere {
                Some(running) => crate::services::change(s, Some(running), Some(cfg)),
                None => self.services.plan(s, Some(cfg)),
            };
            if let Some(what) = what {
                actions.push(format!("{s}: {what}"));
            }
        }
        Ok(actions)
    }

    /// Applies `cfg` as one transaction (see the module's documentation). `previous`: the
    /// config applied before, what the services go back to on failure; `resolver`: the
    /// endpoint names, looked up already.
    fn apply(
        &mut self,
        generation: u64,
        cfg: &Config,
        previous: Option<(u64, &Config)>,
        resolver: &dyn Resolve,
    ) -> Result<PlanReply, ApiError> {
        let refused = |step: &str, e: &dyn std::fmt::Display| ApiError::ApplyFailed {
            step: step.into(),
            reason: format!("{e}; nothing was applied"),
        };
        // The record: none for the generation in force applied again; the JSON kept from
        // the last record for another generation of the same config; otherwise a new JSON
        // (a serialization of the whole config), built on the other core while the
        // transaction runs and stored only once it holds.
        let same_config = previous.is_some_and(|(_, c)| c == cfg);
        let record = self
            .record
            .clone()
            .filter(|_| !(same_config && previous.is_some_and(|(n, _)| n == generation)));
        let reuse_json = same_config && self.record_json.is_some();
        std::thread::scope(|scope| {
            let json = record
                .as_ref()
                .filter(|_| !reuse_json)
                .map(|path| scope.spawn(move || crate::applied::config_json(path, cfg)));
            // The table is rendered (pure, a few ms for thousands of forwards) while the
            // links are observed through netlink.
            let rendered = scope.spawn(|| render(cfg));
            // Where an apply's time goes, in the "generation applied" line.
            let mut took = Took::start();
            // Everything that can be refused before the kernel is touched.
            let links = self
                .links
                .plan_after(cfg, previous.map(|(_, c)| c).or(self.restored.as_ref()))
                .map_err(|e| refused("links", &e))?;
            took.lap("links_plan");
            let ruleset = rendered
                .join()
                .map_err(|_| ApiError::Internal("rendering the firewall table panicked".into()))?;
            took.lap("render");
            let tunnels = self
                .wireguard_plan(cfg, true, resolver)
                .map_err(|e| refused("wireguard", &e))?;
            took.lap("wireguard_plan");
            self.services
                .validate(cfg)
                .map_err(|e| refused("services", &e))?;
            took.lap("services_validate");

            let mut actions: Vec<String> = links
                .actions
                .iter()
                .map(|a| format!("links: {a}"))
                .collect();
            let mut done = Vec::new();
            // The links undo their own steps when one of them fails.
            self.links.run(&links).map_err(|e| ApiError::ApplyFailed {
                step: "links".into(),
                reason: e.to_string(),
            })?;
            done.push(Done::Links(links));
            took.lap("links");

            match self.firewall.apply_owned(ruleset) {
                Ok(true) => {
                    actions.push(format!(
                        "firewall: wrote table inet {}",
                        crate::firewall::TABLE
                    ));
                    done.push(Done::Firewall);
                }
                Ok(false) => {}
                // One nft transaction: refused, it left nothing of its own to undo.
                Err(e) => return Err(self.abort(generation, "firewall", &e, done, previous)),
            }
            took.lap("firewall");

            // WireGuard becomes netd's only when the whole transaction holds: undone, its
            // tunnels are gone and hand-made ones must stay safe from the next generation.
            if let Some(steps) = tunnels
                && !steps.is_empty()
            {
                // A failed batch is undone by the WireGuard code itself.
                if let Err(e) = self.wireguard.apply(&steps) {
                    return Err(self.abort(generation, "wireguard", &e, done, previous));
                }
                actions.extend(steps.iter().map(|a| format!("wireguard: {a}")));
                done.push(Done::Wireguard(steps));
            }

            for s in Service::ALL {
                match self.services.apply(s, Some(cfg)) {
                    Ok(Some(what)) => {
                        actions.push(format!("{s}: {what}"));
                        done.push(Done::Service(s));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(self.abort(generation, s.name(), &e, done, previous)),
                }
            }
            took.lap("wireguard_services");
            self.wireguard_owned = crate::applied::tunnels(cfg);
            self.restored = None;
            if let Some(path) = &record {
                let written = match (self.record_json.take().filter(|_| reuse_json), json) {
                    (Some(kept), _) => Ok(kept),
                    (None, Some(built)) => built.join().unwrap_or_else(|_| {
                        Err(crate::applied::RecordError {
                            path: path.clone(),
                            source: std::io::Error::other("building the record panicked"),
                        })
                    }),
                    (None, None) => crate::applied::config_json(path, cfg),
                }
                .and_then(|json| {
                    crate::applied::store_json(path, generation, &json)?;
                    Ok(json)
                });
                match written {
                    Ok(json) => self.record_json = Some(json),
                    // The kernel holds the generation; only a later restart would miss the record.
                    Err(e) => tracing::error!("{e}"),
                }
            }
            took.lap("record");
            tracing::info!(generation, steps = actions.len(), took = %took, "generation applied");
            Ok(PlanReply {
                generation,
                actions,
            })
        })
    }

    /// Undoes `done`, newest first, after `step` failed; the error names both.
    fn abort(
        &mut self,
        generation: u64,
        step: &str,
        error: &dyn std::fmt::Display,
        done: Vec<Done>,
        previous: Option<(u64, &Config)>,
    ) -> ApiError {
        let mut undone = Vec::new();
        let mut failures = Vec::new();
        for d in done.into_iter().rev() {
            let name = d.name();
            let result = match d {
                Done::Service(s) => self.services.apply(s, previous.map(|(_, c)| c)).map(|_| ()),
                Done::Wireguard(steps) => {
                    let f = self.wireguard.undo(&steps);
                    if f.is_empty() {
                        Ok(())
                    } else {
                        Err(f
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "))
                    }
                }
                Done::Firewall => self.firewall.revert().map_err(|e| e.to_string()),
                Done::Links(plan) => {
                    let f = self.links.undo_plan(&plan);
                    if f.is_empty() {
                        Ok(())
                    } else {
                        Err(f
                            .iter()
                            .map(|u| format!("{}: {}", u.action, u.error))
                            .collect::<Vec<_>>()
                            .join("; "))
                    }
                }
            };
            match result {
                Ok(()) => undone.push(name),
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        let back = match previous {
            Some((n, _)) => format!("generation {n} is in force again"),
            None => "the state before this apply is back".to_owned(),
        };
        let mut reason = if undone.is_empty() {
            format!("{error}; nothing before it had changed anything")
        } else {
            format!("{error}; undone: {}", undone.join(", "))
        };
        if failures.is_empty() {
            reason.push_str(&format!("; {back}"));
        } else {
            reason.push_str(&format!(
                "; undoing failed too (check `ip addr`, `nft list table inet {}`, `wg`): {}",
                crate::firewall::TABLE,
                failures.join("; ")
            ));
        }
        tracing::error!(generation, step, "apply failed: {reason}");
        ApiError::ApplyFailed {
            step: step.into(),
            reason,
        }
    }
}

/// Milliseconds per step of one apply, for the log: the daemon path's breakdown.
struct Took {
    since: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Took {
    fn start() -> Self {
        Self {
            since: Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Closes the step `name`, begun at the previous lap (or when `Took` was made).
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps.push((name, now - self.since));
        self.since = now;
    }
}

impl std::fmt::Display for Took {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, d)) in self.laps.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={:.1}ms", ms(*d))?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// nft repeats one error for every command of a refused batch: each distinct line once.
fn squeeze(message: &str) -> String {
    let mut seen = std::collections::BTreeSet::new();
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && seen.insert(*l))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Inner<N: Netlink, F: Nft, W: WgKernel> {
    stack: Stack<N, F, W>,
    applied: Option<(u64, Config)>,
    last_error: Option<String>,
    /// The active generation that failed at start, and why, while the built-in default
    /// stands in for it: the default's own apply succeeds and clears `last_error`, and
    /// this is what the status must go on showing until a generation applies.
    active_error: Option<(u64, String)>,
    /// Why the last WireGuard re-check (endpoint names every 30 s) failed.
    wg_error: Option<String>,
    /// The address each WAN DHCP client holds now, by link.
    wan_leases: BTreeMap<String, Ipv4Addr>,
    /// The zone address sets this netd wrote, as it wrote them.
    zone_sets: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Why the last write of a zone address set failed (`None`: it did not); retried.
    zone_error: Option<String>,
}

/// netd as its control socket sees it.
pub struct NetDaemon<N: Netlink, F: Nft, W: WgKernel> {
    store: Store,
    inner: Mutex<Inner<N, F, W>>,
    started: Instant,
    /// The DHCP services' state directory (leases.json, wan-<link>.json), for the status
    /// (set by `netd serve`).
    dhcp_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// Looks up WireGuard endpoint names, with no lock held (getaddrinfo can take long).
    resolver: Arc<dyn Resolve + Send + Sync>,
    resolve_timeout: Duration,
    /// The text of the generation loaded last and its validated config: a generation
    /// with the same bytes (the config in force committed again, a rollback to it) is
    /// the same config, so it is not parsed and validated twice. The kernel is still
    /// observed and planned against as for any other apply.
    loaded: Mutex<Option<(String, Config)>>,
    /// What the config loaded last was made of (its long address lists, its forward
    /// sections): a generation that changes one port forward does not parse a
    /// 100k-address blocklist and 2000 forwards again.
    memo: Mutex<appliance::LoadMemo>,
}

impl<N: Netlink, F: Nft, W: WgKernel> std::fmt::Debug for NetDaemon<N, F, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDaemon")
            .field("store", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl<N, F, W> NetDaemon<N, F, W>
where
    N: Netlink + Send + 'static,
    F: Nft + Send + 'static,
    W: WgKernel + Send + 'static,
{
    pub fn new(store: Store, stack: Stack<N, F, W>) -> Arc<Self> {
        Self::with_resolver(store, stack, Arc::new(SystemResolver), RESOLVE_TIMEOUT)
    }

    /// [`NetDaemon::new`] with endpoint names looked up by `resolver`, `timeout` at most
    /// per pass.
    pub fn with_resolver(
        store: Store,
        stack: Stack<N, F, W>,
        resolver: Arc<dyn Resolve + Send + Sync>,
        timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            inner: Mutex::new(Inner {
                stack,
                applied: None,
                last_error: None,
                active_error: None,
                wg_error: None,
                wan_leases: BTreeMap::new(),
                zone_sets: BTreeMap::new(),
                zone_error: None,
            }),
            started: Instant::now(),
            dhcp_dir: std::sync::OnceLock::new(),
            resolver,
            resolve_timeout: timeout,
            loaded: Mutex::new(None),
            memo: Mutex::new(appliance::LoadMemo::default()),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner<N, F, W>> {
        // A panic inside an apply leaves the kernel wherever it got; the next apply plans
        // from what the kernel holds, so the guard's data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks up the endpoint names `cfg` needs now. The lock is held only to read which
    /// peers are due; the lookups run without it, so that the status, the metrics and a
    /// commit-confirm revert do not wait behind a slow DNS.
    fn lookup(&self, cfg: &Config) -> wg::Resolved {
        let names = self.inner().stack.wireguard_names(cfg);
        if names.is_empty() {
            return wg::Resolved::default();
        }
        wg::resolve_all(&self.resolver, names, self.resolve_timeout)
    }

    fn load(&self, generation: u64) -> Result<Config, ApiError> {
        let t = Instant::now();
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        // The text is parsed while the store checks its checksum; `None`: the same bytes
        // as the config loaded last.
        let (g, parsed) = self
            .store
            .get_with(generation, |text| match loaded.as_ref() {
                Some((last, _)) if last == text => None,
                _ => Some(appliance::load_str_with(text, &mut memo)),
            })
            .map_err(|e| match e {
                StoreError::NotFound(_) | StoreError::Corrupt { .. } => {
                    ApiError::Invalid(e.to_string())
                }
                other => ApiError::Internal(other.to_string()),
            })?;
        let cfg = match parsed {
            None => {
                tracing::debug!(
                    generation,
                    read_ms = ms(t.elapsed()),
                    "same bytes as the config loaded last: not parsed again"
                );
                return loaded
                    .as_ref()
                    .map(|(_, cfg)| cfg.clone())
                    .ok_or_else(|| ApiError::Internal("the config loaded last is gone".into()));
            }
            Some(parsed) => parsed.map_err(|d| {
                ApiError::Invalid(format!(
                    "generation {generation} does not validate:\n{}",
                    d.render(&g.text, &format!("generation {generation}"), false)
                ))
            })?,
        };
        tracing::info!(
            generation,
            read_parse_validate_ms = ms(t.elapsed()),
            "generation loaded"
        );
        *loaded = Some((g.text, cfg.clone()));
        Ok(cfg)
    }

    /// What applying `generation` would do now, the firewall dry-run with `nft -c`;
    /// changes nothing.
    pub fn plan(&self, generation: u64) -> Result<PlanReply, ApiError> {
        let cfg = self.load(generation)?;
        let resolved = self.lookup(&cfg);
        let mut guard = self.inner();
        let inner = &mut *guard;
        let previous = inner.applied.as_ref().map(|(_, c)| c);
        let actions = inner.stack.plan(&cfg, previous, &resolved)?;
        Ok(PlanReply {
            generation,
            actions,
        })
    }

    /// Applies `generation` as one transaction; on failure what this call changed is
    /// undone and the error names the step.
    pub fn apply(&self, generation: u64) -> Result<PlanReply, ApiError> {
        let cfg = self.load(generation)?;
        self.apply_config(generation, cfg)
    }

    fn apply_config(&self, generation: u64, cfg: Config) -> Result<PlanReply, ApiError> {
        let resolved = self.lookup(&cfg);
        let mut guard = self.inner();
        let inner = &mut *guard;
        let previous = inner.applied.as_ref().map(|(n, c)| (*n, c));
        let result = inner.stack.apply(generation, &cfg, previous, &resolved);
        match &result {
            Ok(_) => {
                inner.applied = Some((generation, cfg));
                inner.last_error = None;
                if generation != DEFAULT_GENERATION {
                    inner.active_error = None;
                }
                // The rendered table holds the config's addresses and those learned
                // before; a zone that gained or lost a DHCP link needs its set now.
                Self::sync_zone_sets(inner);
            }
            Err(e) => inner.last_error = Some(e.to_string()),
        }
        result
    }

    /// Stops the services of the applied generation (netd stopping). Tunnels, links and
    /// the firewall stay: the box keeps routing and filtering without netd.
    pub fn stop_services(&self) {
        self.inner().stack.services.stop();
    }

    /// The 30-second WireGuard re-check: peers without a handshake for over 2 minutes get
    /// their endpoint names looked up again and rewritten (what `netd wg watch` does). A
    /// failure is logged and shown as `wireguard.apply_error`; the next check retries.
    pub fn recheck_wireguard(&self) {
        let Some(cfg) = self.inner().applied.as_ref().map(|(_, c)| c.clone()) else {
            return;
        };
        let resolved = self.lookup(&cfg);
        let mut guard = self.inner();
        let inner = &mut *guard;
        // An apply may have come in during the lookups: the plan is of what is in force
        // now (a name it has that was not looked up keeps the kernel's endpoint).
        let Some((_, cfg)) = &inner.applied else {
            return;
        };
        let result = inner
            .stack
            .wireguard_plan(cfg, true, &resolved)
            .and_then(|steps| {
                let steps = steps.unwrap_or_default();
                if !steps.is_empty() {
                    inner
                        .stack
                        .wireguard
                        .apply(&steps)
                        .map_err(|e| e.to_string())?;
                    tracing::info!(actions = steps.len(), "WireGuard endpoints rewritten");
                }
                Ok(())
            });
        if let Err(e) = &result {
            tracing::warn!("WireGuard re-check failed, trying again later: {e}");
        }
        inner.wg_error = result.err();
    }

    /// A WAN DHCP client bound, changed or lost its address: the zone sets that hold it
    /// (`@wan_addr4`, matched by port forwards and hairpin) follow, rules untouched.
    pub fn wan_address(&self, change: &crate::wan::AddressChange) {
        let mut inner = self.inner();
        match change.address {
            Some(a) => inner.wan_leases.insert(change.link.clone(), a),
            None => inner.wan_leases.remove(&change.link),
        };
        Self::sync_zone_sets(&mut inner);
    }

    /// Writes again the zone sets whose last write failed.
    pub fn retry_zone_sets(&self) {
        let mut inner = self.inner();
        if inner.zone_error.is_some() {
            Self::sync_zone_sets(&mut inner);
        }
    }

    /// Brings every zone set that holds a DHCP link's address (or did) to the zone's
    /// static IPv4 addresses plus its links' leases. Sets already right are not written.
    fn sync_zone_sets(inner: &mut Inner<N, F, W>) {
        let Some((_, cfg)) = &inner.applied else {
            return;
        };
        let wanted = zone_addresses(cfg, &inner.wan_leases, &inner.zone_sets);
        inner.zone_sets.retain(|z, _| wanted.contains_key(z));
        let mut errors = Vec::new();
        for (zone, (addrs, leased)) in wanted {
            if inner.zone_sets.get(&zone) == Some(&addrs) {
                continue;
            }
            // Without a lease the applied table already holds the config's addresses;
            // writing them again would only cost the firewall its record of the table.
            if !leased && !inner.zone_sets.contains_key(&zone) {
                inner.zone_sets.insert(zone, addrs);
                continue;
            }
            match inner.stack.firewall.set_zone_addresses(&zone, &addrs) {
                Ok(()) => {
                    tracing::info!(zone, addresses = ?addrs, "firewall: zone address set updated");
                    inner.zone_sets.insert(zone, addrs);
                }
                Err(e) => {
                    tracing::warn!(zone, addresses = ?addrs, error = %e, "firewall: cannot update the zone address set; retrying");
                    errors.push(format!("zone {zone}: {e}"));
                }
            }
        }
        inner.zone_error = (!errors.is_empty()).then(|| errors.join("; "));
    }

    /// The generation of the last successful apply ([`DEFAULT_GENERATION`] for the default).
    pub fn applied_generation(&self) -> Option<u64> {
        self.inner().applied.as_ref().map(|(n, _)| *n)
    }

    /// Links, the WAN lease, IPv6, leases, WireGuard peers and, with `counters`, rule
    /// counters (see [`crate::metrics`]). Blocking: netlink and nft.
    fn net(&self, counters: bool) -> serde_json::Value {
        let mut inner = self.inner();
        let inner = &mut *inner;
        crate::metrics::collect(
            &mut inner.stack.links,
            &inner.stack.firewall,
            crate::metrics::Sources {
                dhcp_dir: self.dhcp_dir.get().map(|p| p.as_path()),
                cfg: inner.applied.as_ref().map(|(_, c)| c),
                counters,
            },
        )
    }

    /// The status document; the firewall's rule counters only with `counters` (they need
    /// a listing of the whole table, set elements included).
    fn status(&self, counters: bool) -> serde_json::Value {
        let mut net = self.net(counters);
        let inner = self.inner();
        if let Some(wg) = net.get_mut("wireguard").and_then(|w| w.as_object_mut()) {
            wg.insert("apply_error".into(), json!(inner.wg_error));
        }
        json!({
            "daemon": "netd",
            "version": env!("CARGO_PKG_VERSION"),
            "generation": inner.applied.as_ref().map(|(n, _)| *n),
            "last_error": inner.last_error,
            "active_error": inner.active_error.as_ref().map(|(generation, reason)| json!({
                "generation": generation,
                "reason": reason,
            })),
            "zone_addresses_error": inner.zone_error,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "net": net,
        })
    }

    fn metrics(&self) -> String {
        let net = crate::metrics::prometheus(&self.net(true));
        let inner = self.inner();
        net + &format!(
            "# HELP netd_applied_generation The config generation netd applied last.\n# TYPE netd_applied_generation gauge\nnetd_applied_generation {}\n# HELP netd_apply_failed Whether the last apply failed.\n# TYPE netd_apply_failed gauge\nnetd_apply_failed {}\n",
            inner.applied.as_ref().map_or(0, |(n, _)| *n),
            u8::from(inner.last_error.is_some() || inner.active_error.is_some())
        )
    }

    /// Answers one control request. Plan and apply block on netlink and nft: they run
    /// on the blocking pool, one at a time (the lock).
    pub async fn route(self: Arc<Self>, req: Request) -> Result<Reply, ApiError> {
        match req.path.as_str() {
            // Both read netlink and nft: off the runtime, like plan and apply.
            "/v1/status" => {
                req.only(&Method::GET)?;
                let counters = req
                    .query
                    .as_deref()
                    .is_some_and(|q| q.split('&').any(|kv| kv == "counters=1"));
                let status = tokio::task::spawn_blocking(move || self.status(counters))
                    .await
                    .map_err(|e| ApiError::Internal(format!("the status task ended: {e}")))?;
                Ok(Reply::Json(status))
            }
            "/metrics" => {
                req.only(&Method::GET)?;
                let text = tokio::task::spawn_blocking(move || self.metrics())
                    .await
                    .map_err(|e| ApiError::Internal(format!("the metrics task ended: {e}")))?;
                Ok(Reply::Metrics(text))
            }
            "/v1/plan" | "/v1/apply" => {
                req.only(&Method::POST)?;
                let GenerationRequest { generation } = req.json()?;
                let apply = req.path == "/v1/apply";
                let reply = tokio::task::spawn_blocking(move || {
                    if apply {
                        self.apply(generation)
                    } else {
                        self.plan(generation)
                    }
                })
                .await
                .map_err(|e| ApiError::Internal(format!("the apply task ended: {e}")))??;
                Ok(Reply::Json(json!(reply)))
            }
            other => Err(ApiError::NotFound(other.to_owned())),
        }
    }

    /// On start: applies the active generation, so netd matches the store without waiting
    /// for applianced. A failure is logged and shown in the status; netd keeps serving.
    ///
    /// When the active generation fails (its transaction undid everything, so the box
    /// would be unconfigured: no firewall, no LAN address), the built-in default is
    /// applied in its place, as on a new box, and the generation is returned so that
    /// the caller retries it ([`NetDaemon::retry_active`]).
    pub fn apply_active(&self) -> Option<u64> {
        match self.store.current() {
            Ok((Some(g), _)) => match self.apply(g.info.number) {
                Ok(r) => {
                    tracing::info!(
                        generation = g.info.number,
                        steps = r.actions.len(),
                        "active generation applied at start"
                    );
                    None
                }
                Err(e) => {
                    tracing::error!(generation = g.info.number, error = %e, "cannot apply the active generation at start; applying the built-in default until it applies");
                    self.apply_default();
                    self.inner().active_error = Some((g.info.number, e.to_string()));
                    Some(g.info.number)
                }
            },
            Ok((None, _)) => {
                self.apply_default();
                None
            }
            Err(e) => {
                // A broken /data must not leave the box unfiltered and unreachable.
                tracing::error!(error = %e, "cannot read the config store; applying the built-in default");
                self.apply_default();
                None
            }
        }
    }

    /// Tries again the active `generation` that failed at start, while the built-in
    /// default stands in for it. Returns true when there is nothing left to retry: it
    /// applied, or another generation was applied or activated since.
    pub fn retry_active(&self, generation: u64) -> bool {
        // None: the default failed too; it stays worth retrying.
        if !matches!(self.applied_generation(), Some(DEFAULT_GENERATION) | None) {
            return true;
        }
        match self.store.current() {
            Ok((Some(g), _)) if g.info.number == generation => {}
            _ => {
                // Another generation is active: the retries end, and so does the report
                // of one no longer asked for.
                self.inner().active_error = None;
                return true;
            }
        }
        match self.apply(generation) {
            Ok(_) => {
                tracing::info!(generation, "the active generation applied on a retry");
                true
            }
            Err(e) => {
                tracing::warn!(generation, error = %e, "the active generation still fails; the built-in default stays");
                self.inner().active_error = Some((generation, e.to_string()));
                false
            }
        }
    }

    fn apply_default(&self) {
        let cfg = match appliance::default_config() {
            Ok(c) => c,
            Err(d) => {
                tracing::error!(
                    "the built-in default does not validate (a build defect):\n{}",
                    d.render(appliance::DEFAULT_CONFIG, "default.toml", false)
                );
                return;
            }
        };
        match self.apply_config(DEFAULT_GENERATION, cfg) {
            Ok(r) => tracing::info!(
                steps = r.actions.len(),
                "no generation stored yet: the built-in default applied"
            ),
            Err(e) => tracing::error!(error = %e, "cannot apply the built-in default"),
        }
    }
}

/// The addresses each zone's set must hold: for every zone with a DHCP link, or whose
/// set netd wrote before (`written`: back to the config's addresses once it has none),
/// the static IPv4 addresses of its links and the leases of its DHCP links; and whether
/// any of its links holds a lease.
fn zone_addresses(
    cfg: &Config,
    leases: &BTreeMap<String, Ipv4Addr>,
    written: &BTreeMap<String, Vec<Ipv4Addr>>,
) -> BTreeMap<String, (Vec<Ipv4Addr>, bool)> {
    use appliance::model::Addressed;
    let dhcp = crate::wan::cli::dhcp_links(cfg);
    let statics = |link: &appliance::types::IfName| -> Vec<Ipv4Addr> {
        let cidrs: &[appliance::types::Cidr] = if let Some(i) = cfg.interfaces.get(link) {
            i.addresses()
        } else if let Some(v) = cfg.vlans.get(link) {
            v.addresses()
        } else if let Some(b) = cfg.bridges.get(link) {
            b.addresses()
        } else if let Some(w) = cfg.wireguard.get(link) {
            &w.addresses
        } else {
            &[]
        };
        cidrs
            .iter()
            .filter_map(|c| match c.addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect()
    };
    cfg.firewall
        .zones
        .iter()
        .filter(|(name, zone)| {
            written.contains_key(name.as_str())
                || zone
                    .interfaces
                    .iter()
                    .any(|l| dhcp.iter().any(|d| d == l.as_str()))
        })
        .map(|(name, zone)| {
            let mut addrs: Vec<Ipv4Addr> = zone
                .interfaces
                .iter()
                .flat_map(|l| {
                    statics(l)
                        .into_iter()
                        .chain(leases.get(l.as_str()).copied())
                })
                .collect();
            addrs.sort_unstable();
            addrs.dedup();
            let leased = zone
                .interfaces
                .iter()
                .any(|l| leases.contains_key(l.as_str()));
            (name.to_string(), (addrs, leased))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::FakeNft;
    use crate::links::FakeNetlink;
    use crate::services::FakeServices;
    use crate::wireguard::FakeWg;

    type Fake = NetDaemon<FakeNetlink, FakeNft, FakeWg>;

    const BASE: &str = "version = 1\n[interfaces.lan]\ndevice = \"nic1\"\naddresses = [\"192.168.1.1/24\"]\n[firewall.zones.lan]\ninterfaces = [\"lan\"]\ninput = \"accept\"\nforward = \"accept\"\n";

    /// A tunnel (its key generated under the daemon's WireGuard directory).
    const TUNNEL: &str = "[wireguard.wg0]\naddresses = [\"10.8.0.1/24\"]\nlisten_port = 51820\n[wireguard.wg0.peers.laptop]\npublic_key = \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\"\nallowed_ips = [\"10.8.0.2/32\"]\n";

    const DHCP: &str = "[dhcp.lan]\nstart = \"192.168.2.100\"\nend = \"192.168.2.199\"\n";

    struct Rig {
        daemon: Arc<Fake>,
        services: FakeServices,
        _dir: tempfile::TempDir,
    }

    /// A daemon on fakes with generation 1 (`BASE`) active and `BASE` with the address
    /// 192.168.2.1 stored as generation 2.
    fn rig() -> Rig {
        rig_with(Arc::new(SystemResolver), RESOLVE_TIMEOUT)
    }

    fn rig_with(resolver: Arc<dyn Resolve + Send + Sync>, timeout: Duration) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("config")).unwrap();
        let n1 = store.commit(BASE, "base").unwrap();
        store.activate(n1).unwrap();
        let changed = BASE.replace("192.168.1.1/24", "192.168.2.1/24");
        store.commit(&changed, "new address").unwrap();
        let (stack, services) = fake_stack(
            &[("nic0", [2, 0, 0, 0, 0, 0]), ("nic1", [2, 0, 0, 0, 0, 1])],
            dir.path(),
        );
        Rig {
            daemon: NetDaemon::with_resolver(store, stack, resolver, timeout),
            services,
            _dir: dir,
        }
    }

    impl Rig {
        fn commit(&self, text: &str) -> u64 {
            self.daemon.store.commit(text, "test").unwrap()
        }

        fn addresses(&self) -> String {
            format!(
                "{:?}",
                self.daemon
                    .inner()
                    .stack
                    .links
                    .netlink_mut()
                    .observe()
                    .unwrap()
                    .addresses
            )
        }

        /// The table without handles and counters, each chain's rules in their order: an
        /// in-place revert re-adds a rule with a new handle.
        fn table(&self) -> Vec<serde_json::Value> {
            let listing = self.daemon.inner().stack.firewall.listing().unwrap();
            let mut objects: Vec<serde_json::Value> = listing
                .map(|l| crate::firewall::normalize_listing(&l))
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            objects.sort_by_key(|o| {
                let rule = o.get("rule");
                (
                    rule.is_some(),
                    rule.and_then(|r| r["chain"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                )
            });
            objects
        }

        fn tunnels(&self) -> Vec<String> {
            self.daemon
                .inner()
                .stack
                .wireguard
                .kernel
                .state
                .devices
                .iter()
                .map(|d| format!("{} {:?} peers {}", d.name, d.addresses, d.peers.len()))
                .collect()
        }

        fn failed(&self, generation: u64) -> (String, String) {
            match self.daemon.apply(generation) {
                Err(ApiError::ApplyFailed { step, reason }) => (step, reason),
                other => panic!("expected a failed apply, got {other:?}"),
            }
        }
    }

    /// A resolver that says when a lookup starts and answers only when told to (never,
    /// if the sender of `release` is kept silent).
    struct BlockingResolver {
        entered: Mutex<std::sync::mpsc::Sender<()>>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Resolve for BlockingResolver {
        fn resolve(&self, _host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
            let _ = self.entered.lock().unwrap().send(());
            self.release
                .lock()
                .unwrap()
                .recv()
                .map_err(|_| std::io::Error::other("the test ended"))?;
            Ok(vec![std::net::SocketAddr::new(
                "203.0.113.7".parse().unwrap(),
                port,
            )])
        }
    }

    fn blocking_resolver() -> (
        Arc<BlockingResolver>,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let resolver = Arc::new(BlockingResolver {
            entered: Mutex::new(entered_tx),
            release: Mutex::new(release_rx),
        });
        (resolver, entered_rx, release_tx)
    }

    fn endpoints(rig: &Rig) -> Vec<Option<std::net::SocketAddr>> {
        let inner = rig.daemon.inner();
        inner.stack.wireguard.kernel.state.devices[0]
            .peers
            .iter()
            .map(|p| p.peer.endpoint)
            .collect()
    }

    #[test]
    fn endpoint_names_are_looked_up_without_the_daemon_lock() {
        let (resolver, entered, release) = blocking_resolver();
        let rig = rig_with(resolver, Duration::from_secs(3600));
        rig.daemon.apply(1).unwrap();
        let n = rig.commit(&format!(
            "{BASE}{TUNNEL}endpoint = \"vpn.example.net:51820\"\n"
        ));
        let daemon = Arc::clone(&rig.daemon);
        let applying = std::thread::spawn(move || daemon.apply(n));
        entered.recv().unwrap();
        // The lookup hangs: the status (and a revert) must not wait behind it.
        assert!(rig.daemon.inner.try_lock().is_ok());
        assert_eq!(rig.daemon.status(false)["generation"], 1);
        release.send(()).unwrap();
        applying.join().unwrap().unwrap();
        assert_eq!(
            endpoints(&rig),
            [Some("203.0.113.7:51820".parse().unwrap())]
        );

        // The 30 s re-check too (the peer has no handshake: due again).
        let daemon = Arc::clone(&rig.daemon);
        let checking = std::thread::spawn(move || daemon.recheck_wireguard());
        entered.recv().unwrap();
        assert!(rig.daemon.inner.try_lock().is_ok());
        release.send(()).unwrap();
        checking.join().unwrap();
        assert!(rig.daemon.inner().wg_error.is_none());
    }

    #[test]
    fn a_name_that_never_answers_leaves_the_endpoint_unset_and_the_apply_goes_on() {
        let (resolver, _entered, _release) = blocking_resolver();
        let rig = rig_with(resolver, Duration::from_millis(20));
        let n = rig.commit(&format!(
            "{BASE}{TUNNEL}endpoint = \"vpn.example.net:51820\"\n"
        ));
        rig.daemon.apply(n).unwrap();
        assert_eq!(rig.tunnels(), ["wg0 [10.8.0.1/24] peers 1"]);
        assert_eq!(endpoints(&rig), [None]);
    }

    #[test]
    fn a_failed_apply_with_tunnels_leaves_hand_made_tunnels_alone() {
        let rig = rig();
        rig.daemon.apply(1).unwrap();
        let n = rig.commit(&format!(
            "{}{TUNNEL}{DHCP}",
            BASE.replace("192.168.1.1/24", "192.168.2.1/24")
        ));
        rig.services.state.lock().unwrap().fail = Some(Service::Dhcp);
        let (step, _) = rig.failed(n);
        assert_eq!(step, "dhcp server");
        assert!(rig.daemon.inner().stack.wireguard_owned.is_empty());
        // A tunnel made by hand (`netd wg apply`) survives the next generation without
        // [wireguard]: WireGuard never became netd's.
        rig.services.state.lock().unwrap().fail = None;
        rig.daemon
            .inner()
            .stack
            .wireguard
            .kernel
            .state
            .devices
            .push(hand_made_tunnel("wg9"));
        let n2 = rig.commit(&BASE.replace("192.168.1.1/24", "192.168.3.1/24"));
        let reply = rig.daemon.apply(n2).unwrap();
        assert!(
            !reply.actions.iter().any(|a| a.starts_with("wireguard")),
            "{reply:?}"
        );
        assert_eq!(rig.tunnels(), ["wg9 [] peers 0"]);
    }

    #[test]
    fn a_failing_firewall_puts_the_links_back() {
        let rig = rig();
        rig.daemon.apply(1).unwrap();
        let before = rig.addresses();
        assert!(before.contains("192.168.1.1"), "{before}");
        let plan = rig.daemon.plan(2).unwrap();
        assert!(
            plan.actions.iter().any(|a| a.contains("192.168.2.1")),
            "{plan:?}"
        );
        // A new address and a firewall change that nft refuses.
        let n3 = rig.commit(
            &BASE
                .replace("192.168.1.1/24", "192.168.2.1/24")
                .replace("forward = \"accept\"", "forward = \"drop\""),
        );
        rig.daemon.inner().stack.firewall.nft_mut().fail_next =
            Some("Error: Could not process rule".into());
        let (step, reason) = rig.failed(n3);
        assert_eq!(step, "firewall");
        assert!(reason.contains("undone: links"), "{reason}");
        assert!(
            reason.contains("generation 1 is in force again"),
            "{reason}"
        );
        assert_eq!(rig.addresses(), before);
        let status = rig.daemon.status(false);
        assert_eq!(status["generation"], 1);
        assert!(status["last_error"].as_str().unwrap().contains("firewall"));
        rig.daemon.apply(2).unwrap();
        assert!(rig.addresses().contains("192.168.2.1"));
    }

    #[test]
    fn a_wireguard_failure_puts_the_links_and_the_firewall_back() {
        let rig = rig();
        rig.daemon.apply(1).unwrap();
        let (addresses, table) = (rig.addresses(), rig.table());
        let n = rig.commit(&format!(
            "{}{TUNNEL}",
            BASE.replace("192.168.1.1/24", "192.168.2.1/24")
                .replace("input = \"accept\"", "input = \"drop\"")
        ));
        // The kernel refuses the tunnel's device settings (the batch after the link).
        {
            let mut inner = rig.daemon.inner();
            let fake = &mut inner.stack.wireguard.kernel;
            fake.fail_at = Some(fake.batches.len() + 1);
        }
        let (step, reason) = rig.failed(n);
        assert_eq!(step, "wireguard");
        assert!(reason.contains("Injected failure"), "{reason}");
        assert!(reason.contains("undone: firewall, links"), "{reason}");
        assert_eq!(rig.addresses(), addresses);
        assert_eq!(rig.table(), table);
        assert!(rig.tunnels().is_empty(), "{:?}", rig.tunnels());
        assert_eq!(rig.daemon.applied_generation(), Some(1));
        // The same generation applies once the kernel takes it.
        rig.daemon.apply(n).unwrap();
        assert_eq!(rig.tunnels(), ["wg0 [10.8.0.1/24] peers 1"]);
    }

    #[test]
    fn a_dhcp_server_that_cannot_bind_puts_wireguard_firewall_and_links_back() {
        let rig = rig();
        rig.daemon.apply(1).unwrap();
        let (addresses, table) = (rig.addresses(), rig.table());
        let n = rig.commit(&format!(
            "{}{TUNNEL}{DHCP}",
            BASE.replace("192.168.1.1/24", "192.168.2.1/24")
        ));
        rig.services.state.lock().unwrap().fail = Some(Service::Dhcp);
        let (step, reason) = rig.failed(n);
        assert_eq!(step, "dhcp server");
        assert!(reason.contains("Address in use"), "{reason}");
        assert!(
            reason.contains("undone: wireguard, firewall, links"),
            "{reason}"
        );
        assert_eq!(rig.addresses(), addresses);
        assert_eq!(rig.table(), table);
        assert!(rig.tunnels().is_empty(), "{:?}", rig.tunnels());
        assert!(rig.services.running().is_empty());
        rig.daemon.apply(n).unwrap();
        assert_eq!(rig.services.running()[&Service::Dhcp], ["lan"]);
        assert_eq!(rig.tunnels().len(), 1);
    }

    #[test]
    fn a_wan_client_that_cannot_start_puts_the_dhcp_server_back_on_the_previous_generation() {
        let rig = rig();
        let lan2 = format!(
            "{}{}",
            BASE.replace("192.168.1.1/24", "192.168.2.1/24"),
            DHCP
        );
        let n1 = rig.commit(&lan2);
        rig.daemon.apply(n1).unwrap();
        assert_eq!(rig.services.running()[&Service::Dhcp], ["lan"]);
        // A new DHCP range (the server restarts) and a WAN client that cannot start.
        let n3 = rig.commit(&format!(
            "{}[interfaces.wan]\ndevice = \"nic0\"\nipv4 = \"dhcp\"\n",
            lan2.replace("192.168.2.199", "192.168.2.150")
        ));
        rig.services.state.lock().unwrap().fail = Some(Service::Wan);
        let (step, reason) = rig.failed(n3);
        assert_eq!(step, "wan dhcp client");
        assert!(reason.contains("dhcp server"), "{reason}");
        let log = rig.services.state.lock().unwrap().log.clone();
        // Restarted for the new range, then back for the old one.
        assert_eq!(
            log.iter().filter(|l| l.starts_with("dhcp server")).count(),
            3,
            "{log:?}"
        );
        assert!(
            reason.contains("undone: dhcp server, firewall, links"),
            "{reason}"
        );
        assert_eq!(rig.services.running()[&Service::Dhcp], ["lan"]);
        assert!(!rig.services.running().contains_key(&Service::Wan));
        assert_eq!(rig.daemon.applied_generation(), Some(n1));
    }

    #[test]
    fn a_key_file_that_cannot_be_written_is_refused_before_anything_changes() {
        let rig = rig();
        rig.daemon.apply(1).unwrap();
        let writes = rig.daemon.inner().stack.links.netlink().writes();
        let nft_writes = rig.daemon.inner().stack.firewall.nft().writes;
        // The generated key's directory cannot be made: a file is in its way.
        let blocker = rig._dir.path().join("not-a-directory");
        std::fs::write(&blocker, "").unwrap();
        rig.daemon.inner().stack.wireguard_dir = blocker.join("wireguard");
        let n = rig.commit(&format!(
            "{}{TUNNEL}",
            BASE.replace("192.168.1.1/24", "192.168.2.1/24")
        ));
        let (step, reason) = rig.failed(n);
        assert_eq!(step, "wireguard");
        assert!(reason.contains("cannot write the new key file"), "{reason}");
        assert!(reason.contains("nothing was applied"), "{reason}");
        assert_eq!(rig.daemon.inner().stack.links.netlink().writes(), writes);
        assert_eq!(rig.daemon.inner().stack.firewall.nft().writes, nft_writes);
        assert!(rig.tunnels().is_empty());
        // The plan writes no key, so it cannot know; the apply refused before any change.
    }

    #[test]
    fn the_plan_dry_runs_the_table_and_names_every_step() {
        let rig = rig();
        rig.daemon.apply(1).unwrap();
        let n = rig.commit(&format!(
            "{}{TUNNEL}{DHCP}",
            BASE.replace("192.168.1.1/24", "192.168.2.1/24")
                .replace("input = \"accept\"", "input = \"drop\"")
        ));
        let plan = rig.daemon.plan(n).unwrap().actions;
        let steps: Vec<&str> =
            plan.iter()
                .filter_map(|a| a.split(':').next())
                .fold(Vec::new(), |mut v, s| {
                    if v.last() != Some(&s) {
                        v.push(s);
                    }
                    v
                });
        assert_eq!(
            steps,
            ["links", "firewall", "wireguard", "dhcp server"],
            "{plan:#?}"
        );
        assert!(
            plan.iter().any(|a| a.contains("checked with nft -c")),
            "{plan:#?}"
        );
        // The plan wrote nothing: no key file, no tunnel.
        assert!(!rig._dir.path().join("wireguard/wg0.key").exists());
        assert!(rig.tunnels().is_empty());
        // nft refuses the table: the plan is Invalid with nft's words.
        rig.daemon.inner().stack.firewall.nft_mut().fail_next =
            Some("Error: Could not process rule: No such file or directory".into());
        match rig.daemon.plan(n) {
            Err(ApiError::Invalid(e)) => {
                assert!(e.contains("nft -c"), "{e}");
                assert!(e.contains("No such file or directory"), "{e}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        // An unchanged table is not dry-run again: the kernel holds it already.
        rig.daemon.inner().stack.firewall.nft_mut().fail_next = None;
        rig.daemon.apply(n).unwrap();
        rig.daemon.inner().stack.firewall.nft_mut().fail_next = Some("Error: unused".into());
        assert!(rig.daemon.plan(n).unwrap().actions.is_empty());
    }

    #[test]
    fn a_second_apply_of_the_same_generation_does_nothing() {
        let rig = rig();
        let n = rig.commit(&format!(
            "{}{TUNNEL}{DHCP}",
            BASE.replace("192.168.1.1/24", "192.168.2.1/24")
        ));
        let first = rig.daemon.apply(n).unwrap().actions;
        assert!(
            first.iter().any(|a| a.starts_with("wireguard:")),
            "{first:#?}"
        );
        let key = rig._dir.path().join("wireguard/wg0.key");
        let key_text = std::fs::read_to_string(&key).unwrap();
        let log = rig.services.state.lock().unwrap().log.len();
        assert!(rig.daemon.apply(n).unwrap().actions.is_empty());
        assert_eq!(rig.services.state.lock().unwrap().log.len(), log);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), key_text);
        // Back to generation 1: the tunnel goes (netd manages WireGuard now), the server stops.
        let back = rig.daemon.apply(1).unwrap().actions;
        assert!(
            back.iter().any(|a| a == "wireguard: ip link del wg0"),
            "{back:#?}"
        );
        assert!(rig.tunnels().is_empty());
        assert!(rig.services.running().is_empty());
    }

    #[test]
    fn the_same_bytes_again_are_not_parsed_twice_but_the_kernel_is_still_observed() {
        use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables, Table};
        let rig = rig();
        let text = BASE.replace("192.168.1.1/24", "192.168.2.1/24");
        let n = rig.commit(&text);
        rig.daemon.apply(n).unwrap();
        let (addresses, table) = (rig.addresses(), rig.table());
        assert!(addresses.contains("192.168.2.1/24"), "{addresses}");
        // The kernel drifts behind netd's back: the address and the table are gone.
        {
            let mut inner = rig.daemon.inner();
            inner
                .stack
                .links
                .netlink_mut()
                .apply_foreign(|o| o.addresses.clear());
            let table = || {
                NfListObject::Table(Table {
                    family: nftables::types::NfFamily::INet,
                    name: crate::firewall::TABLE.into(),
                    handle: None,
                })
            };
            let delete = Nftables {
                objects: vec![
                    NfObject::CmdObject(NfCmd::Add(table())),
                    NfObject::CmdObject(NfCmd::Delete(table())),
                ]
                .into(),
            };
            inner.stack.firewall.nft_mut().run(&delete).unwrap();
        }
        assert!(rig.table().is_empty());
        // The same bytes as a new generation: the config loaded last is reused...
        let again = rig.commit(&text);
        let actions = rig.daemon.apply(again).unwrap().actions;
        assert!(
            rig.daemon
                .loaded
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|(t, _)| *t == text)
        );
        // ...and the apply still plans from the kernel and puts both back.
        assert!(
            actions.iter().any(|a| a.starts_with("links:")),
            "{actions:#?}"
        );
        assert!(
            actions.iter().any(|a| a.starts_with("firewall:")),
            "{actions:#?}"
        );
        assert_eq!((rig.addresses(), rig.table()), (addresses, table));
        assert_eq!(rig.daemon.applied_generation(), Some(again));
        // Other bytes are parsed and validated as ever: an invalid one is refused.
        let bad = rig.commit(&text.replace("192.168.2.1/24", "192.168.2.1/99"));
        assert!(matches!(rig.daemon.apply(bad), Err(ApiError::Invalid(_))));
    }

    #[test]
    fn an_active_generation_that_fails_at_start_leaves_the_default_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("config")).unwrap();
        // On the card the default names lan too: a card the default renamed is not
        // handed to another interface key.
        let n1 = store.commit(&BASE.replace("nic1", "eth1"), "base").unwrap();
        store.activate(n1).unwrap();
        let (d, services) = on_default_nics(store, dir.path());
        d.inner().stack.firewall.nft_mut().fail_next = Some("Error: Could not process rule".into());
        assert_eq!(d.apply_active(), Some(n1));
        assert_eq!(d.applied_generation(), Some(DEFAULT_GENERATION));
        assert_eq!(services.running()[&Service::Dhcp], ["lan"]);
        // The default's success does not hide why the active generation is not in force.
        let status = d.status(false);
        assert_eq!(status["generation"], DEFAULT_GENERATION);
        assert_eq!(status["active_error"]["generation"], n1);
        let reason = status["active_error"]["reason"].as_str().unwrap();
        assert!(reason.contains("Could not process rule"), "{reason}");
        assert!(d.metrics().contains("netd_apply_failed 1"));
        // A retry that fails again keeps it, with the new reason.
        d.inner().stack.firewall.nft_mut().fail_next = Some("Error: still refused".into());
        assert!(!d.retry_active(n1));
        let status = d.status(false);
        assert!(
            status["active_error"]["reason"]
                .as_str()
                .unwrap()
                .contains("still refused")
        );
        // The failure is gone: the retry applies generation 1 and nothing is left to retry.
        assert!(d.retry_active(n1));
        assert_eq!(d.applied_generation(), Some(n1));
        assert!(d.status(false)["active_error"].is_null());
        assert!(d.metrics().contains("netd_apply_failed 0"));
        assert!(
            services
                .running()
                .get(&Service::Dhcp)
                .is_none_or(|l| l.is_empty())
        );
        // Another generation in force ends the retries without an apply.
        let log = services.state.lock().unwrap().log.len();
        assert!(d.retry_active(n1));
        assert_eq!(services.state.lock().unwrap().log.len(), log);
    }

    /// The stack on fakes with these cards, keys under `dir`, and the services' fake.
    fn fake_stack(
        nics: &[(&str, [u8; 6])],
        dir: &std::path::Path,
    ) -> (Stack<FakeNetlink, FakeNft, FakeWg>, FakeServices) {
        let services = FakeServices::default();
        let stack = Stack::new(
            Links::new(FakeNetlink::with_nics(nics)),
            Firewall::new(FakeNft::new()),
            Wireguard::new(FakeWg::default()),
            dir.join("wireguard"),
            Box::new(services.clone()),
        );
        (stack, services)
    }

    fn hand_made_tunnel(name: &str) -> wg::ObservedDevice {
        wg::ObservedDevice {
            name: name.into(),
            mtu: 1420,
            up: true,
            addresses: Vec::new(),
            private_key: None,
            public_key: None,
            listen_port: 51821,
            peers: Vec::new(),
        }
    }

    fn kernel_addresses(stack: &mut Stack<FakeNetlink, FakeNft, FakeWg>) -> String {
        format!(
            "{:?}",
            stack.links.netlink_mut().observe().unwrap().addresses
        )
    }

    #[test]
    fn a_restarted_netd_removes_the_static_address_of_the_generation_in_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("applied.json");
        let nics = [("nic0", [2, 0, 0, 0, 0, 1])];
        let wan = "version = 1\n[interfaces.wan]\ndevice = \"nic0\"\n";
        let fixed =
            appliance::load_str(&format!("{wan}addresses = [\"203.0.113.2/24\"]\n")).unwrap();
        let dhcp = appliance::load_str(&format!("{wan}ipv4 = \"dhcp\"\n")).unwrap();
        let (first, _) = fake_stack(&nics, dir.path());
        let mut first = first.with_record(record.clone());
        first.apply(1, &fixed, None, &SystemResolver).unwrap();
        assert!(kernel_addresses(&mut first).contains("203.0.113.2"));
        assert_eq!(crate::applied::load(&record).unwrap().generation, 1);

        // netd restarts on the same kernel; the active generation is the DHCP one. Without
        // the record the static address stays (the DHCP client owns the link's IPv4).
        let kernel = first.links.netlink_mut().clone();
        for with_record in [false, true] {
            let (mut second, _) = fake_stack(&nics, dir.path());
            *second.links.netlink_mut() = kernel.clone();
            if with_record {
                second = second.with_record(record.clone());
            }
            let plan = second.plan(&dhcp, None, &SystemResolver).unwrap();
            let reply = second.apply(2, &dhcp, None, &SystemResolver).unwrap();
            let left = kernel_addresses(&mut second);
            assert_eq!(left.contains("203.0.113.2"), !with_record, "{left}");
            assert_eq!(
                plan.iter()
                    .any(|a| a.contains("ip addr del 203.0.113.2/24 dev wan")),
                with_record,
                "{plan:?}"
            );
            assert_eq!(reply.actions.len(), plan.len(), "{reply:?}");
        }
        let applied = crate::applied::load(&record).unwrap();
        assert_eq!((applied.generation, &applied.config), (2, &dhcp));
    }

    #[test]
    fn hand_made_tunnels_are_neither_planned_nor_removed_and_netds_go_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("applied.json");
        let nics = [("nic1", [2, 0, 0, 0, 0, 1])];
        let base = appliance::load_str(BASE).unwrap();
        let tunnel = appliance::load_str(&format!("{BASE}{TUNNEL}")).unwrap();
        let (stack, _) = fake_stack(&nics, dir.path());
        let mut stack = stack.with_record(record.clone());
        // wg9 was made with `netd wg apply`: netd's alias, but no config of netd serve's.
        stack
            .wireguard
            .kernel
            .state
            .devices
            .push(hand_made_tunnel("wg9"));
        let names = |s: &Stack<FakeNetlink, FakeNft, FakeWg>| -> Vec<String> {
            s.wireguard
                .kernel
                .state
                .devices
                .iter()
                .map(|d| d.name.clone())
                .collect()
        };

        let plan = stack.plan(&base, None, &SystemResolver).unwrap();
        assert!(!plan.iter().any(|a| a.starts_with("wireguard")), "{plan:?}");
        let plan = stack.plan(&tunnel, None, &SystemResolver).unwrap();
        assert!(plan.iter().any(|a| a.contains("wg0")), "{plan:?}");
        assert!(!plan.iter().any(|a| a.contains("wg9")), "{plan:?}");
        stack.apply(1, &tunnel, None, &SystemResolver).unwrap();
        assert_eq!(names(&stack), ["wg9", "wg0"]);

        // A restarted netd (and `netd check`, which builds the same stack) knows wg0 from
        // the record: a config without tunnels removes it and only it.
        let (mut check, _) = fake_stack(&nics, dir.path());
        *check.links.netlink_mut() = stack.links.netlink_mut().clone();
        check.firewall = Firewall::new(stack.firewall.nft_mut().clone());
        check.wireguard.kernel = stack.wireguard.kernel.clone();
        let mut check = check.with_record(record.clone());
        let plan = check.plan(&base, None, &SystemResolver).unwrap();
        let wg: Vec<&String> = plan.iter().filter(|a| a.starts_with("wireguard")).collect();
        assert_eq!(wg.len(), 1, "{plan:?}");
        assert!(wg[0].contains("wg0"), "{plan:?}");
        check.apply(2, &base, None, &SystemResolver).unwrap();
        assert_eq!(names(&check), ["wg9"]);
        // And the next config without tunnels plans no WireGuard step at all.
        let plan = check.plan(&base, Some(&base), &SystemResolver).unwrap();
        assert!(plan.is_empty(), "{plan:?}");
    }

    /// A daemon on fakes with the built-in default's cards, eth0 and eth1.
    fn on_default_nics(store: Store, dir: &std::path::Path) -> (Arc<Fake>, FakeServices) {
        let (stack, services) = fake_stack(
            &[("eth0", [2, 0, 0, 0, 0, 1]), ("eth1", [2, 0, 0, 0, 0, 2])],
            dir,
        );
        (NetDaemon::new(store, stack), services)
    }

    #[test]
    fn an_empty_store_gets_the_built_in_default_with_its_services() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (d, services) = on_default_nics(store, dir.path());
        d.apply_active();
        assert_eq!(d.applied_generation(), Some(DEFAULT_GENERATION));
        let running = services.running();
        assert_eq!(running[&Service::Wan], ["wan"]);
        assert_eq!(running[&Service::Dhcp], ["lan"]);
    }

    #[test]
    fn a_wireguard_recheck_failure_shows_in_the_status() {
        let rig = rig();
        rig.daemon.apply(1).unwrap();
        assert!(rig.daemon.status(false)["net"]["wireguard"]["apply_error"].is_null());
        rig.daemon.inner().wg_error = Some("wireguard.wg0.private_key_file: bad".into());
        assert_eq!(
            rig.daemon.status(false)["net"]["wireguard"]["apply_error"],
            "wireguard.wg0.private_key_file: bad"
        );
        // Without tunnels the re-check has nothing to do and clears it.
        rig.daemon.recheck_wireguard();
        assert!(rig.daemon.status(false)["net"]["wireguard"]["apply_error"].is_null());
    }

    /// The wan_addr4 elements as the (fake) kernel holds them.
    fn wan_set(d: &Fake) -> serde_json::Value {
        let listing = d.inner().stack.firewall.listing().unwrap().unwrap();
        listing["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|o| o.get("set").filter(|s| s["name"] == "wan_addr4").cloned())
            .unwrap()["elem"]
            .clone()
    }

    #[test]
    fn the_wan_zone_set_follows_the_dhcp_lease_and_survives_an_apply() {
        let rig = rig();
        let d = &rig.daemon;
        let wan = format!(
            "{BASE}[interfaces.wan]\ndevice = \"nic0\"\nipv4 = \"dhcp\"\n[firewall.zones.wan]\ninterfaces = [\"wan\"]\ninput = \"drop\"\nforward = \"drop\"\n[firewall.forwards.web]\nprotocol = \"tcp\"\nport = 8080\nto = \"192.168.1.10\"\n"
        );
        let n1 = rig.commit(&wan);
        let n2 = rig.commit(&wan.replace("port = 8080", "port = 8081"));
        let lease = |a: Option<&str>| crate::wan::AddressChange {
            link: "wan".into(),
            address: a.map(|a| a.parse().unwrap()),
        };
        // A lease before the first apply waits for it.
        d.wan_address(&lease(Some("203.0.113.100")));
        d.apply(n1).unwrap();
        assert_eq!(wan_set(d), json!(["203.0.113.100"]));
        d.wan_address(&lease(Some("203.0.113.200")));
        assert_eq!(wan_set(d), json!(["203.0.113.200"]));
        d.apply(n2).unwrap();
        assert_eq!(wan_set(d), json!(["203.0.113.200"]));
        // A failed write shows in the status and is retried.
        d.inner().stack.firewall.nft_mut().fail_next = Some("Error: busy".into());
        d.wan_address(&lease(Some("203.0.113.201")));
        let status = d.status(false);
        assert!(
            status["zone_addresses_error"]
                .as_str()
                .unwrap()
                .contains("zone wan"),
            "{status:#}"
        );
        d.retry_zone_sets();
        assert_eq!(wan_set(d), json!(["203.0.113.201"]));
        assert!(d.status(false)["zone_addresses_error"].is_null());
        // Lost: the set empties.
        d.wan_address(&lease(None));
        assert!(wan_set(d).is_null(), "{}", wan_set(d));
    }

    #[test]
    fn an_unknown_generation_is_invalid() {
        let rig = rig();
        assert!(matches!(rig.daemon.apply(9), Err(ApiError::Invalid(_))));
    }
}

/// `netd serve` and `netd check`.
pub mod cli {
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::sync::mpsc::{Receiver, RecvTimeoutError};
    use std::time::Duration;

    use appliance::control::{ApiError, ClientError, ControlClient, server};
    use appliance::store::Store;

    use super::{NetDaemon, Stack};
    use crate::firewall::{Firewall, NftCli};
    use crate::links::{Links, Rtnetlink};
    use crate::services::ThreadServices;
    use crate::wan::{self, Paths};
    use crate::wireguard::{KernelWg, SystemResolver, Wireguard};

    #[derive(Debug, clap::Args)]
    pub struct ServeArgs {
        /// The control socket (mode 0660).
        #[arg(long, default_value = super::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Where config generations are kept.
        #[arg(long, env = "APPLIANCE_CONFIG_DIR", default_value = appliance::store::DEFAULT_DIR)]
        pub data_dir: PathBuf,
        /// The firewall's record of its last apply; netd's record of the last apply,
        /// applied.json, is kept beside it.
        #[arg(long, default_value = super::DEFAULT_FIREWALL_STATE)]
        firewall_state: PathBuf,
        /// The DHCP server's leases.json and the WAN client's wan-<link>.json.
        #[arg(long, default_value = "/data/dhcp")]
        dhcp_dir: PathBuf,
        /// The DNS servers the WAN lease names, for dnsd.
        #[arg(long, default_value = wan::cli::DNS_FILE)]
        wan_dns_file: PathBuf,
        /// Where generated WireGuard private keys are kept (<ifname>.key, mode 0600).
        #[arg(long, default_value = "/data/wireguard")]
        wireguard_dir: PathBuf,
    }

    /// `netd check`: what `netd serve` would do with a config, changing nothing.
    #[derive(Debug, clap::Args)]
    pub struct CheckArgs {
        /// The appliance.toml to check.
        #[arg(long)]
        config: PathBuf,
        /// The firewall's record of its last apply (read only): with it the plan says
        /// what changes in place rather than "replace the table". serve's applied.json
        /// beside it (also read only) says which tunnels and static addresses are netd's.
        #[arg(long, default_value = super::DEFAULT_FIREWALL_STATE)]
        firewall_state: PathBuf,
        /// The DHCP server's state directory (its leases.json is read, not written).
        #[arg(long, default_value = "/data/dhcp")]
        dhcp_dir: PathBuf,
        /// Where WireGuard keys are kept; a key still to be generated is not written.
        #[arg(long, default_value = "/data/wireguard")]
        wireguard_dir: PathBuf,
        /// The control socket of the netd that serves: when it answers with the
        /// generation of its record, the DHCP server, advertisements and WAN client are
        /// planned against what it runs; otherwise as if none ran.
        #[arg(long, default_value = super::DEFAULT_SOCKET)]
        socket: PathBuf,
    }

    /// How long `netd check` waits for the serving netd's status.
    const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

    /// The config whose services the netd serving on `socket` runs: its record of the
    /// last apply (`record`), when its status reports that same generation in force.
    /// `None` (said on stderr): no netd serves, it has no record, or the two disagree;
    /// the services are then planned as if none ran, which is what a netd started now
    /// would do.
    fn services_in_force(socket: &Path, record: &Path) -> Option<appliance::Config> {
        let client = ControlClient::new(socket).with_timeout(STATUS_TIMEOUT);
        let status = match crate::cli::current_thread_runtime() {
            Ok(rt) => rt.block_on(client.get_json("/v1/status")),
            Err(_) => return None,
        };
        let generation = match status {
            Ok(s) => s.get("generation").and_then(serde_json::Value::as_u64),
            Err(ClientError::NotRunning { .. }) => {
                eprintln!(
                    "check: no netd serves on {}: services are planned as if none ran",
                    socket.display()
                );
                return None;
            }
            Err(e) => {
                eprintln!(
                    "check: cannot ask the serving netd what runs ({e}): services are planned as if none ran"
                );
                return None;
            }
        };
        let applied = crate::applied::load(record);
        match (generation, applied) {
            (Some(n), Some(applied)) if applied.generation == n => Some(applied.config),
            (n, applied) => {
                eprintln!(
                    "check: the serving netd reports generation {}, its record {} ({}): services are planned as if none ran",
                    n.map_or_else(|| "none".to_owned(), |n| n.to_string()),
                    applied.map_or_else(
                        || "is missing".to_owned(),
                        |a| format!("generation {}", a.generation)
                    ),
                    record.display()
                );
                None
            }
        }
    }

    pub fn serve(args: ServeArgs) -> ExitCode {
        match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    }

    fn stack(
        firewall_state: &Path,
        wireguard_dir: PathBuf,
        paths: Paths,
    ) -> Result<Stack<Rtnetlink, NftCli, KernelWg>, String> {
        let record = crate::applied::path_beside(firewall_state);
        let links = Links::new(Rtnetlink::new().map_err(|e| format!("netlink: {e}"))?);
        let firewall = Firewall::with_state_file(NftCli::new(), firewall_state);
        let wireguard = Wireguard::new(KernelWg::new().map_err(|e| format!("netlink: {e}"))?);
        Ok(Stack::new(
            links,
            firewall,
            wireguard,
            wireguard_dir,
            Box::new(ThreadServices::new(paths)),
        )
        .with_record(record))
    }

    /// Renders `--config`, plans it against the running kernel and dry-runs the table with
    /// `nft -c`; prints the plan. Exit 0: it would apply; 2: it would be refused (the
    /// config, the plan or nft says why); 1: the kernel could not be read.
    pub fn check(args: CheckArgs) -> ExitCode {
        let cfg = match crate::cli::load_config(&args.config) {
            Ok(c) => c,
            Err(code) => return code,
        };
        let paths = Paths {
            state_dir: args.dhcp_dir,
            dns_file: PathBuf::from(wan::cli::DNS_FILE),
            changes: None,
        };
        let mut stack = match stack(&args.firewall_state, args.wireguard_dir, paths) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        };
        let record = crate::applied::path_beside(&args.firewall_state);
        if let Some(running) = services_in_force(&args.socket, &record) {
            stack = stack.with_services_of(running);
        }
        match stack.plan(&cfg, None, &SystemResolver) {
            Ok(actions) => {
                for a in &actions {
                    println!("  {a}");
                }
                println!(
                    "check: {} is valid; applying it would take {} step(s)",
                    args.config.display(),
                    actions.len()
                );
                ExitCode::SUCCESS
            }
            Err(ApiError::Invalid(e)) => {
                eprintln!("check: {} would be refused: {e}", args.config.display());
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("check: {e}");
                ExitCode::from(1)
            }
        }
    }

    /// How long a failed zone set write waits before it is tried again.
    const ZONE_RETRY: Duration = Duration::from_secs(5);
    /// How often WireGuard peers are checked for a stale endpoint.
    const WG_WATCH_INTERVAL: Duration = Duration::from_secs(30);

    /// A thread that hands the WAN clients' address changes to the daemon (nft runs,
    /// blocking) and retries failed zone set writes; it ends when the last sender goes.
    fn follow_wan_addresses<N, F, W>(
        daemon: &Arc<NetDaemon<N, F, W>>,
        rx: Receiver<wan::AddressChange>,
    ) where
        N: crate::links::Netlink + Send + 'static,
        F: crate::firewall::Nft + Send + 'static,
        W: crate::wireguard::WgKernel + Send + 'static,
    {
        let daemon = Arc::clone(daemon);
        std::thread::spawn(move || {
            loop {
                match rx.recv_timeout(ZONE_RETRY) {
                    Ok(change) => {
                        tracing::info!(link = change.link, address = ?change.address, "WAN address changed");
                        daemon.wan_address(&change);
                    }
                    Err(RecvTimeoutError::Timeout) => daemon.retry_zone_sets(),
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
    }

    /// A thread that runs the WireGuard re-check every [`WG_WATCH_INTERVAL`] until the
    /// returned sender is dropped.
    fn watch_wireguard<N, F, W>(daemon: &Arc<NetDaemon<N, F, W>>) -> std::sync::mpsc::Sender<()>
    where
        N: crate::links::Netlink + Send + 'static,
        F: crate::firewall::Nft + Send + 'static,
        W: crate::wireguard::WgKernel + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let daemon = Arc::clone(daemon);
        std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(WG_WATCH_INTERVAL) {
                daemon.recheck_wireguard();
            }
        });
        tx
    }

    /// How long the built-in default stands in before the failed active generation is
    /// tried again: each try rewrites links and firewall, so not often.
    const ACTIVE_RETRY: Duration = Duration::from_secs(60);

    /// A thread that retries the active generation that failed at start until it
    /// applies or another generation takes its place.
    fn retry_active<N, F, W>(daemon: &Arc<NetDaemon<N, F, W>>, generation: u64)
    where
        N: crate::links::Netlink + Send + 'static,
        F: crate::firewall::Nft + Send + 'static,
        W: crate::wireguard::WgKernel + Send + 'static,
    {
        let daemon = Arc::clone(daemon);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(ACTIVE_RETRY);
                if daemon.retry_active(generation) {
                    return;
                }
            }
        });
    }

    /// Pings systemd's watchdog from the runtime that serves the socket, so a wedged
    /// runtime is restarted.
    fn watchdog() {
        let Some(every) = appliance::sd::watchdog_interval().map(|i| i / 2) else {
            return;
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            loop {
                tick.tick().await;
                appliance::sd::watchdog_ping();
            }
        });
    }

    fn run(args: ServeArgs) -> Result<(), String> {
        let store = Store::open(&args.data_dir).map_err(|e| e.to_string())?;
        if let Some(dir) = args.firewall_state.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let (changes, changed) = std::sync::mpsc::channel::<wan::AddressChange>();
        let paths = Paths {
            state_dir: args.dhcp_dir.clone(),
            dns_file: args.wan_dns_file.clone(),
            changes: Some(changes),
        };
        let stack = stack(&args.firewall_state, args.wireguard_dir.clone(), paths)?;
        let daemon = NetDaemon::new(store, stack);
        let _ = daemon.dhcp_dir.set(args.dhcp_dir.clone());
        follow_wan_addresses(&daemon, changed);
        if let Some(generation) = daemon.apply_active() {
            retry_active(&daemon, generation);
        }
        let wg_watch = watch_wireguard(&daemon);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let served: Result<(), String> = rt.block_on(async {
            let d = Arc::clone(&daemon);
            let task = server::serve(&args.socket, 0o660, move |req| Arc::clone(&d).route(req))
                .await
                .map_err(|e| e.to_string())?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| e.to_string())?;
            watchdog();
            appliance::sd::ready();
            appliance::sd::status(&match daemon.applied_generation() {
                Some(0) => "serving the built-in default".to_owned(),
                Some(n) => format!("serving generation {n}"),
                None => "serving; no generation applied (see the journal)".to_owned(),
            });
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            appliance::sd::stopping();
            task.abort();
            Ok(())
        });
        drop(wg_watch);
        // Advertisements say goodbye, the WAN client releases its lease.
        daemon.stop_services();
        let _ = std::fs::remove_file(&args.socket);
        tracing::info!("stopped");
        served
    }
}
