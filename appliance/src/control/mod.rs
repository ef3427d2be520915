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

/// The body of `POST /v1/plan` and `POST /v1/apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequest {
    pub generation: u64,
}

/// The answer to `POST /v1/plan` and `POST /v1/apply`: what the daemon does (or did) to
/// reach the generation, in words a person can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanReply {
    pub generation: u64,
    pub actions: Vec<String>,
}
