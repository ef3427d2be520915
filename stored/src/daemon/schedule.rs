//! The scheduler's work at one moment: every snapshot policy (take what is due, prune in
//! one batch) and every pool's scheduled scrub. It is called every minute with the time
//! of a [`Clock`]; tests pass a clock they move.
//!
//! Nothing here counts ticks: what is due is read from the snapshots that exist (one per
//! period slot) and from the pool's last scrub, so a daemon that was down for a week takes
//! one snapshot per period when it is back, not a week of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};

use appliance::Config;
use serde::Serialize;

use crate::scrub::{parse_scan, scrub_due};
use crate::snapshots::run_policy;
use crate::time::UtcTime;
use crate::zfs::Zfs;

/// Where the scheduler's time comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> UtcTime;
}

/// The system's wall clock (UTC).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UtcTime {
        UtcTime::now()
    }
}

/// A clock a test sets.
#[derive(Debug, Default)]
pub struct FakeClock(AtomicI64);

impl FakeClock {
    pub fn new(t: UtcTime) -> Self {
        Self(AtomicI64::new(t.0))
    }

    pub fn set(&self, t: UtcTime) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> UtcTime {
        UtcTime(self.0.load(Ordering::SeqCst))
    }
}

/// The last run of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyOutcome {
    pub at: String,
    pub taken: usize,
    pub destroyed: usize,
    pub error: Option<String>,
}

/// What the scheduler remembers between ticks; lost on restart, which costs nothing:
/// every decision is read back from ZFS.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScheduleState {
    /// Scrubs this process started (the fallback when the `scan:` line shows a resilver
    /// or a canceled scrub rather than the last finished one).
    pub scrubs_started: BTreeMap<String, String>,
    #[serde(skip)]
    scrub_started_at: BTreeMap<String, UtcTime>,
    pub policies: BTreeMap<String, PolicyOutcome>,
    pub last_tick: Option<String>,
    pub ticks: u64,
    pub errors_total: u64,
    pub snapshots_taken_total: u64,
    pub snapshots_destroyed_total: u64,
    pub scrubs_started_total: u64,
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub taken: Vec<String>,
    pub destroyed: Vec<String>,
    pub scrubbed: Vec<String>,
    pub errors: Vec<String>,
}

/// Runs every policy and starts due scrubs at `now`. One failing policy or pool does not
/// stop the others; each failure is logged and counted. `needed` (full names) are kept
/// whatever the retention says: the snapshots a running replication job may still send.
pub fn tick(
    zfs: &mut dyn Zfs,
    cfg: &Config,
    now: UtcTime,
    needed: &BTreeSet<String>,
    state: &mut ScheduleState,
) -> TickReport {
    let mut report = TickReport::default();
    for (name, policy) in &cfg.snapshots {
        let outcome = match run_policy(zfs, policy, now, needed, false) {
            Ok(run) => {
                if !run.taken.is_empty() || !run.destroyed.is_empty() {
                    tracing::info!(policy = %name, taken = run.taken.len(), destroyed = run.destroyed.len(), "snapshot policy ran");
                }
                let o = PolicyOutcome {
                    at: now.to_string(),
                    taken: run.taken.len(),
                    destroyed: run.destroyed.len(),
                    error: None,
                };
                report.taken.extend(run.taken);
                report.destroyed.extend(run.destroyed);
                o
            }
            Err(e) => {
                tracing::error!(policy = %name, error = %e, "snapshot policy failed");
                report.errors.push(format!("policy {name}: {e}"));
                PolicyOutcome {
                    at: now.to_string(),
                    taken: 0,
                    destroyed: 0,
                    error: Some(e.to_string()),
                }
            }
        };
        state.policies.insert(name.to_string(), outcome);
    }
    let scrubbing: Vec<_> = cfg
        .storage
        .pools
        .iter()
        .filter(|(_, p)| p.scrub_interval.as_secs() > 0)
        .collect();
    if !scrubbing.is_empty() {
        match zfs.pools() {
            Ok(pools) => {
                for (name, pool) in scrubbing {
                    let Some(observed) = pools.iter().find(|p| p.name == name.as_str()) else {
                        continue;
                    };
                    let last = state.scrub_started_at.get(name.as_str()).copied();
                    if !scrub_due(
                        parse_scan(&observed.scan),
                        last,
                        pool.scrub_interval.as_secs(),
                        now,
                    ) {
                        continue;
                    }
                    match zfs.scrub(name.as_str()) {
                        Ok(()) => {
                            tracing::info!(pool = %name, "scheduled scrub started");
                            state.scrub_started_at.insert(name.to_string(), now);
                            state
                                .scrubs_started
                                .insert(name.to_string(), now.to_string());
                            state.scrubs_started_total += 1;
                            report.scrubbed.push(name.to_string());
                        }
                        Err(e) => {
                            tracing::error!(pool = %name, error = %e, "scheduled scrub did not start");
                            report.errors.push(format!("scrub of {name}: {e}"));
                        }
                    }
                }
            }
            Err(e) => report.errors.push(format!("zpool status: {e}")),
        }
    }
    state.last_tick = Some(now.to_string());
    state.ticks += 1;
    state.errors_total += report.errors.len() as u64;
    state.snapshots_taken_total += report.taken.len() as u64;
    state.snapshots_destroyed_total += report.destroyed.len() as u64;
    report
}
