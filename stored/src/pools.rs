//! Pools and datasets: the plan (pure) from the `storage` section and what ZFS shows, and
//! its apply through [`Zfs`].
//!
//! - A declared pool that is imported is checked against its declared layout; one that is
//!   importable is imported (after the same check); one that exists nowhere is created,
//!   and only when every disk of it is empty.
//! - A pool is never destroyed, recreated or reshaped: a changed layout is an error that
//!   says so, and nothing is applied.
//! - Datasets are created and their properties set; they are never destroyed. Datasets
//!   and pools the config does not name are reported, not touched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use appliance::model::{Compression, Dataset, Storage};
use appliance::types::DatasetName;

use crate::zfs::cli::{slot_is_unknown, slot_members};
use crate::zfs::{
    DatasetState, DiskState, PoolLayout, PoolSpec, PoolState, Prop, VdevSpec, Zfs, ZfsError,
    whole_disk,
};

/// One change to ZFS. There is deliberately no variant that destroys anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    ImportPool {
        name: String,
    },
    CreatePool(PoolSpec),
    CreateDataset {
        name: String,
        props: Vec<(Prop, String)>,
    },
    SetProperty {
        dataset: String,
        prop: Prop,
        value: String,
    },
    InheritProperty {
        dataset: String,
        prop: Prop,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ImportPool { name } => write!(f, "import pool {name}"),
            Self::CreatePool(spec) => write!(f, "create pool {} {}", spec.name, spec.layout),
            Self::CreateDataset { name, props } => {
                write!(f, "create dataset {name}")?;
                for (p, v) in props {
                    write!(f, " {p}={v}")?;
                }
                Ok(())
            }
            Self::SetProperty {
                dataset,
                prop,
                value,
            } => write!(f, "set {prop}={value} on {dataset}"),
            Self::InheritProperty { dataset, prop } => write!(f, "inherit {prop} on {dataset}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "pool {pool}: the config declares {declared} but the pool is {found}; stored never \
         destroys, recreates or reshapes a pool. Put the pool's layout back into the config, \
         or change the pool by hand (zpool add/attach) and then the config"
    )]
    LayoutChanged {
        pool: String,
        declared: PoolLayout,
        found: PoolLayout,
    },
    #[error(
        "pool {pool}: disk {disk} is not empty ({found}); stored creates pools only on empty \
         disks. If its contents may go, wipe it yourself (wipefs -a {disk}); if it holds a \
         pool, import that pool instead"
    )]
    DiskNotEmpty {
        pool: String,
        disk: String,
        found: String,
    },
    #[error("pool {pool}: disk {disk} does not exist; check the path under /dev/disk/by-id")]
    DiskMissing { pool: String, disk: String },
    #[error("pool {pool}: disk {disk} is declared more than once")]
    DiskTwice { pool: String, disk: String },
}

/// What ZFS shows, as far as the plan needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub pools: Vec<PoolState>,
    pub importable: Vec<PoolState>,
    /// Disks of declared pools that exist nowhere yet.
    pub disks: BTreeMap<String, DiskState>,
    pub datasets: Vec<DatasetState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoragePlan {
    pub actions: Vec<Action>,
    /// Imported pools the config does not declare (left alone).
    pub unmanaged_pools: Vec<String>,
    /// Datasets in declared pools that the config does not name (left alone, never
    /// destroyed).
    pub unmanaged_datasets: Vec<String>,
    /// Pools this plan imports: their datasets are invisible until then, so their dataset
    /// changes wait for a plan made after the import ([`converge`] makes it).
    pub importing: Vec<String>,
}

/// The layout the config declares for a pool.
pub fn declared_layout(pool: &appliance::model::Pool) -> PoolLayout {
    PoolLayout {
        vdevs: pool
            .vdevs
            .iter()
            .map(|v| VdevSpec {
                layout: v.layout,
                disks: v.disks.iter().map(|d| d.as_str().to_owned()).collect(),
            })
            .collect(),
        spares: pool.spares.iter().map(|d| d.as_str().to_owned()).collect(),
        other: Vec::new(),
    }
}

/// A disk as both `zpool status -P` (full path, `-part1`) and `zpool import` (short name)
/// show it, and as the config names it: the last path component of the whole disk.
fn disk_key(d: &str) -> &str {
    let d = whole_disk(d);
    d.rsplit('/').next().unwrap_or(d)
}

/// Whether the pool's logical layout is the declared one. Vdevs and disks compare in any
/// order. A disk in a repair counts as the declared disk: a `replacing-N` slot as the disk
/// being replaced or its new one, a `spare-N` slot as the failed disk or the spare in use,
/// and a disk zpool shows by GUID alone as any declared disk no other slot takes. A
/// degraded pool is a health matter, not a changed layout.
fn same_layout(declared: &PoolLayout, found: &PoolLayout) -> bool {
    fn sorted(l: &[String]) -> Vec<&str> {
        let mut v: Vec<&str> = l.iter().map(|d| disk_key(d)).collect();
        v.sort_unstable();
        v
    }
    if sorted(&declared.spares) != sorted(&found.spares)
        || sorted(&declared.other) != sorted(&found.other)
        || declared.vdevs.len() != found.vdevs.len()
    {
        return false;
    }
    let mut used = vec![false; declared.vdevs.len()];
    found.vdevs.iter().all(|f| {
        let pick = declared
            .vdevs
            .iter()
            .enumerate()
            .find(|(i, d)| !used.get(*i).copied().unwrap_or(true) && same_vdev(d, f))
            .map(|(i, _)| i);
        pick.and_then(|i| used.get_mut(i))
            .map(|u| *u = true)
            .is_some()
    })
}

/// One vdev against a declared one: the same kind and each slot matched to its own
/// declared disk (slots naming a real device first, then the GUID-only ones).
fn same_vdev(declared: &VdevSpec, found: &VdevSpec) -> bool {
    if declared.layout != found.layout || declared.disks.len() != found.disks.len() {
        return false;
    }
    let mut free: Vec<&str> = declared.disks.iter().map(|d| disk_key(d)).collect();
    let (unknown, known): (Vec<&String>, Vec<&String>) =
        found.disks.iter().partition(|s| slot_is_unknown(s));
    // Slots with one device before those with several, so that a repair slot does not
    // take a disk that a plain slot names.
    let mut known = known;
    known.sort_by_key(|s| slot_members(s).count());
    for slot in known {
        let Some(i) = free
            .iter()
            .position(|d| slot_members(slot).any(|m| disk_key(m) == *d))
        else {
            return false;
        };
        free.swap_remove(i);
    }
    free.len() == unknown.len()
}

/// Reads what the plan needs. A config without storage reads nothing (a box without
/// data disks need not have ZFS working); `zpool import`, which scans every disk, runs only
/// while a declared pool is not imported; disks are probed only for declared pools that
/// are neither imported nor importable.
pub fn observe(zfs: &dyn Zfs, desired: &Storage) -> Result<Observed, ZfsError> {
    if desired.pools.is_empty() && desired.datasets.is_empty() {
        return Ok(Observed::default());
    }
    let pools = zfs.pools()?;
    let all_imported = desired
        .pools
        .keys()
        .all(|name| pools.iter().any(|p| p.name == name.as_str()));
    let importable = if all_imported {
        Vec::new()
    } else {
        zfs.importable_pools()?
    };
    let known: BTreeSet<&str> = pools
        .iter()
        .chain(&importable)
        .map(|p| p.name.as_str())
        .collect();
    let mut disks = BTreeMap::new();
    for (name, pool) in &desired.pools {
        if known.contains(name.as_str()) {
            continue;
        }
        let layout = declared_layout(pool);
        for d in layout
            .vdevs
            .iter()
            .flat_map(|v| &v.disks)
            .chain(&layout.spares)
        {
            disks.insert(d.clone(), zfs.disk(d)?);
        }
    }
    let datasets = zfs.datasets()?;
    Ok(Observed {
        pools,
        importable,
        disks,
        datasets,
    })
}

/// The pool and dataset changes that bring ZFS to `desired`, or every reason it cannot.
pub fn plan(desired: &Storage, observed: &Observed) -> Result<StoragePlan, Vec<PlanError>> {
    let mut errors = Vec::new();
    let mut plan = StoragePlan::default();
    let find = |list: &[PoolState], name: &str| list.iter().find(|p| p.name == name).cloned();

    for (name, pool) in &desired.pools {
        let name = name.as_str();
        let declared = declared_layout(pool);
        let existing = find(&observed.pools, name)
            .map(|p| (p, true))
            .or_else(|| find(&observed.importable, name).map(|p| (p, false)));
        if let Some((found, imported)) = existing {
            if !same_layout(&declared, &found.layout) {
                errors.push(PlanError::LayoutChanged {
                    pool: name.to_owned(),
                    declared,
                    found: found.layout,
                });
            } else if !imported {
                plan.actions.push(Action::ImportPool {
                    name: name.to_owned(),
                });
                plan.importing.push(name.to_owned());
            }
            continue;
        }
        let mut seen = BTreeSet::new();
        let mut ok = true;
        for d in declared
            .vdevs
            .iter()
            .flat_map(|v| &v.disks)
            .chain(&declared.spares)
        {
            let mut err = |e| {
                errors.push(e);
                false
            };
            if !seen.insert(d.clone()) {
                ok &= err(PlanError::DiskTwice {
                    pool: name.to_owned(),
                    disk: d.clone(),
                });
                continue;
            }
            ok &= match observed.disks.get(d) {
                Some(DiskState::Empty) => true,
                Some(DiskState::InUse(found)) => err(PlanError::DiskNotEmpty {
                    pool: name.to_owned(),
                    disk: d.clone(),
                    found: found.join(", "),
                }),
                Some(DiskState::Missing) | None => err(PlanError::DiskMissing {
                    pool: name.to_owned(),
                    disk: d.clone(),
                }),
            };
        }
        if ok {
            let mountpoint = desired
                .datasets
                .iter()
                .find(|(d, _)| d.as_str() == name)
                .and_then(|(_, ds)| ds.mountpoint.as_ref())
                .map_or_else(|| format!("/mnt/{name}"), |m| m.to_string());
            plan.actions.push(Action::CreatePool(PoolSpec {
                name: name.to_owned(),
                layout: declared,
                ashift: pool.ashift,
                mountpoint,
            }));
        }
    }

    let declared_pools: BTreeSet<&str> = desired.pools.keys().map(DatasetName::as_str).collect();
    plan.unmanaged_pools = observed
        .pools
        .iter()
        .map(|p| p.name.clone())
        .filter(|p| !declared_pools.contains(p.as_str()))
        .collect();

    let observed_ds: BTreeMap<&str, &DatasetState> = observed
        .datasets
        .iter()
        .map(|d| (d.name.as_str(), d))
        .collect();
    for (name, ds) in &desired.datasets {
        if plan.importing.iter().any(|p| p == name.pool()) {
            continue;
        }
        let want = desired_props(name, ds);
        let creating_pool = plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreatePool(spec) if spec.name == name.as_str()));
        match observed_ds.get(name.as_str()) {
            // The pool's root dataset comes with the pool (its mountpoint given by -m).
            None if creating_pool => {
                for (prop, value) in want {
                    if let Some(value) = value
                        && prop != Prop::Mountpoint
                    {
                        plan.actions.push(Action::SetProperty {
                            dataset: name.to_string(),
                            prop,
                            value,
                        });
                    }
                }
            }
            None => plan.actions.push(Action::CreateDataset {
                name: name.to_string(),
                props: want
                    .iter()
                    .filter_map(|(p, v)| v.clone().map(|v| (*p, v)))
                    .collect(),
            }),
            Some(state) => {
                for (prop, value) in want {
                    let have = state.props.get(&prop);
                    match value {
                        Some(v) if have.is_none_or(|h| h.value != v) => {
                            plan.actions.push(Action::SetProperty {
                                dataset: name.to_string(),
                                prop,
                                value: v,
                            });
                        }
                        Some(_) => {}
                        // Quota and reservation cannot be inherited; "none" is their unset.
                        None if matches!(prop, Prop::Quota | Prop::Reservation)
                            && have.is_some_and(|h| h.value != "0" && h.value != "none") =>
                        {
                            plan.actions.push(Action::SetProperty {
                                dataset: name.to_string(),
                                prop,
                                value: "none".into(),
                            });
                        }
                        None if matches!(prop, Prop::Quota | Prop::Reservation) => {}
                        None if have.is_some_and(|h| h.local) => {
                            plan.actions.push(Action::InheritProperty {
                                dataset: name.to_string(),
                                prop,
                            });
                        }
                        None => {}
                    }
                }
            }
        }
    }
    let named: BTreeSet<&str> = desired.datasets.keys().map(DatasetName::as_str).collect();
    plan.unmanaged_datasets = observed
        .datasets
        .iter()
        .map(|d| d.name.as_str())
        .filter(|d| {
            let pool = d.split('/').next().unwrap_or(d);
            declared_pools.contains(pool) && *d != pool && !named.contains(d)
        })
        .map(ToOwned::to_owned)
        .collect();

    if errors.is_empty() {
        Ok(plan)
    } else {
        Err(errors)
    }
}

/// The managed properties a dataset should have, as `zfs get -p` prints them; `None`
/// leaves the property inherited.
fn desired_props(name: &DatasetName, ds: &Dataset) -> Vec<(Prop, Option<String>)> {
    let compression = ds.compression.map(|c| {
        match c {
            Compression::Off => "off",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Zle => "zle",
        }
        .to_owned()
    });
    let onoff = |b: bool| if b { "on" } else { "off" }.to_owned();
    let bytes = |s: &appliance::types::Size| s.bytes().to_string();
    let mountpoint = ds
        .mountpoint
        .as_ref()
        .map_or_else(|| format!("/mnt/{name}"), ToString::to_string);
    vec![
        (Prop::Compression, compression),
        (Prop::Atime, ds.atime.map(onoff)),
        (Prop::Recordsize, ds.recordsize.as_ref().map(bytes)),
        (Prop::Quota, ds.quota.as_ref().map(bytes)),
        (Prop::Reservation, ds.reservation.as_ref().map(bytes)),
        (Prop::Mountpoint, Some(mountpoint)),
    ]
}

/// A step of the plan failed; the steps before it stay done (creating a pool or a dataset
/// is not undone by destroying it: that is the one thing stored never does).
#[derive(Debug, thiserror::Error)]
#[error("{action} failed after {done} of {total} steps: {source}")]
pub struct ApplyError {
    pub action: Action,
    pub done: usize,
    pub total: usize,
    #[source]
    pub source: ZfsError,
}

/// Why storage did not converge.
#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    #[error("cannot read the state of ZFS: {0}")]
    Observe(#[from] ZfsError),
    #[error("the storage config cannot be applied: {}", join(.0))]
    Plan(Vec<PlanError>),
    #[error(transparent)]
    Apply(#[from] Box<ApplyError>),
}

fn join(errors: &[PlanError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Observes, plans and applies; when the plan imported pools, once more for the datasets
/// in them. Returns the actions applied.
pub fn converge(zfs: &mut dyn Zfs, desired: &Storage) -> Result<Vec<Action>, ConvergeError> {
    let mut applied = Vec::new();
    for _ in 0..2 {
        let observed = observe(zfs, desired)?;
        let plan = plan(desired, &observed).map_err(ConvergeError::Plan)?;
        apply(zfs, &plan.actions)?;
        applied.extend(plan.actions);
        if plan.importing.is_empty() {
            break;
        }
    }
    Ok(applied)
}

/// Applies the actions in order and stops at the first failure.
pub fn apply(zfs: &mut dyn Zfs, actions: &[Action]) -> Result<(), Box<ApplyError>> {
    for (done, action) in actions.iter().enumerate() {
        tracing::info!(%action, "storage");
        let result = match action {
            Action::ImportPool { name } => zfs.import_pool(name),
            Action::CreatePool(spec) => zfs.create_pool(spec),
            Action::CreateDataset { name, props } => zfs.create_dataset(name, props),
            Action::SetProperty {
                dataset,
                prop,
                value,
            } => zfs.set_property(dataset, *prop, value),
            Action::InheritProperty { dataset, prop } => zfs.inherit_property(dataset, *prop),
        };
        result.map_err(|source| {
            Box::new(ApplyError {
                action: action.clone(),
                done,
                total: actions.len(),
                source,
            })
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::{FakeZfs, VdevLayout};

    fn storage(toml_text: &str) -> Storage {
        toml::from_str(toml_text).unwrap()
    }

    const TANK: &str = r#"
[pools.tank]
vdevs = [{ layout = "mirror", disks = ["/dev/disk/by-id/d1", "/dev/disk/by-id/d2"] }]
spares = ["/dev/disk/by-id/d3"]

[datasets."tank/media"]
compression = "zstd"
recordsize = "1M"
quota = "100G"

[datasets."tank/media/photos"]
atime = false
"#;

    fn id(n: &str) -> String {
        format!("/dev/disk/by-id/{n}")
    }

    fn empty_disks() -> FakeZfs {
        FakeZfs::new()
            .with_disk(&id("d1"), DiskState::Empty)
            .with_disk(&id("d2"), DiskState::Empty)
            .with_disk(&id("d3"), DiskState::Empty)
    }

    fn plan_for(zfs: &FakeZfs, desired: &Storage) -> Result<StoragePlan, Vec<PlanError>> {
        plan(desired, &observe(zfs, desired).unwrap())
    }

    fn converge_once(zfs: &mut FakeZfs, desired: &Storage) -> StoragePlan {
        let p = plan_for(zfs, desired).unwrap();
        apply(zfs, &p.actions).unwrap();
        p
    }

    fn tank_layout(disks: &[&str]) -> PoolLayout {
        PoolLayout {
            vdevs: vec![VdevSpec {
                layout: VdevLayout::Mirror,
                disks: disks.iter().map(|d| id(d)).collect(),
            }],
            spares: vec![id("d3")],
            other: vec![],
        }
    }

    #[test]
    fn creates_the_pool_on_empty_disks_then_plans_nothing() {
        let desired = storage(TANK);
        let mut zfs = empty_disks();
        let p = converge_once(&mut zfs, &desired);
        let shown: Vec<String> = p.actions.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "create pool tank [mirror(/dev/disk/by-id/d1, /dev/disk/by-id/d2)] spares [/dev/disk/by-id/d3]",
                "create dataset tank/media compression=zstd recordsize=1048576 quota=107374182400 mountpoint=/mnt/tank/media",
                "create dataset tank/media/photos atime=off mountpoint=/mnt/tank/media/photos",
            ]
        );
        let Action::CreatePool(spec) = &p.actions[0] else {
            panic!()
        };
        assert_eq!((spec.ashift, spec.mountpoint.as_str()), (12, "/mnt/tank"));
        let writes = zfs.writes;
        let again = converge_once(&mut zfs, &desired);
        assert_eq!(again.actions, []);
        assert_eq!(zfs.writes, writes, "a second apply writes nothing");
    }

    #[test]
    fn imports_an_existing_pool_instead_of_creating_one() {
        let desired = storage(TANK);
        // zpool import lists short names of the partitions ZFS made.
        let mut layout = tank_layout(&["d2-part1", "d1-part1"]);
        layout.spares = vec!["d3-part1".into()];
        let mut zfs = FakeZfs::new()
            .with_pool("tank", layout, false)
            .with_dataset("tank/media");
        let p = plan_for(&zfs, &desired).unwrap();
        assert_eq!(
            p.actions,
            [Action::ImportPool {
                name: "tank".into()
            }]
        );
        assert_eq!(p.importing, ["tank"]);
        let applied = converge(&mut zfs, &desired).unwrap();
        assert!(zfs.pools["tank"].imported);
        // tank/media existed: only its properties are set, and photos is created.
        let shown: Vec<String> = applied.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "import pool tank",
                "set compression=zstd on tank/media",
                "set recordsize=1048576 on tank/media",
                "set quota=107374182400 on tank/media",
                "set mountpoint=/mnt/tank/media on tank/media",
                "create dataset tank/media/photos atime=off mountpoint=/mnt/tank/media/photos",
            ]
        );
        assert_eq!(converge(&mut zfs, &desired).unwrap(), []);
    }

    #[test]
    fn a_changed_layout_is_an_error_that_says_so() {
        let mut desired = storage(TANK);
        let mut zfs = empty_disks();
        converge_once(&mut zfs, &desired);
        let writes = zfs.writes;
        // The config now wants raidz1 over the same disks plus one.
        let pool = desired.pools.values_mut().next().unwrap();
        pool.vdevs[0].layout = VdevLayout::Raidz1;
        let errs = plan_for(&zfs, &desired).unwrap_err();
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(
            msg.contains("pool tank: the config declares [raidz1("),
            "{msg}"
        );
        assert!(msg.contains("but the pool is [mirror("), "{msg}");
        assert!(
            msg.contains("never destroys, recreates or reshapes"),
            "{msg}"
        );
        assert_eq!(zfs.writes, writes);
        assert!(zfs.pools["tank"].imported);
    }

    #[test]
    fn an_importable_pool_with_another_layout_is_not_imported() {
        let desired = storage(TANK);
        let zfs = FakeZfs::new().with_pool("tank", tank_layout(&["d1", "d9"]), false);
        let errs = plan_for(&zfs, &desired).unwrap_err();
        assert!(matches!(&errs[0], PlanError::LayoutChanged { pool, .. } if pool == "tank"));
    }

    /// `zpool status -P` of tank (mirror d1 d2, spare d3) with `tree` as the mirror's
    /// members and `spare` as the state of d3 in the spares list.
    fn tank_status(state: &str, tree: &str, spare: &str) -> String {
        format!(
            "  pool: tank
 state: {state}
status: One or more devices could not be used because the label is missing or
\tinvalid.  Sufficient replicas exist for the pool to continue
\tfunctioning in a degraded state.
action: Replace the device using 'zpool replace'.
  scan: resilver in progress since Thu Nov 26 16:30:00 2026
\t1.50G scanned at 150M/s, 800M issued at 80M/s, 2G total
\t790M resilvered, 40.00% done, 00:00:15 to go
config:

\tNAME                                 STATE     READ WRITE CKSUM
\ttank                                 {state}     0     0     0
\t  mirror-0                           {state}     0     0     0
{tree}\tspares
\t  /dev/disk/by-id/d3-part1           {spare}

errors: No known data errors
"
        )
    }

    fn plan_on_status(status: &str) -> Result<StoragePlan, Vec<PlanError>> {
        let observed = Observed {
            pools: crate::zfs::cli::parse_status(status).unwrap(),
            ..Observed::default()
        };
        pool_steps(plan(&storage(TANK), &observed))
    }

    /// The plan's pool steps (the datasets, not observed here, are created after them).
    fn pool_steps(p: Result<StoragePlan, Vec<PlanError>>) -> Result<StoragePlan, Vec<PlanError>> {
        p.map(|mut p| {
            p.actions
                .retain(|a| matches!(a, Action::CreatePool(_) | Action::ImportPool { .. }));
            p
        })
    }

    #[test]
    fn a_pool_in_repair_keeps_its_layout() {
        let replacing = "\t    /dev/disk/by-id/d1-part1         ONLINE       0     0     0
\t    replacing-1                      DEGRADED     0     0     0
\t      /dev/disk/by-id/d2-part1       OFFLINE      0     0     0
\t      /dev/disk/by-id/d4-part1       ONLINE       0     0     0  (resilvering)
";
        // The config may still name the old disk, or already the new one.
        let status = tank_status("DEGRADED", replacing, "AVAIL");
        let pools = crate::zfs::cli::parse_status(&status).unwrap();
        assert_eq!(pools[0].health, "DEGRADED");
        assert_eq!(
            pools[0].layout.vdevs[0].to_string(),
            "mirror(/dev/disk/by-id/d1, /dev/disk/by-id/d2|/dev/disk/by-id/d4)"
        );
        assert_eq!(pools[0].layout.spares, [id("d3")]);
        assert_eq!(plan_on_status(&status).unwrap().actions, []);
        let new_disk = storage(&TANK.replace("by-id/d2\"", "by-id/d4\""));
        let observed = Observed {
            pools: pools.clone(),
            ..Observed::default()
        };
        assert_eq!(pool_steps(plan(&new_disk, &observed)).unwrap().actions, []);
        // A disk that is neither side of the replace is still another layout.
        let other = storage(&TANK.replace("by-id/d2\"", "by-id/d9\""));
        let errs = plan(&other, &observed).unwrap_err();
        assert!(
            matches!(&errs[0], PlanError::LayoutChanged { .. }),
            "{errs:?}"
        );

        // A hot spare standing in for a failed disk.
        let spare = "\t    /dev/disk/by-id/d1-part1         ONLINE       0     0     0
\t    spare-1                          DEGRADED     0     0     0
\t      /dev/disk/by-id/d2-part1       FAULTED      0     0     0  too many errors
\t      /dev/disk/by-id/d3-part1       ONLINE       0     0     0
";
        let status = tank_status("DEGRADED", spare, "INUSE     currently in use");
        assert_eq!(plan_on_status(&status).unwrap().actions, []);

        // A disk gone missing, shown by its GUID and the path it had.
        let missing = "\t    /dev/disk/by-id/d1-part1         ONLINE       0     0     0
\t    4105387349734127683              UNAVAIL      0     0     0  was /dev/disk/by-id/d2-part1
";
        let status = tank_status("DEGRADED", missing, "AVAIL");
        let pools = crate::zfs::cli::parse_status(&status).unwrap();
        assert_eq!(pools[0].layout.vdevs[0].disks, [id("d1"), id("d2")]);
        assert_eq!(plan_on_status(&status).unwrap().actions, []);
        let moved = status.replace(
            "was /dev/disk/by-id/d2-part1",
            "was /dev/disk/by-id/d9-part1",
        );
        assert!(plan_on_status(&moved).is_err());

        // By its GUID alone (missing since the import): any one declared disk.
        let guid = "\t    4105387349734127683              UNAVAIL      0     0     0
\t    /dev/disk/by-id/d2-part1         ONLINE       0     0     0
";
        assert_eq!(
            plan_on_status(&tank_status("DEGRADED", guid, "AVAIL"))
                .unwrap()
                .actions,
            []
        );

        // A single-disk vdev being replaced is a slot at the top of the tree.
        let single = "  pool: tank
 state: ONLINE
config:

\tNAME                               STATE     READ WRITE CKSUM
\ttank                               ONLINE       0     0     0
\t  replacing-0                      ONLINE       0     0     0
\t    /dev/disk/by-id/d1-part1       ONLINE       0     0     0
\t    /dev/disk/by-id/d4-part1       ONLINE       0     0     0  (resilvering)
\t  /dev/disk/by-id/d2-part1         ONLINE       0     0     0

errors: No known data errors
";
        let pools = crate::zfs::cli::parse_status(single).unwrap();
        assert_eq!(
            pools[0].layout.to_string(),
            "[single(/dev/disk/by-id/d1|/dev/disk/by-id/d4), single(/dev/disk/by-id/d2)]"
        );
    }

    #[test]
    fn disks_that_are_not_empty_or_missing_stop_the_creation() {
        let desired = storage(TANK);
        let zfs = FakeZfs::new()
            .with_disk(&id("d1"), DiskState::InUse(vec!["PTTYPE=gpt".into()]))
            .with_disk(&id("d2"), DiskState::Empty);
        let errs = plan_for(&zfs, &desired).unwrap_err();
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with("pool tank: disk /dev/disk/by-id/d1 is not empty (PTTYPE=gpt)")
        );
        assert!(shown[0].contains("wipefs -a /dev/disk/by-id/d1"));
        assert!(shown[1].starts_with("pool tank: disk /dev/disk/by-id/d3 does not exist"));
    }

    #[test]
    fn property_drift_is_corrected_and_removed_settings_inherit() {
        let mut desired = storage(TANK);
        let mut zfs = empty_disks();
        converge_once(&mut zfs, &desired);
        zfs.set_property("tank/media", Prop::Compression, "lz4")
            .unwrap();
        let media = desired
            .datasets
            .iter_mut()
            .find(|(n, _)| n.as_str() == "tank/media")
            .unwrap()
            .1;
        media.recordsize = None;
        media.quota = None;
        let p = converge_once(&mut zfs, &desired);
        let shown: Vec<String> = p.actions.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "set compression=zstd on tank/media",
                "inherit recordsize on tank/media",
                "set quota=none on tank/media",
            ]
        );
    }

    #[test]
    fn undeclared_datasets_and_pools_are_reported_and_left_alone() {
        let desired = storage(TANK);
        let mut zfs = empty_disks()
            .with_pool(
                "other",
                PoolLayout {
                    vdevs: vec![VdevSpec {
                        layout: VdevLayout::Single,
                        disks: vec![id("x1")],
                    }],
                    ..PoolLayout::default()
                },
                true,
            )
            .with_dataset("other/stuff");
        converge_once(&mut zfs, &desired);
        zfs.create_dataset("tank/old", &[]).unwrap();
        let writes = zfs.writes;
        let p = plan_for(&zfs, &desired).unwrap();
        assert_eq!(p.actions, []);
        assert_eq!(p.unmanaged_pools, ["other"]);
        assert_eq!(p.unmanaged_datasets, ["tank/old"]);
        assert_eq!(zfs.writes, writes);
    }

    #[test]
    fn a_declared_pool_root_is_configured_not_created() {
        let desired = storage(&format!(
            "{TANK}\n[datasets.tank]\ncompression = \"lz4\"\nmountpoint = \"/srv/tank\"\n"
        ));
        let mut zfs = empty_disks();
        let p = converge_once(&mut zfs, &desired);
        let shown: Vec<String> = p.actions.iter().take(2).map(ToString::to_string).collect();
        assert!(shown[0].starts_with("create pool tank"), "{shown:?}");
        assert_eq!(shown[1], "set compression=lz4 on tank");
        let Action::CreatePool(spec) = &p.actions[0] else {
            panic!()
        };
        assert_eq!(spec.mountpoint, "/srv/tank");
        assert_eq!(converge_once(&mut zfs, &desired).actions, []);
    }

    #[test]
    fn no_storage_reads_nothing() {
        let zfs = FakeZfs::new().with_pool("other", PoolLayout::default(), true);
        let observed = observe(&zfs, &Storage::default()).unwrap();
        assert_eq!(observed, Observed::default());
        assert_eq!(
            plan(&Storage::default(), &observed).unwrap(),
            StoragePlan::default()
        );
    }

    #[test]
    fn a_failed_step_reports_how_far_it_got() {
        let desired = storage(TANK);
        let mut zfs = empty_disks();
        let p = plan_for(&zfs, &desired).unwrap();
        apply(&mut zfs, &p.actions[..1]).unwrap();
        zfs.fail_next = Some("cannot create 'tank/media': out of space".into());
        let err = apply(&mut zfs, &p.actions[1..]).unwrap_err();
        assert_eq!(err.done, 0);
        assert!(err.to_string().contains("out of space"));
    }
}
