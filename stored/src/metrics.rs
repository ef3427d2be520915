//! What stored reports about the storage it runs: pools (health, space, errors, scrubs),
//! datasets (used, available), snapshot counts and RPO per policy. [`collect`] reads it
//! through the [`Zfs`] adapter into a [`Report`] that `/v1/status` serializes and
//! [`Report::prometheus`] renders for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use appliance::Config;
use serde::Serialize;

use crate::scrub::{Scan, parse_scan};
use crate::snapshots::{Period, Retention, SnapshotName, plan_prune};
use crate::time::UtcTime;
use crate::zfs::{FakeZfs, RealZfs, Zfs, ZfsError};

/// A dataset's space, from `zfs list -Hp -o name,used,avail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatasetSpace {
    pub name: String,
    pub used: u64,
    pub available: u64,
}

/// The space of every filesystem and volume; the [`Zfs`] trait has no call for it, since
/// only reporting needs it.
pub trait DatasetSpaces {
    fn dataset_spaces(&self) -> Result<Vec<DatasetSpace>, ZfsError>;
}

const SPACE_ARGV: [&str; 8] = [
    "zfs",
    "list",
    "-Hp",
    "-t",
    "filesystem,volume",
    "-o",
    "name,used,avail",
    "-s",
];

impl DatasetSpaces for RealZfs {
    fn dataset_spaces(&self) -> Result<Vec<DatasetSpace>, ZfsError> {
        let mut argv = SPACE_ARGV.to_vec();
        argv.push("name");
        let out = crate::command::run(&argv)?;
        parse_spaces(&out, &argv.join(" "))
    }
}

impl DatasetSpaces for FakeZfs {
    /// The fake keeps no data: every dataset is empty.
    fn dataset_spaces(&self) -> Result<Vec<DatasetSpace>, ZfsError> {
        Ok(self
            .datasets()?
            .into_iter()
            .map(|d| DatasetSpace {
                name: d.name,
                used: 0,
                available: 0,
            })
            .collect())
    }
}

/// A second handle on ZFS, so that reports are read without the daemon's lock: listing
/// 10,000 snapshots took minutes in the TCG guest, and applies, ticks and every other
/// request would wait behind it.
pub trait ReadHandle {
    type Reader: Zfs + DatasetSpaces;
    fn reader(&self) -> Result<Self::Reader, ZfsError>;
}

impl ReadHandle for RealZfs {
    type Reader = RealZfs;
    /// libzfs_core counts its users, so a second open only adds a descriptor on /dev/zfs.
    fn reader(&self) -> Result<RealZfs, ZfsError> {
        Ok(RealZfs::open()?.with_cli(self.cli().clone()))
    }
}

impl ReadHandle for FakeZfs {
    type Reader = FakeZfs;
    /// The state as it is now, copied while the caller holds the daemon's lock.
    fn reader(&self) -> Result<FakeZfs, ZfsError> {
        Ok(self.clone())
    }
}

/// Parses `name\tused\tavail` lines.
pub fn parse_spaces(out: &str, command: &str) -> Result<Vec<DatasetSpace>, ZfsError> {
    let bad = |line: &str, why: &str| ZfsError::Parse {
        command: command.to_owned(),
        line: line.to_owned(),
        why: why.to_owned(),
    };
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let [name, used, avail] = f.as_slice() else {
                return Err(bad(line, "expected 3 tab-separated fields"));
            };
            Ok(DatasetSpace {
                name: (*name).to_owned(),
                used: used
                    .parse()
                    .map_err(|_| bad(line, "used is not a number"))?,
                available: avail
                    .parse()
                    .map_err(|_| bad(line, "avail is not a number"))?,
            })
        })
        .collect()
}

/// The last scrub as the `scan:` line tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScrubStatus {
    /// `never`, `running`, `paused`, `finished` or `other` (a canceled scrub, a resilver).
    pub state: &'static str,
    /// When the last scrub finished (UTC, RFC 3339).
    pub last: Option<String>,
    pub last_unix: Option<i64>,
    /// Errors the last scrub could not repair.
    pub errors: Option<u64>,
    /// The whole `scan:` text.
    pub scan: String,
}

impl ScrubStatus {
    fn from_scan(scan: &str) -> Self {
        let (state, at, errors) = match parse_scan(scan) {
            Scan::Never => ("never", None, None),
            Scan::Running => ("running", None, None),
            Scan::ScrubFinished { at, errors } => ("finished", Some(at), Some(errors)),
            Scan::Paused => ("paused", None, None),
            Scan::ScrubCanceled { at } | Scan::Resilvered { at } | Scan::Other { at } => {
                ("other", at, None)
            }
        };
        Self {
            state,
            last: at.map(|t| t.to_string()),
            last_unix: at.map(|t| t.0),
            errors,
            scan: scan.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolReport {
    pub name: String,
    pub health: String,
    pub size: Option<u64>,
    pub allocated: Option<u64>,
    pub free: Option<u64>,
    pub fragmentation_percent: Option<u64>,
    pub capacity_percent: Option<u64>,
    /// Permanent data errors (`errors:` of `zpool status`; 0 for "No known data errors").
    pub data_errors: u64,
    /// The `errors:` text.
    pub errors: String,
    pub scrub: ScrubStatus,
}

/// `N data errors, use '-v' for a list` → N; anything else (`No known data errors`) → 0.
fn data_errors(text: &str) -> u64 {
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One dataset of a policy: its snapshots of ours per period and whether the RPO holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDataset {
    pub dataset: String,
    /// Period → snapshots of ours.
    pub snapshots: BTreeMap<&'static str, usize>,
    /// Snapshots stored did not take.
    pub foreign: usize,
    pub newest: Option<String>,
    pub lag_seconds: Option<i64>,
    pub rpo_met: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyReport {
    pub name: String,
    /// The finest period kept: the policy's promise.
    pub rpo_period: Option<&'static str>,
    pub rpo_target_seconds: i64,
    /// Every covered dataset meets the RPO.
    pub rpo_met: bool,
    pub datasets: Vec<PolicyDataset>,
}

/// Everything `/v1/status` shows about storage, read at `now`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub pools: Vec<PoolReport>,
    pub datasets: Vec<DatasetSpace>,
    pub policies: Vec<PolicyReport>,
    /// What could not be read (a report with holes beats no report).
    pub errors: Vec<String>,
}

/// The datasets a policy covers: its datasets, and their descendants when recursive.
pub fn covered(policy: &appliance::model::SnapshotPolicy, all: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for top in &policy.datasets {
        let top = top.as_str();
        out.push(top.to_owned());
        if policy.recursive {
            out.extend(
                all.iter()
                    .filter(|d| d.strip_prefix(top).is_some_and(|r| r.starts_with('/')))
                    .cloned(),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Reads pools, datasets and the policies' snapshots.
pub fn collect<Z: Zfs + DatasetSpaces>(zfs: &Z, cfg: Option<&Config>, now: UtcTime) -> Report {
    let mut r = Report::default();
    let usage = zfs.pool_usage().unwrap_or_else(|e| {
        r.errors.push(format!("zpool list: {e}"));
        Vec::new()
    });
    match zfs.pools() {
        Ok(pools) => {
            for p in pools {
                let u = usage.iter().find(|u| u.name == p.name);
                r.pools.push(PoolReport {
                    health: p.health.clone(),
                    size: u.map(|u| u.size),
                    allocated: u.map(|u| u.allocated),
                    free: u.map(|u| u.free),
                    fragmentation_percent: u.and_then(|u| u.fragmentation),
                    capacity_percent: u.map(|u| u.capacity),
                    data_errors: data_errors(&p.errors),
                    errors: p.errors.clone(),
                    scrub: ScrubStatus::from_scan(&p.scan),
                    name: p.name,
                });
            }
        }
        Err(e) => r.errors.push(format!("zpool status: {e}")),
    }
    match zfs.dataset_spaces() {
        Ok(d) => r.datasets = d,
        Err(e) => r.errors.push(format!("zfs list: {e}")),
    }
    let Some(cfg) = cfg else { return r };
    let all: Vec<String> = r.datasets.iter().map(|d| d.name.clone()).collect();
    let none = Default::default();
    for (name, policy) in &cfg.snapshots {
        let retention = Retention::from(policy);
        let finest = retention.finest();
        let mut report = PolicyReport {
            name: name.to_string(),
            rpo_period: finest.map(Period::as_str),
            rpo_target_seconds: finest
                .map_or(0, |p| p.max_len_secs(retention.frequent_interval_secs)),
            rpo_met: true,
            datasets: Vec::new(),
        };
        for ds in covered(policy, &all) {
            let snaps = match zfs.snapshots(&ds, false) {
                Ok(s) => s,
                Err(e) => {
                    r.errors.push(format!("snapshots of {ds}: {e}"));
                    report.rpo_met = false;
                    continue;
                }
            };
            let mut counts: BTreeMap<&'static str, usize> =
                Period::ALL.iter().map(|p| (p.as_str(), 0)).collect();
            let mut foreign = 0;
            for s in &snaps {
                match SnapshotName::parse(&s.name) {
                    Some(n) => *counts.entry(n.period.as_str()).or_default() += 1,
                    None => foreign += 1,
                }
            }
            let rpo = plan_prune(&ds, &retention, now, &snaps, &none).rpo;
            report.rpo_met &= rpo.met;
            report.datasets.push(PolicyDataset {
                dataset: ds,
                snapshots: counts,
                foreign,
                newest: rpo.newest.map(|t| t.to_string()),
                lag_seconds: rpo.lag_secs,
                rpo_met: rpo.met,
            });
        }
        r.policies.push(report);
    }
    r
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes Prometheus text: one HELP/TYPE header per family, then its samples.
#[derive(Debug, Default)]
pub struct Prom {
    out: String,
}

impl Prom {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if l.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", l.join(","));
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

impl Report {
    /// The report's families in Prometheus text format.
    pub fn prometheus(&self, m: &mut Prom) {
        type PoolField = fn(&PoolReport) -> Option<u64>;
        let pool_gauges: [(&str, &str, PoolField); 5] = [
            ("stored_pool_size_bytes", "Pool size.", |p| p.size),
            (
                "stored_pool_allocated_bytes",
                "Pool space allocated.",
                |p| p.allocated,
            ),
            ("stored_pool_free_bytes", "Pool space free.", |p| p.free),
            (
                "stored_pool_fragmentation_percent",
                "Free space fragmentation.",
                |p| p.fragmentation_percent,
            ),
            ("stored_pool_capacity_percent", "Pool space used.", |p| {
                p.capacity_percent
            }),
        ];
        m.family(
            "stored_pool_healthy",
            "gauge",
            "1 when the pool is ONLINE; the health label says what it is.",
        );
        for p in &self.pools {
            m.sample(
                "stored_pool_healthy",
                &[("pool", &p.name), ("health", &p.health)],
                u8::from(p.health == "ONLINE"),
            );
        }
        for (name, help, get) in pool_gauges {
            m.family(name, "gauge", help);
            for p in &self.pools {
                if let Some(v) = get(p) {
                    m.sample(name, &[("pool", &p.name)], v);
                }
            }
        }
        m.family(
            "stored_pool_data_errors",
            "gauge",
            "Permanent data errors zpool status reports.",
        );
        for p in &self.pools {
            m.sample(
                "stored_pool_data_errors",
                &[("pool", &p.name)],
                p.data_errors,
            );
        }
        m.family(
            "stored_pool_scrub_running",
            "gauge",
            "1 while a scrub or resilver runs.",
        );
        for p in &self.pools {
            m.sample(
                "stored_pool_scrub_running",
                &[("pool", &p.name)],
                u8::from(p.scrub.state == "running"),
            );
        }
        m.family(
            "stored_pool_scrub_last_timestamp_seconds",
            "gauge",
            "When the last scrub finished (Unix time).",
        );
        for p in &self.pools {
            if let Some(t) = p.scrub.last_unix {
                m.sample(
                    "stored_pool_scrub_last_timestamp_seconds",
                    &[("pool", &p.name)],
                    t,
                );
            }
        }
        m.family(
            "stored_pool_scrub_errors",
            "gauge",
            "Errors the last scrub could not repair.",
        );
        for p in &self.pools {
            if let Some(e) = p.scrub.errors {
                m.sample("stored_pool_scrub_errors", &[("pool", &p.name)], e);
            }
        }
        m.family(
            "stored_dataset_used_bytes",
            "gauge",
            "Space a dataset uses.",
        );
        for d in &self.datasets {
            m.sample("stored_dataset_used_bytes", &[("dataset", &d.name)], d.used);
        }
        m.family(
            "stored_dataset_available_bytes",
            "gauge",
            "Space left for a dataset.",
        );
        for d in &self.datasets {
            m.sample(
                "stored_dataset_available_bytes",
                &[("dataset", &d.name)],
                d.available,
            );
        }
        m.family(
            "stored_snapshots",
            "gauge",
            "Snapshots of ours per policy, dataset and period.",
        );
        for p in &self.policies {
            for d in &p.datasets {
                for (period, n) in &d.snapshots {
                    m.sample(
                        "stored_snapshots",
                        &[
                            ("policy", &p.name),
                            ("dataset", &d.dataset),
                            ("period", period),
                        ],
                        n,
                    );
                }
            }
        }
        m.family(
            "stored_policy_rpo_met",
            "gauge",
            "1 when the newest snapshot is within the policy's finest period (plus 60 s).",
        );
        for p in &self.policies {
            for d in &p.datasets {
                m.sample(
                    "stored_policy_rpo_met",
                    &[("policy", &p.name), ("dataset", &d.dataset)],
                    u8::from(d.rpo_met),
                );
            }
        }
        m.family(
            "stored_policy_rpo_target_seconds",
            "gauge",
            "The policy's RPO: the length of its finest period.",
        );
        for p in &self.policies {
            m.sample(
                "stored_policy_rpo_target_seconds",
                &[("policy", &p.name)],
                p.rpo_target_seconds,
            );
        }
        m.family(
            "stored_policy_snapshot_lag_seconds",
            "gauge",
            "Age of the newest snapshot of ours.",
        );
        for p in &self.policies {
            for d in &p.datasets {
                if let Some(lag) = d.lag_seconds {
                    m.sample(
                        "stored_policy_snapshot_lag_seconds",
                        &[("policy", &p.name), ("dataset", &d.dataset)],
                        lag,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_and_error_counts_parse() {
        let d = parse_spaces("tank\t1024\t2048\ntank/a\t0\t2048\n", "zfs list").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].used, 1024);
        assert_eq!(d[1].available, 2048);
        assert!(parse_spaces("tank\tx\t1\n", "zfs list").is_err());
        assert_eq!(data_errors("No known data errors"), 0);
        assert_eq!(data_errors("3 data errors, use '-v' for a list"), 3);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = Prom::default();
        m.family("x", "gauge", "help");
        m.sample("x", &[("a", "q\"b\\\n")], 1);
        assert_eq!(
            m.finish(),
            "# HELP x help\n# TYPE x gauge\nx{a=\"q\\\"b\\\\\\n\"} 1\n"
        );
    }
}
