//! Where the time of a replication goes, in one boot: a full send of `TP_MIB` MiB (default
//! 256) of random data as `zfs send` alone, raw `zfs send | zfs recv`, and `stored
//! replicate` to `stored receive` (mutual TLS on loopback) for every build in `TP_BINS`
//! (comma-separated host paths, to compare builds in one boot; default the image's stored).
//! Prints MiB/s and the ratio to raw; asserts only that every copy arrived whole. Not part of the CI run:
//! `cargo test -p appliance-tests --features vm --test vm -- --ignored repl_throughput`.

use std::path::Path;
use std::time::Duration;

use crate::harness::shell_quote;
use crate::zpool;

#[test]
#[ignore = "a measurement, run by hand"]
fn repl_throughput() {
    let mib: u64 = std::env::var("TP_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let disk = mib * 3 + 512;
    let z = zpool::boot("repl-throughput", &[("tp-src", disk), ("tp-dst", disk)]);
    let vm = &z.vm;
    let mut bins: Vec<String> = Vec::new();
    match std::env::var("TP_BINS") {
        Ok(list) => {
            for (i, host) in list.split(',').enumerate() {
                let guest = format!("/tmp/stored-{i}");
                vm.copy_in(Path::new(host), &guest);
                bins.push(guest);
            }
        }
        Err(_) => bins.push(z.stored.clone()),
    }
    let mut datasets = String::from("[storage.datasets.\"src/data\"]\n");
    for i in 0..bins.len() {
        datasets.push_str(&format!("[storage.datasets.\"dst/s{i}\"]\n"));
    }
    let pools = format!(
        "{}{}\n{datasets}",
        zpool::pool("src", "single", &z.disks[..1]),
        zpool::pool("dst", "single", &z.disks[1..]),
    );
    // Written from here (no host file: the measurement outlives a VM directory cleanup).
    let config = |name: &str, text: &str| {
        let guest = format!("/tmp/{name}.toml");
        vm.sh(&format!(
            "cat > {guest} <<'END_OF_CONFIG'\nversion = 1\n{text}\nEND_OF_CONFIG"
        ));
        guest
    };
    let base = config("pools", &pools);
    vm.sh(&format!("{} apply --config {base}", bins[0]));
    vm.sh(&format!(
        "head -c {mib}M /dev/urandom > /mnt/src/data/full.bin && zfs snapshot src/data@full"
    ));
    let guid = vm.sh("zfs get -H -p -o value guid src/data@full");
    // Seconds of a guest command, timed inside the guest (ssh and scp stay out).
    let timed = |what: &str, cmd: &str| -> f64 {
        let out = vm.sh(&format!(
            "s=$(date +%s%N); sh -c {} >/tmp/timed.log 2>&1 \
             || {{ cat /tmp/timed.log >&2; exit 1; }}; e=$(date +%s%N); echo $(( (e - s) / 1000000 ))",
            shell_quote(cmd)
        ));
        let secs = out.trim().parse::<f64>().unwrap() / 1000.0;
        eprintln!("{what}: {secs:.2} s, {:.1} MiB/s", mib as f64 / secs);
        secs
    };
    let flags = "-L -e -c";
    // Each copy is checked, then destroyed to leave room for the next.
    let arrived = |dataset: &str| {
        assert_eq!(
            vm.sh(&format!("zfs get -H -p -o value guid {dataset}@full")),
            guid,
            "{dataset}"
        );
        vm.sh(&format!("zfs destroy -r {dataset}"));
    };
    timed(
        "zfs send | cat > /dev/null",
        &format!("zfs send {flags} src/data@full | cat > /dev/null"),
    );
    let raw = timed(
        "raw zfs send | zfs recv",
        &format!("zfs send {flags} src/data@full | zfs recv -u dst/raw"),
    );
    arrived("dst/raw");
    let mut lines = vec![format!("bench: tp_raw = {:.1} MiB/s", mib as f64 / raw)];
    for (i, bin) in bins.iter().enumerate() {
        let id = format!("/data/tp/{i}");
        let sender_fp = vm.sh(&format!("{bin} replication identity {id}-sender.pem"));
        let receiver_fp = vm.sh(&format!("{bin} replication identity {id}-receiver.pem"));
        let port = 7510 + i;
        let listener = config(
            &format!("receiver{i}"),
            &format!(
                "{pools}\n[storage.replication_listener]\nlisten = \"127.0.0.1:{port}\"\n\
                 identity_file = \"{id}-receiver.pem\"\nallowed_clients = [\"{}\"]\n\
                 datasets = [\"dst/s{i}\"]\n",
                sender_fp.trim()
            ),
        );
        vm.sh(&format!(
            "setsid nohup {bin} receive --config {listener} >/tmp/receiver{i}.log 2>&1 \
             </dev/null & echo started"
        ));
        vm.wait_until(
            &format!("ss -Hltn 'sport = :{port}' | grep -q {port}"),
            Duration::from_secs(60),
        );
        let job = config(
            &format!("job{i}"),
            &format!(
                "{pools}\n[replication.tp]\ntarget = \"127.0.0.1:{port}\"\n\
                 target_dataset = \"dst/s{i}\"\ndatasets = [\"src/data\"]\n\
                 target_fingerprint = \"{}\"\nidentity_file = \"{id}-sender.pem\"\n",
                receiver_fp.trim()
            ),
        );
        let ours = timed(
            &format!("stored {i} ({bin})"),
            &format!("{bin} replicate tp --config {job}"),
        );
        arrived(&format!("dst/s{i}/data"));
        lines.push(format!(
            "bench: tp_stored{i}_vs_raw = {:.3} ratio",
            raw / ours
        ));
        vm.sh("cat /tmp/timed.log");
    }
    for l in lines {
        println!("{l}");
    }
}
