#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! A port forward under `netd serve` with a DHCP WAN: the forward matches the WAN
//! address (`@wan_addr4`), which only the lease knows, so it must follow the lease.
//!
//! ```text
//!   internet ns                router ns (netd serve)           lan ns
//!   203.0.113.1 dnsmasq ──veth── wan (DHCP)   lan 192.168.1.1 ──veth── 192.168.1.2 client
//!   client                                                              192.168.1.10 server :80
//! ```
//!
//! WAN :8080 forwards to 192.168.1.10:80. From the internet the server sees the real
//! client; from the LAN (hairpin) it sees the router. Then dnsmasq forgets the lease and
//! serves another range: the client's renewal (T1 4 s) gets a NAK, the new address is
//! bound, and the forward works on it. Root, iproute2, nftables and dnsmasq are required;
//! the test fails, never skips, without them.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Killed, Netns};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const LAN_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const LAN_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const LAN_SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

const CONFIG: &str = r#"version = 1

[interfaces.wan]
device = "wan0"
ipv4 = "dhcp"

[interfaces.lan]
device = "lan0"
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

[firewall.forwards.web]
protocol = "tcp"
port = 8080
to = "192.168.1.10"
to_port = 80
"#;

/// dnsmasq in `ns` serving `start..end` with a fresh lease database; T1 and T2 of a
/// few seconds so that the renewal after the range moved comes quickly.
fn dnsmasq(ns: &Netns, dir: &Path, start: &str, end: &str) -> Killed {
    let leases = dir.join("dnsmasq.leases");
    let _ = std::fs::remove_file(&leases);
    Killed(
        common::dnsmasq(ns, &leases)
            .args([
                &format!("--dhcp-range={start},{end},255.255.255.0,2m"),
                &format!("--dhcp-option=option:router,{SERVER}"),
                "--dhcp-option=option:T1,4",
                "--dhcp-option=option:T2,6",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A TCP server in `ns` on `port` that writes each client the peer address it sees.
fn peer_echo(ns: &Netns, port: u16, stop: Arc<AtomicBool>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = ns.spawn(move || {
        let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut conn, peer)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.write_all(peer.ip().to_string().as_bytes());
                    let _ = conn.shutdown(Shutdown::Write);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

fn wait_until<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    common::wait_until(what, TIMEOUT, f)
}

/// The router's WAN address, once it is the only one and lies in `lo..=hi`.
fn wan_address(router: &Netns, lo: Ipv4Addr, hi: Ipv4Addr) -> Ipv4Addr {
    wait_until(&format!("one address in {lo}..{hi} on wan"), || {
        // netd renames wan0 to wan a moment after it starts.
        let v: Value =
            serde_json::from_str(&router.sh("ip -j -4 addr show dev wan 2>/dev/null || echo '[]'"))
                .unwrap();
        let addrs: Vec<Ipv4Addr> = v[0]["addr_info"]
            .as_array()?
            .iter()
            .filter_map(|i| i["local"].as_str()?.parse().ok())
            .collect();
        match addrs[..] {
            [a] if (lo..=hi).contains(&a) => Some(a),
            _ => None,
        }
    })
}

/// What the LAN server saw as the peer of a connection from `ns` to `to:8080`, once the
/// forward works (the set follows the address a moment after the kernel has it).
fn forwarded(ns: &Netns, to: Ipv4Addr) -> String {
    wait_until(&format!("{to}:8080 forwarded from {}", ns.name), || {
        ns.seen_as(to, 8080, Duration::from_secs(2)).ok()
    })
}

#[test]
fn a_port_forward_follows_the_dhcp_wan_address_under_serve() {
    common::require_root();
    common::require_working(&["ip", "netns", "list"], "iproute2");
    common::require_working(&["nft", "--version"], "nftables");
    common::require_working(&["dnsmasq", "--version"], "dnsmasq");
    let (internet, router) = common::internet_and_router("wan0");
    let lan = Netns::new("lan");
    router.ip(&format!(
        "link add lan0 type veth peer name eth0 netns {}",
        lan.name
    ));
    // The client's address first: it is the source of the LAN's connections.
    lan.ip(&format!("addr add {LAN_CLIENT}/24 dev eth0"));
    lan.ip(&format!("addr add {LAN_SERVER}/24 dev eth0"));
    lan.ip("link set eth0 up");
    lan.ip(&format!("route add default via {LAN_GW}"));
    router.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");

    let dir = tempfile::tempdir().unwrap();
    let mut server = dnsmasq(&internet, dir.path(), "203.0.113.100", "203.0.113.150");
    let store = appliance::store::Store::open(dir.path().join("config")).unwrap();
    let n = store.commit(CONFIG, "dhcp wan with a forward").unwrap();
    store.activate(n).unwrap();
    let socket = dir.path().join("netd.sock");
    let _netd = Killed(
        common::netd_serve(&router, dir.path(), &socket)
            .env("RUST_LOG", "netd=info")
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // The set the forward matches, as nft lists it.
    let wan_addr4 = || router.sh("nft list set inet appliance wan_addr4");
    let stop = Arc::new(AtomicBool::new(false));
    peer_echo(&lan, 80, Arc::clone(&stop));

    let first = wan_address(
        &router,
        "203.0.113.100".parse().unwrap(),
        "203.0.113.150".parse().unwrap(),
    );
    // From the internet the server sees the real client; by hairpin it sees the router.
    assert_eq!(forwarded(&internet, first), SERVER.to_string());
    assert_eq!(forwarded(&lan, first), LAN_GW.to_string());
    let set = wan_addr4();
    assert!(set.contains(&first.to_string()), "{set}");

    // The server forgets the lease and serves another range: NAK at the next renewal,
    // a new address, and the set follows it (the rules stay as they were).
    drop(server);
    server = dnsmasq(&internet, dir.path(), "203.0.113.200", "203.0.113.220");
    let second = wan_address(
        &router,
        "203.0.113.200".parse().unwrap(),
        "203.0.113.220".parse().unwrap(),
    );
    assert_eq!(forwarded(&internet, second), SERVER.to_string());
    assert_eq!(forwarded(&lan, second), LAN_GW.to_string());
    let set = wan_addr4();
    assert!(set.contains(&second.to_string()), "{set}");
    assert!(!set.contains(&first.to_string()), "{set}");
    let status = common::status(&socket);
    assert_eq!(status["generation"], n, "{status:#}");
    assert!(status["zone_addresses_error"].is_null(), "{status:#}");
    assert!(status["last_error"].is_null(), "{status:#}");
    // The server's answers left through the router: a direct path would not exist.
    let to = SocketAddr::from((first, 8080));
    assert!(
        internet
            .spawn(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))
            .join()
            .unwrap()
            .is_err(),
        "the old address still forwards"
    );
    stop.store(true, Ordering::SeqCst);
    drop(server);
}
