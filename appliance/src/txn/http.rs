//! applianced's control socket: the engine's operations as control-protocol endpoints.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/status` | active generation, pending change, every daemon's status |
//! | `GET /v1/status/{daemon}` | that daemon's own status document (netd: links, addresses, leases, WireGuard peers, rule counters) |
//! | `GET /v1/history` | the stored generations |
//! | `POST /v1/apply {"config", "comment"?, "confirm_seconds"?}` | the transaction's report |
//! | `POST /v1/confirm` | `{"confirmed": N}` |
//! | `POST /v1/rollback {"generation"?}` | the revert's report |
//! | `GET /metrics` | Prometheus text: applianced's, every daemon's and the node's |

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::Method;
use serde::Deserialize;
use serde_json::json;

use super::{Engine, TxnError};
use crate::control::{ApiError, Reply, Request};
use crate::metrics::Gatherer;
use crate::store::StoreError;

/// applianced's socket unless told otherwise; root only (mode 0600).
pub const DEFAULT_SOCKET: &str = "/run/appliance/applianced.sock";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// The whole appliance.toml.
    pub config: String,
    #[serde(default)]
    pub comment: Option<String>,
    /// The confirm window; absent: 120 s when the change needs one, none otherwise.
    #[serde(default)]
    pub confirm_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    #[serde(default)]
    generation: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

impl From<TxnError> for ApiError {
    fn from(e: TxnError) -> Self {
        match e {
            TxnError::Invalid(_) | TxnError::Store(StoreError::NotFound(_)) => {
                ApiError::Invalid(e.to_string())
            }
            TxnError::Pending { .. } | TxnError::NothingPending => {
                ApiError::Conflict(e.to_string())
            }
            TxnError::BadRequest(_) => ApiError::BadRequest(e.to_string()),
            TxnError::Failed { ref report, .. } => ApiError::Report {
                message: e.to_string(),
                report: serde_json::to_value(report).unwrap_or_default(),
            },
            TxnError::Store(_) | TxnError::State(_) => ApiError::Internal(e.to_string()),
        }
    }
}

fn json_of<T: serde::Serialize>(v: &T) -> Result<Reply, ApiError> {
    serde_json::to_value(v)
        .map(Reply::Json)
        .map_err(|e| ApiError::Internal(format!("encoding the answer: {e}")))
}

/// applianced's own metrics: the active generation and the confirm countdown.
pub async fn engine_metrics(engine: &Engine) -> Result<String, TxnError> {
    let s = engine.status(SystemTime::now()).await?;
    let mut out = String::new();
    out.push_str("# HELP applianced_active_generation The active config generation.\n");
    out.push_str("# TYPE applianced_active_generation gauge\n");
    out.push_str(&format!(
        "applianced_active_generation {}\n",
        s.active.unwrap_or(0)
    ));
    out.push_str("# HELP applianced_pending_confirm_seconds Seconds left to confirm the pending change (0: none).\n");
    out.push_str("# TYPE applianced_pending_confirm_seconds gauge\n");
    out.push_str(&format!(
        "applianced_pending_confirm_seconds {}\n",
        s.pending.map_or(0, |p| p.seconds_left)
    ));
    out.push_str(&crate::loki::global_metrics());
    Ok(out)
}

/// Answers one request on applianced's socket; `/metrics` gathers the daemons' and the
/// node's with `metrics`.
pub async fn route(
    engine: Arc<Engine>,
    metrics: Arc<Gatherer>,
    req: Request,
) -> Result<Reply, ApiError> {
    let now = SystemTime::now();
    match req.path.as_str() {
        "/v1/status" => {
            req.only(&Method::GET)?;
            json_of(&engine.status(now).await?)
        }
        path if path.starts_with("/v1/status/") => {
            req.only(&Method::GET)?;
            let name = path.trim_start_matches("/v1/status/");
            match engine.daemon_status(name).await {
                Some(Ok(v)) => Ok(Reply::Json(v)),
                Some(Err(e)) => Err(ApiError::Internal(format!(
                    "{name} does not answer: {e}; check `systemctl status {name}`"
                ))),
                None => Err(ApiError::NotFound(format!(
                    "{path}: applianced drives no daemon called {name:?} (netd, dnsd, stored)"
                ))),
            }
        }
        "/v1/history" => {
            req.only(&Method::GET)?;
            Ok(Reply::Json(json!({ "generations": engine.history()? })))
        }
        "/v1/apply" => {
            req.only(&Method::POST)?;
            let a: ApplyRequest = req.json()?;
            let comment = a
                .comment
                .unwrap_or_else(|| "applied through applianced".into());
            let confirm = a.confirm_seconds.map(Duration::from_secs);
            json_of(&engine.apply(&a.config, &comment, confirm, now).await?)
        }
        "/v1/confirm" => {
            req.only(&Method::POST)?;
            let _: Empty = req.json()?;
            Ok(Reply::Json(json!({ "confirmed": engine.confirm().await? })))
        }
        "/v1/rollback" => {
            req.only(&Method::POST)?;
            let r: RollbackRequest = req.json()?;
            json_of(&engine.rollback(r.generation).await?)
        }
        "/metrics" => {
            req.only(&Method::GET)?;
            let own = engine_metrics(&engine).await?;
            Ok(Reply::Metrics(metrics.gather(&own).await))
        }
        other => Err(ApiError::NotFound(other.to_owned())),
    }
}
