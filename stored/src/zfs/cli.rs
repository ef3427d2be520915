//! The `zfs` and `zpool` tools, for what libzfs_core has no call for: pools (create,
//! import, status, scrub), properties and listings. Listings use `-H` (tabs, no header)
//! and `-p` (exact numbers) and are parsed into typed structs; a failure keeps the
//! command, its status, stdout and stderr ([`crate::command::CommandFailure`]).

use std::collections::BTreeMap;
use std::path::Path;

use super::{
    DatasetState, DiskState, PoolLayout, PoolSpec, PoolState, PoolUsage, Prop, PropValue, Snapshot,
    VdevLayout, VdevSpec, ZfsError, whole_disk,
};
use crate::command::{self, CommandError};

/// Where `zpool import` looks for pools: stable names, as the config uses.
pub const IMPORT_DIR: &str = "/dev/disk/by-id";

/// The tool paths; tests and the VM harness may point them elsewhere.
#[derive(Debug, Clone)]
pub struct ZfsCli {
    pub zfs: String,
    pub zpool: String,
    pub blkid: String,
}

impl Default for ZfsCli {
    fn default() -> Self {
        Self {
            zfs: "zfs".into(),
            zpool: "zpool".into(),
            blkid: "blkid".into(),
        }
    }
}

fn parse_err(command: &str, line: &str, why: impl Into<String>) -> ZfsError {
    ZfsError::Parse {
        command: command.to_owned(),
        line: line.to_owned(),
        why: why.into(),
    }
}

fn num<T: std::str::FromStr>(command: &str, line: &str, field: &str) -> Result<T, ZfsError> {
    field
        .parse()
        .map_err(|_| parse_err(command, line, format!("{field:?} is not a number")))
}

impl ZfsCli {
    fn zpool(&self, args: &[&str]) -> Result<String, CommandError> {
        let mut argv = vec![self.zpool.as_str()];
        argv.extend_from_slice(args);
        command::run(&argv)
    }

    fn zfs(&self, args: &[&str]) -> Result<String, CommandError> {
        let mut argv = vec![self.zfs.as_str()];
        argv.extend_from_slice(args);
        command::run(&argv)
    }

    pub fn pools(&self) -> Result<Vec<PoolState>, ZfsError> {
        let out = self.zpool(&["status", "-P", "-p"])?;
        // With no pools, zpool status prints "no pools available" and exits 0.
        parse_status(&out)
    }

    pub fn importable_pools(&self) -> Result<Vec<PoolState>, ZfsError> {
        match self.zpool(&["import", "-d", IMPORT_DIR]) {
            Ok(out) => parse_status(&out),
            Err(CommandError::Failed(f))
                if f.stderr.contains("no pools available to import")
                    || f.stdout.contains("no pools available to import") =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn pool_usage(&self) -> Result<Vec<PoolUsage>, ZfsError> {
        const FIELDS: &str = "name,size,allocated,free,fragmentation,capacity,health";
        let out = self.zpool(&["list", "-H", "-p", "-o", FIELDS])?;
        parse_pool_usage(&out, &format!("zpool list -Hp -o {FIELDS}"))
    }

    pub fn disk(&self, path: &str) -> Result<DiskState, ZfsError> {
        if !Path::new(path).exists() {
            return Ok(DiskState::Missing);
        }
        match command::run(&[self.blkid.as_str(), "-p", "-o", "export", path]) {
            Ok(out) => Ok(DiskState::InUse(blkid_signatures(&out))),
            // blkid exits 2 when it finds nothing: no partition table, filesystem or label.
            Err(CommandError::Failed(f)) if f.status == Some(2) => Ok(DiskState::Empty),
            Err(e) => Err(e.into()),
        }
    }

    pub fn create_pool(&self, spec: &PoolSpec) -> Result<(), ZfsError> {
        self.zpool(
            &create_pool_args(spec)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        Ok(())
    }

    pub fn import_pool(&self, name: &str) -> Result<(), ZfsError> {
        self.zpool(&["import", "-d", IMPORT_DIR, name])?;
        Ok(())
    }

    pub fn scrub(&self, pool: &str) -> Result<(), ZfsError> {
        self.zpool(&["scrub", pool])?;
        Ok(())
    }

    /// `zpool history -i POOL` (TZ=UTC, as every command here).
    pub fn history(&self, pool: &str) -> Result<String, ZfsError> {
        Ok(self.zpool(&["history", "-i", pool])?)
    }

    pub fn datasets(&self) -> Result<Vec<DatasetState>, ZfsError> {
        let props: Vec<&str> = Prop::ALL.iter().map(|p| p.as_str()).collect();
        let props = props.join(",");
        let args = [
            "get",
            "-H",
            "-p",
            "-t",
            "filesystem",
            "-o",
            "name,property,value,source",
            &props,
        ];
        let out = self.zfs(&args)?;
        parse_dataset_props(&out, &format!("zfs {}", args.join(" ")))
    }

    pub fn create_dataset(&self, name: &str, props: &[(Prop, String)]) -> Result<(), ZfsError> {
        let opts: Vec<String> = props.iter().map(|(p, v)| format!("{p}={v}")).collect();
        let mut args = vec!["create", "-p"];
        for o in &opts {
            args.extend(["-o", o.as_str()]);
        }
        args.push(name);
        self.zfs(&args)?;
        Ok(())
    }

    pub fn set_property(&self, dataset: &str, prop: Prop, value: &str) -> Result<(), ZfsError> {
        self.zfs(&["set", &format!("{prop}={value}"), dataset])?;
        Ok(())
    }

    pub fn inherit_property(&self, dataset: &str, prop: Prop) -> Result<(), ZfsError> {
        self.zfs(&["inherit", prop.as_str(), dataset])?;
        Ok(())
    }

    pub fn snapshots(&self, dataset: &str, recursive: bool) -> Result<Vec<Snapshot>, ZfsError> {
        const FIELDS: &str = "name,guid,createtxg,creation,userrefs";
        let depth = if recursive { "-r" } else { "-d1" };
        let args = [
            "list",
            "-H",
            "-p",
            "-t",
            "snapshot",
            "-o",
            FIELDS,
            "-s",
            "createtxg",
            depth,
            dataset,
        ];
        let out = self.zfs(&args)?;
        parse_snapshots(&out, &format!("zfs {}", args.join(" ")))
    }

    /// One dataset's snapshots, bookmarks and the values of `props` on the dataset itself,
    /// from one `zfs list -d1` (a replication run used to spawn a `zfs` for each; under
    /// TCG each spawn costs a few hundred ms).
    pub fn listing(&self, dataset: &str, props: &[&str]) -> Result<Listing, ZfsError> {
        let fields = format!("name,guid,createtxg,creation,userrefs,{}", props.join(","));
        let args = [
            "list",
            "-H",
            "-p",
            "-t",
            "filesystem,volume,snapshot,bookmark",
            "-o",
            fields.as_str(),
            "-s",
            "createtxg",
            "-d1",
            dataset,
        ];
        let out = self.zfs(&args)?;
        parse_listing(
            &out,
            &format!("zfs {}", args.join(" ")),
            dataset,
            props.len(),
        )
    }

    /// Values of any properties of one dataset, in the order asked (`-` when unset).
    pub fn get_values(&self, dataset: &str, props: &[&str]) -> Result<Vec<String>, ZfsError> {
        let list = props.join(",");
        let args = ["get", "-H", "-p", "-o", "value", list.as_str(), dataset];
        let out = self.zfs(&args)?;
        let values: Vec<String> = out.lines().map(str::to_owned).collect();
        if values.len() != props.len() {
            return Err(parse_err(
                &format!("zfs {}", args.join(" ")),
                &out,
                format!("expected {} values", props.len()),
            ));
        }
        Ok(values)
    }

    /// Sets any property (`zfs set prop=value`), for those stored does not manage as
    /// [`Prop`], like a replica's `readonly`.
    pub fn set_value(&self, dataset: &str, prop: &str, value: &str) -> Result<(), ZfsError> {
        self.zfs(&["set", &format!("{prop}={value}"), dataset])?;
        Ok(())
    }

    /// Bookmarks of one dataset, oldest first, as `(name after #, guid, createtxg)`.
    pub fn bookmarks(&self, dataset: &str) -> Result<Vec<(String, u64, u64)>, ZfsError> {
        let args = [
            "list",
            "-H",
            "-p",
            "-t",
            "bookmark",
            "-o",
            "name,guid,createtxg",
            "-s",
            "createtxg",
            "-d1",
            dataset,
        ];
        let out = self.zfs(&args)?;
        let command = format!("zfs {}", args.join(" "));
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                let [full, guid, txg] = f.as_slice() else {
                    return Err(parse_err(&command, line, "expected 3 tab-separated fields"));
                };
                let (_, name) = full
                    .split_once('#')
                    .ok_or_else(|| parse_err(&command, line, "a bookmark name has a #"))?;
                Ok((
                    name.to_owned(),
                    num(&command, line, guid)?,
                    num(&command, line, txg)?,
                ))
            })
            .collect()
    }

    /// Mounts a filesystem (`zfs mount`); a received one is not mounted by lzc.
    pub fn mount(&self, dataset: &str) -> Result<(), ZfsError> {
        self.zfs(&["mount", dataset])?;
        Ok(())
    }

    /// Aborts the interrupted receive into `dataset` (`zfs receive -A`): only its partial
    /// state goes (for a first receive, the half-made dataset); libzfs_core has no call.
    pub fn abort_receive(&self, dataset: &str) -> Result<(), ZfsError> {
        self.zfs(&["receive", "-A", dataset])?;
        Ok(())
    }

    /// Destroys a bookmark (`pool/fs#mark`); libzfs_core's call for it is not wrapped.
    pub fn destroy_bookmark(&self, bookmark: &str) -> Result<(), ZfsError> {
        if !bookmark.contains('#') {
            return Err(parse_err("zfs destroy", bookmark, "not a bookmark name"));
        }
        self.zfs(&["destroy", bookmark])?;
        Ok(())
    }
}

/// `zpool create` arguments. No `-f`: zpool itself refuses disks that hold a pool or a
/// filesystem, a second guard behind the planner's emptiness check.
pub fn create_pool_args(spec: &PoolSpec) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "create".into(),
        "-o".into(),
        format!("ashift={}", spec.ashift),
        "-m".into(),
        spec.mountpoint.clone(),
        spec.name.clone(),
    ];
    for v in &spec.layout.vdevs {
        match v.layout {
            VdevLayout::Single => {}
            VdevLayout::Mirror => a.push("mirror".into()),
            VdevLayout::Raidz1 => a.push("raidz1".into()),
            VdevLayout::Raidz2 => a.push("raidz2".into()),
            VdevLayout::Raidz3 => a.push("raidz3".into()),
        }
        a.extend(v.disks.iter().cloned());
    }
    if !spec.layout.spares.is_empty() {
        a.push("spare".into());
        a.extend(spec.layout.spares.iter().cloned());
    }
    a
}

fn blkid_signatures(out: &str) -> Vec<String> {
    let found: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("TYPE=") || l.starts_with("PTTYPE="))
        .map(ToOwned::to_owned)
        .collect();
    if found.is_empty() {
        // blkid found something (exit 0) but printed no type: still not empty.
        vec![out.lines().next().unwrap_or("a signature").to_owned()]
    } else {
        found
    }
}

/// Parses `zpool list -Hp -o name,size,allocated,free,fragmentation,capacity,health`.
pub fn parse_pool_usage(out: &str, command: &str) -> Result<Vec<PoolUsage>, ZfsError> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let [name, size, alloc, free, frag, cap, health] = f.as_slice() else {
                return Err(parse_err(command, line, "expected 7 tab-separated fields"));
            };
            Ok(PoolUsage {
                name: (*name).to_owned(),
                size: num(command, line, size)?,
                allocated: num(command, line, alloc)?,
                free: num(command, line, free)?,
                fragmentation: frag.parse().ok(),
                capacity: num(command, line, cap)?,
                health: (*health).to_owned(),
            })
        })
        .collect()
}

/// Parses `zfs list -Hp -t snapshot -o name,guid,createtxg,creation,userrefs`.
pub fn parse_snapshots(out: &str, command: &str) -> Result<Vec<Snapshot>, ZfsError> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let [full, guid, txg, creation, userrefs] = f.as_slice() else {
                return Err(parse_err(command, line, "expected 5 tab-separated fields"));
            };
            let (dataset, name) = full
                .split_once('@')
                .ok_or_else(|| parse_err(command, line, "a snapshot name has an @"))?;
            Ok(Snapshot {
                dataset: dataset.to_owned(),
                name: name.to_owned(),
                guid: num(command, line, guid)?,
                createtxg: num(command, line, txg)?,
                creation: num(command, line, creation)?,
                userrefs: num(command, line, userrefs)?,
            })
        })
        .collect()
}

/// What [`ZfsCli::listing`] read: snapshots and bookmarks oldest first, and the asked
/// properties of the dataset in the order asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub snapshots: Vec<Snapshot>,
    /// `(name after #, guid, createtxg)`.
    pub bookmarks: Vec<(String, u64, u64)>,
    pub props: Vec<String>,
}

/// Parses `zfs list -Hp -d1 -o name,guid,createtxg,creation,userrefs,PROPS...` of
/// `dataset`: its own line gives the properties, `dataset@` lines the snapshots,
/// `dataset#` lines the bookmarks (their `userrefs` is `-`); child datasets are skipped.
pub fn parse_listing(
    out: &str,
    command: &str,
    dataset: &str,
    props: usize,
) -> Result<Listing, ZfsError> {
    let mut listing = Listing::default();
    let mut own = false;
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let (Some([full, guid, txg, creation, userrefs]), Some(values)) = (
            f.get(..5).and_then(|h| <&[&str; 5]>::try_from(h).ok()),
            f.get(5..),
        ) else {
            return Err(parse_err(
                command,
                line,
                "expected at least 5 tab-separated fields",
            ));
        };
        if values.len() != props {
            return Err(parse_err(
                command,
                line,
                format!("expected {} tab-separated fields", 5 + props),
            ));
        }
        if *full == dataset {
            own = true;
            listing.props = values.iter().map(|v| (*v).to_owned()).collect();
        } else if let Some(name) = full
            .strip_prefix(dataset)
            .and_then(|rest| rest.strip_prefix('@'))
        {
            listing.snapshots.push(Snapshot {
                dataset: dataset.to_owned(),
                name: name.to_owned(),
                guid: num(command, line, guid)?,
                createtxg: num(command, line, txg)?,
                creation: num(command, line, creation)?,
                userrefs: num(command, line, userrefs)?,
            });
        } else if let Some(name) = full
            .strip_prefix(dataset)
            .and_then(|rest| rest.strip_prefix('#'))
        {
            listing.bookmarks.push((
                name.to_owned(),
                num(command, line, guid)?,
                num(command, line, txg)?,
            ));
        }
    }
    if !own {
        return Err(parse_err(
            command,
            out,
            format!("no line for {dataset} itself"),
        ));
    }
    Ok(listing)
}

/// Parses `zfs get -Hp -o name,property,value,source` for the managed properties.
pub fn parse_dataset_props(out: &str, command: &str) -> Result<Vec<DatasetState>, ZfsError> {
    let mut by_name: BTreeMap<String, BTreeMap<Prop, PropValue>> = BTreeMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, prop, value, source] = f.as_slice() else {
            return Err(parse_err(command, line, "expected 4 tab-separated fields"));
        };
        let entry = by_name.entry((*name).to_owned()).or_default();
        if let Some(p) = Prop::parse(prop) {
            entry.insert(
                p,
                PropValue {
                    value: (*value).to_owned(),
                    local: *source == "local",
                },
            );
        }
    }
    Ok(by_name
        .into_iter()
        .map(|(name, props)| DatasetState { name, props })
        .collect())
}

/// Parses `zpool status -P` and `zpool import` output: one block per pool, each with
/// `pool:`, `state:`, `scan:`, `config:` (an indented vdev tree) and `errors:`.
pub fn parse_status(out: &str) -> Result<Vec<PoolState>, ZfsError> {
    let mut pools = Vec::new();
    let mut cur: Option<PoolState> = None;
    let mut section = "";
    // Within config: the tree's top vdev kind and the class (data, spares, logs, ...).
    let mut class = String::new();
    // The depth of the replacing-N or spare-N group whose members are being read.
    let mut group_depth: Option<usize> = None;
    for raw in out.lines() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("pool: ") {
            if let Some(p) = cur.take() {
                pools.push(p);
            }
            cur = Some(PoolState {
                name: name.trim().to_owned(),
                health: String::new(),
                layout: PoolLayout::default(),
                scan: String::new(),
                errors: String::new(),
            });
            section = "";
            continue;
        }
        let Some(pool) = cur.as_mut() else { continue };
        if let Some((key, rest)) = header(line) {
            section = key;
            match key {
                "state" => pool.health = rest.to_owned(),
                "scan" => pool.scan = rest.to_owned(),
                "errors" => pool.errors = rest.to_owned(),
                _ => {}
            }
            class.clear();
            continue;
        }
        if section != "config" || !line.starts_with('\t') {
            if section == "scan" && !trimmed.is_empty() {
                pool.scan.push('\n');
                pool.scan.push_str(trimmed);
            }
            continue;
        }
        // A tab, then two spaces per level of the tree.
        let body = line.trim_start_matches('\t');
        let depth = (body.len() - body.trim_start_matches(' ').len()) / 2;
        let name = device_name(trimmed);
        if name.is_empty() || name == "NAME" {
            continue;
        }
        if group_depth.is_some_and(|g| depth <= g) {
            group_depth = None;
        }
        if depth == 0 {
            class = if name == pool.name {
                "data".to_owned()
            } else {
                name.to_owned()
            };
            continue;
        }
        if class != "data" {
            if depth == 1 {
                add_top(&mut pool.layout, &class, name);
            }
            continue;
        }
        let is_group = is_slot_group(name);
        if group_depth.is_some() {
            // A member of a replacing-N or spare-N group: one more device of its slot.
            if let Some(slot) = pool
                .layout
                .vdevs
                .last_mut()
                .and_then(|v| v.disks.last_mut())
                && !is_group
            {
                if !slot.is_empty() {
                    slot.push(SLOT_SEP);
                }
                slot.push_str(whole_disk(name));
            }
            continue;
        }
        if is_group {
            // The slot of one disk in a repair: its members follow one level deeper.
            group_depth = Some(depth);
            if depth == 1 {
                pool.layout.vdevs.push(VdevSpec {
                    layout: VdevLayout::Single,
                    disks: vec![String::new()],
                });
            } else if let Some(v) = pool.layout.vdevs.last_mut() {
                v.disks.push(String::new());
            }
            continue;
        }
        match depth {
            1 => add_top(&mut pool.layout, &class, name),
            _ => {
                if let Some(v) = pool.layout.vdevs.last_mut()
                    && v.layout != VdevLayout::Single
                {
                    v.disks.push(whole_disk(name).to_owned());
                }
            }
        }
    }
    if let Some(p) = cur.take() {
        pools.push(p);
    }
    Ok(pools)
}

/// Separates the devices of one slot of a vdev in a repair (`replacing-N`: the disk being
/// replaced and its new one; `spare-N`: the failed disk and the hot spare standing in).
/// The pool's logical layout has one disk there; either device may be the declared one.
pub const SLOT_SEP: char = '|';

/// The devices one slot of a parsed vdev stands for (one, or several in a repair).
pub fn slot_members(slot: &str) -> impl Iterator<Item = &str> {
    slot.split(SLOT_SEP).filter(|d| !d.is_empty())
}

/// Whether a slot names only devices zpool knows by GUID alone (missing since import,
/// with no `was` path): it stands for any one declared disk.
pub fn slot_is_unknown(slot: &str) -> bool {
    slot_members(slot).all(|d| d.bytes().all(|b| b.is_ascii_digit()))
}

fn is_slot_group(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(kind, n)| {
        matches!(kind, "replacing" | "spare") && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The device a config line names: a missing disk is shown by its GUID and, when zpool
/// still knows it, `was <path>` at the end of the line; that path is the disk.
fn device_name(trimmed: &str) -> &str {
    let name = trimmed.split_whitespace().next().unwrap_or("");
    if name.bytes().all(|b| b.is_ascii_digit())
        && let Some((_, was)) = trimmed.rsplit_once(" was ")
        && let Some(path) = was.split_whitespace().next()
    {
        return path;
    }
    name
}

/// `  key: rest` lines of zpool status (key right-aligned to column 7).
fn header(line: &str) -> Option<(&'static str, &str)> {
    let trimmed = line.trim_start();
    [
        "state", "status", "action", "scan", "config", "errors", "id", "see",
    ]
    .into_iter()
    .find_map(|k| {
        let rest = trimmed.strip_prefix(k)?.strip_prefix(':')?;
        (!line.starts_with('\t')).then_some((k, rest.trim()))
    })
}

fn add_top(layout: &mut PoolLayout, class: &str, name: &str) {
    if class == "spares" {
        layout.spares.push(whole_disk(name).to_owned());
        return;
    }
    if class != "data" {
        layout.other.push(format!("{class}: {name}"));
        return;
    }
    // Group vdevs are named `<kind>-<index>`; anything else at this level is a disk.
    let kind = name.rsplit_once('-').map_or("", |(k, _)| k);
    let layout_kind = match kind {
        "mirror" => Some(VdevLayout::Mirror),
        "raidz1" => Some(VdevLayout::Raidz1),
        "raidz2" => Some(VdevLayout::Raidz2),
        "raidz3" => Some(VdevLayout::Raidz3),
        _ => None,
    };
    match layout_kind {
        Some(l) if !name.starts_with('/') => layout.vdevs.push(VdevSpec {
            layout: l,
            disks: Vec::new(),
        }),
        _ => layout.vdevs.push(VdevSpec {
            layout: VdevLayout::Single,
            disks: vec![whole_disk(name).to_owned()],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "  pool: tank
 state: ONLINE
  scan: scrub repaired 0B in 00:00:01 with 0 errors on Wed Nov 25 19:00:01 2026
config:

\tNAME                                   STATE     READ WRITE CKSUM
\ttank                                   ONLINE       0     0     0
\t  mirror-0                             ONLINE       0     0     0
\t    /dev/disk/by-id/virtio-d1-part1    ONLINE       0     0     0
\t    /dev/disk/by-id/virtio-d2-part1    ONLINE       0     0     0
\t  raidz2-1                             ONLINE       0     0     0
\t    /dev/disk/by-id/virtio-d3-part1    ONLINE       0     0     0
\t    /dev/disk/by-id/virtio-d4-part1    ONLINE       0     0     0
\t    /dev/disk/by-id/virtio-d5-part1    ONLINE       0     0     0
\tlogs
\t  /dev/disk/by-id/virtio-d7-part1      ONLINE       0     0     0
\tspares
\t  /dev/disk/by-id/virtio-d6-part1      AVAIL

errors: No known data errors

  pool: scratch
 state: DEGRADED
status: One or more devices could not be used because the label is missing or
\tinvalid.  Sufficient replicas exist for the pool to continue
\tfunctioning in a degraded state.
action: Replace the device using 'zpool replace'.
  scan: scrub in progress since Wed Nov 25 19:00:01 2026
\t1.2G scanned at 100M/s, 600M issued at 50M/s, 2G total
\t0B repaired, 30.00% done, 00:00:28 to go
config:

\tNAME                                 STATE     READ WRITE CKSUM
\tscratch                              DEGRADED     0     0     0
\t  /dev/disk/by-id/virtio-s1-part1    ONLINE       0     0     0

errors: No known data errors
";

    #[test]
    fn status_gives_layout_health_scan_and_errors() {
        let pools = parse_status(STATUS).unwrap();
        assert_eq!(pools.len(), 2);
        let tank = &pools[0];
        assert_eq!(tank.name, "tank");
        assert_eq!(tank.health, "ONLINE");
        assert!(tank.scan.starts_with("scrub repaired 0B"));
        assert_eq!(tank.errors, "No known data errors");
        let d = |n: &str| format!("/dev/disk/by-id/virtio-{n}");
        assert_eq!(
            tank.layout.vdevs,
            vec![
                VdevSpec {
                    layout: VdevLayout::Mirror,
                    disks: vec![d("d1"), d("d2")]
                },
                VdevSpec {
                    layout: VdevLayout::Raidz2,
                    disks: vec![d("d3"), d("d4"), d("d5")]
                },
            ]
        );
        assert_eq!(tank.layout.spares, vec![d("d6")]);
        assert_eq!(tank.layout.other, vec![format!("logs: {}-part1", d("d7"))]);
        let scratch = &pools[1];
        assert_eq!(scratch.health, "DEGRADED");
        assert!(scratch.scan.starts_with("scrub in progress"));
        assert!(scratch.scan.contains("30.00% done"));
        assert_eq!(
            scratch.layout.vdevs,
            vec![VdevSpec {
                layout: VdevLayout::Single,
                disks: vec![d("s1")]
            }]
        );
    }

    #[test]
    fn import_listing_parses_like_status() {
        let out = "   pool: tank
     id: 15377853543339446128
  state: ONLINE
 action: The pool can be imported using its name or numeric identifier.
 config:

\ttank                               ONLINE
\t  mirror-0                         ONLINE
\t    virtio-d1-part1                ONLINE
\t    virtio-d2-part1                ONLINE
";
        let pools = parse_status(out).unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].health, "ONLINE");
        assert_eq!(
            pools[0].layout.vdevs,
            vec![VdevSpec {
                layout: VdevLayout::Mirror,
                disks: vec!["virtio-d1".into(), "virtio-d2".into()]
            }]
        );
    }

    #[test]
    fn no_pools() {
        assert!(parse_status("no pools available\n").unwrap().is_empty());
    }

    #[test]
    fn snapshots_and_usage_parse() {
        let out = "tank/a@stored_hourly_2026-11-25T19:00:00Z\t1234567890123\t42\t1795633200\t1\n\
                   tank/a@manual\t99\t50\t1795633300\t0\n";
        let s = parse_snapshots(out, "zfs list").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].dataset, "tank/a");
        assert_eq!(s[0].name, "stored_hourly_2026-11-25T19:00:00Z");
        assert_eq!(
            (s[0].guid, s[0].createtxg, s[0].userrefs),
            (1_234_567_890_123, 42, 1)
        );
        let bad = parse_snapshots("tank/a@x\t1\t2\n", "zfs list").unwrap_err();
        assert!(bad.to_string().contains("expected 5 tab-separated fields"));
        let bad = parse_snapshots("tank/a@x\tguid\t2\t3\t0\n", "zfs list").unwrap_err();
        assert!(bad.to_string().contains("\"guid\" is not a number"));

        let u = parse_pool_usage("tank\t1000\t400\t600\t-\t40\tONLINE\n", "zpool list").unwrap();
        assert_eq!(u[0].fragmentation, None);
        assert_eq!((u[0].size, u[0].capacity), (1000, 40));
    }

    #[test]
    fn one_listing_gives_snapshots_bookmarks_and_the_datasets_properties() {
        let out = "tank/a\t11\t5\t1795633000\t-\t-\t0\n\
                   tank/a/child\t12\t6\t1795633000\t-\t-\t0\n\
                   tank/a@s1\t21\t7\t1795633100\t1\t-\t4096\n\
                   tank/a#stored-repl_j_7\t21\t7\t1795633100\t-\t-\t-\n\
                   tank/a@s2\t22\t9\t1795633200\t0\t-\t0\n";
        let l = parse_listing(out, "zfs list", "tank/a", 2).unwrap();
        assert_eq!(l.props, ["-", "0"]);
        let snaps: Vec<_> = l
            .snapshots
            .iter()
            .map(|s| (s.full_name(), s.guid, s.createtxg, s.userrefs))
            .collect();
        assert_eq!(
            snaps,
            [
                ("tank/a@s1".to_owned(), 21, 7, 1),
                ("tank/a@s2".to_owned(), 22, 9, 0)
            ]
        );
        assert_eq!(l.bookmarks, [("stored-repl_j_7".to_owned(), 21, 7)]);
        // A name that only starts like the dataset is not its snapshot.
        let other = parse_listing(
            "tank/a\t1\t1\t1\t-\ttok\ntank/ab@x\t2\t2\t2\t0\t-\n",
            "zfs list",
            "tank/a",
            1,
        )
        .unwrap();
        assert_eq!(
            (other.props, other.snapshots.len()),
            (vec!["tok".to_owned()], 0)
        );
        let e = parse_listing("tank/a@s1\t21\t7\t1\t0\t-\n", "zfs list", "tank/a", 1).unwrap_err();
        assert!(e.to_string().contains("no line for tank/a itself"), "{e}");
        let e = parse_listing("tank/a\t1\t1\t1\t-\n", "zfs list", "tank/a", 1).unwrap_err();
        assert!(e.to_string().contains("expected 6"), "{e}");
    }

    #[test]
    fn dataset_properties_group_by_name() {
        let out = "tank\tcompression\tlz4\tlocal\n\
                   tank\tatime\ton\tdefault\n\
                   tank/media\tcompression\tlz4\tinherited from tank\n\
                   tank/media\trecordsize\t1048576\tlocal\n";
        let d = parse_dataset_props(out, "zfs get").unwrap();
        assert_eq!(d.len(), 2);
        assert!(d[0].props[&Prop::Compression].local);
        assert!(!d[1].props[&Prop::Compression].local);
        assert_eq!(d[1].props[&Prop::Recordsize].value, "1048576");
    }

    /// The real blkid on image files: a zeroed one is empty, one with an MBR partition
    /// table is in use, a path that does not exist is missing.
    #[test]
    fn blkid_tells_empty_from_used_disks() {
        let dir = std::env::temp_dir();
        let path = |n: &str| dir.join(format!("stored-blkid-{}-{n}", std::process::id()));
        let (empty, mbr) = (path("empty.img"), path("mbr.img"));
        let mut image = vec![0u8; 4 << 20];
        std::fs::write(&empty, &image).unwrap();
        // One Linux partition at sector 2048, and the boot signature.
        image[446..462].copy_from_slice(&[
            0, 0, 0, 0, 0x83, 0, 0, 0, 0x00, 0x08, 0, 0, 0x00, 0x10, 0, 0,
        ]);
        image[510..512].copy_from_slice(&[0x55, 0xAA]);
        std::fs::write(&mbr, &image).unwrap();
        let cli = ZfsCli::default();
        let results = (
            cli.disk(empty.to_str().unwrap()).unwrap(),
            cli.disk(mbr.to_str().unwrap()).unwrap(),
            cli.disk(path("absent").to_str().unwrap()).unwrap(),
        );
        std::fs::remove_file(&empty).unwrap();
        std::fs::remove_file(&mbr).unwrap();
        assert_eq!(
            results,
            (
                DiskState::Empty,
                DiskState::InUse(vec!["PTTYPE=dos".into()]),
                DiskState::Missing
            )
        );
    }

    #[test]
    fn create_arguments_follow_the_layout() {
        let spec = PoolSpec {
            name: "tank".into(),
            layout: PoolLayout {
                vdevs: vec![
                    VdevSpec {
                        layout: VdevLayout::Mirror,
                        disks: vec!["/dev/disk/by-id/a".into(), "/dev/disk/by-id/b".into()],
                    },
                    VdevSpec {
                        layout: VdevLayout::Single,
                        disks: vec!["/dev/disk/by-id/c".into()],
                    },
                ],
                spares: vec!["/dev/disk/by-id/d".into()],
                other: vec![],
            },
            ashift: 12,
            mountpoint: "/mnt/tank".into(),
        };
        assert_eq!(
            create_pool_args(&spec).join(" "),
            "create -o ashift=12 -m /mnt/tank tank mirror /dev/disk/by-id/a /dev/disk/by-id/b \
             /dev/disk/by-id/c spare /dev/disk/by-id/d"
        );
    }
}
