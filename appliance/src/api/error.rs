//! Every failure the API reports, each mapped to one HTTP status (no catch-all), with a
//! JSON body `{"error": code, "message": text, "details": ...}` whose message says what to do.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::backend::BackendError;
use crate::Diagnostics;
use crate::accounts::AuthError;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code, like `unauthenticated` or `invalid_config`.
    pub error: String,
    /// What went wrong and what to do, for a person.
    pub message: String,
    /// The config's mistakes (for `invalid_config`), with key paths and line numbers.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The submitted config has mistakes.
    #[error("the config has {} mistake(s); see details, fix them and send it again", .0.0.len())]
    InvalidConfig(Diagnostics),
    /// The request body or parameters are malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The stored config cannot be read back (the store is damaged).
    #[error("the stored config cannot be read: {0}; run `applctl config history` on the appliance")]
    StoredConfig(String),
    /// A task of the server itself failed; applianced's log has the details.
    #[error("{0}; see `journalctl -u applianced`")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Auth(e) => match e {
                AuthError::Missing => (StatusCode::UNAUTHORIZED, "unauthenticated"),
                AuthError::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
                AuthError::Expired => (StatusCode::UNAUTHORIZED, "expired"),
                AuthError::BadCredentials => (StatusCode::UNAUTHORIZED, "bad_credentials"),
                AuthError::TotpRequired => (StatusCode::UNAUTHORIZED, "totp_required"),
                AuthError::BadTotp => (StatusCode::UNAUTHORIZED, "bad_totp"),
                AuthError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
                AuthError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
                AuthError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
                AuthError::TokenExists(_) => (StatusCode::CONFLICT, "token_exists"),
                AuthError::NoSuchToken(_) => (StatusCode::NOT_FOUND, "not_found"),
                AuthError::TotpSecret(_) => (StatusCode::INTERNAL_SERVER_ERROR, "totp_secret"),
                AuthError::State { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "state"),
            },
            Self::Backend(e) => match e {
                BackendError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config"),
                BackendError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                BackendError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                BackendError::Unavailable { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "daemon_unavailable")
                }
                BackendError::ApplyFailed { .. } => (StatusCode::BAD_GATEWAY, "apply_failed"),
                BackendError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
                BackendError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            Self::InvalidConfig(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::StoredConfig(_) => (StatusCode::INTERNAL_SERVER_ERROR, "stored_config"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let details = match &self {
            Self::InvalidConfig(d) | Self::Backend(BackendError::Invalid(d)) => {
                serde_json::to_value(d).ok()
            }
            _ => None,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: code.into(),
            message: self.to_string(),
            details,
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Auth(AuthError::RateLimited { retry_after }) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ if status == StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
