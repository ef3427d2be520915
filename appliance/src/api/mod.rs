//! The management API: JSON over HTTPS under `/api/v1`, for applianced to serve.
//!
//! applianced builds an [`AppState`] from its [`Backend`] and the [`Accounts`], loads or
//! makes the certificate with [`tls::load_or_create`], binds the LAN-side listeners and
//! calls [`serve`]. Every endpoint but login and the OpenAPI document needs
//! `Authorization: Bearer <session or API token>`; changes need the admin role. The OpenAPI
//! document is generated from the handlers ([`openapi_json`]) and committed as
//! `appliance/openapi.json`; `cargo xtask schema` regenerates it.

pub mod backend;
pub mod error;
pub mod handlers;
pub mod listen;
pub mod tls;
pub mod update;
pub mod wireguard;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::routing::{delete, get, post};
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use utoipa::OpenApi as _;

pub use backend::{Backend, BackendError};
pub use error::ApiError;

use crate::accounts::Accounts;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub accounts: Arc<Accounts>,
}

/// The address of the client at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    use handlers as h;
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_handler))
        .route("/api/v1/auth/login", post(h::login))
        .route("/api/v1/auth/logout", post(h::logout))
        .route(
            "/api/v1/auth/tokens",
            post(h::token_create).get(h::token_list),
        )
        .route("/api/v1/auth/tokens/{name}", delete(h::token_delete))
        .route("/api/v1/config", get(h::config_get).put(h::config_put))
        .route("/api/v1/config/plan", post(h::config_plan))
        .route("/api/v1/config/apply", post(h::config_apply))
        .route("/api/v1/config/confirm", post(h::config_confirm))
        .route("/api/v1/config/rollback", post(h::config_rollback))
        .route("/api/v1/config/history", get(h::config_history))
        .route("/api/v1/status", get(h::status))
        .route("/api/v1/dns/stats", get(h::dns_stats))
        .route("/api/v1/dns/log", get(h::dns_log))
        .route("/api/v1/storage/status", get(h::storage_status))
        .route("/api/v1/network/status", get(h::network_status))
        .route(
            "/api/v1/wireguard/{tunnel}/peers",
            post(h::wireguard_peer_add),
        )
        .route("/api/v1/update/status", get(h::update_status))
        .route("/api/v1/update/install", post(h::update_install))
        .route("/api/v1/metrics", get(h::metrics))
        // Where Prometheus looks by default (with `authorization: {credentials: <token>}`).
        .route("/metrics", get(h::metrics))
        .with_state(state)
}

async fn openapi_handler() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a session token from /api/v1/auth/login or an API token (appl_...)",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "appliance management API",
        version = "1",
        description = "Configuration transactions, status, DNS, storage, WireGuard and updates of the appliance. See docs/api.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        handlers::login, handlers::logout, handlers::token_create, handlers::token_list,
        handlers::token_delete, handlers::config_get, handlers::config_put, handlers::config_plan,
        handlers::config_apply, handlers::config_confirm, handlers::config_rollback,
        handlers::config_history, handlers::status, handlers::dns_stats, handlers::dns_log,
        handlers::storage_status, handlers::network_status, handlers::wireguard_peer_add, handlers::update_status,
        handlers::update_install, handlers::metrics
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The OpenAPI 3.1 document of the API, as committed in `appliance/openapi.json`.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    // Generated from the code, so the crate's version would only add churn.
    doc.info.version = "1".into();
    let mut text = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// The longest a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS connections from one or more TCP listeners, handshaken concurrently so that a slow
/// client holds up nobody else.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl TlsListener {
    /// Accepts on every listener (at least one) with `config`.
    pub fn new(
        listeners: Vec<TcpListener>,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let local = listeners
            .first()
            .ok_or_else(|| std::io::Error::other("the API has no address to listen on"))?
            .local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tasks = listeners
            .into_iter()
            .map(|listener| {
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(accept_loop(listener, acceptor, tx))
            })
            .collect();
        Ok(Self { rx, local, tasks })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (conn_tx, acceptor) = (tx.clone(), acceptor.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = conn_tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
        if tx.is_closed() {
            return;
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(pair) => pair,
            // Every accept task is gone (only when the listener is being dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves the API over TLS on `listeners` until `shutdown` completes.
pub async fn serve(
    listeners: Vec<TcpListener>,
    config: Arc<rustls::ServerConfig>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TlsListener::new(listeners, config)?;
    tracing::info!(addr = %listener.local, "API listening");
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<ClientAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
