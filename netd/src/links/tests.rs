//! The planner against the fake kernel.

use std::net::IpAddr;

use super::*;

fn cfg(body: &str) -> appliance::Config {
    match appliance::load_str(&format!("version = 1\n{body}")) {
        Ok(c) => c,
        Err(d) => panic!("test config does not load: {d:?}"),
    }
}

const ETH0: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x10];
const ETH1: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x11];
const ETH2: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x12];
const ETH3: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x13];

fn kernel() -> FakeNetlink {
    FakeNetlink::with_nics(&[
        ("eth0", ETH0),
        ("eth1", ETH1),
        ("eth2", ETH2),
        ("eth3", ETH3),
    ])
}

/// A router: WAN by MAC with a static uplink, a LAN bridge of two NICs with VLAN
/// filtering, a VLAN on the bridge, a static route, MTUs.
const ROUTER: &str = r#"
[interfaces.wan]
mac = "52:54:00:00:00:10"
addresses = ["203.0.113.1/24", "2001:db8::1/64"]
gateway = "203.0.113.254"
gateway6 = "2001:db8::fe"
mtu = 1492

[interfaces.lan1]
device = "eth1"
mtu = 9000

[interfaces.lan2]
device = "eth2"
mtu = 9000

[bridges.br-lan]
members = ["lan1", "lan2"]
vlan_filtering = true
addresses = ["192.168.1.1/24"]
mtu = 9000
routes = [{ to = "10.20.0.0/16", via = "192.168.1.2" }]

[vlans.iot]
parent = "br-lan"
id = 20
addresses = ["192.168.20.1/24"]
mtu = 1500
"#;

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

/// The kernel keeps no meaningful order among routes or addresses: an undone removal
/// comes back at the end of the list. A deleted link that an undo recreated has a new
/// index, and a recreated bridge (and the VLANs on it) a new MAC, and the kernel's default
/// IPv6 switches.
fn sorted(s: &Observed) -> Observed {
    let mut s = s.clone();
    s.links.sort_by_key(|l| l.name.clone());
    for l in &mut s.links {
        l.index = 0;
        if l.created() {
            l.mac = None;
            s.ipv6.remove(&l.name);
        }
    }
    s.addresses
        .sort_by_key(|a| (a.link.clone(), a.net.to_string()));
    s.routes.sort();
    s
}

fn has_addr(k: &FakeNetlink, link: &str, a: &str) -> bool {
    k.state
        .addresses
        .iter()
        .any(|x| x.link == link && x.net == net(a))
}

#[test]
fn router_from_scratch_then_nothing() {
    let mut links = Links::new(kernel());
    let c = cfg(ROUTER);
    let plan = links.apply(&c).unwrap();
    assert!(!plan.is_empty());
    let k = links.netlink();

    let wan = k.state.link("wan").expect("eth0 renamed to wan");
    assert_eq!(wan.mac, Some(Mac(ETH0)));
    assert_eq!(wan.alias.as_deref(), Some("appliance nic eth0"));
    assert_eq!(wan.mtu, 1492);
    assert!(wan.up);
    assert!(k.state.link("eth0").is_none());
    let br = k.state.link("br-lan").unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.alias.as_deref(), Some(OWNER_ALIAS));
    assert!(br.bridge.unwrap().vlan_filtering);
    assert_eq!(br.mtu, 9000);
    for port in ["lan1", "lan2"] {
        let l = k.state.link(port).unwrap();
        assert_eq!(l.master.as_deref(), Some("br-lan"));
        assert_eq!(l.mtu, 9000);
        assert!(l.up);
    }
    let iot = k.state.link("iot").unwrap();
    assert_eq!(iot.vlan, Some((20, "br-lan".to_string())));
    assert_eq!(iot.mtu, 1500);
    assert!(has_addr(k, "wan", "203.0.113.1/24"));
    assert!(has_addr(k, "wan", "2001:db8::1/64"));
    assert!(has_addr(k, "br-lan", "192.168.1.1/24"));
    assert!(has_addr(k, "iot", "192.168.20.1/24"));
    let routes: Vec<String> = k.state.routes.iter().map(ToString::to_string).collect();
    assert_eq!(
        routes,
        [
            "10.20.0.0/16 via 192.168.1.2 dev br-lan metric 0 proto 4",
            "0.0.0.0/0 via 203.0.113.254 dev wan metric 0 proto 4",
            "::/0 via 2001:db8::fe dev wan metric 1024 proto 4",
        ]
    );
    assert_eq!(k.state.bridge_nf, Some(BridgeNf::OFF));
    // eth3 is not in the config: untouched.
    assert_eq!(k.state.link("eth3"), kernel().state.link("eth3"));

    let writes = links.netlink().writes();
    let again = links.plan(&c).unwrap();
    assert!(again.is_empty(), "second plan: {again}");
    links.apply(&c).unwrap();
    assert_eq!(
        links.netlink().writes(),
        writes,
        "a no-op apply writes nothing"
    );
}

#[test]
fn order_puts_parents_before_children_and_routes_last() {
    let mut links = Links::new(kernel());
    let plan = links.plan(&cfg(ROUTER)).unwrap().to_string();
    let pos = |needle: &str| {
        plan.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in plan:\n{plan}"))
    };
    assert!(pos("ip link set eth0 name wan") < pos("ip link add br-lan"));
    assert!(pos("ip link add br-lan") < pos("ip link add iot link br-lan type vlan id 20"));
    assert!(pos("ip link add iot") < pos("ip link set lan1 master br-lan"));
    assert!(pos("ip link set lan1 mtu 9000") < pos("ip link set br-lan mtu 9000"));
    assert!(pos("ip link set br-lan mtu 9000") < pos("ip link set iot mtu 1500"));
    assert!(pos("ip addr add 192.168.1.1/24 dev br-lan") < pos("ip link set br-lan up"));
    assert!(pos("sysctl net.bridge.bridge-nf-call-iptables=0") < pos("ip link set br-lan up"));
    assert!(pos("ip link set wan up") < pos("ip route add 0.0.0.0/0 via 203.0.113.254"));
}

#[test]
fn a_nic_that_is_up_goes_down_to_be_renamed_and_comes_back_up() {
    let mut k = kernel();
    k.link_mut("eth1").unwrap().up = true;
    let mut links = Links::new(k);
    let plan = links
        .apply(&cfg(
            "[interfaces.lan]\ndevice = \"eth1\"\naddresses = [\"192.168.1.1/24\"]\n",
        ))
        .unwrap()
        .to_string();
    assert!(
        plan.starts_with("ip link set eth1 down\nip link set eth1 name lan\n"),
        "{plan}"
    );
    assert!(links.netlink().state.link("lan").unwrap().up);
}

#[test]
fn unowned_links_addresses_and_routes_are_never_touched() {
    let mut k = kernel();
    // Someone else's bridge with an address, a port and a route, and an address and a
    // route on a NIC that is not in the config.
    k.apply_foreign(|s| {
        let mut docker = s.link("eth3").unwrap().clone();
        docker.index = 99;
        docker.name = "docker0".into();
        docker.kind = Some("bridge".into());
        docker.bridge = Some(BridgeOpts::default());
        docker.up = true;
        s.links.push(docker);
        s.addresses.push(Address {
            link: "docker0".into(),
            net: net("172.17.0.1/16"),
        });
        s.addresses.push(Address {
            link: "eth3".into(),
            net: net("10.9.9.9/24"),
        });
        s.routes.push(Route {
            dst: net("10.99.0.0/16"),
            gateway: Some("172.17.0.2".parse().unwrap()),
            dev: Some("docker0".into()),
            metric: 0,
            protocol: PROTO_STATIC,
        });
    });
    k.link_mut("eth3").unwrap().master = Some("docker0".into());
    let before = k.state.clone();
    let mut links = Links::new(k);
    links.apply(&cfg(ROUTER)).unwrap();
    let after = &links.netlink().state;
    for name in ["docker0", "eth3"] {
        assert_eq!(after.link(name), before.link(name), "{name} changed");
    }
    for a in before.addresses.iter() {
        assert!(after.addresses.contains(a), "{a:?} removed");
    }
    assert!(after.routes.contains(&before.routes[0]));
    for a in &links.netlink().log {
        let s = a.to_string();
        assert!(
            !s.contains("docker0") && !s.contains("eth3"),
            "touched: {s}"
        );
    }
}

#[test]
fn a_name_held_by_an_unowned_link_is_an_error_and_nothing_is_applied() {
    let mut k = kernel();
    k.apply_foreign(|s| {
        let mut foreign = s.link("eth3").unwrap().clone();
        foreign.index = 77;
        foreign.name = "br-lan".into();
        foreign.kind = Some("bridge".into());
        s.links.push(foreign);
    });
    let mut links = Links::new(k);
    let err = links.apply(&cfg(ROUTER)).unwrap_err();
    assert!(
        matches!(&err, LinksError::Plan(PlanError::NameTaken { name, .. }) if name == "br-lan"),
        "{err}"
    );
    assert!(err.to_string().contains("netd does not own"), "{err}");
    assert_eq!(links.netlink().writes(), 0);
}

#[test]
fn nic_by_mac_is_renamed_and_found_again_after_the_rename() {
    let mut k = kernel();
    k.apply_foreign(|s| {
        // A card the kernel named enp3s0; its current MAC was changed, the burnt-in one
        // is what the config names.
        let l = s.links.iter_mut().find(|l| l.name == "eth3").unwrap();
        l.name = "enp3s0".into();
        l.mac = Some(Mac([2, 2, 2, 2, 2, 2]));
    });
    let c = cfg(
        "[interfaces.uplink]\nmac = \"52:54:00:00:00:13\"\naddresses = [\"198.51.100.2/24\"]\n",
    );
    let mut links = Links::new(k);
    links.apply(&c).unwrap();
    let s = &links.netlink().state;
    let l = s.link("uplink").unwrap();
    assert_eq!(l.perm_mac, Some(Mac(ETH3)));
    assert_eq!(l.alias.as_deref(), Some("appliance nic enp3s0"));
    assert!(has_addr(links.netlink(), "uplink", "198.51.100.2/24"));
    assert!(links.plan(&c).unwrap().is_empty());
}

#[test]
fn nic_by_device_is_found_again_after_the_rename() {
    let c = cfg("[interfaces.lan]\ndevice = \"eth1\"\n");
    let mut links = Links::new(kernel());
    links.apply(&c).unwrap();
    assert!(links.netlink().state.link("eth1").is_none());
    assert!(links.plan(&c).unwrap().is_empty());
}

#[test]
fn nic_errors_name_the_interface() {
    let mut links = Links::new(kernel());
    let err = links
        .plan(&cfg("[interfaces.wan]\nmac = \"aa:bb:cc:dd:ee:ff\"\n"))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no network card with MAC aa:bb:cc:dd:ee:ff"),
        "{err}"
    );
    let err = links
        .plan(&cfg("[interfaces.wan]\ndevice = \"eth9\"\n"))
        .unwrap_err();
    assert!(err.to_string().contains("the name eth9"), "{err}");

    let mut k = kernel();
    k.link_mut("eth2").unwrap().perm_mac = Some(Mac(ETH1));
    let err = Links::new(k)
        .plan(&cfg("[interfaces.wan]\nmac = \"52:54:00:00:00:11\"\n"))
        .unwrap_err();
    assert!(
        matches!(err, LinksError::Plan(PlanError::NicAmbiguous { .. })),
        "{err}"
    );

    let err = Links::new(kernel())
        .plan(&cfg(
            "[interfaces.a]\ndevice = \"eth1\"\n[interfaces.b]\nmac = \"52:54:00:00:00:11\"\n",
        ))
        .unwrap_err();
    assert!(
        matches!(err, LinksError::Plan(PlanError::NicClaimedTwice { .. })),
        "{err}"
    );
}

#[test]
fn every_failing_step_is_undone_back_to_the_start() {
    // The kernel of a second apply: some of the router exists, some changes.
    let mut seeded = Links::new(kernel());
    seeded.apply(&cfg(ROUTER)).unwrap();
    let changed = ROUTER
        .replace("vlan_filtering = true", "vlan_filtering = false")
        .replace("\"192.168.1.1/24\"", "\"192.168.2.1/24\"")
        .replace("via = \"192.168.1.2\"", "via = \"192.168.2.2\"")
        .replace("mtu = 9000\nroutes", "mtu = 8000\nroutes")
        .replace("[vlans.iot]", "[vlans.guest]");
    for (name, base, c) in [
        ("fresh", kernel(), cfg(ROUTER)),
        ("change", seeded.netlink().clone(), cfg(&changed)),
        (
            "teardown",
            seeded.netlink().clone(),
            cfg("[interfaces.x]\ndevice = \"eth3\"\n"),
        ),
    ] {
        assert_undone_at_every_step(name, &base, &c);
    }
}

/// Applies `c` to `base` once for each step of the plan, failing that step, and checks
/// that the kernel ends where it started.
fn assert_undone_at_every_step(name: &str, base: &FakeNetlink, c: &appliance::Config) {
    let steps = Links::new(base.clone()).plan(c).unwrap().actions.len();
    assert!(steps >= 2, "{name}: {steps} steps");
    for k in 0..steps {
        let mut fake = base.clone();
        fake.fail_at = Some(fake.log.len() + k);
        let mut links = Links::new(fake);
        let err = links.apply(c).unwrap_err();
        let LinksError::Step {
            step,
            of,
            undo_failures,
            ..
        } = &err
        else {
            panic!("{name}: step {k}: {err}")
        };
        assert_eq!((*step, *of), (k + 1, steps), "{name}");
        assert!(undo_failures.is_empty(), "{name}: step {k}: {err}");
        assert_eq!(
            sorted(&links.netlink().state),
            sorted(&base.state),
            "{name}: failing at step {} left the kernel changed",
            k + 1
        );
        assert!(err.to_string().contains("(errno 5)"), "{err}");
    }
}

#[test]
fn an_up_nic_gets_its_ipv6_address_back_after_the_rename() {
    // Taking a link down flushes its IPv6 addresses and routes: the plan removes them
    // itself (so that an undo restores them) and adds them again once the NIC is up.
    let mut k = kernel();
    k.link_mut("eth1").unwrap().up = true;
    k.apply_foreign(|s| {
        s.addresses.push(Address {
            link: "eth1".into(),
            net: net("fd00::1/64"),
        })
    });
    let c = cfg(
        "[interfaces.lan]\ndevice = \"eth1\"\naddresses = [\"fd00::1/64\"]\nroutes = [{ to = \"fd01::/64\", via = \"fd00::2\" }]\n",
    );
    let mut links = Links::new(k.clone());
    let plan = links.apply(&c).unwrap().to_string();
    assert!(
        plan.starts_with("ip addr del fd00::1/64 dev eth1\nip link set eth1 down\n"),
        "{plan}"
    );
    assert!(has_addr(links.netlink(), "lan", "fd00::1/64"));
    assert_eq!(links.netlink().state.routes.len(), 1);
    assert!(links.plan(&c).unwrap().is_empty());
    assert_undone_at_every_step("rename", &k, &c);

    // Renamed and up now, with its route: a rename back goes through the same dance.
    let base = links.netlink().clone();
    assert_undone_at_every_step(
        "rename back",
        &base,
        &cfg(
            "[interfaces.eth1]\ndevice = \"eth1\"\naddresses = [\"fd00::1/64\"]\nroutes = [{ to = \"fd01::/64\", via = \"fd00::2\" }]\n",
        ),
    );
}

#[test]
fn a_real_refusal_is_undone_too() {
    // The host kernel of the namespace tests has no 8021q: creating the VLAN fails after
    // the renames and the bridge.
    let mut k = kernel();
    k.vlans = false;
    let before = k.state.clone();
    let mut links = Links::new(k);
    let err = links.apply(&cfg(ROUTER)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ip link add iot link br-lan type vlan id 20"),
        "{msg}"
    );
    assert!(msg.contains("errno 95"), "{msg}");
    assert_eq!(sorted(&links.netlink().state), sorted(&before));
}

#[test]
fn links_that_leave_the_config_are_deleted_or_released() {
    let mut links = Links::new(kernel());
    links.apply(&cfg(ROUTER)).unwrap();
    let only_wan =
        "[interfaces.wan]\nmac = \"52:54:00:00:00:10\"\naddresses = [\"203.0.113.1/24\"]\n";
    let plan = links.apply(&cfg(only_wan)).unwrap().to_string();
    let s = &links.netlink().state;
    assert!(
        s.link("br-lan").is_none() && s.link("iot").is_none(),
        "{plan}"
    );
    for nic in ["lan1", "lan2"] {
        let l = s.link(nic).unwrap();
        assert_eq!(
            (l.up, l.master.as_deref(), l.alias.as_deref()),
            (false, None, None)
        );
    }
    assert!(!has_addr(links.netlink(), "wan", "2001:db8::1/64"));
    assert!(has_addr(links.netlink(), "wan", "203.0.113.1/24"));
    assert!(s.routes.is_empty(), "{:?}", s.routes);
    assert!(links.plan(&cfg(only_wan)).unwrap().is_empty());
}

#[test]
fn a_dhcp_link_keeps_its_ipv4_addresses_and_a_slaac_link_its_ipv6() {
    let c = cfg("[interfaces.wan]\ndevice = \"eth0\"\nipv4 = \"dhcp\"\nipv6 = \"slaac\"\n");
    let mut links = Links::new(kernel());
    links.apply(&c).unwrap();
    links.netlink_mut().apply_foreign(|s| {
        for a in ["100.64.1.7/22", "2001:db8:1::7/64", "fe80::1/64"] {
            s.addresses.push(Address {
                link: "wan".into(),
                net: net(a),
            });
        }
        s.routes.push(Route {
            dst: net("0.0.0.0/0"),
            gateway: Some(IpAddr::from([100, 64, 0, 1])),
            dev: Some("wan".into()),
            metric: 0,
            protocol: 16, // dhcp
        });
    });
    assert!(links.plan(&c).unwrap().is_empty());

    // As a static link, the DHCP and SLAAC addresses are stale; link-local is not netd's.
    let c = cfg("[interfaces.wan]\ndevice = \"eth0\"\naddresses = [\"192.0.2.1/24\"]\n");
    let plan = links.plan(&c).unwrap().to_string();
    assert!(plan.contains("ip addr del 100.64.1.7/22 dev wan"), "{plan}");
    assert!(
        plan.contains("ip addr del 2001:db8:1::7/64 dev wan"),
        "{plan}"
    );
    assert!(!plan.contains("fe80"), "{plan}");
    // The DHCP client's default route is not netd's either.
    assert!(!plan.contains("ip route del"), "{plan}");
}

#[test]
fn a_route_that_someone_else_added_is_a_plan_error() {
    let mut k = kernel();
    k.apply_foreign(|s| {
        s.routes.push(Route {
            dst: net("10.20.0.0/16"),
            gateway: None,
            dev: Some("eth3".into()),
            metric: 0,
            protocol: 3, // boot: `ip route add` by hand
        })
    });
    let err = Links::new(k).plan(&cfg(ROUTER)).unwrap_err();
    assert!(
        matches!(err, LinksError::Plan(PlanError::RouteTaken { .. })),
        "{err}"
    );
}

#[test]
fn bridge_options_change_in_place() {
    let mut links = Links::new(kernel());
    links.apply(&cfg(ROUTER)).unwrap();
    let c = cfg(&ROUTER.replace("vlan_filtering = true", "stp = true"));
    let plan = links.apply(&c).unwrap();
    // Without filtering the VLAN table means nothing: netd's entries go, the PVID stays.
    assert_eq!(
        plan.to_string(),
        "bridge vlan del vid 20 dev lan1\nbridge vlan del vid 20 dev lan2\n\
         bridge vlan del vid 20 dev br-lan self\n\
         ip link set br-lan type bridge vlan_filtering 0 stp_state 1\n"
    );
    let pvid_only = vec![BridgeVlan {
        vid: 1,
        pvid: true,
        untagged: true,
    }];
    for link in ["br-lan", "lan1", "lan2"] {
        assert_eq!(
            links.netlink().state.bridge_vlans[link],
            pvid_only,
            "{link}"
        );
    }
    assert!(links.plan(&c).unwrap().is_empty());
}

/// The kernel's entry on every new bridge and port, and a VLAN netd adds.
fn pvid1_and(ids: &[u16]) -> Vec<BridgeVlan> {
    let mut v = vec![BridgeVlan {
        vid: 1,
        pvid: true,
        untagged: true,
    }];
    v.extend(ids.iter().map(|id| BridgeVlan::tagged(*id)));
    v
}

#[test]
fn a_vlan_on_a_filtering_bridge_is_carried_tagged_on_the_bridge_and_every_port() {
    let mut links = Links::new(kernel());
    let c = cfg(ROUTER);
    let plan = links.apply(&c).unwrap().to_string();
    let pos = |needle: &str| {
        plan.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in plan:\n{plan}"))
    };
    // After the ports joined (joining resets a port's table to the PVID).
    assert!(pos("ip link set lan2 master br-lan") < pos("bridge vlan add vid 20 dev lan1\n"));
    assert!(pos("ip link set lan2 master br-lan") < pos("bridge vlan add vid 20 dev lan2\n"));
    pos("bridge vlan add vid 20 dev br-lan self\n");
    let s = &links.netlink().state;
    for link in ["br-lan", "lan1", "lan2"] {
        assert_eq!(s.bridge_vlans[link], pvid1_and(&[20]), "{link}");
    }
    assert!(links.plan(&c).unwrap().is_empty());

    // A second VLAN: three entries, nothing else.
    let two = ROUTER.to_string() + "[vlans.cams]\nparent = \"br-lan\"\nid = 30\n";
    let base = links.netlink().clone();
    let plan = links.apply(&cfg(&two)).unwrap().to_string();
    assert_eq!(
        plan,
        "ip link add cams link br-lan type vlan id 30 && ip link set cams alias appliance\n\
         bridge vlan add vid 30 dev lan1\nbridge vlan add vid 30 dev lan2\n\
         bridge vlan add vid 30 dev br-lan self\n\
         sysctl net.ipv6.conf.cams.accept_ra=0 net.ipv6.conf.cams.autoconf=0 net.ipv6.conf.cams.disable_ipv6=0\n\
         ip link set cams up\n"
    );
    assert_eq!(
        links.netlink().state.bridge_vlans["lan2"],
        pvid1_and(&[20, 30])
    );
    assert!(links.plan(&cfg(&two)).unwrap().is_empty());
    assert_undone_at_every_step("second vlan", &base, &cfg(&two));

    // The VLAN goes: its id leaves the bridge and the ports; PVID 1 stays.
    let with_two = links.netlink().clone();
    let plan = links.apply(&c).unwrap().to_string();
    for link in ["lan1", "lan2", "br-lan self"] {
        assert!(
            plan.contains(&format!("bridge vlan del vid 30 dev {link}\n")),
            "{plan}"
        );
    }
    assert!(
        !plan.contains("vid 20") && !plan.contains("vid 1 "),
        "{plan}"
    );
    assert_eq!(
        links.netlink().state.bridge_vlans["br-lan"],
        pvid1_and(&[20])
    );
    assert_undone_at_every_step("vlan removed", &with_two, &c);

    // A port that leaves the bridge: its entries go first, so that an undo brings them back.
    let one_port = ROUTER.replace("members = [\"lan1\", \"lan2\"]", "members = [\"lan1\"]");
    let plan = Links::new(base.clone())
        .plan(&cfg(&one_port))
        .unwrap()
        .to_string();
    assert!(
        plan.find("bridge vlan del vid 20 dev lan2\n").unwrap()
            < plan.find("ip link set lan2 nomaster").unwrap(),
        "{plan}"
    );
    assert_undone_at_every_step("port leaves", &base, &cfg(&one_port));
}

#[test]
fn bridge_vlans_netd_does_not_want_go_and_foreign_ports_keep_theirs() {
    let mut links = Links::new(kernel());
    let c = cfg(ROUTER);
    links.apply(&c).unwrap();
    // By hand: an untagged VLAN on a port netd owns, and a foreign port on the bridge
    // with a VLAN of its own.
    links.netlink_mut().apply_foreign(|s| {
        s.bridge_vlans.get_mut("lan1").unwrap().push(BridgeVlan {
            vid: 99,
            pvid: false,
            untagged: true,
        });
        let eth3 = s.links.iter_mut().find(|l| l.name == "eth3").unwrap();
        eth3.master = Some("br-lan".into());
        s.bridge_vlans.insert("eth3".into(), pvid1_and(&[20, 77]));
    });
    let plan = links.apply(&c).unwrap().to_string();
    assert_eq!(plan, "bridge vlan del vid 99 dev lan1 untagged\n");
    assert_eq!(
        links.netlink().state.bridge_vlans["eth3"],
        pvid1_and(&[20, 77])
    );
    // Untagged where netd wants it tagged: replaced.
    links.netlink_mut().apply_foreign(|s| {
        let lan2 = s.bridge_vlans.get_mut("lan2").unwrap();
        lan2.retain(|v| v.vid != 20);
        lan2.push(BridgeVlan {
            vid: 20,
            pvid: false,
            untagged: true,
        });
    });
    let plan = links.apply(&c).unwrap().to_string();
    assert_eq!(
        plan,
        "bridge vlan del vid 20 dev lan2 untagged\nbridge vlan add vid 20 dev lan2\n"
    );
    assert!(links.plan(&c).unwrap().is_empty());
}

#[test]
fn vlans_on_a_bridge_without_filtering_and_on_nics_need_no_bridge_vlans() {
    let c = cfg(&format!(
        "{}[vlans.v5]\nparent = \"wan\"\nid = 5\n",
        ROUTER.replace("vlan_filtering = true", "")
    ));
    let plan = Links::new(kernel()).plan(&c).unwrap().to_string();
    assert!(!plan.contains("bridge vlan add"), "{plan}");
}

#[test]
fn names_the_built_in_default_gave_can_be_taken_by_the_users_config() {
    // A new box: the default names eth0 `wan` and eth1 `lan`.
    let mut boxed = Links::new(kernel());
    boxed.apply(&appliance::default_config().unwrap()).unwrap();
    let base = boxed.netlink().clone();
    assert!(base.state.link("lan").is_some() && base.state.link("eth1").is_none());

    // The same card under the same name, found by MAC or by its old name: nothing moves.
    for same in [
        "[interfaces.lan]\nmac = \"52:54:00:00:00:11\"\naddresses = [\"192.168.1.1/24\"]\n",
        "[interfaces.lan]\ndevice = \"eth1\"\naddresses = [\"192.168.1.1/24\"]\n",
    ] {
        let plan = Links::new(base.clone())
            .plan(&cfg(same))
            .unwrap()
            .to_string();
        assert!(!plan.contains("name"), "{plan}");
    }

    // `lan` given to another card, the default's card left out: eth1 is released under
    // the name it had, and eth2 becomes lan.
    let other = "[interfaces.wan]\ndevice = \"eth0\"\nipv4 = \"dhcp\"\n\
                 [interfaces.lan]\ndevice = \"eth2\"\naddresses = [\"192.168.1.1/24\"]\n";
    let mut links = Links::new(base.clone());
    let plan = links.apply(&cfg(other)).unwrap().to_string();
    assert!(
        plan.find("ip link set lan name eth1").unwrap()
            < plan.find("ip link set eth2 name lan").unwrap(),
        "{plan}"
    );
    let s = &links.netlink().state;
    let eth1 = s.link("eth1").unwrap();
    assert_eq!(
        (eth1.mac, eth1.alias.as_deref(), eth1.up),
        (Some(Mac(ETH1)), None, false)
    );
    assert_eq!(s.link("lan").unwrap().mac, Some(Mac(ETH2)));
    assert!(has_addr(links.netlink(), "lan", "192.168.1.1/24"));
    assert!(links.plan(&cfg(other)).unwrap().is_empty());
    assert_undone_at_every_step("lan to another card", &base, &cfg(other));

    // `lan` given to another card while the default's card stays as lan0: lan0 first.
    let both = format!("{other}[interfaces.lan0]\ndevice = \"eth1\"\n");
    let mut links = Links::new(base.clone());
    let plan = links.apply(&cfg(&both)).unwrap().to_string();
    assert!(
        plan.find("ip link set lan name lan0").unwrap()
            < plan.find("ip link set eth2 name lan").unwrap(),
        "{plan}"
    );
    assert_eq!(
        links.netlink().state.link("lan0").unwrap().mac,
        Some(Mac(ETH1))
    );
    assert!(links.plan(&cfg(&both)).unwrap().is_empty());
    assert_undone_at_every_step("lan moves, lan0 stays", &base, &cfg(&both));

    // A bridge named lan over the default's card.
    let bridged = "[interfaces.port]\ndevice = \"eth1\"\n[bridges.lan]\nmembers = [\"port\"]\n";
    let mut links = Links::new(base.clone());
    links.apply(&cfg(bridged)).unwrap();
    assert_eq!(
        links.netlink().state.link("lan").unwrap().kind.as_deref(),
        Some("bridge")
    );
    assert!(links.plan(&cfg(bridged)).unwrap().is_empty());

    // Two cards swapping names needs a temporary name: refused, nothing written.
    let swap = "[interfaces.wan]\ndevice = \"eth1\"\n[interfaces.lan]\ndevice = \"eth0\"\n";
    let mut links = Links::new(base.clone());
    let err = links.apply(&cfg(swap)).unwrap_err();
    assert!(
        matches!(&err, LinksError::Plan(PlanError::NamesSwapped { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("rename one card by hand first"),
        "{err}"
    );
    assert_eq!(links.netlink().writes(), base.writes());
}

#[test]
fn without_br_netfilter_there_is_no_sysctl_step() {
    let mut k = kernel();
    k.state.bridge_nf = None;
    let plan = Links::new(k).plan(&cfg(ROUTER)).unwrap().to_string();
    assert!(!plan.contains("net.bridge"), "{plan}");
}

#[test]
fn ipv6_switches_follow_the_mode_and_forwarding_is_only_switched_on() {
    let mut links = Links::new(kernel());
    let c = cfg(r#"
[interfaces.wan]
device = "eth0"
ipv4 = "dhcp"
ipv6 = "slaac"

[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24", "2001:db8:1::1/64"]

[interfaces.guest]
device = "eth2"
addresses = ["192.168.2.1/24"]
ipv6 = "none"

[interfaces.mgmt]
device = "eth3"
addresses = ["192.168.3.1/24"]
"#);
    let plan = links.apply(&c).unwrap().to_string();
    let k = &links.netlink().state;
    assert_eq!(k.ipv6["wan"], Ipv6Conf::SLAAC, "{plan}");
    assert_eq!(k.ipv6["lan"], Ipv6Conf::STATIC);
    assert_eq!(k.ipv6["guest"], Ipv6Conf::DISABLED);
    // Unsaid: link-local only, advertisements ignored.
    assert_eq!(k.ipv6["mgmt"], Ipv6Conf::STATIC);
    assert_eq!(
        k.forwarding,
        Some(Forwarding {
            ipv4: true,
            ipv6: true
        })
    );
    // The switches come before the link goes up: the kernel solicits routers then.
    let lines: Vec<&str> = plan.lines().collect();
    let ra = lines
        .iter()
        .position(|l| l.contains("net.ipv6.conf.wan.accept_ra=2"))
        .unwrap();
    let up = lines
        .iter()
        .position(|l| *l == "ip link set wan up")
        .unwrap();
    assert!(ra < up, "{plan}");
    assert!(links.plan(&c).unwrap().is_empty());

    // One IPv6 link: nothing to forward between, but forwarding someone switched on stays.
    let single = cfg("[interfaces.lan]\ndevice = \"eth1\"\naddresses = [\"2001:db8:1::1/64\"]\n");
    let plan = links.apply(&single).unwrap().to_string();
    assert!(!plan.contains("forward"), "{plan}");
    assert_eq!(links.netlink().state.forwarding.map(|f| f.ipv6), Some(true));
}

#[test]
fn ipv6_none_after_static_removes_the_addresses_before_disabling() {
    let mut links = Links::new(kernel());
    let with = cfg("[interfaces.lan]\ndevice = \"eth1\"\naddresses = [\"2001:db8:1::1/64\"]\n");
    links.apply(&with).unwrap();
    let without = cfg("[interfaces.lan]\ndevice = \"eth1\"\nipv6 = \"none\"\n");
    let base = links.netlink().clone();
    let plan = links.apply(&without).unwrap().to_string();
    assert_eq!(
        plan,
        "ip addr del 2001:db8:1::1/64 dev lan\nsysctl net.ipv6.conf.lan.accept_ra=0 net.ipv6.conf.lan.autoconf=0 net.ipv6.conf.lan.disable_ipv6=1\n"
    );
    assert!(links.plan(&without).unwrap().is_empty());
    // Back again: IPv6 on before the address.
    let plan = links.apply(&with).unwrap().to_string();
    assert!(
        plan.starts_with("sysctl net.ipv6.conf.lan.accept_ra=0"),
        "{plan}"
    );
    assert!(
        plan.ends_with("ip addr add 2001:db8:1::1/64 dev lan\n"),
        "{plan}"
    );
    // The switch refused: the address comes back.
    let mut k = base.clone();
    k.fail_at = Some(k.log.len() + 1);
    let mut failing = Links::new(k);
    assert!(failing.apply(&without).is_err());
    assert_eq!(sorted(&failing.netlink().state), sorted(&base.state));
}

/// ROUTER with a second VLAN on the bridge, lan2 an access port of VLAN 20 (a printer's)
/// and lan1 a trunk carrying only VLAN 30.
fn router_with_port_vlans() -> String {
    ROUTER.to_string()
        + "[vlans.cams]\nparent = \"br-lan\"\nid = 30\n\
           [bridges.br-lan.ports.lan2]\nuntagged = 20\n\
           [bridges.br-lan.ports.lan1]\ntagged = [30]\n"
}

#[test]
fn an_access_port_has_its_vlan_as_pvid_untagged_and_a_trunk_its_own_list() {
    let c = cfg(&router_with_port_vlans());
    let mut links = Links::new(kernel());
    let plan = links.apply(&c).unwrap().to_string();
    let pos = |needle: &str| {
        plan.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in plan:\n{plan}"))
    };
    // The access port joins (the kernel gives it VLAN 1), leaves VLAN 1, then gets 20.
    assert!(
        pos("ip link set lan2 master br-lan")
            < pos("bridge vlan del vid 1 dev lan2 pvid untagged\n")
    );
    assert!(
        pos("bridge vlan del vid 1 dev lan2 pvid untagged\n")
            < pos("bridge vlan add vid 20 dev lan2 pvid untagged\n")
    );
    let s = &links.netlink().state;
    assert_eq!(s.bridge_vlans["lan2"], [BridgeVlan::access(20)]);
    assert_eq!(s.bridge_vlans["lan1"], pvid1_and(&[30]));
    assert_eq!(s.bridge_vlans["br-lan"], pvid1_and(&[20, 30]));
    assert!(links.plan(&c).unwrap().is_empty());
    assert_undone_at_every_step("access port fresh", &kernel(), &c);
}

#[test]
fn a_port_becomes_an_access_port_and_back() {
    let mut links = Links::new(kernel());
    let two = ROUTER.to_string() + "[vlans.cams]\nparent = \"br-lan\"\nid = 30\n";
    links.apply(&cfg(&two)).unwrap();
    let trunk = links.netlink().clone();
    let c = cfg(&router_with_port_vlans());
    let plan = links.apply(&c).unwrap().to_string();
    // lan1 keeps VLAN 1 and 30; lan2 leaves VLAN 1, 20 turns untagged PVID (deleted, then
    // added with its flags, so that each step has an exact inverse), 30 goes.
    assert_eq!(
        plan,
        "bridge vlan del vid 20 dev lan1\n\
         bridge vlan del vid 1 dev lan2 pvid untagged\n\
         bridge vlan del vid 20 dev lan2\n\
         bridge vlan del vid 30 dev lan2\n\
         bridge vlan add vid 20 dev lan2 pvid untagged\n"
    );
    assert!(!plan.contains("dev br-lan"), "{plan}");
    assert_eq!(
        links.netlink().state.bridge_vlans["lan2"],
        [BridgeVlan::access(20)]
    );
    assert!(links.plan(&c).unwrap().is_empty());
    assert_undone_at_every_step("to access", &trunk, &c);

    // Back to the default: VLAN 1 is the PVID again, 20 and 30 tagged.
    let access = links.netlink().clone();
    let plan = links.apply(&cfg(&two)).unwrap().to_string();
    assert_eq!(
        plan,
        "bridge vlan del vid 20 dev lan2 pvid untagged\n\
         bridge vlan add vid 20 dev lan1\n\
         bridge vlan add vid 1 dev lan2 pvid untagged\n\
         bridge vlan add vid 20 dev lan2\n\
         bridge vlan add vid 30 dev lan2\n"
    );
    assert_eq!(
        links.netlink().state.bridge_vlans["lan2"],
        pvid1_and(&[20, 30])
    );
    assert_eq!(
        links.netlink().state.bridge_vlans["lan1"],
        pvid1_and(&[20, 30])
    );
    assert!(links.plan(&cfg(&two)).unwrap().is_empty());
    assert_undone_at_every_step("back to trunk", &access, &cfg(&two));

    // Filtering off with the port entries gone: netd's entries go, VLAN 1 comes back.
    let off = cfg(&two.replace("vlan_filtering = true", ""));
    let mut from_access = Links::new(access.clone());
    from_access.apply(&off).unwrap();
    for link in ["br-lan", "lan1", "lan2"] {
        assert_eq!(
            from_access.netlink().state.bridge_vlans[link],
            pvid1_and(&[]),
            "{link}"
        );
    }
    assert!(from_access.plan(&off).unwrap().is_empty());
    assert_undone_at_every_step("filtering off", &access, &off);
}
