//! Replication jobs on their interval, and on demand (`applctl storage replicate JOB`).
//!
//! A run can last hours (a first full send), so it does not hold the lock the snapshot
//! scheduler and the control requests share: the [`Replicator`] has its own ZFS handle and
//! its own lock, and one job runs at a time. Policies keep snapshotting and pruning
//! meanwhile; the job's hold on its incremental base keeps the pruning off it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use appliance::model::ReplicationJob;
use serde::{Deserialize, Serialize};

use crate::metrics::Prom;
use crate::replication::{JobReport, ReplicatedSnapshot, RunOptions, job_base, run_job};
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
        let mut report =
            run_job(&mut self.zfs, name, job, &RunOptions::default()).map_err(|e| e.to_string())?;
        report.bases = bases(&self.zfs, name, job);
        Ok(report)
    }
}

/// The base the job's hold marks on each of its datasets after a run. A dataset whose hold
/// cannot be read is left out (and logged): the run itself succeeded.
pub fn bases(
    zfs: &impl crate::zfs::Zfs,
    name: &str,
    job: &ReplicationJob,
) -> Vec<ReplicatedSnapshot> {
    let mut out = Vec::new();
    for ds in &job.datasets {
        match job_base(zfs, ds.as_str(), name) {
            Ok(Some(s)) => out.push(ReplicatedSnapshot {
                dataset: s.dataset,
                snapshot: s.name,
                guid: s.guid.to_string(),
            }),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = name, dataset = %ds, error = %e, "cannot read the job's replication base")
            }
        }
    }
    out
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
    /// The newest snapshot the target has, per dataset of the job, as of the last
    /// successful run.
    pub replicated: Vec<ReplicatedSnapshot>,
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
                self.replicated = r.bases.clone();
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

/// Where the daemon keeps the jobs' last successes across restarts.
pub const STATE_FILE: &str = "/data/stored/replication.json";

/// What survives a restart of one job: its last success, not its counters (Prometheus
/// counters start again from zero with the process) nor its last attempt (a restarted
/// box runs every job once at once, as after an outage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedJob {
    /// Unix seconds.
    last_success: i64,
    /// Unix seconds: the newest snapshot time the target had (oldest over the datasets).
    recovery_point: Option<i64>,
    bytes: u64,
    duration_seconds: f64,
    snapshots: usize,
    resumed: bool,
    replicated: Vec<ReplicatedSnapshot>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedJobs {
    version: u32,
    jobs: BTreeMap<String, SavedJob>,
}

const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a replication state file of this stored ({source}); it is replaced at the next successful run"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has version {version}; this stored reads version {STATE_VERSION}")]
    Version { path: PathBuf, version: u32 },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Writes every job's last success (jobs that never succeeded are left out) atomically:
/// a temp file, fsync, rename, fsync of the directory.
pub fn save(path: &Path, states: &BTreeMap<String, JobState>) -> Result<(), JobFileError> {
    let write = |source| JobFileError::Write {
        path: path.to_owned(),
        source,
    };
    let jobs = states
        .iter()
        .filter_map(|(name, s)| {
            Some((
                name.clone(),
                SavedJob {
                    last_success: s.last_success_at?.0,
                    recovery_point: s.recovery_point.map(|t| t.0),
                    bytes: s.bytes,
                    duration_seconds: s.duration_seconds,
                    snapshots: s.snapshots,
                    resumed: s.resumed,
                    replicated: s.replicated.clone(),
                },
            ))
        })
        .collect();
    let text = serde_json::to_vec_pretty(&SavedJobs {
        version: STATE_VERSION,
        jobs,
    })
    .map_err(|e| write(io::Error::other(e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write)?;
    appliance::tlsgen::write_atomic(path, &text, 0o644).map_err(write)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write)
}

/// The jobs' states as the last run before a restart left them; none when the file does
/// not exist (a new box).
pub fn load(path: &Path) -> Result<BTreeMap<String, JobState>, JobFileError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(JobFileError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let saved: SavedJobs = serde_json::from_slice(&text).map_err(|source| JobFileError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if saved.version != STATE_VERSION {
        return Err(JobFileError::Version {
            path: path.to_owned(),
            version: saved.version,
        });
    }
    Ok(saved
        .jobs
        .into_iter()
        .map(|(name, j)| {
            let at = UtcTime(j.last_success);
            let secs = j.duration_seconds;
            let state = JobState {
                job: name.clone(),
                last_success: Some(at.to_string()),
                last_success_at: Some(at),
                bytes: j.bytes,
                duration_seconds: secs,
                throughput_bytes_per_second: if secs > 0.0 {
                    j.bytes as f64 / secs
                } else {
                    0.0
                },
                snapshots: j.snapshots,
                resumed: j.resumed,
                recovery_point: j.recovery_point.map(UtcTime),
                replicated: j.replicated,
                ..JobState::default()
            };
            (name, state)
        })
        .collect())
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
        aborted: Vec::new(),
        lag: lag.map(Duration::from_secs),
        datasets: Vec::new(),
        bases: Vec::new(),
    }
}
