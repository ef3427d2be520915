//! The client end of a control socket: one request per connection, a timeout on each.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Long enough for a daemon to apply a generation (nft, netlink, a DNS policy rebuild);
/// a daemon that takes longer is stuck.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens: the socket file is absent or refuses connections.
    #[error("{} is not running (no one listens on {})", daemon, path.display())]
    NotRunning { daemon: String, path: PathBuf },
    #[error("cannot talk to {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} did not answer within {} s", path.display(), after.as_secs())]
    Timeout { path: PathBuf, after: Duration },
    #[error("HTTP on {}: {reason}", path.display())]
    Http { path: PathBuf, reason: String },
    /// The daemon answered with an error status; `body` is its JSON error.
    #[error("{} answered {status}: {}", path.display(), error_text(body))]
    Status {
        path: PathBuf,
        status: StatusCode,
        body: Value,
    },
    #[error("{} answered with a body that is not JSON: {reason}", path.display())]
    BadJson { path: PathBuf, reason: String },
}

fn error_text(body: &Value) -> String {
    body.get("error")
        .and_then(Value::as_str)
        .map_or_else(|| body.to_string(), str::to_owned)
}

/// A client for one daemon's control socket.
#[derive(Debug, Clone)]
pub struct ControlClient {
    path: PathBuf,
    timeout: Duration,
}

impl ControlClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn get_json(&self, target: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, target, None).await
    }

    pub async fn post_json(&self, target: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::POST, target, Some(body)).await
    }

    async fn request(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let path = self.path.clone();
        match tokio::time::timeout(self.timeout, self.exchange(method, target, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                path,
                after: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let path = &self.path;
        let http = |e: &dyn std::fmt::Display| ClientError::Http {
            path: path.clone(),
            reason: e.to_string(),
        };
        let stream = match tokio::net::UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                return Err(ClientError::NotRunning {
                    daemon: daemon_name(path),
                    path: path.clone(),
                });
            }
            Err(source) => {
                return Err(ClientError::Io {
                    path: path.clone(),
                    source,
                });
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "control client connection ended with an error");
            }
        });
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(target)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| http(&e))?;
        let result = async {
            let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
            let status = resp.status();
            let raw = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| http(&e))?
                .to_bytes();
            Ok::<_, ClientError>((status, raw))
        }
        .await;
        driver.abort();
        let (status, raw) = result?;
        let value =
            if status == StatusCode::OK && !raw.first().is_some_and(|b| matches!(b, b'{' | b'[')) {
                // /metrics answers text: hand it back as a JSON string.
                Value::String(String::from_utf8_lossy(&raw).into_owned())
            } else {
                serde_json::from_slice(&raw).map_err(|e| ClientError::BadJson {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            };
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Status {
                path: path.clone(),
                status,
                body: value,
            })
        }
    }
}

/// `netd` for `/run/appliance/netd.sock`: the name a report shows.
fn daemon_name(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::server::{self, ApiError, Reply};
    use serde_json::json;

    #[tokio::test]
    async fn client_and_server_speak_json_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("testd.sock");
        let task = server::serve(&sock, 0o660, |req: server::Request| async move {
            match req.path.as_str() {
                "/v1/echo" => {
                    req.only(&Method::POST)?;
                    let v: Value = req.json()?;
                    Ok(Reply::Json(v))
                }
                "/v1/fail" => Err(ApiError::ApplyFailed {
                    step: "firewall".into(),
                    reason: "nft said no".into(),
                }),
                "/metrics" => Ok(Reply::Metrics("up 1\n".into())),
                other => Err(ApiError::NotFound(other.into())),
            }
        })
        .await
        .unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o660
        );
        let c = ControlClient::new(&sock);
        let v = c.post_json("/v1/echo", &json!({"a": 1})).await.unwrap();
        assert_eq!(v, json!({"a": 1}));
        match c.get_json("/v1/echo").await {
            Err(ClientError::Status { status, .. }) => {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED)
            }
            other => panic!("expected 405, got {other:?}"),
        }
        match c.post_json("/v1/fail", &json!({})).await {
            Err(ClientError::Status { status, body, .. }) => {
                assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
                assert_eq!(body["step"], "firewall");
                assert_eq!(body["reason"], "nft said no");
            }
            other => panic!("expected 500, got {other:?}"),
        }
        let big = json!({ "x": "y".repeat(server::MAX_BODY) });
        match c.post_json("/v1/echo", &big).await {
            Err(ClientError::Status { status, .. }) => {
                assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE)
            }
            other => panic!("expected 413, got {other:?}"),
        }
        assert_eq!(c.get_json("/metrics").await.unwrap(), json!("up 1\n"));
        // A second server on a live socket is refused; after the first stops, it may bind.
        assert!(matches!(
            server::bind(&sock, 0o600).await,
            Err(server::ServeError::InUse(_))
        ));
        task.abort();
        let _ = task.await;
        match ControlClient::new(dir.path().join("gone.sock"))
            .get_json("/v1/status")
            .await
        {
            Err(ClientError::NotRunning { daemon, .. }) => assert_eq!(daemon, "gone"),
            other => panic!("expected NotRunning, got {other:?}"),
        }
    }
}
