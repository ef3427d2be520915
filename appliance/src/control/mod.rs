//! The daemons' control protocol: HTTP/1.1 with JSON bodies on a Unix socket under
//! `/run/appliance/`, spoken by netd, dnsd, stored and applianced alike (docs/control.md).
//!
//! [`server`] serves a router function on a socket (mode chosen by the daemon, request
//! bodies capped, errors as JSON with one status per [`ApiError`] variant); [`client`] is
//! the other end, with a timeout on every request. The contract every daemon serves:
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/status` | `{"daemon", "generation", ...}`: the generation applied last |
//! | `POST /v1/plan {"generation": N}` | `{"generation", "actions": [..]}` from the store's N |
//! | `POST /v1/apply {"generation": N}` | `{"generation", "actions"}`; on failure the daemon has undone its partial steps and answers an error with `step` and `reason` |
//! | `GET /metrics` | Prometheus text |

pub mod client;
pub mod server;

pub use client::{ClientError, ControlClient};
pub use hyper::Method;
pub use server::{ApiError, Reply, Request, ServeError};

use serde::{Deserialize, Serialize};

use crate::Config;
use crate::store::{Store, StoreError};

/// The body of `POST /v1/plan` and `POST /v1/apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequest {
    pub generation: u64,
}

/// Generation `generation` of `store`, validated, for a daemon's plan or apply: a generation
/// that is missing, damaged or invalid is the caller's mistake (422), a store that cannot be
/// read is the daemon's (500).
pub fn load_generation(store: &Store, generation: u64) -> Result<Config, ApiError> {
    let g = store.get(generation).map_err(|e| match e {
        StoreError::NotFound(_) | StoreError::Corrupt { .. } => ApiError::Invalid(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    })?;
    crate::load_str(&g.text).map_err(|d| {
        ApiError::Invalid(format!(
            "generation {generation} does not validate:\n{}",
            d.render(&g.text, &format!("generation {generation}"), false)
        ))
    })
}

/// The answer to `POST /v1/plan` and `POST /v1/apply`: what the daemon does (or did) to
/// reach the generation, in words a person can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanReply {
    pub generation: u64,
    pub actions: Vec<String>,
}
