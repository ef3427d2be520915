#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! A static WAN: netd's links and firewall from one config, in network namespaces made
//! here, with LAN traffic reaching an "internet" address that only the default route of
//! `gateway` leads to, masqueraded:
//!
//! ```text
//!   lan ns (192.168.1.2)       router ns                         isp ns
//!   eth0 ──veth── nic1 -> "lan" 192.168.1.1                      203.0.113.254 (gateway)
//!                 nic0 -> "wan" 203.0.113.1/24 ──veth── eth0    198.51.100.7 on lo
//! ```
//!
//! The ISP has no route back to 192.168.1.0/24: an answer comes back only when the
//! router masqueraded. Needs root, iproute2 and nftables; fails loudly without them.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use netd::firewall::{Firewall, NftCli, render};
use netd::links::{Links, Rtnetlink};

use common::Netns;

const TIMEOUT: Duration = Duration::from_secs(5);
const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

const CONFIG: &str = r#"
version = 1

[interfaces.wan]
device = "nic0"
ipv4 = "static"
addresses = ["203.0.113.1/24"]
gateway = "203.0.113.254"

[interfaces.lan]
device = "nic1"
addresses = ["192.168.1.1/24"]

[firewall.zones.wan]
interfaces = ["wan"]
input = "drop"
forward = "drop"
masquerade = true

[firewall.zones.lan]
interfaces = ["lan"]
input = "accept"
forward = "accept"

[[firewall.policies]]
from = "lan"
to = "wan"
action = "accept"
"#;

/// Answers each connection with the address it came from.
fn serve_peer_address(ns: &Netns, port: u16) {
    let (ready_tx, ready_rx) = mpsc::channel();
    // Detached: it dies with the test process; its namespace is deleted on drop.
    let _ = ns.spawn(move || {
        let listener = TcpListener::bind((INTERNET, port)).unwrap();
        ready_tx.send(()).unwrap();
        for mut conn in listener.incoming().flatten() {
            if let Ok(peer) = conn.peer_addr() {
                let _ = conn.write_all(peer.ip().to_string().as_bytes());
            }
            let _ = conn.shutdown(Shutdown::Write);
        }
    });
    ready_rx
        .recv_timeout(TIMEOUT)
        .expect("server did not start");
}

#[test]
fn lan_reaches_the_internet_through_a_static_wan_with_masquerade() {
    common::require_root();
    common::require_working(&["ip", "netns", "list"], "iproute2");
    common::require_working(&["nft", "--version"], "nftables");
    let router = Netns::new("router");
    let isp = Netns::new("isp");
    let lan = Netns::new("lan");
    for (nic, peer) in [("nic0", &isp), ("nic1", &lan)] {
        router.ip(&format!(
            "link add {nic} type veth peer name eth0 netns {}",
            peer.name
        ));
    }
    isp.ip("addr add 203.0.113.254/24 dev eth0");
    isp.ip(&format!("addr add {INTERNET}/32 dev lo"));
    isp.ip("link set eth0 up");
    lan.ip("addr add 192.168.1.2/24 dev eth0");
    lan.ip("link set eth0 up");
    lan.ip("route add default via 192.168.1.1");

    let cfg = appliance::load_str(CONFIG).unwrap();
    let mut links = Links::new(Rtnetlink::in_netns(router.path()).unwrap());
    let plan = links.apply(&cfg).unwrap();
    let text = plan.to_string();
    assert!(
        text.contains("ip route add 0.0.0.0/0 via 203.0.113.254 dev wan metric 0 proto 4"),
        "{text}"
    );
    // A router with two IPv4 links forwards: netd switched it on.
    assert!(text.contains("net.ipv4.ip_forward=1"), "{text}");
    assert_eq!(router.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    let mut fw = Firewall::new(NftCli::in_netns(&router.name));
    assert!(fw.apply(&render(&cfg)).unwrap());

    let routes = router.json("-4 route show default");
    assert_eq!(routes[0]["gateway"], "203.0.113.254", "{routes}");
    assert_eq!(routes[0]["dev"], "wan", "{routes}");
    assert_eq!(routes[0]["protocol"], "static", "{routes}");

    serve_peer_address(&isp, 9000);
    // The router itself reaches the internet through the default route...
    assert_eq!(
        router.seen_as(INTERNET, 9000, TIMEOUT).unwrap(),
        "203.0.113.1"
    );
    // ...and so does the LAN, seen as the WAN address.
    assert_eq!(lan.seen_as(INTERNET, 9000, TIMEOUT).unwrap(), "203.0.113.1");

    // A second apply writes nothing.
    assert!(links.plan(&cfg).unwrap().is_empty());
    assert!(!fw.apply(&render(&cfg)).unwrap());
}
