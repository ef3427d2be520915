//! The daemons a transaction drives, behind a trait so tests can use in-memory doubles.

use std::future::Future;
use std::pin::Pin;

use serde_json::{Value, json};

use crate::control::{ClientError, ControlClient, PlanReply};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a daemon did not plan or apply a generation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaemonError {
    /// Nobody listens on its socket. At plan time the daemon is skipped (and the report
    /// says so): it reads the active generation when it starts. Later it is a failure.
    #[error("not running")]
    NotRunning,
    /// The daemon refused or failed; it undid its own partial steps. `step` is the daemon's
    /// own step (`firewall`), when it named one.
    #[error("{}{reason}", step.as_ref().map(|s| format!("{s}: ")).unwrap_or_default())]
    Failed {
        step: Option<String>,
        reason: String,
    },
}

/// One daemon as applianced drives it: plan and apply a stored generation.
pub trait Daemon: Send + Sync + std::fmt::Debug {
    /// `netd`, `dnsd`, `stored`: a name [`crate::plan::owners`] gives sections.
    fn name(&self) -> &str;
    /// What applying `generation` would do; changes nothing.
    fn plan(&self, generation: u64) -> BoxFuture<'_, Result<Vec<String>, DaemonError>>;
    /// Applies `generation`; on failure the daemon has undone its partial steps.
    fn apply(&self, generation: u64) -> BoxFuture<'_, Result<Vec<String>, DaemonError>>;
    /// Its `GET /v1/status`.
    fn status(&self) -> BoxFuture<'_, Result<Value, DaemonError>>;
    /// Its status with the parts that cost more to read (netd's firewall rule counters),
    /// for a person asking: `applctl status net`, the API's network status.
    fn status_detail(&self) -> BoxFuture<'_, Result<Value, DaemonError>> {
        self.status()
    }
}

/// A daemon reached over its control socket (docs/control.md).
#[derive(Debug, Clone)]
pub struct ControlDaemon {
    name: String,
    client: ControlClient,
}

impl ControlDaemon {
    pub fn new(name: impl Into<String>, client: ControlClient) -> Self {
        Self {
            name: name.into(),
            client,
        }
    }

    async fn generation_call(
        &self,
        target: &str,
        generation: u64,
    ) -> Result<Vec<String>, DaemonError> {
        let v = self
            .client
            .post_json(target, &json!({ "generation": generation }))
            .await
            .map_err(daemon_error)?;
        let reply: PlanReply = serde_json::from_value(v).map_err(|e| DaemonError::Failed {
            step: None,
            reason: format!("its answer to {target} does not fit the control protocol: {e}"),
        })?;
        Ok(reply.actions)
    }
}

fn daemon_error(e: ClientError) -> DaemonError {
    match e {
        ClientError::NotRunning { .. } => DaemonError::NotRunning,
        ClientError::Status { ref body, .. } => DaemonError::Failed {
            step: body.get("step").and_then(Value::as_str).map(str::to_owned),
            reason: body
                .get("reason")
                .or_else(|| body.get("error"))
                .and_then(Value::as_str)
                .map_or_else(|| e.to_string(), str::to_owned),
        },
        other => DaemonError::Failed {
            step: None,
            reason: other.to_string(),
        },
    }
}

impl Daemon for ControlDaemon {
    fn name(&self) -> &str {
        &self.name
    }

    fn plan(&self, generation: u64) -> BoxFuture<'_, Result<Vec<String>, DaemonError>> {
        Box::pin(self.generation_call("/v1/plan", generation))
    }

    fn apply(&self, generation: u64) -> BoxFuture<'_, Result<Vec<String>, DaemonError>> {
        Box::pin(self.generation_call("/v1/apply", generation))
    }

    fn status(&self) -> BoxFuture<'_, Result<Value, DaemonError>> {
        Box::pin(async move {
            self.client
                .get_json("/v1/status")
                .await
                .map_err(daemon_error)
        })
    }

    fn status_detail(&self) -> BoxFuture<'_, Result<Value, DaemonError>> {
        // Daemons ignore query parameters they do not know.
        Box::pin(async move {
            self.client
                .get_json("/v1/status?counters=1")
                .await
                .map_err(daemon_error)
        })
    }
}
