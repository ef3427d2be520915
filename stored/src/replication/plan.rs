//! What one dataset's replication sends (pure): full or incremental from the newest
//! snapshot both sides share, matched by GUID (a name can be reused, a GUID cannot), a
//! pending resume first (or aborted when the source can no longer continue it), and
//! divergence of the target refused or rolled back.

use std::collections::{HashMap, HashSet};
use std::fmt;

use appliance::model::OnDivergence;
use serde::{Deserialize, Serialize};

/// A snapshot or bookmark as the planner sees it: its short name (after `@` or `#`), GUID
/// and creation txg (the order within one pool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snap {
    pub name: String,
    pub guid: u64,
    pub createtxg: u64,
    /// Seconds since the epoch (the lag is measured from it).
    #[serde(default)]
    pub creation: i64,
}

/// A local snapshot as the planner sees it: both ends list theirs the same way, so that
/// their GUIDs and txgs compare.
impl From<crate::zfs::Snapshot> for Snap {
    fn from(s: crate::zfs::Snapshot) -> Self {
        Snap {
            name: s.name,
            guid: s.guid,
            createtxg: s.createtxg,
            creation: s.creation,
        }
    }
}

/// The target dataset as the receiver reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    pub exists: bool,
    /// Oldest first.
    pub snapshots: Vec<Snap>,
    /// `receive_resume_token` of an interrupted receive.
    pub resume_token: Option<String>,
    /// Bytes written since its newest snapshot (the `written` property).
    pub written: u64,
}

/// Where an interrupted receive stopped, as far as planning goes (decoded from the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingResume {
    pub toguid: u64,
    pub fromguid: Option<u64>,
}

/// The base of an incremental send on the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Snapshot(String),
    /// Used when the common snapshot is gone from the source but its bookmark remains.
    Bookmark(String),
}

impl Base {
    /// `@name` or `#name`, to append to the dataset.
    pub fn suffix(&self) -> String {
        match self {
            Self::Snapshot(s) => format!("@{s}"),
            Self::Bookmark(b) => format!("#{b}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The whole of a snapshot, to a target that does not exist.
    Full {
        to: String,
    },
    Incremental {
        from: Base,
        to: String,
    },
    /// Continue the interrupted receive of `to` (its token is on the target).
    Resume {
        to: String,
    },
    /// Every snapshot after `from` up to `to` (`count` of them), as one stream of
    /// `zfs send -I`: the incrementals of [`ranges`] joined.
    Range {
        from: String,
        to: String,
        count: usize,
    },
}

impl Step {
    pub fn to(&self) -> &str {
        match self {
            Self::Full { to }
            | Self::Incremental { to, .. }
            | Self::Resume { to }
            | Self::Range { to, .. } => to,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { to } => write!(f, "full @{to}"),
            Self::Incremental { from, to } => write!(f, "incremental {} -> @{to}", from.suffix()),
            Self::Resume { to } => write!(f, "resume @{to}"),
            Self::Range { from, to, count } => {
                write!(f, "range @{from} -> @{to} ({count} snapshots)")
            }
        }
    }
}

/// Rolling the target back to the common snapshot: its newer snapshots are destroyed and
/// its later changes dropped; the dataset itself stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    pub to: String,
    pub destroy: Vec<String>,
}

/// An interrupted receive on the target that the source cannot continue: the receiver is
/// asked to abort it (`zfs receive -A`, only that partial state) before the steps, which
/// start over from the newest common snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StalePartial {
    /// The token's snapshot GUID: the receiver aborts only a partial receive of it.
    pub toguid: u64,
    pub why: StaleWhy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleWhy {
    /// The snapshot being received is gone from the source (destroyed after a cut).
    SnapshotGone,
    /// The incremental source of the cut stream is neither a snapshot nor a bookmark on
    /// the source any more.
    BaseGone { fromguid: u64 },
}

impl fmt::Display for StalePartial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.why {
            StaleWhy::SnapshotGone => write!(
                f,
                "the source no longer has the snapshot it was receiving (GUID {:#x})",
                self.toguid
            ),
            StaleWhy::BaseGone { fromguid } => write!(
                f,
                "the source no longer has the incremental base of the snapshot it was \
                 receiving (GUID {fromguid:#x}, neither snapshot nor bookmark)"
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Set when the target's interrupted receive must be aborted before the steps.
    pub abort_partial: Option<StalePartial>,
    pub rollback: Option<Rollback>,
    /// In order; empty when the target is up to date.
    pub steps: Vec<Step>,
    /// The newest source snapshot the target has or will have after the steps.
    pub newest: Option<Snap>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{source_ds} has no snapshot to send; take one (a snapshot policy) first")]
    NoSnapshots { source_ds: String },
    #[error(
        "target {target} exists but shares no snapshot (by GUID) with {source_ds}; nothing was \
         sent. A rollback cannot help and stored never destroys a dataset: rename or destroy \
         the target by hand to start over with a full send"
    )]
    NoCommon { source_ds: String, target: String },
    #[error(
        "target {target} diverged after the common snapshot @{common}: {}; nothing was sent. \
         Set on_divergence = \"rollback\" on the job to roll it back to @{common} (its newer \
         snapshots and changes are lost), or undo the changes by hand",
        describe_divergence(.newer, *.written)
    )]
    Diverged {
        target: String,
        common: String,
        newer: Vec<String>,
        written: u64,
    },
}

fn describe_divergence(newer: &[String], written: u64) -> String {
    let mut parts = Vec::new();
    if !newer.is_empty() {
        let shown: Vec<&str> = newer.iter().take(5).map(String::as_str).collect();
        let more = newer.len().saturating_sub(shown.len());
        let mut s = format!("{} newer snapshot(s) @{}", newer.len(), shown.join(", @"));
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
        parts.push(s);
    }
    if written > 0 {
        parts.push(format!("{written} bytes written since its newest snapshot"));
    }
    parts.join(" and ")
}

/// Plans one dataset. `source` and `bookmarks` are the source's (any order), `target` the
/// receiver's report, `resume` the decoded token when the target has one. A token the
/// source cannot continue is planned as an abort of that partial receive followed by what
/// the target would get without it (a partial first receive counts as no target).
pub fn plan(
    source_ds: &str,
    target_ds: &str,
    source: &[Snap],
    bookmarks: &[Snap],
    target: &TargetState,
    resume: Option<PendingResume>,
    on_divergence: OnDivergence,
) -> Result<Plan, PlanError> {
    let mut source: Vec<&Snap> = source.iter().collect();
    source.sort_by_key(|s| s.createtxg);
    let Some(newest) = source.last().map(|s| (*s).clone()) else {
        return Err(PlanError::NoSnapshots {
            source_ds: source_ds.to_owned(),
        });
    };
    let by_guid: HashMap<u64, usize> = source
        .iter()
        .enumerate()
        .map(|(i, s)| (s.guid, i))
        .collect();
    // The steps from source index `i` (exclusive) to the newest, one snapshot each, so
    // that the target keeps the same history as the source.
    let chain = |from: Base, i: usize| -> Vec<Step> {
        let mut steps = Vec::new();
        let mut from = from;
        for s in source.iter().skip(i + 1) {
            steps.push(Step::Incremental {
                from,
                to: s.name.clone(),
            });
            from = Base::Snapshot(s.name.clone());
        }
        steps
    };

    let mut abort_partial = None;
    if let Some(r) = resume {
        let stale = match (by_guid.get(&r.toguid), r.fromguid) {
            (None, _) => Some(StaleWhy::SnapshotGone),
            (Some(_), Some(from))
                if !by_guid.contains_key(&from) && !bookmarks.iter().any(|b| b.guid == from) =>
            {
                Some(StaleWhy::BaseGone { fromguid: from })
            }
            (Some(&i), _) => {
                // The partial receive is finished first; its base is the target's newest
                // snapshot, so no divergence check applies until it has landed.
                let to = source.get(i).map(|s| s.name.clone()).unwrap_or_default();
                let mut steps = vec![Step::Resume { to: to.clone() }];
                steps.extend(chain(Base::Snapshot(to), i));
                return Ok(Plan {
                    abort_partial: None,
                    rollback: None,
                    steps,
                    newest: Some(newest),
                });
            }
        };
        abort_partial = stale.map(|why| StalePartial {
            toguid: r.toguid,
            why,
        });
    }

    // An aborted first receive takes the half-made dataset with it.
    let target_exists = target.exists && !(abort_partial.is_some() && target.snapshots.is_empty());
    if !target_exists {
        return Ok(Plan {
            abort_partial,
            rollback: None,
            steps: vec![Step::Full {
                to: newest.name.clone(),
            }],
            newest: Some(newest),
        });
    }

    let target_guids: HashMap<u64, &Snap> = target.snapshots.iter().map(|s| (s.guid, s)).collect();
    let common = source
        .iter()
        .enumerate()
        .rev()
        .find(|(_, s)| target_guids.contains_key(&s.guid));
    // The newest bookmark the target has as a snapshot. It is the base when it is newer
    // than the newest common snapshot (the held base destroyed, its bookmark kept): an
    // older common snapshot would make the target's newer good snapshots look diverged.
    let mark = bookmarks
        .iter()
        .filter(|b| target_guids.contains_key(&b.guid))
        .max_by_key(|b| b.createtxg);
    let common = common.filter(|(_, s)| mark.is_none_or(|b| b.createtxg <= s.createtxg));
    let (base, base_index, common_on_target) = match common {
        Some((i, s)) => (
            Base::Snapshot(s.name.clone()),
            Some(i),
            target_guids.get(&s.guid).copied(),
        ),
        None => {
            // The snapshot may be gone from the source while its bookmark stays: the
            // newest such bookmark is a valid incremental base.
            let Some(b) = mark else {
                return Err(PlanError::NoCommon {
                    source_ds: source_ds.to_owned(),
                    target: target_ds.to_owned(),
                });
            };
            // Sends continue with the first source snapshot after the bookmark.
            let after = source.iter().position(|s| s.createtxg > b.createtxg);
            (
                Base::Bookmark(b.name.clone()),
                after.map(|a| a.wrapping_sub(1)),
                target_guids.get(&b.guid).copied(),
            )
        }
    };
    let Some(on_target) = common_on_target else {
        return Err(PlanError::NoCommon {
            source_ds: source_ds.to_owned(),
            target: target_ds.to_owned(),
        });
    };
    let newer: Vec<String> = target
        .snapshots
        .iter()
        .filter(|s| s.createtxg > on_target.createtxg)
        .map(|s| s.name.clone())
        .collect();
    let mut rollback = None;
    if !newer.is_empty() || target.written > 0 {
        match on_divergence {
            OnDivergence::Refuse => {
                return Err(PlanError::Diverged {
                    target: target_ds.to_owned(),
                    common: on_target.name.clone(),
                    newer,
                    written: target.written,
                });
            }
            OnDivergence::Rollback => {
                rollback = Some(Rollback {
                    to: on_target.name.clone(),
                    destroy: newer,
                });
            }
        }
    }
    let steps = match base_index {
        // `usize::MAX` (from the wrapping_sub) means: every source snapshot is newer than
        // the bookmark.
        Some(usize::MAX) => {
            let mut steps = Vec::new();
            let mut from = base;
            for s in &source {
                steps.push(Step::Incremental {
                    from,
                    to: s.name.clone(),
                });
                from = Base::Snapshot(s.name.clone());
            }
            steps
        }
        Some(i) => chain(base, i),
        // A bookmark newer than every source snapshot: nothing to send.
        None => Vec::new(),
    };
    Ok(Plan {
        abort_partial,
        rollback,
        steps,
        newest: Some(newest),
    })
}

/// Runs of at least `min` incrementals from snapshot to snapshot, each from the one before,
/// joined into one [`Step::Range`]: `libzfs_core` sends one snapshot per call, so 1000
/// empty snapshots were 1000 sends and 1000 receives, where `zfs send -I` is one of each.
/// A step from a bookmark stays single (`-I` starts at a snapshot) and starts the run
/// after it; a resume stays single (its token is one snapshot's).
pub fn ranges(steps: Vec<Step>, min: usize) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    // The pending run: its base and its snapshots.
    let mut run: Option<(String, Vec<String>)> = None;
    let flush = |out: &mut Vec<Step>, run: Option<(String, Vec<String>)>| {
        let Some((from, tos)) = run else { return };
        if tos.len() >= min.max(2) {
            let to = tos.last().cloned().unwrap_or_default();
            out.push(Step::Range {
                from,
                to,
                count: tos.len(),
            });
        } else {
            let mut from = from;
            for to in tos {
                out.push(Step::Incremental {
                    from: Base::Snapshot(from),
                    to: to.clone(),
                });
                from = to;
            }
        }
    };
    for step in steps {
        match step {
            Step::Incremental {
                from: Base::Snapshot(from),
                to,
            } => match &mut run {
                Some((base, tos)) if *tos.last().unwrap_or(base) == from => tos.push(to),
                _ => {
                    flush(&mut out, run.take());
                    run = Some((from, vec![to]));
                }
            },
            other => {
                flush(&mut out, run.take());
                // The snapshot a single step lands is the next run's base.
                run = Some((other.to().to_owned(), Vec::new()));
                out.push(other);
            }
        }
    }
    flush(&mut out, run);
    out
}

/// The target of `dataset` (the job's source `root` or one of its descendants): the root's
/// last component under `target_dataset`, and the same path below it.
pub fn target_name(target_dataset: &str, root: &str, dataset: &str) -> String {
    let base = root.rsplit('/').next().unwrap_or(root);
    let rest = dataset.strip_prefix(root).unwrap_or("");
    format!("{target_dataset}/{base}{rest}")
}

/// Source snapshots the target has by GUID (replication's common snapshots).
pub fn common_snapshots(source: &[Snap], target: &TargetState) -> Vec<String> {
    let t: HashSet<u64> = target.snapshots.iter().map(|s| s.guid).collect();
    source
        .iter()
        .filter(|s| t.contains(&s.guid))
        .map(|s| s.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, guid: u64, txg: u64) -> Snap {
        Snap {
            name: name.into(),
            guid,
            createtxg: txg,
            creation: 0,
        }
    }

    fn target(snaps: Vec<Snap>) -> TargetState {
        TargetState {
            exists: true,
            snapshots: snaps,
            resume_token: None,
            written: 0,
        }
    }

    fn run(source: &[Snap], t: &TargetState) -> Result<Plan, PlanError> {
        plan(
            "tank/a",
            "backup/a",
            source,
            &[],
            t,
            None,
            OnDivergence::Refuse,
        )
    }

    #[test]
    fn a_missing_target_gets_the_newest_snapshot_in_full() {
        let src = [snap("s1", 1, 10), snap("s2", 2, 20)];
        let p = run(&src, &TargetState::default()).unwrap();
        assert_eq!(p.steps, vec![Step::Full { to: "s2".into() }]);
        assert!(p.rollback.is_none());
    }

    #[test]
    fn no_snapshot_is_an_error() {
        let e = run(&[], &TargetState::default()).unwrap_err();
        assert!(matches!(e, PlanError::NoSnapshots { .. }));
    }

    #[test]
    fn incremental_from_the_newest_common_by_guid_not_by_name() {
        // The target's "s2" is another snapshot of the same name (another GUID): the
        // common base is s1, and "s2" on the target counts as divergence.
        let src = [snap("s1", 1, 10), snap("s2", 2, 20), snap("s3", 3, 30)];
        let t = target(vec![snap("s1", 1, 5), snap("s2", 99, 6)]);
        let e = run(&src, &t).unwrap_err();
        match e {
            PlanError::Diverged { common, newer, .. } => {
                assert_eq!(common, "s1");
                assert_eq!(newer, vec!["s2".to_owned()]);
            }
            other => panic!("{other:?}"),
        }
        let t = target(vec![snap("s1", 1, 5), snap("s2", 2, 6)]);
        let p = run(&src, &t).unwrap();
        assert_eq!(
            p.steps,
            vec![Step::Incremental {
                from: Base::Snapshot("s2".into()),
                to: "s3".into()
            }]
        );
    }

    #[test]
    fn up_to_date_sends_nothing() {
        let src = [snap("s1", 1, 10)];
        let p = run(&src, &target(vec![snap("s1", 1, 3)])).unwrap();
        assert!(p.steps.is_empty());
    }

    #[test]
    fn target_pruned_older_snapshots_is_fine() {
        let src = [snap("s1", 1, 10), snap("s2", 2, 20), snap("s3", 3, 30)];
        let p = run(&src, &target(vec![snap("s2", 2, 3)])).unwrap();
        assert_eq!(p.steps.len(), 1);
        assert!(p.rollback.is_none());
    }

    #[test]
    fn changes_after_the_common_snapshot_are_refused_then_rolled_back_on_request() {
        let src = [snap("s1", 1, 10), snap("s2", 2, 20)];
        let mut t = target(vec![snap("s1", 1, 3)]);
        t.written = 4096;
        let e = run(&src, &t).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("4096 bytes written"), "{msg}");
        assert!(msg.contains("on_divergence = \"rollback\""), "{msg}");
        t.snapshots.push(snap("local", 50, 4));
        let p = plan(
            "tank/a",
            "backup/a",
            &src,
            &[],
            &t,
            None,
            OnDivergence::Rollback,
        )
        .unwrap();
        assert_eq!(
            p.rollback,
            Some(Rollback {
                to: "s1".into(),
                destroy: vec!["local".into()]
            })
        );
        assert_eq!(p.steps.len(), 1);
    }

    #[test]
    fn no_common_snapshot_is_refused_even_with_rollback() {
        let src = [snap("s1", 1, 10)];
        let t = target(vec![snap("s1", 7, 3)]);
        for on in [OnDivergence::Refuse, OnDivergence::Rollback] {
            let e = plan("tank/a", "backup/a", &src, &[], &t, None, on).unwrap_err();
            assert!(matches!(e, PlanError::NoCommon { .. }), "{e}");
        }
        // An existing target without snapshots is not overwritten either.
        let e = run(&src, &target(vec![])).unwrap_err();
        assert!(matches!(e, PlanError::NoCommon { .. }));
    }

    #[test]
    fn a_bookmark_stands_in_for_a_destroyed_base() {
        let src = [snap("s3", 3, 30), snap("s4", 4, 40)];
        let marks = [snap("repl_s2", 2, 20)];
        let t = target(vec![snap("s2", 2, 3)]);
        let p = plan(
            "tank/a",
            "backup/a",
            &src,
            &marks,
            &t,
            None,
            OnDivergence::Refuse,
        )
        .unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::Incremental {
                    from: Base::Bookmark("repl_s2".into()),
                    to: "s3".into()
                },
                Step::Incremental {
                    from: Base::Snapshot("s3".into()),
                    to: "s4".into()
                },
            ]
        );
    }

    /// The audit's case: the held base h5 destroyed, its bookmark kept, an older common
    /// snapshot d1 still on both sides. The bookmark is the base; h5 on the target is not
    /// a divergence, and rollback destroys nothing.
    #[test]
    fn a_bookmark_newer_than_the_common_snapshot_is_the_base() {
        let src = [snap("d1", 1, 10), snap("h6", 6, 60)];
        let marks = [snap("bm", 5, 50)];
        let t = target(vec![snap("d1", 1, 2), snap("h5", 5, 3)]);
        for on_divergence in [OnDivergence::Refuse, OnDivergence::Rollback] {
            let p = plan("tank/a", "backup/a", &src, &marks, &t, None, on_divergence).unwrap();
            assert_eq!(p.rollback, None);
            assert_eq!(
                p.steps,
                vec![Step::Incremental {
                    from: Base::Bookmark("bm".into()),
                    to: "h6".into()
                }]
            );
        }
        // An older bookmark leaves the newest common snapshot the base.
        let old_mark = [snap("bm0", 1, 10)];
        let src = [snap("d1", 1, 10), snap("h5", 5, 50), snap("h6", 6, 60)];
        let p = plan(
            "tank/a",
            "backup/a",
            &src,
            &old_mark,
            &t,
            None,
            OnDivergence::Refuse,
        )
        .unwrap();
        assert_eq!(
            p.steps,
            vec![Step::Incremental {
                from: Base::Snapshot("h5".into()),
                to: "h6".into()
            }]
        );
    }

    #[test]
    fn a_pending_resume_comes_first() {
        let src = [snap("s1", 1, 10), snap("s2", 2, 20), snap("s3", 3, 30)];
        let t = target(vec![snap("s1", 1, 3)]);
        let r = PendingResume {
            toguid: 2,
            fromguid: Some(1),
        };
        let p = plan(
            "tank/a",
            "backup/a",
            &src,
            &[],
            &t,
            Some(r),
            OnDivergence::Refuse,
        )
        .unwrap();
        assert_eq!(p.steps.first(), Some(&Step::Resume { to: "s2".into() }));
        assert_eq!(p.steps.len(), 2);
    }

    /// The decision after a sender was killed mid-stream and the snapshot it was sending
    /// was destroyed on the source: abort that partial receive, then an incremental from
    /// the newest common snapshot to the newest source snapshot, not a StaleResume.
    #[test]
    fn a_token_the_source_cannot_continue_is_aborted_then_sent_afresh() {
        // s2 was being received when the sender died; s2 is gone from the source since.
        let src = [snap("s1", 1, 10), snap("s3", 3, 30)];
        let t = target(vec![snap("s1", 1, 3)]);
        let gone = PendingResume {
            toguid: 2,
            fromguid: Some(1),
        };
        let p = plan(
            "tank/a",
            "backup/a",
            &src,
            &[],
            &t,
            Some(gone),
            OnDivergence::Refuse,
        )
        .unwrap();
        assert_eq!(
            p.abort_partial,
            Some(StalePartial {
                toguid: 2,
                why: StaleWhy::SnapshotGone
            })
        );
        assert_eq!(
            p.steps,
            vec![Step::Incremental {
                from: Base::Snapshot("s1".into()),
                to: "s3".into()
            }]
        );
        assert!(p.rollback.is_none());

        // The cut stream's base is gone (no snapshot, no bookmark), its target snapshot
        // is still there: it cannot be resumed either.
        let src = [snap("s2", 2, 20), snap("s3", 3, 30)];
        let t = target(vec![snap("s1", 1, 3)]);
        let e = plan(
            "tank/a",
            "backup/a",
            &src,
            &[],
            &t,
            Some(gone),
            OnDivergence::Refuse,
        )
        .unwrap_err();
        // Without a common snapshot or bookmark the fresh send is refused as usual.
        assert!(matches!(e, PlanError::NoCommon { .. }), "{e}");
        let marks = [snap("repl_s1", 1, 10)];
        let p = plan(
            "tank/a",
            "backup/a",
            &src,
            &marks,
            &t,
            Some(PendingResume {
                toguid: 2,
                fromguid: Some(77),
            }),
            OnDivergence::Refuse,
        )
        .unwrap();
        assert_eq!(
            p.abort_partial.map(|a| a.why),
            Some(StaleWhy::BaseGone { fromguid: 77 })
        );
        assert_eq!(
            p.steps.first(),
            Some(&Step::Incremental {
                from: Base::Bookmark("repl_s1".into()),
                to: "s2".into()
            })
        );

        // A first receive cut and gone stale: the half-made target goes with the abort,
        // and the newest snapshot is sent in full.
        let empty = TargetState {
            exists: true,
            ..TargetState::default()
        };
        let p = plan(
            "tank/a",
            "backup/a",
            &src,
            &[],
            &empty,
            Some(PendingResume {
                toguid: 1,
                fromguid: None,
            }),
            OnDivergence::Refuse,
        )
        .unwrap();
        assert!(p.abort_partial.is_some());
        assert_eq!(p.steps, vec![Step::Full { to: "s3".into() }]);
    }

    #[test]
    fn a_thousand_snapshots_become_a_thousand_steps_in_order() {
        let src: Vec<Snap> = (0..1001u64)
            .rev() // the planner must not rely on the input order
            .map(|i| snap(&format!("s{i}"), 1000 + i, 10 + i))
            .collect();
        let t = target(vec![snap("s0", 1000, 1)]);
        let p = run(&src, &t).unwrap();
        assert_eq!(p.steps.len(), 1000);
        for (i, s) in p.steps.iter().enumerate() {
            let from = if i == 0 {
                "s0".to_owned()
            } else {
                format!("s{i}")
            };
            assert_eq!(
                s,
                &Step::Incremental {
                    from: Base::Snapshot(from),
                    to: format!("s{}", i + 1)
                }
            );
        }
        // The same with the target 500 behind and 1000 on both sides.
        let t = target(
            (0..501u64)
                .map(|i| snap(&format!("s{i}"), 1000 + i, 1 + i))
                .collect(),
        );
        assert_eq!(run(&src, &t).unwrap().steps.len(), 500);
        assert_eq!(common_snapshots(&src, &t).len(), 501);
    }

    fn inc(from: &str, to: &str) -> Step {
        Step::Incremental {
            from: Base::Snapshot(from.into()),
            to: to.into(),
        }
    }

    /// The plan's choice: 1000 empties from a snapshot base become one range; a bookmark
    /// base and a resume stay single steps and the range starts after them; a short run
    /// stays per snapshot.
    #[test]
    fn many_incrementals_become_one_range() {
        let src: Vec<Snap> = (0..1001u64)
            .map(|i| snap(&format!("s{i}"), 1000 + i, 10 + i))
            .collect();
        let t = target(vec![snap("s0", 1000, 1)]);
        let steps = ranges(run(&src, &t).unwrap().steps, 4);
        assert_eq!(
            steps,
            vec![Step::Range {
                from: "s0".into(),
                to: "s1000".into(),
                count: 1000
            }]
        );
        // Three behind: below the threshold, one stream each.
        let t = target(vec![snap("s997", 1997, 1)]);
        let steps = ranges(run(&src, &t).unwrap().steps, 4);
        assert_eq!(
            steps,
            vec![
                inc("s997", "s998"),
                inc("s998", "s999"),
                inc("s999", "s1000")
            ]
        );
        // A resume of s1, then the rest as a range from it.
        let p = plan(
            "tank/a",
            "backup/a",
            &src,
            &[],
            &target(vec![snap("s0", 1000, 1)]),
            Some(PendingResume {
                toguid: 1001,
                fromguid: Some(1000),
            }),
            OnDivergence::Refuse,
        )
        .unwrap();
        let steps = ranges(p.steps, 4);
        assert_eq!(
            steps,
            vec![
                Step::Resume { to: "s1".into() },
                Step::Range {
                    from: "s1".into(),
                    to: "s1000".into(),
                    count: 999
                }
            ]
        );
        // From a bookmark: one incremental from it, then the range.
        let src: Vec<Snap> = (1..=10u64)
            .map(|i| snap(&format!("s{i}"), 1000 + i, 10 + i))
            .collect();
        let marks = [snap("bm0", 1000, 10)];
        let p = plan(
            "tank/a",
            "backup/a",
            &src,
            &marks,
            &target(vec![snap("s0", 1000, 1)]),
            None,
            OnDivergence::Refuse,
        )
        .unwrap();
        let steps = ranges(p.steps, 4);
        assert_eq!(
            steps,
            vec![
                Step::Incremental {
                    from: Base::Bookmark("bm0".into()),
                    to: "s1".into()
                },
                Step::Range {
                    from: "s1".into(),
                    to: "s10".into(),
                    count: 9
                }
            ]
        );
        // A full send stays a full send, and nothing to send stays nothing.
        let full = vec![Step::Full { to: "s1".into() }];
        assert_eq!(ranges(full.clone(), 4), full);
        assert!(ranges(Vec::new(), 4).is_empty());
    }

    #[test]
    fn target_names_keep_the_tree_below_the_root() {
        assert_eq!(
            target_name("backup", "tank/media", "tank/media"),
            "backup/media"
        );
        assert_eq!(
            target_name("backup/box1", "tank/media", "tank/media/photos"),
            "backup/box1/media/photos"
        );
    }
}
