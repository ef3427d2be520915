//! The WireGuard half of the net bench (`cargo xtask bench net`): 1000 peers applied to
//! a fresh tunnel by `netd wg apply`, in the image's kernel (the host has no WireGuard
//! module), BENCH_WG_REPS times in one boot. NETD_BIN names the netd to copy in (xtask
//! passes a release build of the tree); without it the image's netd runs.
//!
//! Ignored by `cargo test`: benches are not tests and do not run in CI. The figure is
//! netd's own (`wg: applied N actions in X ms`: planning and the kernel's work, not
//! config parsing or ssh). The guest runs under TCG: far slower than real hardware.
//! With BENCH_LINES_OUT set, the figure's line is also written there.

use std::fs;

use appliance::types::Key32;

use crate::harness::Vm;
use crate::{BOOT_TIMEOUT, POWER_OFF_TIMEOUT};

const PEERS: u32 = 1000;

fn config(peers: u32) -> String {
    let mut s = String::from(
        "version = 1\n\n[wireguard.wg0]\nlisten_port = 51820\naddresses = [\"10.8.0.1/24\"]\n",
    );
    for i in 0..peers {
        let mut key = [0x5a_u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        s.push_str(&format!(
            "\n[wireguard.wg0.peers.bulk{i}]\npublic_key = \"{}\"\nallowed_ips = [\"10.9.{}.{}/32\"]\n",
            Key32::from_bytes(key),
            i / 250,
            i % 250 + 1
        ));
    }
    s
}

/// `netd wg apply`: (planned actions, milliseconds netd reports for the apply).
fn apply(vm: &Vm, netd: &str, config: &str) -> (usize, f64) {
    let out = vm.ssh(&format!("{netd} wg apply --config {config}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "netd wg apply --config {config}:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planned = text
        .lines()
        .find_map(|l| l.strip_prefix("wg: planned "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no plan summary in:\n{text}"));
    // "wg: applied 1000 actions in 269.1 ms"
    let ms = text
        .lines()
        .find_map(|l| l.strip_prefix("wg: applied "))
        .and_then(|l| l.split(" in ").nth(1))
        .and_then(|l| l.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    (planned, ms)
}

#[test]
#[ignore = "a bench: run by `cargo xtask bench net`"]
fn bench_wg_peers() {
    let reps: usize = std::env::var("BENCH_WG_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3);
    let mut vm = Vm::boot("bench_net");
    vm.wait_for_line("APPLIANCE-BOOT-OK", BOOT_TIMEOUT);
    let netd = match std::env::var_os("NETD_BIN") {
        Some(host) => {
            vm.copy_in(std::path::Path::new(&host), "/tmp/netd");
            "/tmp/netd".to_owned()
        }
        None => "netd".to_owned(),
    };
    vm.sh("modprobe wireguard");
    let host = vm.dir.join("wg-bench.toml");
    fs::write(&host, config(PEERS)).unwrap();
    vm.copy_in(&host, "/tmp/wg-bench.toml");
    let host = vm.dir.join("wg-empty.toml");
    fs::write(&host, config(0)).unwrap();
    vm.copy_in(&host, "/tmp/wg-empty.toml");

    let mut times = Vec::new();
    for rep in 0..reps {
        // a fresh tunnel each time (its key stays under /data/wireguard)
        vm.sh("ip link del wg0 2>/dev/null; true");
        apply(&vm, &netd, "/tmp/wg-empty.toml");
        let (planned, ms) = apply(&vm, &netd, "/tmp/wg-bench.toml");
        assert_eq!(planned, PEERS as usize, "one action per peer");
        assert_eq!(vm.sh("wg show wg0 peers | wc -l").trim(), PEERS.to_string());
        println!("    rep {rep}: {PEERS} peers applied in {ms:.1} ms");
        times.push(ms);
    }
    vm.sh("ip link del wg0");
    vm.power_off(POWER_OFF_TIMEOUT);
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let line = format!("bench: wg_1000_peers = {median:.1} ms");
    println!("{line}");
    // `cargo xtask bench net` prints it again with the other figures at the end.
    if let Some(out) = std::env::var_os("BENCH_LINES_OUT") {
        fs::write(out, format!("{line}\n")).unwrap();
    }
}
