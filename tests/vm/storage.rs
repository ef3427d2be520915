//! stored against real ZFS in the image's kernel, in one boot: the `stored` binary the
//! image ships, driven by appliance.toml files on blank disks named by id: a mirror, then
//! a raidz1 over three disks and a raidz2 over four, each read back from `zpool status -P`.

use std::fs;

use crate::harness::Vm;
use crate::{POWER_OFF_TIMEOUT, zpool};

const DATASETS: &str = r#"
[storage.datasets."tank/media"]
compression = "zstd"
atime = false
recordsize = "1M"
quota = "1G"

[storage.datasets."tank/media/photos"]

[storage.datasets."tank/bulk"]
"#;

const POLICY: &str = r#"
[snapshots.media]
datasets = ["tank/media"]
recursive = true
hourly = 2
daily = 1
"#;

struct Guest<'a> {
    vm: &'a Vm,
    /// The `stored` to run: the image's, or a host build copied in.
    bin: String,
}

impl Guest<'_> {
    /// Copies a config into the guest as /tmp/`name`.toml.
    fn config(&self, name: &str, text: &str) -> String {
        let host = self.vm.dir.join(format!("{name}.toml"));
        fs::write(&host, format!("version = 1\n{text}")).unwrap();
        let guest = format!("/tmp/{name}.toml");
        self.vm.copy_in(&host, &guest);
        guest
    }

    /// Runs `stored ARGS`; returns (exit code, stdout, stderr).
    fn stored(&self, args: &str) -> (i32, String, String) {
        let out = self.vm.ssh(&format!("{} {args}", self.bin));
        let r = (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        eprintln!("$ stored {args}\n-> {}\n{}{}", r.0, r.1, r.2);
        r
    }

    fn ok(&self, args: &str) -> String {
        let (code, out, err) = self.stored(args);
        assert_eq!(code, 0, "stored {args}: {out}{err}");
        out
    }

    fn snapshots(&self, dataset: &str) -> Vec<String> {
        self.vm
            .sh(&format!(
                "zfs list -H -o name -t snapshot -s createtxg -d 1 {dataset}"
            ))
            .lines()
            .map(|l| l.split_once('@').unwrap().1.to_owned())
            .collect()
    }
}

#[test]
fn stored_makes_pools_datasets_and_snapshots_on_real_zfs() {
    let zpool::ZfsVm {
        mut vm,
        disks,
        stored: bin,
    } = zpool::boot(
        "storage",
        &[
            ("stored-a", 512),
            ("stored-b", 512),
            ("rz1-a", 256),
            ("rz1-b", 256),
            ("rz1-c", 256),
            ("rz2-a", 256),
            ("rz2-b", 256),
            ("rz2-c", 256),
            ("rz2-d", 256),
        ],
    );
    let (disk_a, disk_b) = (&disks[0], &disks[1]);
    let g = Guest { vm: &vm, bin };
    let pool = zpool::pool("tank", "mirror", &[disk_a, disk_b]);

    // Blank disks: the pool is created as a mirror of the two disks, by id.
    let cfg = g.config("storage", &format!("{pool}{DATASETS}"));
    let plan = g.ok(&format!("plan --config {cfg}"));
    assert!(plan.contains("create pool tank"), "{plan}");
    g.ok(&format!("apply --config {cfg}"));
    let status = vm.sh("zpool status -P tank");
    eprintln!("{status}");
    assert!(status.contains("mirror-0"), "{status}");
    for d in [disk_a, disk_b] {
        assert!(status.contains(d.as_str()), "{d} not in:\n{status}");
    }

    // A second apply of the same config changes nothing.
    let again = g.ok(&format!("apply --config {cfg}"));
    assert_eq!(again.trim(), "nothing to do");

    // The properties, read back by the zfs tool.
    let props =
        vm.sh("zfs get -Hp -o property,value compression,atime,recordsize,quota tank/media");
    let props: Vec<(&str, &str)> = props.lines().map(|l| l.split_once('\t').unwrap()).collect();
    assert_eq!(
        props,
        [
            ("compression", "zstd"),
            ("atime", "off"),
            ("recordsize", "1048576"),
            ("quota", "1073741824"),
        ]
    );
    assert_eq!(
        vm.sh("zfs get -H -o value mountpoint tank/media/photos")
            .trim(),
        "/mnt/tank/media/photos"
    );

    // A changed layout (one disk instead of the mirror) is refused and touches nothing.
    let single = g.config("single", &zpool::pool("tank", "single", &[disk_a]));
    let before = vm.sh("zpool status -P tank; zpool history tank | wc -l");
    let (code, _, err) = g.stored(&format!("apply --config {single}"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("never destroys"), "{err}");
    assert_eq!(
        vm.sh("zpool status -P tank; zpool history tank | wc -l"),
        before
    );

    // A config with a mistake is refused with exit code 2.
    let bad = g.config("bad", "[storage.pools.tank]\nvdevs = 3\n");
    assert_eq!(g.stored(&format!("apply --config {bad}")).0, 2);

    // Exported, the pool is imported back by the next apply.
    vm.sh("zpool export tank");
    let imported = g.ok(&format!("apply --config {cfg}"));
    assert!(imported.contains("import pool tank"), "{imported}");
    assert!(vm.sh("zpool list -H -o name").lines().any(|l| l == "tank"));
    assert_eq!(
        g.ok(&format!("apply --config {cfg}")).trim(),
        "nothing to do"
    );

    // raidz1 over three disks and raidz2 over four, created from the declared layout next
    // to the mirror, and read back from `zpool status -P`.
    let (rz1, rz2) = (&disks[2..5], &disks[5..9]);
    let raidz = format!(
        "{pool}{DATASETS}{}{}",
        zpool::pool("rz1", "raidz1", rz1),
        zpool::pool("rz2", "raidz2", rz2)
    );
    let raidz_cfg = g.config("raidz", &raidz);
    let created = g.ok(&format!("apply --config {raidz_cfg}"));
    assert!(
        created.contains(&format!("create pool rz1 [raidz1({})]", rz1.join(", "))),
        "{created}"
    );
    assert!(
        created.contains(&format!("create pool rz2 [raidz2({})]", rz2.join(", "))),
        "{created}"
    );
    let part1 =
        |ds: &[String]| -> Vec<String> { ds.iter().map(|d| format!("{d}-part1")).collect() };
    assert_eq!(
        vdevs(&vm.sh("zpool status -P rz1")),
        [("raidz1-0".to_owned(), part1(rz1))]
    );
    assert_eq!(
        vdevs(&vm.sh("zpool status -P rz2")),
        [("raidz2-0".to_owned(), part1(rz2))]
    );
    // stored reads the same layouts back: nothing to do, and nothing after an export either
    // but the import (`zpool import` shows the raidz2 tree the same way).
    assert_eq!(
        g.ok(&format!("apply --config {raidz_cfg}")).trim(),
        "nothing to do"
    );
    vm.sh("zpool export rz2");
    let imported = g.ok(&format!("apply --config {raidz_cfg}"));
    assert_eq!(imported.trim(), "done: import pool rz2", "{imported}");
    // The raidz1 declared as raidz2 over the same disks: refused, saying so, nothing touched.
    let reshaped = g.config(
        "reshaped",
        &format!(
            "{pool}{DATASETS}{}{}",
            zpool::pool("rz1", "raidz2", rz1),
            zpool::pool("rz2", "raidz2", rz2)
        ),
    );
    let before = vm.sh("zpool status -P rz1; zpool history rz1 | wc -l");
    let (code, _, err) = g.stored(&format!("apply --config {reshaped}"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "pool rz1: the config declares [raidz2({})] but the pool is [raidz1(",
            rz1.join(", ")
        )),
        "{err}"
    );
    assert!(
        err.contains("stored never destroys, recreates or reshapes a pool"),
        "{err}"
    );
    assert_eq!(
        vm.sh("zpool status -P rz1; zpool history rz1 | wc -l"),
        before
    );

    // Snapshot policy: hourly = 2, daily = 1, recursive; four hourly passes.
    let snap = g.config("snap", &format!("{pool}{DATASETS}{POLICY}"));
    for h in 0..4 {
        g.ok(&format!(
            "snapshot run --config {snap} --now 2026-11-25T{h:02}:00:00Z"
        ));
    }
    let media = g.snapshots("tank/media");
    assert_eq!(
        media,
        [
            "stored_daily_2026-11-25T00:00:00Z",
            "stored_hourly_2026-11-25T02:00:00Z",
            "stored_hourly_2026-11-25T03:00:00Z",
        ]
    );
    assert_eq!(g.snapshots("tank/media/photos"), media);
    // One lzc call for the tree: parent and child snapshots were made in the same txg.
    let txgs = vm.sh(
        "zfs get -H -o value createtxg tank/media@stored_hourly_2026-11-25T03:00:00Z \
         tank/media/photos@stored_hourly_2026-11-25T03:00:00Z",
    );
    let txgs: Vec<&str> = txgs.lines().collect();
    assert_eq!(txgs[0], txgs[1], "the tree was not snapshotted atomically");

    // A held snapshot is not pruned; the next unheld one is.
    vm.sh("zfs hold keep tank/media@stored_hourly_2026-11-25T02:00:00Z");
    let dry = g.ok(&format!(
        "snapshot run --config {snap} --now 2026-11-25T04:00:00Z --dry-run"
    ));
    assert!(dry.contains("would take: tank/media@stored_hourly_2026-11-25T04:00:00Z"));
    assert_eq!(
        g.snapshots("tank/media"),
        media,
        "a dry run changed something"
    );
    g.ok(&format!(
        "snapshot run --config {snap} --now 2026-11-25T04:00:00Z"
    ));
    assert_eq!(
        g.snapshots("tank/media"),
        [
            "stored_daily_2026-11-25T00:00:00Z",
            "stored_hourly_2026-11-25T02:00:00Z",
            "stored_hourly_2026-11-25T03:00:00Z",
            "stored_hourly_2026-11-25T04:00:00Z",
        ]
    );
    vm.sh("zfs release keep tank/media@stored_hourly_2026-11-25T02:00:00Z");
    g.ok(&format!(
        "snapshot run --config {snap} --now 2026-11-25T04:30:00Z"
    ));
    assert_eq!(
        g.snapshots("tank/media"),
        [
            "stored_daily_2026-11-25T00:00:00Z",
            "stored_hourly_2026-11-25T03:00:00Z",
            "stored_hourly_2026-11-25T04:00:00Z",
        ]
    );

    // Bookmark and rollback, through lzc.
    g.ok("snapshot bookmark tank/media@stored_hourly_2026-11-25T03:00:00Z tank/media#base");
    assert_eq!(
        vm.sh("zfs list -H -o name -t bookmark tank/media").trim(),
        "tank/media#base"
    );
    vm.sh("echo later > /mnt/tank/media/later && sync");
    g.ok("snapshot rollback tank/media@stored_hourly_2026-11-25T04:00:00Z");
    vm.sh("test ! -e /mnt/tank/media/later");
    let (code, _, err) = g.stored("snapshot rollback tank/media");
    assert_eq!(code, 2, "{err}");

    let status = vm.power_off(POWER_OFF_TIMEOUT);
    assert!(status.success(), "QEMU exited with {status}");
}

/// The top-level data vdevs of one pool's `zpool status -P` and the devices under each, in
/// the tree's order: the `config:` section, a tab and then two spaces per level.
fn vdevs(status: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let config = status
        .split_once("config:")
        .and_then(|(_, rest)| rest.split_once("errors:"))
        .map(|(tree, _)| tree)
        .unwrap_or_else(|| panic!("no config: section in\n{status}"));
    for line in config.lines().filter_map(|l| l.strip_prefix('\t')) {
        let depth = (line.len() - line.trim_start_matches(' ').len()) / 2;
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        match depth {
            1 => out.push((name.to_owned(), Vec::new())),
            2 => out.last_mut().unwrap().1.push(name.to_owned()),
            _ => {}
        }
    }
    out
}
