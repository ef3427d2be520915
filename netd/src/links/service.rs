//! Plan against the kernel, apply in order, and undo on failure.

use std::fmt;

use appliance::Config;

use super::action::Action;
use super::adapter::{Netlink, NetlinkError};
use super::plan::{PlanError, desired, plan_after};

/// The steps from what the kernel holds to what the config asks for; empty when there is
/// nothing to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkPlan {
    pub actions: Vec<Action>,
}

impl LinkPlan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

impl fmt::Display for LinkPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.actions {
            writeln!(f, "{a}")?;
        }
        Ok(())
    }
}

/// A step of an undo that failed too: the kernel is left between the two states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoFailure {
    pub action: Action,
    pub error: NetlinkError,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinksError {
    #[error("cannot read the links from the kernel: {0}")]
    Observe(NetlinkError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Step `step` (1-based, of `of`) failed. The steps before it were undone in reverse
    /// order; `undo_failures` lists the undo steps that failed as well (then the kernel
    /// needs a look: `ip -d link`, `ip addr`, `ip route`).
    #[error(
        "step {step} of {of} failed: {source}; {}",
        if undo_failures.is_empty() {
            format!("the {} step(s) before it were undone", step - 1)
        } else {
            format!(
                "undoing the steps before it failed too: {}",
                undo_failures.iter().map(|u| u.error.to_string()).collect::<Vec<_>>().join("; ")
            )
        }
    )]
    Step {
        step: usize,
        of: usize,
        action: Box<Action>,
        source: NetlinkError,
        undo_failures: Vec<UndoFailure>,
    },
}

/// The links part of netd over a [`Netlink`] adapter.
#[derive(Debug)]
pub struct Links<N: Netlink> {
    netlink: N,
}

impl<N: Netlink> Links<N> {
    pub fn new(netlink: N) -> Self {
        Self { netlink }
    }

    pub fn netlink(&self) -> &N {
        &self.netlink
    }

    pub fn netlink_mut(&mut self) -> &mut N {
        &mut self.netlink
    }

    /// What [`Links::apply`] would do now. Reads the kernel, writes nothing.
    pub fn plan(&mut self, cfg: &Config) -> Result<LinkPlan, LinksError> {
        self.plan_after(cfg, None)
    }

    /// [`Links::plan`] from the config applied before (`previous`): the static addresses it
    /// put on a link that is now DHCP or SLAAC are removed too.
    pub fn plan_after(
        &mut self,
        cfg: &Config,
        previous: Option<&Config>,
    ) -> Result<LinkPlan, LinksError> {
        let want = desired(cfg)?;
        // A previous config that no longer plans (it did when it was applied) only loses
        // this cleanup.
        let before = previous.and_then(|p| desired(p).ok());
        let have = self.netlink.observe().map_err(LinksError::Observe)?;
        Ok(LinkPlan {
            actions: plan_after(&want, &have, before.as_ref())?,
        })
    }

    /// Plans and runs the plan. When a step fails, the steps already done are undone in
    /// reverse order and the error names the failed step. Returns what was done.
    pub fn apply(&mut self, cfg: &Config) -> Result<LinkPlan, LinksError> {
        let plan = self.plan(cfg)?;
        self.run(&plan)?;
        Ok(plan)
    }

    /// Runs a plan made by [`Links::plan`].
    pub fn run(&mut self, plan: &LinkPlan) -> Result<(), LinksError> {
        let of = plan.actions.len();
        for (i, action) in plan.actions.iter().enumerate() {
            tracing::info!(step = i + 1, of, "{action}");
            if let Err(source) = self.netlink.execute(action) {
                tracing::error!(step = i + 1, of, %source, "link step failed; undoing the steps before it");
                let done = plan.actions.get(..i).unwrap_or_default();
                let undo_failures = self.undo(done);
                return Err(LinksError::Step {
                    step: i + 1,
                    of,
                    action: Box::new(action.clone()),
                    source,
                    undo_failures,
                });
            }
        }
        Ok(())
    }

    /// Puts back what a completed [`Links::run`] of `plan` changed (a later step of netd's
    /// transaction failed). Returns the undo steps the kernel refused.
    pub fn undo_plan(&mut self, plan: &LinkPlan) -> Vec<UndoFailure> {
        self.undo(&plan.actions)
    }

    /// Runs the inverses of `done`, last first. Keeps going past failures: each undone
    /// step is one less difference from where the kernel was.
    fn undo(&mut self, done: &[Action]) -> Vec<UndoFailure> {
        let mut failures = Vec::new();
        for action in done.iter().rev().filter_map(Action::inverse) {
            tracing::info!("undo: {action}");
            if let Err(error) = self.netlink.execute(&action) {
                if already_absent(&action, &error) {
                    // Taking a link down flushes its routes and IPv6 addresses: an undo
                    // step that removes one finds the work done.
                    tracing::debug!(%error, "undo: already gone");
                    continue;
                }
                tracing::error!(%error, "undo step failed");
                failures.push(UndoFailure { action, error });
            }
        }
        failures
    }
}

const ESRCH: i32 = 3;
const EADDRNOTAVAIL: i32 = 99;

fn already_absent(action: &Action, error: &NetlinkError) -> bool {
    matches!(
        (action, error.errno),
        (Action::RemoveAddress { .. }, Some(EADDRNOTAVAIL)) | (Action::RemoveRoute(_), Some(ESRCH))
    )
}
