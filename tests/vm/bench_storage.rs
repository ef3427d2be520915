//! The storage bench (`cargo xtask bench storage`), in one boot: two pools on two virtual
//! disks; raw `zfs send | zfs recv`, syncoid (Debian's sanoid package, unpacked in the
//! guest from the .debs xtask downloads) and stored (`stored replicate` to `stored receive`
//! over loopback mutual TLS) replicate the same dataset into three targets: a full send,
//! an incremental of BENCH_INC_MIB, and BENCH_EMPTY empty incrementals. Then stored prunes
//! about 10k snapshots (100 child datasets x 100 snapshots, one recursive policy).
//!
//! Ignored by `cargo test`: benches are not tests and do not run in CI. Times are taken in
//! the guest (`date +%s%N` around the command), so SSH's cost is not in them. The guest
//! runs under TCG: absolute figures are far below real hardware; the ratios are the point.

use std::fs;
use std::time::Duration;

use crate::BOOT_TIMEOUT;
use crate::harness::{Options, Vm};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Bench<'a> {
    vm: &'a Vm,
    stored: String,
    /// The syncoid command line, when the .debs were given.
    syncoid: Option<String>,
}

impl Bench<'_> {
    /// Runs `command` in the guest after dropping the page cache; returns its seconds.
    fn timed(&self, what: &str, command: &str) -> f64 {
        let out = self.vm.sh(&format!(
            "sync; echo 3 > /proc/sys/vm/drop_caches; \
             a=$(date +%s%N); ( {command} ) >/tmp/bench.out 2>&1; rc=$?; b=$(date +%s%N); \
             echo $rc $(( (b - a) / 1000 ))"
        ));
        let mut f = out.split_whitespace();
        let rc = f.next().unwrap_or("?");
        let micros: f64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        if rc != "0" {
            let log = self.vm.sh("tail -n 30 /tmp/bench.out");
            panic!("{what}: `{command}` exited {rc}:\n{log}");
        }
        let secs = micros / 1e6;
        eprintln!("{what}: {secs:.2} s");
        secs
    }

    fn config(&self, name: &str, text: &str) -> String {
        let host = self.vm.dir.join(format!("{name}.toml"));
        fs::write(&host, format!("version = 1\n{text}")).unwrap();
        let guest = format!("/tmp/{name}.toml");
        self.vm.copy_in(&host, &guest);
        guest
    }

    fn guid(&self, snapshot: &str) -> String {
        self.vm
            .sh(&format!("zfs get -H -p -o value guid {snapshot}"))
            .trim()
            .to_owned()
    }

    /// One replication round by every method; returns (raw, syncoid, stored) seconds.
    fn round(&self, what: &str, raw: &str, job: &str) -> (f64, Option<f64>, f64) {
        let r = self.timed(&format!("{what} raw"), raw);
        let s = self.syncoid.as_ref().map(|cmd| {
            self.timed(
                &format!("{what} syncoid"),
                &format!("{cmd} --no-sync-snap --no-privilege-elevation src/data dst/syncoid/data"),
            )
        });
        let st = self.timed(
            &format!("{what} stored"),
            &format!("{} replicate bench --config {job}", self.stored),
        );
        (r, s, st)
    }

    /// The newest source snapshot arrived everywhere, by GUID.
    fn check(&self, snap: &str) {
        let want = self.guid(&format!("src/data@{snap}"));
        let mut targets = vec!["dst/raw/data", "dst/stored/data"];
        if self.syncoid.is_some() {
            targets.push("dst/syncoid/data");
        }
        for t in targets {
            assert_eq!(self.guid(&format!("{t}@{snap}")), want, "{t}@{snap}");
        }
    }
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.3}", a / b)
}

#[test]
#[ignore = "a bench, run by `cargo xtask bench storage`"]
fn bench_storage() {
    let full_mib = env_u64("BENCH_FULL_MIB", 512);
    let inc_mib = env_u64("BENCH_INC_MIB", 1024);
    let empties = env_u64("BENCH_EMPTY", 1000);
    let prune_children = env_u64("BENCH_PRUNE_DATASETS", 100);
    let prune_rounds = env_u64("BENCH_PRUNE_ROUNDS", 100);
    let src_mib = (full_mib + inc_mib) * 2 + 2048;
    let options = Options::default()
        .disk("bench-src", src_mib)
        .disk("bench-dst", src_mib * 3);
    let (disk_a, disk_b) = (options.disks[0].by_id(), options.disks[1].by_id());
    let mut vm = Vm::boot_with("bench-storage", options);
    vm.wait_for_line("APPLIANCE-BOOT-OK", BOOT_TIMEOUT);
    vm.wait_until(
        &format!("test -b {disk_a} && test -b {disk_b}"),
        Duration::from_secs(60),
    );
    vm.sh("modprobe zfs && mount -t tmpfs -o mode=755 tmpfs /mnt");
    let stored = match std::env::var_os("STORED_BIN") {
        Some(host) => {
            vm.copy_in(std::path::Path::new(&host), "/tmp/stored");
            "/tmp/stored".to_owned()
        }
        None => "stored".to_owned(),
    };
    // syncoid and the Perl modules it needs beyond perl-base, unpacked under /tmp.
    let syncoid = std::env::var_os("SYNCOID_DEBS").map(|dir| {
        vm.sh("mkdir -p /tmp/debs /tmp/sanoid");
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "deb") {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                vm.copy_in(&p, &format!("/tmp/debs/{name}"));
            }
        }
        vm.sh("for d in /tmp/debs/*.deb; do dpkg -x $d /tmp/sanoid; done");
        let lib = "/tmp/sanoid/usr/share/perl5:/tmp/sanoid/usr/lib/x86_64-linux-gnu/perl/5.36.0:\
                   /tmp/sanoid/usr/share/perl/5.36.0:/tmp/sanoid/usr/lib/x86_64-linux-gnu/perl5/5.36";
        let cmd = format!("env PERL5LIB={lib} perl /tmp/sanoid/usr/sbin/syncoid");
        eprintln!("{}", vm.sh(&format!("{cmd} --version 2>&1 || true")));
        cmd
    });
    let b = Bench {
        vm: &vm,
        stored,
        syncoid,
    };

    let pools = format!(
        r#"
[storage.pools.src]
vdevs = [{{ layout = "single", disks = ["{disk_a}"] }}]
scrub_interval = "0s"
[storage.pools.dst]
vdevs = [{{ layout = "single", disks = ["{disk_b}"] }}]
scrub_interval = "0s"
[storage.datasets."src/data"]
[storage.datasets."src/prune"]
[storage.datasets."dst/raw"]
[storage.datasets."dst/syncoid"]
[storage.datasets."dst/stored"]
"#
    );
    let base = b.config("pools", &pools);
    vm.sh(&format!("{} apply --config {base}", b.stored));
    let sender_fp = vm.sh(&format!(
        "{} replication identity /data/bench-repl/sender.pem",
        b.stored
    ));
    let receiver_fp = vm.sh(&format!(
        "{} replication identity /data/bench-repl/receiver.pem",
        b.stored
    ));
    let listener = b.config(
        "receiver",
        &format!(
            r#"{pools}
[storage.replication_listener]
listen = "127.0.0.1:7411"
identity_file = "/data/bench-repl/receiver.pem"
allowed_clients = ["{}"]
datasets = ["dst/stored"]
"#,
            sender_fp.trim()
        ),
    );
    vm.sh(&format!(
        "setsid nohup {} receive --config {listener} >/tmp/receiver.log 2>&1 </dev/null & echo started",
        b.stored
    ));
    let up = vm.ssh(
        "for i in $(seq 60); do ss -Hltn 'sport = :7411' | grep -q 7411 && exit 0; sleep 1; done; \
         cat /tmp/receiver.log; exit 1",
    );
    assert!(
        up.status.success(),
        "the receiver did not listen: {}",
        String::from_utf8_lossy(&up.stdout)
    );
    let job = b.config(
        "job",
        &format!(
            r#"{pools}
[replication.bench]
target = "127.0.0.1:7411"
target_dataset = "dst/stored"
datasets = ["src/data"]
target_fingerprint = "{}"
identity_file = "/data/bench-repl/sender.pem"
"#,
            receiver_fp.trim()
        ),
    );

    // Full send.
    vm.sh(&format!(
        "head -c {}M /dev/urandom > /mnt/src/data/full.bin && zfs snapshot src/data@full",
        full_mib
    ));
    let full = b.round(
        "full",
        "zfs send src/data@full | zfs recv -u dst/raw/data",
        &job,
    );
    b.check("full");

    // One incremental of inc_mib.
    vm.sh(&format!(
        "head -c {}M /dev/urandom > /mnt/src/data/inc.bin && zfs snapshot src/data@inc",
        inc_mib
    ));
    let inc = b.round(
        "incremental",
        "zfs send -i src/data@full src/data@inc | zfs recv -u dst/raw/data",
        &job,
    );
    b.check("inc");

    // Empty incrementals: nothing changes between them.
    vm.sh(&format!(
        "for i in $(seq -w 1 {empties}); do zfs snapshot src/data@e$i; done"
    ));
    let last = format!("e{empties:0w$}", w = empties.to_string().len());
    let empty = b.round(
        "empty incrementals",
        &format!("zfs send -I src/data@inc src/data@{last} | zfs recv -u dst/raw/data"),
        &job,
    );
    b.check(&last);

    // Pruning: children x rounds snapshots of ours (plus the parent's), all of a period
    // the policy keeps none of, destroyed by one `stored snapshot run`.
    vm.sh(&format!(
        "for i in $(seq -w 1 {prune_children}); do zfs create src/prune/d$i; done"
    ));
    vm.sh(&format!(
        "for h in $(seq 0 {}); do zfs snapshot -r \
         src/prune@stored_hourly_$(date -u -d @$((1767225600 + h * 3600)) +%Y-%m-%dT%H:%M:%SZ); done",
        prune_rounds - 1
    ));
    let before: u64 = vm
        .sh("zfs list -H -t snapshot -o name -r src/prune | wc -l")
        .trim()
        .parse()
        .unwrap();
    let policy = b.config(
        "prune",
        &format!(
            "{pools}\n[snapshots.bench]\ndatasets = [\"src/prune\"]\nrecursive = true\nfrequently = 1\n"
        ),
    );
    let prune = b.timed(
        &format!("prune of {before} snapshots"),
        &format!(
            "{} snapshot run --config {policy} --now 2027-01-01T00:00:00Z",
            b.stored
        ),
    );
    let after: u64 = vm
        .sh("zfs list -H -t snapshot -o name -r src/prune | wc -l")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        after,
        prune_children + 1,
        "one frequent snapshot per dataset left"
    );

    let mib = |m: u64, s: f64| format!("{:.1}", m as f64 / s);
    println!(
        "full {full_mib} MiB: raw {:.2} s ({} MiB/s), syncoid {}, stored {:.2} s ({} MiB/s)",
        full.0,
        mib(full_mib, full.0),
        full.1.map_or("n/a".into(), |s| format!("{s:.2} s")),
        full.2,
        mib(full_mib, full.2)
    );
    println!(
        "incremental {inc_mib} MiB: raw {:.2} s ({} MiB/s), syncoid {}, stored {:.2} s ({} MiB/s)",
        inc.0,
        mib(inc_mib, inc.0),
        inc.1.map_or("n/a".into(), |s| format!("{s:.2} s")),
        inc.2,
        mib(inc_mib, inc.2)
    );
    println!(
        "{empties} empty incrementals: raw {:.2} s, syncoid {}, stored {:.2} s",
        empty.0,
        empty.1.map_or("n/a".into(), |s| format!("{s:.2} s")),
        empty.2
    );
    println!("prune: {before} snapshots destroyed in {prune:.2} s");
    println!("bench: full_send_vs_raw = {} ratio", ratio(full.0, full.2));
    println!("bench: incremental_vs_raw = {} ratio", ratio(inc.0, inc.2));
    match empty.1 {
        Some(s) => println!("bench: empty_1000_vs_syncoid = {} ratio", ratio(empty.2, s)),
        None => println!("bench: empty_1000_vs_syncoid = n/a ratio (no SYNCOID_DEBS)"),
    }
    println!(
        "bench: empty_1000_vs_raw = {} ratio",
        ratio(empty.2, empty.0)
    );
    println!("bench: prune_10k = {prune:.2} s");
    vm.power_off(crate::POWER_OFF_TIMEOUT);
}
