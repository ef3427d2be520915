//! Config transactions: validate, store generation N+1, plan on every daemon that owns a
//! changed section, apply netd → dnsd → stored, activate N+1; on any failure every daemon
//! touched (the failing one included) applies N again and the report names the step.
//!
//! Commit-confirm: a change that could cut the administrator off (see
//! [`crate::plan::needs_confirm`]), or one applied with an explicit window, stays pending
//! until [`Engine::confirm`]. The pending state is a file under the state directory with a
//! wall-clock deadline, so a restart of applianced keeps the timer: [`Engine::recover`]
//! reverts an expired change at once and re-arms a live one.
//!
//! A daemon that is not running when planning is skipped and the report says so: it loads
//! the active generation when it starts. One that stops answering after it planned fails
//! the transaction.

pub mod backend;
pub mod daemon;
pub mod http;
pub mod pending;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{Mutex, watch};

use crate::Config;
use crate::store::{GenerationInfo, Store, StoreError};
pub use daemon::{ControlDaemon, Daemon, DaemonError};
pub use pending::{Pending, StateDir, StateError};

/// The confirm window of a change that needs one, when none is given.
pub const DEFAULT_CONFIRM: Duration = Duration::from_secs(120);

/// What one daemon did in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub daemon: String,
    /// `plan`, `apply` or `revert`.
    pub action: &'static str,
    pub generation: u64,
    /// `ok`, `skipped` (not running) or `failed`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a transaction, a confirm timeout or a rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Report {
    /// The generation active before.
    pub from: u64,
    /// The generation asked for.
    pub to: u64,
    /// The generation active now.
    pub active: u64,
    /// Sections that differ between `from` and `to`.
    pub sections: Vec<String>,
    pub steps: Vec<Step>,
    /// Daemons that own a changed section but were not running.
    pub skipped: Vec<String>,
    /// Set while the change waits for `applctl confirm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_deadline_unix: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_seconds: Option<u64>,
    /// How long re-applying the previous generation took, when a revert ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_ms: Option<u64>,
}

/// Why a transaction did not happen or did not stick.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("the config is invalid; nothing was changed:\n{0}")]
    Invalid(String),
    #[error(
        "generation {generation} waits for a confirm ({seconds_left} s left); run `applctl confirm` or `applctl rollback` first"
    )]
    Pending { generation: u64, seconds_left: u64 },
    #[error("no change waits for a confirm")]
    NothingPending,
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateError),
    /// A step failed; the daemons touched were sent back to `from` (see the report).
    #[error("{step} failed: {reason}; {}", revert_summary(report))]
    Failed {
        step: String,
        reason: String,
        report: Box<Report>,
    },
}

fn revert_summary(r: &Report) -> String {
    let failed: Vec<_> = r
        .steps
        .iter()
        .filter(|s| s.action == "revert" && s.outcome == "failed")
        .map(|s| format!("{}: {}", s.daemon, s.reason.as_deref().unwrap_or("?")))
        .collect();
    if failed.is_empty() {
        format!("every daemon touched is back on generation {}", r.from)
    } else {
        format!(
            "reverting to generation {} FAILED on {}; check those daemons",
            r.from,
            failed.join(", ")
        )
    }
}

/// The answer to `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub active: Option<u64>,
    pub pending: Option<PendingStatus>,
    pub daemons: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingStatus {
    pub generation: u64,
    pub previous: u64,
    pub deadline_unix: u64,
    pub seconds_left: u64,
}

/// Runs transactions one at a time.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    state: StateDir,
    /// In apply order: netd, dnsd, stored.
    daemons: Vec<Arc<dyn Daemon>>,
    lock: Mutex<()>,
    deadline: watch::Sender<Option<SystemTime>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Engine {
    /// `daemons` in apply order.
    pub fn new(store: Store, state: StateDir, daemons: Vec<Arc<dyn Daemon>>) -> Self {
        Self {
            store,
            state,
            daemons,
            lock: Mutex::new(()),
            deadline: watch::channel(None).0,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Validates `text`, stores it as a new generation and applies it. `confirm`: the
    /// window to wait for a confirm; `None` takes [`DEFAULT_CONFIRM`] when the change needs
    /// one and none otherwise.
    pub async fn apply(
        &self,
        text: &str,
        comment: &str,
        confirm: Option<Duration>,
        now: SystemTime,
    ) -> Result<Report, TxnError> {
        let new = crate::load_str(text)
            .map_err(|d| TxnError::Invalid(d.render(text, "config", false)))?;
        if confirm == Some(Duration::ZERO) {
            return Err(TxnError::BadRequest(
                "a confirm window of 0 s cannot be met".into(),
            ));
        }
        let _guard = self.lock.lock().await;
        self.refuse_if_pending(now)?;
        let (from, old) = self.base()?;
        let plan = crate::plan::diff(Some(&old), &new);
        if plan.is_empty() {
            return Ok(Report {
                from,
                to: from,
                active: from,
                ..Report::default()
            });
        }
        let to = self.store.commit(text, comment)?;
        self.run_with_window(from, to, &plan, confirm, now).await
    }

    /// Applies generation `generation`, already stored (by the API's config put), like
    /// [`Engine::apply`] applies a text.
    pub async fn apply_stored(
        &self,
        generation: u64,
        confirm: Option<Duration>,
        now: SystemTime,
    ) -> Result<Report, TxnError> {
        if confirm == Some(Duration::ZERO) {
            return Err(TxnError::BadRequest(
                "a confirm window of 0 s cannot be met".into(),
            ));
        }
        let new = self.load(generation)?;
        let _guard = self.lock.lock().await;
        self.refuse_if_pending(now)?;
        let (from, old) = self.base()?;
        let plan = crate::plan::diff(Some(&old), &new);
        if plan.is_empty() || generation == from {
            return Ok(Report {
                from,
                to: from,
                active: from,
                ..Report::default()
            });
        }
        self.run_with_window(from, generation, &plan, confirm, now)
            .await
    }

    async fn run_with_window(
        &self,
        from: u64,
        to: u64,
        plan: &crate::plan::Plan,
        confirm: Option<Duration>,
        now: SystemTime,
    ) -> Result<Report, TxnError> {
        let window = confirm.or(plan.needs_confirm.then_some(DEFAULT_CONFIRM));
        let (mut report, touched) = self.transact(from, to, plan).await?;
        if let Some(window) = window {
            let deadline = now + window;
            self.state.save(&Pending {
                generation: to,
                previous: from,
                deadline_unix: unix(deadline),
                daemons: touched,
            })?;
            self.deadline.send_replace(Some(deadline));
            report.confirm_deadline_unix = Some(unix(deadline));
            report.confirm_seconds = Some(window.as_secs());
            tracing::info!(
                generation = to,
                seconds = window.as_secs(),
                "applied; waiting for a confirm"
            );
        }
        Ok(report)
    }

    /// Keeps the pending change.
    pub async fn confirm(&self) -> Result<u64, TxnError> {
        let _guard = self.lock.lock().await;
        let p = self.state.load()?.ok_or(TxnError::NothingPending)?;
        self.state.clear()?;
        self.deadline.send_replace(None);
        tracing::info!(generation = p.generation, "change confirmed");
        Ok(p.generation)
    }

    /// Reverts a pending change, or (with none pending) goes back to `target`, by default
    /// the newest generation older than the active one. Applies without a confirm window:
    /// it returns to a configuration that was in use.
    pub async fn rollback(&self, target: Option<u64>) -> Result<Report, TxnError> {
        let _guard = self.lock.lock().await;
        if let Some(p) = self.state.load()? {
            if target.is_some_and(|t| t != p.previous) {
                return Err(TxnError::BadRequest(format!(
                    "generation {} waits for a confirm; `applctl rollback` without a number reverts it to {}",
                    p.generation, p.previous
                )));
            }
            return self.revert_pending(&p, "rollback asked for").await;
        }
        let (from, old) = self.base()?;
        let to = match target {
            Some(t) => t,
            None => {
                let (history, _) = self.store.history()?;
                history
                    .iter()
                    .map(|g| g.number)
                    .filter(|&n| n < from)
                    .max()
                    .ok_or_else(|| {
                        TxnError::BadRequest(format!("no generation older than {from} is stored"))
                    })?
            }
        };
        let new = self.load(to)?;
        let plan = crate::plan::diff(Some(&old), &new);
        let (report, _) = self.transact(from, to, &plan).await?;
        Ok(report)
    }

    /// Reverts the pending change if its deadline has passed at `now`.
    pub async fn expire_if_due(&self, now: SystemTime) -> Result<Option<Report>, TxnError> {
        let _guard = self.lock.lock().await;
        match self.state.load()? {
            Some(p) if p.expired(now) => {
                Ok(Some(self.revert_pending(&p, "no confirm in time").await?))
            }
            _ => Ok(None),
        }
    }

    /// On start: reverts an expired pending change at once, re-arms a live one.
    pub async fn recover(&self, now: SystemTime) -> Result<Option<Report>, TxnError> {
        if let Some(report) = self.expire_if_due(now).await? {
            return Ok(Some(report));
        }
        if let Some(p) = self.state.load()? {
            tracing::info!(
                generation = p.generation,
                seconds_left = p.seconds_left(now),
                "a change still waits for a confirm"
            );
            self.deadline.send_replace(Some(p.deadline()));
        }
        Ok(None)
    }

    /// Reverts pending changes when their deadline passes; runs until the engine is dropped.
    pub async fn run_timer(self: Arc<Self>) {
        let mut rx = self.deadline.subscribe();
        loop {
            let deadline = *rx.borrow_and_update();
            match deadline {
                None => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                Some(t) => {
                    let wait = t.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {
                            match self.expire_if_due(SystemTime::now()).await {
                                Ok(Some(r)) => tracing::warn!(generation = r.from, active = r.active, revert_ms = r.revert_ms, "no confirm in time: reverted"),
                                // Woken early (a clock step): sleep again on the same deadline.
                                Ok(None) => { if self.state.load().ok().flatten().is_none() { self.deadline.send_replace(None); } continue; }
                                Err(e) => tracing::error!(error = %e, "reverting the unconfirmed change failed"),
                            }
                            self.deadline.send_replace(None);
                        }
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }

    pub async fn status(&self, now: SystemTime) -> Result<Status, TxnError> {
        let pending = self.state.load()?.map(|p| PendingStatus {
            generation: p.generation,
            previous: p.previous,
            deadline_unix: p.deadline_unix,
            seconds_left: p.seconds_left(now),
        });
        let mut daemons = Vec::new();
        for d in &self.daemons {
            daemons.push(match d.status().await {
                Ok(v) => serde_json::json!({ "daemon": d.name(), "running": true, "status": v }),
                Err(e) => serde_json::json!({ "daemon": d.name(), "running": false, "error": e.to_string() }),
            });
        }
        Ok(Status {
            active: self.store.active()?,
            pending,
            daemons,
        })
    }

    /// One daemon's own status document (its `GET /v1/status`), like netd's links,
    /// leases, WireGuard peers and rule counters; `None` for a name the engine does not
    /// drive.
    pub async fn daemon_status(
        &self,
        name: &str,
    ) -> Option<Result<serde_json::Value, DaemonError>> {
        let d = self.daemons.iter().find(|d| d.name() == name)?;
        Some(d.status_detail().await)
    }

    pub fn history(&self) -> Result<Vec<GenerationInfo>, TxnError> {
        Ok(self.store.history()?.0)
    }

    fn refuse_if_pending(&self, now: SystemTime) -> Result<(), TxnError> {
        match self.state.load()? {
            Some(p) => Err(TxnError::Pending {
                generation: p.generation,
                seconds_left: p.seconds_left(now),
            }),
            None => Ok(()),
        }
    }

    fn load(&self, n: u64) -> Result<Config, TxnError> {
        let g = self.store.get(n)?;
        crate::load_str(&g.text).map_err(|d| {
            TxnError::Invalid(format!(
                "generation {n} does not validate with this firmware:\n{}",
                d.render(&g.text, &format!("generation {n}"), false)
            ))
        })
    }

    /// The active generation. With an empty store the built-in default is stored and
    /// activated first, so a failed first change has a generation to go back to.
    fn base(&self) -> Result<(u64, Config), TxnError> {
        let (current, warnings) = self.store.current()?;
        for w in warnings {
            tracing::warn!(file = %w.file.display(), "{}", w.message);
        }
        let n = match current {
            Some(g) => g.info.number,
            None => {
                let n = self.store.commit(
                    crate::DEFAULT_CONFIG,
                    "built-in default (base of the first change)",
                )?;
                self.store.activate(n)?;
                n
            }
        };
        Ok((n, self.load(n)?))
    }

    /// Plans and applies `to` on the daemons owning a section of `plan`, then activates it.
    /// Returns the report and the daemons that applied `to`.
    async fn transact(
        &self,
        from: u64,
        to: u64,
        plan: &crate::plan::Plan,
    ) -> Result<(Report, Vec<String>), TxnError> {
        let mut report = Report {
            from,
            to,
            active: from,
            sections: plan.changes.iter().map(|c| c.section.clone()).fold(
                Vec::new(),
                |mut v, s| {
                    if !v.contains(&s) {
                        v.push(s);
                    }
                    v
                },
            ),
            ..Report::default()
        };
        let targets: Vec<&Arc<dyn Daemon>> = self
            .daemons
            .iter()
            .filter(|d| plan.daemons.contains(&d.name()))
            .collect();
        let mut running = Vec::new();
        for d in targets {
            match d.plan(to).await {
                Ok(actions) => {
                    report
                        .steps
                        .push(step(d.name(), "plan", to, "ok", actions, None));
                    running.push(d);
                }
                Err(DaemonError::NotRunning) => {
                    tracing::warn!(
                        daemon = d.name(),
                        generation = to,
                        "not running: skipped; it loads the active generation when it starts"
                    );
                    report.steps.push(step(
                        d.name(),
                        "plan",
                        to,
                        "skipped",
                        Vec::new(),
                        Some("not running".into()),
                    ));
                    report.skipped.push(d.name().to_owned());
                }
                Err(e) => {
                    report.steps.push(step(
                        d.name(),
                        "plan",
                        to,
                        "failed",
                        Vec::new(),
                        Some(e.to_string()),
                    ));
                    // Nothing was applied: generation `to` stays stored, inactive.
                    return Err(TxnError::Failed {
                        step: format!("plan of generation {to} on {}", d.name()),
                        reason: e.to_string(),
                        report: Box::new(report),
                    });
                }
            }
        }
        let mut touched: Vec<&Arc<dyn Daemon>> = Vec::new();
        for d in running {
            touched.push(d);
            match d.apply(to).await {
                Ok(actions) => report
                    .steps
                    .push(step(d.name(), "apply", to, "ok", actions, None)),
                Err(e) => {
                    report.steps.push(step(
                        d.name(),
                        "apply",
                        to,
                        "failed",
                        Vec::new(),
                        Some(e.to_string()),
                    ));
                    self.revert(&touched, from, &mut report).await;
                    return Err(TxnError::Failed {
                        step: format!("apply of generation {to} on {}", d.name()),
                        reason: e.to_string(),
                        report: Box::new(report),
                    });
                }
            }
        }
        if let Err(e) = self.store.activate(to) {
            self.revert(&touched, from, &mut report).await;
            return Err(TxnError::Failed {
                step: format!("activating generation {to}"),
                reason: e.to_string(),
                report: Box::new(report),
            });
        }
        report.active = to;
        tracing::info!(from, to, "generation applied");
        Ok((
            report,
            touched.iter().map(|d| d.name().to_owned()).collect(),
        ))
    }

    /// Applies `from` on `touched`, last first; failures are reported, not fatal, so every
    /// daemon gets its chance.
    async fn revert(&self, touched: &[&Arc<dyn Daemon>], from: u64, report: &mut Report) {
        let started = Instant::now();
        for d in touched.iter().rev() {
            match d.apply(from).await {
                Ok(actions) => {
                    report
                        .steps
                        .push(step(d.name(), "revert", from, "ok", actions, None))
                }
                Err(e) => {
                    tracing::error!(daemon = d.name(), generation = from, error = %e, "revert failed");
                    report.steps.push(step(
                        d.name(),
                        "revert",
                        from,
                        "failed",
                        Vec::new(),
                        Some(e.to_string()),
                    ));
                }
            }
        }
        report.revert_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    }

    async fn revert_pending(&self, p: &Pending, why: &str) -> Result<Report, TxnError> {
        tracing::warn!(
            generation = p.generation,
            previous = p.previous,
            "{why}: reverting"
        );
        let mut report = Report {
            from: p.generation,
            to: p.previous,
            active: p.generation,
            ..Report::default()
        };
        let touched: Vec<&Arc<dyn Daemon>> = p
            .daemons
            .iter()
            .filter_map(|name| self.daemons.iter().find(|d| d.name() == name))
            .collect();
        let started = Instant::now();
        for d in touched.iter().rev() {
            match d.apply(p.previous).await {
                Ok(actions) => {
                    report
                        .steps
                        .push(step(d.name(), "revert", p.previous, "ok", actions, None))
                }
                Err(e) => {
                    tracing::error!(daemon = d.name(), generation = p.previous, error = %e, "revert failed");
                    report.steps.push(step(
                        d.name(),
                        "revert",
                        p.previous,
                        "failed",
                        Vec::new(),
                        Some(e.to_string()),
                    ));
                }
            }
        }
        self.store.activate(p.previous)?;
        report.revert_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        report.active = p.previous;
        self.state.clear()?;
        self.deadline.send_replace(None);
        Ok(report)
    }
}

fn step(
    daemon: &str,
    action: &'static str,
    generation: u64,
    outcome: &'static str,
    actions: Vec<String>,
    reason: Option<String>,
) -> Step {
    Step {
        daemon: daemon.to_owned(),
        action,
        generation,
        outcome,
        actions,
        reason,
    }
}

#[cfg(test)]
mod tests;
