//! Snapshot policies: the names stored gives its snapshots, which snapshots are due, and
//! which may be pruned. Everything here is pure: time comes in as an argument.
//!
//! Names are `<prefix>_<period>_<UTC time>`, like `stored_hourly_2026-11-25T19:00:07Z`:
//! letters, digits, `_`, `-` and `:` only, all valid in a ZFS snapshot name. The time is
//! when the snapshot was taken, in UTC, so names sort by time within a period and a DST
//! change never skips or doubles one. A snapshot whose name does not parse as ours was not
//! made by stored and is never pruned.

mod prune;
mod run;

use std::fmt;

use std::collections::{BTreeMap, BTreeSet};

use appliance::model::SnapshotPolicy;
use appliance::types::Name;

use crate::time::UtcTime;

pub use prune::{KeepReason, Kept, PrunePlan, Rpo, due, due_names, plan_prune};
pub use run::{PolicyRun, run_policy};

/// The prefix of every snapshot stored takes.
pub const PREFIX: &str = "stored";

/// Extra lag tolerated before an RPO counts as missed: the scheduler takes a due snapshot
/// within seconds, and an alert that flaps at every period boundary helps nobody.
pub const RPO_SLACK_SECS: i64 = 60;

/// A retention period, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Frequently,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    pub const ALL: [Period; 6] = [
        Period::Frequently,
        Period::Hourly,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
        Period::Yearly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Frequently => "frequently",
            Self::Hourly => "hourly",
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Yearly => "yearly",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Start of the slot of this period that holds `t`: a period takes one snapshot per
    /// slot. Frequent slots are counted from the epoch, so with an interval that divides
    /// an hour they start on the hour.
    pub fn slot_start(self, t: UtcTime, frequent_interval_secs: i64) -> UtcTime {
        match self {
            Self::Frequently => t.floor_to(frequent_interval_secs),
            Self::Hourly => t.floor_to(3600),
            Self::Daily => t.start_of_day(),
            Self::Weekly => t.start_of_week(),
            Self::Monthly => t.start_of_month(),
            Self::Yearly => t.start_of_year(),
        }
    }

    /// The longest a slot of this period lasts, in seconds: the RPO it promises.
    pub fn max_len_secs(self, frequent_interval_secs: i64) -> i64 {
        match self {
            Self::Frequently => frequent_interval_secs,
            Self::Hourly => 3600,
            Self::Daily => 86_400,
            Self::Weekly => 7 * 86_400,
            Self::Monthly => 31 * 86_400,
            Self::Yearly => 366 * 86_400,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many snapshots of each period a policy keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub frequently: u32,
    /// Seconds between frequent snapshots; validation makes it divide an hour.
    pub frequent_interval_secs: i64,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl Retention {
    pub fn count(&self, p: Period) -> u32 {
        match p {
            Period::Frequently => self.frequently,
            Period::Hourly => self.hourly,
            Period::Daily => self.daily,
            Period::Weekly => self.weekly,
            Period::Monthly => self.monthly,
            Period::Yearly => self.yearly,
        }
    }

    /// The finest period that keeps anything: its length is the policy's RPO.
    pub fn finest(&self) -> Option<Period> {
        Period::ALL.into_iter().find(|p| self.count(*p) > 0)
    }
}

impl From<&SnapshotPolicy> for Retention {
    fn from(p: &SnapshotPolicy) -> Self {
        Self {
            frequently: p.frequently,
            frequent_interval_secs: i64::try_from(p.frequent_interval.as_secs())
                .unwrap_or(i64::MAX)
                .max(1),
            hourly: p.hourly,
            daily: p.daily,
            weekly: p.weekly,
            monthly: p.monthly,
            yearly: p.yearly,
        }
    }
}

/// Two policies that cover the same dataset: they share snapshot names, so each would
/// prune the other's snapshots of a period it keeps fewer of.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "snapshot policies {first:?} and {second:?} both cover {dataset}; each would prune the \
     other's snapshots. Cover each dataset with one policy (a recursive policy covers its \
     children)"
)]
pub struct PolicyOverlap {
    pub dataset: String,
    pub first: String,
    pub second: String,
}

/// Every pair of policies that covers a dataset twice. `datasets` lists the existing
/// datasets, so that a recursive policy's children are known.
pub fn overlapping_policies(
    policies: &BTreeMap<Name, SnapshotPolicy>,
    datasets: &[String],
) -> Vec<PolicyOverlap> {
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for (name, p) in policies {
        let mut covered: BTreeSet<String> = BTreeSet::new();
        for top in &p.datasets {
            covered.insert(top.to_string());
            if p.recursive {
                covered.extend(
                    datasets
                        .iter()
                        .filter(|d| {
                            d.strip_prefix(top.as_str())
                                .is_some_and(|rest| rest.starts_with('/'))
                        })
                        .cloned(),
                );
            }
        }
        for d in covered {
            match owner.get(&d) {
                Some(first) => out.push(PolicyOverlap {
                    dataset: d,
                    first: (*first).to_owned(),
                    second: name.to_string(),
                }),
                None => {
                    owner.insert(d, name.as_str());
                }
            }
        }
    }
    out
}

/// The part after `@` of a snapshot stored took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName {
    pub period: Period,
    pub time: UtcTime,
}

impl SnapshotName {
    /// `Some` only for names of exactly our form, so that a user's snapshot that merely
    /// starts with the prefix is never taken for ours.
    pub fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(PREFIX)?.strip_prefix('_')?;
        let (period, time) = rest.split_once('_')?;
        let name = Self {
            period: Period::parse(period)?,
            time: UtcTime::parse_rfc3339(time)?,
        };
        Some(name)
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}_{}_{}", self.period, self.time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_valid_zfs_snapshot_names() {
        let n = SnapshotName {
            period: Period::Hourly,
            time: UtcTime(1_795_635_704),
        };
        let s = n.to_string();
        assert_eq!(s, "stored_hourly_2026-11-25T19:41:44Z");
        assert_eq!(SnapshotName::parse(&s), Some(n));
        // zfs allows alphanumerics and _ - : . and space in a snapshot component.
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-:. ".contains(c))
        );
    }

    #[test]
    fn policies_covering_a_dataset_twice_are_found() {
        let policies: BTreeMap<Name, SnapshotPolicy> = toml::from_str(
            r#"
            [all]
            datasets = ["tank"]
            recursive = true
            daily = 7
            [media]
            datasets = ["tank/media"]
            hourly = 24
            [other]
            datasets = ["tank2/x"]
            hourly = 24
            "#,
        )
        .unwrap();
        let datasets = ["tank", "tank/media", "tank/docs", "tank2/x"].map(String::from);
        let found = overlapping_policies(&policies, &datasets);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].to_string(),
            "snapshot policies \"all\" and \"media\" both cover tank/media; each would prune \
             the other's snapshots. Cover each dataset with one policy (a recursive policy \
             covers its children)"
        );
        let one = policies.into_iter().take(1).collect();
        assert!(overlapping_policies(&one, &datasets).is_empty());
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for s in [
            "autosnap_2026-11-25_19:00:00_hourly",
            "stored_hourly_2026-11-25T19:41:44Z-manual",
            "stored_fortnightly_2026-11-25T19:41:44Z",
            "stored_hourly_2026-13-25T19:41:44Z",
            "storedhourly_2026-11-25T19:41:44Z",
            "manual",
        ] {
            assert_eq!(SnapshotName::parse(s), None, "{s}");
        }
    }
}
