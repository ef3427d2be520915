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

/// The engine plus the sockets of the daemons the API reads directly.
#[derive(Debug)]
pub struct EngineBackend {
    engine: Arc<Engine>,
    accounts: Arc<Accounts>,
    dnsd: ControlClient,
    stored: ControlClient,
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
        }
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

    async fn wireguard_peer_add(
        &self,
        _tunnel: String,
        _peer: PeerAdd,
    ) -> Result<PeerAdded, BackendError> {
        Err(BackendError::Unavailable {
            daemon: "applianced".into(),
            reason: "adding WireGuard peers over the API is not wired yet; run \
                     `applctl wg add-peer` on the appliance"
                .into(),
        })
    }

    async fn update_status(&self) -> Result<Value, BackendError> {
        Err(BackendError::Unavailable {
            daemon: "applianced".into(),
            reason: "update status over the API is not wired yet; run `applctl update status` \
                     on the appliance"
                .into(),
        })
    }

    async fn update_install(&self, _req: UpdateInstall) -> Result<Value, BackendError> {
        Err(BackendError::Unavailable {
            daemon: "applianced".into(),
            reason: "installing updates over the API is not wired yet; run `applctl update` \
                     on the appliance"
                .into(),
        })
    }
}
