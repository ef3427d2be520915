//! What the API asks of the control plane. applianced implements [`Backend`] over its
//! transaction engine and the daemons' control sockets; the handlers only check
//! permissions, validate input, audit and translate errors.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::Diagnostics;

/// A failure of the control plane, each kind with its own HTTP status (see `ApiError`).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The config has mistakes (422).
    #[error("the config has {} mistake(s); fix them and send it again", .0.0.len())]
    Invalid(Diagnostics),
    /// A generation, tunnel or other named thing does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state, like confirm without a pending
    /// change or an apply while another runs (409).
    #[error("{0}")]
    Conflict(String),
    /// A daemon does not answer (503).
    #[error("{daemon} does not answer: {reason}; check `systemctl status {daemon}`")]
    Unavailable { daemon: String, reason: String },
    /// Applying failed on a daemon; every daemon was returned to the previous generation
    /// (502).
    #[error("applying failed at {step}: {reason}; every daemon is back on generation {restored}")]
    ApplyFailed {
        step: String,
        reason: String,
        restored: u64,
    },
    /// The request was refused as malformed by the control plane (400).
    #[error("{0}")]
    BadRequest(String),
    /// The config store or another local resource failed (500).
    #[error("{0}")]
    Internal(String),
}

/// The stored config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoredConfig {
    /// The generation the text is, None before the first one is stored.
    pub generation: Option<u64>,
    /// The generation running on the daemons, when it differs.
    pub active: Option<u64>,
    /// appliance.toml.
    pub text: String,
}

/// One stored generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    pub generation: u64,
    /// RFC 3339, UTC.
    pub created: String,
    pub comment: String,
    /// Whether the daemons run this generation.
    pub active: bool,
}

impl From<crate::store::GenerationInfo> for HistoryEntry {
    fn from(g: crate::store::GenerationInfo) -> Self {
        Self {
            generation: g.number,
            created: g.created,
            comment: g.comment,
            active: g.active,
        }
    }
}

/// One change a plan makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChangeView {
    /// The top-level section, like `vlans`.
    pub section: String,
    /// The key path, like `vlans.iot.id`.
    pub path: String,
    /// add, remove or change.
    pub op: String,
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

/// What applying a config changes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct PlanView {
    pub changes: Vec<ChangeView>,
    /// Daemons that act, in apply order.
    pub daemons: Vec<String>,
    /// Whether applying waits for a confirmation and reverts without one.
    pub needs_confirm: bool,
}

impl From<&crate::plan::Plan> for PlanView {
    fn from(p: &crate::plan::Plan) -> Self {
        Self {
            changes: p
                .changes
                .iter()
                .map(|c| ChangeView {
                    section: c.section.clone(),
                    path: c.path.to_string(),
                    op: match c.op {
                        crate::plan::Op::Add => "add",
                        crate::plan::Op::Remove => "remove",
                        crate::plan::Op::Change => "change",
                    }
                    .into(),
                    old: c.old.clone(),
                    new: c.new.clone(),
                })
                .collect(),
            daemons: p.daemons.iter().map(|d| (*d).to_owned()).collect(),
            needs_confirm: p.needs_confirm,
        }
    }
}

/// The outcome of apply, confirm or rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApplyReport {
    /// The generation the daemons run now.
    pub generation: u64,
    /// What changed (key paths; values as in the plan).
    pub plan: PlanView,
    /// Unix time at which the change reverts unless confirmed; None when nothing waits.
    pub confirm_deadline: Option<u64>,
}

/// A daemon's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DaemonStatus {
    /// netd, dnsd, stored or applianced.
    pub name: String,
    /// `running`, `failed`, `unreachable`, ...
    pub state: String,
    /// The generation it runs.
    pub generation: Option<u64>,
    /// The daemon's own status document.
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// Filters of the DNS query log.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct DnsLogQuery {
    /// At most this many entries, newest first (default 100).
    pub limit: Option<u32>,
    /// Only queries from this client address.
    pub client: Option<String>,
    /// Only blocked (true) or only answered (false) queries.
    pub blocked: Option<bool>,
}

/// A new WireGuard peer whose keys the appliance makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerAdd {
    /// Name of the peer in the config, like `phone`.
    pub name: String,
    /// Address of the peer inside the tunnel, like `10.8.0.7/32`; the next free one of the
    /// tunnel's subnet when absent.
    pub address: Option<String>,
    /// How the peer reaches the appliance, `host[:port]` (port: the tunnel's listen_port),
    /// like `vpn.example.net`.
    pub endpoint: String,
}

/// The peer as added, and the config file for its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerAdded {
    pub generation: u64,
    pub public_key: String,
    /// wg-quick config for the client, private key included: shown once.
    pub client_config: String,
    /// Unix time at which the new generation reverts unless confirmed (WireGuard changes
    /// wait for a confirm); None when nothing waits.
    pub confirm_deadline: Option<u64>,
}

/// Where to get an update bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInstall {
    /// http(s) URL of a signed bundle.
    pub url: String,
}

/// The control plane, as the API sees it. Object-safe: the server holds an
/// `Arc<dyn Backend>`.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// The newest stored generation (which may not be active yet).
    async fn config_get(&self) -> Result<StoredConfig, BackendError>;
    /// Stores a validated config as the next generation; returns its number.
    async fn config_put(&self, text: String, comment: String) -> Result<u64, BackendError>;
    /// What applying `generation` (None: the newest) would change on the daemons.
    async fn plan(&self, generation: Option<u64>) -> Result<PlanView, BackendError>;
    /// Applies `generation` (None: the newest) as one transaction. With `confirm_secs`
    /// (or when the change needs one) it reverts unless confirmed in time.
    async fn apply(
        &self,
        generation: Option<u64>,
        confirm_secs: Option<u64>,
    ) -> Result<ApplyReport, BackendError>;
    /// Keeps the change that waits for confirmation.
    async fn confirm(&self) -> Result<ApplyReport, BackendError>;
    /// Returns to `generation` (None: the one before the active one).
    async fn rollback(&self, generation: Option<u64>) -> Result<ApplyReport, BackendError>;
    async fn history(&self) -> Result<Vec<HistoryEntry>, BackendError>;
    async fn status(&self) -> Result<Vec<DaemonStatus>, BackendError>;
    async fn dns_stats(&self) -> Result<Value, BackendError>;
    async fn dns_log(&self, query: DnsLogQuery) -> Result<Value, BackendError>;
    async fn storage_status(&self) -> Result<Value, BackendError>;
    /// netd's status document: links with addresses and byte counters, DHCP leases,
    /// WireGuard peers (last handshake, bytes) and firewall rule counters.
    async fn network_status(&self) -> Result<Value, BackendError> {
        Err(BackendError::Unavailable {
            daemon: "netd".into(),
            reason: "this backend does not reach netd".into(),
        })
    }
    /// Adds a peer to `tunnel` as a new generation, applied; returns the client config.
    async fn wireguard_peer_add(
        &self,
        tunnel: String,
        peer: PeerAdd,
    ) -> Result<PeerAdded, BackendError>;
    async fn update_status(&self) -> Result<Value, BackendError>;
    async fn update_install(&self, req: UpdateInstall) -> Result<Value, BackendError>;
    /// Prometheus text: the control plane's, every daemon's and the node's metrics.
    async fn metrics(&self) -> Result<String, BackendError> {
        Err(BackendError::Unavailable {
            daemon: "applianced".into(),
            reason: "this backend gathers no metrics".into(),
        })
    }
}
