//! ZFS access. [`Zfs`] is the OS adapter the planners use; [`RealZfs`] implements it with
//! libzfs_core ([`lzc`], for snapshots and holds; channel programs, [`zcp`], to list and
//! destroy snapshots for a prune) and the `zfs`/`zpool` tools
//! ([`cli`], for what lzc has no call for: pools, properties, listings), and [`FakeZfs`] is
//! the in-memory double for unit tests.

pub mod cli;
mod fake;
// The one module allowed to call into C: libzfs_core and libnvpair have no safe
// interface, so this wrapper is where their unsafety is contained (a SAFETY comment on
// every block); everything else in stored stays under the workspace's `unsafe_code = deny`.
#[allow(unsafe_code)]
pub mod lzc;
mod real;
pub mod resume;
pub mod zcp;

use std::collections::BTreeMap;
use std::fmt;

pub use appliance::model::VdevLayout;
pub use fake::FakeZfs;
pub use real::RealZfs;

use crate::command::CommandError;
use lzc::LzcError;

#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Lzc(#[from] LzcError),
    #[error("cannot read the output of `{command}`: {why} (line {line:?})")]
    Parse {
        command: String,
        line: String,
        why: String,
    },
}

/// One snapshot as `zfs list -Hp -t snapshot -o name,guid,createtxg,creation,userrefs`
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub dataset: String,
    /// The part after `@`.
    pub name: String,
    pub guid: u64,
    pub createtxg: u64,
    /// Seconds since the epoch.
    pub creation: i64,
    /// Number of user holds.
    pub userrefs: u64,
}

impl Snapshot {
    pub fn full_name(&self) -> String {
        format!("{}@{}", self.dataset, self.name)
    }
}

/// A top-level data vdev: its redundancy and its disks, as stable paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdevSpec {
    pub layout: VdevLayout,
    pub disks: Vec<String>,
}

impl fmt::Display for VdevSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.layout {
            VdevLayout::Single => "single",
            VdevLayout::Mirror => "mirror",
            VdevLayout::Raidz1 => "raidz1",
            VdevLayout::Raidz2 => "raidz2",
            VdevLayout::Raidz3 => "raidz3",
        };
        write!(f, "{kind}({})", self.disks.join(", "))
    }
}

/// The shape of a pool. Disk paths compare without the `-part1` that ZFS appends when it
/// partitions a whole disk it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolLayout {
    pub vdevs: Vec<VdevSpec>,
    pub spares: Vec<String>,
    /// Vdevs of classes the config cannot declare (`logs`, `cache`, `special`, `dedup`),
    /// as `class: name`.
    pub other: Vec<String>,
}

impl fmt::Display for PoolLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<String> = self.vdevs.iter().map(ToString::to_string).collect();
        write!(f, "[{}]", v.join(", "))?;
        if !self.spares.is_empty() {
            write!(f, " spares [{}]", self.spares.join(", "))?;
        }
        if !self.other.is_empty() {
            write!(f, " and [{}]", self.other.join(", "))?;
        }
        Ok(())
    }
}

/// Strips the partition ZFS made on a whole disk, so that the path compares with the
/// configured one.
pub fn whole_disk(path: &str) -> &str {
    path.strip_suffix("-part1").unwrap_or(path)
}

/// A pool as `zpool status` (imported) or `zpool import` (importable) shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    pub name: String,
    /// ONLINE, DEGRADED, FAULTED, ...
    pub health: String,
    pub layout: PoolLayout,
    /// The `scan:` text: the last or running scrub or resilver.
    pub scan: String,
    /// The `errors:` text.
    pub errors: String,
}

/// A pool's space, from `zpool list -Hp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub name: String,
    pub size: u64,
    pub allocated: u64,
    pub free: u64,
    /// Percent; `None` when zpool cannot tell.
    pub fragmentation: Option<u64>,
    /// Percent.
    pub capacity: u64,
    pub health: String,
}

/// What is on a disk, as far as creating a pool on it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskState {
    Missing,
    /// No partition table, filesystem, RAID or ZFS label.
    Empty,
    /// What `blkid -p` found, like `PTTYPE=gpt` or `TYPE=zfs_member`.
    InUse(Vec<String>),
}

/// The dataset properties stored manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prop {
    Compression,
    Atime,
    Recordsize,
    Quota,
    Reservation,
    Mountpoint,
}

impl Prop {
    pub const ALL: [Prop; 6] = [
        Prop::Compression,
        Prop::Atime,
        Prop::Recordsize,
        Prop::Quota,
        Prop::Reservation,
        Prop::Mountpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compression => "compression",
            Self::Atime => "atime",
            Self::Recordsize => "recordsize",
            Self::Quota => "quota",
            Self::Reservation => "reservation",
            Self::Mountpoint => "mountpoint",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Prop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A property's value as `zfs get -Hp` prints it (sizes in bytes) and whether it is set
/// on the dataset itself (`local`) rather than inherited or default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropValue {
    pub value: String,
    pub local: bool,
}

/// A filesystem and the managed properties it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetState {
    pub name: String,
    pub props: BTreeMap<Prop, PropValue>,
}

/// What `zpool create` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub layout: PoolLayout,
    pub ashift: u8,
    /// Mountpoint of the pool's root dataset.
    pub mountpoint: String,
}

/// A tree's names: what [`Zfs::snapshot_names_under`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeNames {
    /// The datasets, sorted.
    pub datasets: Vec<String>,
    /// `(dataset, snapshot name)`, sorted.
    pub snapshots: Vec<(String, String)>,
}

/// ZFS as stored's planners use it. Reads take `&self`; changes take `&mut self`.
pub trait Zfs {
    /// Imported pools, with their layout and health.
    fn pools(&self) -> Result<Vec<PoolState>, ZfsError>;
    /// Pools on attached disks that are not imported (`zpool import`).
    fn importable_pools(&self) -> Result<Vec<PoolState>, ZfsError>;
    fn pool_usage(&self) -> Result<Vec<PoolUsage>, ZfsError>;
    fn disk(&self, path: &str) -> Result<DiskState, ZfsError>;
    fn create_pool(&mut self, spec: &PoolSpec) -> Result<(), ZfsError>;
    fn import_pool(&mut self, name: &str) -> Result<(), ZfsError>;
    fn scrub(&mut self, pool: &str) -> Result<(), ZfsError>;
    /// The pool's history with internal events (`zpool history -i`), dated in UTC: where
    /// the last completed scrub is found once a resilver or a cancel took the scan line.
    fn pool_history(&self, pool: &str) -> Result<String, ZfsError>;

    /// Every filesystem of the imported pools with its managed properties.
    fn datasets(&self) -> Result<Vec<DatasetState>, ZfsError>;
    /// Creates a filesystem (and missing parents) with properties set.
    fn create_dataset(&mut self, name: &str, props: &[(Prop, String)]) -> Result<(), ZfsError>;
    fn set_property(&mut self, dataset: &str, prop: Prop, value: &str) -> Result<(), ZfsError>;
    fn inherit_property(&mut self, dataset: &str, prop: Prop) -> Result<(), ZfsError>;

    /// Snapshots of `dataset`, or of it and its descendants, oldest first.
    fn snapshots(&self, dataset: &str, recursive: bool) -> Result<Vec<Snapshot>, ZfsError>;
    /// The names alone: `dataset` (and, when `recursive`, its descendants) and their
    /// snapshots, sorted: what a prune needs, listed by one channel program in about a
    /// second for 10,000 snapshots where [`Zfs::snapshots`] took a minute or two (TCG).
    fn snapshot_names_under(&self, dataset: &str, recursive: bool) -> Result<TreeNames, ZfsError>;
    /// Takes snapshots (full names, one pool) atomically, with user properties.
    fn snapshot(&mut self, names: &[String], props: &[(String, String)]) -> Result<(), ZfsError>;
    /// Destroys snapshots (full names) in the order given, batched. A held one is refused
    /// and the others still go: the error then names each refused snapshot (EBUSY).
    fn destroy_snapshots(&mut self, names: &[String]) -> Result<(), ZfsError>;
    /// `(snapshot, tag)` pairs.
    fn hold(&mut self, holds: &[(String, String)]) -> Result<(), ZfsError>;
    fn release(&mut self, holds: &[(String, String)]) -> Result<(), ZfsError>;
    /// Tag → time placed.
    fn holds(&self, snapshot: &str) -> Result<BTreeMap<String, u64>, ZfsError>;
    /// Every user hold in `pool`, `(snapshot, tag)`, sorted: what the stale-hold sweep
    /// reads. The real one asks one channel program for the pool's whole tree; this
    /// default walks a listing, one [`Zfs::holds`] per held snapshot.
    fn pool_holds(&self, pool: &str) -> Result<Vec<(String, String)>, ZfsError> {
        let mut out = Vec::new();
        for s in self.snapshots(pool, true)? {
            if s.userrefs > 0 {
                let full = s.full_name();
                out.extend(self.holds(&full)?.into_keys().map(|t| (full.clone(), t)));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Groups full names by pool: one lzc call may only touch one pool.
pub fn by_pool<T: Clone>(items: &[T], name: impl Fn(&T) -> &str) -> BTreeMap<String, Vec<T>> {
    let mut out: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for i in items {
        let n = name(i);
        let pool = n.split(['/', '@', '#']).next().unwrap_or(n);
        out.entry(pool.to_owned()).or_default().push(i.clone());
    }
    out
}
