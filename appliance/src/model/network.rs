//! Links, addressing, DHCP and WireGuard.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{is_false, is_true, yes};
use crate::types::{
    Cidr, DomainName, Duration, Endpoint, IfName, MacAddr, Mtu, Name, Port, SecretPath, ValueError,
    VlanId, WgKey,
};

/// How a link gets its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ipv4Mode {
    /// DHCPv4 client (typical for WAN).
    Dhcp,
    /// The IPv4 entries of `addresses`.
    Static,
    /// No IPv4 address.
    None,
}

/// How a link gets its IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Mode {
    /// Stateless autoconfiguration from router advertisements (typical for WAN).
    Slaac,
    /// The IPv6 entries of `addresses`; netd sends router advertisements on LAN links.
    Static,
    /// IPv6 switched off on the link (`disable_ipv6`), link-local address included.
    None,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination network, like `10.20.0.0/16` (`0.0.0.0/0` for a default route).
    pub to: Cidr,
    /// Next hop; it must lie in one of the link's subnets.
    pub via: std::net::IpAddr,
    /// Route metric; lower wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// Layer-3 settings shared by interfaces, VLANs and bridges.
pub trait Addressed {
    fn ipv4(&self) -> Option<Ipv4Mode>;
    fn ipv6(&self) -> Option<Ipv6Mode>;
    fn addresses(&self) -> &[Cidr];
    fn mtu(&self) -> Option<Mtu>;
    fn routes(&self) -> &[Route];

    /// The IPv4 mode in effect: the explicit one, else static when an IPv4 address is given.
    fn ipv4_mode(&self) -> Ipv4Mode {
        self.ipv4()
            .unwrap_or(if self.addresses().iter().any(Cidr::is_ipv4) {
                Ipv4Mode::Static
            } else {
                Ipv4Mode::None
            })
    }
    /// The IPv6 mode in effect: the explicit one, else static when an IPv6 address is given.
    fn ipv6_mode(&self) -> Ipv6Mode {
        self.ipv6()
            .unwrap_or(if self.addresses().iter().any(|a| !a.is_ipv4()) {
                Ipv6Mode::Static
            } else {
                Ipv6Mode::None
            })
    }
}

macro_rules! addressed {
    ($ty:ty) => {
        impl Addressed for $ty {
            fn ipv4(&self) -> Option<Ipv4Mode> {
                self.ipv4
            }
            fn ipv6(&self) -> Option<Ipv6Mode> {
                self.ipv6
            }
            fn addresses(&self) -> &[Cidr] {
                &self.addresses
            }
            fn mtu(&self) -> Option<Mtu> {
                self.mtu
            }
            fn routes(&self) -> &[Route] {
                &self.routes
            }
        }
    };
}

/// A physical NIC, matched by kernel name or by MAC address (exactly one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Kernel name of the NIC, like `eth0` or `enp1s0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<IfName>,
    /// MAC address of the NIC; use instead of `device` when names are not stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// IPv4: `dhcp`, `static` or `none`. Default: `static` when `addresses` has an IPv4
    /// address, else `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Mode>,
    /// IPv6: `slaac`, `static` or `none`. Default: `static` when `addresses` has an IPv6
    /// address, else `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Mode>,
    /// Static addresses with prefix length, like `192.168.1.1/24`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Cidr>,
    /// IPv4 default gateway for a static uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 default gateway for a static uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// MTU in bytes. Default: left as the driver sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<Mtu>,
    /// Static routes through this link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}
addressed!(Interface);

/// An 802.1Q VLAN on a parent interface or bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vlan {
    /// The interface or bridge that carries the tagged frames.
    pub parent: IfName,
    /// VLAN id, 1..=4094.
    pub id: crate::types::VlanId,
    /// IPv4 mode, as for interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Mode>,
    /// IPv6 mode, as for interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Mode>,
    /// Static addresses, like `192.168.20.1/24`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Cidr>,
    /// MTU in bytes; at most the parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<Mtu>,
    /// Static routes through this VLAN.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}
addressed!(Vlan);

/// A software bridge joining interfaces and VLANs into one layer-2 segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bridge {
    /// Interfaces and VLANs enslaved to the bridge.
    pub members: Vec<IfName>,
    /// Filter VLANs on the bridge ports (802.1Q-aware bridge).
    #[serde(default, skip_serializing_if = "is_false")]
    pub vlan_filtering: bool,
    /// Run the spanning tree protocol.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stp: bool,
    /// VLANs of single ports of a `vlan_filtering` bridge, by member name (like the port
    /// lists of OpenWrt's `bridge-vlan` sections). A member without an entry carries every
    /// VLAN of the bridge (the ids of the `[vlans.*]` whose parent is the bridge) tagged,
    /// and the kernel's default VLAN 1 untagged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<IfName, BridgePort>,
    /// IPv4 mode, as for interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Mode>,
    /// IPv6 mode, as for interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Mode>,
    /// Static addresses of the bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Cidr>,
    /// MTU in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<Mtu>,
    /// Static routes through this bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}
addressed!(Bridge);

/// The VLANs one port of a `vlan_filtering` bridge carries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgePort {
    /// The port's one untagged VLAN, its PVID: untagged frames arriving on the port join
    /// it, and its frames leave the port untagged (an access port, like a printer's on
    /// VLAN 20). The port then leaves the kernel's default VLAN 1. The id must be a
    /// VLAN of the bridge.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "one_untagged"
    )]
    pub untagged: Option<VlanId>,
    /// The VLANs the port carries tagged (a trunk), each a VLAN of the bridge. Default:
    /// every VLAN of the bridge without `untagged`, none with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tagged: Option<Vec<VlanId>>,
}

/// `untagged` takes one id: a port has a single PVID, so a list is refused with words that
/// say so rather than serde's "invalid type".
fn one_untagged<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<VlanId>, D::Error> {
    struct One;
    impl<'de> serde::de::Visitor<'de> for One {
        type Value = Option<VlanId>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("one VLAN id, 1..=4094")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom(ValueError::new(
                    format!("VLAN id {v} is out of range"),
                    "VLAN ids are 1..=4094; 0 and 4095 are reserved by 802.1Q",
                ))),
            }
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            VlanId::new(v).map(Some).map_err(E::custom)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut n = 0usize;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                n += 1;
            }
            Err(serde::de::Error::custom(ValueError::new(
                format!("{n} untagged VLANs for one port"),
                "a port has one untagged VLAN, its PVID (`untagged = 20`); carry the others in `tagged`",
            )))
        }
    }
    d.deserialize_any(One)
}

/// A DHCPv4 server on one link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DhcpServer {
    /// First address of the dynamic pool.
    pub start: Ipv4Addr,
    /// Last address of the dynamic pool (inclusive).
    pub end: Ipv4Addr,
    /// Lease time.
    #[serde(default = "default_lease_time")]
    pub lease_time: Duration,
    /// Router option. Default: the link's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Ipv4Addr>,
    /// DNS servers offered. Default: the link's own address (dnsd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<Ipv4Addr>>,
    /// Domain offered to clients. Default: `system.domain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainName>,
    /// Fixed addresses for known clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_leases: Vec<StaticLease>,
}

fn default_lease_time() -> Duration {
    Duration::from_secs(12 * 3600)
}

/// A fixed address for a client, by MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticLease {
    /// Client MAC address.
    pub mac: MacAddr,
    /// Address it always gets; inside the link's subnet, and may lie outside the pool.
    pub address: Ipv4Addr,
    /// Host name served by dnsd for this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<DomainName>,
}

/// A WireGuard tunnel interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WireguardInterface {
    /// UDP port to listen on. Default: none (an outgoing-only tunnel picks a random port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<Port>,
    /// Tunnel addresses, like `10.8.0.1/24`.
    pub addresses: Vec<Cidr>,
    /// File with the private key (mode 0600). Default: `/data/wireguard/<name>.key`,
    /// generated on first use. The key itself never goes in this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<SecretPath>,
    /// MTU in bytes. Default: 1420.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<Mtu>,
    /// Peers, keyed by a name of your choice (`phone`, `office`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peers: BTreeMap<Name, WireguardPeer>,
}

/// A WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WireguardPeer {
    /// The peer's public key (base64 of 32 bytes, as `wg pubkey` prints).
    pub public_key: WgKey,
    /// Addresses routed to this peer; peers of one tunnel must not overlap.
    pub allowed_ips: Vec<Cidr>,
    /// Where to reach the peer, `host:port`. Names are re-resolved when the peer has had
    /// no handshake for 2 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Keepalive interval, 1s..=65535s; useful behind NAT (`25s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<Duration>,
    /// File with a preshared key (mode 0600), for post-quantum resistance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key_file: Option<SecretPath>,
    /// Set to false to keep the peer in the file but out of the tunnel.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
}
