//! `netd serve`: the control socket `/run/appliance/netd.sock` (docs/control.md) over
//! the links and firewall services.
//!
//! Applying generation N runs links, then the firewall (it matches on the links' names).
//! When the firewall step fails, the links go back to the generation applied before; the
//! firewall replaces its table in one nft transaction, so a failure there leaves nothing of
//! its own to undo. The previous config stays in memory, so going back costs one plan
//! against the kernel and one nft transaction.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use appliance::Config;
use appliance::control::{ApiError, GenerationRequest, Method, PlanReply, Reply, Request};
use appliance::store::{Store, StoreError};
use serde_json::json;

use crate::firewall::{Firewall, FirewallPlan, Nft, render};
use crate::links::{Links, Netlink};

/// Where netd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/appliance/netd.sock";
/// The firewall's record of its last apply: under /run, emptied at boot like the tables.
pub const DEFAULT_FIREWALL_STATE: &str = "/run/netd/firewall.json";

struct Inner<N: Netlink, F: Nft> {
    links: Links<N>,
    firewall: Firewall<F>,
    applied: Option<(u64, Config)>,
    last_error: Option<String>,
}

/// netd as its control socket sees it.
pub struct NetDaemon<N: Netlink, F: Nft> {
    store: Store,
    inner: Mutex<Inner<N, F>>,
    started: Instant,
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
            }),
            started: Instant::now(),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner<N, F>> {
        // A panic inside an apply leaves the kernel wherever it got; the next apply plans
        // from what the kernel holds, so the guard's data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load(&self, generation: u64) -> Result<Config, ApiError> {
        let g = self.store.get(generation).map_err(|e| match e {
            StoreError::NotFound(_) | StoreError::Corrupt { .. } => {
                ApiError::Invalid(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        })?;
        appliance::load_str(&g.text).map_err(|d| {
            ApiError::Invalid(format!(
                "generation {generation} does not validate:\n{}",
                d.render(&g.text, &format!("generation {generation}"), false)
            ))
        })
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
        if let FirewallPlan::Replace { reason, .. } =
            inner.firewall.plan(&render(&cfg), observed.as_ref())
        {
            actions.push(format!(
                "firewall: replace table inet {} ({reason})",
                crate::firewall::TABLE
            ));
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
        let mut inner = self.inner();
        let result = Self::apply_locked(&mut inner, generation, &cfg);
        match &result {
            Ok(_) => {
                inner.applied = Some((generation, cfg));
                inner.last_error = None;
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
                "firewall: replaced table inet {}",
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

    fn status(&self) -> serde_json::Value {
        let inner = self.inner();
        json!({
            "daemon": "netd",
            "version": env!("CARGO_PKG_VERSION"),
            "generation": inner.applied.as_ref().map(|(n, _)| *n),
            "last_error": inner.last_error,
            "uptime_seconds": self.started.elapsed().as_secs(),
        })
    }

    fn metrics(&self) -> String {
        let inner = self.inner();
        format!(
            "# HELP netd_applied_generation The config generation netd applied last.\n# TYPE netd_applied_generation gauge\nnetd_applied_generation {}\n# HELP netd_apply_failed Whether the last apply failed.\n# TYPE netd_apply_failed gauge\nnetd_apply_failed {}\n",
            inner.applied.as_ref().map_or(0, |(n, _)| *n),
            u8::from(inner.last_error.is_some())
        )
    }

    /// Answers one control request. Plan and apply block on netlink and nft: they run
    /// on the blocking pool, one at a time (the lock).
    pub async fn route(self: Arc<Self>, req: Request) -> Result<Reply, ApiError> {
        match req.path.as_str() {
            "/v1/status" => {
                req.only(&Method::GET)?;
                Ok(Reply::Json(self.status()))
            }
            "/metrics" => {
                req.only(&Method::GET)?;
                Ok(Reply::Metrics(self.metrics()))
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
            Ok((None, _)) => tracing::info!("no generation stored yet; waiting for applianced"),
            Err(e) => tracing::error!(error = %e, "cannot read the config store"),
        }
    }
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
        assert_eq!(d.status()["generation"], 1);
        assert!(
            d.status()["last_error"]
                .as_str()
                .unwrap()
                .contains("firewall")
        );
        d.apply(2).unwrap();
        assert!(addresses(&d).contains("192.168.2.1"));
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
    use std::sync::Arc;

    use appliance::control::server;
    use appliance::store::Store;

    use super::NetDaemon;
    use crate::firewall::{Firewall, NftCli};
    use crate::links::{Links, Rtnetlink};

    #[derive(Debug, clap::Args)]
    pub struct ServeArgs {
        /// The control socket (mode 0660).
        #[arg(long, default_value = super::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Where config generations are kept.
        #[arg(long, env = "APPLIANCE_CONFIG_DIR", default_value = appliance::store::DEFAULT_DIR)]
        data_dir: PathBuf,
        /// The firewall's record of its last apply.
        #[arg(long, default_value = super::DEFAULT_FIREWALL_STATE)]
        firewall_state: PathBuf,
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

    fn run(args: ServeArgs) -> Result<(), String> {
        let store = Store::open(&args.data_dir).map_err(|e| e.to_string())?;
        let links = Links::new(Rtnetlink::new().map_err(|e| format!("netlink: {e}"))?);
        if let Some(dir) = args.firewall_state.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let firewall = Firewall::with_state_file(NftCli::new(), &args.firewall_state);
        let daemon = NetDaemon::new(store, links, firewall);
        daemon.apply_active();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        rt.block_on(async {
            let d = Arc::clone(&daemon);
            let task = server::serve(&args.socket, 0o660, move |req| Arc::clone(&d).route(req))
                .await
                .map_err(|e| e.to_string())?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| e.to_string())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            task.abort();
            let _ = std::fs::remove_file(&args.socket);
            tracing::info!("stopped");
            Ok(())
        })
    }
}
