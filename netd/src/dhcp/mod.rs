//! The DHCPv4 server of the LAN links: one per `[dhcp.<link>]` section.
//!
//! - [`pool`]: the pure allocation core, a lease table with the clock as a parameter;
//! - [`packet`]: DHCP messages (decoded and encoded by `dhcproto`) in, replies out, no I/O;
//! - [`server`]: the UDP sockets (one per link, `SO_BINDTODEVICE`, port 67) and the lease
//!   file, written through [`appliance::leases`] by a writer task after changes and read
//!   at start (an unreadable one is moved aside);
//! - [`probe`]: the ICMP echo conflict probe used while the lease table is unknown.
//!
//! Clients are told apart by their hardware address (chaddr), the key of static leases and
//! of the lease file; a client identifier (option 61) is not used for that.

pub mod packet;
pub mod pool;
pub mod probe;
pub mod server;

use std::net::{IpAddr, Ipv4Addr};

use appliance::Config;
use appliance::model::Addressed;
use appliance::types::{IfName, MacAddr};
use ipnet::Ipv4Net;

pub use packet::{Destination, Reply, handle};
pub use pool::{Pool, Static};
pub use server::{Bound, DhcpError, bind, run};

/// What one link's server hands out, resolved from the config (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The link served, also the device the socket is bound to.
    pub link: IfName,
    /// The router's own address on the link: server identifier and default router and DNS.
    pub server: Ipv4Addr,
    /// The link's subnet that holds the pool.
    pub subnet: Ipv4Net,
    /// The dynamic pool, inclusive.
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    /// Lease time in seconds.
    pub lease_secs: u32,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub statics: Vec<Static>,
}

/// The servers of a validated config, in link order. A `[dhcp.<link>]` whose link has no
/// IPv4 address containing the pool is left out (validation refuses such a config).
pub fn scopes(cfg: &Config) -> Vec<Scope> {
    cfg.dhcp
        .iter()
        .filter_map(|(name, d)| {
            let addresses = link_addresses(cfg, name)?;
            let (server, subnet) = addresses.into_iter().find_map(|c| match c.addr() {
                IpAddr::V4(a) => {
                    let net = Ipv4Net::new(a, c.prefix_len()).ok()?;
                    net.contains(&d.start).then_some((a, net.trunc()))
                }
                IpAddr::V6(_) => None,
            })?;
            Some(Scope {
                link: name.clone(),
                server,
                subnet,
                start: d.start,
                end: d.end,
                lease_secs: u32::try_from(d.lease_time.as_secs()).unwrap_or(u32::MAX),
                routers: vec![d.router.unwrap_or(server)],
                dns: d.dns.clone().unwrap_or_else(|| vec![server]),
                domain: Some(
                    d.domain
                        .as_ref()
                        .unwrap_or(&cfg.system.domain)
                        .as_str()
                        .to_owned(),
                ),
                statics: d
                    .static_leases
                    .iter()
                    .map(|s| Static {
                        mac: s.mac,
                        ip: s.address,
                        hostname: s.hostname.as_ref().map(|h| h.as_str().to_owned()),
                    })
                    .collect(),
            })
        })
        .collect()
}

fn link_addresses(cfg: &Config, name: &IfName) -> Option<Vec<appliance::types::Cidr>> {
    if let Some(i) = cfg.interfaces.get(name) {
        return Some(i.addresses().to_vec());
    }
    if let Some(v) = cfg.vlans.get(name) {
        return Some(v.addresses().to_vec());
    }
    cfg.bridges.get(name).map(|b| b.addresses().to_vec())
}

/// A hostname a client sent (option 12) as a DNS label: the part before the first dot,
/// lowercased, letters, digits and '-' only (others become '-'), no leading or trailing
/// '-', at most 63 bytes. `None` when nothing usable is left.
pub fn sanitize_hostname(raw: &str) -> Option<String> {
    let first = raw.split('.').next().unwrap_or_default();
    let mapped: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches('-');
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// A MAC from a DHCP message's chaddr; `None` unless it is Ethernet-sized and unicast.
pub fn mac_from_chaddr(chaddr: &[u8]) -> Option<MacAddr> {
    let bytes = chaddr.get(..6)?;
    let text = bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    MacAddr::parse(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_become_one_clean_label() {
        assert_eq!(sanitize_hostname("Laptop").as_deref(), Some("laptop"));
        assert_eq!(
            sanitize_hostname("my laptop.example.com").as_deref(),
            Some("my-laptop")
        );
        assert_eq!(sanitize_hostname("-a_b-").as_deref(), Some("a-b"));
        assert_eq!(sanitize_hostname("…x…").as_deref(), Some("x"));
        assert_eq!(sanitize_hostname("..."), None);
        assert_eq!(sanitize_hostname("---"), None);
        assert_eq!(
            sanitize_hostname(&"a".repeat(100)).map(|s| s.len()),
            Some(63)
        );
    }

    #[test]
    fn scopes_fill_in_the_defaults() {
        let cfg = appliance::load_str(
            r#"
version = 1
[system]
domain = "home.arpa"
[interfaces.lan]
device = "eth1"
addresses = ["fd00::1/64", "192.168.7.1/24"]
[dhcp.lan]
start = "192.168.7.100"
end = "192.168.7.199"
lease_time = "1h"
static_leases = [{ mac = "52:54:00:00:00:09", address = "192.168.7.9", hostname = "nas" }]
"#,
        )
        .unwrap();
        let s = scopes(&cfg);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(s.server, Ipv4Addr::new(192, 168, 7, 1));
        assert_eq!(s.subnet, "192.168.7.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(s.routers, [s.server]);
        assert_eq!(s.dns, [s.server]);
        assert_eq!(s.domain.as_deref(), Some("home.arpa"));
        assert_eq!(s.lease_secs, 3600);
        assert_eq!(s.statics[0].hostname.as_deref(), Some("nas"));
    }

    #[test]
    fn chaddr_must_be_a_unicast_mac() {
        assert_eq!(
            mac_from_chaddr(&[0x52, 0x54, 0, 1, 2, 3, 0, 0]).map(|m| m.to_string()),
            Some("52:54:00:01:02:03".into())
        );
        assert_eq!(mac_from_chaddr(&[1, 0, 0, 0, 0, 0]), None);
        assert_eq!(mac_from_chaddr(&[0x52, 0x54]), None);
    }
}
