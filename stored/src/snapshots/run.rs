//! One pass of a snapshot policy against [`Zfs`]: take what is due, then prune. The
//! scheduler calls it every tick; `applctl storage prune --dry-run` calls it with
//! `dry_run` to show the plan without changing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use appliance::model::SnapshotPolicy;

use super::{PrunePlan, Retention, due_names, plan_prune};
use crate::time::UtcTime;
use crate::zfs::lzc::LzcError;
use crate::zfs::{Snapshot, Zfs, ZfsError};

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
    let started = Instant::now();
    // Where a pass's listing time goes (logged with the destroy's): the names of the
    // datasets and snapshots, the snapshots taken.
    let (mut names_ms, mut take_ms) = (0u128, 0u128);
    // One listing per top dataset, its whole tree at once (datasets and snapshot names,
    // one channel program): a `zfs list` per dataset costs a process and a walk of the
    // pool each, and a `zfs get` of every dataset of every pool, to find the tree, read
    // properties the pass does not need.
    // Listed before taking: what is taken now is added below, and a snapshot someone else
    // takes meanwhile is merely not pruned this pass.
    let mut listed: BTreeMap<String, Vec<Snapshot>> = BTreeMap::new();
    let mut taken = Vec::new();
    let mut covered = Vec::new();
    for top in &policy.datasets {
        let naming = Instant::now();
        // Names only: one channel program lists 10,100 snapshots in about a second where
        // `zfs list` with their hold counts took 52-114 s (TCG). Holds are then the
        // kernel's to check, in the destroy's own txg; a dry run asks for the candidates'.
        let names_listed = zfs.snapshot_names_under(top.as_str(), policy.recursive)?;
        let tree: Vec<String> = if policy.recursive {
            names_listed.datasets
        } else {
            vec![top.to_string()]
        };
        let mut by_dataset: BTreeMap<String, Vec<Snapshot>> =
            tree.iter().map(|d| (d.clone(), Vec::new())).collect();
        for (ds, name) in names_listed.snapshots {
            if let Some(v) = by_dataset.get_mut(&ds) {
                v.push(unlisted(&ds, &name, 0));
            }
        }
        names_ms += naming.elapsed().as_millis();
        // Two tops of one policy may overlap; the later listing is as good as the former.
        listed.extend(by_dataset);
        // The top dataset decides what is due; its tree shares the names.
        let existing = listed.get(top.as_str()).map_or(&[][..], Vec::as_slice);
        let names = due_names(&retention, now, existing);
        // A child made since the period's snapshot of the top lacks it: it gets its own
        // now rather than at the next slot (the policy's RPO would be missed till then).
        let mut late: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for child in tree.iter().filter(|d| d.as_str() != top.as_str()) {
            let have = listed.get(child).map_or(&[][..], Vec::as_slice);
            for n in due_names(&retention, now, have) {
                if !names.contains(&n) {
                    late.entry(n).or_default().push(child.clone());
                }
            }
        }
        // One call per name: lzc_snapshot refuses two snapshots of one dataset in a call
        // (EXDEV), so periods due together (hourly and daily at midnight) go one by one,
        // each still atomic over the whole tree.
        let taking = Instant::now();
        for n in &names {
            let full: Vec<String> = tree.iter().map(|d| format!("{d}@{n}")).collect();
            if !dry_run {
                zfs.snapshot(&full, &[])?;
            }
            taken.extend(full);
        }
        for (n, children) in late {
            let full: Vec<String> = children.iter().map(|d| format!("{d}@{n}")).collect();
            if !dry_run {
                zfs.snapshot(&full, &[])?;
            }
            taken.extend(full);
        }
        take_ms += taking.elapsed().as_millis();
        covered.extend(tree);
    }
    covered.sort();
    covered.dedup();
    let listed_count: usize = listed.values().map(Vec::len).sum();
    let list_ms = started.elapsed().as_millis();
    let planning = Instant::now();
    // The plan sees what was just taken (or, dry, would be) as present: it is the newest
    // of its period, and a snapshot is never held or needed the moment it is taken.
    for t in &taken {
        if let Some((ds, name)) = t.split_once('@')
            && let Some(v) = listed.get_mut(ds)
        {
            v.push(unlisted(ds, name, now.0));
        }
    }
    let plan_all = |listed: &BTreeMap<String, Vec<Snapshot>>| -> Vec<PrunePlan> {
        covered
            .iter()
            .map(|ds| {
                let snaps = listed.get(ds).map_or(&[][..], Vec::as_slice);
                plan_prune(ds, &retention, now, snaps, needed)
            })
            .collect()
    };
    let mut plans = plan_all(&listed);
    if dry_run && mark_held(zfs, &plans, &mut listed, |_| true)? {
        plans = plan_all(&listed);
    }
    // Oldest first within each dataset, as the plans list them. Newest first was faster
    // only where the run reached the head (nothing kept after it); with the policy's newest
    // kept, as in every pass, it was no faster (docs/storage.md, "Prune order").
    let destroy: Vec<String> = plans.iter().flat_map(|p| p.destroy.clone()).collect();
    let plan_ms = planning.elapsed().as_millis();
    let destroying = Instant::now();
    let mut destroyed = Vec::new();
    if !destroy.is_empty() && !dry_run {
        destroyed = destroy_unheld(zfs, destroy.clone())?;
    }
    if destroyed.len() < destroy.len() && !dry_run {
        // What the kernel refused is still there: its holds say why, in the plans shown.
        let gone: BTreeSet<&str> = destroyed.iter().map(String::as_str).collect();
        if mark_held(zfs, &plans, &mut listed, |n| !gone.contains(n))? {
            plans = plan_all(&listed);
        }
    }
    if !destroyed.is_empty() {
        tracing::info!(
            datasets = covered.len(),
            listed = listed_count,
            taken = taken.len(),
            destroyed = destroyed.len(),
            list_ms,
            names_ms,
            take_ms,
            plan_ms,
            destroy_ms = destroying.elapsed().as_millis(),
            "pruned"
        );
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

/// Sets the hold count of every snapshot the plans would destroy that `exists` and has
/// holds, so that the plans show it kept: before a dry run, and after a real destroy for
/// what the kernel refused. Whether any was held.
fn mark_held(
    zfs: &dyn Zfs,
    plans: &[PrunePlan],
    listed: &mut BTreeMap<String, Vec<Snapshot>>,
    exists: impl Fn(&str) -> bool,
) -> Result<bool, ZfsError> {
    let mut any = false;
    for p in plans {
        let Some(snaps) = listed.get_mut(&p.dataset) else {
            continue;
        };
        for s in snaps.iter_mut() {
            // Those listed exist; those to be taken by this pass cannot be held yet.
            let full = s.full_name();
            if s.creation == 0 && p.destroy.contains(&full) && exists(&full) {
                let holds = zfs.holds(&full)?.len() as u64;
                if holds > 0 {
                    s.userrefs = holds;
                    any = true;
                }
            }
        }
    }
    Ok(any)
}

/// A snapshot as the plan sees it: listed by name (`creation` 0), or just taken (or, dry,
/// to be taken) at `creation`. The plan reads only the name and the hold count.
fn unlisted(dataset: &str, name: &str, creation: i64) -> Snapshot {
    Snapshot {
        dataset: dataset.to_owned(),
        name: name.to_owned(),
        guid: 0,
        createtxg: 0,
        creation,
        userrefs: 0,
    }
}

/// Destroys `names` in the order given (oldest first within each dataset). The kernel
/// refuses a snapshot held since the listing (replication moving its base forward) or one
/// a clone depends on; the destroy goes on without it, so one such snapshot does not keep
/// a thousand others. The hold decides; nothing held is destroyed. Returns what went.
fn destroy_unheld(zfs: &mut dyn Zfs, mut names: Vec<String>) -> Result<Vec<String>, ZfsError> {
    let refused = match zfs.destroy_snapshots(&names) {
        Ok(()) => return Ok(names),
        Err(ZfsError::Lzc(LzcError::Failed { per_item, .. })) if !per_item.is_empty() => per_item,
        Err(e) => return Err(e),
    };
    let (held, other): (Vec<_>, Vec<_>) = refused
        .iter()
        .partition(|(_, e)| e.kind() == std::io::ErrorKind::ResourceBusy);
    if !held.is_empty() {
        // Expected: the listing has no hold counts, and replication holds its base.
        let held: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
        tracing::debug!(?held, "held snapshots stay");
    }
    for (name, e) in other {
        tracing::warn!(snapshot = %name, error = %e, "the kernel refused to destroy a snapshot; it stays");
    }
    let refused: BTreeSet<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
    names.retain(|n| !refused.contains(n.as_str()));
    Ok(names)
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
        // Two hours pruned from two datasets, one batched destroy per run, and the tree
        // listed once per run.
        assert_eq!(zfs.destroy_calls, 2);
        assert_eq!(zfs.snapshot_listings.get(), 4);
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
    fn the_destroy_goes_oldest_first_within_each_dataset() {
        let three = policy("datasets = [\"tank/media\"]\nrecursive = true\nhourly = 3\n");
        let mut zfs = fake();
        let none = BTreeSet::new();
        for h in 0..3 {
            let now = at(&format!("2026-11-25T{h:02}:00:00Z"));
            zfs.now = now.0;
            run_policy(&mut zfs, &three, now, &none, false).unwrap();
        }
        assert!(zfs.destroy_order.is_empty());
        let one = policy("datasets = [\"tank/media\"]\nrecursive = true\nhourly = 1\n");
        let now = at("2026-11-25T03:00:00Z");
        zfs.now = now.0;
        let run = run_policy(&mut zfs, &one, now, &none, false).unwrap();
        let order: Vec<String> = ["tank/media", "tank/media/photos"]
            .iter()
            .flat_map(|ds| {
                (0..3).map(move |h| format!("{ds}@stored_hourly_2026-11-25T{h:02}:00:00Z"))
            })
            .collect();
        assert_eq!(zfs.destroy_order, order);
        assert_eq!(zfs.destroy_calls, 1);
        assert_eq!(run.destroyed, order);
        // The plan shown (`prune --dry-run`) lists them in the same order.
        assert_eq!(run.plans[0].destroy, order[..3]);
    }

    #[test]
    fn a_new_child_of_a_recursive_policy_gets_its_snapshot_at_the_next_tick() {
        let p = policy("datasets = [\"tank/media\"]\nrecursive = true\nhourly = 2\n");
        let mut zfs = fake();
        let none = BTreeSet::new();
        let first = at("2026-11-25T10:00:00Z");
        zfs.now = first.0;
        run_policy(&mut zfs, &p, first, &none, false).unwrap();
        zfs = zfs.with_dataset("tank/media/new");
        let tick = at("2026-11-25T10:01:00Z");
        zfs.now = tick.0;
        let run = run_policy(&mut zfs, &p, tick, &none, false).unwrap();
        assert_eq!(
            run.taken,
            ["tank/media/new@stored_hourly_2026-11-25T10:01:00Z"]
        );
        // The next tick of the hour takes nothing more.
        let again = at("2026-11-25T10:02:00Z");
        zfs.now = again.0;
        let run = run_policy(&mut zfs, &p, again, &none, false).unwrap();
        assert!(run.taken.is_empty(), "{:?}", run.taken);
        // The next slot snapshots the whole tree at once again.
        let next = at("2026-11-25T11:00:00Z");
        zfs.now = next.0;
        let run = run_policy(&mut zfs, &p, next, &none, false).unwrap();
        assert_eq!(run.taken.len(), 3, "{:?}", run.taken);
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
        let real = run_policy(&mut zfs, &p, at("2026-11-25T01:00:00Z"), &none, false).unwrap();
        // The kernel refused the held base; the plan shown says why it stays.
        assert!(real.destroyed.is_empty());
        assert_eq!(real.plans[0].destroy, [] as [String; 0]);
        assert!(
            real.plans[0]
                .keep
                .iter()
                .any(|k| k.name == base
                    && k.reason == crate::snapshots::KeepReason::Held { holds: 1 })
        );
        run_policy(&mut zfs, &p, at("2026-11-25T02:00:00Z"), &none, false).unwrap();
        let left = zfs.snapshot_names();
        assert!(left.contains(&base), "{left:?}");
        assert_eq!(left.len(), 2);
    }

    #[test]
    fn snapshots_held_after_the_listing_stay_and_the_rest_go() {
        let mut zfs = fake();
        let names: Vec<String> = (0..5)
            .map(|i| format!("tank/docs@stored_hourly_2026-11-25T0{i}:00:00Z"))
            .collect();
        zfs.snapshot(&names[..1], &[]).unwrap();
        for n in &names[1..] {
            zfs.snapshot(std::slice::from_ref(n), &[]).unwrap();
        }
        zfs.hold(&[
            (names[1].clone(), "stored-repl:offsite".into()),
            (names[3].clone(), "admin".into()),
        ])
        .unwrap();
        let destroyed = destroy_unheld(&mut zfs, names.clone()).unwrap();
        assert_eq!(
            destroyed,
            [names[0].clone(), names[2].clone(), names[4].clone()]
        );
        assert_eq!(zfs.snapshot_names(), [names[1].clone(), names[3].clone()]);
        // Any other failure is the pass's error, and nothing is destroyed.
        zfs.fail_next = Some("pool I/O is currently suspended".into());
        assert!(destroy_unheld(&mut zfs, vec![names[1].clone()]).is_err());
        assert_eq!(zfs.snapshot_names().len(), 2);
    }
}
