//! Plan against the kernel, apply in batches, undo a failed apply.

use std::time::SystemTime;

use super::action::Action;
use super::adapter::{WgError, WgKernel};
use super::plan::{PlanError, plan};
use super::state::DesiredDevice;

/// Why an apply did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot read the WireGuard state: {0}")]
    Observe(WgError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{failed}; the {undone} completed steps were undone{}", undo_summary(.undo_failures))]
    Step {
        failed: WgError,
        undone: usize,
        undo_failures: Vec<WgError>,
    },
}

fn undo_summary(failures: &[WgError]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
        format!(", except: {}", list.join("; "))
    }
}

/// Splits a plan into what [`WgKernel::execute`] takes at once: runs of device settings of
/// one interface, and single link steps.
pub fn batches(actions: &[Action]) -> Vec<&[Action]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=actions.len() {
        let split = match (actions.get(start), actions.get(i)) {
            (Some(a), Some(b)) => {
                !(a.is_device_config() && b.is_device_config() && a.link() == b.link())
            }
            _ => true,
        };
        if split {
            if let Some(run) = actions.get(start..i) {
                out.push(run);
            }
            start = i;
        }
    }
    out
}

/// WireGuard over an adapter.
#[derive(Debug)]
pub struct Wireguard<K> {
    pub kernel: K,
}

impl<K: WgKernel> Wireguard<K> {
    pub fn new(kernel: K) -> Self {
        Self { kernel }
    }

    /// The steps that would bring the kernel to `desired` now.
    pub fn plan(&mut self, desired: &[DesiredDevice]) -> Result<Vec<Action>, ApplyError> {
        let observed = self.kernel.observe().map_err(ApplyError::Observe)?;
        Ok(plan(desired, &observed, SystemTime::now())?)
    }

    /// Runs `actions`; when a batch fails, runs the inverses of it and of every completed
    /// batch, newest first, and reports the failure.
    pub fn apply(&mut self, actions: &[Action]) -> Result<(), ApplyError> {
        let mut done: Vec<&Action> = Vec::new();
        for batch in batches(actions) {
            if let Err(failed) = self.kernel.execute(batch) {
                // A failed batch of device settings may be half applied; its inverses are
                // harmless where it was not (removing an absent peer, re-adding a present
                // one). A link step is one request, or cleans up after itself.
                if batch.first().is_some_and(Action::is_device_config) {
                    done.extend(batch);
                }
                let undone = done.len();
                let done: Vec<Action> = done.into_iter().cloned().collect();
                let undo_failures = self.undo(&done);
                return Err(ApplyError::Step {
                    failed,
                    undone,
                    undo_failures,
                });
            }
            done.extend(batch);
        }
        Ok(())
    }

    /// Runs the inverses of `done` (steps of an apply that completed), newest first, and
    /// returns the undo steps the kernel refused: a later step of netd's transaction failed.
    pub fn undo(&mut self, done: &[Action]) -> Vec<WgError> {
        let undo: Vec<Action> = done.iter().rev().flat_map(|a| a.inverse()).collect();
        let mut undo_failures = Vec::new();
        for b in batches(&undo) {
            if let Err(e) = self.kernel.execute(b) {
                tracing::error!(error = %e, "undo step failed");
                undo_failures.push(e);
            }
        }
        undo_failures
    }
}
