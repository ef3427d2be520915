//! The client's decisions with a fake clock (plain numbers of seconds), and its files.

use std::net::Ipv4Addr;

use super::decide::{Event, Lease, PROTO_DHCP, Phase, Step, decide, phase, requested_at_start};
use super::files;
use crate::links::Action;

fn lease(addr: &str, router: Option<&str>, acquired: u64) -> Lease {
    let (t1, t2) = Lease::default_timers(120);
    Lease {
        address: addr.parse().unwrap(),
        router: router.map(|r| r.parse().unwrap()),
        dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
        server: Ipv4Addr::new(203, 0, 113, 1),
        acquired,
        lease_secs: 120,
        t1_secs: t1,
        t2_secs: t2,
    }
}

fn kernel(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Kernel(Action::AddAddress { net, .. }) => Some(format!("add {net}")),
            Step::Kernel(Action::RemoveAddress { net, .. }) => Some(format!("del {net}")),
            Step::Kernel(Action::AddRoute(r)) => {
                assert_eq!(r.protocol, PROTO_DHCP);
                assert_eq!(r.dev.as_deref(), Some("wan"));
                Some(format!("route add via {}", r.gateway.unwrap()))
            }
            Step::Kernel(Action::RemoveRoute(r)) => {
                Some(format!("route del via {}", r.gateway.unwrap()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn phases_follow_t1_t2_and_expiry_on_a_fake_clock() {
    let l = lease("203.0.113.10/24", Some("203.0.113.1"), 1000);
    assert_eq!((l.t1_secs, l.t2_secs), (60, 105));
    assert_eq!(phase(&l, 1000), Phase::Bound);
    assert_eq!(phase(&l, 1059), Phase::Bound);
    assert_eq!(phase(&l, 1060), Phase::Renewing);
    assert_eq!(phase(&l, 1104), Phase::Renewing);
    assert_eq!(phase(&l, 1105), Phase::Rebinding);
    assert_eq!(phase(&l, 1119), Phase::Rebinding);
    assert_eq!(phase(&l, 1120), Phase::Expired);
    // A clock set back before the ACK counts as just bound.
    assert_eq!(phase(&l, 10), Phase::Bound);
    // A renewal moves every timer.
    let renewed = lease("203.0.113.10/24", Some("203.0.113.1"), 1070);
    assert_eq!(phase(&renewed, 1120), Phase::Bound);
}

#[test]
fn a_first_ack_adds_address_route_dns_and_persists() {
    let l = lease("203.0.113.10/24", Some("203.0.113.1"), 0);
    let steps = decide("wan", None, &Event::Acked(l.clone()));
    assert_eq!(
        kernel(&steps),
        ["add 203.0.113.10/24", "route add via 203.0.113.1"]
    );
    assert!(steps.contains(&Step::WriteDns(l.dns.clone())));
    assert_eq!(steps.last(), Some(&Step::Persist(l)));
}

#[test]
fn a_renewal_with_the_same_lease_touches_nothing_in_the_kernel() {
    let old = lease("203.0.113.10/24", Some("203.0.113.1"), 0);
    let new = lease("203.0.113.10/24", Some("203.0.113.1"), 60);
    let steps = decide("wan", Some(&old), &Event::Acked(new.clone()));
    assert_eq!(steps, [Step::Persist(new)]);
}

#[test]
fn a_new_address_after_a_nak_replaces_the_old_one_and_its_route() {
    let old = lease("203.0.113.10/24", Some("203.0.113.1"), 0);
    let new = lease("198.51.100.20/24", Some("198.51.100.1"), 70);
    let steps = decide("wan", Some(&old), &Event::Acked(new));
    assert_eq!(
        kernel(&steps),
        [
            "route del via 203.0.113.1",
            "del 203.0.113.10/24",
            "add 198.51.100.20/24",
            "route add via 198.51.100.1"
        ]
    );
}

#[test]
fn a_changed_router_only_replaces_the_route() {
    let old = lease("203.0.113.10/24", Some("203.0.113.1"), 0);
    let new = lease("203.0.113.10/24", Some("203.0.113.254"), 60);
    let steps = decide("wan", Some(&old), &Event::Acked(new));
    assert_eq!(
        kernel(&steps),
        ["route del via 203.0.113.1", "route add via 203.0.113.254"]
    );
}

#[test]
fn expiry_or_nak_removes_route_address_and_dns() {
    let old = lease("203.0.113.10/24", Some("203.0.113.1"), 0);
    let steps = decide("wan", Some(&old), &Event::Lost);
    assert_eq!(
        kernel(&steps),
        ["route del via 203.0.113.1", "del 203.0.113.10/24"]
    );
    assert_eq!(steps.last(), Some(&Step::WriteDns(vec![])));
    // Nothing bound: nothing to undo.
    assert!(decide("wan", None, &Event::Lost).is_empty());
}

#[test]
fn stop_releases_before_removing() {
    let old = lease("203.0.113.10/24", None, 0);
    let steps = decide("wan", Some(&old), &Event::Stop);
    assert_eq!(steps.first(), Some(&Step::Release(old.clone())));
    assert_eq!(kernel(&steps), ["del 203.0.113.10/24"]);
    assert!(decide("wan", None, &Event::Stop).is_empty());
}

#[test]
fn the_stored_lease_names_the_address_to_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(files::load_lease(dir.path(), "wan"), None);
    let l = lease("203.0.113.10/24", Some("203.0.113.1"), 5);
    files::store_lease(dir.path(), "wan", &l).unwrap();
    let back = files::load_lease(dir.path(), "wan");
    assert_eq!(back.as_ref(), Some(&l));
    assert_eq!(
        requested_at_start(back.as_ref()),
        Some(Ipv4Addr::new(203, 0, 113, 10))
    );
    // Another link's file is not this link's lease; a damaged one is ignored.
    assert_eq!(files::load_lease(dir.path(), "wan2"), None);
    std::fs::write(files::lease_path(dir.path(), "wan"), "{").unwrap();
    assert_eq!(files::load_lease(dir.path(), "wan"), None);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn the_dns_file_keeps_other_links_and_drops_a_lost_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/wan-dns.json");
    let entry = |ip: [u8; 4]| files::LinkDns {
        servers: vec![Ipv4Addr::from(ip)],
        expires: 7,
    };
    files::update_dns(&path, "wan", Some(entry([192, 0, 2, 53]))).unwrap();
    files::update_dns(&path, "wan2", Some(entry([192, 0, 2, 54]))).unwrap();
    files::update_dns(&path, "wan", None).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"version": 1, "links": {"wan2": {"servers": ["192.0.2.54"], "expires": 7}}})
    );
}

/// An Ethernet frame of `ethertype` with `payload` after the 14-byte header.
fn frame(ethertype: [u8; 2], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 12];
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header of `ihl` words with protocol `proto`, then UDP ports.
fn ipv4(ihl: u8, proto: u8, src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut p = vec![0u8; usize::from(ihl) * 4];
    p[0] = 0x40 | ihl;
    p[9] = proto;
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

#[test]
fn smoltcp_sees_only_dhcp_replies_and_arp_replies() {
    use super::client::wanted;
    // DHCP replies, also behind IP options.
    assert!(wanted(&frame([8, 0], &ipv4(5, 17, 67, 68))));
    assert!(wanted(&frame([8, 0], &ipv4(7, 17, 67, 68))));
    // The kernel's: other UDP, TCP, our own requests, ARP requests, IPv6, runts.
    assert!(!wanted(&frame([8, 0], &ipv4(5, 17, 53, 53))));
    assert!(!wanted(&frame([8, 0], &ipv4(5, 6, 67, 68))));
    assert!(!wanted(&frame([8, 0], &ipv4(5, 17, 68, 67))));
    let arp = |op: u8| {
        let mut p = vec![0u8; 28];
        p[7] = op;
        frame([8, 6], &p)
    };
    assert!(wanted(&arp(2)));
    assert!(!wanted(&arp(1)));
    assert!(!wanted(&frame([0x86, 0xdd], &ipv4(5, 17, 67, 68))));
    assert!(!wanted(&frame([8, 0], &[0x45])));
    assert!(!wanted(&[0u8; 5]));
}

#[test]
fn the_links_with_ipv4_dhcp_get_a_client() {
    let cfg = appliance::load_str(
        r#"version = 1
[interfaces.wan]
device = "eth0"
ipv4 = "dhcp"

[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24"]
"#,
    )
    .unwrap();
    assert_eq!(super::cli::dhcp_links(&cfg), ["wan"]);
}

/// After a rebind another server's ACK renews the lease, but smoltcp's config keeps the
/// first server: the lease (and the DHCPRELEASE) must name the server of the ACK.
#[test]
fn a_lease_names_the_server_of_its_ack_not_the_first_one() {
    use smoltcp::socket::dhcpv4::{Config, ServerInfo};
    use smoltcp::wire::{
        DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, Ipv4Cidr,
    };

    let first = Ipv4Addr::new(203, 0, 113, 1);
    let second = Ipv4Addr::new(203, 0, 113, 2);
    let address = Ipv4Addr::new(203, 0, 113, 106);
    let ack = DhcpRepr {
        message_type: DhcpMessageType::Ack,
        transaction_id: 7,
        secs: 0,
        client_hardware_address: EthernetAddress([2, 0, 0, 0, 0, 1]),
        client_ip: address,
        your_ip: address,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: Some(second),
        subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(second),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: Some(120),
        // smoltcp emits T1 and T2 only as extra options.
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[
            DhcpOption {
                kind: 58,
                data: &8u32.to_be_bytes(),
            },
            DhcpOption {
                kind: 59,
                data: &12u32.to_be_bytes(),
            },
        ],
    };
    let mut buf = vec![0u8; ack.buffer_len()];
    ack.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
        .unwrap();
    let config = Config {
        server: ServerInfo {
            address: first,
            identifier: first,
        },
        address: Ipv4Cidr::new(address, 24),
        router: Some(second),
        dns_servers: Default::default(),
        packet: Some(DhcpPacket::new_unchecked(&buf[..])),
    };
    let lease = super::client::lease_of(&config, 1000);
    assert_eq!(lease.server, second);
    assert_eq!(
        (lease.t1_secs, lease.t2_secs, lease.lease_secs),
        (8, 12, 120)
    );
    assert_eq!(lease.address, "203.0.113.106/24".parse().unwrap());

    // Without the packet (no receive buffer) the config's server is all there is.
    let config = Config {
        packet: None,
        ..config
    };
    assert_eq!(super::client::lease_of(&config, 1000).server, first);
}
