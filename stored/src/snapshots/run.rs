//! One pass of a snapshot policy against [`Zfs`]: take what is due, then prune. The
//! scheduler calls it every tick; `applctl storage prune --dry-run` calls it with
//! `dry_run` to show the plan without changing anything.

use std::collections::BTreeSet;

use appliance::model::SnapshotPolicy;

use super::{PrunePlan, Retention, due_names, plan_prune};
use crate::time::UtcTime;
use crate::zfs::{Zfs, ZfsError};

/// What one pass did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRun {
    /// Snapshots taken, full names.
    pub taken: Vec<String>,
    /// One plan per dataset the policy covers (children included when recursive).
    pub plans: Vec<PrunePlan>,
    /// Snapshots destroyed, full names (empty when dry).
    pub destroyed: Vec<String>,
}

/// Takes the due snapshots of every dataset of the policy (a recursive policy snapshots
/// each tree atomically, in one lzc call), then prunes every dataset, all destroys in one
/// batched call. `needed` (full names) is what replication still needs.
pub fn run_policy(
    zfs: &mut dyn Zfs,
    policy: &SnapshotPolicy,
    now: UtcTime,
    needed: &BTreeSet<String>,
    dry_run: bool,
) -> Result<PolicyRun, ZfsError> {
    let retention = Retention::from(policy);
    let all: Vec<String> = if policy.recursive {
        zfs.datasets()?.into_iter().map(|d| d.name).collect()
    } else {
        Vec::new()
    };
    let mut taken = Vec::new();
    let mut covered = Vec::new();
    for top in &policy.datasets {
        let tree: Vec<String> = if policy.recursive {
            all.iter()
                .filter(|d| {
                    d.as_str() == top.as_str()
                        || d.strip_prefix(top.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                })
                .cloned()
                .collect()
        } else {
            vec![top.to_string()]
        };
        // The top dataset decides what is due; its tree shares the names.
        let existing = zfs.snapshots(top.as_str(), false)?;
        let names = due_names(&retention, now, &existing);
        // One call per name: lzc_snapshot refuses two snapshots of one dataset in a call
        // (EXDEV), so periods due together (hourly and daily at midnight) go one by one,
        // each still atomic over the whole tree.
        for n in &names {
            let full: Vec<String> = tree.iter().map(|d| format!("{d}@{n}")).collect();
            if !dry_run {
                zfs.snapshot(&full, &[])?;
            }
            taken.extend(full);
        }
        covered.extend(tree);
    }
    covered.sort();
    covered.dedup();
    let mut plans = Vec::new();
    for ds in &covered {
        let mut snaps = zfs.snapshots(ds, false)?;
        if dry_run {
            // Show the plan as it will be once the due snapshots exist.
            for name in taken
                .iter()
                .filter_map(|t| t.strip_prefix(&format!("{ds}@")))
            {
                snaps.push(crate::zfs::Snapshot {
                    dataset: ds.clone(),
                    name: name.to_owned(),
                    guid: 0,
                    createtxg: u64::MAX,
                    creation: now.0,
                    userrefs: 0,
                });
            }
        }
        plans.push(plan_prune(ds, &retention, now, &snaps, needed));
    }
    let destroy: Vec<String> = plans.iter().flat_map(|p| p.destroy.clone()).collect();
    let mut destroyed = Vec::new();
    if !destroy.is_empty() && !dry_run {
        zfs.destroy_snapshots(&destroy)?;
        destroyed = destroy;
    }
    for p in &plans {
        if !p.rpo.met {
            tracing::warn!(dataset = %p.dataset, lag_secs = ?p.rpo.lag_secs, target_secs = p.rpo.target_secs, "snapshot RPO missed");
        }
    }
    Ok(PolicyRun {
        taken,
        plans,
        destroyed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::FakeZfs;

    fn policy(toml_text: &str) -> SnapshotPolicy {
        toml::from_str(toml_text).unwrap()
    }

    fn fake() -> FakeZfs {
        FakeZfs::new()
            .with_pool("tank", Default::default(), true)
            .with_dataset("tank/media/photos")
            .with_dataset("tank/docs")
    }

    fn at(s: &str) -> UtcTime {
        UtcTime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn a_recursive_policy_snapshots_the_tree_at_once_and_prunes_in_one_batch() {
        let p = policy("datasets = [\"tank/media\"]\nrecursive = true\nhourly = 2\n");
        let mut zfs = fake();
        let none = BTreeSet::new();
        for h in 0..4 {
            let now = at(&format!("2026-11-25T{h:02}:00:00Z"));
            zfs.now = now.0;
            let run = run_policy(&mut zfs, &p, now, &none, false).unwrap();
            assert_eq!(
                run.taken,
                [
                    format!("tank/media@stored_hourly_2026-11-25T{h:02}:00:00Z"),
                    format!("tank/media/photos@stored_hourly_2026-11-25T{h:02}:00:00Z"),
                ]
            );
            assert_eq!(run.plans.len(), 2);
        }
        // Two hours pruned from two datasets, one batched destroy per run.
        assert_eq!(zfs.destroy_calls, 2);
        let mut left = zfs.snapshot_names();
        left.sort();
        assert_eq!(
            left,
            [
                "tank/media/photos@stored_hourly_2026-11-25T02:00:00Z",
                "tank/media/photos@stored_hourly_2026-11-25T03:00:00Z",
                "tank/media@stored_hourly_2026-11-25T02:00:00Z",
                "tank/media@stored_hourly_2026-11-25T03:00:00Z",
            ]
        );
        // tank/docs is outside the policy and has nothing.
        assert!(zfs.snapshots("tank/docs", false).unwrap().is_empty());
    }

    #[test]
    fn a_held_base_survives_and_dry_run_changes_nothing() {
        let p = policy("datasets = [\"tank/docs\"]\nhourly = 1\n");
        let mut zfs = fake();
        let none = BTreeSet::new();
        let first = at("2026-11-25T00:00:00Z");
        run_policy(&mut zfs, &p, first, &none, false).unwrap();
        let base = "tank/docs@stored_hourly_2026-11-25T00:00:00Z".to_owned();
        zfs.hold(&[(base.clone(), "stored-repl-offsite".into())])
            .unwrap();
        let writes = zfs.writes;
        let dry = run_policy(&mut zfs, &p, at("2026-11-25T01:00:00Z"), &none, true).unwrap();
        assert_eq!(zfs.writes, writes, "a dry run writes nothing");
        assert_eq!(dry.taken, ["tank/docs@stored_hourly_2026-11-25T01:00:00Z"]);
        assert_eq!(dry.plans[0].destroy, [] as [String; 0]);
        assert!(dry.destroyed.is_empty());
        run_policy(&mut zfs, &p, at("2026-11-25T01:00:00Z"), &none, false).unwrap();
        run_policy(&mut zfs, &p, at("2026-11-25T02:00:00Z"), &none, false).unwrap();
        let left = zfs.snapshot_names();
        assert!(left.contains(&base), "{left:?}");
        assert_eq!(left.len(), 2);
    }
}
