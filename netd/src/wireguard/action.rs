//! The steps of a WireGuard plan. Each carries what it replaces, so that a failed apply can
//! be undone by running the inverses of the steps done, newest first.

use std::fmt;

use ipnet::IpNet;

use super::state::{ObservedDevice, Peer, Secret};

/// One change to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Creates a WireGuard link, down, with the alias [`super::WG_ALIAS`] and this MTU.
    CreateLink {
        name: String,
        mtu: u32,
    },
    /// Deletes a WireGuard link netd created; `previous` is what an undo recreates.
    DeleteLink {
        name: String,
        previous: Box<ObservedDevice>,
    },
    SetMtu {
        name: String,
        mtu: u32,
        previous: u32,
    },
    SetUp {
        name: String,
        up: bool,
    },
    AddAddress {
        name: String,
        net: IpNet,
    },
    RemoveAddress {
        name: String,
        net: IpNet,
    },
    SetPrivateKey {
        name: String,
        key: Secret,
        previous: Option<Secret>,
    },
    /// `None` lets the kernel pick a port.
    SetListenPort {
        name: String,
        port: Option<u16>,
        previous: u16,
    },
    AddPeer {
        name: String,
        peer: Peer,
    },
    RemovePeer {
        name: String,
        peer: Peer,
    },
    /// Changes a peer in place: its session and counters survive.
    UpdatePeer {
        name: String,
        peer: Peer,
        previous: Peer,
    },
}

impl Action {
    /// The interface the step changes.
    pub fn link(&self) -> &str {
        match self {
            Self::CreateLink { name, .. }
            | Self::DeleteLink { name, .. }
            | Self::SetMtu { name, .. }
            | Self::SetUp { name, .. }
            | Self::AddAddress { name, .. }
            | Self::RemoveAddress { name, .. }
            | Self::SetPrivateKey { name, .. }
            | Self::SetListenPort { name, .. }
            | Self::AddPeer { name, .. }
            | Self::RemovePeer { name, .. }
            | Self::UpdatePeer { name, .. } => name,
        }
    }

    /// Steps that go to the kernel as WireGuard generic netlink (one `WG_CMD_SET_DEVICE`
    /// can carry many of them); the others are rtnetlink.
    pub fn is_device_config(&self) -> bool {
        matches!(
            self,
            Self::SetPrivateKey { .. }
                | Self::SetListenPort { .. }
                | Self::AddPeer { .. }
                | Self::RemovePeer { .. }
                | Self::UpdatePeer { .. }
        )
    }

    /// The steps that undo this one, in order.
    pub fn inverse(&self) -> Vec<Action> {
        match self {
            Self::CreateLink { name, .. } => vec![Self::DeleteLink {
                name: name.clone(),
                // Deleting a link netd just made: nothing to restore from it.
                previous: Box::new(ObservedDevice {
                    name: name.clone(),
                    mtu: 0,
                    up: false,
                    addresses: Vec::new(),
                    private_key: None,
                    public_key: None,
                    listen_port: 0,
                    peers: Vec::new(),
                }),
            }],
            Self::DeleteLink { name, previous } => {
                let mut steps = vec![Self::CreateLink {
                    name: name.clone(),
                    mtu: previous.mtu,
                }];
                if let Some(key) = &previous.private_key {
                    steps.push(Self::SetPrivateKey {
                        name: name.clone(),
                        key: key.clone(),
                        previous: None,
                    });
                }
                steps.push(Self::SetListenPort {
                    name: name.clone(),
                    port: Some(previous.listen_port),
                    previous: 0,
                });
                steps.extend(previous.peers.iter().map(|p| Self::AddPeer {
                    name: name.clone(),
                    peer: p.peer.clone(),
                }));
                steps.extend(previous.addresses.iter().map(|net| Self::AddAddress {
                    name: name.clone(),
                    net: *net,
                }));
                if previous.up {
                    steps.push(Self::SetUp {
                        name: name.clone(),
                        up: true,
                    });
                }
                steps
            }
            Self::SetMtu {
                name,
                mtu,
                previous,
            } => vec![Self::SetMtu {
                name: name.clone(),
                mtu: *previous,
                previous: *mtu,
            }],
            Self::SetUp { name, up } => vec![Self::SetUp {
                name: name.clone(),
                up: !up,
            }],
            Self::AddAddress { name, net } => vec![Self::RemoveAddress {
                name: name.clone(),
                net: *net,
            }],
            Self::RemoveAddress { name, net } => vec![Self::AddAddress {
                name: name.clone(),
                net: *net,
            }],
            Self::SetPrivateKey {
                name,
                key,
                previous,
            } => match previous {
                Some(p) => vec![Self::SetPrivateKey {
                    name: name.clone(),
                    key: p.clone(),
                    previous: Some(key.clone()),
                }],
                // A link without a key is one netd just created: its undo deletes it.
                None => Vec::new(),
            },
            Self::SetListenPort {
                name,
                port,
                previous,
            } => vec![Self::SetListenPort {
                name: name.clone(),
                port: Some(*previous),
                previous: port.unwrap_or(0),
            }],
            Self::AddPeer { name, peer } => vec![Self::RemovePeer {
                name: name.clone(),
                peer: peer.clone(),
            }],
            Self::RemovePeer { name, peer } => vec![Self::AddPeer {
                name: name.clone(),
                peer: peer.clone(),
            }],
            Self::UpdatePeer {
                name,
                peer,
                previous,
            } => vec![Self::UpdatePeer {
                name: name.clone(),
                peer: previous.clone(),
                previous: peer.clone(),
            }],
        }
    }
}

fn allowed(peer: &Peer) -> String {
    let ips: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
    ips.join(",")
}

/// In `wg`/`ip` syntax, with keys left out.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateLink { name, mtu } => write!(
                f,
                "ip link add {name} mtu {mtu} type wireguard && ip link set {name} alias '{}'",
                super::WG_ALIAS
            ),
            Self::DeleteLink { name, .. } => write!(f, "ip link del {name}"),
            Self::SetMtu { name, mtu, .. } => write!(f, "ip link set {name} mtu {mtu}"),
            Self::SetUp { name, up } => {
                write!(f, "ip link set {name} {}", if *up { "up" } else { "down" })
            }
            Self::AddAddress { name, net } => write!(f, "ip addr add {net} dev {name}"),
            Self::RemoveAddress { name, net } => write!(f, "ip addr del {net} dev {name}"),
            Self::SetPrivateKey { name, .. } => write!(f, "wg set {name} private-key (key file)"),
            Self::SetListenPort { name, port, .. } => {
                write!(f, "wg set {name} listen-port {}", port.unwrap_or(0))
            }
            Self::AddPeer { name, peer } | Self::UpdatePeer { name, peer, .. } => {
                let verb = if matches!(self, Self::AddPeer { .. }) {
                    "add"
                } else {
                    "change"
                };
                write!(
                    f,
                    "wg set {name} peer {} allowed-ips {}",
                    peer.public_key,
                    allowed(peer)
                )?;
                if let Some(e) = peer.endpoint {
                    write!(f, " endpoint {e}")?;
                }
                if peer.keepalive > 0 {
                    write!(f, " persistent-keepalive {}", peer.keepalive)?;
                }
                if peer.preshared_key.is_some() {
                    f.write_str(" preshared-key (key file)")?;
                }
                write!(f, "  # {verb}")
            }
            Self::RemovePeer { name, peer } => {
                write!(f, "wg set {name} peer {} remove", peer.public_key)
            }
        }
    }
}
