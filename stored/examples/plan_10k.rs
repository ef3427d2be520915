//! Times the pure planners on 10,000 snapshots of one dataset (hourly, keep 24): the
//! planning half of the issue's `prune_10k` figure, without ZFS. The destroys themselves
//! need the VM.
//!
//! `cargo run --release -p stored --example plan_10k`

use std::collections::BTreeSet;
use std::time::Instant;

use stored::snapshots::{Period, Retention, SnapshotName, due, plan_prune};
use stored::time::UtcTime;
use stored::zfs::Snapshot;

fn main() {
    const N: i64 = 10_000;
    let start = UtcTime(1_700_000_000);
    let snaps: Vec<Snapshot> = (0..N)
        .map(|i| {
            let time = UtcTime(start.0 + i * 3600);
            Snapshot {
                dataset: "tank/media".into(),
                name: SnapshotName {
                    period: Period::Hourly,
                    time,
                }
                .to_string(),
                guid: i as u64,
                createtxg: i as u64,
                creation: time.0,
                userrefs: u64::from(i % 1000 == 0),
            }
        })
        .collect();
    let retention = Retention {
        frequently: 0,
        frequent_interval_secs: 900,
        hourly: 24,
        daily: 7,
        weekly: 0,
        monthly: 0,
        yearly: 0,
    };
    let now = UtcTime(start.0 + N * 3600);
    let needed = BTreeSet::new();
    let t = Instant::now();
    let plan = plan_prune("tank/media", &retention, now, &snaps, &needed);
    let plan_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let due = due(&retention, now, &snaps);
    let due_secs = t.elapsed().as_secs_f64();
    println!(
        "{} snapshots: {} to destroy, {} kept ({} held), due now: {:?}",
        snaps.len(),
        plan.destroy.len(),
        plan.keep.len(),
        plan.keep.len() - 24,
        due
    );
    println!("bench: prune_plan_10k = {:.1} ms", plan_secs * 1e3);
    println!("bench: due_10k = {:.1} ms", due_secs * 1e3);
}
