//! Serving a control socket: one router function, JSON in and out.

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// Request bodies are small JSON objects; a config file is the largest (a few KiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// The content type of Prometheus' text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why a control request failed. Each variant has one status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: 400.
    #[error("{0}")]
    BadRequest(String),
    /// 413.
    #[error("the body is larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    /// 404.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// 405.
    #[error("{method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allowed: &'static str,
    },
    /// The request fits, but not the daemon's state now (a change waits for a confirm): 409.
    #[error("{0}")]
    Conflict(String),
    /// The config or generation asked for is invalid or absent; nothing changed: 422.
    #[error("{0}")]
    Invalid(String),
    /// Applying failed at `step`; the daemon undid its own partial steps: 500 with both.
    #[error("{step} failed: {reason}")]
    ApplyFailed { step: String, reason: String },
    /// A transaction failed; `report` says what ran and what was reverted: 500.
    #[error("{message}")]
    Report { message: String, report: Value },
    /// 500.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::ApplyFailed { .. } | Self::Report { .. } | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// `{"error": ...}` plus `step` and `reason`, or `report`, where the variant has them.
    pub fn body(&self) -> Value {
        match self {
            Self::ApplyFailed { step, reason } => {
                json!({ "error": self.to_string(), "step": step, "reason": reason })
            }
            Self::Report { message, report } => json!({ "error": message, "report": report }),
            _ => json!({ "error": self.to_string() }),
        }
    }
}

/// A request as a router sees it: the body is already read (within [`MAX_BODY`]).
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub body: Bytes,
}

impl Request {
    /// Refuses the request unless it uses `allowed`.
    pub fn only(&self, allowed: &'static Method) -> Result<(), ApiError> {
        if self.method == *allowed {
            Ok(())
        } else {
            Err(ApiError::MethodNotAllowed {
                method: self.method.clone(),
                path: self.path.clone(),
                allowed: allowed.as_str(),
            })
        }
    }

    /// The body as `T`; an empty body reads as `{}`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let bytes: &[u8] = if self.body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.body
        };
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::BadRequest(format!("the body does not fit {}: {e}", self.path)))
    }
}

/// A successful answer.
#[derive(Debug)]
pub enum Reply {
    Json(Value),
    /// Prometheus text format.
    Metrics(String),
}

/// Why a control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("control socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {}: another process is serving on it; stop it first", .0.display())]
    InUse(PathBuf),
}

/// Binds `path` with `mode`, making its directory if missing. A stale socket file (no
/// one answering) is replaced; a live one is an error, so two daemons never share one.
pub async fn bind(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    let io = |source| ServeError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    // Set before the first accept, so nobody outside the mode ever gets in.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "control socket listening");
    Ok(listener)
}

/// Binds `path` (see [`bind`]) and answers every request with `router` until the returned
/// task is aborted.
pub async fn serve<R, F>(path: &Path, mode: u32, router: R) -> Result<JoinHandle<()>, ServeError>
where
    R: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Reply, ApiError>> + Send + 'static,
{
    let listener = bind(path, mode).await?;
    Ok(tokio::spawn(serve_listener(listener, router)))
}

/// Answers every connection on `listener` with `router`.
pub async fn serve_listener<R, F>(listener: UnixListener, router: R)
where
    R: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Reply, ApiError>> + Send + 'static,
{
    let router = Arc::new(router);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, usually: wait rather than spin.
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = Arc::clone(&router);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let router = Arc::clone(&router);
                async move { Ok::<_, Infallible>(handle(router.as_ref(), req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        });
    }
}

async fn handle<R, F>(
    router: &R,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>>
where
    R: Fn(Request) -> F,
    F: Future<Output = Result<Reply, ApiError>>,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let result = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            router(Request {
                method: parts.method.clone(),
                path: path.clone(),
                query: parts.uri.query().map(str::to_owned),
                body: collected.to_bytes(),
            })
            .await
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge),
        Err(e) => Err(ApiError::BadRequest(format!("reading the body: {e}"))),
    };
    match result {
        Ok(Reply::Json(v)) => json_response(StatusCode::OK, &v),
        Ok(Reply::Metrics(t)) => respond(StatusCode::OK, METRICS_CONTENT_TYPE, t),
        Err(e) => {
            tracing::debug!(method = %parts.method, %path, error = %e, "control request failed");
            json_response(e.status(), &e.body())
        }
    }
}

/// A response with a body and its content type.
pub fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Pretty JSON with a final newline, so `curl --unix-socket` output reads well.
pub fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}
