//! Where the API listens and what its certificate names: the config's `api.listen`, or the
//! LAN side (the static addresses of every link with a DHCP server) when it is empty, so
//! the API is never offered on the WAN by default.

use std::net::{IpAddr, SocketAddr};

use crate::Config;
use crate::types::Listen;

/// The static addresses the config gives a link (interface, VLAN, bridge or tunnel).
fn link_addresses(cfg: &Config, name: &str) -> Vec<IpAddr> {
    let find = |k: &str| k == name;
    let addrs = cfg
        .interfaces
        .iter()
        .find(|(k, _)| find(k.as_str()))
        .map(|(_, i)| i.addresses.as_slice())
        .or_else(|| {
            cfg.vlans
                .iter()
                .find(|(k, _)| find(k.as_str()))
                .map(|(_, v)| v.addresses.as_slice())
        })
        .or_else(|| {
            cfg.bridges
                .iter()
                .find(|(k, _)| find(k.as_str()))
                .map(|(_, b)| b.addresses.as_slice())
        })
        .or_else(|| {
            cfg.wireguard
                .iter()
                .find(|(k, _)| find(k.as_str()))
                .map(|(_, w)| w.addresses.as_slice())
        })
        .unwrap_or(&[]);
    addrs.iter().map(|c| c.addr()).collect()
}

/// The sockets to bind, sorted, without duplicates.
pub fn listen_addresses(cfg: &Config) -> Vec<SocketAddr> {
    let port = cfg.api.port.get();
    let on_link = |name: &str| {
        link_addresses(cfg, name)
            .into_iter()
            .map(move |ip| SocketAddr::new(ip, port))
    };
    let mut out: Vec<SocketAddr> = if cfg.api.listen.is_empty() {
        cfg.dhcp.keys().flat_map(|k| on_link(k.as_str())).collect()
    } else {
        cfg.api
            .listen
            .iter()
            .flat_map(|l| match l {
                Listen::Addr(a) => vec![*a],
                Listen::Interface(i) => on_link(i.as_str()).collect(),
            })
            .collect()
    };
    out.sort();
    out.dedup();
    out
}

/// Names for a new certificate: `host.domain` first (the subject), then `host`.
pub fn cert_names(cfg: &Config) -> Vec<String> {
    let host = cfg.system.hostname.as_str();
    vec![
        format!("{host}.{}", cfg.system.domain.as_str()),
        host.to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_listens_on_the_lan_only() {
        let cfg = crate::default_config().unwrap();
        let addrs = listen_addresses(&cfg);
        assert_eq!(addrs, ["192.168.1.1:443".parse::<SocketAddr>().unwrap()]);
        assert_eq!(cert_names(&cfg)[1], cfg.system.hostname.as_str());
    }

    #[test]
    fn explicit_listeners_replace_the_default() {
        let mut cfg = crate::default_config().unwrap();
        cfg.api.listen = vec![
            Listen::parse("10.0.0.1:8443").unwrap(),
            Listen::parse("lan").unwrap(),
        ];
        let addrs: Vec<String> = listen_addresses(&cfg)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(addrs, ["10.0.0.1:8443", "192.168.1.1:443"]);
    }
}
