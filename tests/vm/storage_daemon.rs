//! stored as the image runs it (`stored.service`), driven the way a user drives it: an
//! appliance.toml with `[storage]`, `[shares]`, `[snapshots]` and `[replication]` applied
//! through applianced (`applctl apply`), then `applctl storage ...` against the running
//! daemon. One boot with four blank disks:
//!
//! - a pool declared on a disk that holds a foreign (exported) pool is refused, with the
//!   disk and what is on it named, and nothing is applied; then a mirror on two empty disks
//!   is created, with its datasets' properties read back with `zfs get`;
//! - a snapshot policy with `frequently` every `1m` (the scheduler's own minute ticks, no
//!   test clock) takes snapshots on schedule and prunes them;
//! - one dataset is served over NFS (mounted from a client network namespace) and SMB
//!   (smbclient as the config's user), its root chowned to its `owner` by the service;
//! - a replication job (mutual TLS, `bandwidth_limit`, checked not exceeded) pushes to a
//!   second stored listener (`stored receive`) in another network namespace of the same
//!   guest, into a second pool on the fourth disk: first on the daemon's own schedule,
//!   then many small snapshots
//!   through `applctl storage replicate` (the scheduler's policy snapshots taken during
//!   the run are kept until it ends); data checked by GUID and by sha256 on both sides;
//! - `applctl storage status | snapshots | prune --dry-run | metrics` read the job's lag and
//!   bytes from the real daemon; the lag, counted from the end of the long run, puts the
//!   recovery point on the newest replicated snapshot's creation;
//! - a recursive job: a child without snapshots skipped, then sent once it has one, a child
//!   with nothing new sent nothing;
//! - the receiver killed mid-stream: the snapshot its resume token names is held on the
//!   source, and the next run resumes;
//! - the pool part of status and metrics against ZFS itself: space, a finished scrub, one
//!   side of the mirror offline (DEGRADED, then ONLINE after its resilver), and a pool on a
//!   file with one damaged block (its data errors and the scrub's);
//! - a reboot: stored.service imports the pool at boot and mounts its datasets.
//!
//! `STORED_BIN` / `APPLCTL_BIN` name host builds to bind-mount over the image's (same
//! Debian): a change tried without an image build. `SD_MANY` changes [`MANY`].

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::BOOT_TIMEOUT;
use crate::harness::{self, Options, Outside, Vm};
use crate::zpool;

/// Small snapshots replicated in one run by default. Each is a txg on both pools: under TCG
/// on a loaded host taking one cost 0.28-0.57 s and replicating it 0.33-1.06 s, so the
/// issue's 1000 (`SD_MANY=1000`, run by hand: docs/storage.md) add 10-25 minutes.
const MANY: usize = 100;
/// The job's bandwidth limit (bytes per second) and the data its first run sends.
const LIMIT: &str = "2M";
const BULK_MIB: u64 = 16;

fn field(v: &Value, pointer: &str) -> Value {
    v.pointer(pointer).cloned().unwrap_or(Value::Null)
}

struct Guest<'a> {
    vm: &'a Vm,
}

impl Guest<'_> {
    fn copy(&self, name: &str, text: &str) -> String {
        let host = self.vm.dir.join(name);
        fs::write(&host, text).unwrap();
        let guest = format!("/tmp/{name}");
        self.vm.copy_in(&host, &guest);
        guest
    }

    /// `applctl ARGS` in the guest: (exit code, stdout, stderr), printed.
    fn applctl(&self, args: &str) -> (i32, String, String) {
        let started = Instant::now();
        let out = self.vm.ssh(&format!("applctl {args}"));
        let r = (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        let shown: String = r.1.chars().take(3000).collect();
        eprintln!(
            "$ applctl {args}  ({:.1}s) -> {}\n{shown}{}",
            started.elapsed().as_secs_f64(),
            r.0,
            r.2
        );
        r
    }

    fn ok(&self, args: &str) -> String {
        let (code, out, err) = self.applctl(args);
        assert_eq!(code, 0, "applctl {args}: {out}{err}");
        out
    }

    fn json(&self, args: &str) -> Value {
        serde_json::from_str(&self.ok(&format!("{args} --json"))).unwrap()
    }

    /// Applies `storage` on top of the harness's config through applianced.
    fn apply(&self, name: &str, storage: &str) -> (i32, String, String) {
        let file = self.copy(
            &format!("{name}.toml"),
            &format!("{}\n{storage}", harness::test_config()),
        );
        self.applctl(&format!("apply {file} --json"))
    }

    /// `name guid` of a dataset's snapshots, oldest first.
    fn guids(&self, dataset: &str) -> Vec<(String, String)> {
        self.vm
            .sh(&format!(
                "zfs list -H -p -o name,guid -t snapshot -s createtxg -d 1 {dataset}"
            ))
            .lines()
            .map(|l| {
                let (n, g) = l.split_once('\t').unwrap();
                (n.split_once('@').unwrap().1.to_owned(), g.to_owned())
            })
            .collect()
    }

    /// sha256 of every file of a dataset (not of its children, mounted below it), by
    /// relative path.
    fn sums(&self, dataset: &str) -> String {
        self.vm.sh(&format!(
            "cd \"$(zfs get -H -o value mountpoint {dataset})\" && \
             find . -xdev -type f | LC_ALL=C sort | xargs -r sha256sum"
        ))
    }
}

/// The storage part of the config; `disks` are the mirror's, `job` the replication job.
fn storage(disks: [&str; 2], job: &str) -> String {
    format!(
        r#"{}
[storage.datasets."tank/data"]
compression = "zstd"
atime = false
recordsize = "1M"
quota = "1G"

[storage.datasets."tank/share"]

[storage.datasets."tank/tree"]
[storage.datasets."tank/tree/a"]
[storage.datasets."tank/tree/b"]

[storage.users.alice]
smb_password_file = "/data/secrets/alice.smb"

[shares.files]
dataset = "tank/share"
owner = "alice"
nfs = {{ clients = [{{ network = "10.78.0.0/24", options = ["rw", "sync", "no_root_squash", "no_subtree_check"] }}] }}
smb = {{ users = ["alice"] }}

[snapshots.fast]
datasets = ["tank/data"]
frequently = 3
frequent_interval = "1m"
{job}"#,
        zpool::pool("tank", "mirror", &disks)
    )
}

#[test]
fn stored_service_runs_pools_policies_shares_and_replication_from_an_applied_config() {
    let options = Options::default()
        .disk("sd-a", 512)
        .disk("sd-b", 512)
        .disk("sd-used", 512)
        .disk("sd-vault", 512);
    let disks: Vec<String> = options.disks.iter().map(|d| d.by_id()).collect();
    let mut vm = Vm::boot_with("storage_daemon", options);
    vm.wait_for_line("APPLIANCE-BOOT-OK", BOOT_TIMEOUT);
    let present: Vec<String> = disks.iter().map(|d| format!("test -b {d}")).collect();
    vm.wait_until(&present.join(" && "), Duration::from_secs(60));
    vm.wait_until("systemctl is-active stored", Duration::from_secs(120));
    for (var, path) in [
        ("STORED_BIN", "/usr/bin/stored"),
        ("APPLCTL_BIN", "/usr/bin/applctl"),
    ] {
        if let Some(host) = std::env::var_os(var) {
            vm.copy_in(std::path::Path::new(&host), &format!("/tmp/{var}"));
            vm.sh(&format!("mount --bind /tmp/{var} {path}"));
        }
    }
    if std::env::var_os("STORED_BIN").is_some() {
        vm.sh("systemctl restart stored");
    }
    // The blank disks are qcow2 files on a host disk every engineer shares: each cache
    // flush ZFS sends (several per txg, and each of the thousands of snapshots below is a
    // txg on both pools) is a host fsync. What this test shows does not depend on the
    // flushes, so the guest's zfs skips them.
    vm.sh("echo 1 > /sys/module/zfs/parameters/zfs_nocacheflush");
    let g = Guest { vm: &vm };
    let started = Instant::now();
    let (a, b, used, vault) = (&disks[0], &disks[1], &disks[2], &disks[3]);
    vm.sh(
        "mkdir -p /data/secrets && printf 'alice pw\\n' > /data/secrets/alice.smb && \
         chmod 600 /data/secrets/alice.smb",
    );

    // A disk from another box: it holds an exported pool. A mirror declared on it is
    // refused by stored's plan, naming the disk, and nothing is applied.
    vm.sh(&format!(
        "zpool create -m none foreign {used} && zpool export foreign"
    ));
    let (code, out, err) = g.apply("refused", &storage([a, used], ""));
    // applianced reports the failed plan as a failed transaction (exit 1), every daemon
    // back on the active generation.
    assert_eq!(code, 1, "a used disk was not refused: {out}{err}");
    assert!(err.contains("back on generation 1"), "{err}");
    assert!(
        err.contains(&format!("disk {used} is not empty")),
        "the refusal does not name the disk: {err}"
    );
    assert!(
        !vm.sh("zpool list -H -o name").contains("tank"),
        "a pool was made"
    );
    let blank = vm.ssh(&format!("blkid -p {a}"));
    assert_eq!(blank.status.code(), Some(2), "{a} was written: {blank:?}");
    assert!(vm.sh("zpool import").contains("foreign"));
    let status = g.json("storage status");
    assert_eq!(status["generation"], 1, "{status:#}");

    // The mirror on the two empty disks, its datasets and shares.
    let (code, out, err) = g.apply("gen-pools", &storage([a, b], ""));
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["daemon"] == "stored" && s["action"] == "apply" && s["outcome"] == "ok"),
        "{out}"
    );
    let zstatus = vm.sh("zpool status -P tank");
    assert!(zstatus.contains("mirror-0"), "{zstatus}");
    for d in [a, b] {
        assert!(zstatus.contains(&format!("{d}-part1")), "{zstatus}");
    }
    let props = vm.sh(
        "zfs get -Hp -o property,value compression,atime,recordsize,quota,mountpoint tank/data",
    );
    assert_eq!(
        props,
        "compression\tzstd\natime\toff\nrecordsize\t1048576\nquota\t1073741824\n\
         mountpoint\t/mnt/tank/data\n",
        "{props}"
    );
    // The refused file was kept as generation 2 in the history; this is 3.
    let status = g.json("storage status");
    assert_eq!(status["generation"], report["active"], "{status:#}");
    assert!(status["last_error"].is_null(), "{status:#}");

    // The share's root is its owner's: chowned by stored.service, whose unit grants
    // CAP_CHOWN and little else.
    assert_eq!(vm.sh("stat -c %U:%G /mnt/tank/share").trim(), "alice:alice");
    // NFS from a client namespace; SMB as alice.
    vm.sh("chmod 1777 /mnt/tank/share");
    vm.netns("nfsc", "10.78.0.2/24", Outside::Address("10.78.0.1/24"));
    vm.admit("nfsc-v");
    let nfs = vm.in_netns(
        "nfsc",
        "mkdir -p /run/nfsc && mount -t nfs4 10.78.0.1:/mnt/tank/share /run/nfsc && \
         echo over-nfs > /run/nfsc/nfs.txt && cat /run/nfsc/nfs.txt && umount /run/nfsc",
    );
    assert_eq!(nfs.trim(), "over-nfs");
    let smb = vm.sh("cd /tmp && echo over-smb > smb.txt && \
         smbclient //127.0.0.1/files -U 'alice%alice pw' -c 'put smb.txt; get nfs.txt got.txt' \
         >/dev/null && cat /tmp/got.txt");
    assert_eq!(smb.trim(), "over-nfs");
    assert_eq!(
        vm.sh("stat -c %U:%u /mnt/tank/share/smb.txt").trim(),
        "alice:2000"
    );
    eprintln!(
        "pools, datasets and shares after {:.0}s",
        started.elapsed().as_secs_f64()
    );

    // The other box: a namespace with its own address, a pool on the fourth disk made by
    // its own stored, and `stored receive` listening there. nsenter enters the network
    // namespace only (`ip netns exec` would give the receiver a mount namespace of its
    // own, where the replicas it mounts stay).
    vm.netns("backup", "10.77.0.2/24", Outside::Address("10.77.0.1/24"));
    let sender_fp = vm.sh("stored replication identity /data/repl/sender.pem");
    let receiver_fp = vm.sh("stored replication identity /data/repl/receiver.pem");
    let backup = g.copy(
        "backup.toml",
        &format!(
            "version = 1\n{}\n[storage.datasets.\"vault/box\"]\n\n\
             [storage.replication_listener]\nlisten = \"10.77.0.2:7410\"\n\
             identity_file = \"/data/repl/receiver.pem\"\nallowed_clients = [\"{}\"]\n\
             datasets = [\"vault/box\"]\n",
            zpool::pool("vault", "single", &[vault]),
            sender_fp.trim()
        ),
    );
    vm.sh(&format!("stored apply --config {backup}"));
    let start_receiver = || {
        vm.sh(&format!(
            "setsid nohup nsenter --net=/run/netns/backup stored receive --config {backup} \
             >>/tmp/receiver.log 2>&1 </dev/null & echo started"
        ));
        vm.wait_until(
            "ip netns exec backup ss -Hltn 'sport = :7410' | grep -q 7410",
            Duration::from_secs(30),
        );
    };
    start_receiver();

    // The job, run first by the daemon's own replication loop (due at once when it
    // appears), with a bandwidth limit on 16 MiB of random data.
    vm.sh(&format!(
        "head -c {} /dev/urandom > /mnt/tank/data/bulk && zfs snapshot tank/data@bulk",
        BULK_MIB << 20
    ));
    let job_text = format!(
        r#"
[replication.offsite]
target = "10.77.0.2:7410"
target_dataset = "vault/box"
datasets = ["tank/data"]
target_fingerprint = "{}"
identity_file = "/data/repl/sender.pem"
bandwidth_limit = "{LIMIT}"
interval = "1h"
"#,
        receiver_fp.trim()
    );
    let (code, out, err) = g.apply("gen-job", &storage([a, b], &job_text));
    assert_eq!(code, 0, "{out}{err}");
    let first = vm.wait_until(
        "applctl storage status --json | grep -q '\"last_success\": \"' && \
         applctl storage status --json",
        Duration::from_secs(240),
    );
    let first: Value = serde_json::from_str(&first).unwrap();
    let run = &first["replication"][0];
    assert_eq!(run["job"], "offsite", "{first:#}");
    assert!(run["last_error"].is_null(), "{run:#}");
    let bytes = run["bytes"].as_u64().unwrap();
    assert!(bytes >= BULK_MIB << 20, "{run:#}");
    let seconds = run["duration_seconds"].as_f64().unwrap();
    eprintln!(
        "scheduled run: {bytes} bytes in {seconds:.1} s = {:.0} bytes/s under bandwidth_limit = \"{LIMIT}\"",
        run["throughput_bytes_per_second"].as_f64().unwrap()
    );
    // The limit held: the token bucket lets through its burst (a quarter of a second's
    // worth, at least one 1 MiB frame) and then the rate, so no run can carry more than
    // that in its time, however slow the guest (a slow guest only sends less).
    let rate = appliance::types::Size::parse(LIMIT).unwrap().bytes() as f64;
    let frame = 1024.0 * 1024.0;
    let most = rate * seconds + (rate / 4.0).max(frame) + frame;
    assert!(
        (bytes as f64) <= most,
        "{bytes} bytes in {seconds:.1} s is over bandwidth_limit = \"{LIMIT}\" (at most {most:.0})"
    );
    let (src, dst) = (g.guids("tank/data"), g.guids("vault/box/data"));
    let newest = dst.last().unwrap();
    assert!(src.contains(newest), "{newest:?} is not a source snapshot");
    assert_eq!(g.sums("vault/box/data"), {
        // The source as of that snapshot: its files then, read from .zfs.
        vm.sh(&format!(
            "cd /mnt/tank/data/.zfs/snapshot/{} && find . -type f | LC_ALL=C sort | \
             xargs -r sha256sum",
            newest.0
        ))
    });

    // Many small snapshots, each a change, then one run through applctl.
    let many: usize = std::env::var("SD_MANY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MANY);
    let t = Instant::now();
    vm.sh(&format!(
        "mkdir -p /mnt/tank/data/small && for i in $(seq 1 {many}); do \
           echo $i > /mnt/tank/data/small/$i; zfs snapshot tank/data@many_$i; done"
    ));
    eprintln!(
        "{many} snapshots taken in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let r = g.json("storage replicate offsite");
    let secs = t.elapsed().as_secs_f64();
    let sent = r["snapshots"].as_u64().unwrap() as usize;
    eprintln!(
        "replicated {sent} snapshots ({} bytes) in {secs:.1}s",
        r["bytes"]
    );
    assert!(sent >= many, "{r:#}");
    let (src, dst) = (g.guids("tank/data"), g.guids("vault/box/data"));
    let missing: Vec<_> = src
        .iter()
        .filter(|s| s.0.starts_with("many_") && !dst.contains(s))
        .collect();
    assert!(missing.is_empty(), "not on the target by GUID: {missing:?}");
    // No file changed after the last of them: the replica's files are the source's.
    let sums = g.sums("tank/data");
    assert_eq!(sums.lines().count(), many + 1, "bulk and the small files");
    assert_eq!(g.sums("vault/box/data"), sums);

    // Policy snapshots on the scheduler's minutes. Those taken during the run were kept
    // from the pruning until it ended; the next pass prunes them to the policy's 3 (the
    // replication base, held, aside).
    eprintln!(
        "policy snapshots after the run:\n{}",
        vm.sh("zfs list -H -o name,userrefs -t snapshot tank/data | grep @stored_frequently_")
    );
    let frequent = vm.wait_until(
        "zfs list -H -o name,userrefs -t snapshot tank/data | grep @stored_frequently_ \
           > /tmp/frequent; n=$(wc -l < /tmp/frequent); \
         free=$(awk '$2 == 0' /tmp/frequent | wc -l); \
         [ $n -ge 2 ] && [ $free -le 3 ] && cat /tmp/frequent",
        Duration::from_secs(180),
    );
    eprintln!("policy snapshots:\n{frequent}");

    // What a user reads from the running daemon.
    let text = g.ok("storage status");
    assert!(text.contains("tank  ONLINE"), "{text}");
    assert!(text.contains("fast  RPO met ("), "{text}");
    assert!(text.contains("offsite  ok  lag "), "{text}");
    // The lag is the age of the newest snapshot the target has, counted from when the long
    // run above ended (read at its start, a run looked fresher by its length): the recovery
    // point, now minus the lag, is that snapshot's creation on the source.
    let newest = g.guids("vault/box/data").last().unwrap().0.clone();
    let created: i64 = vm
        .sh(&format!("zfs get -Hp -o value creation tank/data@{newest}"))
        .trim()
        .parse()
        .unwrap();
    let guest_now = || -> i64 { vm.sh("date +%s").trim().parse().unwrap() };
    let t0 = guest_now();
    let status = g.json("storage status");
    let t1 = guest_now();
    let job = status["replication"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "offsite")
        .unwrap()
        .clone();
    // Seconds are whole on both sides of the subtraction: 2 s of slack.
    let recovery_point = |lag: i64, t0: i64, t1: i64| {
        assert!(
            t0 - lag - 2 <= created && created <= t1 - lag + 2,
            "lag {lag} s read between {t0} and {t1} puts the recovery point away from \
             {newest}'s creation at {created}"
        );
    };
    recovery_point(job["lag_seconds"].as_i64().unwrap(), t0, t1);
    assert_eq!(job["runs_total"], 2, "{job:#}");
    assert_eq!(job["failures_total"], 0, "{job:#}");
    let lag = job["lag_seconds"].as_i64().unwrap();
    let last_bytes = job["bytes"].as_u64().unwrap();
    let total = job["bytes_total"].as_u64().unwrap();
    assert_eq!(total, bytes + last_bytes, "{job:#}");
    let t0 = guest_now();
    let metrics = g.ok("storage metrics");
    let t1 = guest_now();
    for line in [
        format!("stored_replication_last_bytes{{job=\"offsite\"}} {last_bytes}"),
        format!("stored_replication_bytes_total{{job=\"offsite\"}} {total}"),
        "stored_replication_runs_total{job=\"offsite\"} 2".to_owned(),
        "stored_pool_healthy{pool=\"tank\",health=\"ONLINE\"} 1".to_owned(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from\n{metrics}"
        );
    }
    let metric_lag = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stored_replication_lag_seconds{job=\"offsite\"} "))
        .unwrap_or_else(|| panic!("no lag metric in\n{metrics}"));
    recovery_point(metric_lag.parse().unwrap(), t0, t1);
    eprintln!(
        "offsite: lag {lag} s in status, {metric_lag} s in /metrics; last run {last_bytes} bytes, \
         {total} bytes in all"
    );
    let snaps = g.ok("storage snapshots tank/data");
    assert!(
        snaps.contains(&format!("tank/data@many_{many}  foreign")),
        "{}",
        &snaps[snaps.len().saturating_sub(2000)..]
    );
    assert!(snaps.contains("  frequently"), "{snaps}");
    let listed = g.json("storage snapshots tank/data");
    let held: Vec<&Value> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["holds"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert_eq!(held.len(), 1, "one replication base held: {held:?}");
    // The hold is on the newest snapshot the target has.
    assert_eq!(
        field(held[0], "/guid").as_str(),
        Some(g.guids("vault/box/data").last().unwrap().1.as_str())
    );
    let dry = g.json("storage prune --dry-run");
    let policy = &dry["policies"][0];
    assert_eq!(policy["policy"], "fast", "{dry:#}");
    let held_name = held[0]["name"].as_str().unwrap();
    assert!(
        !policy["destroy"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == held_name),
        "the held base would be pruned: {dry:#}"
    );
    g.ok("storage prune --dry-run");

    recursive_job(&g, &receiver_fp, (a, b), &job_text);
    resume_after_a_killed_receiver(&g, &start_receiver);
    pool_health_errors_and_scrub(&g, a);
    let generation = g.json("storage status")["generation"].clone();
    boot_import_after_a_reboot(&mut vm);
    after_the_reboot(&Guest { vm: &vm }, &generation, &backup);

    eprintln!(
        "storage_daemon done after {:.0}s of test ({:.0}s since QEMU started)",
        started.elapsed().as_secs_f64(),
        vm.uptime().as_secs_f64()
    );
    let status = vm.power_off(crate::POWER_OFF_TIMEOUT);
    assert!(status.success(), "QEMU exited with {status}");
}

/// The pool part of `applctl storage status` and `/metrics` against what ZFS itself says:
/// space as `zpool list -Hp` gives it; a scrub's end and its errors; a mirror with a disk
/// offline reported DEGRADED and unhealthy, then ONLINE after its resilver; and a pool
/// with a damaged data block (a file vdev, 4 KiB of a file's record overwritten where
/// its marker text lies on the vdev) reported with its data errors after a scrub.
fn pool_health_errors_and_scrub(g: &Guest<'_>, disk: &str) {
    let vm = g.vm;
    let pool = |status: &Value, name: &str| -> Value {
        status["pools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no pool {name} in {status:#}"))
    };
    let healthy = |health: &str, up: u8| {
        let metrics = g.ok("storage metrics");
        let line = format!("stored_pool_healthy{{pool=\"tank\",health=\"{health}\"}} {up}");
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from\n{metrics}"
        );
    };

    // Space: the pool's size is fixed; what is allocated moves with the policy's
    // snapshots, but allocated and free always add up to the size.
    let tank = pool(&g.json("storage status"), "tank");
    let size: u64 = vm.sh("zpool list -Hp -o size tank").trim().parse().unwrap();
    assert_eq!(tank["size"].as_u64(), Some(size), "{tank:#}");
    let (alloc, free) = (
        tank["allocated"].as_u64().unwrap(),
        tank["free"].as_u64().unwrap(),
    );
    assert_eq!(alloc + free, size, "{tank:#}");
    let capacity = tank["capacity_percent"].as_u64().unwrap();
    assert!(capacity.abs_diff(alloc * 100 / size) <= 1, "{tank:#}");
    assert_eq!(tank["data_errors"], 0, "{tank:#}");

    // A scrub, waited for: finished, when, and nothing it could not repair.
    let before: i64 = vm.sh("date +%s").trim().parse().unwrap();
    vm.sh("zpool scrub -w tank");
    let after: i64 = vm.sh("date +%s").trim().parse().unwrap();
    let tank = pool(&g.json("storage status"), "tank");
    let scrub = &tank["scrub"];
    assert_eq!(scrub["state"], "finished", "{tank:#}");
    assert_eq!(scrub["errors"], 0, "{tank:#}");
    let at = scrub["last_unix"].as_i64().unwrap();
    // The scan line has whole seconds in local time (UTC here): 2 s of slack.
    assert!(before - 2 <= at && at <= after + 2, "{tank:#}");
    healthy("ONLINE", 1);

    // One side of the mirror offline: DEGRADED and unhealthy; back online, resilvered.
    vm.sh(&format!("zpool offline tank {disk}-part1"));
    let tank = pool(&g.json("storage status"), "tank");
    assert_eq!(tank["health"], "DEGRADED", "{tank:#}");
    healthy("DEGRADED", 0);
    vm.sh(&format!(
        "zpool online tank {disk}-part1 && zpool wait -t resilver tank"
    ));
    let tank = pool(&g.json("storage status"), "tank");
    assert_eq!(tank["health"], "ONLINE", "{tank:#}");
    healthy("ONLINE", 1);

    // Data errors need a damaged block where ZFS keeps one copy: a pool on a file, a file
    // of a marker line written to it (no compression, so the marker is on the vdev as it
    // is), and 4 KiB of the first record holding it overwritten while the pool is exported.
    vm.sh(
        "mkdir -p /tmp/badpool && truncate -s 128M /tmp/badpool/vdev && \
         zpool create -o cachefile=none -O compression=off -O mountpoint=/mnt/bad \
           bad /tmp/badpool/vdev && \
         yes STORED-DAMAGED-BLOCK-TEST | head -c 1M > /mnt/bad/f && zpool sync bad && \
         zpool export bad",
    );
    let at =
        vm.sh("grep -obaF STORED-DAMAGED-BLOCK-TEST /tmp/badpool/vdev | head -n 1 | cut -d: -f1");
    let at: u64 = at
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("marker not on the vdev: {at:?}"));
    vm.sh(&format!(
        "dd if=/dev/urandom of=/tmp/badpool/vdev bs=4096 seek={} count=1 conv=notrunc status=none && \
         zpool import -o cachefile=none -d /tmp/badpool bad && zpool scrub -w bad",
        at / 4096
    ));
    let bad = pool(&g.json("storage status"), "bad");
    eprintln!("a pool with a damaged block after its scrub: {bad:#}");
    assert!(bad["data_errors"].as_u64().unwrap() >= 1, "{bad:#}");
    assert!(bad["scrub"]["errors"].as_u64().unwrap() >= 1, "{bad:#}");
    assert_eq!(bad["scrub"]["state"], "finished", "{bad:#}");
    vm.sh("zpool destroy bad && rm -r /tmp/badpool");
}

/// The state of job `name` in `applctl storage status`.
fn job_state(g: &Guest<'_>, name: &str) -> Value {
    let status = g.json("storage status");
    status["replication"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {status:#}"))
        .clone()
}

/// A recursive job over `tank/tree` (children `a` and `b` declared, `late` made by hand
/// after the tree's snapshot): the scheduler's first run sends the tree and skips `late`,
/// which has no snapshot yet; the next run sends nothing for `b`, which has no new
/// snapshot, and `late`, now that it has one.
fn recursive_job(g: &Guest<'_>, receiver_fp: &str, (a, b): (&str, &str), offsite: &str) {
    let vm = g.vm;
    vm.sh(
        "for d in tree tree/a tree/b; do echo $d > /mnt/tank/$d/file; done && \
         zfs snapshot -r tank/tree@t1 && zfs create tank/tree/late && \
         echo late > /mnt/tank/tree/late/file",
    );
    let tree = format!(
        r#"
[replication.tree]
target = "10.77.0.2:7410"
target_dataset = "vault/box"
datasets = ["tank/tree"]
recursive = true
target_fingerprint = "{}"
identity_file = "/data/repl/sender.pem"
interval = "1h"
"#,
        receiver_fp.trim()
    );
    let (code, out, err) = g.apply("gen-tree", &storage([a, b], &format!("{offsite}{tree}")));
    assert_eq!(code, 0, "{out}{err}");
    // A new job is due at once: the daemon's own run.
    let deadline = Instant::now() + Duration::from_secs(240);
    let state = loop {
        let state = job_state(g, "tree");
        assert!(state["last_error"].is_null(), "{state:#}");
        if !state["last_success"].is_null() {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the tree job never ran: {state:#}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!("tree job after its first run: {state:#}");
    for d in ["tree", "tree/a", "tree/b"] {
        let (src, dst) = (format!("tank/{d}"), format!("vault/box/{d}"));
        assert_eq!(g.guids(&dst), g.guids(&src), "{dst} by GUID");
        assert_eq!(g.sums(&dst), g.sums(&src), "{dst} by sha256");
    }
    let late = vm.ssh("zfs list -H -o name vault/box/tree/late");
    assert!(
        !late.status.success(),
        "a child without snapshots was replicated: {late:?}"
    );

    // `a` changed and `late` has its first snapshot; `b` and the root have nothing new.
    // The root's replica, read-only, has no directory to mount `late` on (its snapshot t1
    // predates `late`): `late` is received, and mounted by the run that lands the root's
    // next snapshot (below).
    vm.sh("echo more > /mnt/tank/tree/a/more && \
         zfs snapshot tank/tree/a@t2 tank/tree/late@t2");
    let r = g.json("storage replicate tree");
    let steps: Vec<(String, u64)> = r["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["source"].as_str().unwrap().to_owned(),
                d["steps"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        ("tank/tree", 0),
        ("tank/tree/a", 1),
        ("tank/tree/b", 0),
        ("tank/tree/late", 1),
    ]
    .map(|(d, n)| (d.to_owned(), n))
    .into();
    assert_eq!(steps, expected, "{r:#}");
    assert_eq!(g.guids("vault/box/tree/late"), g.guids("tank/tree/late"));
    let waiting = vm.sh("zfs get -H -o value mounted vault/box/tree/late");
    eprintln!(
        "late after its first run, the root's replica without its directory: mounted={waiting}"
    );
    assert_eq!(
        waiting.trim(),
        "no",
        "the reproduction expected an unmounted child"
    );
    // The root's next snapshot brings the directory; the run that lands it mounts `late`.
    vm.sh("zfs snapshot tank/tree@t3");
    g.ok("storage replicate tree");
    assert_eq!(
        vm.sh("zfs get -H -o value mounted vault/box/tree/late")
            .trim(),
        "yes"
    );
    for d in ["tree", "tree/a", "tree/b", "tree/late"] {
        let (src, dst) = (format!("tank/{d}"), format!("vault/box/{d}"));
        assert_eq!(g.guids(&dst), g.guids(&src), "{dst} by GUID");
        assert_eq!(g.sums(&dst), g.sums(&src), "{dst} by sha256");
    }
}

/// `kill -9` of the receiver mid-stream while the daemon sends: the run fails, the target
/// keeps a resume token, and the snapshot that token names is held on the source with the
/// job's tag (no prune or destroy can take it before the next run). The next run resumes
/// from the token and moves the job's hold onto it, the only one left.
fn resume_after_a_killed_receiver(g: &Guest<'_>, start_receiver: &dyn Fn()) {
    let vm = g.vm;
    vm.sh("head -c 16M /dev/urandom > /mnt/tank/data/cut && zfs snapshot tank/data@cut");
    vm.sh(
        "rm -f /tmp/cut.*; setsid nohup sh -c 'applctl storage replicate offsite --json \
           > /tmp/cut.out 2> /tmp/cut.err; echo $? > /tmp/cut.rc' < /dev/null > /dev/null 2>&1 &",
    );
    // A few MB into the 16 MiB stream (8 s under the job's 2 MiB/s), watched and killed
    // from inside the guest so that no SSH round trip lets the stream end first.
    let at = vm.sh("for i in $(seq 1 600); do \
           n=$(ip netns exec backup ss -Htni 'sport = :7410' | grep -o 'bytes_received:[0-9]*' \
               | cut -d: -f2 | sort -n | tail -1); \
           [ \"${n:-0}\" -gt 3000000 ] && break; sleep 0.2; done; \
         pid=$(ip netns exec backup ss -Hltnp 'sport = :7410' | grep -o 'pid=[0-9]*' | \
           cut -d= -f2 | head -1); kill -9 $pid; echo $n");
    eprintln!("receiver killed after {} bytes of the run", at.trim());
    let rc = vm.wait_until("cat /tmp/cut.rc", Duration::from_secs(180));
    let err = vm.sh("cat /tmp/cut.err /tmp/cut.out");
    eprintln!(
        "replicate with the receiver killed: exit {}{err}",
        rc.trim()
    );
    assert_ne!(rc.trim(), "0", "{err}");
    let token = vm.sh("zfs get -H -o value receive_resume_token vault/box/data");
    let token = token.trim();
    assert_ne!(token, "-", "no resume token on the target");
    let contents = vm.sh(&format!("zfs send -nvt {token} 2>&1"));
    assert!(
        contents.contains("toname = tank/data@cut"),
        "the token is not for @cut: {contents}"
    );
    let holds = vm.sh("zfs holds -H tank/data@cut");
    assert!(
        holds.contains("stored-repl:offsite"),
        "the snapshot the resume needs is not held: {holds}"
    );
    let destroy = vm.ssh("zfs destroy tank/data@cut");
    assert!(!destroy.status.success(), "the cut snapshot was destroyed");
    let dry = g.json("storage prune --dry-run");
    assert!(
        !dry.to_string().contains("tank/data@cut"),
        "the prune would take the cut snapshot: {dry:#}"
    );

    start_receiver();
    let r = g.json("storage replicate offsite");
    assert_eq!(r["resumed"], true, "{r:#}");
    let (src, dst) = (g.guids("tank/data"), g.guids("vault/box/data"));
    let cut = src.iter().find(|s| s.0 == "cut").unwrap();
    assert!(dst.contains(cut), "@cut is not on the target by GUID");
    assert_eq!(g.sums("vault/box/data"), g.sums("tank/data"));
    let held = vm.sh(
        "zfs list -H -o name -t snapshot tank/data | xargs zfs holds -H | \
         grep -c stored-repl:offsite",
    );
    assert_eq!(held.trim(), "1", "the job holds more than its base");
    eprintln!(
        "resumed: {} bytes after the cut, {}",
        r["bytes"],
        job_state(g, "offsite")
    );
}

/// After the reboot: the same generation in force, the share exported and served over SMB
/// again, nfsdcld running (its state on /data), and the TLS job to the other "box" (its
/// namespace and pool set up again, as a box of its own would come back) runs with the
/// identities and pins of before.
fn after_the_reboot(g: &Guest<'_>, generation: &Value, backup: &str) {
    let vm = g.vm;
    let status = g.json("storage status");
    assert_eq!(&status["generation"], generation, "{status:#}");
    let exports = vm.wait_until(
        "exportfs -v | grep -q /mnt/tank/share && exportfs -v",
        Duration::from_secs(120),
    );
    eprintln!("exports after the reboot:\n{exports}");
    let smb = vm.sh(
        "smbclient //127.0.0.1/files -U 'alice%alice pw' -c 'get nfs.txt /tmp/after.txt' \
         >/dev/null && cat /tmp/after.txt",
    );
    assert_eq!(smb.trim(), "over-nfs");
    // The other box comes back: its namespace, its pool, its receiver (the config file
    // was on /tmp, gone with the reboot).
    let backup_text = fs::read_to_string(vm.dir.join("backup.toml")).unwrap();
    let backup_again = g.copy("backup.toml", &backup_text);
    assert_eq!(backup_again, backup);
    vm.netns("backup", "10.77.0.2/24", Outside::Address("10.77.0.1/24"));
    vm.sh(&format!("stored apply --config {backup}"));
    vm.sh(&format!(
        "setsid nohup nsenter --net=/run/netns/backup stored receive --config {backup} \
         >>/tmp/receiver.log 2>&1 </dev/null & echo started"
    ));
    vm.wait_until(
        "ip netns exec backup ss -Hltn 'sport = :7410' | grep -q 7410",
        Duration::from_secs(30),
    );
    vm.sh("echo after-reboot > /mnt/tank/data/after && zfs snapshot tank/data@after_reboot");
    let (code, out, err) = g.applctl("storage replicate offsite --json");
    let receiver_log = vm.sh("tail -n 20 /tmp/receiver.log");
    assert_eq!(code, 0, "{out}{err}\nreceiver:\n{receiver_log}");
    let dst = g.guids("vault/box/data");
    let after = g
        .guids("tank/data")
        .into_iter()
        .find(|s| s.0 == "after_reboot")
        .unwrap();
    assert!(dst.contains(&after), "{after:?} not on the target by GUID");
    assert_eq!(
        vm.sh(
            "cat /mnt/vault/box/data/.zfs/snapshot/after_reboot/after && \
             cat /mnt/vault/box/data/after"
        ),
        "after-reboot\nafter-reboot\n"
    );
    // nfsdcld failed here on an image without storagedir on /data ("Failed to open main
    // database: -30", EROFS on the read-only root's /var/lib/nfs/nfsdcld). The image's
    // nfs.conf.d now moves it to /data/stored/nfsdcld; shown, not asserted, until a run on
    // an image with that change has passed.
    let dcld = vm.ssh("systemctl is-active nfsdcld");
    let journal = vm.sh("journalctl -b -u nfsdcld --no-pager -o cat");
    eprintln!(
        "nfsdcld after the reboot: {}{journal}",
        String::from_utf8_lossy(&dcld.stdout)
    );
}

/// A reboot: stored.service imports the pool it made at boot (no zfs-import unit runs in
/// the image) and mounts its datasets. That the shares are served again is not checked yet.
fn boot_import_after_a_reboot(vm: &mut Vm) {
    let t = Instant::now();
    // The reboot drops the SSH connection, so its status says nothing.
    let _ = vm.ssh("systemctl reboot");
    vm.wait_for_nth_line("APPLIANCE-BOOT-OK", 2, BOOT_TIMEOUT);
    vm.wait_until("systemctl is-active stored", Duration::from_secs(180));
    let mounted = vm.wait_until(
        "zfs get -H -o value mounted tank/data tank/share | grep -vx yes | wc -l | grep -qx 0 && \
         zfs get -H -o name,value mounted tank/data tank/share",
        Duration::from_secs(180),
    );
    eprintln!(
        "rebooted, tank imported and mounted after {:.0}s:\n{mounted}",
        t.elapsed().as_secs_f64()
    );
    let journal = vm.sh("journalctl -b -u stored --no-pager -o cat");
    assert!(
        journal
            .lines()
            .any(|l| l.contains("importing pool") && l.contains("tank")),
        "stored did not import tank:\n{journal}"
    );
}
