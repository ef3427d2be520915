//! Failure injection with real daemons: `netd serve` in a network namespace of its own
//! (a veth `lan0` made there), a real `dnsd` child process, applianced and applctl. The
//! failing transaction adds an address to lan0 (netd applies it) and a DNS listen address
//! whose port another process holds: validation cannot know, dnsd's apply fails when it
//! binds. applianced must send netd back to the previous generation, the report must name
//! the step and dnsd's reason, and both daemons must report the previous generation, with
//! the address gone from the kernel and dnsd still answering on its old address.
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
listen = ["127.0.0.1:DNS_PORT"]
upstreams = ["127.0.0.1:9"]
deny = ["blocked.example"]
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

/// The one address dnsd's plain DNS listens on, from its status.
fn dns_address(socket: &Path) -> std::net::SocketAddr {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let v: Value = rt
        .block_on(ControlClient::new(socket).get_json("/status"))
        .unwrap();
    let listen = v["listen"].as_array().unwrap();
    assert_eq!(listen.len(), 1, "{v}");
    listen[0].as_str().unwrap().parse().unwrap()
}

/// Whether a query for a denied name gets an answer over UDP (dnsd answers it itself).
fn answers(addr: std::net::SocketAddr) -> bool {
    // ID 0x1234, RD, one question: blocked.example. A IN.
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["blocked", "example"] {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    sock.send_to(&q, addr).unwrap();
    let mut buf = [0u8; 512];
    matches!(sock.recv(&mut buf), Ok(n) if n >= 12 && buf[..2] == [0x12, 0x34])
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
    // A port free for UDP and TCP now; dnsd binds it at start.
    let dns_port = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    let base = BASE.replace("DNS_PORT", &dns_port.to_string());
    let first = store.commit(&base, "test: base").unwrap();
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
    let n_text = base
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

    let dns_addr = dns_address(&p("run/dnsd.sock"));
    assert!(
        answers(dns_addr),
        "dnsd answers on {dns_addr} before the failure"
    );

    // N+1: netd applies the new address, then dnsd cannot listen on a port held here.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let bad = n_text
        .replace(
            "addresses = [\"192.168.1.1/24\"]",
            "addresses = [\"192.168.1.1/24\", \"10.9.9.1/24\"]",
        )
        .replace(
            &format!("listen = [\"127.0.0.1:{dns_port}\"]"),
            &format!("listen = [\"127.0.0.1:{dns_port}\", \"{taken_addr}\"]"),
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
        report.contains(&format!("cannot listen for DNS on {taken_addr}"))
            && report.contains("Address already in use"),
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
    assert_eq!(dns_address(&p("run/dnsd.sock")), dns_addr);
    assert!(answers(dns_addr), "dnsd still answers on {dns_addr}");
    drop(taken);
    assert!(addrs.contains("inet 192.168.1.1/24"), "{addrs}");
    assert!(
        !addrs.contains("10.9.9.1"),
        "netd kept the failed generation's address: {addrs}"
    );
}
