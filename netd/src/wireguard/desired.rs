//! The desired tunnels from the config: keys loaded (or generated), endpoints resolved.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::Path;

use appliance::Config;
use appliance::types::Host;

use super::keys::{self, KeyError};
use super::state::{DEFAULT_MTU, DesiredDevice, Peer, PublicKey};

/// Turns `host:port` into addresses. The real one asks the system resolver.
pub trait Resolve {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver (getaddrinfo: /etc/hosts, then dnsd).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// The tunnels of `cfg`. `resolve_name(interface, peer key)` says whether a peer's DNS
/// endpoint is looked up now; a name left unresolved (or that does not resolve) leaves the
/// kernel's endpoint as it is.
pub fn desired(
    cfg: &Config,
    state_dir: &Path,
    resolver: &dyn Resolve,
    resolve_name: &dyn Fn(&str, &PublicKey) -> bool,
) -> Result<Vec<DesiredDevice>, KeyError> {
    desired_with(cfg, state_dir, resolver, resolve_name, true)
}

/// [`desired`]; with `write_keys` false a key still to be generated is not written (see
/// [`keys::private_key_with`]): for plans and checks, which change nothing.
pub fn desired_with(
    cfg: &Config,
    state_dir: &Path,
    resolver: &dyn Resolve,
    resolve_name: &dyn Fn(&str, &PublicKey) -> bool,
    write_keys: bool,
) -> Result<Vec<DesiredDevice>, KeyError> {
    let mut out = Vec::new();
    for (ifname, w) in &cfg.wireguard {
        let name = ifname.as_str();
        let configured = w.private_key_file.as_ref().map(|p| Path::new(p.as_str()));
        let private_key = keys::private_key_with(name, configured, state_dir, write_keys)?;
        let mut peers = Vec::new();
        for (peer_name, p) in &w.peers {
            if !p.enabled {
                continue;
            }
            let public_key = PublicKey(*p.public_key.bytes());
            let preshared_key = match &p.preshared_key_file {
                Some(f) => Some(keys::read_key(
                    Path::new(f.as_str()),
                    &format!("wireguard.{name}.peers.{peer_name}.preshared_key_file"),
                )?),
                None => None,
            };
            let endpoint = match &p.endpoint {
                None => None,
                Some(e) => match &e.host {
                    Host::Ip(ip) => Some(SocketAddr::new(*ip, e.port.get())),
                    Host::Name(host) if resolve_name(name, &public_key) => {
                        match resolver.resolve(host.as_str(), e.port.get()) {
                            Ok(addrs) if !addrs.is_empty() => {
                                // IPv4 first: most home uplinks have no IPv6 route.
                                addrs
                                    .iter()
                                    .find(|a| a.is_ipv4())
                                    .or(addrs.first())
                                    .copied()
                            }
                            Ok(_) => {
                                tracing::warn!(interface = name, peer = %peer_name, endpoint = %e, "the endpoint's name has no address; will retry");
                                None
                            }
                            Err(err) => {
                                tracing::warn!(interface = name, peer = %peer_name, endpoint = %e, error = %err, "cannot resolve the endpoint; will retry");
                                None
                            }
                        }
                    }
                    Host::Name(_) => None,
                },
            };
            let mut allowed_ips: Vec<_> = p.allowed_ips.iter().map(|c| c.network()).collect();
            allowed_ips.sort();
            allowed_ips.dedup();
            peers.push(Peer {
                public_key,
                preshared_key,
                endpoint,
                keepalive: p
                    .persistent_keepalive
                    .map(|d| u16::try_from(d.as_secs()).unwrap_or(u16::MAX))
                    .unwrap_or(0),
                allowed_ips,
            });
        }
        peers.sort_by_key(|p| p.public_key);
        out.push(DesiredDevice {
            name: name.to_owned(),
            private_key,
            listen_port: w.listen_port.map(|p| p.get()),
            mtu: w.mtu.map(|m| u32::from(m.get())).unwrap_or(DEFAULT_MTU),
            addresses: w.addresses.iter().map(|c| c.net()).collect(),
            peers,
        });
    }
    Ok(out)
}
