#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Links, addresses and routes applied through rtnetlink to the host kernel, inside
//! network namespaces made here. Veth pairs stand in for the NICs:
//!
//! ```text
//!   up ns (gateway)          router ns                               a ns (192.168.1.10)
//!   203.0.113.254 ──veth── nic0 (MAC 52:54:00:aa:00:01) -> "wan"
//!                          nic1 -> "lan1" ─┐                ──veth── eth0
//!                          nic2 -> "lan2" ─┴ br-lan 192.168.1.1 ──veth── eth0
//!                                                                  b ns (192.168.1.20)
//! ```
//!
//! Needs root and iproute2 (`ip netns`). Without them these tests fail, saying what is
//! missing. 802.1Q is not here: the host kernel has no 8021q module, so the VLAN path is
//! covered by the planner's unit tests and belongs to the VM tests.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use netd::links::{Links, LinksError, Rtnetlink};
use serde_json::Value;

use common::Netns;

const TIMEOUT: Duration = Duration::from_secs(5);
const A: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);
const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

const CONFIG: &str = r#"
version = 1

[interfaces.wan]
mac = "52:54:00:aa:00:01"
addresses = ["203.0.113.1/24", "2001:db8:0:1::1/64"]
gateway = "203.0.113.254"
mtu = 1480
routes = [{ to = "198.51.100.0/24", via = "203.0.113.254", metric = 10 }]

[interfaces.lan1]
device = "nic1"
mtu = 1400

[interfaces.lan2]
device = "nic2"
mtu = 1400

[bridges.br-lan]
members = ["lan1", "lan2"]
addresses = ["192.168.1.1/24", "fd00:1::1/64"]
mtu = 1400
"#;

fn config() -> appliance::Config {
    appliance::load_str(CONFIG).unwrap()
}

fn preflight() {
    common::require_root();
    common::require_working(&["ip", "netns", "list"], "iproute2");
}

/// A namespace without duplicate address detection: addresses are final at once, so two
/// listings differ only if something changed them.
fn netns(role: &str) -> Netns {
    let ns = Netns::new(role);
    ns.sh("echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad");
    ns
}

struct Lab {
    router: Netns,
    a: Netns,
    b: Netns,
    _up: Netns,
}

impl Lab {
    fn new() -> Self {
        preflight();
        let lab = Self {
            router: netns("router"),
            a: netns("a"),
            b: netns("b"),
            _up: netns("up"),
        };
        let r = &lab.router;
        for (nic, peer) in [("nic0", &lab._up), ("nic1", &lab.a), ("nic2", &lab.b)] {
            r.ip(&format!(
                "link add {nic} type veth peer name eth0 netns {}",
                peer.name
            ));
        }
        r.ip("link set nic0 address 52:54:00:aa:00:01");
        for (ns, addr) in [
            (&lab._up, "203.0.113.254/24"),
            (&lab.a, "192.168.1.10/24"),
            (&lab.b, "192.168.1.20/24"),
        ] {
            ns.ip(&format!("addr add {addr} dev eth0"));
            ns.ip("link set eth0 up");
        }
        lab
    }

    fn links(&self) -> Links<Rtnetlink> {
        Links::new(Rtnetlink::in_netns(self.router.path()).unwrap())
    }

    /// What `ip` shows of the router, without what moves on its own (timers, operstate,
    /// carrier flags): two snapshots differ only if someone changed the configuration.
    fn snapshot(&self) -> Value {
        let r = &self.router;
        let mut v = serde_json::json!({
            "link": r.json("-d link show"),
            "addr": r.json("addr show"),
            "route4": r.json("-4 route show table main"),
            "route6": r.json("-6 route show table main"),
            "bridge_nf": r.sh("cat /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables /proc/sys/net/bridge/bridge-nf-call-arptables 2>/dev/null; true"),
        });
        strip(&mut v);
        v
    }

    /// Waits until the bridge ports forward and every link with carrier has its IPv6
    /// link-local address (the kernel adds it on its own, once carrier is up), so that
    /// later listings are stable.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let links = self.router.json("-d addr show");
            let settled = links.as_array().unwrap().iter().all(|l| {
                let flags = l["flags"].as_array().unwrap();
                let forwarding = l["master"] != "br-lan"
                    || l["linkinfo"]["info_slave_data"]["state"] == "forwarding";
                let carrier = flags.contains(&"LOWER_UP".into()) && l["ifname"] != "lo";
                let link_local = l["addr_info"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["family"] == "inet6" && a["scope"] == "link");
                forwarding && (!carrier || link_local)
            });
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the router never settled: {links}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| {
                !(k.ends_with("_timer")
                    || k == "operstate"
                    // noop until a link is first up, noqueue ever after
                    || k == "qdisc"
                    || k.starts_with("carrier_")
                    || k == "linkmode")
            });
            m.values_mut().for_each(strip);
        }
        Value::Array(a) => {
            a.retain(|x| !matches!(x.as_str(), Some("LOWER_UP" | "NO-CARRIER" | "M-DOWN")));
            a.iter_mut().for_each(strip);
        }
        _ => {}
    }
}

/// The paths where `a` and `b` differ, with both values.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                diff(l, r, &format!("{path}.{k}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                diff(l, r, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} != {b}")),
        _ => {}
    }
}

fn assert_same(before: &Value, after: &Value) {
    let mut out = Vec::new();
    diff(before, after, "", &mut out);
    assert!(out.is_empty(), "the kernel changed:\n{}", out.join("\n"));
}

fn link<'a>(links: &'a Value, name: &str) -> &'a Value {
    links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == name)
        .unwrap_or_else(|| panic!("no link {name} in {links}"))
}

fn addresses(links: &Value, name: &str) -> Vec<String> {
    let mut out: Vec<String> = link(links, name)["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    out.sort();
    out
}

/// A TCP server in `ns` that answers each connection with the peer address it saw.
fn serve(ns: &Netns, addr: Ipv4Addr, port: u16) -> JoinHandle<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let listener = TcpListener::bind((addr, port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut conn, peer) = listener.accept().unwrap();
        let _ = conn.write_all(peer.ip().to_string().as_bytes());
        let _ = conn.shutdown(Shutdown::Write);
    });
    ready_rx
        .recv_timeout(TIMEOUT)
        .expect("server did not start");
    h
}

fn connect(ns: &Netns, to: Ipv4Addr, port: u16) -> String {
    ns.seen_as(to, port, TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot reach {to}:{port}: {e}"))
}

#[test]
fn router_links_come_up_and_carry_traffic_across_the_bridge() {
    let lab = Lab::new();
    let host_nf = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok();
    // Someone else's bridge, with an address and a `proto static` route: not netd's.
    let r = &lab.router;
    r.ip("link add docker0 type bridge");
    r.ip("addr add 172.17.0.1/16 dev docker0");
    r.ip("link set docker0 up");
    r.ip("route add 10.99.0.0/16 dev docker0 proto static");
    let foreign = || {
        let mut v = serde_json::json!([
            r.json("-d addr show dev docker0"),
            r.json("route show dev docker0"),
        ]);
        strip(&mut v);
        v
    };
    let docker_before = foreign();

    let plan = lab.links().apply(&config()).unwrap();
    assert!(!plan.is_empty());
    assert!(!plan.to_string().contains("docker0"), "{plan}");
    assert_same(&docker_before, &foreign());

    let links = lab.router.json("-d addr show");
    // nic0 matched by MAC, renamed to its config key, marked as adopted.
    let wan = link(&links, "wan");
    assert_eq!(wan["address"], "52:54:00:aa:00:01");
    assert_eq!(wan["ifalias"], "appliance nic nic0");
    assert_eq!(wan["mtu"], 1480);
    assert!(wan["flags"].as_array().unwrap().contains(&"UP".into()));
    assert_eq!(
        addresses(&links, "wan"),
        ["2001:db8:0:1::1/64", "203.0.113.1/24"]
    );
    let br = link(&links, "br-lan");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert_eq!(br["ifalias"], "appliance");
    assert_eq!(br["mtu"], 1400);
    assert_eq!(
        addresses(&links, "br-lan"),
        ["192.168.1.1/24", "fd00:1::1/64"]
    );
    for (port, was) in [("lan1", "nic1"), ("lan2", "nic2")] {
        let l = link(&links, port);
        assert_eq!(l["master"], "br-lan", "{l}");
        assert_eq!(l["mtu"], 1400);
        assert_eq!(l["ifalias"], format!("appliance nic {was}"));
    }

    let routes = lab.router.json("-4 route show table main");
    let find = |dst: &str| {
        routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == dst)
            .unwrap_or_else(|| panic!("no route to {dst}: {routes}"))
            .clone()
    };
    let default = find("default");
    assert_eq!(
        (&default["gateway"], &default["dev"], &default["protocol"]),
        (&"203.0.113.254".into(), &"wan".into(), &"static".into())
    );
    let static_route = find("198.51.100.0/24");
    assert_eq!(static_route["gateway"], "203.0.113.254");
    assert_eq!(static_route["metric"], 10);

    // br_netfilter's switches are per namespace: off in the router, the host's as before.
    assert_eq!(
        lab.router
            .sh("cat /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables /proc/sys/net/bridge/bridge-nf-call-arptables"),
        "0\n0\n0\n"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok(),
        host_nf
    );

    // Traffic: a to b across the bridge, and a to the router's bridge address.
    lab.settle();
    let server = serve(&lab.b, B, 7000);
    assert_eq!(connect(&lab.a, B, 7000), A.to_string());
    server.join().unwrap();
    let server = serve(&lab.router, ROUTER_LAN, 7001);
    assert_eq!(connect(&lab.a, ROUTER_LAN, 7001), A.to_string());
    server.join().unwrap();
}

/// `ip monitor` of the router, with a marker before and after `f`: returns the events
/// between the markers.
fn events_during(lab: &Lab, f: impl FnOnce()) -> Vec<String> {
    let mut child = Command::new("ip")
        .args([
            "-n",
            &lab.router.name,
            "monitor",
            "link",
            "address",
            "route",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The monitor listens once it reports a change of ours: an MTU of lo, put back after.
    let wait_for = |mtu: u32| {
        let marker = format!("mtu {mtu} ");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let mut poke = Instant::now();
        lab.router.ip(&format!("link set lo mtu {mtu}"));
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains(&marker) => return seen,
                Ok(line) => seen.push(line),
                Err(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "ip monitor never reported lo's {marker}"
                    );
                    // The monitor may have subscribed after the first change.
                    if poke.elapsed() > Duration::from_secs(1) {
                        lab.router.ip("link set lo mtu 65536");
                        lab.router.ip(&format!("link set lo mtu {mtu}"));
                        poke = Instant::now();
                    }
                }
            }
        }
    };
    wait_for(60001);
    f();
    let between = wait_for(60002);
    lab.router.ip("link set lo mtu 65536");
    // Each event starts on an unindented line; indented ones continue it.
    let between: Vec<String> = between
        .into_iter()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    between
}

#[test]
fn a_second_apply_changes_nothing() {
    let lab = Lab::new();
    let mut links = lab.links();
    links.apply(&config()).unwrap();
    lab.settle();
    let before = lab.snapshot();

    let plan = links.plan(&config()).unwrap();
    assert!(plan.is_empty(), "second plan:\n{plan}");
    let events = events_during(&lab, || {
        let done = links.apply(&config()).unwrap();
        assert!(done.is_empty(), "second apply did:\n{done}");
    });
    assert!(
        events.is_empty(),
        "the second apply changed the kernel: {events:#?}"
    );
    assert_same(&before, &lab.snapshot());

    // A netd that starts afresh (no memory of the first apply) plans nothing as well.
    assert!(lab.links().plan(&config()).unwrap().is_empty());
}

#[test]
fn a_failed_step_undoes_the_apply() {
    let lab = Lab::new();
    let before = lab.snapshot();
    let mut links = lab.links();
    let plan = links.plan(&config()).unwrap();

    // Between plan and apply someone else takes the static route's slot: the kernel
    // refuses netd's route (EEXIST) at the end of the apply.
    lab.router.ip("route add 198.51.100.0/24 dev lo metric 10");
    let err = links.run(&plan).unwrap_err();
    let LinksError::Step {
        step,
        of,
        action,
        source,
        undo_failures,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(source.errno, Some(17), "{err}");
    assert!(
        action
            .to_string()
            .starts_with("ip route add 198.51.100.0/24 via 203.0.113.254 dev wan metric 10"),
        "{action}"
    );
    assert!(*step > 10 && *step <= *of, "{err}");
    assert!(undo_failures.is_empty(), "{err}");
    assert!(err.to_string().contains("File exists"), "{err}");

    lab.router.ip("route del 198.51.100.0/24 dev lo metric 10");
    assert_same(&before, &lab.snapshot());
}

/// nic0 already up and configured by hand, as an installer or a previous firmware might
/// leave it: the rename takes it down, which flushes its IPv6 address and its routes.
fn preconfigure_nic0(lab: &Lab) {
    let r = &lab.router;
    r.ip("link set nic0 up");
    r.ip("addr add 203.0.113.1/24 dev nic0");
    r.ip("addr add 2001:db8:0:1::1/64 dev nic0");
    r.ip("route add 198.51.100.0/24 via 203.0.113.254 dev nic0 metric 10 proto static");
    lab.settle();
}

#[test]
fn an_up_nic_keeps_its_addresses_and_routes_across_the_rename() {
    let lab = Lab::new();
    preconfigure_nic0(&lab);
    let mut links = lab.links();
    let plan = links.apply(&config()).unwrap().to_string();
    assert!(
        plan.contains("ip link set nic0 down\nip link set nic0 name wan\n"),
        "{plan}"
    );
    lab.settle();
    let all = lab.router.json("addr show");
    assert_eq!(
        addresses(&all, "wan"),
        ["2001:db8:0:1::1/64", "203.0.113.1/24"]
    );
    let routes = lab.router.json("-4 route show table main");
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "198.51.100.0/24" && r["dev"] == "wan" && r["metric"] == 10),
        "{routes}"
    );
    let again = links.plan(&config()).unwrap();
    assert!(again.is_empty(), "second plan:\n{again}");
}

#[test]
fn an_undo_puts_an_up_nic_back_as_it_was() {
    let lab = Lab::new();
    preconfigure_nic0(&lab);
    let before = lab.snapshot();
    let mut links = lab.links();
    let plan = links.plan(&config()).unwrap();
    // The default route comes last; a route someone adds in between takes its slot.
    lab.router.ip("route add default dev lo");
    let err = links.run(&plan).unwrap_err();
    let LinksError::Step {
        step,
        of,
        undo_failures,
        source,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((source.errno, undo_failures.len()), (Some(17), 0), "{err}");
    assert_eq!(step, of, "{err}");
    lab.router.ip("route del default dev lo");
    lab.settle();
    assert_same(&before, &lab.snapshot());
}

#[test]
fn a_link_switched_to_dhcp_and_slaac_loses_its_former_static_addresses() {
    let lab = Lab::new();
    let mut links = lab.links();
    let first = config();
    links.apply(&first).unwrap();
    lab.settle();
    assert_eq!(
        addresses(&lab.router.json("addr show"), "wan"),
        ["2001:db8:0:1::1/64", "203.0.113.1/24"]
    );
    let dynamic = appliance::load_str(
        &CONFIG
            .replace(
                "addresses = [\"203.0.113.1/24\", \"2001:db8:0:1::1/64\"]\ngateway = \"203.0.113.254\"",
                "ipv4 = \"dhcp\"\nipv6 = \"slaac\"",
            )
            .replace(
                "routes = [{ to = \"198.51.100.0/24\", via = \"203.0.113.254\", metric = 10 }]\n",
                "",
            ),
    )
    .unwrap();
    // What the DHCP client holds is not netd's links' to take away.
    lab.router.ip("addr add 198.51.100.7/24 dev wan");
    let plan = links.plan_after(&dynamic, Some(&first)).unwrap();
    links.run(&plan).unwrap();
    lab.settle();
    assert_eq!(
        addresses(&lab.router.json("addr show"), "wan"),
        ["198.51.100.7/24"],
        "plan:\n{plan}"
    );
    assert!(links.plan_after(&dynamic, Some(&first)).unwrap().is_empty());
}
