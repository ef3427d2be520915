//! The pure planner: desired tunnels and what the kernel has in, ordered steps out.

use std::collections::BTreeSet;
use std::time::SystemTime;

use ipnet::IpNet;

use super::action::Action;
use super::state::{DesiredDevice, Observed, ObservedDevice, ObservedPeer, Peer, resolve_due};

/// A config the kernel cannot be brought to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "wireguard.{0}: a link named {0} exists and netd did not create it; rename the tunnel or remove that link"
    )]
    NameTaken(String),
}

/// Plans the steps from `observed` to `desired`. `now` decides whether a peer's endpoint
/// may be rewritten (see [`resolve_due`]).
pub fn plan(
    desired: &[DesiredDevice],
    observed: &Observed,
    now: SystemTime,
) -> Result<Vec<Action>, PlanError> {
    let mut actions = Vec::new();
    for d in desired {
        if observed.foreign.contains(&d.name) {
            return Err(PlanError::NameTaken(d.name.clone()));
        }
        match observed.device(&d.name) {
            Some(o) => plan_device(d, o, now, &mut actions),
            None => plan_new(d, &mut actions),
        }
    }
    for o in &observed.devices {
        if !desired.iter().any(|d| d.name == o.name) {
            actions.push(Action::DeleteLink {
                name: o.name.clone(),
                previous: Box::new(o.clone()),
            });
        }
    }
    Ok(actions)
}

fn plan_new(d: &DesiredDevice, actions: &mut Vec<Action>) {
    let name = || d.name.clone();
    actions.push(Action::CreateLink {
        name: name(),
        mtu: d.mtu,
    });
    actions.push(Action::SetPrivateKey {
        name: name(),
        key: d.private_key.clone(),
        previous: None,
    });
    if let Some(port) = d.listen_port {
        actions.push(Action::SetListenPort {
            name: name(),
            port: Some(port),
            previous: 0,
        });
    }
    actions.extend(d.peers.iter().map(|p| Action::AddPeer {
        name: name(),
        peer: p.clone(),
    }));
    actions.extend(d.addresses.iter().map(|net| Action::AddAddress {
        name: name(),
        net: *net,
    }));
    actions.push(Action::SetUp {
        name: name(),
        up: true,
    });
}

fn plan_device(d: &DesiredDevice, o: &ObservedDevice, now: SystemTime, actions: &mut Vec<Action>) {
    let name = || d.name.clone();
    if o.mtu != d.mtu {
        actions.push(Action::SetMtu {
            name: name(),
            mtu: d.mtu,
            previous: o.mtu,
        });
    }
    if o.private_key.as_ref() != Some(&d.private_key) {
        actions.push(Action::SetPrivateKey {
            name: name(),
            key: d.private_key.clone(),
            previous: o.private_key.clone(),
        });
    }
    if let Some(port) = d.listen_port
        && port != o.listen_port
    {
        actions.push(Action::SetListenPort {
            name: name(),
            port: Some(port),
            previous: o.listen_port,
        });
    }
    // Removals first, so that allowed IPs moving from one peer to another never overlap.
    for op in &o.peers {
        if !d.peers.iter().any(|p| p.public_key == op.peer.public_key) {
            actions.push(Action::RemovePeer {
                name: name(),
                peer: op.peer.clone(),
            });
        }
    }
    for p in &d.peers {
        match o.peer(&p.public_key) {
            None => actions.push(Action::AddPeer {
                name: name(),
                peer: p.clone(),
            }),
            Some(op) => {
                if let Some(next) = peer_change(p, op, now) {
                    actions.push(Action::UpdatePeer {
                        name: name(),
                        peer: next,
                        previous: op.peer.clone(),
                    });
                }
            }
        }
    }
    let want: BTreeSet<IpNet> = d.addresses.iter().copied().collect();
    let have: BTreeSet<IpNet> = o.addresses.iter().copied().collect();
    for net in have.difference(&want) {
        actions.push(Action::RemoveAddress {
            name: name(),
            net: *net,
        });
    }
    for net in want.difference(&have) {
        actions.push(Action::AddAddress {
            name: name(),
            net: *net,
        });
    }
    if !o.up {
        actions.push(Action::SetUp {
            name: name(),
            up: true,
        });
    }
}

/// The peer to set when `observed` differs from `desired`; `None` when it matches.
///
/// The endpoint is special: WireGuard moves it to wherever authenticated packets come
/// from (roaming), so a peer with a live session keeps the kernel's endpoint, and only a
/// peer with no handshake for [`super::STALE_AFTER`] gets the configured (re-resolved) one.
fn peer_change(desired: &Peer, observed: &ObservedPeer, now: SystemTime) -> Option<Peer> {
    let have = &observed.peer;
    let endpoint = match desired.endpoint {
        Some(e) if have.endpoint != Some(e) && resolve_due(observed.last_handshake, now) => Some(e),
        _ => None,
    };
    let same = have.allowed_ips == desired.allowed_ips
        && have.keepalive == desired.keepalive
        && have.preshared_key == desired.preshared_key
        && endpoint.is_none();
    if same {
        return None;
    }
    Some(Peer {
        endpoint,
        ..desired.clone()
    })
}
