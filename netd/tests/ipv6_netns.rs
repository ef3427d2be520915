#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! IPv6 through the router, in network namespaces made here:
//!
//! ```text
//!   isp ns (radvd)                     router ns                        client ns
//!   2001:db8:1::1/64 ──veth── nic0 -> "wan", SLAAC from the ISP
//!                             nic1 -> "lan" 2001:db8:2::1/64 ──veth── eth0, SLAAC from
//!                                    `netd ra`                          netd's advertisements
//! ```
//!
//! netd's links set the WAN's switches (accept_ra 2 with forwarding on, autoconf), and the
//! kernel makes its address and default route from the ISP's radvd; `netd ra` advertises
//! the LAN prefix, and the client (a host with the kernel's defaults) gets an address in
//! it and a default route via the router's link-local address, reaches the router and,
//! forwarded, the ISP. When `netd ra` stops, its last advertisement withdraws the route.
//!
//! Needs root, iproute2 and radvd (`cargo xtask test` installs it); fails loudly without.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use netd::links::{Links, Rtnetlink};
use serde_json::Value;

use common::Netns;

const CONFIG: &str = r#"
version = 1

[interfaces.wan]
device = "nic0"
ipv6 = "slaac"

[interfaces.lan]
device = "nic1"
addresses = ["192.168.1.1/24", "2001:db8:2::1/64"]
"#;

/// The router's LAN link-local address, from nic1's MAC (EUI-64).
const ROUTER_LAN_LL: &str = "fe80::5054:ff:feaa:2";

/// A process killed (SIGTERM, then waited for) on drop.
struct Proc(Child);

impl Proc {
    fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Polls `f` for up to 30 s; RAs and SLAAC take a few seconds.
fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    common::wait_until(what, Duration::from_secs(30), f)
}

fn global_address(ns: &Netns, dev: &str, prefix: &str) -> Option<String> {
    let v: Value = ns.json(&format!("-6 addr show dev {dev} scope global"));
    v.as_array()?
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["tentative"].as_bool() != Some(true))
        .filter_map(|a| a["local"].as_str().map(str::to_string))
        .find(|a| a.starts_with(prefix))
}

fn default_route(ns: &Netns) -> Option<Value> {
    let v: Value = ns.json("-6 route show default");
    v.as_array()?.first().cloned()
}

/// A TCP server on `[ip]:9000` in `ns` that answers with the peer's address; it lives as
/// long as the test process, its namespace goes on drop.
fn listen(ns: &Netns, ip: &str) {
    let ip: Ipv6Addr = ip.parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = ns.spawn(move || {
        let l = TcpListener::bind((ip, 9000)).unwrap();
        tx.send(()).unwrap();
        for mut c in l.incoming().flatten() {
            if let Ok(peer) = c.peer_addr() {
                let _ = c.write_all(peer.ip().to_string().as_bytes());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// Connects from `ns` to `[ip]:9000`: the address the server saw.
fn connect(ns: &Netns, ip: &str) -> String {
    let ip: Ipv6Addr = ip.parse().unwrap();
    ns.spawn(move || {
        let to = SocketAddr::from((ip, 9000));
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("cannot reach {to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut seen = String::new();
        s.read_to_string(&mut seen).unwrap();
        seen
    })
    .join()
    .unwrap()
}

fn netns(role: &str) -> Netns {
    let ns = Netns::new(role);
    // No duplicate address detection: addresses are usable at once.
    ns.sh("echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad");
    ns
}

/// The router, the ISP and the client of the module's picture; the router's ends of the
/// veths get the MACs that [`ROUTER_LAN_LL`] and the ISP's route are made from.
fn lab() -> (Netns, Netns, Netns) {
    let router = netns("router");
    let isp = netns("isp");
    let client = netns("client");
    for (nic, peer, mac) in [
        ("nic0", &isp, "52:54:00:aa:00:01"),
        ("nic1", &client, "52:54:00:aa:00:02"),
    ] {
        router.ip(&format!(
            "link add {nic} type veth peer name eth0 netns {}",
            peer.name
        ));
        router.ip(&format!("link set {nic} address {mac}"));
    }
    (router, isp, client)
}

/// radvd in `isp`, advertising 2001:db8:1::/64 every few seconds; its files under `dir`.
fn radvd(isp: &Netns, dir: &Path) -> Proc {
    let radvd_conf = dir.join("radvd.conf");
    std::fs::write(
        &radvd_conf,
        "interface eth0 {\n AdvSendAdvert on;\n MinRtrAdvInterval 3;\n MaxRtrAdvInterval 4;\n prefix 2001:db8:1::/64 { AdvOnLink on; AdvAutonomous on; };\n};\n",
    )
    .unwrap();
    Proc(
        isp.command("radvd")
            .args(["--nodaemon", "--logmethod", "stderr", "--config"])
            .arg(&radvd_conf)
            .arg("--pidfile")
            .arg(dir.join("radvd.pid"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn slaac_on_the_wan_and_router_advertisements_on_the_lan() {
    common::require_root();
    common::require_working(&["ip", "netns", "list"], "iproute2");
    common::require_working(&["sh", "-c", "command -v radvd"], "radvd");
    let (router, isp, client) = lab();

    // The ISP: a router advertising 2001:db8:1::/64, with the LAN prefix routed to us.
    isp.sh("echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
    isp.ip("addr add 2001:db8:1::1/64 dev eth0");
    isp.ip("link set eth0 up");
    isp.ip("-6 route add 2001:db8:2::/64 via fe80::5054:ff:feaa:1 dev eth0");
    let dir = tempfile::tempdir().unwrap();
    let _radvd = radvd(&isp, dir.path());

    client.ip("link set eth0 up");

    let cfg = appliance::load_str(CONFIG).unwrap();
    let mut links = Links::new(Rtnetlink::in_netns(router.path()).unwrap());
    let plan = links.apply(&cfg).unwrap().to_string();
    assert!(
        plan.contains("net.ipv6.conf.wan.accept_ra=2 net.ipv6.conf.wan.autoconf=1"),
        "{plan}"
    );
    assert!(plan.contains("net.ipv6.conf.all.forwarding=1"), "{plan}");
    for (key, want) in [
        ("wan/accept_ra", "2"),
        ("wan/autoconf", "1"),
        ("lan/accept_ra", "0"),
        ("all/forwarding", "1"),
    ] {
        let got = router.sh(&format!("cat /proc/sys/net/ipv6/conf/{key}"));
        assert_eq!(got.trim(), want, "{key}");
    }

    // SLAAC on the WAN, by the kernel, from the ISP's advertisements.
    let wan = wait_for("the WAN's SLAAC address", || {
        global_address(&router, "wan", "2001:db8:1:")
    });
    let route = wait_for("the WAN's default route", || default_route(&router));
    assert_eq!(route["dev"], "wan", "{route}");
    assert_eq!(route["protocol"], "ra", "{route}");
    assert!(
        route["gateway"].as_str().unwrap().starts_with("fe80::"),
        "{route}"
    );
    // The SLAAC address is the kernel's: a second plan leaves it alone.
    assert!(links.plan(&cfg).unwrap().is_empty());

    // Router advertisements on the LAN.
    let cfg_file = dir.path().join("appliance.toml");
    std::fs::write(&cfg_file, CONFIG).unwrap();
    let mut ra = Proc(
        router
            .command(env!("CARGO_BIN_EXE_netd"))
            .arg("ra")
            .arg("--config")
            .arg(&cfg_file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = wait_for("the client's SLAAC address", || {
        global_address(&client, "eth0", "2001:db8:2:")
    });
    let route = wait_for("the client's default route", || default_route(&client));
    assert_eq!(route["gateway"], ROUTER_LAN_LL, "{route}");
    assert_eq!(route["protocol"], "ra", "{route}");
    listen(&router, "2001:db8:2::1");
    listen(&isp, "2001:db8:1::1");
    assert_eq!(connect(&client, "2001:db8:2::1"), addr);
    // Forwarded by the router to the ISP (no firewall in this test).
    assert_eq!(connect(&client, "2001:db8:1::1"), addr);
    eprintln!("router WAN {wan}, client {addr}");

    // Stopping says goodbye: router lifetime 0 withdraws the client's default route.
    ra.terminate();
    wait_for("the default route to be withdrawn", || {
        default_route(&client).is_none().then_some(())
    });

    // A config without IPv6 on the LAN: disabled means not even link-local.
    let off = appliance::load_str(&CONFIG.replace(
        "addresses = [\"192.168.1.1/24\", \"2001:db8:2::1/64\"]",
        "addresses = [\"192.168.1.1/24\"]\nipv6 = \"none\"",
    ))
    .unwrap();
    let plan = links.apply(&off).unwrap().to_string();
    assert!(
        plan.contains("ip addr del 2001:db8:2::1/64 dev lan"),
        "{plan}"
    );
    let v6: Value = router.json("-6 addr show dev lan");
    assert!(
        v6.as_array()
            .unwrap()
            .iter()
            .all(|l| l["addr_info"].as_array().is_none_or(Vec::is_empty)),
        "{v6}"
    );
    assert!(links.plan(&off).unwrap().is_empty());
}

/// The same router as [`CONFIG`], with zones: the WAN masquerades, the LAN is trusted.
const SERVE_CONFIG: &str = r#"
version = 1

[interfaces.wan]
device = "nic0"
ipv6 = "slaac"

[interfaces.lan]
device = "nic1"
addresses = ["192.168.1.1/24", "2001:db8:2::1/64"]

[firewall.zones.wan]
interfaces = ["wan"]
input = "drop"
forward = "drop"
masquerade = true

[firewall.zones.lan]
interfaces = ["lan"]
input = "accept"
forward = "accept"
"#;

/// `netd serve` runs the advertiser itself: the client gets its SLAAC address from the
/// daemon, the status shows the WAN's SLAAC state (accept_ra 2, the address and router
/// from the ISP) and the advertised prefix; a new generation with another LAN prefix
/// restarts the advertiser, the client gets an address in the new prefix and its address
/// in the old one is deprecated; SIGTERM
/// sends the last advertisement, and the client's default route goes.
#[test]
fn netd_serve_advertises_follows_new_prefixes_and_says_goodbye() {
    common::require_root();
    common::require_working(&["ip", "netns", "list"], "iproute2");
    common::require_working(&["nft", "--version"], "nftables");
    common::require_working(&["sh", "-c", "command -v radvd"], "radvd");
    let (router, isp, client) = lab();
    isp.ip("addr add 2001:db8:1::1/64 dev eth0");
    isp.ip("link set eth0 up");
    let dir = tempfile::tempdir().unwrap();
    let _radvd = radvd(&isp, dir.path());
    client.ip("link set eth0 up");

    let store = appliance::store::Store::open(dir.path().join("config")).unwrap();
    let first = store.commit(SERVE_CONFIG, "ipv6").unwrap();
    store.activate(first).unwrap();
    let second = store
        .commit(
            &SERVE_CONFIG.replace("2001:db8:2::1/64", "2001:db8:3::1/64"),
            "another LAN prefix",
        )
        .unwrap();
    let socket = dir.path().join("netd.sock");
    let mut netd = Proc(
        common::netd_serve(&router, dir.path(), &socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_for_socket(&socket);

    let addr = wait_for("the client's SLAAC address from netd serve", || {
        global_address(&client, "eth0", "2001:db8:2:")
    });
    let route = wait_for("the client's default route", || default_route(&client));
    assert_eq!(route["gateway"], ROUTER_LAN_LL, "{route}");
    listen(&router, "2001:db8:2::1");
    assert_eq!(connect(&client, "2001:db8:2::1"), addr);

    // SLAAC on the WAN is the kernel's, with the switches serve set.
    let wan = wait_for("the WAN's SLAAC address and router in the status", || {
        let s = common::status(&socket);
        let wan = s["net"]["ipv6"]["slaac"][0].clone();
        (wan["addresses"].as_array().is_some_and(|a| !a.is_empty())
            && wan["default_router"].is_string())
        .then_some(wan)
    });
    assert_eq!(wan["link"], "wan", "{wan}");
    assert_eq!(wan["accept_ra"], 2, "{wan}");
    assert_eq!(wan["autoconf"], true, "{wan}");
    assert!(
        wan["addresses"][0]
            .as_str()
            .unwrap()
            .starts_with("2001:db8:1:"),
        "{wan}"
    );
    let s = common::status(&socket);
    assert_eq!(
        s["net"]["ipv6"]["advertised"],
        serde_json::json!([{"link": "lan", "prefixes": ["2001:db8:2::/64"], "dns": "2001:db8:2::1"}]),
        "{s:#}"
    );
    assert_eq!(s["net"]["ipv6"]["forwarding"], true, "{s:#}");
    assert!(
        s["net"]["firewall_rules"].is_null(),
        "counters only on request"
    );

    // A new generation: the advertiser restarts with the new prefix.
    let (code, body) = common::request(
        &socket,
        "POST",
        "/v1/apply",
        &format!("{{\"generation\": {second}}}"),
    );
    assert_eq!(code, 200, "{body}");
    let moved = wait_for("the client's address in the new prefix", || {
        global_address(&client, "eth0", "2001:db8:3:")
    });
    eprintln!("client {addr}, then {moved}");
    // The old prefix went out with zero lifetimes: the client's address in it is no
    // longer preferred (it stays valid for a while, as RFC 4862 wants).
    wait_for("the old address to be deprecated", || {
        let v: Value = client.json("-6 addr show dev eth0 scope global");
        let old = v.as_array()?.iter().find_map(|l| {
            l["addr_info"]
                .as_array()?
                .iter()
                .find(|a| a["local"].as_str() == Some(addr.as_str()))
                .cloned()
        })?;
        (old["preferred_life_time"] == 0).then_some(())
    });
    let s = common::status(&socket);
    assert_eq!(
        s["net"]["ipv6"]["advertised"][0]["prefixes"],
        serde_json::json!(["2001:db8:3::/64"]),
        "{s:#}"
    );
    wait_for("the default route after the restart", || {
        default_route(&client)
    });

    // SIGTERM: the last advertisement withdraws the client's default route.
    netd.terminate();
    wait_for("the default route to be withdrawn", || {
        default_route(&client).is_none().then_some(())
    });
}
