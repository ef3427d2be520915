//! An in-memory [`Zfs`] for unit tests. It keeps pools, disks, datasets with their
//! properties, and snapshots with holds, and refuses what ZFS refuses: pools on disks in
//! use, names that exist, destroying held snapshots (all-or-nothing, as lzc does).

use std::collections::BTreeMap;
use std::io;

use super::lzc::LzcError;
use super::{
    DatasetState, DiskState, PoolLayout, PoolSpec, PoolState, PoolUsage, Prop, PropValue, Snapshot,
    TreeNames, Zfs, ZfsError,
};
use crate::command::{CommandError, CommandFailure};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePool {
    pub layout: PoolLayout,
    pub imported: bool,
    pub health: String,
    pub scrubs: usize,
    /// The `scan:` text shown instead of the fake's own, as a test sets it (a resilver, a
    /// canceled scrub); a scrub started clears it.
    pub scan: Option<String>,
    /// What `zpool history -i` prints.
    pub history: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FakeSnap {
    name: String,
    guid: u64,
    createtxg: u64,
    creation: i64,
    holds: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default)]
pub struct FakeZfs {
    pub pools: BTreeMap<String, FakePool>,
    pub disks: BTreeMap<String, DiskState>,
    /// Dataset → properties set locally on it.
    local: BTreeMap<String, BTreeMap<Prop, String>>,
    snaps: BTreeMap<String, Vec<FakeSnap>>,
    txg: u64,
    /// Creation time given to new snapshots; tests move it.
    pub now: i64,
    /// Calls that changed something.
    pub writes: usize,
    /// Snapshot destroy calls, as a batch count.
    pub destroy_calls: usize,
    /// Every name given to a snapshot destroy, in the order given (the order costs the
    /// kernel time: see `zcp`).
    pub destroy_order: Vec<String>,
    /// Snapshot listings (`zfs list -t snapshot` runs), each a process and a pool walk.
    pub snapshot_listings: std::cell::Cell<usize>,
    /// `zpool history` reads.
    pub history_reads: std::cell::Cell<usize>,
    /// `get_holds` calls, one ioctl a snapshot on the real side.
    pub holds_calls: std::cell::Cell<usize>,
    /// When set, the next change fails with this stderr and changes nothing.
    pub fail_next: Option<String>,
}

fn cli_failure(command: String, stderr: impl Into<String>) -> ZfsError {
    ZfsError::Command(CommandError::Failed(CommandFailure {
        command,
        status: Some(1),
        stdout: String::new(),
        stderr: stderr.into(),
    }))
}

fn lzc_failure(op: &'static str, target: &str, errno: i32) -> ZfsError {
    ZfsError::Lzc(LzcError::Failed {
        op,
        target: target.to_owned(),
        source: io::Error::from_raw_os_error(errno),
        per_item: vec![(target.to_owned(), io::Error::from_raw_os_error(errno))],
    })
}

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EBUSY: i32 = 16;
const EEXIST: i32 = 17;

fn pool_of(name: &str) -> &str {
    name.split(['/', '@']).next().unwrap_or(name)
}

fn parent_of(name: &str) -> Option<&str> {
    name.rsplit_once('/').map(|(p, _)| p)
}

impl FakeZfs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_disk(mut self, path: &str, state: DiskState) -> Self {
        self.disks.insert(path.to_owned(), state);
        self
    }

    /// A pool that exists on its disks; `imported` false makes it importable.
    pub fn with_pool(mut self, name: &str, layout: PoolLayout, imported: bool) -> Self {
        for d in layout
            .vdevs
            .iter()
            .flat_map(|v| &v.disks)
            .chain(&layout.spares)
        {
            self.disks
                .insert(d.clone(), DiskState::InUse(vec!["TYPE=zfs_member".into()]));
        }
        self.pools.insert(
            name.to_owned(),
            FakePool {
                layout,
                imported,
                health: "ONLINE".into(),
                scrubs: 0,
                scan: None,
                history: String::new(),
            },
        );
        self.local.entry(name.to_owned()).or_default();
        self
    }

    /// A dataset (and its parents) in an existing pool, with no local properties.
    pub fn with_dataset(mut self, name: &str) -> Self {
        let mut n = Some(name);
        while let Some(d) = n {
            self.local.entry(d.to_owned()).or_default();
            n = parent_of(d);
        }
        self
    }

    fn take_failure(&mut self, command: impl FnOnce() -> String) -> Result<(), ZfsError> {
        match self.fail_next.take() {
            Some(stderr) => Err(cli_failure(command(), stderr)),
            None => Ok(()),
        }
    }

    fn imported(&self, name: &str) -> bool {
        self.pools.get(pool_of(name)).is_some_and(|p| p.imported)
    }

    fn exists(&self, dataset: &str) -> bool {
        self.imported(dataset) && self.local.contains_key(dataset)
    }

    /// What `zfs get -p` would print: the local value, else the nearest ancestor's, else
    /// the default (a mountpoint follows its parent's).
    fn effective(&self, dataset: &str, prop: Prop) -> PropValue {
        if let Some(v) = self.local.get(dataset).and_then(|p| p.get(&prop)) {
            return PropValue {
                value: v.clone(),
                local: true,
            };
        }
        let value = match (prop, dataset.rsplit_once('/')) {
            (Prop::Mountpoint, Some((parent, leaf))) => {
                format!("{}/{leaf}", self.effective(parent, prop).value)
            }
            (Prop::Mountpoint, None) => format!("/{dataset}"),
            // Not inheritable in ZFS: a child's is its own.
            (Prop::Quota | Prop::Reservation, _) => "0".into(),
            (_, Some((parent, _))) => self.effective(parent, prop).value,
            (Prop::Compression, None) => "off".into(),
            (Prop::Atime, None) => "on".into(),
            (Prop::Recordsize, None) => "131072".into(),
        };
        PropValue {
            value,
            local: false,
        }
    }

    fn find_snap(&mut self, full: &str) -> Option<&mut FakeSnap> {
        let (ds, name) = full.split_once('@')?;
        self.snaps.get_mut(ds)?.iter_mut().find(|s| s.name == name)
    }

    /// Every snapshot's full name, for assertions.
    pub fn snapshot_names(&self) -> Vec<String> {
        self.snaps
            .iter()
            .flat_map(|(ds, v)| v.iter().map(move |s| format!("{ds}@{}", s.name)))
            .collect()
    }
}

impl Zfs for FakeZfs {
    fn pools(&self) -> Result<Vec<PoolState>, ZfsError> {
        Ok(self
            .pools
            .iter()
            .filter(|(_, p)| p.imported)
            .map(|(name, p)| PoolState {
                name: name.clone(),
                health: p.health.clone(),
                layout: p.layout.clone(),
                scan: if let Some(scan) = &p.scan {
                    scan.clone()
                } else if p.scrubs > 0 {
                    "scrub repaired 0B in 00:00:01 with 0 errors".into()
                } else {
                    "none requested".into()
                },
                errors: "No known data errors".into(),
            })
            .collect())
    }

    fn importable_pools(&self) -> Result<Vec<PoolState>, ZfsError> {
        Ok(self
            .pools
            .iter()
            .filter(|(_, p)| !p.imported)
            .map(|(name, p)| PoolState {
                name: name.clone(),
                health: p.health.clone(),
                layout: p.layout.clone(),
                scan: String::new(),
                errors: String::new(),
            })
            .collect())
    }

    fn pool_usage(&self) -> Result<Vec<PoolUsage>, ZfsError> {
        Ok(self
            .pools
            .iter()
            .filter(|(_, p)| p.imported)
            .map(|(name, p)| PoolUsage {
                name: name.clone(),
                size: 1 << 30,
                allocated: 0,
                free: 1 << 30,
                fragmentation: Some(0),
                capacity: 0,
                health: p.health.clone(),
            })
            .collect())
    }

    fn disk(&self, path: &str) -> Result<DiskState, ZfsError> {
        Ok(self.disks.get(path).cloned().unwrap_or(DiskState::Missing))
    }

    fn create_pool(&mut self, spec: &PoolSpec) -> Result<(), ZfsError> {
        let cmd = || format!("zpool create {}", spec.name);
        self.take_failure(cmd)?;
        if self.pools.contains_key(&spec.name) {
            return Err(cli_failure(
                cmd(),
                format!("cannot create '{}': pool already exists", spec.name),
            ));
        }
        let disks: Vec<&String> = spec
            .layout
            .vdevs
            .iter()
            .flat_map(|v| &v.disks)
            .chain(&spec.layout.spares)
            .collect();
        for d in &disks {
            match self.disks.get(d.as_str()) {
                Some(DiskState::Empty) => {}
                Some(DiskState::InUse(_)) => {
                    return Err(cli_failure(
                        cmd(),
                        format!("invalid vdev specification\n{d} contains a filesystem"),
                    ));
                }
                Some(DiskState::Missing) | None => {
                    return Err(cli_failure(
                        cmd(),
                        format!("cannot open '{d}': No such device or address"),
                    ));
                }
            }
        }
        for d in disks {
            self.disks
                .insert(d.clone(), DiskState::InUse(vec!["TYPE=zfs_member".into()]));
        }
        self.pools.insert(
            spec.name.clone(),
            FakePool {
                layout: spec.layout.clone(),
                imported: true,
                health: "ONLINE".into(),
                scrubs: 0,
                scan: None,
                history: String::new(),
            },
        );
        let root = self.local.entry(spec.name.clone()).or_default();
        root.insert(Prop::Mountpoint, spec.mountpoint.clone());
        self.writes += 1;
        Ok(())
    }

    fn import_pool(&mut self, name: &str) -> Result<(), ZfsError> {
        let cmd = || format!("zpool import -d /dev/disk/by-id {name}");
        self.take_failure(cmd)?;
        match self.pools.get_mut(name) {
            Some(p) if !p.imported => {
                p.imported = true;
                self.writes += 1;
                Ok(())
            }
            Some(_) => Err(cli_failure(
                cmd(),
                format!("cannot import '{name}': a pool with that name already exists"),
            )),
            None => Err(cli_failure(
                cmd(),
                format!("cannot import '{name}': no such pool available"),
            )),
        }
    }

    fn scrub(&mut self, pool: &str) -> Result<(), ZfsError> {
        self.take_failure(|| format!("zpool scrub {pool}"))?;
        match self.pools.get_mut(pool) {
            Some(p) if p.imported => {
                p.scrubs += 1;
                p.scan = None;
                self.writes += 1;
                Ok(())
            }
            _ => Err(cli_failure(
                format!("zpool scrub {pool}"),
                format!("cannot open '{pool}': no such pool"),
            )),
        }
    }

    fn pool_history(&self, pool: &str) -> Result<String, ZfsError> {
        self.history_reads.set(self.history_reads.get() + 1);
        match self.pools.get(pool) {
            Some(p) if p.imported => Ok(p.history.clone()),
            _ => Err(cli_failure(
                format!("zpool history -i {pool}"),
                format!("cannot open '{pool}': no such pool"),
            )),
        }
    }

    fn datasets(&self) -> Result<Vec<DatasetState>, ZfsError> {
        Ok(self
            .local
            .keys()
            .filter(|d| self.imported(d))
            .map(|d| DatasetState {
                name: d.clone(),
                props: Prop::ALL
                    .iter()
                    .map(|p| (*p, self.effective(d, *p)))
                    .collect(),
            })
            .collect())
    }

    fn create_dataset(&mut self, name: &str, props: &[(Prop, String)]) -> Result<(), ZfsError> {
        let cmd = || format!("zfs create -p {name}");
        self.take_failure(cmd)?;
        if !self.imported(name) {
            return Err(cli_failure(
                cmd(),
                format!("cannot create '{name}': no such pool '{}'", pool_of(name)),
            ));
        }
        if self.local.contains_key(name) {
            return Err(cli_failure(
                cmd(),
                format!("cannot create '{name}': dataset already exists"),
            ));
        }
        let mut n = parent_of(name);
        while let Some(p) = n {
            self.local.entry(p.to_owned()).or_default();
            n = parent_of(p);
        }
        self.local.insert(
            name.to_owned(),
            props.iter().map(|(p, v)| (*p, v.clone())).collect(),
        );
        self.writes += 1;
        Ok(())
    }

    fn set_property(&mut self, dataset: &str, prop: Prop, value: &str) -> Result<(), ZfsError> {
        let cmd = || format!("zfs set {prop}={value} {dataset}");
        self.take_failure(cmd)?;
        if !self.exists(dataset) {
            return Err(cli_failure(
                cmd(),
                format!("cannot open '{dataset}': dataset does not exist"),
            ));
        }
        if let Some(p) = self.local.get_mut(dataset) {
            p.insert(prop, value.to_owned());
        }
        self.writes += 1;
        Ok(())
    }

    fn inherit_property(&mut self, dataset: &str, prop: Prop) -> Result<(), ZfsError> {
        let cmd = || format!("zfs inherit {prop} {dataset}");
        self.take_failure(cmd)?;
        if !self.exists(dataset) {
            return Err(cli_failure(
                cmd(),
                format!("cannot open '{dataset}': dataset does not exist"),
            ));
        }
        if let Some(p) = self.local.get_mut(dataset) {
            p.remove(&prop);
        }
        self.writes += 1;
        Ok(())
    }

    fn snapshots(&self, dataset: &str, recursive: bool) -> Result<Vec<Snapshot>, ZfsError> {
        self.snapshot_listings.set(self.snapshot_listings.get() + 1);
        if !self.exists(dataset) {
            return Err(cli_failure(
                format!("zfs list -t snapshot {dataset}"),
                format!("cannot open '{dataset}': dataset does not exist"),
            ));
        }
        let mut out: Vec<Snapshot> = self
            .snaps
            .iter()
            .filter(|(ds, _)| {
                ds.as_str() == dataset
                    || (recursive
                        && ds.starts_with(dataset)
                        && ds.as_bytes().get(dataset.len()) == Some(&b'/'))
            })
            .flat_map(|(ds, v)| {
                v.iter().map(move |s| Snapshot {
                    dataset: ds.clone(),
                    name: s.name.clone(),
                    guid: s.guid,
                    createtxg: s.createtxg,
                    creation: s.creation,
                    userrefs: s.holds.len() as u64,
                })
            })
            .collect();
        out.sort_by_key(|s| s.createtxg);
        Ok(out)
    }

    fn snapshot_names_under(&self, dataset: &str, recursive: bool) -> Result<TreeNames, ZfsError> {
        let mut snapshots: Vec<(String, String)> = self
            .snapshots(dataset, recursive)?
            .into_iter()
            .map(|s| (s.dataset, s.name))
            .collect();
        snapshots.sort();
        let mut datasets: Vec<String> = self
            .local
            .keys()
            .filter(|d| self.imported(d))
            .filter(|d| {
                d.as_str() == dataset
                    || (recursive
                        && d.strip_prefix(dataset)
                            .is_some_and(|rest| rest.starts_with('/')))
            })
            .cloned()
            .collect();
        datasets.sort();
        Ok(TreeNames {
            datasets,
            snapshots,
        })
    }

    fn snapshot(&mut self, names: &[String], _props: &[(String, String)]) -> Result<(), ZfsError> {
        self.take_failure(|| "lzc_snapshot".into())?;
        // The kernel refuses two snapshots of one dataset in one call with EXDEV.
        let mut datasets = std::collections::BTreeSet::new();
        for full in names {
            if let Some((ds, _)) = full.split_once('@')
                && !datasets.insert(ds)
            {
                return Err(lzc_failure("snapshot", full, 18));
            }
        }
        for full in names {
            let Some((ds, name)) = full.split_once('@') else {
                return Err(lzc_failure("snapshot", full, 22));
            };
            if !self.exists(ds) {
                return Err(lzc_failure("snapshot", full, ENOENT));
            }
            let dup = self
                .snaps
                .get(ds)
                .is_some_and(|v| v.iter().any(|s| s.name == name));
            if dup {
                return Err(lzc_failure("snapshot", full, EEXIST));
            }
        }
        self.txg += 1;
        for full in names {
            if let Some((ds, name)) = full.split_once('@') {
                let guid = self.txg.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ full.len() as u64;
                self.snaps.entry(ds.to_owned()).or_default().push(FakeSnap {
                    name: name.to_owned(),
                    guid,
                    createtxg: self.txg,
                    creation: self.now,
                    holds: BTreeMap::new(),
                });
            }
        }
        self.writes += 1;
        Ok(())
    }

    fn destroy_snapshots(&mut self, names: &[String]) -> Result<(), ZfsError> {
        self.take_failure(|| "the destroy channel program".into())?;
        self.destroy_order.extend_from_slice(names);
        // As the real destroy program: a held snapshot is refused and named, the others
        // go; a missing snapshot is not an error.
        let held: Vec<(String, io::Error)> = names
            .iter()
            .filter(|full| self.find_snap(full).is_some_and(|s| !s.holds.is_empty()))
            .map(|full| (full.clone(), io::Error::from_raw_os_error(EBUSY)))
            .collect();
        for full in names {
            if held.iter().any(|(h, _)| h == full) {
                continue;
            }
            if let Some((ds, name)) = full.split_once('@')
                && let Some(v) = self.snaps.get_mut(ds)
            {
                v.retain(|s| s.name != name);
            }
        }
        if let Some((first, _)) = held.first() {
            self.destroy_calls += 1;
            self.writes += 1;
            return Err(ZfsError::Lzc(LzcError::Failed {
                op: "destroy snapshots",
                target: first.clone(),
                source: io::Error::from_raw_os_error(EBUSY),
                per_item: held,
            }));
        }
        self.destroy_calls += 1;
        self.writes += 1;
        Ok(())
    }

    fn hold(&mut self, holds: &[(String, String)]) -> Result<(), ZfsError> {
        self.take_failure(|| "lzc_hold".into())?;
        for (snap, tag) in holds {
            match self.find_snap(snap) {
                None => return Err(lzc_failure("hold", snap, ENOENT)),
                Some(s) if s.holds.contains_key(tag) => {
                    return Err(lzc_failure("hold", snap, EEXIST));
                }
                Some(_) => {}
            }
        }
        let now = u64::try_from(self.now).unwrap_or(0);
        for (snap, tag) in holds {
            if let Some(s) = self.find_snap(snap) {
                s.holds.insert(tag.clone(), now);
            }
        }
        self.writes += 1;
        Ok(())
    }

    fn release(&mut self, holds: &[(String, String)]) -> Result<(), ZfsError> {
        self.take_failure(|| "lzc_release".into())?;
        for (snap, tag) in holds {
            match self.find_snap(snap) {
                None => return Err(lzc_failure("release", snap, ENOENT)),
                Some(s) if !s.holds.contains_key(tag) => {
                    return Err(lzc_failure("release", snap, ESRCH));
                }
                Some(_) => {}
            }
        }
        for (snap, tag) in holds {
            if let Some(s) = self.find_snap(snap) {
                s.holds.remove(tag);
            }
        }
        self.writes += 1;
        Ok(())
    }

    fn pool_holds(&self, pool: &str) -> Result<Vec<(String, String)>, ZfsError> {
        let mut out: Vec<(String, String)> = self
            .snapshots(pool, true)?
            .into_iter()
            .flat_map(|s| {
                let full = s.full_name();
                let tags: Vec<String> = self
                    .snaps
                    .get(&s.dataset)
                    .and_then(|v| v.iter().find(|f| f.name == s.name))
                    .map(|f| f.holds.keys().cloned().collect())
                    .unwrap_or_default();
                tags.into_iter().map(move |tag| (full.clone(), tag))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn holds(&self, snapshot: &str) -> Result<BTreeMap<String, u64>, ZfsError> {
        self.holds_calls.set(self.holds_calls.get() + 1);
        let found = snapshot
            .split_once('@')
            .and_then(|(ds, name)| self.snaps.get(ds)?.iter().find(|s| s.name == name));
        match found {
            Some(s) => Ok(s.holds.clone()),
            None => Err(lzc_failure("get holds", snapshot, ENOENT)),
        }
    }
}
