//! The API's [`Backend`] over the transaction [`Engine`] and the daemons' control sockets:
//! what applianced serves over HTTPS.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::{Engine, TxnError};
use crate::accounts::Accounts;
use crate::api::backend::{
    ApplyReport, Backend, BackendError, DaemonStatus, DnsLogQuery, HistoryEntry, PeerAdd,
    PeerAdded, PlanView, StoredConfig, UpdateInstall,
};
use crate::control::{ClientError, ControlClient};
use crate::store::StoreError;
use crate::{Config, DEFAULT_CONFIG};

/// How far the install that runs now is.
#[derive(Debug, Clone)]
struct Progress {
    chunks_done: usize,
    chunks: usize,
    source: String,
}

/// The engine plus the sockets of the daemons the API reads directly.
#[derive(Debug)]
pub struct EngineBackend {
    engine: Arc<Engine>,
    accounts: Arc<Accounts>,
    dnsd: ControlClient,
    stored: ControlClient,
    update: image::install::Paths,
    /// One install at a time: a second one would write the same slot.
    installing: tokio::sync::Mutex<()>,
    /// The install in progress: chunks written, chunks in all, where from; for the status.
    progress: Arc<std::sync::Mutex<Option<Progress>>>,
    metrics: Option<Arc<crate::metrics::Gatherer>>,
    /// Where netd keeps the keys of tunnels whose config names no key file.
    wg_key_dir: PathBuf,
}

impl EngineBackend {
    pub fn new(
        engine: Arc<Engine>,
        accounts: Arc<Accounts>,
        dnsd_socket: impl Into<PathBuf>,
        stored_socket: impl Into<PathBuf>,
    ) -> Self {
        Self {
            engine,
            accounts,
            dnsd: ControlClient::new(dnsd_socket),
            stored: ControlClient::new(stored_socket),
            update: image::install::Paths::default(),
            installing: tokio::sync::Mutex::new(()),
            progress: Arc::default(),
            metrics: None,
            wg_key_dir: crate::api::wireguard::KEY_DIR.into(),
        }
    }

    /// Where netd keeps the tunnels' keys (`/data/wireguard` on the box).
    #[must_use]
    pub fn with_wireguard_key_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.wg_key_dir = dir.into();
        self
    }

    /// The sources of `GET /metrics` (the daemons' sockets and the node).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Gatherer>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Where the updater's ESP, slots and state are (the box's by default).
    #[must_use]
    pub fn with_update_paths(mut self, paths: image::install::Paths) -> Self {
        self.update = paths;
        self
    }

    /// The updater as `applctl update` makes it, recording the active config generation
    /// for the install (a rollback of the release brings that generation back).
    fn device(&self) -> Result<image::install::Device, BackendError> {
        let mut device = image::install::Device::new(self.update.clone());
        device.config_generation = self.engine.store().active().map_err(store_error)?;
        // The keys the admin trusts in `update.trusted_keys`, on top of the built-in ones.
        let (_, cfg) = self.active_config()?;
        device.extra_keys = cfg
            .update
            .trusted_keys
            .iter()
            .filter_map(|k| image::bundle::PublicKey::parse(&k.to_string()))
            .collect();
        Ok(device)
    }

    /// The config the daemons run (the built-in default before the first change).
    fn active_config(&self) -> Result<(Option<u64>, Config), BackendError> {
        let store = self.engine.store();
        match store.active().map_err(store_error)? {
            Some(n) => Ok((Some(n), self.load(n)?)),
            None => Ok((None, load_builtin()?)),
        }
    }

    fn load(&self, n: u64) -> Result<Config, BackendError> {
        let g = self.engine.store().get(n).map_err(store_error)?;
        crate::load_str(&g.text).map_err(|d| {
            BackendError::Conflict(format!(
                "generation {n} does not validate with this firmware:\n{}",
                d.render(&g.text, &format!("generation {n}"), false)
            ))
        })
    }

    fn newest(&self) -> Result<u64, BackendError> {
        let (history, _) = self.engine.store().history().map_err(store_error)?;
        history
            .first()
            .map(|g| g.number)
            .ok_or_else(|| BackendError::Conflict("no config is stored yet; put one first".into()))
    }

    fn plan_to(&self, generation: u64) -> Result<PlanView, BackendError> {
        let (_, old) = self.active_config()?;
        let new = self.load(generation)?;
        Ok(PlanView::from(&crate::plan::diff(Some(&old), &new)))
    }

    fn plan_between(&self, from: u64, to: u64) -> PlanView {
        match (self.load(from), self.load(to)) {
            (Ok(old), Ok(new)) => PlanView::from(&crate::plan::diff(Some(&old), &new)),
            _ => PlanView::default(),
        }
    }

    /// Takes the users of the config the daemons run now, so that a change to `[api]`
    /// holds from the next request on.
    pub fn refresh_accounts(&self) {
        match self.active_config() {
            Ok((_, cfg)) => self.accounts.set_api(&cfg.api),
            Err(e) => tracing::error!(error = %e, "the API keeps its previous accounts"),
        }
    }
}

fn load_builtin() -> Result<Config, BackendError> {
    crate::load_str(DEFAULT_CONFIG)
        .map_err(|_| BackendError::Internal("the built-in default config does not validate".into()))
}

fn store_error(e: StoreError) -> BackendError {
    match e {
        StoreError::NotFound(_) => BackendError::NotFound(e.to_string()),
        other => BackendError::Internal(other.to_string()),
    }
}

fn txn_error(e: TxnError) -> BackendError {
    match e {
        TxnError::Invalid(msg) => BackendError::Conflict(msg),
        TxnError::Pending { .. } | TxnError::NothingPending => {
            BackendError::Conflict(e.to_string())
        }
        TxnError::BadRequest(msg) => BackendError::BadRequest(msg),
        TxnError::Store(s) => store_error(s),
        TxnError::State(_) => BackendError::Internal(e.to_string()),
        TxnError::Failed {
            ref step,
            ref reason,
            ref report,
        } => {
            let revert_failed = report
                .steps
                .iter()
                .any(|s| s.action == "revert" && s.outcome == "failed");
            if revert_failed {
                // The daemons are not all back: the message names the ones that are not.
                BackendError::Internal(e.to_string())
            } else {
                BackendError::ApplyFailed {
                    step: step.clone(),
                    reason: reason.clone(),
                    restored: report.from,
                }
            }
        }
    }
}

/// A daemon's error answer keeps its meaning; anything else means it is not there.
fn client_error(daemon: &str, e: ClientError) -> BackendError {
    match e {
        ClientError::Status { status, .. } if status.as_u16() == 404 => {
            BackendError::NotFound(e.to_string())
        }
        ClientError::Status { status, .. } if status.as_u16() == 409 => {
            BackendError::Conflict(e.to_string())
        }
        ClientError::Status { status, .. } if status.is_client_error() => {
            BackendError::BadRequest(e.to_string())
        }
        other => BackendError::Unavailable {
            daemon: daemon.into(),
            reason: other.to_string(),
        },
    }
}

fn update_error(e: image::install::UpdateError) -> BackendError {
    if crate::api::update::is_input_error(&e) {
        BackendError::BadRequest(e.to_string())
    } else {
        BackendError::Internal(e.to_string())
    }
}

/// Query-string escaping for the few characters a client filter can hold.
fn escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[async_trait::async_trait]
impl Backend for EngineBackend {
    async fn config_get(&self) -> Result<StoredConfig, BackendError> {
        let store = self.engine.store();
        let active = store.active().map_err(store_error)?;
        let (history, _) = store.history().map_err(store_error)?;
        match history.first() {
            Some(g) => Ok(StoredConfig {
                generation: Some(g.number),
                active: active.filter(|&a| a != g.number),
                text: store.get(g.number).map_err(store_error)?.text,
            }),
            None => Ok(StoredConfig {
                generation: None,
                active,
                text: DEFAULT_CONFIG.to_owned(),
            }),
        }
    }

    async fn config_put(&self, text: String, comment: String) -> Result<u64, BackendError> {
        crate::load_str(&text).map_err(BackendError::Invalid)?;
        self.engine
            .store()
            .commit(&text, &comment)
            .map_err(store_error)
    }

    async fn plan(&self, generation: Option<u64>) -> Result<PlanView, BackendError> {
        let n = match generation {
            Some(n) => n,
            None => self.newest()?,
        };
        self.plan_to(n)
    }

    async fn apply(
        &self,
        generation: Option<u64>,
        confirm_secs: Option<u64>,
    ) -> Result<ApplyReport, BackendError> {
        let n = match generation {
            Some(n) => n,
            None => self.newest()?,
        };
        let plan = self.plan_to(n)?;
        let report = self
            .engine
            .apply_stored(n, confirm_secs.map(Duration::from_secs), SystemTime::now())
            .await
            .map_err(txn_error)?;
        self.refresh_accounts();
        Ok(ApplyReport {
            generation: report.active,
            plan: if report.to == report.from {
                PlanView::default()
            } else {
                plan
            },
            confirm_deadline: report.confirm_deadline_unix,
        })
    }

    async fn confirm(&self) -> Result<ApplyReport, BackendError> {
        let generation = self.engine.confirm().await.map_err(txn_error)?;
        Ok(ApplyReport {
            generation,
            plan: PlanView::default(),
            confirm_deadline: None,
        })
    }

    async fn rollback(&self, generation: Option<u64>) -> Result<ApplyReport, BackendError> {
        let report = self.engine.rollback(generation).await.map_err(txn_error)?;
        self.refresh_accounts();
        Ok(ApplyReport {
            generation: report.active,
            plan: self.plan_between(report.from, report.to),
            confirm_deadline: None,
        })
    }

    async fn history(&self) -> Result<Vec<HistoryEntry>, BackendError> {
        Ok(self
            .engine
            .history()
            .map_err(txn_error)?
            .into_iter()
            .map(HistoryEntry::from)
            .collect())
    }

    async fn status(&self) -> Result<Vec<DaemonStatus>, BackendError> {
        let s = self
            .engine
            .status(SystemTime::now())
            .await
            .map_err(txn_error)?;
        let mut out = vec![DaemonStatus {
            name: "applianced".into(),
            state: if s.pending.is_some() {
                "waiting-for-confirm".into()
            } else {
                "running".into()
            },
            generation: s.active,
            detail: json!({ "pending": s.pending }),
        }];
        for d in s.daemons {
            let running = d.get("running").and_then(Value::as_bool) == Some(true);
            out.push(DaemonStatus {
                name: d
                    .get("daemon")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned(),
                state: if running { "running" } else { "unreachable" }.into(),
                generation: d
                    .get("status")
                    .and_then(|s| s.get("generation"))
                    .and_then(Value::as_u64),
                detail: d,
            });
        }
        Ok(out)
    }

    async fn dns_stats(&self) -> Result<Value, BackendError> {
        self.dnsd
            .get_json("/stats")
            .await
            .map_err(|e| client_error("dnsd", e))
    }

    async fn dns_log(&self, query: DnsLogQuery) -> Result<Value, BackendError> {
        let mut target = format!("/log?limit={}", query.limit.unwrap_or(100));
        if let Some(c) = &query.client {
            target.push_str("&client=");
            target.push_str(&escape(c));
        }
        let mut log = self
            .dnsd
            .get_json(&target)
            .await
            .map_err(|e| client_error("dnsd", e))?;
        // dnsd filters by client and domain only; the outcome filter is applied here, so
        // fewer than `limit` records may come back.
        if let (Some(blocked), Some(records)) = (
            query.blocked,
            log.get_mut("records").and_then(Value::as_array_mut),
        ) {
            records.retain(|r| {
                (r.get("outcome").and_then(Value::as_str) == Some("blocked")) == blocked
            });
        }
        Ok(log)
    }

    async fn storage_status(&self) -> Result<Value, BackendError> {
        // stored has no control daemon in this release; when its socket appears this
        // answers with its status, until then the API says it is unavailable.
        self.stored
            .get_json("/v1/status")
            .await
            .map_err(|e| client_error("stored", e))
    }

    async fn network_status(&self) -> Result<Value, BackendError> {
        match self.engine.daemon_status("netd").await {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(BackendError::Unavailable {
                daemon: "netd".into(),
                reason: e.to_string(),
            }),
            None => Err(BackendError::Internal(
                "applianced was started without netd".into(),
            )),
        }
    }

    async fn wireguard_peer_add(
        &self,
        tunnel: String,
        peer: PeerAdd,
    ) -> Result<PeerAdded, BackendError> {
        use crate::api::wireguard::{PeerError, Request, add_peer};
        let (active, cfg) = self.active_config()?;
        let text = match active {
            Some(n) => self.engine.store().get(n).map_err(store_error)?.text,
            None => DEFAULT_CONFIG.to_owned(),
        };
        let allowed: Vec<String> = peer.address.into_iter().collect();
        // A tunnel's own private_key_file wins; else the key netd made in its key dir.
        let key_file = crate::types::IfName::parse(&tunnel)
            .ok()
            .and_then(|name| cfg.wireguard.get(&name))
            .filter(|w| w.private_key_file.is_none())
            .map(|_| self.wg_key_dir.join(format!("{tunnel}.key")));
        let request = Request {
            name: &peer.name,
            interface: &tunnel,
            allowed_ips: &allowed,
            endpoint: &peer.endpoint,
            dns: None,
            routes: &[],
            key_file,
        };
        let key = wireguard_control::Key::generate_private();
        let new = add_peer(&cfg, &request, &key).map_err(|e| match e {
            PeerError::Invalid(m) => BackendError::BadRequest(m),
            PeerError::NoTunnel(m) => BackendError::NotFound(m),
            PeerError::Exists(m) => BackendError::Conflict(m),
            // netd makes the tunnel's key when it first applies the tunnel.
            PeerError::Failed(m) => BackendError::Unavailable {
                daemon: "netd".into(),
                reason: m,
            },
        })?;
        // Appended as its own table: the admin's file keeps its layout and comments.
        let text = format!("{}\n{}", text.trim_end(), new.toml_entry);
        let comment = format!("API: WireGuard peer {} on {tunnel}", peer.name);
        let report = self
            .engine
            .apply(&text, &comment, None, SystemTime::now())
            .await
            .map_err(txn_error)?;
        Ok(PeerAdded {
            generation: report.active,
            public_key: new.public_key,
            client_config: new.client_config,
            confirm_deadline: report.confirm_deadline_unix,
        })
    }

    async fn metrics(&self) -> Result<String, BackendError> {
        let Some(gatherer) = &self.metrics else {
            return Err(BackendError::Unavailable {
                daemon: "applianced".into(),
                reason: "metrics are not set up in this applianced".into(),
            });
        };
        let own = super::http::engine_metrics(&self.engine)
            .await
            .map_err(txn_error)?;
        Ok(gatherer.gather(&own).await)
    }

    async fn update_status(&self) -> Result<Value, BackendError> {
        let device = self.device()?;
        let status = tokio::task::spawn_blocking(move || device.status())
            .await
            .map_err(|e| BackendError::Internal(format!("the update status check stopped: {e}")))?
            .map_err(update_error)?;
        let mut doc = crate::api::update::status_json(&status);
        let progress = self.progress.lock().ok().and_then(|p| p.clone());
        if let Some(o) = doc.as_object_mut() {
            o.insert(
                "installing".into(),
                progress.map_or(Value::Null, |p| {
                    json!({"chunks_done": p.chunks_done, "chunks": p.chunks, "source": p.source})
                }),
            );
        }
        Ok(doc)
    }

    async fn update_install(&self, req: UpdateInstall) -> Result<Value, BackendError> {
        let Ok(_one) = self.installing.try_lock() else {
            return Err(BackendError::Conflict(
                "an update is being installed already; wait for it to finish".into(),
            ));
        };
        let url = url::Url::parse(&req.url)
            .map_err(|e| BackendError::BadRequest(format!("{:?} is not a URL: {e}", req.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BackendError::BadRequest(format!(
                "the API installs from http(s) URLs only, not {}:",
                url.scheme()
            )));
        }
        let device = self.device()?;
        let progress = Arc::clone(&self.progress);
        let set = move |p: Option<Progress>| {
            if let Ok(mut slot) = progress.lock() {
                *slot = p;
            }
        };
        // Logged and shown without credentials or query (a signed URL's token).
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_query(None);
        let source_name = shown.to_string();
        let result = tokio::task::spawn_blocking(move || {
            let mut source = image::install::source::open(url.as_str());
            let r = device.install(source.as_mut(), |done, total| {
                set(Some(Progress {
                    chunks_done: done,
                    chunks: total,
                    source: source_name.clone(),
                }));
            });
            set(None);
            r
        })
        .await
        .map_err(|e| BackendError::Internal(format!("the install stopped: {e}")))?;
        let report = result.map_err(update_error)?;
        tracing::info!(version = %report.version, slot = %report.slot, "update installed over the API");
        Ok(crate::api::update::report_json(&report))
    }
}
