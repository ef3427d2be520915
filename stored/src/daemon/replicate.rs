//! Replication jobs on their interval, and on demand (`applctl storage replicate JOB`).
//!
//! A run can last hours (a first full send), so it does not hold the lock the snapshot
//! scheduler and the control requests share: the [`Replicator`] has its own ZFS handle and
//! its own lock, and one job runs at a time. Policies keep snapshotting and pruning
//! meanwhile; the job's hold on its incremental base keeps the pruning off it.

use std::collections::BTreeMap;
use std::time::Duration;

use appliance::model::ReplicationJob;
use serde::Serialize;

use crate::metrics::Prom;
use crate::replication::{JobReport, RunOptions, run_job};
use crate::time::UtcTime;
use crate::zfs::RealZfs;

/// Runs one replication job.
pub trait Replicator: Send {
    fn run(&mut self, name: &str, job: &ReplicationJob) -> Result<JobReport, String>;
}

/// The real sender: REPL's `run_job` over its own ZFS handle.
#[derive(Debug)]
pub struct RealReplicator {
    zfs: RealZfs,
}

impl RealReplicator {
    pub fn open() -> Result<Self, crate::zfs::ZfsError> {
        Ok(Self {
            zfs: RealZfs::open()?,
        })
    }
}

impl Replicator for RealReplicator {
    fn run(&mut self, name: &str, job: &ReplicationJob) -> Result<JobReport, String> {
        run_job(&mut self.zfs, name, job, &RunOptions::default()).map_err(|e| e.to_string())
    }
}

/// A replicator for hosts without one (unit tests of everything else).
#[derive(Debug, Default)]
pub struct NoReplicator;

impl Replicator for NoReplicator {
    fn run(&mut self, name: &str, _: &ReplicationJob) -> Result<JobReport, String> {
        Err(format!(
            "job {name}: this stored runs without a replication sender"
        ))
    }
}

/// What status and metrics show of one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobState {
    pub job: String,
    pub running: bool,
    pub last_attempt: Option<String>,
    #[serde(skip)]
    pub last_attempt_at: Option<UtcTime>,
    pub last_success: Option<String>,
    #[serde(skip)]
    pub last_success_at: Option<UtcTime>,
    pub last_error: Option<String>,
    /// Stream bytes of the last successful run.
    pub bytes: u64,
    pub duration_seconds: f64,
    pub throughput_bytes_per_second: f64,
    pub snapshots: usize,
    pub resumed: bool,
    /// The target's recovery point (newest snapshot there, oldest over the datasets), as
    /// of the last successful run.
    #[serde(skip)]
    pub recovery_point: Option<UtcTime>,
    /// Seconds between now and the target's recovery point.
    pub lag_seconds: Option<i64>,
    pub runs_total: u64,
    pub failures_total: u64,
    pub bytes_total: u64,
}

impl JobState {
    pub fn record(&mut self, at: UtcTime, result: &Result<JobReport, String>) {
        self.runs_total += 1;
        match result {
            Ok(r) => {
                let secs = r.duration.as_secs_f64();
                self.last_success = Some(at.to_string());
                self.last_success_at = Some(at);
                self.last_error = None;
                self.bytes = r.bytes;
                self.bytes_total += r.bytes;
                self.duration_seconds = secs;
                self.throughput_bytes_per_second = if secs > 0.0 {
                    r.bytes as f64 / secs
                } else {
                    0.0
                };
                self.snapshots = r.snapshots;
                self.resumed = r.resumed;
                self.recovery_point = r.lag.map(|lag| {
                    UtcTime(at.0 - i64::try_from(lag.as_secs()).unwrap_or(i64::MAX / 2))
                });
            }
            Err(e) => {
                self.failures_total += 1;
                self.last_error = Some(e.clone());
            }
        }
    }

    /// The state with the lag counted to `now`.
    pub fn at(&self, now: UtcTime) -> Self {
        let mut s = self.clone();
        s.lag_seconds = self.recovery_point.map(|p| now.0 - p.0);
        s
    }
}

/// Jobs due at `now`: enabled, with no attempt within their interval (none since start
/// counts as due, so a box back from an outage catches up at once, once).
pub fn due<'a>(
    jobs: &'a BTreeMap<appliance::types::Name, ReplicationJob>,
    states: &BTreeMap<String, JobState>,
    now: UtcTime,
) -> Vec<(&'a str, &'a ReplicationJob)> {
    jobs.iter()
        .filter(|(_, j)| j.enabled)
        .filter(|(name, j)| {
            let interval = i64::try_from(j.interval.as_secs()).unwrap_or(i64::MAX);
            states
                .get(name.as_str())
                .and_then(|s| s.last_attempt_at)
                .is_none_or(|t| now.0.saturating_sub(t.0) >= interval)
        })
        .map(|(n, j)| (n.as_str(), j))
        .collect()
}

/// The jobs' Prometheus families.
pub fn prometheus(m: &mut Prom, states: &[JobState]) {
    type Field = fn(&JobState) -> Option<f64>;
    let gauges: [(&str, &str, &str, Field); 8] = [
        (
            "stored_replication_lag_seconds",
            "gauge",
            "Age of the newest snapshot the target has (the job's RPO lag).",
            |s| s.lag_seconds.map(|l| l as f64),
        ),
        (
            "stored_replication_last_bytes",
            "gauge",
            "Stream bytes of the last successful run.",
            |s| s.last_success_at.map(|_| s.bytes as f64),
        ),
        (
            "stored_replication_throughput_bytes_per_second",
            "gauge",
            "Throughput of the last successful run.",
            |s| s.last_success_at.map(|_| s.throughput_bytes_per_second),
        ),
        (
            "stored_replication_last_success_timestamp_seconds",
            "gauge",
            "When the job last succeeded (Unix time).",
            |s| s.last_success_at.map(|t| t.0 as f64),
        ),
        (
            "stored_replication_last_run_failed",
            "gauge",
            "1 when the last run failed.",
            |s| {
                s.last_attempt_at
                    .map(|_| f64::from(u8::from(s.last_error.is_some())))
            },
        ),
        (
            "stored_replication_runs_total",
            "counter",
            "Runs of the job.",
            |s| Some(s.runs_total as f64),
        ),
        (
            "stored_replication_failures_total",
            "counter",
            "Runs of the job that failed.",
            |s| Some(s.failures_total as f64),
        ),
        (
            "stored_replication_bytes_total",
            "counter",
            "Stream bytes sent by the job.",
            |s| Some(s.bytes_total as f64),
        ),
    ];
    for (name, kind, help, get) in gauges {
        m.family(name, kind, help);
        for s in states {
            if let Some(v) = get(s) {
                m.sample(name, &[("job", &s.job)], v);
            }
        }
    }
}

/// A report with these figures, for tests.
pub fn report(job: &str, bytes: u64, secs: u64, lag: Option<u64>) -> JobReport {
    JobReport {
        job: job.to_owned(),
        bytes,
        duration: Duration::from_secs(secs),
        snapshots: 1,
        resumed: false,
        lag: lag.map(Duration::from_secs),
        datasets: Vec::new(),
    }
}
