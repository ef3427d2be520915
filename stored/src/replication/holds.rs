//! The hold that keeps a job's incremental base on the source: `stored-repl:<job>` on the
//! newest snapshot the target has. Pruning skips held snapshots (`destroy_snaps` would
//! refuse them anyway), so the next incremental always has its base. The hold moves
//! forward after each run; holds of jobs no longer in the config are released.

use std::collections::BTreeSet;
use std::path::Path;

use crate::zfs::{Snapshot, Zfs, ZfsError};

pub const HOLD_PREFIX: &str = "stored-repl:";

pub fn hold_tag(job: &str) -> String {
    format!("{HOLD_PREFIX}{job}")
}

/// Holds `dataset@snapshot` for `job` and releases the job's hold on every other snapshot
/// of the dataset. The new hold is placed before the old ones go, so the base is never
/// unprotected.
pub fn move_hold(
    zfs: &mut impl Zfs,
    dataset: &str,
    job: &str,
    snapshot: &str,
) -> Result<(), ZfsError> {
    let listed = zfs.snapshots(dataset, false)?;
    move_hold_among(zfs, dataset, job, snapshot, &listed)
}

/// [`move_hold`] over the dataset's snapshots as the caller listed them (a replication run
/// lists them once). Only this job's holds matter, and only this job moves them.
pub fn move_hold_among(
    zfs: &mut impl Zfs,
    dataset: &str,
    job: &str,
    snapshot: &str,
    listed: &[crate::zfs::Snapshot],
) -> Result<(), ZfsError> {
    let tag = hold_tag(job);
    let full = format!("{dataset}@{snapshot}");
    let mut have = false;
    let mut old = Vec::new();
    for s in listed {
        if s.userrefs == 0 {
            continue;
        }
        let name = s.full_name();
        if zfs.holds(&name)?.contains_key(&tag) {
            if name == full {
                have = true;
            } else {
                old.push((name, tag.clone()));
            }
        }
    }
    if !have {
        zfs.hold(&[(full.clone(), tag.clone())])?;
        tracing::info!(snapshot = %full, %tag, "held the replication base");
    }
    if !old.is_empty() {
        zfs.release(&old)?;
        tracing::info!(count = old.len(), %tag, "released the previous replication base");
    }
    Ok(())
}

/// The snapshot of `dataset` that holds `job`'s tag: the newest the target had when the
/// job last ran. A run cut mid-stream also holds the snapshot it was sending; the base is
/// then the older one, so the oldest held wins.
pub fn job_base(zfs: &impl Zfs, dataset: &str, job: &str) -> Result<Option<Snapshot>, ZfsError> {
    let tag = hold_tag(job);
    for s in zfs.snapshots(dataset, false)? {
        if s.userrefs > 0 && zfs.holds(&s.full_name())?.contains_key(&tag) {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Releases `stored-repl:*` holds whose job is not in `jobs`, on every snapshot of the
/// imported pools: one holds listing per pool (a channel program) and one release call per
/// pool, whatever the number of snapshots. Returns the `(snapshot, tag)` pairs released.
pub fn release_stale_holds(
    zfs: &mut impl Zfs,
    jobs: &BTreeSet<String>,
) -> Result<Vec<(String, String)>, ZfsError> {
    let pools: Vec<String> = zfs.pools()?.into_iter().map(|p| p.name).collect();
    sweep_pools(zfs, jobs, &pools)
}

/// Where the CLI's sweep records the job set and pools it last swept for.
pub const SWEEP_FILE: &str = "/data/stored/replication-sweep";

/// What a sweep covered: the jobs whose holds it kept and the pools it read. A hold of
/// another job can only appear through a run whose job set differs (and sweeps again
/// first), or with a pool imported since: so an unchanged fingerprint means nothing new
/// is stale.
pub fn sweep_fingerprint(jobs: &BTreeSet<String>, pools: &[String]) -> String {
    let mut pools = pools.to_vec();
    pools.sort();
    let jobs: Vec<&str> = jobs.iter().map(String::as_str).collect();
    format!("jobs={}\npools={}\n", jobs.join(","), pools.join(","))
}

/// [`release_stale_holds`] unless `record` shows a sweep for the same jobs and pools:
/// the pool-wide hold listing cost 25 s for 2000 snapshots (TCG), paid by every
/// `stored replicate` before. The record is written after a sweep that succeeded, so a
/// failed one is retried. `None` when skipped.
pub fn release_stale_holds_if_changed(
    zfs: &mut impl Zfs,
    jobs: &BTreeSet<String>,
    record: &Path,
) -> Result<Option<Vec<(String, String)>>, ZfsError> {
    let pools: Vec<String> = zfs.pool_usage()?.into_iter().map(|p| p.name).collect();
    let fingerprint = sweep_fingerprint(jobs, &pools);
    if std::fs::read_to_string(record).is_ok_and(|last| last == fingerprint) {
        tracing::info!(
            record = %record.display(),
            "stale replication holds: same jobs and pools as the last sweep; not swept"
        );
        return Ok(None);
    }
    let released = sweep_pools(zfs, jobs, &pools)?;
    if let Err(e) = write_record(record, &fingerprint) {
        tracing::warn!(record = %record.display(), error = %e, "cannot record the sweep; the next run sweeps again");
    }
    Ok(Some(released))
}

fn write_record(record: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = record.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, record)
}

fn sweep_pools(
    zfs: &mut impl Zfs,
    jobs: &BTreeSet<String>,
    pools: &[String],
) -> Result<Vec<(String, String)>, ZfsError> {
    let started = std::time::Instant::now();
    let mut stale = Vec::new();
    for pool in pools {
        for (snap, tag) in zfs.pool_holds(pool)? {
            if let Some(job) = tag.strip_prefix(HOLD_PREFIX)
                && !jobs.contains(job)
            {
                stale.push((snap, tag));
            }
        }
    }
    if !stale.is_empty() {
        zfs.release(&stale)?;
        for (snap, tag) in &stale {
            tracing::info!(%snap, %tag, "released a stale replication hold (job not in the config)");
        }
    }
    tracing::info!(
        released = stale.len(),
        sweep_ms = started.elapsed().as_secs_f64() * 1e3,
        "stale replication holds swept"
    );
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::{FakeZfs, PoolLayout, VdevLayout, VdevSpec};

    fn fake() -> FakeZfs {
        let layout = PoolLayout {
            vdevs: vec![VdevSpec {
                layout: VdevLayout::Single,
                disks: vec!["/dev/disk/by-id/a".into()],
            }],
            ..Default::default()
        };
        let mut z = FakeZfs::new()
            .with_pool("tank", layout, true)
            .with_dataset("tank/a");
        for s in ["s1", "s2", "s3"] {
            z.snapshot(&[format!("tank/a@{s}")], &[]).unwrap();
        }
        z
    }

    #[test]
    fn the_hold_moves_forward_and_protects_the_base_from_destroy() {
        let mut z = fake();
        move_hold(&mut z, "tank/a", "offsite", "s1").unwrap();
        assert!(
            z.holds("tank/a@s1")
                .unwrap()
                .contains_key("stored-repl:offsite")
        );
        assert!(z.destroy_snapshots(&["tank/a@s1".into()]).is_err());
        move_hold(&mut z, "tank/a", "offsite", "s2").unwrap();
        assert!(z.holds("tank/a@s1").unwrap().is_empty());
        assert!(
            z.holds("tank/a@s2")
                .unwrap()
                .contains_key("stored-repl:offsite")
        );
        // Again on the same base: nothing changes, still held.
        move_hold(&mut z, "tank/a", "offsite", "s2").unwrap();
        assert_eq!(z.holds("tank/a@s2").unwrap().len(), 1);
        z.destroy_snapshots(&["tank/a@s1".into()]).unwrap();
    }

    #[test]
    fn the_job_base_is_the_snapshot_its_hold_names() {
        let mut z = fake();
        assert_eq!(job_base(&z, "tank/a", "offsite").unwrap(), None);
        z.hold(&[("tank/a@s1".into(), "admin".into())]).unwrap();
        move_hold(&mut z, "tank/a", "offsite", "s2").unwrap();
        move_hold(&mut z, "tank/a", "other", "s3").unwrap();
        let base = job_base(&z, "tank/a", "offsite").unwrap().unwrap();
        assert_eq!(base.name, "s2");
        assert_eq!(job_base(&z, "tank/a", "other").unwrap().unwrap().name, "s3");
    }

    #[test]
    fn other_holds_are_left_alone_and_stale_jobs_released() {
        let mut z = fake();
        z.hold(&[("tank/a@s1".into(), "admin".into())]).unwrap();
        move_hold(&mut z, "tank/a", "gone", "s1").unwrap();
        move_hold(&mut z, "tank/a", "kept", "s3").unwrap();
        let jobs = BTreeSet::from(["kept".to_owned()]);
        let released = release_stale_holds(&mut z, &jobs).unwrap();
        assert_eq!(
            released,
            vec![("tank/a@s1".to_owned(), "stored-repl:gone".to_owned())]
        );
        assert!(z.holds("tank/a@s1").unwrap().contains_key("admin"));
        assert!(
            z.holds("tank/a@s3")
                .unwrap()
                .contains_key("stored-repl:kept")
        );
        assert!(release_stale_holds(&mut z, &jobs).unwrap().is_empty());
    }

    /// The second sweep for the same jobs and pools reads no holds; a renamed job or a
    /// pool imported since sweeps again, and the renamed job's old hold goes.
    #[test]
    fn the_sweep_is_skipped_while_jobs_and_pools_stay_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("sweep");
        let mut z = fake();
        move_hold(&mut z, "tank/a", "offsite", "s1").unwrap();
        let jobs = BTreeSet::from(["offsite".to_owned()]);
        assert_eq!(
            release_stale_holds_if_changed(&mut z, &jobs, &record).unwrap(),
            Some(vec![])
        );
        let listings = z.snapshot_listings.get();
        assert_eq!(
            release_stale_holds_if_changed(&mut z, &jobs, &record).unwrap(),
            None
        );
        assert_eq!(
            z.snapshot_listings.get(),
            listings,
            "no listing when skipped"
        );
        let renamed = BTreeSet::from(["offsite2".to_owned()]);
        let released = release_stale_holds_if_changed(&mut z, &renamed, &record)
            .unwrap()
            .unwrap();
        assert_eq!(
            released,
            vec![("tank/a@s1".to_owned(), "stored-repl:offsite".to_owned())]
        );
        // A pool that appears is swept even for the same jobs.
        let layout = PoolLayout {
            vdevs: vec![VdevSpec {
                layout: VdevLayout::Single,
                disks: vec!["/dev/disk/by-id/b".into()],
            }],
            ..Default::default()
        };
        let mut z = z.with_pool("other", layout, true);
        assert!(
            release_stale_holds_if_changed(&mut z, &renamed, &record)
                .unwrap()
                .is_some()
        );
    }

    /// The sweep reads holds once per pool and releases in one call: a thousand snapshots
    /// cost no get_holds each, as the listing of userrefs and a get_holds per held
    /// snapshot did.
    #[test]
    fn the_sweep_lists_holds_once_per_pool_and_releases_in_one_batch() {
        let mut z = fake();
        let names: Vec<String> = (0..1000).map(|i| format!("tank/a@e{i:04}")).collect();
        for n in &names {
            z.snapshot(std::slice::from_ref(n), &[]).unwrap();
        }
        z.hold(&[
            (names[10].clone(), "stored-repl:gone".into()),
            (names[20].clone(), "stored-repl:gone".into()),
            (names[30].clone(), "stored-repl:kept".into()),
            (names[40].clone(), "admin".into()),
        ])
        .unwrap();
        let (writes, listings) = (z.writes, z.snapshot_listings.get());
        z.holds_calls.set(0);
        let jobs = BTreeSet::from(["kept".to_owned()]);
        let released = release_stale_holds(&mut z, &jobs).unwrap();
        assert_eq!(
            released,
            [
                (names[10].clone(), "stored-repl:gone".to_owned()),
                (names[20].clone(), "stored-repl:gone".to_owned()),
            ]
        );
        assert_eq!(z.writes - writes, 1, "one release call");
        assert_eq!(
            z.snapshot_listings.get() - listings,
            1,
            "one listing of the pool"
        );
        assert_eq!(z.holds_calls.get(), 0, "no get_holds per snapshot");
        assert!(
            z.holds(&names[30])
                .unwrap()
                .contains_key("stored-repl:kept")
        );
        assert!(z.holds(&names[40]).unwrap().contains_key("admin"));
    }
}
