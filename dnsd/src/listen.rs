//! Where plain DNS listens for a config: `dns.listen`, or the LAN side by default. Used at
//! start and at each apply, which rebinds the listeners when the answer changes.

use std::net::{IpAddr, SocketAddr};

use appliance::Config;
use appliance::model::Addressed as _;
use appliance::types::Listen;

/// The addresses of a link as the config gives them (static addresses only).
fn link_addresses(cfg: &Config, name: &str) -> Vec<IpAddr> {
    let addrs = cfg
        .interfaces
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .map(|(_, i)| i.addresses())
        .or_else(|| {
            cfg.vlans
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v.addresses())
        })
        .or_else(|| {
            cfg.bridges
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, b)| b.addresses())
        })
        .or_else(|| {
            cfg.wireguard
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, w)| w.addresses.as_slice())
        })
        .unwrap_or(&[]);
    addrs.iter().map(|c| c.addr()).collect()
}

/// Where to listen: the config's `listen` entries, or the LAN side (every link with a DHCP
/// server) when it has none.
pub fn addresses(cfg: &Config) -> Vec<SocketAddr> {
    let port = cfg.dns.port.get();
    let links: Vec<String> = if cfg.dns.listen.is_empty() {
        cfg.dhcp.keys().map(|k| k.as_str().to_owned()).collect()
    } else {
        Vec::new()
    };
    let mut out: Vec<SocketAddr> = links
        .iter()
        .flat_map(|l| link_addresses(cfg, l))
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    for l in &cfg.dns.listen {
        match l {
            Listen::Addr(a) => out.push(*a),
            Listen::Interface(i) => out.extend(
                link_addresses(cfg, i.as_str())
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port)),
            ),
        }
    }
    out.sort();
    out.dedup();
    out
}
