//! The endpoints. Each checks the caller's role first, then validates, calls the backend,
//! and writes the audit log for changes.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::backend::{
    ApplyReport, DaemonStatus, DnsLogQuery, HistoryEntry, PeerAdd, PeerAdded, PlanView,
    UpdateInstall,
};
use super::error::{ApiError, ErrorBody};
use super::{AppState, ClientAddr};
use crate::accounts::{AuthError, Principal, TokenInfo, audit};
use crate::model::Role;

type ApiResult<T> = Result<Json<T>, ApiError>;

fn body<T>(json: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    json.map(|Json(t)| t).map_err(|e| {
        ApiError::BadRequest(format!(
            "the request body is not accepted: {}",
            e.body_text()
        ))
    })
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| {
        ApiError::BadRequest(format!(
            "the query string is not accepted: {}",
            e.body_text()
        ))
    })
}

/// Any logged-in caller; the bearer is kept for logout.
#[derive(Debug)]
pub struct Authed {
    pub principal: Principal,
    bearer: String,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::InvalidToken)?;
        let bearer = value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .ok_or(AuthError::Missing)?;
        let principal = state.accounts.authenticate(bearer)?;
        Ok(Self {
            principal,
            bearer: bearer.to_owned(),
        })
    }
}

/// A caller with the admin role (403 for viewers).
#[derive(Debug)]
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let authed = Authed::from_request_parts(parts, state).await?;
        authed.principal.require_admin()?;
        Ok(Self(authed.principal))
    }
}

/// A role, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    Admin,
    Viewer,
}

impl From<Role> for RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Admin => Self::Admin,
            Role::Viewer => Self::Viewer,
        }
    }
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Admin => Self::Admin,
            RoleName::Viewer => Self::Viewer,
        }
    }
}

/// A login.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    /// The current 6-digit code, for accounts with a TOTP secret.
    pub totp: Option<String>,
}

// Hand-written so that a request logged by mistake shows no secret.
impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    pub role: RoleName,
    /// Unix time at which the session ends.
    pub expires: u64,
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "wrong user or password, or TOTP code missing or wrong", body = ErrorBody),
        (status = 429, description = "too many failures; see Retry-After", body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    req: Result<Json<LoginRequest>, JsonRejection>,
) -> ApiResult<LoginResponse> {
    let req = body(req)?;
    let accounts = state.accounts.clone();
    // argon2 takes tens of milliseconds of CPU: off the executor.
    let session = tokio::task::spawn_blocking(move || {
        accounts.login(client.ip(), &req.user, &req.password, req.totp.as_deref())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the login check stopped: {e}")))??;
    Ok(Json(LoginResponse {
        token: session.token,
        role: session.role.into(),
        expires: session.expires,
    }))
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "the session ended"), (status = 401, body = ErrorBody)))]
pub async fn logout(State(state): State<AppState>, authed: Authed) -> StatusCode {
    state.accounts.logout(&authed.bearer);
    StatusCode::NO_CONTENT
}

/// A new API token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// 1 to 64 of A-Z a-z 0-9 - _ .
    pub name: String,
    /// The token's role; it never exceeds its creator's current role.
    pub role: RoleName,
    /// Lifetime in seconds (at most a year).
    pub expires_in: u64,
}

/// An API token, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub name: String,
    /// The admin who made it; the token acts as this user.
    pub user: String,
    pub role: RoleName,
    /// Unix time.
    pub created: u64,
    /// Unix time.
    pub expires: u64,
}

impl From<TokenInfo> for TokenView {
    fn from(t: TokenInfo) -> Self {
        Self {
            name: t.name,
            user: t.user,
            role: t.role.into(),
            created: t.created,
            expires: t.expires,
        }
    }
}

/// A token as created: the secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenView,
}

#[utoipa::path(post, path = "/api/v1/auth/tokens", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = TokenCreated), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn token_create(
    State(state): State<AppState>,
    Admin(by): Admin,
    req: Result<Json<TokenRequest>, JsonRejection>,
) -> ApiResult<TokenCreated> {
    let req = body(req)?;
    let (token, info) =
        state
            .accounts
            .create_token(&by, &req.name, req.role.into(), req.expires_in)?;
    let _ = state.accounts.audit(
        &by,
        "token.create",
        None,
        vec![format!("+ token {} ({:?})", info.name, info.role)],
    );
    Ok(Json(TokenCreated {
        token,
        info: info.into(),
    }))
}

#[utoipa::path(get, path = "/api/v1/auth/tokens", tag = "auth",
    responses((status = 200, body = Vec<TokenView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn token_list(
    State(state): State<AppState>,
    Admin(_): Admin,
) -> ApiResult<Vec<TokenView>> {
    Ok(Json(
        state
            .accounts
            .tokens()
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/auth/tokens/{name}", tag = "auth",
    params(("name" = String, Path, description = "the token's name")),
    responses((status = 204, description = "revoked"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn token_delete(
    State(state): State<AppState>,
    Admin(by): Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.accounts.delete_token(&by, &name)?;
    let _ = state
        .accounts
        .audit(&by, "token.delete", None, vec![format!("- token {name}")]);
    Ok(StatusCode::NO_CONTENT)
}

/// The stored config.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfigView {
    pub generation: Option<u64>,
    pub active: Option<u64>,
    /// appliance.toml as stored (admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The config as JSON, normalized; for viewers password hashes and secret file paths
    /// read `<redacted>`.
    #[schema(value_type = Object)]
    pub config: Value,
}

/// Keys whose values viewers do not see.
const REDACTED_KEYS: [&str; 6] = [
    "password_hash",
    "totp_secret_file",
    "private_key_file",
    "preshared_key_file",
    "smb_password_file",
    "identity_file",
];

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if REDACTED_KEYS.contains(&k.as_str()) {
                    *v = Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn parse_stored(text: &str) -> Result<crate::Config, ApiError> {
    crate::load_str(text).map_err(|d| ApiError::StoredConfig(format!("{} mistake(s)", d.0.len())))
}

#[utoipa::path(get, path = "/api/v1/config", tag = "config",
    responses((status = 200, body = ConfigView), (status = 401, body = ErrorBody)))]
pub async fn config_get(State(state): State<AppState>, authed: Authed) -> ApiResult<ConfigView> {
    let stored = state.backend.config_get().await?;
    let config = parse_stored(&stored.text)?;
    let mut json =
        serde_json::to_value(&config).map_err(|e| ApiError::StoredConfig(e.to_string()))?;
    let admin = authed.principal.role == Role::Admin;
    if !admin {
        redact(&mut json);
    }
    Ok(Json(ConfigView {
        generation: stored.generation,
        active: stored.active,
        text: admin.then_some(stored.text),
        config: json,
    }))
}

/// A new config.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigPut {
    /// The whole appliance.toml.
    pub text: String,
    /// Kept with the generation in the history.
    #[serde(default)]
    pub comment: String,
}

/// A stored generation and what it changes against the one before.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PutResult {
    pub generation: u64,
    pub plan: PlanView,
}

#[utoipa::path(put, path = "/api/v1/config", tag = "config", request_body = ConfigPut,
    responses((status = 200, description = "stored as the next generation, not applied", body = PutResult),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, description = "the config has mistakes, listed in details", body = ErrorBody)))]
pub async fn config_put(
    State(state): State<AppState>,
    Admin(by): Admin,
    req: Result<Json<ConfigPut>, JsonRejection>,
) -> ApiResult<PutResult> {
    let req = body(req)?;
    let new = crate::load_str(&req.text).map_err(ApiError::InvalidConfig)?;
    let current = state.backend.config_get().await?;
    let old = match current.generation {
        Some(_) => Some(parse_stored(&current.text)?),
        None => None,
    };
    let plan = crate::plan::diff(old.as_ref(), &new);
    let generation = state.backend.config_put(req.text, req.comment).await?;
    let _ = state
        .accounts
        .audit(&by, "config.put", Some(generation), audit::summarize(&plan));
    Ok(Json(PutResult {
        generation,
        plan: PlanView::from(&plan),
    }))
}

/// Which generation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GenerationQuery {
    /// A generation number; the newest when absent.
    pub generation: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/config/plan", tag = "config", params(GenerationQuery),
    responses((status = 200, body = PlanView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn config_plan(
    State(state): State<AppState>,
    Admin(_): Admin,
    q: Result<Query<GenerationQuery>, QueryRejection>,
) -> ApiResult<PlanView> {
    let q = query(q)?;
    Ok(Json(state.backend.plan(q.generation).await?))
}

/// What to apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// The generation to apply; the newest when absent.
    pub generation: Option<u64>,
    /// Revert unless confirmed within this many seconds. Changes that could cut the
    /// admin off get a window even without it.
    pub confirm_seconds: Option<u64>,
}

fn audit_report(state: &AppState, by: &Principal, action: &str, report: &ApplyReport) {
    let summary = report
        .plan
        .changes
        .iter()
        .map(|c| {
            let sign = match c.op.as_str() {
                "add" => '+',
                "remove" => '-',
                _ => '~',
            };
            format!("{sign} {}", c.path)
        })
        .collect();
    let _ = state
        .accounts
        .audit(by, action, Some(report.generation), summary);
}

#[utoipa::path(post, path = "/api/v1/config/apply", tag = "config", request_body = ApplyRequest,
    responses((status = 200, body = ApplyReport), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, description = "a daemon failed; all were returned to the previous generation", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn config_apply(
    State(state): State<AppState>,
    Admin(by): Admin,
    req: Result<Json<ApplyRequest>, JsonRejection>,
) -> ApiResult<ApplyReport> {
    let req = body(req)?;
    let report = state
        .backend
        .apply(req.generation, req.confirm_seconds)
        .await?;
    audit_report(&state, &by, "config.apply", &report);
    Ok(Json(report))
}

#[utoipa::path(post, path = "/api/v1/config/confirm", tag = "config",
    responses((status = 200, body = ApplyReport), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, description = "nothing waits for confirmation", body = ErrorBody)))]
pub async fn config_confirm(
    State(state): State<AppState>,
    Admin(by): Admin,
) -> ApiResult<ApplyReport> {
    let report = state.backend.confirm().await?;
    audit_report(&state, &by, "config.confirm", &report);
    Ok(Json(report))
}

/// Where to roll back to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The generation to return to; the one before the active one when absent.
    pub generation: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/config/rollback", tag = "config", request_body = RollbackRequest,
    responses((status = 200, body = ApplyReport), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn config_rollback(
    State(state): State<AppState>,
    Admin(by): Admin,
    req: Result<Json<RollbackRequest>, JsonRejection>,
) -> ApiResult<ApplyReport> {
    let req = body(req)?;
    let report = state.backend.rollback(req.generation).await?;
    audit_report(&state, &by, "config.rollback", &report);
    Ok(Json(report))
}

#[utoipa::path(get, path = "/api/v1/config/history", tag = "config",
    responses((status = 200, body = Vec<HistoryEntry>), (status = 401, body = ErrorBody)))]
pub async fn config_history(
    State(state): State<AppState>,
    _a: Authed,
) -> ApiResult<Vec<HistoryEntry>> {
    Ok(Json(state.backend.history().await?))
}

#[utoipa::path(get, path = "/api/v1/status", tag = "status",
    responses((status = 200, body = Vec<DaemonStatus>), (status = 401, body = ErrorBody)))]
pub async fn status(State(state): State<AppState>, _a: Authed) -> ApiResult<Vec<DaemonStatus>> {
    Ok(Json(state.backend.status().await?))
}

#[utoipa::path(get, path = "/api/v1/dns/stats", tag = "dns",
    responses((status = 200, description = "dnsd's statistics", body = Object),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn dns_stats(State(state): State<AppState>, _a: Authed) -> ApiResult<Value> {
    Ok(Json(state.backend.dns_stats().await?))
}

#[utoipa::path(get, path = "/api/v1/dns/log", tag = "dns", params(DnsLogQuery),
    responses((status = 200, description = "dnsd's query log, newest first", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn dns_log(
    State(state): State<AppState>,
    _a: Authed,
    q: Result<Query<DnsLogQuery>, QueryRejection>,
) -> ApiResult<Value> {
    let q = query(q)?;
    Ok(Json(state.backend.dns_log(q).await?))
}

#[utoipa::path(get, path = "/api/v1/storage/status", tag = "storage",
    responses((status = 200, description = "stored's pools, datasets and shares", body = Object),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn storage_status(State(state): State<AppState>, _a: Authed) -> ApiResult<Value> {
    Ok(Json(state.backend.storage_status().await?))
}

#[utoipa::path(get, path = "/api/v1/network/status", tag = "network",
    responses((status = 200, description = "netd's status document: `links` (state, MTU, MAC, addresses, byte counters), `dhcp.leases`, `wireguard.interfaces[].peers` (last handshake, bytes), `firewall_rules` (packets, bytes), `generation`, `last_error`", body = Object),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn network_status(State(state): State<AppState>, _a: Authed) -> ApiResult<Value> {
    Ok(Json(state.backend.network_status().await?))
}

#[utoipa::path(post, path = "/api/v1/wireguard/{tunnel}/peers", tag = "wireguard",
    params(("tunnel" = String, Path, description = "the tunnel's name in [wireguard]")),
    request_body = PeerAdd,
    responses((status = 200, description = "added and applied; the client config holds the peer's private key", body = PeerAdded),
        (status = 400, description = "a bad name, address or endpoint", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "no such tunnel", body = ErrorBody),
        (status = 409, description = "the name is taken, or a change waits for a confirm", body = ErrorBody),
        (status = 502, description = "a daemon failed; all were returned to the previous generation", body = ErrorBody),
        (status = 503, description = "the tunnel's key does not exist yet (netd makes it)", body = ErrorBody)))]
pub async fn wireguard_peer_add(
    State(state): State<AppState>,
    Admin(by): Admin,
    Path(tunnel): Path<String>,
    req: Result<Json<PeerAdd>, JsonRejection>,
) -> ApiResult<PeerAdded> {
    let req = body(req)?;
    let summary = vec![format!("+ wireguard.{tunnel}.peers.{}", req.name)];
    let added = state.backend.wireguard_peer_add(tunnel, req).await?;
    let _ = state
        .accounts
        .audit(&by, "wireguard.peer_add", Some(added.generation), summary);
    Ok(Json(added))
}

#[utoipa::path(get, path = "/api/v1/update/status", tag = "update",
    responses((status = 200, description = "slots, versions and the update in progress", body = Object),
        (status = 401, body = ErrorBody),
        (status = 500, description = "the boot state or the release cannot be read", body = ErrorBody)))]
pub async fn update_status(State(state): State<AppState>, _a: Authed) -> ApiResult<Value> {
    Ok(Json(state.backend.update_status().await?))
}

#[utoipa::path(post, path = "/api/v1/update/install", tag = "update", request_body = UpdateInstall,
    responses((status = 200, description = "installed to the other slot; reboot to try it", body = Object),
        (status = 400, description = "not a URL, or the bundle is refused (untrusted, a downgrade, not for this device)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "another install runs", body = ErrorBody),
        (status = 500, body = ErrorBody)))]
pub async fn update_install(
    State(state): State<AppState>,
    Admin(by): Admin,
    req: Result<Json<UpdateInstall>, JsonRejection>,
) -> ApiResult<Value> {
    let req = body(req)?;
    // A URL may carry credentials; the log keeps only where the bundle came from.
    let source = url::Url::parse(&req.url).map_or_else(
        |_| "an unparsable URL".to_owned(),
        |mut u| {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        },
    );
    let summary = vec![format!("update from {source}")];
    let result = state.backend.update_install(req).await?;
    let _ = state.accounts.audit(&by, "update.install", None, summary);
    Ok(Json(result))
}

#[utoipa::path(get, path = "/api/v1/metrics", tag = "status",
    responses((status = 200, description = "Prometheus text format: applianced's, netd's, dnsd's and stored's metrics, `appliance_daemon_up` per daemon, and the node's (CPU, memory, load, disks, /data, network, temperatures). Also served at `/metrics`.", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, body = ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    _a: Authed,
) -> Result<([(header::HeaderName, &'static str); 1], String), ApiError> {
    let text = state.backend.metrics().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
