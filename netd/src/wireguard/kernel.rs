//! The real adapter: WireGuard devices through `wireguard-control`'s kernel backend
//! (generic netlink), the link around them (alias, MTU, addresses, up) through the links
//! code's rtnetlink adapter.

use std::str::FromStr as _;

use ipnet::IpNet;
use wireguard_control::{
    AllowedIp, Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder,
};

use super::action::Action;
use super::adapter::{WgError, WgKernel};
use super::state::{Observed, ObservedDevice, ObservedPeer, Peer, PublicKey, Secret, WG_ALIAS};
use crate::links::{self, Netlink as _, Rtnetlink};

/// Kernel WireGuard in netd's own network namespace.
#[derive(Debug)]
pub struct KernelWg {
    rtnl: Rtnetlink,
}

impl KernelWg {
    pub fn new() -> Result<Self, WgError> {
        let rtnl = Rtnetlink::new().map_err(|e| WgError::new(e.operation, e.message))?;
        Ok(Self { rtnl })
    }

    fn link(&mut self, action: links::Action, op: &Action) -> Result<(), WgError> {
        self.rtnl
            .execute(&action)
            .map_err(|e| WgError::new(op.to_string(), e.to_string()))
    }
}

fn ifname(name: &str, op: &Action) -> Result<InterfaceName, WgError> {
    InterfaceName::from_str(name)
        .map_err(|e| WgError::new(op.to_string(), format!("bad interface name: {e}")))
}

fn builder(peer: &Peer) -> PeerConfigBuilder {
    let mut b = PeerConfigBuilder::new(&Key(peer.public_key.0)).replace_allowed_ips();
    for net in &peer.allowed_ips {
        b = b.add_allowed_ip(net.addr(), net.prefix_len());
    }
    b = match &peer.preshared_key {
        Some(k) => b.set_preshared_key(Key(k.0)),
        None => b.unset_preshared_key(),
    };
    if let Some(e) = peer.endpoint {
        b = b.set_endpoint(e);
    }
    // 0 switches keepalive off.
    b.set_persistent_keepalive_interval(peer.keepalive)
}

fn net_of(ip: &AllowedIp) -> Option<IpNet> {
    IpNet::new(ip.address, ip.cidr).ok().map(|n| n.trunc())
}

fn observe_device(
    link: &links::Link,
    observed: &links::Observed,
) -> Result<ObservedDevice, WgError> {
    let op = format!("wg show {}", link.name);
    let name = InterfaceName::from_str(&link.name)
        .map_err(|e| WgError::new(op.clone(), format!("bad interface name: {e}")))?;
    let dev = Device::get(&name, Backend::Kernel).map_err(|e| WgError::new(op, e.to_string()))?;
    let zero = |k: Option<Key>| k.filter(|k| k.0 != [0; 32]);
    let mut peers: Vec<ObservedPeer> = dev
        .peers
        .iter()
        .map(|p| {
            let mut allowed_ips: Vec<IpNet> =
                p.config.allowed_ips.iter().filter_map(net_of).collect();
            allowed_ips.sort();
            ObservedPeer {
                peer: Peer {
                    public_key: PublicKey(p.config.public_key.0),
                    preshared_key: zero(p.config.preshared_key.clone()).map(|k| Secret(k.0)),
                    endpoint: p.config.endpoint,
                    keepalive: p.config.persistent_keepalive_interval.unwrap_or(0),
                    allowed_ips,
                },
                last_handshake: p.stats.last_handshake_time,
                rx_bytes: p.stats.rx_bytes,
                tx_bytes: p.stats.tx_bytes,
            }
        })
        .collect();
    peers.sort_by_key(|p| p.peer.public_key);
    Ok(ObservedDevice {
        name: link.name.clone(),
        mtu: link.mtu,
        up: link.up,
        addresses: observed
            .addresses
            .iter()
            .filter(|a| a.link == link.name)
            // The kernel's own IPv6 link-local address is not netd's to remove.
            .filter(|a| !matches!(a.net, IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80))
            .map(|a| a.net)
            .collect(),
        private_key: zero(dev.private_key).map(|k| Secret(k.0)),
        public_key: zero(dev.public_key).map(|k| PublicKey(k.0)),
        listen_port: dev.listen_port.unwrap_or(0),
        peers,
    })
}

impl WgKernel for KernelWg {
    fn observe(&mut self) -> Result<Observed, WgError> {
        let links = self
            .rtnl
            .observe()
            .map_err(|e| WgError::new(e.operation, e.message))?;
        let mut out = Observed::default();
        for l in &links.links {
            if l.kind.as_deref() == Some("wireguard") && l.alias.as_deref() == Some(WG_ALIAS) {
                out.devices.push(observe_device(l, &links)?);
            } else {
                out.foreign.push(l.name.clone());
            }
        }
        Ok(out)
    }

    fn execute(&mut self, batch: &[Action]) -> Result<(), WgError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        if first.is_device_config() {
            let iface = ifname(first.link(), first)?;
            let mut update = DeviceUpdate::new();
            for a in batch {
                update = match a {
                    Action::SetPrivateKey { key, .. } => update.set_private_key(Key(key.0)),
                    Action::SetListenPort { port, .. } => update.set_listen_port(port.unwrap_or(0)),
                    Action::AddPeer { peer, .. } | Action::UpdatePeer { peer, .. } => {
                        update.add_peer(builder(peer))
                    }
                    Action::RemovePeer { peer, .. } => {
                        update.remove_peer_by_key(&Key(peer.public_key.0))
                    }
                    other => {
                        return Err(WgError::new(
                            other.to_string(),
                            "not a device setting (a batch mixes kinds of steps)",
                        ));
                    }
                };
            }
            let op = if batch.len() == 1 {
                first.to_string()
            } else {
                format!("wg set {} ({} changes)", first.link(), batch.len())
            };
            return update
                .apply(&iface, Backend::Kernel)
                .map_err(|e| WgError::new(op, e.to_string()));
        }
        for a in batch {
            match a {
                Action::CreateLink { name, mtu } => {
                    let iface = ifname(name, a)?;
                    // wireguard-control creates the link (NLM_F_EXCL; it treats EEXIST as
                    // done, so a foreign link of that name was refused by the planner).
                    DeviceUpdate::new()
                        .apply(&iface, Backend::Kernel)
                        .map_err(|e| WgError::new(a.to_string(), e.to_string()))?;
                    let marked = self
                        .link(
                            links::Action::SetAlias {
                                link: name.clone(),
                                alias: Some(WG_ALIAS.to_owned()),
                                previous: None,
                            },
                            a,
                        )
                        .and_then(|()| {
                            self.link(
                                links::Action::SetMtu {
                                    link: name.clone(),
                                    mtu: *mtu,
                                    previous: None,
                                },
                                a,
                            )
                        });
                    if let Err(e) = marked {
                        // Without its alias the link would be nobody's: this step failed, so
                        // no undo will delete it.
                        if let Ok(dev) = Device::get(&iface, Backend::Kernel)
                            && let Err(del) = dev.delete()
                        {
                            tracing::error!(link = %name, error = %del, "cannot delete a half-made WireGuard link");
                        }
                        return Err(e);
                    }
                }
                Action::DeleteLink { name, .. } => {
                    let iface = ifname(name, a)?;
                    Device::get(&iface, Backend::Kernel)
                        .and_then(Device::delete)
                        .map_err(|e| WgError::new(a.to_string(), e.to_string()))?;
                }
                Action::SetMtu {
                    name,
                    mtu,
                    previous,
                } => self.link(
                    links::Action::SetMtu {
                        link: name.clone(),
                        mtu: *mtu,
                        previous: Some(*previous),
                    },
                    a,
                )?,
                Action::SetUp { name, up } => self.link(
                    links::Action::SetUp {
                        link: name.clone(),
                        up: *up,
                    },
                    a,
                )?,
                Action::AddAddress { name, net } => self.link(
                    links::Action::AddAddress {
                        link: name.clone(),
                        net: *net,
                    },
                    a,
                )?,
                Action::RemoveAddress { name, net } => self.link(
                    links::Action::RemoveAddress {
                        link: name.clone(),
                        net: *net,
                    },
                    a,
                )?,
                other => {
                    return Err(WgError::new(
                        other.to_string(),
                        "a device setting in a batch of link steps",
                    ));
                }
            }
        }
        Ok(())
    }
}
