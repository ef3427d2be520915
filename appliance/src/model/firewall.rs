//! The firewall: zones, inter-zone policies, rules and port forwards.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{is_false, is_true, yes};
use crate::types::{Cidr, IfName, Name, PortRange, RateLimit};

/// The firewall. netd renders it into one nftables table, replaced atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Firewall {
    /// Zones, keyed by name (`wan`, `lan`, `iot`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<Name, Zone>,
    /// What traffic from one zone to another gets by default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
    /// Rules, evaluated in order before the zone defaults.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Port forwards (destination NAT), keyed by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub forwards: BTreeMap<Name, PortForward>,
}

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    /// Silently discard.
    Drop,
    /// Discard and tell the sender (TCP reset or ICMP unreachable).
    Reject,
}

fn drop_() -> Verdict {
    Verdict::Drop
}
fn accept() -> Verdict {
    Verdict::Accept
}

/// A zone: a set of links that share a trust level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// Interfaces, VLANs, bridges and WireGuard tunnels in this zone. A link belongs to at
    /// most one zone.
    pub interfaces: Vec<IfName>,
    /// Traffic to the appliance itself.
    #[serde(default = "drop_")]
    pub input: Verdict,
    /// Traffic through the appliance that no policy or rule matches.
    #[serde(default = "drop_")]
    pub forward: Verdict,
    /// Traffic from the appliance.
    #[serde(default = "accept")]
    pub output: Verdict,
    /// Source-NAT traffic leaving through this zone to the zone's address (for WAN).
    #[serde(default, skip_serializing_if = "is_false")]
    pub masquerade: bool,
}

/// Default treatment of traffic forwarded from one zone to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Source zone.
    pub from: Name,
    /// Destination zone.
    pub to: Name,
    /// What the traffic gets.
    pub action: Verdict,
}

/// Protocols a rule can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
    /// TCP and UDP.
    TcpUdp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp | Self::TcpUdp)
    }
}

/// A firewall rule. Without `to` it matches traffic to the appliance itself (input); with
/// `to` it matches traffic forwarded into that zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A label shown in status and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// Source zone. Default: any zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Name>,
    /// Destination zone. Default: the appliance itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Name>,
    /// Protocol to match.
    #[serde(default, skip_serializing_if = "is_any")]
    pub protocol: Protocol,
    /// Destination ports or ranges; needs protocol tcp, udp or tcp_udp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// Source ports or ranges; needs protocol tcp, udp or tcp_udp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ports: Vec<PortRange>,
    /// Source networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<Cidr>,
    /// Destination networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination: Vec<Cidr>,
    /// Match only up to this rate, like `10/minute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Log matching packets (rate-limited) to the journal.
    #[serde(default, skip_serializing_if = "is_false")]
    pub log: bool,
    /// What matching traffic gets.
    pub action: Verdict,
    /// Set to false to keep the rule in the file but out of the firewall.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
}

fn is_any(p: &Protocol) -> bool {
    *p == Protocol::Any
}

/// Protocols a port forward can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForwardProtocol {
    Tcp,
    Udp,
    #[default]
    TcpUdp,
}

impl ForwardProtocol {
    pub fn overlaps(self, other: Self) -> bool {
        self == other || self == Self::TcpUdp || other == Self::TcpUdp
    }
}

/// A port forward: traffic arriving on the appliance's address in zone `from` at `port` is
/// sent to `to:to_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// Zone the traffic arrives from. Default: `wan`.
    #[serde(default = "wan")]
    pub from: Name,
    /// Protocol: `tcp`, `udp` or `tcp_udp`.
    #[serde(default)]
    pub protocol: ForwardProtocol,
    /// External port or range.
    pub port: PortRange,
    /// Internal host; it must lie in the subnet of a link in some zone.
    pub to: Ipv4Addr,
    /// Internal port or range of the same length. Default: the external port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<PortRange>,
    /// Only these sources may use the forward. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<Cidr>,
    /// Let internal clients reach the forward through the public address (NAT reflection).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub hairpin: bool,
    /// Set to false to keep the forward in the file but inactive.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
}

fn wan() -> Name {
    Name::parse("wan").unwrap_or_else(|_| super::unreachable_default("wan zone"))
}
