//! The pruning plan and the "what is due now" question, sanoid-style: each period keeps
//! its newest `count` snapshots; older ones of that period go, unless replication still
//! needs them (a hold, or the `needed` set the replication planner passes in). Snapshots
//! stored did not take are never touched.

use std::collections::{BTreeMap, BTreeSet};

use super::{Period, RPO_SLACK_SECS, Retention, SnapshotName};
use crate::time::UtcTime;
use crate::zfs::Snapshot;

/// Why a snapshot of ours survives the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// Among the newest `count` of its period; `rank` 1 is the newest.
    Retained { rank: u32 },
    /// Has user holds (`zfs holds`): replication's incremental base, or an admin's.
    Held { holds: u64 },
    /// Named in the `needed` set.
    Needed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Full name, `dataset@snapshot`.
    pub name: String,
    pub period: Period,
    pub reason: KeepReason,
}

/// Whether a policy's recovery point objective, the length of its finest period, holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rpo {
    /// The finest period kept; `None` when the policy keeps nothing.
    pub period: Option<Period>,
    /// The promise, in seconds.
    pub target_secs: i64,
    /// The newest snapshot of ours, of any period.
    pub newest: Option<UtcTime>,
    /// Seconds since the newest snapshot (negative when the clock went backwards).
    pub lag_secs: Option<i64>,
    /// `lag <= target + RPO_SLACK_SECS`.
    pub met: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePlan {
    pub dataset: String,
    /// Full names to destroy, oldest first.
    pub destroy: Vec<String>,
    /// Our snapshots that stay, newest first within each period.
    pub keep: Vec<Kept>,
    /// Snapshots stored did not take (left alone).
    pub foreign: Vec<String>,
    pub rpo: Rpo,
}

/// Plans the pruning of one dataset's snapshots. `needed` holds full names
/// (`dataset@snapshot`) that must stay whatever the counts say.
pub fn plan_prune(
    dataset: &str,
    retention: &Retention,
    now: UtcTime,
    snapshots: &[Snapshot],
    needed: &BTreeSet<String>,
) -> PrunePlan {
    let mut by_period: BTreeMap<Period, Vec<(SnapshotName, &Snapshot)>> = BTreeMap::new();
    let mut foreign = Vec::new();
    for s in snapshots {
        match SnapshotName::parse(&s.name) {
            Some(n) => by_period.entry(n.period).or_default().push((n, s)),
            None => foreign.push(s.full_name()),
        }
    }
    let mut keep = Vec::new();
    let mut destroy: Vec<(UtcTime, String)> = Vec::new();
    for (period, mut snaps) in by_period {
        // Newest first; equal times cannot happen within a period (one name per time).
        snaps.sort_by_key(|s| std::cmp::Reverse(s.0));
        let count = retention.count(period);
        for (i, (name, s)) in snaps.into_iter().enumerate() {
            let full = s.full_name();
            let reason = match u32::try_from(i) {
                Ok(i) if i < count => Some(KeepReason::Retained { rank: i + 1 }),
                _ if s.userrefs > 0 => Some(KeepReason::Held { holds: s.userrefs }),
                _ if needed.contains(&full) => Some(KeepReason::Needed),
                _ => None,
            };
            match reason {
                Some(reason) => keep.push(Kept {
                    name: full,
                    period,
                    reason,
                }),
                None => destroy.push((name.time, full)),
            }
        }
    }
    destroy.sort();
    PrunePlan {
        dataset: dataset.to_owned(),
        destroy: destroy.into_iter().map(|(_, n)| n).collect(),
        keep,
        foreign,
        rpo: rpo(retention, now, snapshots),
    }
}

fn rpo(retention: &Retention, now: UtcTime, snapshots: &[Snapshot]) -> Rpo {
    let newest = snapshots
        .iter()
        .filter_map(|s| SnapshotName::parse(&s.name))
        .map(|n| n.time)
        .max();
    let period = retention.finest();
    let target_secs = period.map_or(0, |p| p.max_len_secs(retention.frequent_interval_secs));
    let lag_secs = newest.map(|t| now.0.saturating_sub(t.0));
    let met = match (period, lag_secs) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(_), Some(lag)) => lag <= target_secs.saturating_add(RPO_SLACK_SECS),
    };
    Rpo {
        period,
        target_secs,
        newest,
        lag_secs,
        met,
    }
}

/// The periods that need a snapshot at `now`: those that keep something and have no
/// snapshot of ours in the slot holding `now`. A snapshot dated after `now` (the clock
/// went back) counts as present, so a clock step never doubles snapshots.
pub fn due(retention: &Retention, now: UtcTime, snapshots: &[Snapshot]) -> Vec<Period> {
    let ours: Vec<SnapshotName> = snapshots
        .iter()
        .filter_map(|s| SnapshotName::parse(&s.name))
        .collect();
    Period::ALL
        .into_iter()
        .filter(|p| retention.count(*p) > 0)
        .filter(|p| {
            let start = p.slot_start(now, retention.frequent_interval_secs);
            !ours.iter().any(|n| n.period == *p && n.time >= start)
        })
        .collect()
}

/// The snapshot names (after `@`) to take at `now`.
pub fn due_names(retention: &Retention, now: UtcTime, snapshots: &[Snapshot]) -> Vec<String> {
    due(retention, now, snapshots)
        .into_iter()
        .map(|period| SnapshotName { period, time: now }.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::{FakeZfs, Zfs};
    use proptest::prelude::*;

    const DS: &str = "tank/media";

    fn at(s: &str) -> UtcTime {
        UtcTime::parse_rfc3339(s).unwrap()
    }

    fn snap(period: Period, time: UtcTime, userrefs: u64) -> Snapshot {
        Snapshot {
            dataset: DS.into(),
            name: SnapshotName { period, time }.to_string(),
            guid: time.0 as u64,
            createtxg: time.0 as u64,
            creation: time.0,
            userrefs,
        }
    }

    fn foreign(name: &str) -> Snapshot {
        Snapshot {
            dataset: DS.into(),
            name: name.into(),
            guid: 1,
            createtxg: 1,
            creation: 0,
            userrefs: 0,
        }
    }

    fn retention(counts: [u32; 6]) -> Retention {
        Retention {
            frequently: counts[0],
            frequent_interval_secs: 900,
            hourly: counts[1],
            daily: counts[2],
            weekly: counts[3],
            monthly: counts[4],
            yearly: counts[5],
        }
    }

    fn hours(n: i64) -> Vec<Snapshot> {
        (0..n)
            .map(|h| {
                snap(
                    Period::Hourly,
                    UtcTime(at("2026-11-25T00:00:00Z").0 + h * 3600),
                    0,
                )
            })
            .collect()
    }

    #[test]
    fn keeps_the_newest_per_period_and_never_touches_foreign_snapshots() {
        let mut snaps = hours(6);
        snaps.push(foreign("before-upgrade"));
        snaps.push(foreign("autosnap_2026-11-25_00:00:00_hourly"));
        let r = retention([0, 3, 0, 0, 0, 0]);
        let plan = plan_prune(DS, &r, at("2026-11-25T05:10:00Z"), &snaps, &BTreeSet::new());
        assert_eq!(
            plan.destroy,
            [
                "tank/media@stored_hourly_2026-11-25T00:00:00Z",
                "tank/media@stored_hourly_2026-11-25T01:00:00Z",
                "tank/media@stored_hourly_2026-11-25T02:00:00Z",
            ]
        );
        assert_eq!(plan.keep.len(), 3);
        assert_eq!(
            plan.keep[0].name,
            "tank/media@stored_hourly_2026-11-25T05:00:00Z"
        );
        assert_eq!(plan.keep[0].reason, KeepReason::Retained { rank: 1 });
        assert_eq!(plan.foreign.len(), 2);
        assert!(plan.rpo.met);
        assert_eq!(plan.rpo.lag_secs, Some(600));
    }

    #[test]
    fn held_and_needed_snapshots_stay() {
        let mut snaps = hours(6);
        snaps[0].userrefs = 1;
        let needed = BTreeSet::from([format!("{DS}@{}", snaps[1].name)]);
        let r = retention([0, 3, 0, 0, 0, 0]);
        let plan = plan_prune(DS, &r, at("2026-11-25T05:10:00Z"), &snaps, &needed);
        assert_eq!(plan.destroy, [snaps[2].full_name()]);
        assert!(plan.keep.contains(&Kept {
            name: snaps[0].full_name(),
            period: Period::Hourly,
            reason: KeepReason::Held { holds: 1 },
        }));
        assert!(plan.keep.contains(&Kept {
            name: snaps[1].full_name(),
            period: Period::Hourly,
            reason: KeepReason::Needed,
        }));
    }

    #[test]
    fn a_period_dropped_from_the_policy_is_pruned_entirely() {
        let snaps = vec![
            snap(Period::Daily, at("2026-11-24T00:00:00Z"), 0),
            snap(Period::Hourly, at("2026-11-25T00:00:00Z"), 0),
        ];
        let plan = plan_prune(
            DS,
            &retention([0, 24, 0, 0, 0, 0]),
            at("2026-11-25T00:30:00Z"),
            &snaps,
            &BTreeSet::new(),
        );
        assert_eq!(plan.destroy, [snaps[0].full_name()]);
    }

    #[test]
    fn rpo_is_the_finest_period() {
        let r = retention([4, 24, 7, 0, 0, 0]);
        let snaps = vec![snap(Period::Hourly, at("2026-11-25T10:00:00Z"), 0)];
        let now = at("2026-11-25T10:16:00Z");
        let rpo = plan_prune(DS, &r, now, &snaps, &BTreeSet::new()).rpo;
        assert_eq!(
            (rpo.period, rpo.target_secs),
            (Some(Period::Frequently), 900)
        );
        // 16 minutes behind a 15-minute promise, within the minute of slack.
        assert!(rpo.met);
        let later = UtcTime(now.0 + 60);
        assert!(!plan_prune(DS, &r, later, &snaps, &BTreeSet::new()).rpo.met);
        assert!(!plan_prune(DS, &r, now, &[], &BTreeSet::new()).rpo.met);
    }

    #[test]
    fn due_takes_one_snapshot_per_slot() {
        let r = retention([4, 24, 7, 4, 12, 1]);
        let now = at("2026-11-25T10:07:00Z");
        assert_eq!(due(&r, now, &[]), Period::ALL);
        let taken: Vec<Snapshot> = due(&r, now, &[])
            .into_iter()
            .map(|p| snap(p, now, 0))
            .collect();
        assert_eq!(due(&r, at("2026-11-25T10:14:59Z"), &taken), []);
        assert_eq!(
            due(&r, at("2026-11-25T10:15:00Z"), &taken),
            [Period::Frequently]
        );
        assert_eq!(
            due(&r, at("2026-11-26T00:00:00Z"), &taken),
            [Period::Frequently, Period::Hourly, Period::Daily]
        );
        assert_eq!(
            due(&r, at("2026-11-30T00:00:00Z"), &taken),
            [
                Period::Frequently,
                Period::Hourly,
                Period::Daily,
                Period::Weekly
            ]
        );
        assert_eq!(
            due_names(&r, at("2026-11-25T11:00:00Z"), &taken),
            [
                "stored_frequently_2026-11-25T11:00:00Z",
                "stored_hourly_2026-11-25T11:00:00Z"
            ]
        );
        // A clock stepped back finds the "future" snapshots and takes nothing twice.
        assert_eq!(due(&r, at("2026-11-25T10:07:30Z"), &taken), []);
    }

    /// A year of 15-minute ticks against the fake: take what is due, prune what the plan
    /// says. At the end exactly the expected snapshots remain.
    #[test]
    fn a_simulated_year_keeps_exactly_the_expected_snapshots() {
        let r = retention([4, 24, 7, 4, 12, 1]);
        let mut zfs = FakeZfs::new()
            .with_pool("tank", Default::default(), true)
            .with_dataset(DS);
        let start = at("2026-01-01T00:00:00Z");
        let end = at("2027-01-01T00:00:00Z");
        let mut t = start;
        let mut destroy_calls = 0;
        while t < end {
            zfs.now = t.0;
            let snaps = zfs.snapshots(DS, false).unwrap();
            // One name per call: the kernel refuses two snapshots of one dataset in a call.
            for n in due_names(&r, t, &snaps) {
                zfs.snapshot(&[format!("{DS}@{n}")], &[]).unwrap();
            }
            let snaps = zfs.snapshots(DS, false).unwrap();
            let plan = plan_prune(DS, &r, t, &snaps, &BTreeSet::new());
            assert!(plan.rpo.met, "RPO missed at {t}");
            if !plan.destroy.is_empty() {
                zfs.destroy_snapshots(&plan.destroy).unwrap();
                destroy_calls += 1;
            }
            t = UtcTime(t.0 + 900);
        }
        let mut expected: Vec<String> = Vec::new();
        let mut add = |p: Period, times: &[&str]| {
            for s in times {
                expected.push(format!("{DS}@stored_{p}_{s}"));
            }
        };
        add(
            Period::Frequently,
            &[
                "2026-12-31T23:00:00Z",
                "2026-12-31T23:15:00Z",
                "2026-12-31T23:30:00Z",
                "2026-12-31T23:45:00Z",
            ],
        );
        let hourly: Vec<String> = (0..24)
            .map(|h| format!("2026-12-31T{h:02}:00:00Z"))
            .collect();
        add(
            Period::Hourly,
            &hourly.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let daily: Vec<String> = (25..=31)
            .map(|d| format!("2026-12-{d}T00:00:00Z"))
            .collect();
        add(
            Period::Daily,
            &daily.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        add(
            Period::Weekly,
            &[
                "2026-12-07T00:00:00Z",
                "2026-12-14T00:00:00Z",
                "2026-12-21T00:00:00Z",
                "2026-12-28T00:00:00Z",
            ],
        );
        let monthly: Vec<String> = (1..=12)
            .map(|m| format!("2026-{m:02}-01T00:00:00Z"))
            .collect();
        add(
            Period::Monthly,
            &monthly.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        add(Period::Yearly, &["2026-01-01T00:00:00Z"]);
        expected.sort();
        let mut got = zfs.snapshot_names();
        got.sort();
        assert_eq!(got, expected);
        assert_eq!(zfs.destroy_calls, destroy_calls);
    }

    /// Random snapshot sets: per period a set of distinct times, some held, some needed,
    /// plus foreign snapshots.
    fn arb_case() -> impl Strategy<Value = (Retention, Vec<Snapshot>, BTreeSet<String>)> {
        let times = prop::collection::btree_set(0i64..100_000, 0..12);
        (
            prop::array::uniform6(0u32..5),
            prop::collection::vec((times, prop::collection::vec(any::<(bool, bool)>(), 12)), 6),
            0usize..3,
        )
            .prop_map(|(counts, per_period, n_foreign)| {
                let r = retention(counts);
                let mut snaps = Vec::new();
                let mut needed = BTreeSet::new();
                for (p, (times, flags)) in Period::ALL.into_iter().zip(per_period) {
                    for (t, (held, need)) in times.into_iter().zip(flags) {
                        let s = snap(p, UtcTime(1_700_000_000 + t * 60), u64::from(held));
                        if need {
                            needed.insert(s.full_name());
                        }
                        snaps.push(s);
                    }
                }
                for i in 0..n_foreign {
                    snaps.push(foreign(&format!("manual-{i}")));
                }
                (r, snaps, needed)
            })
    }

    const NOW: UtcTime = UtcTime(1_800_000_000);

    proptest! {
        #[test]
        fn never_deletes_the_newest_of_a_kept_period((r, snaps, needed) in arb_case()) {
            let plan = plan_prune(DS, &r, NOW, &snaps, &needed);
            for p in Period::ALL.into_iter().filter(|p| r.count(*p) > 0) {
                let newest = snaps
                    .iter()
                    .filter_map(|s| SnapshotName::parse(&s.name).map(|n| (n, s)))
                    .filter(|(n, _)| n.period == p)
                    .max_by_key(|(n, _)| n.time);
                if let Some((_, s)) = newest {
                    prop_assert!(!plan.destroy.contains(&s.full_name()));
                }
            }
        }

        #[test]
        fn never_deletes_needed_held_or_foreign((r, snaps, needed) in arb_case()) {
            let plan = plan_prune(DS, &r, NOW, &snaps, &needed);
            for s in &snaps {
                let ours = SnapshotName::parse(&s.name).is_some();
                if !ours || s.userrefs > 0 || needed.contains(&s.full_name()) {
                    prop_assert!(!plan.destroy.contains(&s.full_name()), "{}", s.full_name());
                }
            }
        }

        #[test]
        fn keeps_exactly_the_configured_count((r, snaps, needed) in arb_case()) {
            let plan = plan_prune(DS, &r, NOW, &snaps, &needed);
            for p in Period::ALL {
                let existing: Vec<&Snapshot> = snaps
                    .iter()
                    .filter(|s| SnapshotName::parse(&s.name).is_some_and(|n| n.period == p))
                    .collect();
                let retained = plan
                    .keep
                    .iter()
                    .filter(|k| k.period == p && matches!(k.reason, KeepReason::Retained { .. }))
                    .count();
                let want = (r.count(p) as usize).min(existing.len());
                prop_assert_eq!(retained, want);
                // Beyond the count, only what is held or needed survives.
                let kept = plan.keep.iter().filter(|k| k.period == p).count();
                let protected_extra = plan
                    .keep
                    .iter()
                    .filter(|k| k.period == p && !matches!(k.reason, KeepReason::Retained { .. }))
                    .count();
                prop_assert_eq!(kept, want + protected_extra);
                prop_assert_eq!(kept + plan.destroy.iter().filter(|d| existing.iter().any(|s| &s.full_name() == *d)).count(), existing.len());
                if existing.iter().all(|s| s.userrefs == 0 && !needed.contains(&s.full_name())) {
                    prop_assert_eq!(kept, want);
                }
            }
        }

        #[test]
        fn pruning_is_idempotent((r, snaps, needed) in arb_case()) {
            let first = plan_prune(DS, &r, NOW, &snaps, &needed);
            let left: Vec<Snapshot> = snaps
                .iter()
                .filter(|s| !first.destroy.contains(&s.full_name()))
                .cloned()
                .collect();
            let second = plan_prune(DS, &r, NOW, &left, &needed);
            prop_assert!(second.destroy.is_empty(), "{:?}", second.destroy);
            prop_assert_eq!(second.keep, first.keep);
        }
    }
}
