//! `netd serve`: the control socket `/run/appliance/netd.sock` (docs/control.md) over
//! the links and firewall services, and the DHCP services of the applied config.
//!
//! Applying generation N runs links, then the firewall (it matches on the links' names).
//! When the firewall step fails, the links go back to the generation applied before; the
//! firewall replaces its table in one nft transaction, so a failure there leaves nothing of
//! its own to undo. The previous config stays in memory, so going back costs one plan
//! against the kernel and one nft transaction.
//!
//! At start netd applies the active generation, or the built-in default while the store is
//! empty (reported as generation 0), and only then tells systemd it is ready: the box
//! routes and filters before `appliance-healthy.target`. The WAN DHCP client, the LAN
//! DHCP server, the LAN router advertisements and WireGuard (with the endpoint watch of
//! `netd wg watch`) run inside `netd serve` (see [`cli`]) and follow every applied config.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use appliance::Config;
use appliance::control::{ApiError, GenerationRequest, Method, PlanReply, Reply, Request};
use appliance::store::Store;
use serde_json::json;
use tokio::sync::watch;

use crate::firewall::{Firewall, Nft, render};
use crate::links::{Links, Netlink};

/// Where netd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/appliance/netd.sock";
/// The firewall's record of its last apply: under /run, emptied at boot like the tables.
pub const DEFAULT_FIREWALL_STATE: &str = "/run/netd/firewall.json";
/// The generation number netd reports while it runs the built-in default (the store is
/// empty); the store numbers its generations from 1.
pub const DEFAULT_GENERATION: u64 = 0;

struct Inner<N: Netlink, F: Nft> {
    links: Links<N>,
    firewall: Firewall<F>,
    applied: Option<(u64, Config)>,
    last_error: Option<String>,
    /// The address each WAN DHCP client holds now, by link.
    wan_leases: BTreeMap<String, Ipv4Addr>,
    /// The zone address sets this netd wrote, as it wrote them.
    zone_sets: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Why the last write of a zone address set failed (`None`: it did not); retried.
    zone_error: Option<String>,
}

/// netd as its control socket sees it.
pub struct NetDaemon<N: Netlink, F: Nft> {
    store: Store,
    inner: Mutex<Inner<N, F>>,
    started: Instant,
    /// The config of the last successful apply, for the DHCP services that follow it.
    applied_tx: watch::Sender<Option<Arc<Config>>>,
    /// The DHCP services' state directory (leases.json, wan-<link>.json), for the status
    /// (set by `netd serve`).
    dhcp_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// Why the last WireGuard reconcile of `netd serve` failed (`None`: it did not). A
    /// WireGuard failure does not fail the generation's apply, so the status says it.
    wg_error: Arc<Mutex<Option<String>>>,
}

impl<N: Netlink, F: Nft> std::fmt::Debug for NetDaemon<N, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDaemon")
            .field("store", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl<N, F> NetDaemon<N, F>
where
    N: Netlink + Send + 'static,
    F: Nft + Send + 'static,
{
    pub fn new(store: Store, links: Links<N>, firewall: Firewall<F>) -> Arc<Self> {
        Arc::new(Self {
            store,
            inner: Mutex::new(Inner {
                links,
                firewall,
                applied: None,
                last_error: None,
                wan_leases: BTreeMap::new(),
                zone_sets: BTreeMap::new(),
                zone_error: None,
            }),
            started: Instant::now(),
            applied_tx: watch::Sender::new(None),
            dhcp_dir: std::sync::OnceLock::new(),
            wg_error: Arc::new(Mutex::new(None)),
        })
    }

    /// The config of every successful apply from now on (the current one first).
    pub fn applied(&self) -> watch::Receiver<Option<Arc<Config>>> {
        self.applied_tx.subscribe()
    }

    fn inner(&self) -> MutexGuard<'_, Inner<N, F>> {
        // A panic inside an apply leaves the kernel wherever it got; the next apply plans
        // from what the kernel holds, so the guard's data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load(&self, generation: u64) -> Result<Config, ApiError> {
        appliance::control::load_generation(&self.store, generation)
    }

    /// What applying `generation` would do now; changes nothing.
    pub fn plan(&self, generation: u64) -> Result<PlanReply, ApiError> {
        let cfg = self.load(generation)?;
        let mut inner = self.inner();
        let links = inner
            .links
            .plan(&cfg)
            .map_err(|e| ApiError::Invalid(format!("links: {e}")))?;
        let mut actions: Vec<String> = links
            .actions
            .iter()
            .map(|a| format!("links: {a}"))
            .collect();
        let observed = inner
            .firewall
            .observe()
            .map_err(|e| ApiError::Internal(format!("firewall: {e}")))?;
        if let Some(what) = inner.firewall.plan(&render(&cfg), &observed).describe() {
            actions.push(format!("firewall: {what}"));
        }
        Ok(PlanReply {
            generation,
            actions,
        })
    }

    /// Applies `generation`: links, then the firewall. On failure what this call changed is
    /// undone and the error names the step.
    pub fn apply(&self, generation: u64) -> Result<PlanReply, ApiError> {
        let cfg = self.load(generation)?;
        self.apply_config(generation, cfg)
    }

    fn apply_config(&self, generation: u64, cfg: Config) -> Result<PlanReply, ApiError> {
        let mut inner = self.inner();
        let result = Self::apply_locked(&mut inner, generation, &cfg);
        match &result {
            Ok(_) => {
                self.applied_tx.send_replace(Some(Arc::new(cfg.clone())));
                inner.applied = Some((generation, cfg));
                inner.last_error = None;
                // The rendered table holds the config's addresses and those learned
                // before; a zone that gained or lost a DHCP link needs its set now.
                Self::sync_zone_sets(&mut inner);
            }
            Err(e) => inner.last_error = Some(e.to_string()),
        }
        result
    }

    fn apply_locked(
        inner: &mut Inner<N, F>,
        generation: u64,
        cfg: &Config,
    ) -> Result<PlanReply, ApiError> {
        let links = inner.links.apply(cfg).map_err(|e| ApiError::ApplyFailed {
            step: "links".into(),
            reason: e.to_string(),
        })?;
        let mut actions: Vec<String> = links
            .actions
            .iter()
            .map(|a| format!("links: {a}"))
            .collect();
        match inner.firewall.apply(&render(cfg)) {
            Ok(true) => actions.push(format!(
                "firewall: wrote table inet {}",
                crate::firewall::TABLE
            )),
            Ok(false) => {}
            Err(e) => {
                let undo = match &inner.applied {
                    Some((n, prev)) => match inner.links.apply(prev) {
                        Ok(_) => format!("the links are back on generation {n}"),
                        Err(u) => format!("putting the links back on generation {n} failed too: {u}"),
                    },
                    None => "no generation was applied before by this netd, so the links keep the new state".into(),
                };
                tracing::error!(generation, error = %e, "firewall step failed; {undo}");
                return Err(ApiError::ApplyFailed {
                    step: "firewall".into(),
                    reason: format!("{e}; {undo}"),
                });
            }
        }
        tracing::info!(generation, steps = actions.len(), "generation applied");
        Ok(PlanReply {
            generation,
            actions,
        })
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
    fn sync_zone_sets(inner: &mut Inner<N, F>) {
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
            match inner.firewall.set_zone_addresses(&zone, &addrs) {
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
            &mut inner.links,
            &inner.firewall,
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
        if let Some(wg) = net.get_mut("wireguard").and_then(|w| w.as_object_mut()) {
            let error = self.wg_error.lock().map(|e| e.clone()).unwrap_or_default();
            wg.insert("apply_error".into(), json!(error));
        }
        let inner = self.inner();
        json!({
            "daemon": "netd",
            "version": env!("CARGO_PKG_VERSION"),
            "generation": inner.applied.as_ref().map(|(n, _)| *n),
            "last_error": inner.last_error,
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
            u8::from(inner.last_error.is_some())
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
    pub fn apply_active(&self) {
        match self.store.current() {
            Ok((Some(g), _)) => match self.apply(g.info.number) {
                Ok(r) => tracing::info!(
                    generation = g.info.number,
                    steps = r.actions.len(),
                    "active generation applied at start"
                ),
                Err(e) => {
                    tracing::error!(generation = g.info.number, error = %e, "cannot apply the active generation at start")
                }
            },
            Ok((None, _)) => self.apply_default(),
            Err(e) => {
                // A broken /data must not leave the box unfiltered and unreachable.
                tracing::error!(error = %e, "cannot read the config store; applying the built-in default");
                self.apply_default();
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

    const BASE: &str = "version = 1\n[interfaces.lan]\ndevice = \"nic1\"\naddresses = [\"192.168.1.1/24\"]\n[firewall.zones.lan]\ninterfaces = [\"lan\"]\ninput = \"accept\"\nforward = \"accept\"\n";

    fn daemon(dir: &std::path::Path) -> Arc<NetDaemon<FakeNetlink, FakeNft>> {
        let store = Store::open(dir).unwrap();
        let n1 = store.commit(BASE, "base").unwrap();
        store.activate(n1).unwrap();
        let changed = BASE.replace("192.168.1.1/24", "192.168.2.1/24");
        store.commit(&changed, "new address").unwrap();
        let links = Links::new(FakeNetlink::with_nics(&[("nic1", [2, 0, 0, 0, 0, 1])]));
        NetDaemon::new(store, links, Firewall::new(FakeNft::new()))
    }

    fn addresses(d: &NetDaemon<FakeNetlink, FakeNft>) -> String {
        format!(
            "{:?}",
            d.inner().links.netlink_mut().observe().unwrap().addresses
        )
    }

    #[test]
    fn a_failing_firewall_puts_the_links_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        d.apply(1).unwrap();
        let before = addresses(&d);
        assert!(before.contains("192.168.1.1"), "{before}");
        let plan = d.plan(2).unwrap();
        assert!(
            plan.actions.iter().any(|a| a.contains("192.168.2.1")),
            "{plan:?}"
        );
        // A new address and a firewall change that nft refuses.
        d.inner().firewall.nft_mut().fail_next = Some("Error: Could not process rule".into());
        let changed = BASE
            .replace("192.168.1.1/24", "192.168.2.1/24")
            .replace("forward = \"accept\"", "forward = \"drop\"");
        let n3 = d.store.commit(&changed, "both").unwrap();
        match d.apply(n3) {
            Err(ApiError::ApplyFailed { step, reason }) => {
                assert_eq!(step, "firewall");
                assert!(reason.contains("back on generation 1"), "{reason}");
            }
            other => panic!("expected a firewall failure, got {other:?}"),
        }
        assert_eq!(addresses(&d), before);
        assert_eq!(d.status(false)["generation"], 1);
        assert!(
            d.status(false)["last_error"]
                .as_str()
                .unwrap()
                .contains("firewall")
        );
        d.apply(2).unwrap();
        assert!(addresses(&d).contains("192.168.2.1"));
    }

    #[test]
    fn an_empty_store_gets_the_built_in_default_and_the_services_see_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let links = Links::new(FakeNetlink::with_nics(&[
            ("eth0", [2, 0, 0, 0, 0, 1]),
            ("eth1", [2, 0, 0, 0, 0, 2]),
        ]));
        let d = NetDaemon::new(store, links, Firewall::new(FakeNft::new()));
        let applied = d.applied();
        d.apply_active();
        assert_eq!(d.applied_generation(), Some(DEFAULT_GENERATION));
        assert!(addresses(&d).contains("192.168.1.1"));
        let cfg = applied.borrow().clone().unwrap();
        assert_eq!(crate::wan::cli::dhcp_links(&cfg), ["wan"]);
        assert_eq!(crate::dhcp::scopes(&cfg).len(), 1);
    }

    #[test]
    fn a_wireguard_failure_shows_in_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        assert!(d.status(false)["net"]["wireguard"]["apply_error"].is_null());
        *d.wg_error.lock().unwrap() = Some("wireguard.wg0.private_key_file: bad".into());
        assert_eq!(
            d.status(false)["net"]["wireguard"]["apply_error"],
            "wireguard.wg0.private_key_file: bad"
        );
    }

    /// The wan_addr4 elements as the (fake) kernel holds them.
    fn wan_set(d: &NetDaemon<FakeNetlink, FakeNft>) -> serde_json::Value {
        let listing = d.inner().firewall.listing().unwrap().unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let wan = format!(
            "{BASE}[interfaces.wan]\ndevice = \"nic0\"\nipv4 = \"dhcp\"\n[firewall.zones.wan]\ninterfaces = [\"wan\"]\ninput = \"drop\"\nforward = \"drop\"\n[firewall.forwards.web]\nprotocol = \"tcp\"\nport = 8080\nto = \"192.168.1.10\"\n"
        );
        let n1 = store.commit(&wan, "dhcp wan").unwrap();
        let n2 = store
            .commit(&wan.replace("port = 8080", "port = 8081"), "other port")
            .unwrap();
        let links = Links::new(FakeNetlink::with_nics(&[
            ("nic0", [2, 0, 0, 0, 0, 0]),
            ("nic1", [2, 0, 0, 0, 0, 1]),
        ]));
        let d = NetDaemon::new(store, links, Firewall::new(FakeNft::new()));
        let lease = |a: Option<&str>| crate::wan::AddressChange {
            link: "wan".into(),
            address: a.map(|a| a.parse().unwrap()),
        };
        // A lease before the first apply waits for it.
        d.wan_address(&lease(Some("203.0.113.100")));
        d.apply(n1).unwrap();
        assert_eq!(wan_set(&d), json!(["203.0.113.100"]));
        d.wan_address(&lease(Some("203.0.113.200")));
        assert_eq!(wan_set(&d), json!(["203.0.113.200"]));
        d.apply(n2).unwrap();
        assert_eq!(wan_set(&d), json!(["203.0.113.200"]));
        // A failed write shows in the status and is retried.
        d.inner().firewall.nft_mut().fail_next = Some("Error: busy".into());
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
        assert_eq!(wan_set(&d), json!(["203.0.113.201"]));
        assert!(d.status(false)["zone_addresses_error"].is_null());
        // Lost: the set empties.
        d.wan_address(&lease(None));
        assert!(wan_set(&d).is_null(), "{}", wan_set(&d));
    }

    #[test]
    fn an_unknown_generation_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path());
        assert!(matches!(d.apply(9), Err(ApiError::Invalid(_))));
    }
}

/// `netd serve`.
pub mod cli {
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{RecvTimeoutError, Sender};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use appliance::Config;
    use appliance::control::server;
    use appliance::store::Store;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::NetDaemon;
    use crate::dhcp::{self, Scope};
    use crate::firewall::{Firewall, NftCli};
    use crate::ipv6::AdvertLink;
    use crate::links::{Links, Rtnetlink};
    use crate::wan::{self, ClientError, Paths};

    #[derive(Debug, clap::Args)]
    pub struct ServeArgs {
        /// The control socket (mode 0660).
        #[arg(long, default_value = super::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Where config generations are kept.
        #[arg(long, env = "APPLIANCE_CONFIG_DIR", default_value = appliance::store::DEFAULT_DIR)]
        pub data_dir: PathBuf,
        /// The firewall's record of its last apply.
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

    pub fn serve(args: ServeArgs) -> ExitCode {
        match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    }

    /// The WAN DHCP clients (threads: they block on packet sockets) of one config.
    struct WanClients {
        links: Vec<String>,
        stop: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<Vec<ClientError>>,
    }

    /// The LAN DHCP server of one config.
    struct DhcpServer {
        scopes: Vec<Scope>,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    /// The router advertisements of one config (a thread per link inside).
    struct Advertiser {
        links: Vec<AdvertLink>,
        stop: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<Result<(), crate::ipv6::Ipv6Error>>,
    }

    /// The WireGuard loop: a thread that reconciles the tunnels of every config it is
    /// sent, and every [`WG_WATCH_INTERVAL`] looks up again the DNS endpoints of peers
    /// without a handshake for over 2 minutes (what `netd wg watch` does alone).
    struct WgWatch {
        configs: std::sync::mpsc::Sender<Arc<Config>>,
        thread: std::thread::JoinHandle<()>,
    }

    const WG_WATCH_INTERVAL: Duration = Duration::from_secs(30);

    /// The services inside `netd serve`: the WAN DHCP client, the LAN DHCP server, the
    /// router advertisements and WireGuard. They run here rather than as units of their
    /// own because they must follow every config netd applies (a commit-confirm revert
    /// included) and need the links netd has just made; one process also means one
    /// watchdog, one capability set and one place that owns the WAN address.
    struct Services {
        paths: Paths,
        wireguard_dir: PathBuf,
        wg_error: Arc<Mutex<Option<String>>>,
        wan: Option<WanClients>,
        dhcp: Option<DhcpServer>,
        ra: Option<Advertiser>,
        wg: Option<WgWatch>,
    }

    impl Services {
        /// Restarts what `cfg` changes: the WAN clients when the DHCP links differ, the
        /// server when its scopes do. Unchanged services keep their leases and sockets.
        async fn follow(&mut self, cfg: &Config) {
            let links = wan::cli::dhcp_links(cfg);
            if self.wan.as_ref().map(|w| &w.links) != Some(&links) {
                self.stop_wan().await;
                if !links.is_empty() {
                    tracing::info!(?links, "starting the WAN DHCP client");
                    let stop = Arc::new(AtomicBool::new(false));
                    let (l, p, s) = (links.clone(), self.paths.clone(), stop.clone());
                    let thread = std::thread::spawn(move || wan::client::run_all(&l, &p, s));
                    self.wan = Some(WanClients {
                        links,
                        stop,
                        thread,
                    });
                }
            }
            let scopes = dhcp::scopes(cfg);
            if self.dhcp.as_ref().map(|d| &d.scopes) != Some(&scopes) {
                self.stop_dhcp().await;
                if !scopes.is_empty() {
                    let (stop, stopped) = oneshot::channel::<()>();
                    let (cfg, dir) = (cfg.clone(), self.paths.state_dir.clone());
                    let task = tokio::spawn(async move {
                        let shutdown = async {
                            let _ = stopped.await;
                        };
                        if let Err(e) = dhcp::run(&cfg, &dir, || {}, shutdown).await {
                            tracing::error!(error = %e, "the DHCP server stopped");
                        }
                    });
                    self.dhcp = Some(DhcpServer { scopes, stop, task });
                }
            }
            let adverts = crate::ipv6::advertised_links(cfg);
            if self.ra.as_ref().map(|r| &r.links) != Some(&adverts) {
                // The old advertiser's last word (router lifetime 0) withdraws prefixes
                // the new config no longer has; the new one starts at once after it.
                let before = self
                    .ra
                    .as_ref()
                    .map(|r| r.links.clone())
                    .unwrap_or_default();
                self.stop_ra().await;
                if !adverts.is_empty() {
                    tracing::info!(links = ?adverts.iter().map(|l| &l.name).collect::<Vec<_>>(), "starting router advertisements");
                    let stop = Arc::new(AtomicBool::new(false));
                    // Prefixes a link no longer has go out with zero lifetimes.
                    let links = crate::ipv6::with_retired(&before, &adverts);
                    let s = Arc::clone(&stop);
                    let thread = std::thread::spawn(move || crate::ipv6::run_links(links, s));
                    self.ra = Some(Advertiser {
                        links: adverts,
                        stop,
                        thread,
                    });
                }
            }
            self.follow_wireguard(cfg);
        }

        /// Hands `cfg` to the WireGuard loop, starting it with the first config that has
        /// a tunnel. A netd that never saw a tunnel leaves WireGuard alone, so tunnels made
        /// by hand with `netd wg apply` survive a config without `[wireguard]`; once netd
        /// manages tunnels, a config without them removes them.
        fn follow_wireguard(&mut self, cfg: &Config) {
            if self.wg.is_none() && cfg.wireguard.is_empty() {
                return;
            }
            let cfg = Arc::new(cfg.clone());
            if let Some(w) = &self.wg
                && w.configs.send(Arc::clone(&cfg)).is_ok()
            {
                return;
            }
            let (configs, rx) = std::sync::mpsc::channel::<Arc<Config>>();
            let (dir, error) = (self.wireguard_dir.clone(), Arc::clone(&self.wg_error));
            let _ = configs.send(cfg);
            let thread = std::thread::spawn(move || wireguard_loop(&rx, &dir, &error));
            self.wg = Some(WgWatch { configs, thread });
        }

        async fn stop_ra(&mut self) {
            let Some(r) = self.ra.take() else { return };
            r.stop.store(true, Ordering::SeqCst);
            match tokio::task::spawn_blocking(move || r.thread.join()).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::error!("{e}"),
                _ => tracing::error!("the router advertisement thread panicked"),
            }
        }

        async fn stop_wg(&mut self) {
            let Some(w) = self.wg.take() else { return };
            drop(w.configs);
            if tokio::task::spawn_blocking(move || w.thread.join())
                .await
                .map_or(true, |r| r.is_err())
            {
                tracing::error!("the WireGuard thread panicked");
            }
        }

        async fn stop_wan(&mut self) {
            let Some(w) = self.wan.take() else { return };
            w.stop.store(true, Ordering::SeqCst);
            // The clients release their leases before they return.
            match tokio::task::spawn_blocking(move || w.thread.join()).await {
                Ok(Ok(errors)) => errors.iter().for_each(|e| tracing::error!("{e}")),
                _ => tracing::error!("a WAN DHCP client thread panicked"),
            }
        }

        async fn stop_dhcp(&mut self) {
            let Some(d) = self.dhcp.take() else { return };
            let _ = d.stop.send(());
            let _ = d.task.await;
        }
    }

    /// The WireGuard thread: a new config is reconciled with every endpoint name looked
    /// up; between configs, every [`WG_WATCH_INTERVAL`], only the names of peers that are
    /// due (a live session keeps the endpoint it roamed to). Ends when the sender goes.
    fn wireguard_loop(
        configs: &std::sync::mpsc::Receiver<Arc<Config>>,
        dir: &std::path::Path,
        last_error: &Mutex<Option<String>>,
    ) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut current: Option<Arc<Config>> = None;
        loop {
            let (fresh, all) = match configs.recv_timeout(WG_WATCH_INTERVAL) {
                Ok(cfg) => (Some(cfg), true),
                Err(RecvTimeoutError::Timeout) => (None, false),
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if let Some(cfg) = fresh {
                current = Some(cfg);
            }
            let Some(cfg) = &current else { continue };
            let result = if all {
                crate::wireguard::cli::reconcile(cfg, dir, &|_, _| true)
            } else {
                crate::wireguard::cli::reconcile(cfg, dir, &crate::wireguard::cli::due_now())
            };
            match &result {
                Ok(0) => {}
                Ok(n) => tracing::info!(actions = n, "WireGuard reconciled"),
                Err(e) if all => tracing::error!("WireGuard: {e}"),
                Err(e) => tracing::warn!("WireGuard re-check failed, trying again later: {e}"),
            }
            if let Ok(mut slot) = last_error.lock() {
                *slot = result.err();
            }
        }
    }

    /// How long a failed zone set write waits before it is tried again.
    const ZONE_RETRY: Duration = Duration::from_secs(5);

    /// A thread that hands the WAN clients' address changes to the daemon (nft runs,
    /// blocking) and retries failed zone set writes; it ends when the last sender goes.
    fn follow_wan_addresses<N, F>(daemon: &Arc<NetDaemon<N, F>>) -> Sender<wan::AddressChange>
    where
        N: crate::links::Netlink + Send + 'static,
        F: crate::firewall::Nft + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel::<wan::AddressChange>();
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
        tx
    }

    /// Pings systemd's watchdog from the runtime that serves the socket and runs the DHCP
    /// server, so a wedged runtime is restarted.
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
        let links = Links::new(Rtnetlink::new().map_err(|e| format!("netlink: {e}"))?);
        if let Some(dir) = args.firewall_state.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let firewall = Firewall::with_state_file(NftCli::new(), &args.firewall_state);
        let daemon = NetDaemon::new(store, links, firewall);
        let _ = daemon.dhcp_dir.set(args.dhcp_dir.clone());
        let changes = follow_wan_addresses(&daemon);
        let mut applied = daemon.applied();
        daemon.apply_active();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let mut services = Services {
            paths: Paths {
                state_dir: args.dhcp_dir.clone(),
                dns_file: args.wan_dns_file.clone(),
                changes: Some(changes),
            },
            wireguard_dir: args.wireguard_dir.clone(),
            wg_error: Arc::clone(&daemon.wg_error),
            wan: None,
            dhcp: None,
            ra: None,
            wg: None,
        };
        rt.block_on(async {
            let d = Arc::clone(&daemon);
            let task = server::serve(&args.socket, 0o660, move |req| Arc::clone(&d).route(req))
                .await
                .map_err(|e| e.to_string())?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| e.to_string())?;
            let first = applied.borrow_and_update().clone();
            if let Some(cfg) = first {
                services.follow(&cfg).await;
            }
            watchdog();
            appliance::sd::ready();
            appliance::sd::status(&match daemon.applied_generation() {
                Some(0) => "serving the built-in default".to_owned(),
                Some(n) => format!("serving generation {n}"),
                None => "serving; no generation applied (see the journal)".to_owned(),
            });
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                    changed = applied.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let cfg = applied.borrow_and_update().clone();
                        if let Some(cfg) = cfg {
                            services.follow(&cfg).await;
                        }
                    }
                }
            }
            appliance::sd::stopping();
            task.abort();
            services.stop_ra().await;
            services.stop_wg().await;
            services.stop_dhcp().await;
            services.stop_wan().await;
            let _ = std::fs::remove_file(&args.socket);
            tracing::info!("stopped");
            Ok(())
        })
    }
}
