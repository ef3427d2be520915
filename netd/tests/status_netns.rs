#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `netd serve`'s status document and Prometheus metrics through its control socket,
//! with the real kernel, nft and a lease file, in network namespaces made here:
//!
//! ```text
//!   client ns 192.168.1.2 ──veth── lan0 -> "lan" 192.168.1.1 (router ns, TCP :7000)
//! ```
//!
//! The client's connections to :7000 must show in the counter of the rule that admits
//! them, and the link's address, state and byte counters, and the lease, in both forms.
//! Needs root, iproute2 and nftables; fails loudly without them.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use common::{Killed, Netns, get};

const CONFIG: &str = r#"version = 1

[interfaces.lan]
device = "lan0"
addresses = ["192.168.1.1/24"]

[firewall.zones.lan]
interfaces = ["lan"]
input = "drop"
forward = "drop"

[[firewall.rules]]
name = "lan-service"
from = "lan"
protocol = "tcp"
ports = [7000]
action = "accept"
"#;

const LEASES: &str = r#"{"version": 1, "leases": [
  {"mac": "52:54:00:00:00:0a", "ip": "192.168.1.100", "hostname": "alpha", "expires": 4000000000}]}"#;

#[test]
fn status_and_metrics_show_links_leases_and_rule_counters() {
    common::require_root();
    common::require_working(&["ip", "netns", "list"], "iproute2");
    common::require_working(&["nft", "--version"], "nftables");
    let router = Netns::new("router");
    let client = Netns::new("client");
    router.ip(&format!(
        "link add lan0 type veth peer name eth0 netns {}",
        client.name
    ));
    client.ip("addr add 192.168.1.2/24 dev eth0");
    client.ip("link set eth0 up");

    let dir = tempfile::tempdir().unwrap();
    let store = appliance::store::Store::open(dir.path().join("config")).unwrap();
    let n = store.commit(CONFIG, "status test").unwrap();
    store.activate(n).unwrap();
    std::fs::create_dir_all(dir.path().join("dhcp")).unwrap();
    std::fs::write(dir.path().join("dhcp/leases.json"), LEASES).unwrap();
    let socket = dir.path().join("netd.sock");
    let _netd = Killed(
        common::netd_serve(&router, dir.path(), &socket)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_for_socket(&socket);

    // Three connections through the rule.
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = router.spawn(move || {
        let l = TcpListener::bind(("192.168.1.1", 7000)).unwrap();
        tx.send(()).unwrap();
        for c in l.incoming() {
            drop(c);
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    for _ in 0..3 {
        client
            .spawn(|| {
                let to = SocketAddr::from(([192, 168, 1, 1], 7000));
                TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
            })
            .join()
            .unwrap();
    }

    // Without ?counters=1 the status does not list the firewall.
    let plain: Value = serde_json::from_str(&get(&socket, "/v1/status")).unwrap();
    assert!(plain["net"]["firewall_rules"].is_null(), "{plain:#}");
    assert_eq!(plain["net"]["wan"], serde_json::json!([]), "no DHCP link");
    assert_eq!(
        plain["net"]["ipv6"]["advertised"],
        serde_json::json!([]),
        "no IPv6 prefix"
    );
    let status: Value = serde_json::from_str(&get(&socket, "/v1/status?counters=1")).unwrap();
    assert_eq!(status["generation"], n, "{status:#}");
    let net = &status["net"];
    let lan = net["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "lan")
        .unwrap_or_else(|| panic!("no lan in {net:#}"));
    assert_eq!(lan["up"], true, "{lan}");
    assert!(
        lan["addresses"]
            .as_array()
            .unwrap()
            .contains(&Value::from("192.168.1.1/24")),
        "{lan}"
    );
    assert!(lan["rx_bytes"].as_u64().unwrap() > 0, "{lan}");
    let rule = net["firewall_rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "lan-service")
        .unwrap_or_else(|| panic!("no rule counter in {net:#}"));
    // Each connection's SYN passes the rule (the rest is the established fast path).
    assert!(rule["packets"].as_u64().unwrap() >= 3, "{rule}");
    assert_eq!(net["dhcp"]["leases"][0]["hostname"], "alpha", "{net:#}");
    assert_eq!(net["dhcp"]["leases"][0]["active"], true, "{net:#}");

    let metrics = get(&socket, "/metrics");
    for want in [
        "netd_link_up{link=\"lan\"} 1",
        "netd_dhcp_leases{state=\"active\"} 1",
        "netd_applied_generation 1",
    ] {
        assert!(metrics.lines().any(|l| l == want), "{want} in\n{metrics}");
    }
    let packets: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("netd_firewall_rule_packets_total{rule=\"lan-service\"} "))
        .unwrap_or_else(|| panic!("no rule counter in\n{metrics}"))
        .parse()
        .unwrap();
    assert!(packets >= 3, "{metrics}");
}

const WAN_CONFIG: &str = r#"version = 1

[interfaces.wan]
device = "wan0"
ipv4 = "dhcp"

[firewall.zones.wan]
interfaces = ["wan"]
input = "drop"
forward = "drop"
masquerade = true
"#;

/// The WAN lease in the status and metrics of `netd serve`: its DHCP client leases from
/// dnsmasq in an "internet" namespace, and the status shows what the client holds.
#[test]
fn status_shows_the_wan_lease_from_a_real_dhcp_server() {
    common::require_root();
    common::require_working(&["ip", "netns", "list"], "iproute2");
    common::require_working(&["nft", "--version"], "nftables");
    common::require_working(&["dnsmasq", "--version"], "dnsmasq");
    let (internet, router) = common::internet_and_router("wan0");
    let dir = tempfile::tempdir().unwrap();
    let _dnsmasq = Killed(
        common::dnsmasq(&internet, &dir.path().join("dnsmasq.leases"))
            .args([
                "--dhcp-range=203.0.113.100,203.0.113.150,255.255.255.0,1h",
                "--dhcp-option=option:router,203.0.113.1",
                "--dhcp-option=option:dns-server,192.0.2.53",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let store = appliance::store::Store::open(dir.path().join("config")).unwrap();
    let n = store.commit(WAN_CONFIG, "dhcp wan").unwrap();
    store.activate(n).unwrap();
    let socket = dir.path().join("netd.sock");
    let _netd = Killed(
        common::netd_serve(&router, dir.path(), &socket)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lease = common::wait_until(
        "a WAN lease in netd serve's status",
        Duration::from_secs(30),
        || {
            if !socket.exists() {
                return None;
            }
            let status = common::status(&socket);
            let wan = &status["net"]["wan"];
            assert_eq!(wan[0]["link"], "wan", "{status:#}");
            (!wan[0]["lease"].is_null()).then(|| wan[0]["lease"].clone())
        },
    );
    let address = lease["address"].as_str().unwrap();
    assert!(address.starts_with("203.0.113.1"), "{lease}");
    assert!(address.ends_with("/24"), "{lease}");
    assert_eq!(lease["router"], "203.0.113.1", "{lease}");
    assert_eq!(lease["dns"], serde_json::json!(["192.0.2.53"]), "{lease}");
    assert_eq!(lease["server"], "203.0.113.1", "{lease}");
    let (acquired, expires) = (
        lease["acquired"].as_u64().unwrap(),
        lease["expires"].as_u64().unwrap(),
    );
    assert_eq!(expires - acquired, 3600, "{lease}");
    // The lease the status shows is the one on the link.
    let on_link = router.sh("ip -4 -o addr show dev wan");
    assert!(on_link.contains(address), "{on_link} vs {lease}");
    let metrics = get(&socket, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("netd_wan_lease_expiry_seconds{{link=\"wan\"}} {expires}")),
        "{metrics}"
    );
}
