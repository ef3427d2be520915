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

use crate::scrub::{ScrubHistory, needs_history, parse_history, parse_scan, scrub_due};
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
    /// Scrubs this process started (the last fallback when neither the `scan:` line nor
    /// the pool's history shows when a scrub last completed).
    pub scrubs_started: BTreeMap<String, String>,
    #[serde(skip)]
    scrub_started_at: BTreeMap<String, UtcTime>,
    /// Per pool, the `scan:` text its history was last read for and what it said: the
    /// history (up to megabytes) is read again only when the scan line changes.
    #[serde(skip)]
    scrub_history: BTreeMap<String, (String, ScrubHistory)>,
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
                    let scan = parse_scan(&observed.scan);
                    let history = if needs_history(scan) {
                        scrub_history(zfs, name.as_str(), &observed.scan, state)
                    } else {
                        ScrubHistory::default()
                    };
                    if !scrub_due(scan, &history, last, pool.scrub_interval.as_secs(), now) {
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

/// What `pool`'s history says about scrubs, read once per `scan:` text. A history that
/// cannot be read counts as empty (the scrub this process started, if any, decides) and
/// is tried again at the next tick.
fn scrub_history(zfs: &dyn Zfs, pool: &str, scan: &str, state: &mut ScheduleState) -> ScrubHistory {
    if let Some((seen, h)) = state.scrub_history.get(pool)
        && seen == scan
    {
        return *h;
    }
    match zfs.pool_history(pool) {
        Ok(text) => {
            let h = parse_history(&text);
            tracing::debug!(pool, completed = ?h.completed, canceled = ?h.canceled, "scrubs in the pool's history");
            state
                .scrub_history
                .insert(pool.to_owned(), (scan.to_owned(), h));
            h
        }
        Err(e) => {
            tracing::warn!(pool, error = %e, "the pool's history could not be read; the last completed scrub is unknown");
            ScrubHistory::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::FakeZfs;

    const CONFIG: &str = r#"version = 1
[storage.pools.tank]
vdevs = [{ layout = "mirror", disks = ["/dev/disk/by-id/d1", "/dev/disk/by-id/d2"] }]
scrub_interval = "30d"
"#;

    fn at(s: &str) -> UtcTime {
        UtcTime::parse_rfc3339(s).unwrap()
    }

    /// A fresh process (a new state) over a pool whose scan line shows a resilver or a
    /// canceled scrub: the interval counts from the last completed scrub in the pool's
    /// history, which is read once per scan line.
    #[test]
    fn a_fresh_process_after_a_resilver_or_a_cancel_keeps_the_interval() {
        let cfg = appliance::load_str(CONFIG).unwrap();
        let layout = crate::pools::declared_layout(cfg.storage.pools.values().next().unwrap());
        let mut zfs = FakeZfs::new().with_pool("tank", layout, true);
        {
            let p = zfs.pools.get_mut("tank").unwrap();
            p.scan = Some(
                "resilvered 1.5G in 01:30:00 with 0 errors on Tue Nov 10 13:30:00 2026".into(),
            );
            p.history = "History for 'tank':\n\
                2026-11-01.00:00:00 [txg:1000] scan setup func=1 mintxg=0 maxtxg=1000\n\
                2026-11-01.02:00:00 [txg:1100] scan done errors=0\n\
                2026-11-10.12:00:00 [txg:2000] scan setup func=2 mintxg=3 maxtxg=2000\n\
                2026-11-10.13:30:00 [txg:2100] scan done errors=0\n"
                .into();
        }
        let none = BTreeSet::new();
        let mut state = ScheduleState::default();
        for t in [
            "2026-11-10T14:00:00Z",
            "2026-11-20T00:00:00Z",
            "2026-11-30T23:00:00Z",
        ] {
            let r = tick(&mut zfs, &cfg, at(t), &none, &mut state);
            assert!(r.scrubbed.is_empty(), "{t}: {r:?}");
        }
        assert_eq!(zfs.history_reads.get(), 1, "read once for one scan line");
        // A restart: a new state, the history read again, still not due.
        let mut state = ScheduleState::default();
        let r = tick(
            &mut zfs,
            &cfg,
            at("2026-11-30T23:30:00Z"),
            &none,
            &mut state,
        );
        assert!(r.scrubbed.is_empty(), "{r:?}");
        let r = tick(
            &mut zfs,
            &cfg,
            at("2026-12-01T02:00:00Z"),
            &none,
            &mut state,
        );
        assert_eq!(r.scrubbed, ["tank"]);

        // Then canceled by hand on 2 Dec (the history records it; the last completed one
        // is still 1 Nov): left alone for a day, then started again in a fresh process.
        {
            let p = zfs.pools.get_mut("tank").unwrap();
            p.scan = Some("scrub canceled on Wed Dec  2 09:00:00 2026".into());
            p.history.push_str(
                "2026-12-01.02:00:00 [txg:3000] scan setup func=1 mintxg=0 maxtxg=3000\n\
                 2026-12-02.09:00:00 [txg:3500] scan cancelled errors=0\n",
            );
        }
        let mut state = ScheduleState::default();
        let r = tick(
            &mut zfs,
            &cfg,
            at("2026-12-02T20:00:00Z"),
            &none,
            &mut state,
        );
        assert!(r.scrubbed.is_empty(), "{r:?}");
        let r = tick(
            &mut zfs,
            &cfg,
            at("2026-12-03T09:00:00Z"),
            &none,
            &mut state,
        );
        assert_eq!(r.scrubbed, ["tank"]);
        assert_eq!(zfs.pools["tank"].scrubs, 2);
    }
}
