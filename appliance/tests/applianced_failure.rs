//! Failure injection with real daemons: `netd serve` in a network namespace of its own
//! (a veth `lan0` made there), a real `dnsd` child process, applianced and applctl. The
//! failing transaction adds an address to lan0 (netd applies it) and a deny pattern dnsd
//! refuses when it compiles its policy (`/a{2,1}/`: the config's light regex check passes
//! it, the regex engine does not). applianced must send netd back to the previous
//! generation, the report must name the step and dnsd's reason, and both daemons must
//! report the previous generation, with the address gone from the kernel.
//!
//! Needs root (network namespaces, nftables); it fails, never skips, without it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use appliance::control::ControlClient;
use serde_json::Value;

use common::{Children, read_logs, sibling_bins, wait_for};

const BASE: &str = r#"version = 1

[interfaces.lan]
device = "lan0"
addresses = ["192.168.1.1/24"]

[firewall.zones.lan]
interfaces = ["lan"]
input = "accept"
forward = "drop"

[dns]
upstreams = ["127.0.0.1:9"]
cache_size = 1000
"#;

fn generation_of(socket: &Path) -> Option<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v: Value = rt
        .block_on(ControlClient::new(socket).get_json("/v1/status"))
        .unwrap();
    v["generation"].as_u64()
}

#[test]
fn a_daemon_failing_its_apply_sends_every_daemon_back() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it makes a network namespace and nftables rules for netd"
    );
    let (netd, dnsd) = sibling_bins();
    let (dir, store) = common::daemon_dir();
    let p = |name: &str| dir.path().join(name);
    let log = |name: &str| std::fs::File::create(p(name)).unwrap();
    let first = store.commit(BASE, "test: base").unwrap();
    store.activate(first).unwrap();

    let mut children = Children(Vec::new());
    // A namespace of its own, with the link the config names; netd applies the active
    // generation at start.
    children.0.push(
        Command::new("unshare")
            .args([
                "--net",
                "sh",
                "-c",
                "ip link add lan0 type veth peer name lan1 && exec \"$0\" \"$@\"",
            ])
            .arg(&netd)
            .args(common::netd_serve_args(dir.path()))
            .stdin(Stdio::null())
            .stderr(log("netd.log"))
            .spawn()
            .unwrap(),
    );
    let netd_pid = children.0[0].id();
    children.0.push(
        Command::new(&dnsd)
            .arg("--config-dir")
            .arg(p("config"))
            .arg("--lists-dir")
            .arg(p("lists"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--control")
            .arg(p("run/dnsd.sock"))
            .arg("--query-log")
            .arg(p("querylog"))
            .arg("--tls-dir")
            .arg(p("dns-tls"))
            .arg("--leases")
            .arg(p("leases.json"))
            .arg("--wan-dns")
            .arg(p("wan-dns.json"))
            .stdin(Stdio::null())
            .stderr(log("dnsd.log"))
            .spawn()
            .unwrap(),
    );
    wait_for(&mut children, &p("run/netd.sock"), dir.path());
    wait_for(&mut children, &p("run/dnsd.sock"), dir.path());
    children.start_applianced(dir.path(), "127.0.0.1:0");

    let applctl = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_applctl"))
            .args(args)
            .arg("--socket")
            .arg(p("run/applianced.sock"))
            .env_remove("APPLCTL_REMOTE")
            .output()
            .unwrap()
    };
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // Generation N: a firewall and a DNS change, applied on both daemons and confirmed.
    let n_text = BASE
        .replace("input = \"accept\"", "input = \"reject\"")
        .replace("cache_size = 1000", "cache_size = 2000");
    std::fs::write(p("n.toml"), &n_text).unwrap();
    let out = applctl(&["apply", p("n.toml").to_str().unwrap(), "--confirm", "5m"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        read_logs(dir.path())
    );
    let out = applctl(&["confirm"]);
    assert!(out.status.success(), "{}", text(&out));
    let n = store.active().unwrap().unwrap();
    assert_eq!(n, first + 1);
    assert_eq!(generation_of(&p("run/netd.sock")), Some(n));
    assert_eq!(generation_of(&p("run/dnsd.sock")), Some(n));

    // N+1: netd applies the new address, then dnsd refuses the pattern.
    let bad = n_text
        .replace(
            "addresses = [\"192.168.1.1/24\"]",
            "addresses = [\"192.168.1.1/24\", \"10.9.9.1/24\"]",
        )
        .replace(
            "cache_size = 2000",
            "cache_size = 2000\ndeny = [\"/a{2,1}/\"]",
        );
    std::fs::write(p("bad.toml"), &bad).unwrap();
    let out = applctl(&["apply", p("bad.toml").to_str().unwrap(), "--confirm", "5m"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("apply of generation {} on dnsd", n + 1)),
        "the report names the step: {report}"
    );
    assert!(
        report.contains("repetition"),
        "the report carries dnsd's reason: {report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.contains("revert") && l.contains("netd") && l.contains("ok")),
        "netd's revert is reported: {report}"
    );

    // Every daemon is back on N, nothing waits for a confirm, the address is gone.
    assert_eq!(store.active().unwrap(), Some(n));
    assert_eq!(generation_of(&p("run/netd.sock")), Some(n));
    assert_eq!(generation_of(&p("run/dnsd.sock")), Some(n));
    let out = applctl(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("Pending"), "{}", text(&out));
    let addrs = Command::new("nsenter")
        .args([
            "-t",
            &netd_pid.to_string(),
            "-n",
            "ip",
            "-o",
            "addr",
            "show",
        ])
        .output()
        .unwrap();
    assert!(
        addrs.status.success(),
        "nsenter into netd's namespace: {addrs:?}"
    );
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains("inet 192.168.1.1/24"), "{addrs}");
    assert!(
        !addrs.contains("10.9.9.1"),
        "netd kept the failed generation's address: {addrs}"
    );
}
