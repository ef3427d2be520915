#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use super::*;

fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn peer(n: u8, ip: &str) -> Peer {
    Peer {
        public_key: key(n),
        preshared_key: None,
        endpoint: None,
        keepalive: 0,
        allowed_ips: vec![net(ip)],
    }
}

fn wg0(peers: Vec<Peer>) -> DesiredDevice {
    DesiredDevice {
        name: "wg0".into(),
        private_key: Secret([7; 32]),
        listen_port: Some(51820),
        mtu: DEFAULT_MTU,
        addresses: vec![net("10.8.0.1/24")],
        peers,
    }
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

/// Plans and applies on the fake; returns the plan.
fn converge(fake: &mut FakeWg, desired: &[DesiredDevice], now: SystemTime) -> Vec<Action> {
    let observed = fake.observe().unwrap();
    let actions = plan(desired, &observed, now).unwrap();
    let mut wg = Wireguard::new(std::mem::take(fake));
    wg.apply(&actions).unwrap();
    *fake = wg.kernel;
    actions
}

#[test]
fn a_new_tunnel_is_created_keyed_peered_addressed_and_up_then_a_second_plan_is_empty() {
    let mut fake = FakeWg::default();
    let desired = [wg0(vec![peer(1, "10.8.0.2/32"), peer(2, "10.8.0.3/32")])];
    let actions = converge(&mut fake, &desired, t(0));
    assert!(matches!(actions[0], Action::CreateLink { ref name, mtu: 1420 } if name == "wg0"));
    assert!(matches!(actions[1], Action::SetPrivateKey { .. }));
    assert!(matches!(
        actions[2],
        Action::SetListenPort {
            port: Some(51820),
            ..
        }
    ));
    assert!(matches!(
        actions.last(),
        Some(Action::SetUp { up: true, .. })
    ));
    let d = fake.state.device("wg0").unwrap();
    assert!(d.up);
    assert_eq!(d.peers.len(), 2);
    assert_eq!(d.addresses, vec![net("10.8.0.1/24")]);
    assert_eq!(
        plan(&desired, &fake.observe().unwrap(), t(1)).unwrap(),
        vec![]
    );
}

#[test]
fn peers_are_added_changed_and_removed_without_touching_the_link_or_other_peers() {
    let mut fake = FakeWg::default();
    converge(
        &mut fake,
        &[wg0(vec![peer(1, "10.8.0.2/32"), peer(2, "10.8.0.3/32")])],
        t(0),
    );
    fake.handshake("wg0", 0, t(5));
    let mut changed = peer(2, "10.8.0.3/32");
    changed.allowed_ips.push(net("192.168.50.0/24"));
    changed.keepalive = 25;
    let desired = [wg0(vec![
        peer(1, "10.8.0.2/32"),
        changed.clone(),
        peer(3, "10.8.0.4/32"),
    ])];
    let actions = converge(&mut fake, &desired, t(10));
    assert_eq!(actions.len(), 2, "{actions:#?}");
    assert!(actions.iter().all(Action::is_device_config));
    assert!(matches!(&actions[0], Action::UpdatePeer { peer, .. } if *peer == changed));
    assert!(matches!(&actions[1], Action::AddPeer { peer, .. } if peer.public_key == key(3)));
    // Peer 1's session is untouched.
    let d = fake.state.device("wg0").unwrap();
    assert_eq!(d.peer(&key(1)).unwrap().last_handshake, Some(t(5)));

    let actions = converge(&mut fake, &[wg0(vec![peer(1, "10.8.0.2/32")])], t(20));
    assert_eq!(actions.len(), 2);
    assert!(
        actions
            .iter()
            .all(|a| matches!(a, Action::RemovePeer { .. }))
    );
    let d = fake.state.device("wg0").unwrap();
    assert_eq!(d.peers.len(), 1);
    assert_eq!(d.peer(&key(1)).unwrap().last_handshake, Some(t(5)));
}

#[test]
fn removals_come_before_additions_so_an_allowed_ip_can_move_between_peers() {
    let mut fake = FakeWg::default();
    converge(&mut fake, &[wg0(vec![peer(1, "10.8.0.2/32")])], t(0));
    let actions = converge(&mut fake, &[wg0(vec![peer(2, "10.8.0.2/32")])], t(1));
    assert!(matches!(actions[0], Action::RemovePeer { .. }));
    assert!(matches!(actions[1], Action::AddPeer { .. }));
}

#[test]
fn an_endpoint_is_rewritten_only_when_the_peer_has_had_no_handshake_for_two_minutes() {
    let configured: SocketAddr = "203.0.113.7:51820".parse().unwrap();
    let roamed: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    let mut p = peer(1, "10.8.0.2/32");
    p.endpoint = Some(configured);
    let desired = [wg0(vec![p])];
    let mut fake = FakeWg::default();
    converge(&mut fake, &desired, t(0));
    // The peer roamed, and shook hands at t=100.
    fake.state.devices[0].peers[0].peer.endpoint = Some(roamed);
    fake.handshake("wg0", 0, t(100));

    let mut at = |now| plan(&desired, &fake.observe().unwrap(), now).unwrap();
    assert_eq!(
        at(t(100)),
        vec![],
        "a live session keeps its roamed endpoint"
    );
    assert_eq!(
        at(t(220)),
        vec![],
        "exactly 2 minutes is not over 2 minutes"
    );
    let stale = at(t(221));
    assert!(
        matches!(&stale[..], [Action::UpdatePeer { peer, .. }] if peer.endpoint == Some(configured)),
        "{stale:#?}"
    );
}

#[test]
fn resolve_due_decides_on_the_last_handshake_with_a_fake_clock() {
    assert!(resolve_due(None, t(0)));
    assert!(!resolve_due(Some(t(0)), t(0)));
    assert!(!resolve_due(Some(t(0)), t(120)));
    assert!(resolve_due(Some(t(0)), t(121)));
    // A clock stepped back leaves the handshake in the future: fresh.
    assert!(!resolve_due(Some(t(50)), t(0)));
}

#[test]
fn a_name_held_by_a_foreign_link_is_refused() {
    let observed = Observed {
        devices: vec![],
        foreign: vec!["wg0".into()],
    };
    assert_eq!(
        plan(&[wg0(vec![])], &observed, t(0)),
        Err(PlanError::NameTaken("wg0".into()))
    );
}

#[test]
fn a_tunnel_left_out_of_the_config_is_deleted_and_foreign_links_are_never_touched() {
    let mut fake = FakeWg::default();
    fake.state.foreign.push("eth0".into());
    converge(&mut fake, &[wg0(vec![peer(1, "10.8.0.2/32")])], t(0));
    let actions = converge(&mut fake, &[], t(1));
    assert!(matches!(&actions[..], [Action::DeleteLink { name, .. }] if name == "wg0"));
    assert!(fake.state.devices.is_empty());
    assert_eq!(fake.state.foreign, vec!["eth0".to_string()]);
}

#[test]
fn a_failed_apply_undoes_every_completed_step() {
    let mut fake = FakeWg::default();
    converge(&mut fake, &[wg0(vec![peer(1, "10.8.0.2/32")])], t(0));
    fake.handshake("wg0", 0, t(1));
    let before = fake.state.clone();
    let mut desired = wg0(vec![peer(2, "10.8.0.3/32"), peer(3, "10.8.0.4/32")]);
    desired.mtu = 1380;
    desired.addresses = vec![net("10.9.0.1/24")];
    let actions = plan(&[desired], &fake.observe().unwrap(), t(2)).unwrap();
    let n = batches(&actions).len();
    // Fail the address step (the peers' batch and the MTU are done by then).
    let fail = batches(&actions)
        .iter()
        .position(|b| matches!(b[0], Action::AddAddress { .. }))
        .unwrap();
    assert!(fail > 1 && fail < n);
    fake.batches.clear();
    fake.fail_at = Some(fail);
    let mut wg = Wireguard::new(fake);
    let err = wg.apply(&actions).unwrap_err();
    assert!(err.to_string().contains("Injected failure"), "{err}");
    assert!(err.to_string().contains("were undone"), "{err}");
    assert!(
        !err.to_string().contains("except"),
        "every undo step worked: {err}"
    );
    let mut after = wg.kernel.observe().unwrap();
    after.devices[0].peers.iter_mut().for_each(|p| {
        // Re-added by the undo: the fake, like the kernel, starts a new peer without a session.
        p.last_handshake = Some(t(1));
    });
    assert_eq!(after, before);
}

#[test]
fn a_deleted_tunnel_is_recreated_by_its_undo() {
    let mut fake = FakeWg::default();
    converge(&mut fake, &[wg0(vec![peer(1, "10.8.0.2/32")])], t(0));
    let before = fake.observe().unwrap();
    let actions = plan(&[], &before, t(1)).unwrap();
    let undo: Vec<Action> = actions.iter().rev().flat_map(Action::inverse).collect();
    let mut wg = Wireguard::new(fake);
    wg.apply(&actions).unwrap();
    wg.apply(&undo).unwrap();
    assert_eq!(wg.kernel.observe().unwrap(), before);
}

#[test]
fn batches_group_device_settings_of_one_interface_and_keep_link_steps_single() {
    let desired = [wg0(vec![peer(1, "10.8.0.2/32"), peer(2, "10.8.0.3/32")])];
    let actions = plan(&desired, &Observed::default(), t(0)).unwrap();
    let sizes: Vec<usize> = batches(&actions).iter().map(|b| b.len()).collect();
    // create | key, port, 2 peers | address | up
    assert_eq!(sizes, vec![1, 4, 1, 1]);
}

#[test]
fn no_key_reaches_debug_or_display() {
    let desired = wg0(vec![Peer {
        preshared_key: Some(Secret([9; 32])),
        ..peer(1, "10.8.0.2/32")
    }]);
    let actions = plan(&[desired], &Observed::default(), t(0)).unwrap();
    let private = wireguard_control::Key([7; 32]).to_base64();
    let psk = wireguard_control::Key([9; 32]).to_base64();
    for a in &actions {
        for text in [format!("{a}"), format!("{a:?}")] {
            assert!(!text.contains(&private) && !text.contains(&psk), "{text}");
        }
    }
}

#[test]
fn a_missing_key_is_generated_once_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("wireguard");
    let k1 = keys::private_key("wg0", None, &state).unwrap();
    let file = state.join("wg0.key");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let k2 = keys::private_key("wg0", None, &state).unwrap();
    assert_eq!(k1, k2);
    // Only the key file is left behind, no temporary file.
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1);
}

#[test]
fn a_malformed_or_exposed_key_file_is_refused_naming_the_file_and_the_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.key");
    keys::write_key(&file, "not a key").unwrap();
    let err = keys::private_key("wg0", Some(&file), Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("wireguard.wg0.private_key_file"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("does not hold a WireGuard key"), "{err}");

    keys::write_key(
        &file,
        &wireguard_control::Key::generate_private().to_base64(),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = keys::read_key(&file, "k").unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");

    let err = keys::read_key(&dir.path().join("absent.key"), "k")
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.key"), "{err}");
}

struct FakeResolver;

impl Resolve for FakeResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match host {
            "vpn.example.net" => Ok(vec![
                SocketAddr::new("2001:db8::1".parse().unwrap(), port),
                SocketAddr::new("203.0.113.7".parse().unwrap(), port),
            ]),
            _ => Err(std::io::Error::other("no such name")),
        }
    }
}

const CONFIG: &str = r#"
version = 1
[wireguard.wg0]
listen_port = 51820
addresses = ["10.8.0.1/24"]

[wireguard.wg0.peers.office]
public_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
allowed_ips = ["10.8.0.2/32", "192.168.50.0/24"]
endpoint = "vpn.example.net:51820"
persistent_keepalive = "25s"

[wireguard.wg0.peers.gone]
public_key = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
allowed_ips = ["10.8.0.3/32"]
endpoint = "nowhere.example.net:51820"

[wireguard.wg0.peers.off]
public_key = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="
allowed_ips = ["10.8.0.4/32"]
enabled = false
"#;

#[test]
fn the_config_becomes_desired_tunnels_with_names_resolved_ipv4_first() {
    let cfg = appliance::load_str(CONFIG).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = desired(&cfg, dir.path(), &FakeResolver, &|_, _| true).unwrap();
    assert_eq!(d.len(), 1);
    let wg = &d[0];
    assert_eq!(wg.listen_port, Some(51820));
    assert_eq!(wg.mtu, 1420);
    assert_eq!(wg.peers.len(), 2, "the disabled peer is left out");
    assert_eq!(wg.peers[0].public_key, key(1));
    assert_eq!(
        wg.peers[0].endpoint,
        Some("203.0.113.7:51820".parse().unwrap())
    );
    assert_eq!(wg.peers[0].keepalive, 25);
    assert_eq!(
        wg.peers[0].allowed_ips,
        vec![net("10.8.0.2/32"), net("192.168.50.0/24")]
    );
    // A name that does not resolve leaves the endpoint to the kernel (and a later retry).
    assert_eq!(wg.peers[1].endpoint, None);
    assert!(dir.path().join("wg0.key").exists());

    // A name not due for resolution is not looked up.
    let d = desired(&cfg, dir.path(), &FakeResolver, &|_, _| false).unwrap();
    assert_eq!(d[0].peers[0].endpoint, None);
    assert_eq!(
        d[0].private_key, wg.private_key,
        "the generated key is kept"
    );
}

#[test]
fn a_peer_batch_that_fails_half_way_is_undone_with_the_steps_before_it() {
    let mut fake = FakeWg::default();
    converge(&mut fake, &[wg0(vec![peer(1, "10.8.0.2/32")])], t(0));
    let before = fake.observe().unwrap();
    let mut desired = wg0(vec![
        peer(1, "10.8.0.2/32"),
        peer(2, "10.8.0.3/32"),
        peer(3, "10.8.0.4/32"),
    ]);
    desired.mtu = 1380;
    let actions = plan(&[desired], &before, t(1)).unwrap();
    // SetMtu, then one batch with both new peers: fail after the first peer went in.
    assert_eq!(batches(&actions).len(), 2);
    fake.batches.clear();
    fake.fail_at = Some(1);
    let mut wg = Wireguard::new(fake);
    let err = wg.apply(&actions).unwrap_err().to_string();
    assert!(!err.contains("except"), "{err}");
    assert_eq!(wg.kernel.observe().unwrap(), before);
}
